"""Per problem, did forcing change greedy's answer? Seed 0 of ``L<L>-plain`` (greedy) against
``L<L>-forced-greedy``. Run from the repository root: ``python3 results/reasoning-policy/paired/greedy_flips.py``."""

import collections
import json

R = "results/reasoning-policy"


def greedy_records(path: str) -> dict[str, dict]:
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    return {r["problem_id"]: r for r in rows if r["strategy"] == "greedy" and r["seed"] == 0}


for L in (4, 6):
    plain = greedy_records(f"{R}/L{L}-plain/records.jsonl")
    forced = greedy_records(f"{R}/L{L}-forced-greedy/records.jsonl")
    c = collections.Counter((forced[k]["engine_calls"] > 1, plain[k]["correct"], forced[k]["correct"]) for k in plain)
    print(f"L{L} greedy, seed 0, {len(plain)} problems:")
    for was_forced in (True, False):
        n = sum(v for (fo, _, _), v in c.items() if fo == was_forced)
        name = "forced (a Wait inserted)" if was_forced else "not forced"
        print(
            f"  {name}: {n} problems; plain right->forced right {c[(was_forced, True, True)]}, "
            f"right->wrong {c[(was_forced, True, False)]}, wrong->right {c[(was_forced, False, True)]}, "
            f"wrong->wrong {c[(was_forced, False, False)]}"
        )
