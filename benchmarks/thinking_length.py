"""How long a reasoning policy's reference thinking is, in the policy's own tokens, per arith level: the rule that
sets a budget-forcing threshold (``strategy_params.min_thinking_tokens``) without looking at test problems.

    ponder bench thinking-length --model models/reasoning-policy --level 4,6 --split train --limit 500 \\
        --output results/reasoning-policy/thinking-length

For each level, ``--limit`` problems of ``--split`` (``--seed``, default 0) are drawn, each reference solution is
written as a full reasoning trace (:func:`training.sft_data.reasoning_solution`, kind ``full``: every step inside
``<think>...</think>``, then the boxed answer), and the text between ``<think>`` and ``</think>`` (exclusive) is
counted with the model's tokenizer (``add_special_tokens=False``). Prints and saves (``thinking-length.json`` and
``thinking-length.md`` under ``--output``) the median, quartiles, mean, min and max per level, and K = the median
rounded up to a whole token: the threshold a forced run uses.

Budget forcing counts a sample's thinking as everything it wrote before ``</think>``, so its count also includes the
``<think>`` tag the policy writes itself (one token for ``models/reasoning-policy``); the rule here counts the text
between the tags only. No model weights are loaded, only the tokenizer: this takes seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

THINK_START, THINK_END = "<think>", "</think>"


def thinking_text(trace: str) -> str:
    """The text between ``<think>`` and ``</think>``, exclusive; ValueError where the trace lacks either tag."""
    head, start, rest = trace.partition(THINK_START)
    thinking, end, _ = rest.partition(THINK_END)
    if not start or not end:
        raise ValueError(f"not a reasoning trace (no {THINK_START}...{THINK_END}): {trace[:60]!r}")
    return thinking


def summary(lengths: list[int]) -> dict[str, Any]:
    """Median, quartiles (statistics.quantiles, exclusive method), mean, min, max, and K = ceil(median)."""
    if not lengths:
        raise ValueError("no problems to measure")
    q1, median, q3 = statistics.quantiles(lengths, n=4) if len(lengths) > 1 else (lengths[0],) * 3
    median = statistics.median(lengths)
    return {
        "problems": len(lengths),
        "median": median,
        "q1": q1,
        "q3": q3,
        "mean": round(statistics.fmean(lengths), 3),
        "min": min(lengths),
        "max": max(lengths),
        "k": math.ceil(median),
    }


def measure(tokenizer: Any, levels: list[int], split: str, limit: int, seed: int = 0) -> dict[int, dict[str, Any]]:
    """Per level, :func:`summary` of the thinking lengths of ``limit`` arith problems' full reference traces."""
    from training.sft_data import reasoning_solution
    from training.tasks import get_task

    arith = get_task("arith")
    out: dict[int, dict[str, Any]] = {}
    for level in levels:
        problems = arith.load(split, limit=limit, seed=seed, level=level)
        traces = [thinking_text(reasoning_solution(p.solution or "", "full")) for p in problems]
        lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in traces]
        out[level] = summary(lengths)
    return out


def markdown(rows: dict[int, dict[str, Any]], args: dict[str, Any]) -> str:
    lines = [
        "# Thinking length of full reference traces",
        "",
        f"`ponder bench thinking-length --model {args['model']} --level {args['level']} --split {args['split']} "
        f"--limit {args['limit']} --seed {args['seed']}`: tokens of the text between `<think>` and `</think>` "
        "(exclusive) of each problem's full reasoning trace, with the model's tokenizer. K = the median rounded up.",
        "",
        "| level | problems | median | Q1 | Q3 | mean | min | max | K |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level, r in rows.items():
        lines.append(
            f"| {level} | {r['problems']} | {r['median']:g} | {r['q1']:g} | {r['q3']:g} | {r['mean']:.1f} | "
            f"{r['min']} | {r['max']} | {r['k']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ponder bench thinking-length", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/reasoning-policy", help="model folder whose tokenizer counts")
    parser.add_argument("--level", default="4,6", help="arith levels, comma-separated (default: 4,6)")
    parser.add_argument("--split", default="train", help="arith split the problems come from (default: train)")
    parser.add_argument("--limit", type=int, default=500, help="problems per level (default: 500)")
    parser.add_argument("--seed", type=int, default=0, help="the problems' seed (default: 0)")
    parser.add_argument("--output", help="folder for thinking-length.json and .md (default: print only)")
    args = parser.parse_args(argv)
    try:
        from training.tasks import get_task

        arith = get_task("arith")
        try:
            levels = [int(x) for x in args.level.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--level reads comma-separated integers, not {args.level!r}") from None
        if not levels or any(level not in arith.levels for level in levels):
            raise ValueError(f"unknown arith level in {args.level!r}; levels: {', '.join(map(str, arith.levels))}")
        if args.split not in arith.splits:
            raise ValueError(f"arith has no split {args.split!r}; splits: {', '.join(arith.splits)}")
        if args.limit < 1:
            raise ValueError("--limit must be at least 1")
        if not (Path(args.model) / "tokenizer_config.json").is_file():
            raise ValueError(f"not a model folder with a tokenizer: {args.model}")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        rows = measure(tokenizer, levels, args.split, args.limit, args.seed)
    except ValueError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    text = markdown(rows, vars(args))
    print(text, end="")
    if args.output:
        output = Path(args.output)
        output.mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in vars(args).items() if k != "output"}
        payload = {"config": config, "levels": {str(k): v for k, v in rows.items()}}
        (output / "thinking-length.json").write_text(json.dumps(payload, indent=2) + "\n")
        (output / "thinking-length.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
