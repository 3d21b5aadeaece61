"""Where two policies' greedy solutions part: which problems each solves, and the step where each goes wrong.

A change in greedy accuracy is the difference of two sums. This command shows what it is made of: the problems the
second policy solves that the first did not, those it lost, and, for a task with a step checker, the step where
each policy's greedy solution first goes wrong and how often the two open with the same first step. Both policies
decode the same problems greedily, one vLLM engine after the other::

    ponder eval compare models/game24-policy runs/sdpo-g24f --task game24 --split train \\
        --seed 42 --skip 8400 --limit 2115 --output results/dpo-game24/compare.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.evaluate_policy import add_problem_arguments, chat_prompt, problems_from_args
from training.label import greedy_solutions
from training.tasks import Problem, TaskSpec, UnknownTaskError, get_task


async def greedy_outcomes(path: str, task: TaskSpec, problems: Sequence[Problem], kv_cache_gib: float) -> list[dict]:
    """Per problem: ``right``, ``first_error`` (the first wrong step, -1 none, None without a checker) and
    ``first_step`` of the greedy solution of the policy at ``path``."""
    # deferred import: vLLM (an optional extra, seconds to import) only where an engine is used
    from server.engine.vllm_engine import VLLMEngine

    engine = await VLLMEngine.create(path, kv_cache_gib=kv_cache_gib, seed=0)
    try:
        prompts = [chat_prompt(engine.tokenizer, task, p) for p in problems]
        texts = await greedy_solutions(engine, prompts, task.max_tokens)
    finally:
        await engine.shutdown()
    return [
        {
            "right": task.grade(p, text),
            "first_error": task.first_error_step(p, text),
            "first_step": next(iter(task.steps(text)), ""),
        }
        for p, text in zip(problems, texts, strict=True)
    ]


def compare(before: Sequence[dict], after: Sequence[dict]) -> dict[str, Any]:
    """The flips between two policies' outcomes on the same problems (see :func:`greedy_outcomes`).

    >>> a = [dict(right=True, first_error=-1, first_step="x"), dict(right=False, first_error=0, first_step="y")]
    >>> b = [dict(right=False, first_error=1, first_step="x"), dict(right=True, first_error=-1, first_step="z")]
    >>> c = compare(a, b)
    >>> c["lost"], c["gained"], c["same_first_step"], c["first_error"]["after"]
    (1, 1, 1, {'-1': 1, '1': 1})
    """
    if len(before) != len(after):
        raise ValueError(f"outcomes of {len(before)} and {len(after)} problems: not the same problems")
    pairs = list(zip(before, after, strict=True))
    return {
        "num_problems": len(pairs),
        "greedy": {"before": _share(a["right"] for a, _ in pairs), "after": _share(b["right"] for _, b in pairs)},
        "change": paired_change([int(b["right"]) - int(a["right"]) for a, b in pairs]),
        "gained": sum(not a["right"] and b["right"] for a, b in pairs),
        "lost": sum(a["right"] and not b["right"] for a, b in pairs),
        "both_right": sum(a["right"] and b["right"] for a, b in pairs),
        "same_first_step": sum(a["first_step"] == b["first_step"] for a, b in pairs),
        "first_error": {"before": _histogram(before), "after": _histogram(after)},
    }


def paired_change(diffs: Sequence[int]) -> dict[str, float]:
    """The mean of per-problem differences (after - before: -1, 0 or 1) with its standard error and a 95% interval
    (normal approximation; the same problems under both policies, so the flips alone carry the variance).

    >>> paired_change([1] * 30 + [-1] * 10 + [0] * 60)
    {'mean': 0.2, 'se': 0.0603, 'ci95': [0.0818, 0.3182]}
    """
    n = len(diffs)
    mean = sum(diffs) / max(n, 1)
    var = sum((d - mean) ** 2 for d in diffs) / max(n - 1, 1)
    se = math.sqrt(var / max(n, 1))
    return {
        "mean": round(mean, 4),
        "se": round(se, 4),
        "ci95": [round(mean - 1.96 * se, 4), round(mean + 1.96 * se, 4)],
    }


def _share(flags: Any) -> float:
    flags = list(flags)
    return sum(flags) / max(len(flags), 1)


def _histogram(outcomes: Sequence[dict]) -> dict[str, int]:
    counts = Counter(o["first_error"] for o in outcomes if o["first_error"] is not None)
    return {str(k): counts[k] for k in sorted(counts)}


def markdown(result: dict[str, Any], names: Sequence[str]) -> str:
    """The comparison as Markdown lines."""
    n, g = result["num_problems"], result["greedy"]
    lines = [
        f"{n} problems, greedy {g['before']:.1%} ({names[0]}) -> {g['after']:.1%} ({names[1]}): "
        f"{result['change']['mean']:+.1%} (95% interval {result['change']['ci95'][0]:+.1%} to "
        f"{result['change']['ci95'][1]:+.1%}); {result['gained']} gained, {result['lost']} lost, "
        f"{result['both_right']} right under both; "
        f"the same first step in {result['same_first_step']} ({result['same_first_step'] / max(n, 1):.0%}).",
    ]
    hist = result["first_error"]
    steps = sorted({*hist["before"], *hist["after"]}, key=int)
    if steps:
        lines += [
            "",
            "| first wrong step (-1: none) | " + " | ".join(steps) + " |",
            "|---|" + "---:|" * len(steps),
            *(
                f"| {name} | " + " | ".join(str(hist[side].get(s, 0)) for s in steps) + " |"
                for name, side in zip(names, ("before", "after"), strict=True)
            ),
        ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ponder eval compare", description=__doc__.split("\n\n")[0])
    p.add_argument("before", help="the first policy's folder (e.g. the SFT policy)")
    p.add_argument("after", help="the second policy's folder (e.g. a DPO run)")
    add_problem_arguments(p)
    p.add_argument("--kv-cache-gib", type=float, default=1.0)
    p.add_argument("--output", help="write the comparison as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for path in (args.before, args.after):
        if not (Path(path) / "config.json").is_file():
            print(f"compare_policies: error: {path!r} is not a model folder (no config.json there)", file=sys.stderr)
            return 2
    try:
        by_level = problems_from_args(args)
    except (ValueError, UnknownTaskError) as exc:
        print(f"compare_policies: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    task, problems = get_task(args.task), [p for level in by_level.values() for p in level]
    outcomes = [
        asyncio.run(greedy_outcomes(path, task, problems, args.kv_cache_gib)) for path in (args.before, args.after)
    ]
    result = {**vars(args), **compare(*outcomes)}
    print(markdown(result, (args.before, args.after)))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
