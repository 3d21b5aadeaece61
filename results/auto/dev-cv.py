"""Cross-validation of auto's fit on the dev records of ``ponder tune auto`` (results/auto/tune-arith): per-bin
(Snell's rule, what the tuner does) against a pooled allocation across bins (a Lagrangian: per bin the configuration
maximising accuracy - lambda * tokens, the lambda whose dev-mean tokens fit the budget), for 3 to 10 bins. 4 folds,
5 shuffles; each cell: held-out accuracy / mean tokens at that budget. Dev data only (the train split).

    .venv/bin/python results/auto/dev-cv.py > results/auto/dev-cv.txt
    .venv/bin/python results/auto/dev-cv.py tune-arith-100 > results/auto/dev-cv-100.txt

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


def diff(got, signal):
    return 1 - float(np.mean([t.signal_of(r, signal) for r in got.values()]))


def pooled_fit(train, signal, bins, budget):
    d = {u: diff(train[u], signal) for u in train}
    edges = t.quantile_edges(list(d.values()), bins)
    members = {}
    for u, x in d.items():
        members.setdefault(t.bin_of(edges, x), []).append(u)
    stats = {b: {lab: t._stats(train, m, lab) for lab in labels} for b, m in members.items()}
    n = len(train)
    best = None
    for lam in np.concatenate([[0], np.geomspace(1e-6, 1e-1, 200)]):
        choice = {b: max(labels, key=lambda lab: (s[lab][0] - lam * s[lab][1], -s[lab][1])) for b, s in stats.items()}
        tok = sum(len(members[b]) * stats[b][choice[b]][1] for b in stats) / n
        acc = sum(len(members[b]) * stats[b][choice[b]][0] for b in stats) / n
        if tok <= budget and (best is None or acc > best[0]):
            best = (acc, tok, choice)
    cheapest = {b: min(labels, key=lambda lab: s[lab][1]) for b, s in stats.items()}
    return edges, cheapest if best is None else best[2]


def perbin_fit(train, signal, bins, budget, tol=0.0):
    d = {u: diff(train[u], signal) for u in train}
    edges = t.quantile_edges(list(d.values()), bins)
    members = {}
    for u, x in d.items():
        members.setdefault(t.bin_of(edges, x), []).append(u)
    choice = {b: t.pick({lab: t._stats(train, m, lab) for lab in labels}, budget, tol) for b, m in members.items()}
    return edges, choice


def evaluate(test, signal, edges, choice):
    acc, tok = [], []
    for u in test:
        b = t.bin_of(edges, diff(test[u], signal))
        lab = choice.get(b) or choice[max(choice)]
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
                fit = pooled_fit if mode == "pooled" else perbin_fit
                edges, choice = fit(train, signal, bins, b)
                a, tk = evaluate(test, signal, edges, choice)
                tot_acc += a * len(test)
                tot_tok += tk * len(test)
            res[b].append((tot_acc / len(keys), tot_tok / len(keys)))
    return {b: tuple(np.mean(v, axis=0)) for b, v in res.items()}


for mode in ("perbin", "pooled"):
    for bins in (3, 5, 8, 10):
        r = cv(mode, bins)
        print(mode, bins, " ".join(f"{b}:{a:.3f}/{tk:.0f}" for b, (a, tk) in r.items()))

for label in labels:
    acc, tok = t._stats(units, keys, label)
    print(f"fixed {label} {acc:.3f}/{tok:.0f}")
