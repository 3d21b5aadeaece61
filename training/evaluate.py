r"""``ponder eval prm|orm``: how well a reward model finds the first wrong step (or the wrong outcome).

PRM metric, as ProcessBench defines it (Zheng et al. 2024, "ProcessBench: Identifying Process Errors in Mathematical
Reasoning"): the PRM's predicted first error is the first step scored below ``threshold`` (-1 when none is); the
accuracy on erroneous solutions is the share whose predicted index equals the labelled one, the accuracy on correct
solutions the share predicted -1, and F1 is their harmonic mean. Also reported: step accuracy against the
Math-Shepherd step labels the first error implies, and everything per ``level`` when the data has one.

ORM metric: accuracy of ``P(right) >= threshold`` against the final-answer outcome, and the AUROC.

``ponder eval bon``: what the reward model buys at inference, greedy against ``strategies.best_of_n`` with the PRM
per arith level on the vLLM engine, with majority vote, other aggregations, the ORM and pass@N on the same samples.

Data: ProcessBench JSONL (``problem``, ``steps``, ``label`` = index of the first wrong step or -1) or our stepwise
labels (``ponder label`` output: ``prompt``, ``completions``, ``labels``; a folder or JSONL). Scoring runs the
checkpoint in torch (``--backend torch``, the training-time model) or serves it on vLLM's pooling runner exactly as
``ponder serve`` does (``--backend vllm``, through ``reward_models.load_scorer``).

    ponder eval prm --model models/default-prm --data runs/prm-data/test
    ponder eval bon --policy models/default-policy --prm models/default-prm --levels 3 4 5 6 --n 16

``ponder eval policy``, ``compare`` and ``champ`` live in their own modules (:data:`DELEGATED`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reward_models import PRM_FORMATS, load_scorer, resolve_format
from reward_models.registry import FORMATS
from strategies.aggregation import aggregate_scores
from strategies.answers import cluster
from strategies.base import SamplingSpec, Task
from strategies.best_of_n import BestOfNConfig, best_of_n
from training.champ import champ_items
from training.evaluate_policy import chat_prompt
from training.label import load_rows, summary
from training.tasks import first_error, get_task


def predicted_first_error(scores: Sequence[float], threshold: float = 0.5) -> int:
    """Index of the first step scored below ``threshold``, -1 when none is.

    >>> predicted_first_error([0.9, 0.4, 0.8]), predicted_first_error([0.9, 0.6])
    (1, -1)
    """
    return next((i for i, s in enumerate(scores) if s < threshold), -1)


def processbench_f1(predicted: Sequence[int], gold: Sequence[int]) -> dict[str, Any]:
    """ProcessBench's accuracy on erroneous and on correct solutions, and their harmonic mean (F1).

    >>> processbench_f1([1, -1, 2, -1], [1, -1, 0, 2])
    {'error_accuracy': 0.3333333333333333, 'correct_accuracy': 1.0, 'f1': 0.5, 'num_error': 3, 'num_correct': 1}
    """
    error = [p == g for p, g in zip(predicted, gold, strict=True) if g != -1]
    correct = [p == -1 for p, g in zip(predicted, gold, strict=True) if g == -1]
    error_acc = sum(error) / len(error) if error else float("nan")
    correct_acc = sum(correct) / len(correct) if correct else float("nan")
    f1 = 2 * error_acc * correct_acc / (error_acc + correct_acc) if error_acc + correct_acc > 0 else 0.0
    return {
        "error_accuracy": error_acc,
        "correct_accuracy": correct_acc,
        "f1": f1,
        "num_error": len(error),
        "num_correct": len(correct),
    }


def load_items(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows as ``{"problem", "steps", "label", "outcome", "level"}`` from ProcessBench JSONL or stepwise labels."""

    if str(path) == "champ":  # CHAMP's 540 annotated solutions, from the installed package
        rows: Any = champ_items()
    else:
        rows = load_rows(path)
    items = []
    for row in rows:
        if "steps" in row and "label" in row:  # ProcessBench
            label = int(row["label"])
            outcome = row.get("final_answer_correct")
            item = {"problem": row["problem"], "steps": list(row["steps"]), "label": label}
        else:  # stepwise: prompt, completions, labels
            labels = row.get("exact_labels") or row["labels"]
            label = first_error([bool(x >= 0.5) for x in labels])
            outcome = row.get("outcome")
            item = {"problem": row["prompt"], "steps": list(row["completions"]), "label": label}
        item["outcome"] = bool(label == -1 if outcome is None else outcome)
        item["level"] = row.get("level")
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    return items


def prm_metrics(items: Sequence[dict[str, Any]], scores: Sequence[Sequence[float]], threshold: float) -> dict:
    """ProcessBench F1 and step accuracy, overall and per level, and ``outcome_auroc``: how well each reduction of
    the step scores to one (``last``, ``min``, ``prod``; the quantity best-of-N ranks by) separates right final
    answers from wrong ones, comparable with an ORM's ``auroc``."""

    def block(indices: list[int]) -> dict[str, Any]:
        predicted = [predicted_first_error(scores[i], threshold) for i in indices]
        out = processbench_f1(predicted, [items[i]["label"] for i in indices])
        steps = [
            (s >= threshold) == (items[i]["label"] == -1 or k < items[i]["label"])
            for i in indices
            for k, s in enumerate(scores[i])
        ]
        out["step_accuracy"] = sum(steps) / max(len(steps), 1)
        out["num_solutions"] = len(indices)
        return out

    result = {"threshold": threshold, **block(list(range(len(items))))}
    result["outcome_auroc"] = outcome_aurocs(items, scores)
    levels = defaultdict(list)
    for i, item in enumerate(items):
        if item.get("level") is not None:
            levels[str(item["level"])].append(i)
    if len(levels) > 1:
        result["levels"] = {level: block(indices) for level, indices in sorted(levels.items())}
    return result


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """The chance that a random positive scores above a random negative one (ties count half): the Mann-Whitney U
    statistic over both counts, from average ranks.

    >>> auroc([0.9, 0.4], [0.5, 0.1])
    0.75
    >>> auroc([0.5], [0.5, 0.1])
    0.75
    """
    ordered = sorted([(s, True) for s in positives] + [(s, False) for s in negatives])
    rank_sum, i = 0.0, 0
    while i < len(ordered):
        j = i
        while j < len(ordered) and ordered[j][0] == ordered[i][0]:
            j += 1
        rank_sum += sum(1 for k in range(i, j) if ordered[k][1]) * (i + j + 1) / 2  # ties share their mean rank
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def outcome_aurocs(items: Sequence[dict[str, Any]], scores: Sequence[Sequence[float]]) -> dict[str, float]:
    """AUROC of right against wrong final answers, per reduction of the step scores.

    >>> items = [{"outcome": True}, {"outcome": False}]
    >>> outcome_aurocs(items, [[0.2, 0.9], [0.8, 0.3]])
    {'last': 1.0, 'min': 0.0, 'prod': 0.0}
    """

    out = {}
    for how in ("last", "min", "prod"):
        right, wrong = split_by_outcome(items, [aggregate_scores(s, how) for s in scores])
        out[how] = auroc(right, wrong) if right and wrong else float("nan")
    return out


def split_by_outcome(items: Sequence[dict[str, Any]], values: Sequence[float]) -> tuple[list[float], list[float]]:
    """The values of the items whose final answer is right, and of those whose answer is wrong."""
    right = [v for v, item in zip(values, items, strict=True) if item["outcome"]]
    wrong = [v for v, item in zip(values, items, strict=True) if not item["outcome"]]
    return right, wrong


def orm_metrics(items: Sequence[dict[str, Any]], scores: Sequence[float], threshold: float) -> dict[str, Any]:
    """Outcome accuracy at ``threshold`` and AUROC (the chance a right solution outscores a wrong one).

    >>> orm_metrics([{"outcome": True}, {"outcome": False}], [0.7, 0.6], 0.65)["auroc"]
    1.0
    """
    right, wrong = split_by_outcome(items, scores)
    accuracy = sum((s >= threshold) == item["outcome"] for s, item in zip(scores, items, strict=True))
    return {
        "threshold": threshold,
        "outcome_accuracy": accuracy / max(len(items), 1),
        "auroc": auroc(right, wrong) if right and wrong else float("nan"),
        "num_right": len(right),
        "num_wrong": len(wrong),
    }


async def _score_vllm(
    path: str, items: Sequence[tuple[str, Sequence[str]]], format: str | None = None
) -> list[list[float]]:

    scorer = await load_scorer(path, format=format)
    try:
        return await scorer.score(items, "eval")
    finally:
        await scorer.shutdown()


def evaluate_reward_model(
    path: str | Path,
    data: str | Path,
    threshold: float = 0.5,
    backend: str = "torch",
    limit: int | None = None,
    format: str | None = None,
) -> dict[str, Any]:
    """Score ``data`` with the PRM or ORM at ``path`` and return :func:`prm_metrics` or :func:`orm_metrics`.

    ``format``: a registered reward-model format (None: the checkpoint's, :func:`reward_models.resolve_format`);
    ``backend``: ``torch`` scores with the format's torch scorer, ``vllm`` serves it as ``ponder serve`` does."""
    fmt = resolve_format(path, format)
    items = load_items(data, limit)
    pairs = [(item["problem"], item["steps"]) for item in items]
    is_prm = fmt.kind == "prm"
    if backend == "vllm":
        scores = asyncio.run(_score_vllm(str(path), pairs, fmt.name))
    else:
        scores = fmt.load_torch_scores()(path, pairs)
    metrics = prm_metrics(items, scores, threshold) if is_prm else orm_metrics(items, [s[0] for s in scores], threshold)
    return {"model": str(path), "data": str(data), "backend": backend, "format": format, **metrics}


def markdown_table(result: dict[str, Any]) -> list[str]:
    """The metrics as a markdown table, one row overall and one per level."""
    rows = [("all", result), *((f"level {k}", v) for k, v in result.get("levels", {}).items())]
    if "f1" in result:
        head = ["| solutions | F1 | acc. erroneous | acc. correct | step acc. |", "|---|---|---|---|---|"]
        body = [
            f"| {name} ({r['num_error']} err / {r['num_correct']} ok) | {r['f1']:.3f} | {r['error_accuracy']:.3f} "
            f"| {r['correct_accuracy']:.3f} | {r['step_accuracy']:.3f} |"
            for name, r in rows
        ]
    else:
        head = ["| solutions | outcome acc. | AUROC |", "|---|---|---|"]
        body = [
            f"| {n} ({r['num_right']} right / {r['num_wrong']} wrong) | {r['outcome_accuracy']:.3f} "
            f"| {r['auroc']:.3f} |"
            for n, r in rows
        ]
    return [f"Threshold {result['threshold']}, data `{result['data']}`.", "", *head, *body]


# ---- best-of-N with the reward model against greedy, per task level ----------------------------------------------
async def best_of_n_levels(
    policy: str, prm: str, orm: str | None, levels: Sequence[int], limit: int, num_samples: int, seed: int = 0
) -> dict[str, Any]:
    """Greedy against ``strategies.best_of_n`` with the PRM on ``limit`` arith test problems per level.

    The N candidates of each best_of_n run are also reranked by the other step aggregations (min, prod), by
    majority vote and by the ORM (when given), and give pass@N: every method judged on the same samples.
    """
    # deferred import: vLLM (an optional extra, seconds to import) only where an engine is used
    from server.engine.vllm_engine import VLLMEngine

    task = get_task("arith")
    engine = await VLLMEngine.create(policy, kv_cache_gib=1.0, seed=seed)
    scorers = {"prm": await load_scorer(prm)} | ({"orm": await load_scorer(orm)} if orm else {})
    config = BestOfNConfig(num_samples=num_samples, aggregation="last")
    greedy_spec = SamplingSpec(temperature=0.0, max_tokens=task.max_tokens)
    rows: dict[str, Any] = {}
    try:
        for level in levels:
            problems = task.load("test", limit=limit, seed=seed, level=level)
            prompts = [chat_prompt(engine.tokenizer, task, p) for p in problems]
            greedy = await engine.generate(prompts, greedy_spec, f"greedy-{level}")
            tasks = [
                Task(q, task.prompt(p), task.max_tokens, temperature=0.8, top_p=1.0, request_id=f"bon-{level}-{i}")
                for i, (p, q) in enumerate(zip(problems, prompts, strict=True))
            ]
            results = await asyncio.gather(*(best_of_n(t, config, engine, scorers["prm"]) for t in tasks))
            pools = [r.candidates for r in results]
            picks: dict[str, list[str]] = {"greedy": [s[0].text for s in greedy]}
            picks["best_of_n_prm_last"] = [r.choices[0].text for r in results]
            for how in ("min", "prod"):
                picks[f"best_of_n_prm_{how}"] = [
                    max(pool, key=lambda c, how=how: aggregate_scores(c.step_scores, how)).text for pool in pools
                ]
            picks["majority"] = [pool[cluster([task.extract(c.text) for c in pool])[0][0]].text for pool in pools]
            if "orm" in scorers:
                flat = [
                    (task.prompt(p), task.steps(c.text)) for p, pool in zip(problems, pools, strict=True) for c in pool
                ]
                orm_scores = [s[0] for s in await scorers["orm"].score(flat, f"orm-{level}")]
                picks["best_of_n_orm"] = []
                for pool in pools:
                    pool_scores, orm_scores = orm_scores[: len(pool)], orm_scores[len(pool) :]
                    picks["best_of_n_orm"].append(pool[max(range(len(pool)), key=pool_scores.__getitem__)].text)
            row = {
                name: _share(task.grade(p, t) for p, t in zip(problems, texts, strict=True))
                for name, texts in picks.items()
            }
            row[f"pass@{num_samples}"] = _share(
                any(task.grade(p, c.text) for c in pool) for p, pool in zip(problems, pools, strict=True)
            )
            rows[str(level)] = {"num_problems": len(problems), **row}
            print(f"level {level}: " + ", ".join(f"{k} {v:.1%}" for k, v in row.items()), flush=True)
    finally:
        await engine.shutdown()
        for scorer in scorers.values():
            await scorer.shutdown()
    return {"policy": policy, "prm": prm, "orm": orm, "num_samples": num_samples, "seed": seed, "levels": rows}


def _share(flags: Any) -> float:
    flags = list(flags)
    return sum(flags) / max(len(flags), 1)


# ``ponder eval VERB`` for the verbs that live in their own module: the rest of the line goes to MODULE.main(argv),
# imported only for that verb.
DELEGATED = {
    "policy": ("training.evaluate_policy", "accuracy of a policy per level, greedy and sampled (pass@k, majority@n)"),
    "compare": ("training.compare_policies", "where two policies' greedy solutions part: problems gained and lost"),
    "champ": ("training.champ", "CHAMP's annotated solutions written as ProcessBench JSONL"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        return int(importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:]) or 0)
    parser = argparse.ArgumentParser(prog="ponder eval", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    for name, (_, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    for kind in ("prm", "orm"):
        p = sub.add_parser(kind, help=f"first-error-step F1 (prm) or outcome accuracy (orm) of a {kind.upper()}")
        p.add_argument("--model", required=True, help="reward model checkpoint folder")
        p.add_argument(
            "--data",
            required=True,
            help="ProcessBench JSONL, `ponder label` output (folder/JSONL), or `champ` (CHAMP's 540 "
            "annotated solutions)",
        )
        p.add_argument("--threshold", type=float, default=0.5, help="score below which a step (solution) is wrong")
        p.add_argument("--backend", choices=["torch", "vllm"], default="torch", help="score in torch or on vLLM")
        if kind == "prm":
            p.add_argument(
                "--format",
                choices=PRM_FORMATS,
                help="how to read MODEL (default: the checkpoint's ponder_prm_format, else its architecture): "
                + "; ".join(f"{name}: {fmt.help}" for name, fmt in FORMATS.items()),
            )
        p.add_argument("--limit", type=int, help="evaluate the first LIMIT solutions only")
        p.add_argument("--output", help="write the metrics as JSON here")
    labels = sub.add_parser("labels", help="counts of `ponder label` data; Monte Carlo labels against exact ones")
    labels.add_argument("--data", required=True, help="`ponder label` output (folder or JSONL; several: commas)")
    labels.add_argument("--output", help="write the counts as JSON here")
    bon = sub.add_parser("bon", help="greedy vs best_of_n with the PRM (and ORM) per arith level, on vLLM")
    bon.add_argument("--policy", required=True, help="policy checkpoint folder")
    bon.add_argument("--prm", required=True, help="PRM checkpoint folder")
    bon.add_argument("--orm", help="ORM checkpoint folder, to rerank the same candidates")
    bon.add_argument("--levels", type=int, nargs="+", default=[2, 3, 4, 5, 6], help="arith levels")
    bon.add_argument("--limit", type=int, default=100, help="test problems per level")
    bon.add_argument("--n", type=int, default=16, help="samples per problem (N)")
    bon.add_argument("--seed", type=int, default=0, help="seed of the problems and the engine")
    bon.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (FileNotFoundError, ValueError) as exc:  # a missing or wrong checkpoint or data file: the user's mistake
        print(f"ponder eval {args.kind}: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """Carry out a parsed ``ponder eval`` command; 0 on success, 2 when the model is of the wrong kind."""
    if args.kind == "labels":
        result = summary(list(load_rows(args.data)))
        print(json.dumps(result, indent=2))
    elif args.kind == "bon":
        result = asyncio.run(
            best_of_n_levels(args.policy, args.prm, args.orm, args.levels, args.limit, args.n, args.seed)
        )
    else:
        fmt = resolve_format(args.model, getattr(args, "format", None))
        if fmt.kind != args.kind:
            article = "an" if args.kind == "orm" else "a"
            print(f"ponder eval {args.kind}: {args.model} is not {article} {args.kind.upper()}", file=sys.stderr)
            return 2
        result = evaluate_reward_model(args.model, args.data, args.threshold, args.backend, args.limit, fmt.name)
        print("\n".join(markdown_table(result)))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
