"""Paired comparison of two configurations of one ``ponder bench accuracy`` run: the mean accuracy difference over
the problems both answered, with a percentile bootstrap interval over problems (each problem's accuracy is its mean
over seeds, so the seeds of a problem stay together).

Two strategies' intervals can overlap while their paired difference excludes 0: they answered the same problems,
and the problems' difficulty, which both intervals carry, cancels in the difference.

    ponder bench paired results/search-arith-seeds/n4 dvts:4 best_of_n:4

``--b-run`` reads B from another run's folder, for two runs of one strategy that differ in a flag (another reward
model, another aggregation) over the same problems and seeds. ``--level`` keeps some levels only (the default pools
them). The line also gives both sides' mean generated tokens per problem over the paired problems, and their ratio.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.accuracy import bootstrap_ci, load_records


def per_problem(
    records: list[dict[str, Any]], strategy: str, n: int, field: str = "correct"
) -> dict[tuple[Any, str], float]:
    """(level, problem id) -> the mean of ``field`` (accuracy, or generated tokens) over the seeds, for one strategy
    at one N."""
    seen: dict[tuple[Any, str], list[float]] = defaultdict(list)
    for r in records:
        if r["strategy"] == strategy and r["n"] == n:
            seen[(r["level"], r["problem_id"])].append(float(r.get(field) or 0))
    return {key: sum(v) / len(v) for key, v in seen.items()}


def _tokens(records: list[dict[str, Any]], config: tuple[str, int], keys: list[tuple[Any, str]]) -> float:
    """Mean generated tokens per problem of ``config`` over ``keys``."""
    per = per_problem(records, *config, field="completion_tokens")
    return sum(per[k] for k in keys) / len(keys)


def compare(
    records: list[dict[str, Any]],
    a: tuple[str, int],
    b: tuple[str, int],
    b_records: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A's accuracy minus B's over the problems both answered, with a 95% paired bootstrap interval; B is read from
    ``b_records`` where given (another run), else from ``records``.

    >>> rows = [{"strategy": s, "n": 4, "level": 6, "problem_id": str(i), "correct": s == "a" or i % 2}
    ...         for s in ("a", "b") for i in range(4)]
    >>> compare(rows, ("a", 4), ("b", 4))["difference"]
    0.5
    >>> compare(rows, ("a", 4), ("a", 4), b_records=[r | {"correct": False} for r in rows])["difference"]
    1.0
    """
    left, right = per_problem(records, *a), per_problem(records if b_records is None else b_records, *b)
    common = sorted(set(left) & set(right), key=str)
    if not common:
        raise ValueError(f"no problem was answered by both {a[0]} N={a[1]} and {b[0]} N={b[1]}")
    diffs = [left[k] - right[k] for k in common]
    low, high = bootstrap_ci(diffs)
    tokens_a = _tokens(records, a, common)
    tokens_b = _tokens(records if b_records is None else b_records, b, common)
    return {
        "a": f"{a[0]} N={a[1]}",
        "b": f"{b[0]} N={b[1]}",
        "problems": len(common),
        "difference": _rounded(sum(diffs) / len(diffs)),
        "ci_low": _rounded(low),
        "ci_high": _rounded(high),
        "tokens_a": round(tokens_a, 1),
        "tokens_b": round(tokens_b, 1),
        "token_ratio": round(tokens_a / tokens_b, 4) if tokens_b else None,
    }


def _rounded(x: float) -> float:
    """``x`` to 4 places, a rounding error below zero shown as 0 (a mean of the per-problem differences that is 0
    sums to about -5e-19 in floating point, which would print as "-0.0%").

    >>> _rounded(-5.4e-19), _rounded(-0.01234)
    (0.0, -0.0123)
    """
    return round(x, 4) + 0.0


def _config(text: str) -> tuple[str, int]:
    strategy, _, n = text.partition(":")
    if not strategy or not n.isdigit():
        raise ValueError(f"a configuration reads STRATEGY:N, e.g. best_of_n:4, not {text!r}")
    return strategy, int(n)


def _levels(text: str | None):
    """A filter of records to the levels in ``text`` ("4,6"); None keeps every record."""
    if text is None:
        return lambda records: records
    try:
        levels = {int(level) for level in text.split(",")}
    except ValueError:
        raise ValueError(f"--level takes levels separated by commas, e.g. 4,6, not {text!r}") from None
    return lambda records: [r for r in records if r["level"] in levels]


def _records(run: Path) -> list[dict[str, Any]]:
    path = run / "records.jsonl"
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    return load_records(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ponder bench paired", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a ponder bench accuracy --output folder (its records.jsonl)")
    parser.add_argument("a", help="STRATEGY:N, e.g. dvts:4")
    parser.add_argument("b", help="STRATEGY:N to subtract, e.g. best_of_n:4")
    parser.add_argument("--b-run", type=Path, help="the run folder B is read from (default: RUN)")
    parser.add_argument("--level", help="levels to keep, comma-separated (default: all, pooled)")
    args = parser.parse_args(argv)
    try:
        keep = _levels(args.level)
        b_records = None if args.b_run is None else keep(_records(args.b_run))
        row = compare(keep(_records(args.run)), _config(args.a), _config(args.b), b_records)
        if args.b_run is not None:  # name the runs: the two configurations may read alike
            row |= {"a": f"{args.run.name} {row['a']}", "b": f"{args.b_run.name} {row['b']}"}
    except ValueError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{row['a']} - {row['b']}: {row['difference']:+.1%} over {row['problems']} problems "
        f"(95% paired bootstrap interval {row['ci_low']:+.1%} to {row['ci_high']:+.1%}); tokens per problem "
        f"{row['tokens_a']:,.0f} / {row['tokens_b']:,.0f}"
        + (f" = {row['token_ratio']:.2f}" if row["token_ratio"] is not None else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
