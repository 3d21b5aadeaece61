"""Cross-validation of auto's fit on the dev records of ``ponder tune auto`` (results/auto/tune-arith): the tuner's
two allocations (``benchmarks.tune_auto.fit_table``): per-bin (Snell's rule: each bin's mean tokens fit the budget)
against pooled (the mean over all the problems fits it), for 3 to 10 bins. 4 folds, 5 shuffles; each cell:
held-out accuracy / mean tokens at that budget. Dev data only (the train split).

    .venv/bin/python results/auto/dev-cv.py > results/auto/dev-cv.txt
    .venv/bin/python results/auto/dev-cv.py tune-arith-100 > results/auto/dev-cv-100.txt
    .venv/bin/python results/auto/dev-cv.py tune-adaptive > results/auto/dev-cv-adaptive.txt

The argument names the records' folder under results/auto (default: tune-arith). The last lines: each fixed
configuration's accuracy and mean tokens on all the dev problems, for reference.
"""

import json
import random
import sys
from pathlib import Path

import numpy as np

import benchmarks.tune_auto as t
from strategies.auto import WITH_PRM

HERE = Path(__file__).parent
RECORDS = HERE / (sys.argv[1] if len(sys.argv) > 1 else "tune-arith") / "records.jsonl"
rs = [json.loads(line) for line in RECORDS.open()]
labels = sorted({r["config"] for r in rs})
units = t.units_of(rs, labels)
keys = sorted(units)
budgets = [300, 400, 500, 600, 750, 900, 1000, 1250, 1500, 2000, 3000]


def fitted(train, signal, bins, budget, allocation):
    """The tuner's own fit (benchmarks.tune_auto.fit_table) on the training folds, at one budget."""
    table = t.fit_table(train, signal, labels, [budget], bins, 0.0, allocation)
    return table["edges"], {b: row[0]["label"] for b, row in enumerate(table["cells"])}


def evaluate(test, signal, edges, choice):
    acc, tok = [], []
    for u in test:
        lab = choice[t.bin_of(edges, t.difficulty_of(test[u], signal))]
        acc.append(test[u][lab]["correct"])
        tok.append(test[u][lab]["completion_tokens"])
    return np.mean(acc), np.mean(tok)


def cv(mode, bins, signal=WITH_PRM, folds=4, reps=5):
    res = {b: [] for b in budgets}
    for rep in range(reps):
        ks = keys[:]
        random.Random(rep).shuffle(ks)
        parts = [ks[i::folds] for i in range(folds)]
        for b in budgets:
            tot_acc, tot_tok = 0, 0
            for i in range(folds):
                train = {u: units[u] for j, p in enumerate(parts) if j != i for u in p}
                test = {u: units[u] for u in parts[i]}
                edges, choice = fitted(train, signal, bins, b, mode)
                a, tk = evaluate(test, signal, edges, choice)
                tot_acc += a * len(test)
                tot_tok += tk * len(test)
            res[b].append((tot_acc / len(keys), tot_tok / len(keys)))
    return {b: tuple(np.mean(v, axis=0)) for b, v in res.items()}


for mode in (t.PER_BIN, t.POOLED):
    for bins in (3, 5, 8, 10):
        r = cv(mode, bins)
        print(mode, bins, " ".join(f"{b}:{a:.3f}/{tk:.0f}" for b, (a, tk) in r.items()))

for label in labels:
    acc, tok = t._stats(units, keys, label)
    print(f"fixed {label} {acc:.3f}/{tok:.0f}")
