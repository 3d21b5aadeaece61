"""Pooled accuracy and tokens over every level of ``ponder bench accuracy`` runs, and issue 33's two targets for auto.

    .venv/bin/python results/auto/pool.py results/auto/test-fixed results/auto/test-beam results/auto/test-auto
    .venv/bin/python results/auto/pool.py results/auto/fresh --problems 50:100 --name fresh-pooled

Pools the levels: each (strategy, N) over all its problems (a problem's accuracy is its mean over seeds), with a 95%
percentile-bootstrap interval over problems, and the mean generated tokens per problem. The best fixed configuration
is the most accurate one of a fixed budget, neither ``auto`` nor one that stops early (``ADAPTIVE``; ties: the fewer
tokens). Target 1: the most accurate ``auto`` budget whose mean tokens are at most the best fixed one's is at least as
accurate. Target 2: an ``auto`` budget whose mean tokens are at most half the best fixed one's reaches its accuracy.
Then every adaptive configuration against the best fixed one. Differences are paired over the problems both answered
(:func:`benchmarks.paired.compare`). Writes ``pooled.json`` and ``pooled.md`` beside this script (``--name``: another
stem). ``--problems A:B`` keeps the problems whose index (an id's last field) is in [A, B).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.accuracy import bootstrap_ci, load_records
from benchmarks.paired import compare, per_problem


def pooled(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_config: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_config[(r["strategy"], r["n"])].append(r)
    rows = []
    for (strategy, n), group in sorted(by_config.items()):
        accuracy = list(per_problem(group, strategy, n).values())
        low, high = bootstrap_ci(accuracy)
        rows.append(
            {
                "strategy": strategy,
                "n": n,
                "problems": len(accuracy),
                "levels": sorted({r["level"] for r in group}),
                "accuracy": round(sum(accuracy) / len(accuracy), 4),
                "ci_low": round(low, 4),
                "ci_high": round(high, 4),
                "tokens": round(sum(r["completion_tokens"] for r in group) / len(group), 1),
            }
        )
    return rows


ADAPTIVE = {"auto", "adaptive_best_of_n"}  # their tokens vary per question: not fixed-budget configurations


def targets(rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> dict[str, Any]:
    fixed = [r for r in rows if r["strategy"] not in ADAPTIVE]
    auto = [r for r in rows if r["strategy"] == "auto"]
    best = max(fixed, key=lambda r: (r["accuracy"], -r["tokens"]))
    out: dict[str, Any] = {"best_fixed": best}
    for name, limit in (("at_its_tokens", best["tokens"]), ("at_half_its_tokens", best["tokens"] / 2)):
        within = [r for r in auto if r["tokens"] <= limit]
        if not within:
            out[name] = {"met": False, "why": f"no auto budget spent at most {limit:.0f} tokens"}
            continue
        pick = max(within, key=lambda r: (r["accuracy"], -r["tokens"]))
        diff = compare(records, ("auto", pick["n"]), (best["strategy"], best["n"]))
        out[name] = {"auto": pick, "paired": diff, "met": pick["accuracy"] >= best["accuracy"]}
    out["adaptive_against_best"] = [
        {
            "strategy": r["strategy"],
            "n": r["n"],
            "tokens": r["tokens"],
            "paired": compare(records, (r["strategy"], r["n"]), (best["strategy"], best["n"])),
        }
        for r in rows
        if r["strategy"] in ADAPTIVE
    ]
    return out


def markdown(rows: list[dict[str, Any]], result: dict[str, Any]) -> str:
    lines = ["| strategy | N | problems | accuracy | 95% CI | tokens / problem |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["strategy"] != "auto", r["strategy"], r["tokens"])):
        lines.append(
            f"| {r['strategy']} | {r['n']} | {r['problems']} | {r['accuracy']:.1%} | "
            f"{r['ci_low']:.1%}–{r['ci_high']:.1%} | {r['tokens']:,.0f} |"
        )
    best = result["best_fixed"]
    shown = f"{best['strategy']} N={best['n']}, {best['accuracy']:.1%} at {best['tokens']:,.0f} tokens"
    lines += ["", f"best fixed: {shown}"]
    for name in ("at_its_tokens", "at_half_its_tokens"):
        got = result[name]
        if "paired" not in got:
            lines.append(f"- {name}: not met ({got['why']})")
            continue
        d, a = got["paired"], got["auto"]
        lines.append(
            f"- {name}: auto token_budget={a['n']}: {a['accuracy']:.1%} at {a['tokens']:,.0f} tokens; paired "
            f"difference {d['difference']:+.1%} (95% CI {d['ci_low']:+.1%} to {d['ci_high']:+.1%}) over "
            f"{d['problems']} problems: {'met' if got['met'] else 'not met'} (point estimate)"
        )
    lines += ["", "every adaptive configuration paired against the best fixed:"]
    for got in result["adaptive_against_best"]:
        d = got["paired"]
        lines.append(
            f"- {got['strategy']} N={got['n']}: {d['difference']:+.1%} (95% CI {d['ci_low']:+.1%} to "
            f"{d['ci_high']:+.1%}) with {got['tokens'] / best['tokens']:.2f} of its tokens"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pool.py")
    parser.add_argument("runs", nargs="+", help="ponder bench accuracy output folders")
    parser.add_argument("--problems", default=None, help="A:B, the problem indices kept (default: all)")
    parser.add_argument("--name", default="pooled", help="stem of the files written beside this script")
    args = parser.parse_args(argv)
    records = [r for run in args.runs for r in load_records(Path(run) / "records.jsonl")]
    if args.problems:
        low, high = (int(x) for x in args.problems.split(":"))
        records = [r for r in records if low <= int(r["problem_id"].rsplit("-", 1)[1]) < high]
    if not records:
        print("pool.py: error: no records in the runs given", file=sys.stderr)
        return 2
    rows = pooled(records)
    result = targets(rows, records)
    here = Path(__file__).parent
    summary = {"runs": args.runs, "problems": args.problems, "rows": rows, "targets": result}
    (here / f"{args.name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    text = markdown(rows, result)
    (here / f"{args.name}.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
