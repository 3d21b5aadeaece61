"""How well Game of 24 PRMs value search states: at each depth, the AUROC of the step score between states that can
still make 24 and states that cannot.

The states are the task's solver paths (``ponder label --source solver``'s kind: a first move, then moves that keep
24 in reach or lose it at even odds); the truth is the task's exact step checker. Depth 1 (three numbers left) is
where Tree of Thoughts' value matters most. Several PRMs are read on the same states, so they compare side by side;
the intervals are 95% bootstrap over puzzles.

The puzzles (``--split``):

- ``test`` (the default): ToT's 100 test rows of ``24.csv``, the only Game of 24 puzzles that no shipped model
  (``models/game24-policy``, ``models/game24-prm``) trained on;
- ``heldout``: the task's hashed held-out partition of generated puzzles (numbers up to 24), held out from models
  trained after it existed, but not from the shipped ones, whose SFT stages drew 9,225 of the 9,254 generated puzzles;
- ``train``: generated train-split puzzles past the file rows, as this benchmark read them before the partition
  (``results/game24-prm-labels/value.json``): training puzzles of the shipped models, labelled so in the report;
- ``train-rows``: the train split's rows of ``24.csv`` (numbers 1..13, as the test rows), in the seed's order:
  training puzzles of both shipped models (the PRM's solver paths were drawn on them), to set beside ``test``.

    ponder bench game24-value models/game24-prm --split test --paths 12 \\
        --output results/game24-heldout/value-test.json
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import save_json
from training.evaluate import auroc
from training.tasks import Problem, get_task
from training.tasks.game24 import file_train_rows

DEPTHS = 3
SPLITS = {  # what each --split reads, and whether the shipped Game of 24 models never trained on it
    "test": ("ToT's test rows 900-999 of 24.csv", True),
    "heldout": ("the hashed held-out partition of generated puzzles (seen by the shipped models' SFT)", False),
    "train": ("generated train-split puzzles past the 24.csv rows (training puzzles)", False),
    "train-rows": ("the train split's rows of 24.csv (training puzzles)", False),
}
DEFAULT_PUZZLES = {"test": 100, "heldout": 886, "train": 300, "train-rows": 300}


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


def puzzles_of(split: str, puzzles: int, seed: int) -> list[Problem]:
    """The first ``puzzles`` of ``split`` (see the module docstring); for ``train``, the generated ones past the file
    rows in the seed's order, for ``train-rows`` the file rows.

    >>> [p.id for p in puzzles_of("test", 2, seed=7)]
    ['game24-0900', 'game24-0901']
    """
    game24 = get_task("game24")
    if split == "train":
        return game24.load("train", limit=file_train_rows() + puzzles, seed=seed)[-puzzles:]
    if split == "train-rows":
        return game24.load("train", limit=min(puzzles, file_train_rows()), seed=seed)
    return game24.load(split, limit=puzzles, seed=seed)


def solver_states(
    puzzles: int, paths: int, seed: int, split: str = "test"
) -> tuple[list[Any], list[tuple[str, list[str]]], list]:
    """``paths`` solver paths on each of ``puzzles`` puzzles of ``split``: their problems (one per path), their
    (prompt, steps) items and their exact labels."""

    game24 = get_task("game24")
    problems = puzzles_of(split, puzzles, seed)
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


def evaluate(
    models: Sequence[str], puzzles: int, paths: int, seed: int, resamples: int, split: str = "test"
) -> dict[str, Any]:
    """Every model's depth AUROCs on the same solver states of ``split``'s puzzles, with 95% intervals, and each
    model's paired change against the first model (the same resamples for all)."""
    # deferred import: vLLM (an optional extra, seconds to import) only where an engine is used
    from reward_models.torch_prm import load_reward_model, score_steps

    owners, items, labels = solver_states(puzzles, paths, seed, split)
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
    source, unseen = SPLITS[split]
    return {
        "split": split,
        "puzzle_source": source,
        "held_out_from_shipped_models": unseen,
        "puzzles": len(set(owners)),
        "paths": len(items),
        "seed": seed,
        "right_states": right,
        "models": rows,
    }


def table(report: dict[str, Any]) -> str:
    """A line naming the puzzles, then a Markdown table: one row per model, AUROC (95% CI) at each depth."""
    left = ["3 numbers left", "2 numbers left", "1 number left"]
    split = report.get("split", "train")
    seen = "" if report.get("held_out_from_shipped_models") else "; NOT held out from the shipped game24 models"
    caption = f"{report['paths']} solver states of {report['puzzles']} puzzles, split {split!r}{seen}"
    head = "| PRM | " + " | ".join(f"depth {d + 1} ({left[d]})" for d in range(DEPTHS)) + " |"
    lines = [caption, "", head, "|---|" + "---|" * DEPTHS]
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
    parser = argparse.ArgumentParser(prog="ponder bench game24-value", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="PRM checkpoint folders (ponder train prm outputs)")
    parser.add_argument(
        "--split",
        choices=list(SPLITS),
        default="test",
        help="the puzzles: test (ToT's 100 test rows, held out from the shipped models; default), heldout (the "
        "task's hashed partition, held out only from models trained after it) or train (generated training puzzles, "
        "as before the partition) or train-rows (the train rows of 24.csv, training puzzles)",
    )
    parser.add_argument(
        "--puzzles", type=int, help="how many puzzles (default: test 100, heldout 886, train and train-rows 300)"
    )
    parser.add_argument("--paths", type=int, default=4, help="solver paths per puzzle (default 4)")
    parser.add_argument("--seed", type=int, default=7, help="puzzle and path seed (default 7)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--output", help="JSON file for the report")
    args = parser.parse_args(argv)
    missing = [m for m in args.models if not (Path(m) / "config.json").is_file()]
    if missing:
        print(f"error: not a model folder: {missing[0]}", file=sys.stderr)
        return 2
    args.puzzles = DEFAULT_PUZZLES[args.split] if args.puzzles is None else args.puzzles
    if min(args.puzzles, args.paths, args.resamples) < 1:
        print("error: --puzzles, --paths and --resamples must be at least 1", file=sys.stderr)
        return 2
    report = evaluate(args.models, args.puzzles, args.paths, args.seed, args.resamples, args.split)
    report["command"] = shlex.join(
        [".venv/bin/python", "-m", "benchmarks.game24_value", *(sys.argv[1:] if argv is None else argv)]
    )
    print(table(report))
    if args.output:
        save_json(Path(args.output), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
