"""How well Game of 24 PRMs value search states: at each depth, the AUROC of the step score between states that can
still make 24 and states that cannot.

The states are the task's solver paths (``ponder label --source solver``'s kind: a first move, then moves that keep
24 in reach or lose it at even odds) on generated puzzles, numbers up to 24, none in ToT's ``24.csv``, with another
seed than any training data; the truth is the task's exact step checker. Depth 1 (three numbers left) is where
Tree of Thoughts' value matters most. Several PRMs are read on the same states, so they compare side by side; the
intervals are 95% bootstrap over puzzles.

    .venv/bin/python -m benchmarks.game24_value runs/g24-prm-exact runs/g24-prm-mc_hard --puzzles 300 \\
        --output results/game24-prm-labels/value.json
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import save_json
from training.evaluate import auroc
from training.tasks import get_task
from training.tasks.game24 import file_train_rows

DEPTHS = 3


def depth_aurocs(scores: Sequence[Sequence[float]], labels: Sequence[Sequence[bool]]) -> list[float]:
    """The AUROC of the scores at each depth, over the paths that have a step there.

    >>> depth_aurocs([[0.9, 0.2], [0.1, 0.3]], [[True, False], [False, True]])
    [1.0, 1.0]
    """
    found = []
    for depth in range(max(len(lab) for lab in labels)):
        split: dict[bool, list[float]] = {True: [], False: []}
        for s, lab in zip(scores, labels, strict=True):
            if depth < len(lab):
                split[lab[depth]].append(s[depth])
        found.append(auroc(split[True], split[False]) if split[True] and split[False] else float("nan"))
    return found


def solver_states(puzzles: int, paths: int, seed: int) -> tuple[list[Any], list[tuple[str, list[str]]], list]:
    """``paths`` solver paths on each of ``puzzles`` generated train-split puzzles (past every row of ``24.csv``):
    their problems (one per path), their (prompt, steps) items and their exact labels."""

    game24 = get_task("game24")
    problems = game24.load("train", limit=file_train_rows() + puzzles, seed=seed)[-puzzles:]
    rng = random.Random(seed)
    owners, items, labels = [], [], []
    for problem in problems:
        for path in game24.solver_paths(problem, paths, rng):
            owners.append(problem.id)
            items.append((game24.prompt(problem), game24.steps(path)))
            labels.append(game24.check_steps(problem, path))
    return owners, items, labels


def bootstrap_draws(owners: Sequence[str], scores: list, labels: list, resamples: int, seed: int) -> list[list[float]]:
    """Each depth's AUROC on ``resamples`` resamples of the puzzles (with replacement). The same seed draws the same
    resamples, so two models' draws pair up."""
    by_owner: dict[str, list[int]] = {}
    for i, owner in enumerate(owners):
        by_owner.setdefault(owner, []).append(i)
    groups, rng, draws = list(by_owner.values()), random.Random(seed), []
    for _ in range(resamples):
        picked = [i for _ in groups for i in rng.choice(groups)]
        draws.append(depth_aurocs([scores[i] for i in picked], [labels[i] for i in picked]))
    return draws


def interval(values: Sequence[float]) -> tuple[float, float]:
    """The central 95% of bootstrap values.

    >>> interval([float(v) for v in range(1000)])
    (25.0, 974.0)
    """
    ordered = sorted(values)
    return ordered[int(0.025 * len(ordered))], ordered[max(int(0.975 * len(ordered)) - 1, 0)]


def evaluate(models: Sequence[str], puzzles: int, paths: int, seed: int, resamples: int) -> dict[str, Any]:
    """Every model's depth AUROCs on the same solver states, with 95% intervals, and each model's paired change
    against the first model (the same resamples for all)."""
    # deferred import: vLLM (an optional extra, seconds to import) only where an engine is used
    from reward_models.torch_prm import load_reward_model, score_steps

    owners, items, labels = solver_states(puzzles, paths, seed)
    rows, first = [], None
    for path in models:
        model, tokenizer = load_reward_model(path)
        scores = score_steps(model, tokenizer, items)
        draws = bootstrap_draws(owners, scores, labels, resamples, seed)
        first = first or draws
        found = depth_aurocs(scores, labels)
        row = {"model": path, "auroc": found, "ci95": [interval(d) for d in zip(*draws, strict=True)]}
        if rows:
            gaps = [[a - b for a, b in zip(x, y, strict=True)] for x, y in zip(draws, first, strict=True)]
            row["change_vs_first"] = [a - b for a, b in zip(found, rows[0]["auroc"], strict=True)]
            row["change_ci95"] = [interval(g) for g in zip(*gaps, strict=True)]
        rows.append(row)
    right = [sum(lab[d] for lab in labels) for d in range(DEPTHS)]
    return {"puzzles": puzzles, "paths": len(items), "seed": seed, "right_states": right, "models": rows}


def table(report: dict[str, Any]) -> str:
    """A Markdown table: one row per model, AUROC (95% CI) at each depth."""
    left = ["3 numbers left", "2 numbers left", "1 number left"]
    head = "| PRM | " + " | ".join(f"depth {d + 1} ({left[d]})" for d in range(DEPTHS)) + " |"
    lines = [head, "|---|" + "---|" * DEPTHS]
    for row in report["models"]:
        cells = [f"{a:.3f} ({lo:.3f}-{hi:.3f})" for a, (lo, hi) in zip(row["auroc"], row["ci95"], strict=True)]
        lines.append(f"| `{row['model']}` | " + " | ".join(cells) + " |")
    for row in report["models"][1:]:
        cells = [
            f"{c:+.3f} ({lo:+.3f} to {hi:+.3f})"
            for c, (lo, hi) in zip(row["change_vs_first"], row["change_ci95"], strict=True)
        ]
        lines.append(f"| `{row['model']}` minus the first (paired) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.game24_value", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="PRM checkpoint folders (ponder train prm outputs)")
    parser.add_argument("--puzzles", type=int, default=300, help="generated puzzles (default 300)")
    parser.add_argument("--paths", type=int, default=4, help="solver paths per puzzle (default 4)")
    parser.add_argument("--seed", type=int, default=7, help="puzzle and path seed (default 7)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--output", help="JSON file for the report")
    args = parser.parse_args(argv)
    missing = [m for m in args.models if not (Path(m) / "config.json").is_file()]
    if missing:
        print(f"error: not a model folder: {missing[0]}", file=sys.stderr)
        return 2
    if min(args.puzzles, args.paths, args.resamples) < 1:
        print("error: --puzzles, --paths and --resamples must be at least 1", file=sys.stderr)
        return 2
    report = evaluate(args.models, args.puzzles, args.paths, args.seed, args.resamples)
    print(table(report))
    if args.output:
        save_json(Path(args.output), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
