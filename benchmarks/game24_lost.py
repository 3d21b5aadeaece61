"""Where a Game of 24 tree search loses the way to 24: the first level of each failed search's tree at which no
kept state can still make 24.

Runs ``tree_of_thought`` with ``return_trace`` on the test puzzles (the in-process engine, as ``ponder bench
accuracy`` runs it), walks every node of every tree with the task's exact step checker (a state is good while every
step is valid and 24 stays reachable from the numbers left), and counts, for each failed puzzle, the first depth
whose kept states (not pruned, not duplicates) are all bad, and whether any good state had been generated there.
A puzzle lost at depth 1 with none generated had no good first step to keep: no value function could have saved it.

    ponder bench game24-lost --breadth 16 --root-samples 5 --output results/game24-lost/root-5.json
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import strategies
from benchmarks import save_json
from benchmarks.accuracy import InProcessClient
from server.protocol import ChatCompletionRequest
from strategies.sampling import split_steps
from training.tasks import get_task
from training.tasks.game24 import numbers_of, walk_steps


def _prefix(nodes: list[dict[str, Any]], node: dict[str, Any]) -> str:
    parts = []
    while node["parent"] is not None:
        parts.append(node["text"])
        node = nodes[node["parent"]]
    return "".join(reversed(parts))


def levels(nodes: list[dict[str, Any]], numbers: list[int]) -> dict[int, dict[str, int]]:
    """Per depth: states generated, states kept, good states generated, good states kept.

    >>> tree = [{"parent": None, "text": ""},
    ...         {"parent": 0, "depth": 1, "text": "4 * 6 = 24 (left: 1 1 24)\\n\\n"},
    ...         {"parent": 0, "depth": 1, "text": "1 + 1 = 2 (left: 2 4 6)\\n\\n", "pruned": True}]
    >>> levels(tree, [1, 1, 4, 6])[1]
    {'states': 2, 'kept': 1, 'good': 1, 'good_kept': 1}
    """

    out: dict[int, dict[str, int]] = {}
    for node in nodes[1:]:
        labels, _ = walk_steps(numbers, split_steps(_prefix(nodes, node), "\n\n"))
        good = bool(labels) and labels[-1]
        kept = not node.get("pruned") and not node.get("duplicate")
        row = out.setdefault(node["depth"], {"states": 0, "kept": 0, "good": 0, "good_kept": 0})
        row["states"] += 1
        row["kept"] += kept
        row["good"] += good
        row["good_kept"] += good and kept
    return out


def lost_at(by_depth: dict[int, dict[str, int]]) -> str:
    """``"depth D, none generated"`` / ``"depth D, pruned"`` for the first level with no good kept state, else
    ``"kept to the end"``.

    >>> lost_at({1: {"states": 5, "kept": 4, "good": 0, "good_kept": 0}})
    'depth 1, none generated'
    >>> first = {"states": 5, "kept": 4, "good": 2, "good_kept": 1}
    >>> lost_at({1: first, 2: {"states": 9, "kept": 4, "good": 1, "good_kept": 0}})
    'depth 2, pruned'
    """
    for depth in sorted(by_depth):
        row = by_depth[depth]
        if not row["good_kept"]:
            return f"depth {depth}, {'pruned' if row['good'] else 'none generated'}"
    return "kept to the end"


async def diagnose(args: argparse.Namespace) -> dict[str, Any]:

    task = get_task("game24")
    problems = task.load("test", limit=args.limit)
    client = await InProcessClient.start(args.model, args.prm, args.seed, args.kv_cache_gib)
    params = {"breadth": args.breadth, "value_source": "prm", "final_check": "game24", "return_trace": True}
    if args.root_samples is not None:
        params["root_samples"] = args.root_samples
    gate, rows = asyncio.Semaphore(64), []

    async def one(problem: Any) -> None:
        request = ChatCompletionRequest(
            messages=[{"role": "user", "content": task.prompt(problem)}],
            max_tokens=task.max_tokens,
            temperature=args.temperature,
            strategy="tree_of_thought",
            strategy_params=params,
        )
        async with gate:
            result = await client.service.run(client.service.prepare(request))
        by_depth = levels(result.extra["tree"]["nodes"], numbers_of(problem))
        correct = task.grade(problem, result.choices[0].text)
        rows.append({"id": problem.id, "correct": correct, "lost": None if correct else lost_at(by_depth)})

    try:
        await asyncio.gather(*(one(p) for p in problems))
    finally:
        await client.close()
    lost = Counter(row["lost"] for row in rows if row["lost"])
    print(f"{sum(r['correct'] for r in rows)} of {len(rows)} solved; the failed ones lost the way at:")
    for where, count in lost.most_common():
        print(f"  {where}: {count}")
    return {"params": params, "solved": sum(r["correct"] for r in rows), "lost": dict(lost), "puzzles": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ponder bench game24-lost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/game24-policy", help="policy checkpoint folder")
    parser.add_argument("--prm", default="models/game24-prm", help="PRM checkpoint folder")
    parser.add_argument("--breadth", type=int, default=16, help="tree_of_thought breadth b (default: 16)")
    parser.add_argument("--root-samples", type=int, help="first steps at the root (default: the strategy's, b*k)")
    parser.add_argument("--limit", type=int, default=100, help="test puzzles (default: 100)")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0, help="the engine's seed (default: 0)")
    parser.add_argument("--kv-cache-gib", type=float, default=2.0)
    parser.add_argument("--output", type=Path, help="JSON file for the counts and every puzzle's verdict")
    args = parser.parse_args(argv)
    bad = [f"--{name} must be a folder" for name in ("model", "prm") if not Path(getattr(args, name)).is_dir()]
    if args.limit < 1:
        bad.append("--limit must be at least 1")
    try:
        strategies.get("tree_of_thought").config_cls(breadth=args.breadth, root_samples=args.root_samples)
    except ValueError as exc:
        bad.append(str(exc))
    if bad:
        print(f"{parser.prog}: error: {'; '.join(bad)}", file=sys.stderr)
        return 2
    report = asyncio.run(diagnose(args))
    save_json(args.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
