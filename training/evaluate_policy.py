r"""Accuracy of a policy checkpoint per task level, greedy and sampled, on the real vLLM engine.

Each problem is asked exactly as the server asks it: the task's user message (:meth:`TaskSpec.prompt`) through the
checkpoint's chat template with the generation prompt, then graded by the task's grader. Greedy decoding gives one
completion per problem; sampling gives ``num_samples`` at ``temperature``, from which we report

- ``pass@k``: the chance that at least one of k samples is right, by the unbiased estimator of Chen et al. 2021
  ("Evaluating Large Language Models Trained on Code"), ``1 - C(n-c, k) / C(n, k)`` for n samples with c right;
- ``majority@n``: the accuracy of the most frequent final answer (self-consistency, Wang et al. 2022).

pass@n is the ceiling for any verifier that picks one of the n samples; majority@n is what voting reaches without
one. All prompts go to the engine at once. Sampling is seeded through the engine's seed, not per request (vLLM's
CPU backend kills the engine on a per-request seed: "CPU Generator does not use offset"). The vLLM engine core
starts in a child process by spawn: callers need the ``if __name__ == "__main__":`` guard.

    ponder eval policy models/default-policy --levels 1 2 3 4 5 6 --limit 200 --num-samples 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from math import comb
from pathlib import Path
from typing import Any

from strategies.answers import cluster
from strategies.base import Engine, SamplingSpec
from training.tasks import Problem, TaskSpec, UnknownTaskError, get_task


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k from ``num_samples`` samples of which ``num_correct`` are right (Chen et al. 2021).

    >>> pass_at_k(16, 0, 16), pass_at_k(16, 1, 16), pass_at_k(4, 2, 1)
    (0.0, 1.0, 0.5)
    """
    if not 0 < k <= num_samples:
        raise ValueError(f"k={k} must be between 1 and the number of samples, {num_samples}")
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - comb(num_samples - num_correct, k) / comb(num_samples, k)


def chat_prompt(tokenizer: Any, task: TaskSpec, problem: Problem) -> str:
    """The text the engine continues: the task's user message through the chat template, as the server renders it."""
    messages = [{"role": "user", "content": task.prompt(problem)}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def majority_is_right(task: TaskSpec, problem: Problem, completions: Sequence[str]) -> bool:
    """Whether the most frequent final answer among ``completions`` is right (ties: the first seen)."""
    groups = cluster([task.extract(text) for text in completions])
    return bool(groups) and task.grade(problem, completions[groups[0][0]])


async def sample(engine: Engine, prompts: Sequence[str], spec: SamplingSpec, request_id: str) -> list[list[str]]:
    """``spec.n`` completions of every prompt, all prompts in flight at once (one vLLM request each)."""
    calls = [engine.generate([prompt], spec, f"{request_id}-{i}") for i, prompt in enumerate(prompts)]
    return [[sample.text for sample in samples] for (samples,) in await asyncio.gather(*calls)]


def load_problems(
    task: TaskSpec, levels: Sequence[int], *, split: str, skip: int, limit: int, seed: int
) -> dict[int, list[Problem]]:
    """``limit`` problems of each level after the first ``skip`` (level 0: a task without levels, all of them);
    ValueError where the task has fewer."""
    levels = levels if task.levels else (0,)
    return {level: task.load(split, limit=skip + limit, seed=seed, level=level or None)[skip:] for level in levels}


async def evaluate_levels(
    engine: Engine,
    tokenizer: Any,
    task_name: str = "arith",
    levels: Sequence[int] = (1, 2, 3, 4, 5, 6),
    limit: int = 200,
    split: str = "test",
    seed: int = 0,
    num_samples: int = 0,
    temperature: float = 0.8,
    sample_levels: Sequence[int] | None = None,
    num_sample_levels: int = 2,
    skip: int = 0,
    problems: dict[int, list[Problem]] | None = None,
) -> dict[str, Any]:
    """Greedy accuracy at every level; pass@k and majority@n at ``sample_levels`` when ``num_samples`` > 0.

    ``sample_levels=None`` picks the ``num_sample_levels`` levels whose greedy accuracy is closest to 50%, where
    drawing more samples has the most room to help. ``skip`` leaves out the first problems of each level (those a
    tuning run drew from the same split and seed). ``problems``: what :func:`load_problems` returns for these
    arguments, where the caller has loaded them already. Returns ``{"task", "split", "seed", "levels": {level: row}}``.
    """
    if skip < 0:
        raise ValueError("skip must not be negative")
    task = get_task(task_name)
    if problems is None:
        problems = load_problems(task, levels, split=split, skip=skip, limit=limit, seed=seed)
    levels = list(problems)
    rows: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    greedy = SamplingSpec(n=1, temperature=0.0, max_tokens=task.max_tokens)
    for level, completions in (await _by_level(engine, tokenizer, task, problems, levels, greedy)).items():
        right = [task.grade(p, c[0]) for p, c in zip(problems[level], completions, strict=True)]
        rows[str(level)] = {"num_problems": len(right), "greedy": sum(right) / max(len(right), 1)}
        print(f"level {level}: greedy {rows[str(level)]['greedy']:.1%} on {len(right)} {split} problems", flush=True)
    timing = {"greedy_time_s": round(time.perf_counter() - started, 1)}
    if num_samples > 0:
        if sample_levels is None:
            sample_levels = sorted(levels, key=lambda lv: (abs(rows[str(lv)]["greedy"] - 0.5), lv))[:num_sample_levels]
        started = time.perf_counter()
        # No per-request seed: vLLM's CPU backend kills the engine on one ("CPU Generator does not use offset");
        # the engine's own seed (evaluate_checkpoint passes ``seed``) makes runs repeatable instead.
        spec = SamplingSpec(n=num_samples, temperature=temperature, max_tokens=task.max_tokens)
        sampled = await _by_level(engine, tokenizer, task, problems, sorted(sample_levels), spec)
        for level, completions in sampled.items():
            row = rows[str(level)]
            row.update(_sampled_row(task, problems[level], completions, temperature))
            print(
                f"level {level}: pass@1 {row['pass@1']:.1%}, pass@{num_samples} {row[f'pass@{num_samples}']:.1%}, "
                f"majority@{num_samples} {row[f'majority@{num_samples}']:.1%} (T={temperature})",
                flush=True,
            )
        timing["sampled_time_s"] = round(time.perf_counter() - started, 1)
    return {"task": task_name, "split": split, "seed": seed, "skip": skip, "levels": rows, **timing}


async def _by_level(
    engine: Engine,
    tokenizer: Any,
    task: TaskSpec,
    problems: dict[int, list[Problem]],
    levels: Sequence[int],
    spec: SamplingSpec,
) -> dict[int, list[list[str]]]:
    """One engine batch over every problem of ``levels``; completions grouped back by level."""
    flat = [(level, p) for level in levels for p in problems[level]]
    prompts = [chat_prompt(tokenizer, task, p) for _, p in flat]
    completions = await sample(engine, prompts, spec, f"eval-T{spec.temperature}")
    grouped: dict[int, list[list[str]]] = {level: [] for level in levels}
    for (level, _), texts in zip(flat, completions, strict=True):
        grouped[level].append(texts)
    return grouped


def _sampled_row(task: TaskSpec, problems: list[Problem], completions: list[list[str]], temperature: float) -> dict:
    n = len(completions[0]) if completions else 0
    correct = [sum(task.grade(p, c) for c in cs) for p, cs in zip(problems, completions, strict=True)]
    row: dict[str, Any] = {"num_samples": n, "temperature": temperature}
    for k in sorted({k for k in (1, 4, 16, n) if k <= n}):
        row[f"pass@{k}"] = sum(pass_at_k(n, c, k) for c in correct) / max(len(correct), 1)
    votes = [majority_is_right(task, p, cs) for p, cs in zip(problems, completions, strict=True)]
    row[f"majority@{n}"] = sum(votes) / max(len(votes), 1)
    return row


async def evaluate_checkpoint_async(path: str | Path, kv_cache_gib: float = 1.0, **kwargs: Any) -> dict[str, Any]:
    """Start a vLLM engine on the checkpoint at ``path``, run :func:`evaluate_levels`, stop the engine."""
    # deferred import: vLLM (an optional extra, seconds to import) only where an engine is used
    from server.engine.vllm_engine import VLLMEngine

    started = time.perf_counter()
    engine = await VLLMEngine.create(str(path), kv_cache_gib=kv_cache_gib, seed=kwargs.get("seed", 0))
    try:
        result = await evaluate_levels(engine, engine.tokenizer, **kwargs)
    finally:
        await engine.shutdown()
    result["eval_time_s"] = round(time.perf_counter() - started, 1)
    return result


def evaluate_checkpoint(path: str | Path, kv_cache_gib: float = 1.0, **kwargs: Any) -> dict[str, Any]:
    """Synchronous :func:`evaluate_checkpoint_async` (the caller needs the ``__main__`` guard, see above)."""
    return asyncio.run(evaluate_checkpoint_async(path, kv_cache_gib=kv_cache_gib, **kwargs))


def markdown_table(result: dict[str, Any]) -> list[str]:
    """Markdown lines: a heading and one table row per level of an :func:`evaluate_levels` result."""
    rows = result["levels"]
    ks = sorted(
        {key for row in rows.values() for key in row if key.startswith(("pass@", "majority@"))},
        key=lambda k: (k.startswith("majority"), int(k.split("@")[1])),
    )
    head = ["level", "problems", "greedy", *ks]
    out = [
        f"## Accuracy on held-out `{result['split']}` problems (vLLM engine, seed {result['seed']})",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---:" for _ in head) + "|",
    ]
    for level, row in rows.items():
        name = "all" if level == "0" else level  # 0: a task without levels
        cells = [name, str(row["num_problems"]), *(f"{row[k]:.1%}" if k in row else "" for k in ["greedy", *ks])]
        out.append("| " + " | ".join(cells) + " |")
    sampled = next((row for row in rows.values() if "temperature" in row), None)
    if sampled:
        out += [
            "",
            f"pass@k: unbiased estimate from {sampled['num_samples']} samples per problem at temperature "
            f"{sampled['temperature']} (Chen et al. 2021); majority@n: the most frequent answer (self-consistency).",
        ]
    return [*out, ""]


def add_problem_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that pick the problems: ``--task --levels --limit --split --seed --skip``."""
    p.add_argument("--task", default="arith")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    p.add_argument("--limit", type=int, default=200, help="problems per level")
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=0, help="problem set and sampling seed")
    p.add_argument("--skip", type=int, default=0, help="leave out the first K problems of each level (a run's own)")


def problems_from_args(args: argparse.Namespace) -> dict[int, list[Problem]]:
    """:func:`load_problems` for the flags of :func:`add_problem_arguments`; ValueError or UnknownTaskError."""
    task = get_task(args.task)
    return load_problems(task, args.levels, split=args.split, skip=args.skip, limit=args.limit, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ponder eval policy", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="policy checkpoint folder (config.json, safetensors, tokenizer with chat template)")
    add_problem_arguments(p)
    p.add_argument("--num-samples", type=int, default=0, help="samples per problem for pass@k (0: greedy only)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--sample-levels", type=int, nargs="+", help="levels to sample (default: the two nearest 50%%)")
    p.add_argument("--kv-cache-gib", type=float, default=1.0)
    p.add_argument("--output", help="write the result as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.skip < 0:
        parser.error("--skip must not be negative")
    if not (Path(args.model) / "config.json").is_file():
        print(f"evaluate_policy: error: {args.model!r} is not a model folder (no config.json there)", file=sys.stderr)
        return 2
    try:  # a bad task, split or count is a one-line error before any engine starts
        problems = problems_from_args(args)
    except (ValueError, UnknownTaskError) as exc:
        print(f"evaluate_policy: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    result = evaluate_checkpoint(
        args.model,
        kv_cache_gib=args.kv_cache_gib,
        task_name=args.task,
        levels=args.levels,
        limit=args.limit,
        split=args.split,
        seed=args.seed,
        num_samples=args.num_samples,
        temperature=args.temperature,
        sample_levels=args.sample_levels,
        skip=args.skip,
        problems=problems,
    )
    text = json.dumps(result, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
