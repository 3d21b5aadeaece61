r"""``ponder tune auto``: fit the ``auto`` strategy's policy file on a development split, for a policy and reward model.

    ponder tune auto --dataset arith --level 1,2,3,4,5,6,7,8 --split train --limit 100 \
        --output results/auto/tune-arith-100 --policy models/default-policy/auto-policy.json

Every problem is answered once per candidate configuration (``--configs``: a strategy or preset, ``:N`` for its
budget parameter) through ``auto`` itself with that configuration forced (``strategy_params.choice``), on the server's
own request path (:class:`benchmarks.accuracy.InProcessClient`): so each record holds the probe's difficulty signals
(its answer agreement and, with a reward model, its mean score), whether the configuration answered right, and the
tokens ``auto`` spends choosing it (the probe's included, less what the configuration reuses of it), exactly as
``auto`` will spend them.

Fitting (Snell et al. 2024, arXiv 2408.03314, section 3.2): per signal, the problems' difficulty (1 - signal) is cut
into ``--bins`` quantile bins (Snell's 5), and for each budget of ``--budgets`` (tokens per question) each bin gets a
configuration. ``--allocation pooled`` (the default): the choices whose mean tokens over all the dev problems fit the
budget with the best accuracy over them, so a hard bin may spend more than the budget where an easy one spends less
(a Lagrangian sweep, :func:`pooled`). ``--allocation per-bin``: Snell's rule, in each bin the best accuracy among
the configurations whose mean tokens in that bin fit the budget. Either takes the cheapest choice within
``--tolerance`` of the best; where none fits, the cheapest. Pooled is the default because it did better in
cross-validation on the training problems (``results/auto/dev-cv-adaptive.txt``, 5 bins: at budgets of 750 to 2000
tokens 0.8 to 2.0 points more accurate than per-bin at the same budget, spending nearer it; per-bin was ahead only
at budget 3000, 69.3% against 69.0%). The agreement table, used
where the server has no reward model, chooses among the configurations that need none. The default budget is the
smallest whose in-sample accuracy of ``auto`` is within ``--tolerance`` of its best.

Output in ``--output DIR``: ``records.jsonl`` (one line per problem and configuration; a run started again with the
same ``--output`` runs only what is missing), ``auto-policy.json`` (or ``--policy PATH``), and ``table.md`` (what the
command prints: the choices per bin and budget, the fixed configurations' dev accuracy and tokens, and ``auto``'s
in-sample accuracy and tokens per budget, optimistic by construction).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import strategies
from benchmarks.accuracy import (
    InProcessClient,
    UsageError,
    budget_param,
    load_records,
    params_for,
    parse_params,
    request_seed,
    resolve_models,
    strategy_request,
)
from benchmarks.servers import shown_path
from reward_models import PRM_FORMATS
from server.errors import APIError
from server.protocol import ChatCompletionRequest
from strategies.auto import AGREEMENT, FORMAT, WITH_PRM, parse_policy
from strategies.auto import difficulty_of as auto_difficulty
from training.tasks import UnknownTaskError, get_task

DEFAULT_CONFIGS = (
    "greedy,self_consistency:4,self_consistency:8,self_consistency:16,best_of_n:4,best_of_n:8,best_of_n:16,"
    "weighted_best_of_n:4,weighted_best_of_n:8,weighted_best_of_n:16,beam_search:4,beam_search:8,beam_search:16,"
    "adaptive_best_of_n:8,adaptive_best_of_n:16"
)
DEFAULT_BUDGETS = "500,750,1000,1500,2000,3000,4000"
DEFAULT_BINS = 5  # Snell et al.'s 5 difficulty quantiles
DEFAULT_PROBE = 4  # the smallest N of the grid: its vote is then a free choice
PER_BIN, POOLED = "per-bin", "pooled"  # how a budget is met: in each bin, or on average over the dev problems
ALLOCATIONS = (POOLED, PER_BIN)


@dataclass(frozen=True)
class Candidate:
    """One configuration of the grid: its label, the registered strategy and the params it runs with."""

    label: str
    strategy: str
    params: Mapping[str, Any]
    needs_scorer: bool


# ---- fitting (pure) -----------------------------------------------------------------------------------------------
Unit = tuple[Any, ...]  # (dataset, level, seed, problem id): one problem drawn with one seed


def signal_of(record: Mapping[str, Any], signal: str) -> float:
    """A record's probe signal: its agreement, or with the reward model the mean of agreement and PRM score."""
    if signal == WITH_PRM:
        return (record["agreement"] + record["prm_mean"]) / 2
    return record["agreement"]


def difficulty_of(got: Mapping[str, Mapping[str, Any]], signal: str) -> float:
    """A problem's difficulty from its probe signal (the mean over its records), as ``auto`` computes it when it
    serves (:func:`strategies.auto.difficulty_of`)."""
    return auto_difficulty(float(np.mean([signal_of(r, signal) for r in got.values()])))


def quantile_edges(values: Sequence[float], bins: int) -> list[float]:
    """The inner edges of ``bins`` quantile bins of ``values`` (fewer where quantiles coincide).

    >>> quantile_edges([0.0, 0.0, 0.0, 0.25, 0.5, 0.75], 3)
    [0.0, 0.333333]
    """
    if not values or bins < 2:
        return []
    cuts = np.quantile(np.asarray(values, dtype=float), [i / bins for i in range(1, bins)])
    return sorted({round(float(c), 6) for c in cuts})


def pick(stats: Mapping[str, tuple[float, float]], budget: float, tolerance: float) -> str:
    """The label whose accuracy is best among those whose mean tokens fit ``budget`` (the cheapest within
    ``tolerance`` of it); the cheapest label when none fits. ``stats``: label -> (accuracy, mean tokens).

    >>> pick({"a": (0.5, 100), "b": (0.8, 900), "c": (0.79, 400)}, 1000, 0.0), pick({"a": (0.5, 100)}, 50, 0.0)
    ('b', 'a')
    >>> pick({"a": (0.5, 100), "b": (0.8, 900), "c": (0.79, 400)}, 1000, 0.02)
    'c'
    """
    fits = [label for label, (_, tokens) in stats.items() if tokens <= budget]
    if not fits:
        return min(stats, key=lambda label: (stats[label][1], -stats[label][0]))
    best = max(stats[label][0] for label in fits)
    near = [label for label in fits if stats[label][0] >= best - tolerance - 1e-9]
    return min(near, key=lambda label: (stats[label][1], -stats[label][0]))


def bin_of(edges: Sequence[float], difficulty: float) -> int:
    return int(np.searchsorted(np.asarray(edges), difficulty, side="left"))


def units_of(records: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> dict[Unit, dict[str, Mapping[str, Any]]]:
    """Each problem-and-seed's record per label, for those answered by every label."""
    by_unit: dict[Unit, dict[str, Mapping[str, Any]]] = defaultdict(dict)
    for r in records:
        by_unit[(r["dataset"], r["level"], r["seed"], r["problem_id"])][r["config"]] = r
    return {unit: got for unit, got in by_unit.items() if all(label in got for label in labels)}


def pooled(
    stats: Sequence[Mapping[str, tuple[float, float]]],
    sizes: Sequence[int],
    budget: float,
    tolerance: float,
    also: Sequence[str] = (),
) -> list[str]:
    """One label per bin, so that the mean tokens over all the problems (bin i holds ``sizes[i]``) fit ``budget``
    at the best accuracy a Lagrangian sweep finds (the cheapest within ``tolerance`` of it): each bin takes the label
    of the best accuracy - lam * tokens, over a grid of lam. The sweep finds the allocations on the convex hull of
    accuracy against tokens, so ``also`` (the per-bin allocation, whose every bin fits the budget and so its mean)
    is weighed with them: the result is never below it. Where nothing fits, each bin's cheapest.
    ``stats``: per bin, label -> (accuracy, mean tokens).

    >>> easy = {"a": (0.9, 100), "b": (0.95, 900)}
    >>> hard = {"a": (0.1, 100), "b": (0.6, 900)}
    >>> pooled([easy, hard], [1, 1], 500, 0.0), pooled([easy, hard], [1, 1], 1000, 0.0), pooled([easy], [1], 50, 0.0)
    (['a', 'b'], ['b', 'b'], ['a'])
    """
    total = sum(sizes)
    found: list[tuple[float, float, list[str]]] = []
    sweep = [
        [max(s, key=lambda label, s=s: (s[label][0] - lam * s[label][1], -s[label][1])) for s in stats]
        for lam in np.concatenate([[0.0], np.geomspace(1e-7, 1.0, 421)])
    ]
    for labels in [*sweep, *([list(also)] if also else [])]:
        tokens = sum(n * s[label][1] for n, s, label in zip(sizes, stats, labels, strict=True)) / total
        if tokens <= budget + 1e-9:
            accuracy = sum(n * s[label][0] for n, s, label in zip(sizes, stats, labels, strict=True)) / total
            found.append((accuracy, tokens, labels))
    if not found:
        return [min(s, key=lambda label, s=s: (s[label][1], -s[label][0])) for s in stats]
    best = max(accuracy for accuracy, _, _ in found)
    return min((f for f in found if f[0] >= best - tolerance - 1e-9), key=lambda f: f[1])[2]


def fit_table(
    units: Mapping[Unit, Mapping[str, Mapping[str, Any]]],
    signal: str,
    labels: Sequence[str],
    budgets: Sequence[int],
    bins: int,
    tolerance: float,
    allocation: str = POOLED,
) -> dict[str, Any]:
    """One signal's table: edges, and per bin and budget the chosen label with its dev accuracy and tokens.
    ``allocation``: PER_BIN fits each bin's own mean tokens to the budget (Snell et al.'s rule), POOLED the mean over
    all the dev problems (:func:`pooled`)."""
    difficulty = {u: difficulty_of(got, signal) for u, got in units.items()}
    edges = quantile_edges(list(difficulty.values()), bins)
    members: dict[int, list[Unit]] = defaultdict(list)
    for unit, d in difficulty.items():
        members[bin_of(edges, d)].append(unit)
    mine = [members.get(b) or list(units) for b in range(len(edges) + 1)]  # an empty bin (never drawn): all decide
    stats = [{label: _stats(units, m, label) for label in labels} for m in mine]
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}")
    sizes = [len(members.get(b, [])) for b in range(len(mine))]
    columns = []
    for budget in budgets:
        column = [pick(s, budget, tolerance) for s in stats]  # per bin; an empty bin keeps it under pooled too
        if allocation == POOLED:
            shared = pooled(stats, sizes, budget, tolerance, also=column)
            column = [shared[b] if sizes[b] else column[b] for b in range(len(stats))]
        columns.append(column)
    cells = []
    for b, row_stats in enumerate(stats):
        row = []
        for column in columns:
            accuracy, tokens = row_stats[column[b]]
            row.append(
                {
                    "label": column[b],
                    "accuracy": round(accuracy, 4),
                    "tokens": round(tokens, 1),
                    "problems": len(mine[b]),
                }
            )
        cells.append(row)
    return {"edges": edges, "cells": cells}


def _stats(
    units: Mapping[Unit, Mapping[str, Mapping[str, Any]]], mine: Sequence[Unit], label: str
) -> tuple[float, float]:
    rows = [units[u][label] for u in mine]
    return float(np.mean([bool(r["correct"]) for r in rows])), float(np.mean([r["completion_tokens"] for r in rows]))


def simulate(
    units: Mapping[Unit, Mapping[str, Mapping[str, Any]]], signal: str, table: Mapping[str, Any], budget_index: int
) -> tuple[float, float]:
    """``auto``'s accuracy and mean tokens on ``units`` at one budget of ``table`` (in-sample: the units it was fitted
    on)."""
    correct, tokens = [], []
    for got in units.values():
        d = difficulty_of(got, signal)
        label = table["cells"][bin_of(table["edges"], d)][budget_index]["label"]
        correct.append(bool(got[label]["correct"]))
        tokens.append(got[label]["completion_tokens"])
    return float(np.mean(correct)), float(np.mean(tokens))


def fit(
    records: Sequence[Mapping[str, Any]],
    candidates: Sequence[Candidate],
    budgets: Sequence[int],
    bins: int,
    tolerance: float,
    probe_samples: int,
    allocation: str = POOLED,
) -> dict[str, Any]:
    """The policy (without provenance) from the records: one table per signal the records hold, the default budget
    from the richest table's in-sample accuracy per budget."""
    labels = [c.label for c in candidates]
    units = units_of(records, labels)
    if not units:
        raise ValueError("no problem was answered by every configuration: nothing to fit")
    scored = all(r.get("prm_mean") is not None for got in units.values() for r in got.values())
    free = [c.label for c in candidates if not c.needs_scorer]
    tables = {}
    if scored:
        tables[WITH_PRM] = fit_table(units, WITH_PRM, labels, budgets, bins, tolerance, allocation)
    if free:
        tables[AGREEMENT] = fit_table(units, AGREEMENT, free, budgets, bins, tolerance, allocation)
    if not tables:
        raise ValueError("every configuration needs a reward model and the records hold no reward-model scores")
    main = WITH_PRM if scored else AGREEMENT
    accuracy = [simulate(units, main, tables[main], i)[0] for i in range(len(budgets))]
    default = next(b for b, a in zip(budgets, accuracy, strict=True) if a >= max(accuracy) - tolerance - 1e-9)
    for table in tables.values():
        for row in table["cells"]:
            for cell in row:
                chosen = next(c for c in candidates if c.label == cell["label"])
                cell |= {"strategy": chosen.strategy, "params": dict(chosen.params)}
    return {
        "format": FORMAT,
        "probe_samples": probe_samples,
        "budgets": list(budgets),
        "default_budget": default,
        "tables": tables,
        "units": len(units),
    }


# ---- the report ---------------------------------------------------------------------------------------------------
def report(records: Sequence[Mapping[str, Any]], candidates: Sequence[Candidate], policy: Mapping[str, Any]) -> str:
    """The choices per bin and budget, the fixed configurations on the dev problems, and auto in-sample."""
    labels = [c.label for c in candidates]
    units = units_of(records, labels)
    budgets = policy["budgets"]
    lines = [f"{len(units)} dev problems x seeds; every cell: choice (dev accuracy, mean tokens incl. the probe)", ""]
    for signal, table in policy["tables"].items():
        edges = [None, *table["edges"], None]
        lines += [
            f"### {signal}",
            "",
            "| bin | difficulty | problems | " + " | ".join(f"{b} tokens" for b in budgets) + " |",
        ]
        lines.append("|---" * (3 + len(budgets)) + "|")
        for b, row in enumerate(table["cells"]):
            span = _span(edges[b], edges[b + 1])
            cells = " | ".join(f"{c['label']} ({c['accuracy']:.0%}, {c['tokens']:,.0f})" for c in row)
            lines.append(f"| {b} | {span} | {row[0]['problems']} | {cells} |")
        sims = [simulate(units, signal, table, i) for i in range(len(budgets))]
        lines += ["", "| auto in-sample | " + " | ".join(f"{a:.1%}, {t:,.0f}" for a, t in sims) + " |", ""]
    lines += ["### fixed configurations (each with the probe's cost, as auto pays it)", ""]
    lines += ["| configuration | dev accuracy | mean tokens |", "|---|---|---|"]
    for label in labels:
        accuracy, tokens = _stats(units, list(units), label)
        lines.append(f"| {label} | {accuracy:.1%} | {tokens:,.0f} |")
    lines.append(f"\ndefault budget: {policy['default_budget']} tokens")
    return "\n".join(lines) + "\n"


def _span(low: float | None, high: float | None) -> str:
    """A bin's difficulty range as the table shows it: (low, high]."""
    parts = ([f"> {low:g}"] if low is not None else []) + ([f"≤ {high:g}"] if high is not None else [])
    return ", ".join(parts) or "all"


# ---- running ------------------------------------------------------------------------------------------------------
async def traced(
    client: InProcessClient, prompt: str, params: dict[str, Any], max_tokens: int, temperature: float, seed: int
) -> dict[str, Any]:
    """One request of ``auto`` with a forced choice on the server's request path: its text, cost and probe signals."""
    request = ChatCompletionRequest(
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        strategy="auto",
        strategy_params=params,
    )
    try:
        job = client.service.prepare(request)
    except APIError as exc:  # refused before it ran: a bad configuration, the command's mistake
        raise UsageError(exc.message) from None
    try:
        result = await client.service.run(job)
    except APIError as exc:
        return {"text": "", "completion_tokens": job.ledger.completion_tokens, "error": str(exc)}
    why = result.extra["auto"]
    return {
        "text": result.choices[0].text,
        "completion_tokens": job.ledger.completion_tokens,
        "engine_calls": job.ledger.engine_calls,
        "scorer_calls": job.ledger.scorer_calls,
        "probe_tokens": why["probe_tokens"],
        "agreement": why["agreement"],
        "prm_mean": why.get("prm_mean"),
        "reused": why["reused_probe_samples"],
        "error": None,
    }


async def run_candidate(
    client: InProcessClient,
    candidate: Candidate,
    problems: Sequence[tuple[str, Any]],
    seed: int,
    args: Any,
    out: Any,
    bar: Any,
) -> None:
    """Every problem of ``problems`` ((dataset, problem), those not yet answered) answered with ``candidate``."""
    gate = asyncio.Semaphore(args.concurrency)
    choice = {"strategy": candidate.strategy, "params": dict(candidate.params)}
    params = {"choice": choice, "probe_samples": args.probe_samples}

    async def one(dataset: str, problem: Any) -> None:
        task = get_task(dataset)
        async with gate:
            got = await traced(
                client, task.prompt(problem), params, task.max_tokens, args.temperature, request_seed(seed, problem.id)
            )
        record = {
            "dataset": dataset,
            "level": problem.meta.get("level"),
            "config": candidate.label,
            "params": dict(candidate.params),
            "seed": seed,
            "problem_id": problem.id,
            "correct": task.grade(problem, got.pop("text")),
            **got,
        }
        out.write(json.dumps(record) + "\n")
        out.flush()
        bar.update(1)

    await asyncio.gather(*(one(dataset, problem) for dataset, problem in problems))


def candidates_of(args: argparse.Namespace) -> list[Candidate]:
    """The grid of ``--configs``; UsageError for an unknown strategy, a missing or needless ``:N``, or ``auto``."""
    out = []
    for label in args.configs:
        name, _, n = label.partition(":")
        try:
            spec, _ = strategies.resolve(name)
        except strategies.UnknownStrategyError as exc:
            raise UsageError(f"--configs {label!r}: {exc}") from None
        if spec.name == "auto":
            raise UsageError("--configs: auto cannot be one of its own choices")
        budget = budget_param(name)
        if bool(budget) != bool(n) or (n and not n.isdigit()) or (n and int(n) < 1):
            want = f"{name}:N (N sets {budget})" if budget else f"{name} with no :N"
            raise UsageError(f"--configs {label!r}: write {want}")
        extra = {key: value for dataset in args.dataset for key, value in params_for(args, dataset, name).items()}
        strategy, params, _ = strategy_request(name, int(n or 1), extra)
        needs = spec.needs_scorer or params.get("value_source") == "prm"
        out.append(Candidate(label, strategy, params, needs))
    if len({c.label for c in out}) < len(out):
        raise UsageError("--configs names a configuration twice")
    return out


def validate(args: argparse.Namespace) -> list[Candidate]:
    for name in args.dataset:
        try:
            task = get_task(name)
        except UnknownTaskError as exc:
            raise UsageError(str(exc)) from None
        if args.split not in task.splits:
            raise UsageError(f"task {name!r} has no split {args.split!r}; splits: {', '.join(task.splits)}")
        if args.level and task.levels and [lv for lv in args.level if lv not in task.levels]:
            raise UsageError(f"task {name!r} has levels {', '.join(map(str, task.levels))} only")
    if args.split == "test":
        raise UsageError("--split test: fit on a development split (train, val), never on the held-out test problems")
    if not args.budgets or min(args.budgets) < 1 or sorted(set(args.budgets)) != args.budgets:
        raise UsageError("--budgets must be increasing token counts of at least 1")
    if args.bins < 1 or args.probe_samples < 1 or args.limit < 1 or args.concurrency < 1:
        raise UsageError("--bins, --probe-samples, --limit and --concurrency must be at least 1")
    if not 0 <= args.tolerance < 1:
        raise UsageError("--tolerance must be in [0, 1)")
    if not args.seed:
        raise UsageError("--seed needs at least one seed")
    args.params = parse_params(args.param)
    candidates = candidates_of(args)
    if args.no_prm and any(c.needs_scorer for c in candidates):
        needing = ", ".join(c.label for c in candidates if c.needs_scorer)
        raise UsageError(f"--no-prm: {needing} need a reward model; leave them out of --configs")
    return candidates


def load_problems(args: argparse.Namespace) -> list[tuple[str, Any]]:
    problems = []
    for dataset in args.dataset:
        task = get_task(dataset)
        for level in (args.level or [None]) if task.levels else [None]:
            try:
                found = task.load(args.split, limit=args.limit, seed=0, level=level, data_file=args.data_file)
            except (ValueError, FileNotFoundError) as exc:
                raise UsageError(str(exc)) from None
            problems += [(dataset, p) for p in found]
    return problems


def refuse_other_params(records: Sequence[Mapping[str, Any]], candidates: Sequence[Candidate], path: Path) -> None:
    """UsageError when ``path`` holds a candidate's records made with other params (another ``--param``): resuming
    would fit on answers the policy's params did not give. Records written before params were recorded pass."""
    wanted = {c.label: dict(c.params) for c in candidates}
    for r in records:
        if r["config"] in wanted and "params" in r and r["params"] != wanted[r["config"]]:
            raise UsageError(
                f"{path} holds {r['config']} answered with params {json.dumps(r['params'])}, not "
                f"{json.dumps(wanted[r['config']])}: use another --output"
            )


async def run(
    args: argparse.Namespace, candidates: Sequence[Candidate], client: Any = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Answer what ``records.jsonl`` lacks, then fit: the policy and the records it was fitted on; ``client``: a ready
    one (tests)."""
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    problems = load_problems(args)
    path = output / "records.jsonl"
    records = load_records(path, repair=True)
    refuse_other_params(records, candidates, path)
    done = {(r["config"], r["seed"], r["dataset"], r["problem_id"]) for r in records}
    todo = [
        (c, seed, [(d, p) for d, p in problems if (c.label, seed, d, p.id) not in done])
        for c in sorted(candidates, key=lambda c: c.params.get("num_samples", 1))
        for seed in args.seed
    ]
    remaining = sum(len(batch) for _, _, batch in todo)
    models = None if client is not None else resolve_models(args)
    if models is not None and models.prm is None and any(c.needs_scorer for c in candidates):
        needing = ", ".join(c.label for c in candidates if c.needs_scorer)
        raise UsageError(f"this run has no reward model and {needing} need one: pass --prm, or leave them out")
    if remaining:
        owned = client is None
        if owned:
            print(f"ponder tune auto: {models.line()}", file=sys.stderr)
            client = await InProcessClient.start(
                models.policy, models.prm, args.seed[0], models.kv_cache_gib, args.prm_format
            )
        try:
            total = len(candidates) * len(args.seed) * len(problems)
            with (
                path.open("a") as out,
                tqdm(total=total, initial=total - remaining, desc="tune auto", unit="answer") as bar,
            ):
                for candidate, seed, batch in todo:
                    if batch:
                        bar.set_postfix_str(f"{candidate.label} seed {seed}")
                        await run_candidate(client, candidate, batch, seed, args, out, bar)
        finally:
            if owned:
                await client.close()
    wanted = {(d, p.id) for d, p in problems}
    labels = {c.label for c in candidates}
    kept = [
        r
        for r in load_records(path)
        if (r["dataset"], r["problem_id"]) in wanted and r["config"] in labels and r["seed"] in args.seed
    ]
    try:
        policy = fit(kept, candidates, args.budgets, args.bins, args.tolerance, args.probe_samples, args.allocation)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    policy["provenance"] = provenance(args, models, policy.pop("units"))
    parse_policy(policy, "ponder tune auto")  # what auto will read: a mistake here is a bug, not the user's
    return policy, kept


def provenance(args: argparse.Namespace, models: Any, units: int) -> dict[str, Any]:
    return {
        "model": shown_path(models.policy) if models else None,
        "prm": (shown_path(models.prm) if models.prm else None) if models else None,
        "dataset": args.dataset,
        "split": args.split,
        "levels": args.level,
        "limit_per_level": args.limit,
        "seeds": args.seed,
        "problems": units,
        "temperature": args.temperature,
        "configs": args.configs,
        "bins": args.bins,
        "allocation": args.allocation,
        "tolerance": args.tolerance,
        "date": datetime.date.today().isoformat(),
        "command": "ponder tune auto " + " ".join(args.argv),
    }


# ---- command line -------------------------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ponder tune auto",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dataset", type=_names, required=True, help="task names, comma-separated (arith, game24, ...)"
    )
    parser.add_argument("--data-file", help="JSONL file for the loaders (gsm8k, math500, aime)")
    parser.add_argument("--split", default="train", help="development split to fit on (default: train; never test)")
    parser.add_argument("--level", type=_ints, default=None, help="levels, comma-separated (tasks with levels)")
    parser.add_argument("--limit", type=int, default=100, help="problems per dataset and level (default: 100)")
    parser.add_argument("--seed", type=_ints, default=[0], help="seeds, comma-separated (default: 0)")
    parser.add_argument(
        "--configs",
        type=_names,
        default=DEFAULT_CONFIGS,
        help="candidate configurations: STRATEGY:N or a preset (default: %(default)s)",
    )
    parser.add_argument(
        "--budgets",
        type=_ints,
        default=DEFAULT_BUDGETS,
        help="token budgets per question, increasing (default: %(default)s)",
    )
    parser.add_argument(
        "--bins",
        type=int,
        default=DEFAULT_BINS,
        help="difficulty bins, quantiles of the dev problems (default: 5, Snell et al.)",
    )
    parser.add_argument(
        "--allocation",
        choices=ALLOCATIONS,
        default=POOLED,
        help="how a budget is met: the mean tokens over all the dev problems (pooled: hard bins may spend more, easy "
        "ones less) or each bin's own (per-bin, Snell et al.'s rule) (default: pooled)",
    )
    parser.add_argument("--probe-samples", type=int, default=DEFAULT_PROBE, help="samples of the probe (default: 4)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="a cheaper choice within this much dev accuracy of the best wins (default: 0)",
    )
    parser.add_argument(
        "--temperature", type=float, default=0.8, help="the requests' sampling temperature (default: 0.8)"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="STRATEGY.KEY=VALUE",
        help="a candidate's strategy parameter (JSON value); repeatable",
    )
    parser.add_argument("--model", help="policy checkpoint (default: the task's own, else the shipped default)")
    parser.add_argument("--prm", help="reward model checkpoint (default: the task's own, else the shipped default)")
    parser.add_argument("--no-prm", action="store_true", help="load no reward model: an agreement-only policy")
    parser.add_argument("--prm-format", choices=PRM_FORMATS, help="how to read --prm (default: from its config.json)")
    parser.add_argument("--kv-cache-gib", type=float, help="in-process vLLM KV cache (default: the task's, else 2)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (default: 64)")
    parser.add_argument("--output", required=True, help="output folder (records.jsonl, auto-policy.json, table.md)")
    parser.add_argument("--policy", help="where to write the policy file (default: OUTPUT/auto-policy.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        candidates = validate(args)
        policy, records = asyncio.run(run(args, candidates))
    except UsageError as exc:
        print(f"ponder tune auto: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: finished answers are kept in records.jsonl; run the same command to resume", file=sys.stderr
        )
        return 130
    output = Path(args.output)
    target = Path(args.policy) if args.policy else output / "auto-policy.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(policy, indent=1) + "\n")
    table = report(records, candidates, policy)
    (output / "table.md").write_text(table)
    print(table, end="")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
