"""Load and soak: many concurrent clients, mixed strategies, streaming and not, some of them leaving early.

Sends ``--requests`` chat completions from ``--concurrency`` clients at once; each picks a scenario (strategy, stream
or not) at random, and a ``--disconnect-fraction`` of them cancel their request after a random short delay (the
connection is closed, as a client timeout does). Then waits for the server to settle and reports:

- completed requests with unexpected errors: any status but 200, or 429 (admission control, counted apart), a
  transport error, a stream that carries an error event or ends without ``[DONE]`` (target 0);
- engine requests left running once the server has settled (``ponder_engine_requests_running``, target 0);
- the server process's RSS before (after a warm-up round) and after (``--pid``, or ``process_resident_memory_bytes``
  from ``/metrics``; target: growth at most 10 %); with ``--pid`` also its process tree, vLLM's engine processes
  included, and each process in it (reported, not held to the target: vLLM's workers grow as they first meet
  batch shapes and cache blocks, see the per-round figures of ``--rounds``);
- ``--rounds N`` repeats the run (a soak) and reads RSS and the engine's running count after each round;
- latency percentiles of the successful requests and throughput.

Writes ``OUTPUT/load.json`` and ``OUTPUT/load.md``; exits 1 when a target is missed.

    ponder bench load --spawn --output results/load                  # starts ponder serve on the defaults
    ponder bench load --url http://127.0.0.1:8000 --api-key K --pid 1234 --output results/load
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shlex
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from benchmarks.servers import ponder_cmd, running, shown_path
from server.default_models import ensure_default_models

PROMPTS = (
    "What is 2 + 3?",
    "Natalia sold 48 clips in April and half as many in May. How many in all?",
    "Solve for x: 3x + 4 = 19.",
    "Use 4, 6, 8 and 2 to make 24.",
)
RSS_GROWTH_TARGET = 0.10


@dataclass(frozen=True)
class Scenario:
    name: str
    strategy: str
    stream: bool
    body: dict[str, Any]
    needs_reward_model: bool = False


SCENARIOS = (
    Scenario("none", "none", False, {"max_tokens": 16}),
    Scenario("none-stream", "none", True, {"max_tokens": 32}),
    Scenario("best_of_n", "best_of_n", False, {"max_tokens": 24, "strategy_params": {"num_samples": 4}}, True),
    Scenario("best_of_n-stream", "best_of_n", True, {"max_tokens": 24, "strategy_params": {"num_samples": 4}}, True),
    Scenario("self_consistency", "self_consistency", False, {"max_tokens": 24, "strategy_params": {"num_samples": 4}}),
    Scenario(
        "weighted_best_of_n",
        "weighted_best_of_n",
        False,
        {"max_tokens": 24, "strategy_params": {"num_samples": 4}},
        True,
    ),
    Scenario(
        "beam_search",
        "beam_search",
        False,
        {"max_tokens": 16, "strategy_params": {"num_samples": 4, "beam_width": 2, "max_depth": 3}},
        True,
    ),
)


@dataclass
class Options:
    url: str
    requests: int = 500
    concurrency: int = 64
    disconnect_fraction: float = 0.2
    disconnect_delay: tuple[float, float] = (0.05, 2.0)  # seconds after sending that a leaving client gives up
    api_key: str | None = None
    pid: int | None = None
    seed: int = 0
    timeout: float = 600.0  # per request, client side
    temperature: float = 0.8
    warmup: int = 1  # rounds of one request per scenario before RSS "before" is read
    rounds: int = 1  # the run is repeated (a soak); RSS and the engine's running count are read after each
    settle_seconds: float = 120.0  # at most this long waiting for the engine to go idle after the run
    scenarios: tuple[str, ...] = ()  # names from SCENARIOS; empty: all that the server can serve
    progress: bool = True


@dataclass
class Outcome:
    index: int
    scenario: str
    stream: bool
    planned_disconnect: float | None  # seconds after which the client leaves; None: it waits for the answer
    kind: str = "ok"  # ok | rejected (429) | disconnected | unexpected
    status: int | None = None
    latency_s: float = 0.0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---- /metrics -----------------------------------------------------------------------------------------------------
def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample's value from Prometheus text; None when the series is absent."""
    want = sorted(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if match and sorted(filter(None, (match.group(1) or "").split(","))) == want:
            return float(match.group(2))
    return None


def series(text: str, name: str) -> dict[str, float]:
    """Every labelled sample of a metric: ``{'strategy="none",status="200"': value}``."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in sorted(after.items()) if v - before.get(k, 0.0)}


def process_rss(pid: int | None) -> dict[str, Any] | None:
    """RSS of ``pid``, of its whole process tree (vLLM's engine cores and workers are children) and of each process
    in it, in bytes."""
    if pid is None:
        return None
    try:
        # deferred import: psutil only when memory is sampled
        import psutil
    except ImportError:
        return None
    try:
        proc = psutil.Process(pid)
        each = {}
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                each[f"{p.name()}[{p.pid}]"] = p.memory_info().rss
        return {"process": proc.memory_info().rss, "tree": sum(each.values()), "each": each}
    except psutil.Error:
        return None


# ---- one request --------------------------------------------------------------------------------------------------
async def send(client: httpx.AsyncClient, body: dict, stream: bool, outcome: Outcome) -> None:
    """Send one request and fill in ``outcome`` (kind, status, error)."""
    if not stream:
        response = await client.post("/v1/chat/completions", json=body)
        outcome.status = response.status_code
        if response.status_code != 200:
            outcome.error = response.text[:300]
        else:
            data = response.json()
            outcome.extra["completion_tokens"] = data.get("usage", {}).get("completion_tokens")
        return
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        outcome.status = response.status_code
        if response.status_code != 200:
            outcome.error = (await response.aread()).decode(errors="replace")[:300]
            return
        done, chunks = False, 0
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[len("data: ") :]
            if payload == "[DONE]":
                done = True
                continue
            event = json.loads(payload)
            if "error" in event:
                outcome.error = f"error event in the stream: {json.dumps(event['error'])[:300]}"
            chunks += 1
        outcome.extra["chunks"] = chunks
        if not done and outcome.error is None:
            outcome.error = "the stream ended without [DONE]"


async def one(client: httpx.AsyncClient, outcome: Outcome, body: dict) -> Outcome:
    started = time.perf_counter()
    task = asyncio.ensure_future(send(client, body, outcome.stream, outcome))
    try:
        if outcome.planned_disconnect is not None:
            done, _ = await asyncio.wait({task}, timeout=outcome.planned_disconnect)
            if not done:
                task.cancel()  # closes the connection mid-request
                await asyncio.gather(task, return_exceptions=True)
                outcome.kind, outcome.status = "disconnected", None
                return outcome
        await task
    except Exception as exc:  # a transport error, a broken stream, a body that is not JSON: all unexpected
        outcome.error = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        outcome.latency_s = time.perf_counter() - started
    if outcome.status == 429:
        outcome.kind = "rejected"
    elif outcome.status != 200 or outcome.error is not None:
        outcome.kind = "unexpected"
    return outcome


# ---- the run ------------------------------------------------------------------------------------------------------
def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0], "p99": values[0], "max": values[0], "mean": values[0]}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "max": max(values), "mean": statistics.fmean(values)}


async def settle(client: httpx.AsyncClient, seconds: float) -> dict[str, Any]:
    """Poll /metrics once a second until the engine's running count and the requests in flight are stable: 0 for 3
    polls in a row, or the same (leaked) values for 15; at most ``seconds``."""
    started, history, text = time.perf_counter(), [], ""
    while True:
        text = (await client.get("/metrics")).text
        running = metric(text, "ponder_engine_requests_running")
        in_flight = metric(text, "ponder_requests_in_flight")
        history.append((running, in_flight))
        idle = running in (0, None) and in_flight in (0, None)
        window = history[-(3 if idle else 15) :]
        if len(window) == (3 if idle else 15) and len(set(window)) == 1:
            break
        if time.perf_counter() - started > seconds:
            break
        await asyncio.sleep(1.0)
    return {
        "engine_requests_running": running,
        "requests_in_flight": in_flight,
        "polls": len(history),
        "waited_s": round(time.perf_counter() - started, 2),
        "metrics": text,
    }


async def run_load(options: Options, *, transport: httpx.AsyncBaseTransport | None = None) -> dict[str, Any]:
    """Run the load against ``options.url`` (through ``transport`` when given: tests use an in-process app)."""
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    limits = httpx.Limits(max_connections=options.concurrency + 4, max_keepalive_connections=options.concurrency)
    client = httpx.AsyncClient(
        base_url=options.url, headers=headers, timeout=options.timeout, limits=limits, transport=transport
    )
    probe = httpx.AsyncClient(base_url=options.url, headers=headers, timeout=60, transport=transport)
    async with client, probe:
        models = (await probe.get("/v1/models")).raise_for_status().json()
        model = models["data"][0]["id"]
        available = {s["name"] for s in models.get("strategies", []) if s.get("available", True)}
        wanted = [s for s in SCENARIOS if not options.scenarios or s.name in options.scenarios]
        scenarios = [s for s in wanted if s.strategy in available]
        skipped = [s.name for s in wanted if s.strategy not in available]
        if not scenarios:
            raise SystemExit(f"no scenario to run: the server's strategies are {sorted(available)}")
        rng = random.Random(options.seed)

        def body_of(scenario: Scenario) -> dict:
            return {
                "model": model,
                "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
                "temperature": options.temperature,
                "strategy": scenario.strategy,
                "stream": scenario.stream,
                **scenario.body,
            }

        cold_text = (await probe.get("/metrics")).text
        rss_cold = {"metrics": metric(cold_text, "process_resident_memory_bytes"), "pid": process_rss(options.pid)}
        warmup = [
            await one(client, Outcome(-1, s.name, s.stream, None), body_of(s))
            for _ in range(options.warmup)
            for s in scenarios
        ]
        before_text = (await probe.get("/metrics")).text
        rss_before = {"metrics": metric(before_text, "process_resident_memory_bytes"), "pid": process_rss(options.pid)}

        outcomes: list[Outcome] = []
        rounds: list[dict[str, Any]] = []
        bar = tqdm(total=options.requests * options.rounds, desc="load", file=sys.stderr, disable=not options.progress)
        wall = 0.0
        for round_ in range(options.rounds):
            queue: asyncio.Queue = asyncio.Queue()
            for i in range(round_ * options.requests, (round_ + 1) * options.requests):
                scenario = rng.choice(scenarios)
                leave = rng.uniform(*options.disconnect_delay) if rng.random() < options.disconnect_fraction else None
                queue.put_nowait((Outcome(i, scenario.name, scenario.stream, leave), body_of(scenario)))

            async def worker(queue: asyncio.Queue = queue) -> None:
                while not queue.empty():
                    outcome, body = queue.get_nowait()
                    outcomes.append(await one(client, outcome, body))
                    bar.update()
                    bar.set_postfix(Counter(o.kind for o in outcomes), refresh=False)

            started = time.perf_counter()
            await asyncio.gather(*[worker() for _ in range(options.concurrency)])
            wall += time.perf_counter() - started
            settled = await settle(probe, options.settle_seconds)
            after_text = settled.pop("metrics")
            rss_after = {
                "metrics": metric(after_text, "process_resident_memory_bytes"),
                "pid": process_rss(options.pid),
            }
            rounds.append(
                {"round": round_ + 1, "engine_requests_running": settled["engine_requests_running"], "rss": rss_after}
            )
        bar.close()
        settled["rounds"] = rounds
    return report(
        options,
        outcomes,
        warmup,
        wall,
        scenarios,
        skipped,
        settled,
        before_text,
        after_text,
        rss_cold,
        rss_before,
        rss_after,
    )


def report(
    options: Options,
    outcomes: list[Outcome],
    warmup: list[Outcome],
    wall: float,
    scenarios: list[Scenario],
    skipped: list[str],
    settled: dict,
    before_text: str,
    after_text: str,
    rss_cold: dict,
    rss_before: dict,
    rss_after: dict,
) -> dict[str, Any]:
    ok = [o for o in outcomes if o.kind == "ok"]
    kinds = Counter(o.kind for o in outcomes)
    by_scenario = {}
    for s in scenarios:
        mine = [o for o in outcomes if o.scenario == s.name]
        by_scenario[s.name] = {
            "requests": len(mine),
            **{k: n for k, n in Counter(o.kind for o in mine).items()},
            "latency_s": percentiles([o.latency_s for o in mine if o.kind == "ok"]),
        }
    # The target is the server process (the API, strategies, their bookkeeping): what /metrics reports. The tree
    # (vLLM's engine cores and workers too) is reported beside it.
    if rss_before["pid"] and rss_after["pid"]:
        rss_source, before, after = "server process (--pid)", rss_before["pid"]["process"], rss_after["pid"]["process"]
        tree = {
            "before_bytes": rss_before["pid"]["tree"],
            "after_bytes": rss_after["pid"]["tree"],
            "growth": rss_after["pid"]["tree"] / rss_before["pid"]["tree"] - 1,
        }
    else:
        rss_source, before, after = "server process (/metrics)", rss_before["metrics"], rss_after["metrics"]
        tree = None
    growth = (after - before) / before if before and after else None
    left = max(
        (x["engine_requests_running"] or 0 for x in settled.get("rounds", [])),
        default=settled["engine_requests_running"],
    )  # the worst round
    targets = {
        "unexpected_errors == 0": kinds["unexpected"] == 0,
        "engine_requests_left_running == 0": left == 0,
        f"rss_growth <= {RSS_GROWTH_TARGET:.0%}": growth is not None and growth <= RSS_GROWTH_TARGET,
    }
    return {
        "options": {k: v for k, v in asdict(options).items() if k not in ("api_key", "progress")},
        "scenarios": [s.name for s in scenarios],
        "scenarios_skipped_no_reward_model": skipped,
        "requests": len(outcomes),
        "wall_s": wall,
        "requests_per_s": len(outcomes) / wall if wall else None,
        "successful_per_s": len(ok) / wall if wall else None,
        "outcomes": {
            "ok": kinds["ok"],
            "rejected_429": kinds["rejected"],
            "disconnected": kinds["disconnected"],
            "unexpected_errors": kinds["unexpected"],
            "planned_disconnect_but_finished_first": sum(
                1 for o in outcomes if o.planned_disconnect is not None and o.kind != "disconnected"
            ),
        },
        "unexpected": [asdict(o) for o in outcomes if o.kind == "unexpected"][:50],
        "unexpected_statuses": dict(Counter(str(o.status) for o in outcomes if o.kind == "unexpected")),
        "warmup_unexpected": [asdict(o) for o in warmup if o.kind != "ok"],
        "latency_s": percentiles([o.latency_s for o in ok]),
        "by_scenario": by_scenario,
        "engine_requests_left_running": left,
        "requests_in_flight_after": settled["requests_in_flight"],
        "settle": {k: v for k, v in settled.items() if k not in ("engine_requests_running", "requests_in_flight")},
        "server_counters": {
            "aborted_by_strategy": delta(
                series(after_text, "ponder_requests_aborted_total"),
                series(before_text, "ponder_requests_aborted_total"),
            ),
            "requests_by_strategy_status": delta(
                series(after_text, "ponder_requests_total"), series(before_text, "ponder_requests_total")
            ),
            "rejected_429": (metric(after_text, "ponder_requests_rejected_total") or 0)
            - (metric(before_text, "ponder_requests_rejected_total") or 0),
        },
        "rss": {
            "source": rss_source,
            "before_bytes": before,
            "after_bytes": after,
            "growth": growth,
            "tree": tree,
            "cold": rss_cold,
            "before": rss_before,
            "after": rss_after,
        },
        "targets": targets,
        "passed": all(targets.values()),
    }


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f} MiB"


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown(r: dict[str, Any]) -> str:
    o, lat, rss = r["outcomes"], r["latency_s"], r["rss"]
    growth = "n/a" if rss["growth"] is None else f"{rss['growth']:+.1%}"
    lines = [
        "# Load and soak",
        "",
        f"{r['requests']} requests, concurrency {r['options']['concurrency']}, disconnect fraction "
        f"{r['options']['disconnect_fraction']}, seed {r['options']['seed']}; scenarios: {', '.join(r['scenarios'])}"
        + (
            f" (skipped, no reward model: {', '.join(r['scenarios_skipped_no_reward_model'])})"
            if r["scenarios_skipped_no_reward_model"]
            else ""
        ),
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| completed requests with unexpected errors | {o['unexpected_errors']} | 0 |",
        f"| engine requests left running after the run | {r['engine_requests_left_running']} | 0 |",
        f"| server RSS before / after ({rss['source']}) | {_mib(rss['before_bytes'])} / {_mib(rss['after_bytes'])}"
        f" ({growth}) | growth <= {RSS_GROWTH_TARGET:.0%} |",
        f"| latency p50 / p95 / p99 (successful, s) | {_s(lat['p50'])} / {_s(lat['p95'])} / {_s(lat['p99'])} | |",
        f"| throughput (all requests / successful, per s) | {r['requests_per_s']:.2f} / {r['successful_per_s']:.2f}"
        " | |",
        f"| ok / 429 / disconnected / unexpected | {o['ok']} / {o['rejected_429']} / {o['disconnected']} / "
        f"{o['unexpected_errors']} | |",
        f"| wall time | {r['wall_s']:.1f} s | |",
        "",
        "| scenario | requests | ok | disconnected | 429 | unexpected | p50 s | p99 s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in r["by_scenario"].items():
        lines.append(
            f"| {name} | {s['requests']} | {s.get('ok', 0)} | {s.get('disconnected', 0)} | "
            f"{s.get('rejected', 0)} | {s.get('unexpected', 0)} | {_s(s['latency_s']['p50'])} | "
            f"{_s(s['latency_s']['p99'])} |"
        )
    if rss["tree"]:
        t = rss["tree"]
        lines += [
            "",
            f"Process tree (the server and vLLM's engine cores and workers): {_mib(t['before_bytes'])} / "
            f"{_mib(t['after_bytes'])} ({t['growth']:+.1%}).",
        ]
    if len(r["settle"].get("rounds", [])) > 1:

        def at(x: dict) -> str:
            pid = x["rss"]["pid"]
            return f"{_mib(pid['process'])}, tree {_mib(pid['tree'])}" if pid else _mib(x["rss"]["metrics"])

        lines += [
            "",
            "After each round: "
            + "; ".join(
                f"{x['round']}: {at(x)}, engine requests running {x['engine_requests_running']:g}"
                for x in r["settle"]["rounds"]
            ),
        ]
    lines += [
        "",
        f"Server counters during the run: aborted {r['server_counters']['aborted_by_strategy']}, "
        f"rejected (429) {r['server_counters']['rejected_429']:g}.",
        "",
    ]
    if r["unexpected"]:
        lines += ["Unexpected errors (first ones):", ""]
        lines += [f"- #{u['index']} {u['scenario']}: status {u['status']}: {u['error']}" for u in r["unexpected"][:10]]
        lines.append("")
    lines.append("Targets: " + ", ".join(f"{k}: {'pass' if v else 'FAIL'}" for k, v in r["targets"].items()))
    return "\n".join(lines) + "\n"


def write(r: dict[str, Any], output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "load.json").write_text(json.dumps(r, indent=2) + "\n")
    (output / "load.md").write_text(markdown(r))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running Ponder server, e.g. http://127.0.0.1:8000")
    where.add_argument(
        "--spawn",
        action="store_true",
        help="start `ponder serve` on the embedded default models (or --model/--prm) for the run",
    )
    p.add_argument("--api-key", default=os.environ.get("PONDER_API_KEY"), help="bearer key (env PONDER_API_KEY)")
    p.add_argument("--pid", type=int, help="the server's PID: RSS of its process tree (default: from /metrics)")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--disconnect-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="client-side timeout per request, seconds")
    p.add_argument("--scenarios", default="", help=f"comma-separated subset of: {', '.join(s.name for s in SCENARIOS)}")
    p.add_argument("--warmup", type=int, default=1, help="rounds of one request per scenario before RSS is read")
    p.add_argument(
        "--rounds", type=int, default=1, help="repeat the run this many times (a soak); RSS is read after each round"
    )
    p.add_argument("--settle-seconds", type=float, default=120.0)
    p.add_argument("--output", type=Path, default=Path("results/load"))
    p.add_argument("--model", help="with --spawn: policy folder (default: the embedded default policy)")
    p.add_argument("--prm", help="with --spawn: reward model folder (default: the embedded default PRM)")
    p.add_argument("--memory-fraction", type=float, default=0.1, help="with --spawn")
    p.add_argument("--server-args", default="", help="with --spawn: more `ponder serve` flags, one string")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if min(args.requests, args.concurrency, args.rounds) < 1 or not 0 <= args.disconnect_fraction <= 1:
        p.error("--requests, --concurrency and --rounds must be at least 1, --disconnect-fraction in [0, 1]")
    options = Options(
        url=args.url or "",
        requests=args.requests,
        concurrency=args.concurrency,
        disconnect_fraction=args.disconnect_fraction,
        api_key=args.api_key,
        pid=args.pid,
        seed=args.seed,
        timeout=args.timeout,
        warmup=args.warmup,
        rounds=args.rounds,
        settle_seconds=args.settle_seconds,
        scenarios=tuple(filter(None, args.scenarios.split(","))),
        progress=not args.no_progress,
    )
    r = spawned(args, options) if args.spawn else asyncio.run(run_load(options))
    write(r, args.output)
    print(markdown(r))
    print(f"wrote {args.output / 'load.json'} and {args.output / 'load.md'}", file=sys.stderr)
    return 0 if r["passed"] else 1


def spawned(args: argparse.Namespace, options: Options) -> dict[str, Any]:

    if args.model is None or args.prm is None:
        defaults = ensure_default_models()
        args.model, args.prm = args.model or str(defaults.policy), args.prm or str(defaults.prm_or_stand_in())
    extra = shlex.split(args.server_args) + (["--api-key", args.api_key] if args.api_key else [])
    args.output.mkdir(parents=True, exist_ok=True)
    env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    with running(
        ponder_cmd(args.model, args.prm, args.memory_fraction, *extra), args.output / "server.log", env=env
    ) as server:
        options.url, options.pid = server.url, server.proc.pid
        r = asyncio.run(run_load(options))
        r["spawned"] = {
            "model": shown_path(args.model) if args.model else None,
            "prm": shown_path(args.prm) if args.prm else None,
            "server_args": args.server_args,
            "exit_status": server.stop(),
        }
    return r


if __name__ == "__main__":
    sys.exit(main())
