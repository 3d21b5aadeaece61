"""One accuracy-against-tokens table and plot from several ``ponder bench accuracy`` runs: each strategy is taken
from the run that holds the configuration you want shown (another reward model, a final check, more first steps),
under a label of your choice, so that one figure holds every strategy at its own best-known settings.

    ponder bench combine --output results/game24-all \\
        results/game24-policy:greedy results/game24-policy:best_of_n \\
        "results/game24-root:tree_of_thought:tree_of_thought (PRM, checked)"

Each source is ``RUN:STRATEGY`` or ``RUN:STRATEGY:LABEL``. Writes ``results.json``, ``results.md`` and
``accuracy.png`` as the accuracy benchmark does, plus ``sources.json`` (which run each line came from).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.accuracy import load_records, markdown, write_results


def parse_source(text: str) -> tuple[Path, str, str]:
    """``RUN:STRATEGY[:LABEL]`` -> (run folder, strategy, label; the strategy where none is given).

    >>> parse_source("results/a:best_of_n")
    (PosixPath('results/a'), 'best_of_n', 'best_of_n')
    >>> parse_source("results/a:tree_of_thought:ToT (PRM)")
    (PosixPath('results/a'), 'tree_of_thought', 'ToT (PRM)')
    """
    parts = text.split(":", 2)
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"{text!r}: expected RUN:STRATEGY or RUN:STRATEGY:LABEL")
    return Path(parts[0]), parts[1], parts[2] if len(parts) == 3 else parts[1]


def gather(sources: list[tuple[Path, str, str]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The records and timings of every source's strategy, relabelled; an error for a missing run or strategy, or
    for two sources under one label."""
    records: list[dict[str, Any]] = []
    timings: list[dict[str, Any]] = []
    labels: set[str] = set()
    for run, strategy, label in sources:
        if label in labels:
            raise ValueError(f"two sources are labelled {label!r}: give one a label of its own (RUN:STRATEGY:LABEL)")
        labels.add(label)
        if not (run / "records.jsonl").is_file():
            raise ValueError(f"{run}: no records.jsonl (not a ponder bench accuracy output folder)")
        mine = [r | {"strategy": label} for r in load_records(run / "records.jsonl") if r["strategy"] == strategy]
        if not mine:
            raise ValueError(f"{run}: no records of strategy {strategy!r}")
        records += mine
        timings += [t | {"strategy": label} for t in load_records(run / "timings.jsonl") if t["strategy"] == strategy]
    return records, timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ponder bench combine", description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="RUN:STRATEGY or RUN:STRATEGY:LABEL")
    parser.add_argument("--output", required=True, type=Path, help="folder for results.json/md and accuracy.png")
    args = parser.parse_args(argv)
    try:
        sources = [parse_source(text) for text in args.sources]
        records, timings = gather(sources)
    except ValueError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    rows = write_results(records, args.output, timings=timings)
    listed = [{"run": str(run), "strategy": strategy, "label": label} for run, strategy, label in sources]
    (args.output / "sources.json").write_text(json.dumps(listed, indent=2) + "\n")
    print(markdown(rows), end="")
    print(f"wrote {args.output / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
