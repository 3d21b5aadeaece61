r"""``ponder bench accuracy``: accuracy against generated tokens, per dataset, strategy and budget N.

    ponder bench accuracy --dataset arith --level 3,4 --strategies greedy,self_consistency,best_of_n \
        --n 4,16 --limit 100 --output results/accuracy-arith

Every problem of every (dataset, level, strategy, N, seed) goes through the server's own request path
(:class:`server.serving.ChatService`: validation, chat template, strategy, per-request token ledger) on an in-process
vLLM engine and reward model, or over HTTP to a running Ponder server (``--url``). Requests of one configuration run
concurrently (``--concurrency``), so vLLM batches them as it would a server's traffic.

Models: in-process, ``--model``/``--prm`` where given, else the task's own (:class:`training.tasks.TaskSpec`'s
``default_policy`` and ``default_reward_model``; Game of 24 has a policy and a PRM of its own), else the shipped
default models; one line on stderr says which. The datasets of one command must agree on their models. A task's
``default_params`` (per strategy, e.g. Game of 24's searches valued by its PRM and answering with a solution that
passes its rule) and ``kv_cache_gib`` apply unless ``--param``/``--kv-cache-gib`` say otherwise.

Output in ``--output DIR``:

- ``records.jsonl``: one line per (problem, configuration) as it finishes: correct or not, completion tokens
  (every candidate and step the strategy generated, the server's ``usage.completion_tokens``), engine calls,
  latency. A run that is interrupted and started again with the same ``--output`` keeps these and runs only what
  is missing (resumable).
- ``results.json``: a list of rows ``{dataset, level, strategy, n, accuracy, ci_low, ci_high, num_problems,
  num_seeds, completion_tokens_mean, ..., sent}``; the 95% interval is a percentile bootstrap over problems;
  ``sent`` is what each request carried: the registered strategy, its ``strategy_params`` (the task's defaults and
  ``--param`` included) and the temperature (``timings.jsonl`` holds it per batch). With the
  policy as its own likelihood PRM (``--prm`` = ``--model``, in-process), ``record_hits`` and ``record_misses``
  count the scored items read from the samples' own log-probabilities and those read again on the engine
  (:mod:`reward_models.self_likelihood`).
- ``results.md``: the same as a Markdown table; ``accuracy.png``: accuracy against mean generated tokens per
  problem (log x), one line per strategy, one panel per dataset and level.

Strategies: any registered strategy or preset of one (:func:`strategies.resolve`: ``greedy``, ``none`` at
temperature 0 with one sample, takes no N; ``sample``, plain sampling of N, the first sample graded: the
generation-speed floor for tokens/s). N sets the parameter the strategy's config names as its budget
(``budget_param``: ``num_samples`` for most, ``num_iterations`` for ``mcts``); ``--help`` lists it for each.
``--param STRATEGY.KEY=VALUE`` sets any other strategy parameter.

Seeds: ``--seed 0,1,2`` repeats every configuration; the records keep the seed. Every request carries a seed derived
from the seed and the problem (:func:`request_seed`), in-process and over HTTP alike, and the strategies pass it to
every engine call they make; so a seed is a draw of its own, and the same seed draws the same samples again under
the same scheduling (vLLM's CPU runner shifts a seeded request's draws when its prefill is split across steps:
:mod:`server.engine.vllm_plugin`). The in-process engine itself is seeded with the first seed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import openai
from openai import AsyncOpenAI
from tqdm.auto import tqdm

import strategies
from benchmarks.servers import shown_path
from reward_models import PRM_FORMATS, load_scorer_beside
from server.config import ServerConfig
from server.default_models import REPO_ROOT, ensure_default_models
from server.errors import APIError
from server.metrics import Metrics
from server.protocol import ChatCompletionRequest
from server.serving import ChatService
from strategies.errors import EngineError
from training.tasks import TaskSpec, UnknownTaskError, get_task

BOOTSTRAP_RESAMPLES = 2000
DEFAULT_KV_CACHE_GIB = 2.0  # where neither --kv-cache-gib nor a task says


class UsageError(Exception):
    """A mistake on the command line: one line on stderr, exit status 2."""


@dataclass(frozen=True)
class Config:
    """One cell of the grid: every problem of a dataset (level) answered by a strategy at budget n."""

    dataset: str
    level: int | None
    strategy: str
    n: int
    seed: int

    def key(self) -> tuple[Any, ...]:
        return (self.dataset, self.level, self.strategy, self.n, self.seed)


@dataclass
class Answer:
    text: str
    completion_tokens: int
    engine_calls: int | None = None
    error: str | None = None


class Client(Protocol):
    async def answer(
        self, prompt: str, strategy: str, params: dict[str, Any], max_tokens: int, temperature: float, seed: int
    ) -> Answer: ...

    async def close(self) -> None: ...


# ---- the grid -----------------------------------------------------------------------------------------------------
def budget_param(strategy: str) -> str | None:
    """The parameter a budget N sets for a strategy or preset (its config's ``budget_param``), None when it takes
    no N (its config names none, or its preset fixes it)."""
    spec, fixed = strategies.resolve(strategy)
    name = spec.config_cls.budget_param
    return None if name is None or name in fixed else name


def strategy_request(strategy: str, n: int, extra: dict[str, Any]) -> tuple[str, dict[str, Any], float | None]:
    """(registered strategy, strategy_params, forced request temperature) for a strategy or preset at budget n;
    ``extra`` overrides. A preset's temperature is a strategy param, so the third is None (benchmarks.serve reads
    it)."""
    spec, params = strategies.resolve(strategy)
    budget = budget_param(strategy)
    if budget is not None:
        params[budget] = n
    return spec.name, {**params, **extra}, None


def grid(
    datasets: Sequence[str],
    levels: Sequence[int | None],
    strategies: Sequence[str],
    ns: Sequence[int],
    seeds: Sequence[int],
) -> list[Config]:
    """Every configuration, cheapest first; strategies without N run once (n=1)."""

    out: list[Config] = []
    for dataset in datasets:
        task_levels = levels if get_task(dataset).levels else [None]
        for level in task_levels:
            for strategy in strategies:
                for n in ns if budget_param(strategy) else [1]:
                    out += [Config(dataset, level, strategy, n, seed) for seed in seeds]
    return sorted(out, key=lambda c: (c.n, c.dataset, str(c.level), c.seed))


# ---- clients ------------------------------------------------------------------------------------------------------
class InProcessClient:
    """The server's request path (ChatService) on an in-process engine and reward model."""

    def __init__(self, service: Any, engine: Any, scorer: Any) -> None:
        self.service, self.engine, self.scorer = service, engine, scorer

    @classmethod
    async def start(
        cls, model: str, prm: str | None, seed: int, kv_cache_gib: float, prm_format: str | None = None
    ) -> InProcessClient:
        # deferred import: vLLM (an optional extra, seconds to import) only where an engine is used
        from server.engine.vllm_engine import VLLMEngine

        engine = await VLLMEngine.create(model, kv_cache_gib=kv_cache_gib, seed=seed)
        kv = max(kv_cache_gib / 4, 0.25)
        scorer = await load_scorer_beside(engine, model, prm, kv_cache_gib=kv, format=prm_format) if prm else None
        config = ServerConfig(
            model_name=Path(model).name,
            reward_model_name=prm,
            max_num_samples=4096,
            max_total_tokens=1 << 26,
            max_tree_nodes=1 << 20,
            request_timeout=24 * 3600.0,
        )
        return cls(ChatService(engine, scorer, config, Metrics()), engine, scorer)

    async def answer(
        self, prompt: str, strategy: str, params: dict[str, Any], max_tokens: int, temperature: float, seed: int
    ) -> Answer:

        request = ChatCompletionRequest(
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            strategy=strategy,
            strategy_params=params,
        )
        try:
            job = self.service.prepare(request)
        except APIError as exc:  # refused before it ran (a bad --param, a cap): the command's mistake
            raise UsageError(exc.message) from None
        try:
            result = await self.service.run(job)
        except APIError as exc:  # e.g. the token budget ran out: the problem counts as wrong
            return Answer("", job.ledger.completion_tokens, job.ledger.engine_calls, error=str(exc))
        return Answer(result.choices[0].text, job.ledger.completion_tokens, job.ledger.engine_calls)

    def record_counts(self) -> dict[str, int] | None:
        """With the policy as its own likelihood PRM: scoring items answered from the samples' log-probabilities
        (hits) and read again on the engine (misses), so far; None with any other reward model."""
        totals = getattr(self.scorer, "totals", None)
        return None if totals is None else {"hits": totals["hits"], "misses": totals["misses"]}

    async def close(self) -> None:
        for model in (self.scorer, self.engine):
            if model is not None:
                await model.shutdown()


class HTTPClient:
    """A running Ponder server, through the official ``openai`` client (strategies in ``extra_body``)."""

    def __init__(self, url: str, model: str | None, api_key: str | None, timeout: float) -> None:

        self.client = AsyncOpenAI(
            base_url=url.rstrip("/") + "/v1", api_key=api_key or "none", timeout=timeout, max_retries=3
        )
        self.model = model

    async def answer(
        self, prompt: str, strategy: str, params: dict[str, Any], max_tokens: int, temperature: float, seed: int
    ) -> Answer:

        if self.model is None:
            self.model = (await self.client.models.list()).data[0].id
        try:
            response = await self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
                extra_body={"strategy": strategy, "strategy_params": params},
            )
        except openai.BadRequestError as exc:
            if "budget" in str(exc):
                return Answer("", 0, error=str(exc))
            raise
        extra = getattr(response, "ponder", None) or {}
        calls = extra.get("engine_calls") if isinstance(extra, dict) else None
        return Answer(response.choices[0].message.content or "", response.usage.completion_tokens, calls)

    async def close(self) -> None:
        await self.client.close()


# ---- running ------------------------------------------------------------------------------------------------------
def request_seed(seed: int, problem_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{problem_id}".encode()).digest()[:4], "big")


async def run_config(
    client: Client, config: Config, problems: Sequence[Any], done: set[str], args: Any, out: Any, bar: Any
) -> dict[str, Any]:
    """Answer every problem of ``config`` not in ``done`` concurrently, appending one record per answer to ``out``;
    returns the timing of this batch (wall time and tokens generated: the configuration's generation speed)."""

    task = get_task(config.dataset)
    strategy, params, forced = strategy_request(
        config.strategy, config.n, params_for(args, config.dataset, config.strategy)
    )
    temperature = args.temperature if forced is None else forced
    gate = asyncio.Semaphore(args.concurrency)
    sum_tokens = [0]

    async def one(problem: Any) -> None:
        async with gate:
            started = time.perf_counter()
            got = await client.answer(
                task.prompt(problem),
                strategy,
                params,
                task.max_tokens,
                temperature,
                request_seed(config.seed, problem.id),
            )
            record = {
                **asdict(config),
                "problem_id": problem.id,
                "correct": task.grade(problem, got.text),
                "completion_tokens": got.completion_tokens,
                "engine_calls": got.engine_calls,
                "latency_s": round(time.perf_counter() - started, 4),
                "error": got.error,
                "answer": task.extract(got.text),
                "gold": problem.answer,
            }
            sum_tokens[0] += got.completion_tokens
            out.write(json.dumps(record) + "\n")
            out.flush()
            bar.update(1)

    todo = [p for p in problems if p.id not in done]
    counts = getattr(client, "record_counts", lambda: None)
    before, started = counts(), time.perf_counter()
    await asyncio.gather(*(one(p) for p in todo))
    timing = {
        **asdict(config),
        "answers": len(todo),
        "wall_s": round(time.perf_counter() - started, 4),
        "completion_tokens": sum_tokens[0],
        "sent": {"strategy": strategy, "strategy_params": params, "temperature": temperature},
    }
    after = counts()
    if before is not None and after is not None:
        timing |= {f"record_{k}": after[k] - before[k] for k in ("hits", "misses")}
    return timing


def load_records(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """The records of an earlier (maybe interrupted) run; a torn line is dropped (and with ``repair``, cut from
    the file, so that appending goes on from a clean line)."""
    if not path.is_file():
        return []
    records, torn = [], False
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            torn = True
    if repair and torn:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


# ---- results ------------------------------------------------------------------------------------------------------
def bootstrap_ci(per_problem: Sequence[float], seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over problems."""

    values = np.asarray(per_problem, dtype=float)
    if len(values) < 2:
        return (float(values.mean()), float(values.mean())) if len(values) else (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(BOOTSTRAP_RESAMPLES, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def summarize(records: Sequence[dict[str, Any]], timings: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """One row per (dataset, level, strategy, n) over its seeds: accuracy with a bootstrap interval, tokens, and
    the generation speed (tokens generated per wall-clock second while the configuration's requests ran)."""
    speed: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0.0, 0.0])
    recorded: dict[tuple[Any, ...], Counter] = defaultdict(Counter)
    sent: dict[tuple[Any, ...], dict[str, Any]] = {}
    for t in timings:
        key = (t["dataset"], t["level"], t["strategy"], t["n"])
        speed[key][0] += t["completion_tokens"]
        speed[key][1] += t["wall_s"]
        recorded[key].update({k: t[f"record_{k}"] for k in ("hits", "misses") if f"record_{k}" in t})
        if "sent" in t:
            sent[key] = t["sent"]  # what the requests carried (the last batch's; every batch of a key sends the same)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["dataset"], r["level"], r["strategy"], r["n"])].append(r)
    rows = []
    for (dataset, level, strategy, n), group in groups.items():
        by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
        by_seed: dict[int, list[bool]] = defaultdict(list)
        for r in group:
            by_problem[r["problem_id"]].append(r)
            by_seed[r["seed"]].append(r["correct"])
        per_problem = [sum(r["correct"] for r in rs) / len(rs) for rs in by_problem.values()]
        low, high = bootstrap_ci(per_problem)
        calls = [r["engine_calls"] for r in group if r.get("engine_calls") is not None]
        rows.append(
            {
                "dataset": dataset,
                "level": level,
                "strategy": strategy,
                "n": n,
                "accuracy": round(sum(per_problem) / len(per_problem), 4),
                "ci_low": round(low, 4),
                "ci_high": round(high, 4),
                "num_problems": len(by_problem),
                "num_seeds": len(by_seed),
                "accuracy_per_seed": {str(s): round(sum(v) / len(v), 4) for s, v in sorted(by_seed.items())},
                "completion_tokens_mean": round(sum(r["completion_tokens"] for r in group) / len(group), 1),
                "engine_calls_mean": round(sum(calls) / len(calls), 2) if calls else None,
                "latency_s_mean": round(sum(r["latency_s"] for r in group) / len(group), 3),
                "errors": sum(r["error"] is not None for r in group),
                "tokens_per_s": round(
                    speed[(dataset, level, strategy, n)][0] / speed[(dataset, level, strategy, n)][1], 1
                )
                if speed[(dataset, level, strategy, n)][1]
                else None,
                **({"sent": sent[(dataset, level, strategy, n)]} if (dataset, level, strategy, n) in sent else {}),
                **(
                    {f"record_{k}": v for k, v in recorded[(dataset, level, strategy, n)].items()}
                    if recorded[(dataset, level, strategy, n)]
                    else {}
                ),
            }
        )
    return sorted(rows, key=lambda r: (r["dataset"], str(r["level"]), r["strategy"], r["n"]))


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| dataset | level | strategy | N | accuracy | 95% CI | problems × seeds | tokens / problem | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['level'] if r['level'] is not None else '–'} | {r['strategy']} | "
            f"{r['n']} | {r['accuracy']:.1%} | {r['ci_low']:.1%}–{r['ci_high']:.1%} | "
            f"{r['num_problems']} × {r['num_seeds']} | {r['completion_tokens_mean']:,.0f} | {r['errors']} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Accuracy against mean generated tokens per problem (log x): one panel per dataset/level, a line per strategy,
    each strategy one colour in every panel and one legend for all, below them (a legend inside hides points)."""
    # deferred import: matplotlib only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    # deferred import: matplotlib only when a plot is drawn
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    panels = sorted({(r["dataset"], r["level"]) for r in rows}, key=lambda p: (p[0], str(p[1])))
    names = sorted({r["strategy"] for r in rows})
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colors = {name: cmap(i % cmap.N) for i, name in enumerate(names)}
    columns = min(len(names), 4)
    legend_inches = 0.25 * -(-len(names) // columns) + 0.2
    height = 4 + legend_inches
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), height), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, (dataset, level) in zip(axes[0], panels, strict=True):
        mine = [r for r in rows if (r["dataset"], r["level"]) == (dataset, level)]
        for strategy in sorted({r["strategy"] for r in mine}):
            line = sorted((r for r in mine if r["strategy"] == strategy), key=lambda r: r["completion_tokens_mean"])
            handles[strategy] = _curve(ax, line, colors[strategy])
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a narrow range overlap
        ax.set_xlabel("generated tokens per problem (mean, log scale)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{dataset}" + (f" level {level}" if level is not None else ""))
        ax.grid(True, alpha=0.3)
    fig.legend([handles[n] for n in names], names, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, legend_inches / height, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _curve(ax: Any, line: Sequence[dict[str, Any]], color: Any) -> Any:
    """One strategy's points, joined, with their intervals and each point's N; the artist the legend shows."""
    x = [r["completion_tokens_mean"] for r in line]
    y = [r["accuracy"] for r in line]
    err = [[r["accuracy"] - r["ci_low"] for r in line], [r["ci_high"] - r["accuracy"] for r in line]]
    artist = ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=color)
    for r in line:
        ax.annotate(
            f"{r['n']}",
            (r["completion_tokens_mean"], r["accuracy"]),
            fontsize=7,
            textcoords="offset points",
            xytext=(3, 3),
        )
    return artist


def write_results(
    records: Sequence[dict[str, Any]], output: Path, make_plot: bool = True, timings: Sequence[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    rows = summarize(records, timings)
    (output / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (output / "results.md").write_text(markdown(rows))
    if make_plot and rows:
        plot(rows, output / "accuracy.png")
    return rows


# ---- command line -------------------------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def budget_help() -> str:
    """What --n sets for every registered strategy and preset, from their configs (for ``--help``)."""
    lines = ["what --n sets, per strategy (its config's budget_param):"]
    for spec in strategies.available():
        budget, doc = spec.config_cls.budget_param, spec.config_cls.budget_doc
        lines.append(f"  {spec.name:<20} {budget or 'nothing: runs once'}" + (f": {doc}" if doc else ""))
        for preset, fixed in spec.presets.items():
            params = ", ".join(f"{k}={v!r}" for k, v in fixed.items())
            what = f"{spec.name}" + (f" with {params}" if params else "")
            lines.append(f"  {preset:<20} {budget_param(preset) or 'nothing: runs once'} ({what})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ponder bench accuracy",
        description=__doc__.split("\n\n")[0],
        epilog=budget_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dataset",
        type=_names,
        required=True,
        help="task names, comma-separated (arith, game24, gsm8k, math500, aime)",
    )
    parser.add_argument("--data-file", help="JSONL file for the loaders (gsm8k, math500, aime)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--level", type=_ints, default=None, help="levels, comma-separated (tasks with levels)")
    parser.add_argument(
        "--strategies",
        type=_names,
        default=["greedy", "self_consistency", "best_of_n"],
        help="strategies or presets, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--n",
        type=_ints,
        default=[1, 4, 16],
        help="budgets N, comma-separated (default: 1,4,16); what N sets for each strategy is listed below",
    )
    parser.add_argument("--limit", type=int, default=100, help="problems per dataset and level (default: 100)")
    parser.add_argument("--seed", type=_ints, default=[0], help="seeds, comma-separated: repetitions (default: 0)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default: 0.8)")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="STRATEGY.KEY=VALUE",
        help="a strategy parameter (JSON value), e.g. beam_search.beam_width=4; repeatable",
    )
    parser.add_argument("--model", help="policy checkpoint (default: the task's own, else the shipped default)")
    parser.add_argument("--prm", help="reward model checkpoint (default: the task's own, else the shipped default)")
    parser.add_argument("--no-prm", action="store_true", help="load no reward model")
    parser.add_argument("--prm-format", choices=PRM_FORMATS, help="how to read --prm (default: from its config.json)")
    parser.add_argument("--url", help="benchmark a running Ponder server instead of an in-process engine")
    parser.add_argument("--model-name", help="with --url: the model id to send (default: the server's first)")
    parser.add_argument("--api-key", help="with --url: bearer key")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (default: 64)")
    parser.add_argument("--kv-cache-gib", type=float, help="in-process vLLM KV cache (default: the task's, else 2)")
    parser.add_argument("--no-plot", action="store_true", help="skip accuracy.png")
    parser.add_argument("--output", required=True, help="output folder (records, results.json/md, accuracy.png)")
    return parser


def parse_params(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    params: dict[str, dict[str, Any]] = defaultdict(dict)
    for item in items:
        key, sep, value = item.partition("=")
        strategy, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise UsageError(f"--param {item!r}: expected STRATEGY.KEY=VALUE")
        try:
            params[strategy][name] = json.loads(value)
        except json.JSONDecodeError:
            params[strategy][name] = value
    return dict(params)


def validate(args: argparse.Namespace) -> None:

    for name in args.dataset:
        try:
            task = get_task(name)
        except UnknownTaskError as exc:
            raise UsageError(str(exc)) from None
        if args.level and task.levels:
            bad = [lv for lv in args.level if lv not in task.levels]
            if bad:
                raise UsageError(f"task {name!r} has no level {bad}; levels: {', '.join(map(str, task.levels))}")
    for name in args.strategies:
        try:
            strategies.resolve(name)
        except strategies.UnknownStrategyError as exc:
            raise UsageError(str(exc)) from None
    if not args.n or min(args.n) < 1:
        raise UsageError("--n needs budgets of at least 1")
    if args.limit < 1 or args.concurrency < 1:
        raise UsageError("--limit and --concurrency must be at least 1")
    args.params = parse_params(args.param)


def params_for(args: argparse.Namespace, dataset: str, strategy: str) -> dict[str, Any]:
    """The strategy parameters (besides N) a strategy or preset runs with on ``dataset``: the task's defaults for
    the strategy (``TaskSpec.default_params``), each overridden by ``--param``. A preset takes its strategy's
    ``--param`` values too (``none.min_thinking_tokens`` reaches ``greedy``), but not for what the preset fixes, and
    its own (``greedy.KEY``) win."""
    spec, fixed = strategies.resolve(strategy)
    inherited = args.params.get(spec.name, {}) if strategy != spec.name else {}
    inherited = {key: value for key, value in inherited.items() if key not in fixed}
    return {**get_task(dataset).default_params.get(spec.name, {}), **inherited, **args.params.get(strategy, {})}


def refuse_without_reward_model(args: argparse.Namespace) -> None:
    """UsageError, before any engine starts, for a strategy that would need the reward model a run without one
    lacks: one registered as needing it, or one whose parameters (the task's defaults, ``--param``) value states by
    it (``value_source: "prm"``)."""
    for dataset in args.dataset:
        for strategy in args.strategies:
            spec, _ = strategies.resolve(strategy)
            if spec.needs_scorer or params_for(args, dataset, strategy).get("value_source") == "prm":
                raise UsageError(
                    f"{strategy} on {dataset} needs a reward model and this run has none; pass --prm, or for a "
                    f"search --param '{strategy}.value_source=\"self\"'"
                )


@dataclass(frozen=True)
class Models:
    """What an in-process run loads, and where each choice came from (for the line it prints)."""

    policy: str
    prm: str | None
    kv_cache_gib: float
    policy_from: str
    prm_from: str

    def line(self) -> str:
        prm = (
            f"reward model {shown_path(self.prm)} ({self.prm_from})"
            if self.prm
            else f"no reward model ({self.prm_from})"
        )
        return f"models: policy {shown_path(self.policy)} ({self.policy_from}), {prm}"


def _task_model(task: TaskSpec, folder: str, what: str, flag: str) -> str:
    path = REPO_ROOT / folder
    if not path.is_dir():
        raise UsageError(f"task {task.name!r}'s default {what} {folder} is not there; pass {flag}")
    return str(path)


def resolve_models(args: argparse.Namespace) -> Models:
    """The policy, reward model and KV cache of an in-process run: ``--model``/``--prm``/``--no-prm``/
    ``--kv-cache-gib`` where given, else the datasets' own (``TaskSpec.default_policy`` ...), else the server's
    defaults. Datasets that would need different models cannot share one command (UsageError)."""
    if args.model and not Path(args.model).is_dir():
        raise UsageError(f"--model {args.model!r}: no such checkpoint folder")
    if args.prm and not Path(args.prm).is_dir():
        raise UsageError(f"--prm {args.prm!r}: no such checkpoint folder")
    tasks = [get_task(name) for name in args.dataset]
    server_defaults = None

    def server_default(kind: str) -> str | None:
        nonlocal server_defaults
        server_defaults = server_defaults or ensure_default_models()
        path = server_defaults.policy if kind == "policy" else server_defaults.prm
        return None if path is None else str(path)

    wanted: dict[tuple[str | None, str | None], list[str]] = defaultdict(list)
    for task in tasks:
        if args.model:
            policy = args.model
        elif task.default_policy:
            policy = _task_model(task, task.default_policy, "policy", "--model")
        else:
            policy = server_default("policy")
        if args.no_prm or args.prm:
            prm = None if args.no_prm else args.prm
        elif task.default_reward_model:
            prm = _task_model(task, task.default_reward_model, "reward model", "--prm")
        else:
            prm = server_default("prm")
        key = (str(Path(policy).resolve()) if policy else None, str(Path(prm).resolve()) if prm else None)
        wanted[key].append(task.name)
        chosen = (policy, prm)
    if len(wanted) > 1:
        each = "; ".join(
            f"{', '.join(names)}: {shown_path(p or '-')} and {shown_path(r) if r else 'no reward model'}"
            for (p, r), names in wanted.items()
        )
        raise UsageError(f"these datasets run on different models ({each}): run them apart, or pass --model and --prm")
    policy, prm = chosen
    assert policy is not None
    own = [task.name for task in tasks if task.default_policy or task.default_reward_model]
    task_says = f"{', '.join(own)}'s own" if own else "the server's default"
    kv = [task.kv_cache_gib for task in tasks if task.kv_cache_gib is not None]
    return Models(
        policy,
        prm,
        args.kv_cache_gib if args.kv_cache_gib is not None else max(kv, default=DEFAULT_KV_CACHE_GIB),
        "--model" if args.model else task_says,
        "--no-prm" if args.no_prm else "--prm" if args.prm else task_says,
    )


async def run(args: argparse.Namespace, client: Client | None = None) -> list[dict[str, Any]]:
    """Run what ``records.jsonl`` lacks of the grid, then write the results; ``client``: a ready one (tests)."""

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    configs = grid(args.dataset, args.level or [None], args.strategies, args.n, args.seed)
    problems = {}
    for dataset in args.dataset:
        task = get_task(dataset)
        for level in (args.level or [None]) if task.levels else [None]:
            try:
                problems[(dataset, level)] = task.load(
                    args.split, limit=args.limit, seed=0, level=level, data_file=args.data_file
                )
            except (ValueError, FileNotFoundError) as exc:
                raise UsageError(str(exc)) from None
    records_path = output / "records.jsonl"
    records = load_records(records_path, repair=True)
    done: dict[tuple[Any, ...], set[str]] = defaultdict(set)
    for r in records:
        done[(r["dataset"], r["level"], r["strategy"], r["n"], r["seed"])].add(r["problem_id"])
    total = sum(len(problems[(c.dataset, c.level)]) for c in configs)
    remaining = total - sum(len(done[c.key()]) for c in configs)
    owned = client is None  # a client passed in is the caller's to close
    if remaining:
        if client is not None:
            pass
        elif args.url:
            client = HTTPClient(args.url, args.model_name, args.api_key, timeout=3600.0)
        else:
            models = resolve_models(args)
            if models.prm is None:
                refuse_without_reward_model(args)
            print(f"ponder bench accuracy: {models.line()}", file=sys.stderr)
            client = await InProcessClient.start(
                models.policy, models.prm, args.seed[0], models.kv_cache_gib, args.prm_format
            )
        try:
            with (
                records_path.open("a") as out,
                (output / "timings.jsonl").open("a") as timings,
                tqdm(total=total, initial=total - remaining, desc="accuracy", unit="answer") as bar,
            ):
                for config in configs:
                    if len(done[config.key()]) >= len(problems[(config.dataset, config.level)]):
                        continue
                    bar.set_postfix_str(f"{config.dataset} L{config.level} {config.strategy} N={config.n}")
                    timing = await run_config(
                        client, config, problems[(config.dataset, config.level)], done[config.key()], args, out, bar
                    )
                    timings.write(json.dumps(timing) + "\n")
                    timings.flush()
        finally:
            if owned:
                await client.close()
    wanted = {c.key() for c in configs}
    kept = [
        r for r in load_records(records_path) if (r["dataset"], r["level"], r["strategy"], r["n"], r["seed"]) in wanted
    ]
    return write_results(kept, output, make_plot=not args.no_plot, timings=load_records(output / "timings.jsonl"))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        validate(args)
        rows = asyncio.run(run(args))
    except UsageError as exc:
        print(f"ponder bench accuracy: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: finished answers are kept in records.jsonl; run the same command to resume", file=sys.stderr
        )
        return 130
    except EngineError as exc:  # the engine died under the run: not the command's mistake, and nothing is lost
        print(
            f"ponder bench accuracy: error: {exc}; finished answers are kept in records.jsonl: run the same command "
            "to resume",
            file=sys.stderr,
        )
        return 1
    print(markdown(rows), end="")
    print(f"wrote {Path(args.output) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
