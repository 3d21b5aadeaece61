"""Start-up time: how long the engines take to be ready, compiled (vLLM's torch.compile warm-up) against eager
(``enforce_eager``), one after the other against at once, what eager costs in decode speed, and how long
``ponder serve`` takes from process start to ``/health`` answering ok.

    python -m benchmarks.startup                                  # the default models, 3 repetitions of each
    ponder bench startup --repeats 3 --output results/startup
    ponder bench startup --parts serve --name serve-after         # only `ponder serve` time-to-health

Every engine measurement runs in a fresh interpreter (``python -m benchmarks.startup --trial ...``), one at a time,
so that one start neither warms nor slows the next; it prints one ``STARTUP_TRIAL {json}`` line. A trial:

- ``sequential``: ``VLLMEngine.create`` of the policy until ready, then ``load_scorer`` of the reward model;
  then, with both up, the decode measurements below;
- ``concurrent``: both started at once (``asyncio.gather``), each timed from the common start to its own ready.

Decode, after a warm-up request of each kind: a ``best_of_n`` request as the server runs it (N samples of one arith
test prompt at ``--max-tokens``, then one batched reward-model call over them; policy tokens/s is the generated
tokens over the sampling time), and one greedy request (N=1, temperature 0). Each prompt is seeded, so that both
modes sample the same text where their numerics agree.

The compiled mode's start depends on vLLM's compile cache (``VLLM_CACHE_ROOT``). ``--compile-cache warm`` (the
default, as on a checkout that has served before) shares one fresh cache folder among all runs and fills it with one
priming trial first (recorded as ``priming``: a cold start); ``cold`` gives every run an empty one.

``--parts decode`` measures decode compiled against eager paired: both pairs of engines up in one interpreter, their
passes alternating, so that the machine's other load falls on both alike (:func:`paired`).

``--parts serve`` spawns the real CLI (``ponder serve --port P``, as ``make serve`` does) per ``--serve-variants``:
``default`` (the environment as is), ``eager`` (``PONDER_ENFORCE_EAGER=1``), ``compiled`` (``PONDER_ENFORCE_EAGER=0``),
and polls ``/health`` every 0.2 s until it answers ``{"status": "ok"}``.

Writes ``OUTPUT/NAME.json`` (every run) and ``OUTPUT/NAME.md`` (median, min and max of each measure).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.servers import check_model_folders, shown_path

TRIAL_TAG = "STARTUP_TRIAL "
MODES = {"compiled": False, "eager": True}  # mode name -> enforce_eager
PARTS = ("engines", "decode", "serve")
SERVE_VARIANTS = {"default": None, "eager": "1", "compiled": "0"}  # -> PONDER_ENFORCE_EAGER (None: left as is)
EAGER_ENV = "PONDER_ENFORCE_EAGER"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.trial:
        import asyncio

        result = asyncio.run(paired(args) if args.trial == "paired" else trial(args))
        print(TRIAL_TAG + json.dumps(result), flush=True)
        return 0
    try:
        check_model_folders(("--model", args.model), ("--prm", args.prm))
        run(args)
    except (ValueError, RuntimeError) as exc:
        print(f"ponder bench startup: error: {str(exc).splitlines()[0]} (logs in {args.output})", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ponder bench startup", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="policy folder (default: the embedded default policy)")
    p.add_argument("--prm", help="reward model folder (default: the embedded default PRM)")
    p.add_argument("--prm-format", help="how to read --prm (default: its config)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each trial and of each serve variant")
    p.add_argument("--modes", default="compiled,eager", help="engine modes, comma-separated: compiled, eager")
    p.add_argument(
        "--parts",
        default=",".join(PARTS),
        help="comma-separated: engines (start trials, with decode), decode (compiled against eager, paired), serve",
    )
    p.add_argument("--no-concurrent", action="store_true", help="skip the concurrent-start trials")
    p.add_argument("--no-decode", action="store_true", help="skip the decode measurements")
    p.add_argument("--compile-cache", choices=("warm", "cold"), default="warm", help="vLLM's compile cache (above)")
    p.add_argument("--serve-variants", default="default", help="comma-separated: default, eager, compiled (above)")
    p.add_argument(
        "--serve-via",
        choices=("ponder", "module"),
        default="ponder",
        help="ponder: the installed `ponder` script (as make serve); module: python -m server.cli from the working "
        "directory",
    )
    p.add_argument("--num-samples", type=int, default=16, help="N of the best_of_n request")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--decode-prompts", type=int, default=4, help="arith prompts per decode repetition")
    p.add_argument("--decode-repeats", type=int, default=3, help="timed passes over the prompts, after a warm-up")
    p.add_argument("--memory-fraction", type=float, default=0.25, help="policy KV cache (as ponder serve)")
    p.add_argument("--prm-memory-fraction", type=float, default=0.1, help="reward model's (as ponder serve)")
    p.add_argument("--kv-cache-gib", type=float, help="policy KV cache in GiB (default: by --memory-fraction)")
    p.add_argument("--prm-kv-cache-gib", type=float, help="reward model's KV cache in GiB (default: by its fraction)")
    p.add_argument("--timeout", type=float, default=900, help="seconds one run may take")
    p.add_argument("--output", type=Path, default=Path("results/startup"))
    p.add_argument("--name", default="startup", help="file names under --output: NAME.json, NAME.md")
    # internal: one trial in this interpreter
    p.add_argument("--trial", choices=("sequential", "concurrent", "paired"), help=argparse.SUPPRESS)
    p.add_argument("--eager", type=int, choices=(0, 1), default=0, help=argparse.SUPPRESS)
    return p


# ---- one trial, in a fresh interpreter ----------------------------------------------------------------------------
async def trial(args: argparse.Namespace) -> dict[str, Any]:
    import asyncio

    imported = time.time()
    from reward_models import load_scorer
    from server.engine.vllm_engine import VLLMEngine

    result: dict[str, Any] = {"trial": args.trial, "eager": bool(args.eager), "import_s": time.time() - imported}
    eager = bool(args.eager)

    async def policy() -> tuple[Any, float]:
        engine = await VLLMEngine.create(
            args.model,
            memory_fraction=args.memory_fraction,
            kv_cache_gib=args.kv_cache_gib,
            seed=0,
            enforce_eager=eager,
        )
        return engine, time.perf_counter()

    async def scorer() -> tuple[Any, float]:
        # the reward model's engine reads PONDER_ENFORCE_EAGER (set for this interpreter by the parent), or takes
        # enforce_eager where load_scorer has it
        import inspect

        extra = {"enforce_eager": eager} if "enforce_eager" in inspect.signature(load_scorer).parameters else {}
        prm = await load_scorer(
            args.prm,
            format=args.prm_format,
            memory_fraction=args.prm_memory_fraction,
            kv_cache_gib=args.prm_kv_cache_gib,
            **extra,
        )
        return prm, time.perf_counter()

    started = time.perf_counter()
    result["wall_start"] = time.time()
    if args.trial == "sequential":
        (engine, policy_ready) = await policy()
        (prm, prm_ready) = await scorer()
        result["scorer_s"] = prm_ready - policy_ready
    else:
        (engine, policy_ready), (prm, prm_ready) = await asyncio.gather(policy(), scorer())
        result["scorer_s"] = prm_ready - started
    result["policy_s"] = policy_ready - started
    result["both_s"] = max(policy_ready, prm_ready) - started
    try:
        if args.trial == "sequential" and not args.no_decode:
            result["decode"] = await decode(args, engine, prm)
    finally:
        await engine.shutdown()
        await prm.shutdown()
    return result


def decode_workload(args: argparse.Namespace, tokenizer: Any) -> list[tuple[str, str]]:
    """(rendered prompt, question) of the first ``--decode-prompts`` arith test problems, as the server renders."""
    from benchmarks.serve import workload_prompts

    texts, _ = workload_prompts("arith", args.decode_prompts)
    return [
        (tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True), t)
        for t in texts
    ]


async def decode_pass(
    args: argparse.Namespace, engine: Any, prm: Any, workload: list[tuple[str, str]], tag: str
) -> dict[str, float]:
    """One pass over the prompts: per prompt a best_of_n request (N samples, then one reward-model call over them)
    and a greedy one; seconds per request and tokens per second."""
    from strategies.base import SamplingSpec, Task
    from strategies.best_of_n import BestOfNConfig
    from strategies.sampling import draw, score

    config = BestOfNConfig(num_samples=args.num_samples, temperature=args.temperature)
    greedy = SamplingSpec(n=1, temperature=0.0, max_tokens=args.max_tokens)
    sample_s = score_s = greedy_s = 0.0
    sampled = greedy_tokens = 0
    for i, (prompt, question) in enumerate(workload):
        task = Task(
            prompt=prompt,
            question=question,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=1.0,
            seed=i,
            request_id=f"{tag}-{i}",
        )
        t0 = time.perf_counter()
        candidates = await draw(task, config, engine)
        t1 = time.perf_counter()
        await score(task, config, candidates, prm)
        t2 = time.perf_counter()
        (samples,) = await engine.generate([prompt], greedy, f"{tag}-greedy-{i}")
        t3 = time.perf_counter()
        sample_s, score_s, greedy_s = sample_s + t1 - t0, score_s + t2 - t1, greedy_s + t3 - t2
        sampled += sum(c.num_tokens for c in candidates)
        greedy_tokens += samples[0].num_tokens
    n = len(workload)
    return {
        "best_of_n_s": (sample_s + score_s) / n,
        "sample_s": sample_s / n,
        "score_s": score_s / n,
        "sample_tokens_per_s": sampled / sample_s,
        "sampled_tokens": sampled / n,
        "greedy_s": greedy_s / n,
        "greedy_tokens_per_s": greedy_tokens / greedy_s,
        "greedy_tokens": greedy_tokens / n,
    }


async def decode(args: argparse.Namespace, engine: Any, prm: Any) -> dict[str, Any]:
    """A warm-up pass, then ``--decode-repeats`` timed ones; the median of each measure."""
    workload = decode_workload(args, engine.tokenizer)
    await decode_pass(args, engine, prm, workload, "warmup")
    passes = [await decode_pass(args, engine, prm, workload, f"pass{k}") for k in range(args.decode_repeats)]
    return {key: statistics.median(p[key] for p in passes) for key in passes[0]} | {"passes": passes}


async def paired(args: argparse.Namespace) -> dict[str, Any]:
    """Decode speed compiled against eager on the same machine at the same time: both pairs of engines up in one
    interpreter, their passes alternating (ABBA...), so that other people's load falls on both alike; the ratio
    eager / compiled of each measure is taken per round."""
    from reward_models import load_scorer
    from server.engine.vllm_engine import VLLMEngine

    kv = args.kv_cache_gib if args.kv_cache_gib is not None else 1.0  # four engines: a small KV cache each
    prm_kv = args.prm_kv_cache_gib if args.prm_kv_cache_gib is not None else 0.5
    engines: dict[str, tuple[Any, Any]] = {}
    try:
        for mode, eager in MODES.items():
            policy = await VLLMEngine.create(args.model, kv_cache_gib=kv, seed=0, enforce_eager=eager)
            engines[mode] = (policy, None)
            prm = await load_scorer(args.prm, format=args.prm_format, kv_cache_gib=prm_kv, enforce_eager=eager)
            engines[mode] = (policy, prm)
        workload = decode_workload(args, engines["compiled"][0].tokenizer)
        for mode, (policy, prm) in engines.items():
            await decode_pass(args, policy, prm, workload, f"warmup-{mode}")
        rounds: list[dict[str, dict[str, float]]] = []
        for k in range(args.decode_repeats):
            order = list(MODES) if k % 2 == 0 else list(reversed(MODES))
            rounds.append({mode: await decode_pass(args, *engines[mode], workload, f"r{k}-{mode}") for mode in order})
    finally:
        for policy, prm in engines.values():
            await policy.shutdown()
            if prm is not None:
                await prm.shutdown()
    ratios = [{key: r["eager"][key] / r["compiled"][key] for key in r["eager"]} for r in rounds]
    return {"trial": "paired", "rounds": rounds, "ratios": ratios, "kv_cache_gib": [kv, prm_kv]}


# ---- the parent: runs, summary, files -----------------------------------------------------------------------------
def run(args: argparse.Namespace) -> None:
    args.model_given, args.prm_given = args.model is not None, args.prm is not None
    if args.model is None or args.prm is None:
        from server.default_models import ensure_default_models

        defaults = ensure_default_models()
        args.model, args.prm = args.model or str(defaults.policy), args.prm or str(defaults.prm_or_stand_in())
    args.output.mkdir(parents=True, exist_ok=True)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    variants = [v.strip() for v in args.serve_variants.split(",") if v.strip()]
    parts = [v.strip() for v in args.parts.split(",") if v.strip()]
    for name in parts:
        if name not in PARTS:
            raise ValueError(f"--parts: unknown part {name!r}; known: {', '.join(PARTS)}")
    for name in modes:
        if name not in MODES:
            raise ValueError(f"--modes: unknown mode {name!r}; known: {', '.join(MODES)}")
    for name in variants:
        if name not in SERVE_VARIANTS:
            raise ValueError(f"--serve-variants: unknown variant {name!r}; known: {', '.join(SERVE_VARIANTS)}")
    report: dict[str, Any] = {
        "model": shown_path(args.model),  # relative to the working directory where it lies under it
        "prm": shown_path(args.prm),
        "compile_cache": args.compile_cache,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "num_samples": args.num_samples,
        "max_tokens": args.max_tokens,
        "kv_cache": {
            "memory_fraction": args.memory_fraction,
            "prm_memory_fraction": args.prm_memory_fraction,
            "kv_cache_gib": args.kv_cache_gib,
            "prm_kv_cache_gib": args.prm_kv_cache_gib,
        },
        "runs": [],
    }
    cache_root = Path(tempfile.mkdtemp(prefix="ponder-startup-cache-"))
    warm_cache = cache_root / "warm"
    try:
        if "engines" in parts:
            if args.compile_cache == "warm":  # vLLM caches what it learns of a model there, compiled or not
                first = "compiled" if "compiled" in modes else modes[0]
                report["runs"].append(engine_run(args, "sequential", first, warm_cache, label="priming", decode=False))
            for rep in range(args.repeats):
                for mode in modes:
                    for kind in ("sequential", *(() if args.no_concurrent else ("concurrent",))):
                        cache = (
                            warm_cache if args.compile_cache == "warm" else cache_root / f"cold-{len(report['runs'])}"
                        )
                        report["runs"].append(engine_run(args, kind, mode, cache, label=f"rep{rep}"))
                        save(args, report)
        if "decode" in parts:
            if args.compile_cache == "warm" and not warm_cache.exists():
                report["runs"].append(
                    engine_run(args, "sequential", "compiled", warm_cache, label="priming", decode=False)
                )
            for rep in range(args.repeats):
                cache = warm_cache if args.compile_cache == "warm" else cache_root / f"cold-{len(report['runs'])}"
                report["runs"].append(paired_run(args, cache, label=f"rep{rep}"))
                save(args, report)
        if "serve" in parts:
            for variant in variants:
                if args.compile_cache == "warm" and not warm_cache.exists():  # fill it: one start not in the medians
                    report["runs"].append(serve_run(args, variant, warm_cache, label="priming"))
                for rep in range(args.repeats):
                    cache = warm_cache if args.compile_cache == "warm" else cache_root / f"cold-{len(report['runs'])}"
                    report["runs"].append(serve_run(args, variant, cache, label=f"rep{rep}"))
                    save(args, report)
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)
    save(args, report)
    print((args.output / f"{args.name}.md").read_text())


def _env(cache: Path, eager: str | None) -> dict[str, str]:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CACHE_ROOT": str(cache)}
    if eager is not None:
        env[EAGER_ENV] = eager
    return env


def _trial(args: argparse.Namespace, kind: str, eager: bool, cache: Path, log: Path, decode: bool) -> dict[str, Any]:
    """Run one trial in a fresh interpreter; its result, with the load average around it."""
    cmd = [sys.executable, "-m", "benchmarks.startup", "--trial", kind, "--eager", str(int(eager))]
    cmd += ["--model", args.model, "--prm", args.prm, *(["--prm-format", args.prm_format] if args.prm_format else [])]
    cmd += ["--memory-fraction", str(args.memory_fraction), "--prm-memory-fraction", str(args.prm_memory_fraction)]
    for flag in ("kv_cache_gib", "prm_kv_cache_gib"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    cmd += ["--num-samples", str(args.num_samples), "--max-tokens", str(args.max_tokens)]
    cmd += ["--temperature", str(args.temperature), "--decode-prompts", str(args.decode_prompts)]
    cmd += ["--decode-repeats", str(args.decode_repeats), *(["--no-decode"] if args.no_decode or not decode else [])]
    log.parent.mkdir(parents=True, exist_ok=True)
    load_before, spawned = _load(), time.time()
    with log.open("w") as sink:
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=sink,
            text=True,
            env=_env(cache, "1" if eager else "0"),
            timeout=args.timeout,
            check=False,
        )
    with log.open("a") as sink:
        sink.write(proc.stdout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(TRIAL_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"trial {kind} failed with exit status {proc.returncode}; see {log}")
    result = json.loads(lines[-1][len(TRIAL_TAG) :])
    result["load_average"] = [load_before, _load()]
    if "wall_start" in result:
        result["process_to_start_s"] = result["wall_start"] - spawned
    return result


def engine_run(
    args: argparse.Namespace, kind: str, mode: str, cache: Path, *, label: str, decode: bool = True
) -> dict[str, Any]:
    """A ``sequential`` or ``concurrent`` start of both engines in ``mode``."""
    print(f"[startup] {label}: {kind} start, {mode} ...", file=sys.stderr, flush=True)
    log = args.output / "logs" / f"{args.name}-{kind}-{mode}-{label}.log"
    result = _trial(args, kind, MODES[mode], cache, log, decode) | {"what": "engines", "mode": mode, "label": label}
    summary = (
        f"policy {result['policy_s']:.1f} s, reward model {result['scorer_s']:.1f} s, both {result['both_s']:.1f} s"
    )
    if "decode" in result:
        d = result["decode"]
        summary += (
            f"; sampling {d['sample_tokens_per_s']:.0f} tok/s, greedy {d['greedy_tokens_per_s']:.0f} tok/s, "
            f"best_of_n {d['best_of_n_s']:.2f} s"
        )
    print(f"[startup] {label}: {kind} {mode}: {summary}", file=sys.stderr, flush=True)
    return result


def paired_run(args: argparse.Namespace, cache: Path, *, label: str) -> dict[str, Any]:
    """Decode compiled against eager, alternating in one interpreter (:func:`paired`)."""
    print(f"[startup] {label}: paired decode, compiled and eager ...", file=sys.stderr, flush=True)
    log = args.output / "logs" / f"{args.name}-paired-{label}.log"
    result = _trial(args, "paired", False, cache, log, True) | {"what": "decode", "label": label}
    ratio = {key: statistics.median(r[key] for r in result["ratios"]) for key in result["ratios"][0]}
    print(
        f"[startup] {label}: paired decode: eager/compiled sampling tok/s {ratio['sample_tokens_per_s']:.3f}, "
        f"greedy tok/s {ratio['greedy_tokens_per_s']:.3f}, reward-model call {ratio['score_s']:.3f}",
        file=sys.stderr,
        flush=True,
    )
    return result


def _load() -> float | None:
    """The machine's 1-minute load average (other people's work slows every start here)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_run(args: argparse.Namespace, variant: str, cache: Path, *, label: str) -> dict[str, Any]:
    """``ponder serve`` (the installed CLI) from process start to ``/health`` answering ``{"status": "ok"}``."""
    import httpx

    port = free_port()
    ponder = Path(sys.executable).with_name("ponder")
    if args.serve_via == "ponder" and ponder.exists():
        cmd = [str(ponder), "serve", "--port", str(port)]
    else:  # the checkout in the working directory, whichever one the installed script points at
        cmd = [sys.executable, "-m", "server.cli", "serve", "--port", str(port)]
    if args.model_given:
        cmd += ["--model", args.model]
    if args.prm_given:
        cmd += ["--prm", args.prm]
    log = args.output / "logs" / f"{args.name}-serve-{variant}-{label}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[startup] {label}: ponder serve ({variant}) ...", file=sys.stderr, flush=True)
    url = f"http://127.0.0.1:{port}/health"
    first_answer, load_before = None, _load()
    with log.open("w") as sink:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=_env(cache, SERVE_VARIANTS[variant]))
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"ponder serve exited with {proc.returncode}; see {log}")
                if time.perf_counter() - started > args.timeout:
                    raise RuntimeError(f"ponder serve not healthy after {args.timeout} s; see {log}")
                try:
                    answer = httpx.get(url, timeout=2)
                except httpx.TransportError:
                    answer = None
                if answer is not None and first_answer is None:
                    first_answer = time.perf_counter() - started
                if answer is not None and answer.status_code == 200 and answer.json().get("status") == "ok":
                    healthy = time.perf_counter() - started
                    break
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    print(f"[startup] {label}: ponder serve ({variant}): ok after {healthy:.1f} s", file=sys.stderr, flush=True)
    return {
        "what": "serve",
        "variant": variant,
        "label": label,
        "health_ok_s": healthy,
        "first_answer_s": first_answer,
        "load_average": [load_before, _load()],
        "cmd": [shown_path(part) if part.startswith("/") else part for part in cmd],
    }


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Median, min and max of every measure, by (trial, mode) and by serve variant; priming runs left out."""
    timed = [r for r in report["runs"] if r["label"] != "priming"]
    summary: dict[str, Any] = {}
    for r in timed:
        if r["what"] == "decode":  # one value per round: the passes of one round ran side by side
            for mode in MODES:
                group = summary.setdefault(f"paired/{mode}", {})
                for one in r["rounds"]:
                    for key, value in one[mode].items():
                        group.setdefault(key, []).append(value)
            group = summary.setdefault("paired/ratio", {})
            for one in r["ratios"]:
                for key, value in one.items():
                    group.setdefault(key, []).append(value)
            continue
        if r["what"] == "engines":
            group = summary.setdefault(f"{r['trial']}/{r['mode']}", {})
            values = {k: r[k] for k in ("policy_s", "scorer_s", "both_s", "process_to_start_s")}
            values |= {k: v for k, v in r.get("decode", {}).items() if k != "passes"}
        else:
            group = summary.setdefault(f"serve/{r['variant']}", {})
            values = {"health_ok_s": r["health_ok_s"]}
        for key, value in values.items():
            group.setdefault(key, []).append(value)
    return {group: {k: stats(v) for k, v in measures.items()} for group, measures in summary.items()}


def _cell(s: dict[str, float] | None, digits: int = 1) -> str:
    if s is None:
        return "-"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def _kv(kv: dict[str, Any] | None) -> str:
    kv = kv or {"memory_fraction": 0.25, "prm_memory_fraction": 0.1, "kv_cache_gib": None, "prm_kv_cache_gib": None}
    policy = f"{kv['kv_cache_gib']} GiB" if kv["kv_cache_gib"] is not None else f"{kv['memory_fraction']} of RAM"
    prm = (
        f"{kv['prm_kv_cache_gib']} GiB" if kv["prm_kv_cache_gib"] is not None else f"{kv['prm_memory_fraction']} of RAM"
    )
    return f"policy {policy}, reward model {prm}"


def markdown(report: dict[str, Any], summary: dict[str, Any]) -> str:
    lines = [
        f"Models: policy `{report['model']}`, reward model `{report['prm']}`; {report['cpus']} CPU cores; compile "
        f"cache {report['compile_cache']}; KV cache {_kv(report.get('kv_cache'))}. Each cell: median (min-max) "
        "over the runs.",
        "",
    ]
    loads = [x for r in report["runs"] for x in r.get("load_average") or () if x is not None]
    if loads:
        lines[-1:-1] = [
            f"Machine load (1-minute load average, {report['cpus']} cores) during the runs: {min(loads):.1f}-"
            f"{max(loads):.1f}."
        ]
    starts = {k: v for k, v in summary.items() if not k.startswith(("serve/", "paired/"))}
    if starts:
        lines += [
            "| start | mode | policy ready (s) | reward model ready (s) | both ready (s) | runs |",
            "|---|---|---|---|---|---|",
        ]
        for key, s in starts.items():
            kind, mode = key.split("/")
            lines.append(
                f"| {kind} | {mode} | {_cell(s['policy_s'])} | {_cell(s['scorer_s'])} | {_cell(s['both_s'])} "
                f"| {s['both_s']['n']} |"
            )
        lines += [
            "",
            "Sequential: the reward model's time is from the policy's ready; concurrent: each from the common start.",
        ]
        priming = [r for r in report["runs"] if r["label"] == "priming" and r["what"] == "engines"]
        for r in priming:
            lines.append(
                f"Priming run ({r['mode']}, empty vLLM cache; not in the medians): policy {r['policy_s']:.1f} s, "
                f"reward model {r['scorer_s']:.1f} s."
            )
        decodes = {k.split("/")[1]: v for k, v in starts.items() if "sample_tokens_per_s" in v}
        if decodes:
            lines += [
                "",
                f"| mode | sampling tok/s (best_of_n N={report['num_samples']}) | reward-model call (s) | "
                "best_of_n request (s) | greedy tok/s | greedy request (s) | runs |",
                "|---|---|---|---|---|---|---|",
            ]
            for mode, s in decodes.items():
                lines.append(
                    f"| {mode} | {_cell(s['sample_tokens_per_s'], 0)} | {_cell(s['score_s'], 3)} | "
                    f"{_cell(s['best_of_n_s'], 3)} | {_cell(s['greedy_tokens_per_s'], 0)} | {_cell(s['greedy_s'], 3)} "
                    f"| {s['sample_tokens_per_s']['n']} |"
                )
            lines.append(
                f"\nPer run: the median of its passes over the arith prompts (max_tokens {report['max_tokens']})."
            )
    pairs = {k.split("/")[1]: v for k, v in summary.items() if k.startswith("paired/")}
    if pairs:
        lines += [
            "",
            f"Decode, paired: compiled and eager engines up together, their passes alternating; N="
            f"{report['num_samples']}, max_tokens {report['max_tokens']}; a value per round.",
            "",
            "| engines | sampling tok/s | reward-model call (s) | best_of_n request (s) | greedy tok/s "
            "| greedy request (s) | rounds |",
            "|---|---|---|---|---|---|---|",
        ]
        for mode, s in pairs.items():
            digits = 3 if mode == "ratio" else 0
            lines.append(
                f"| {'eager / compiled' if mode == 'ratio' else mode} | {_cell(s['sample_tokens_per_s'], digits)} | "
                f"{_cell(s['score_s'], 3)} | {_cell(s['best_of_n_s'], 3)} | "
                f"{_cell(s['greedy_tokens_per_s'], digits)} | {_cell(s['greedy_s'], 3)} | {s['score_s']['n']} |"
            )
    serves = {k.split("/")[1]: v for k, v in summary.items() if k.startswith("serve/")}
    if serves:
        lines += ["", "| ponder serve | process start to /health ok (s) | runs |", "|---|---|---|"]
        for variant, s in serves.items():
            lines.append(f"| {variant} | {_cell(s['health_ok_s'])} | {s['health_ok_s']['n']} |")
        for r in report["runs"]:
            if r["what"] == "serve" and r["label"] == "priming":
                lines.append(
                    f"\nPriming run ({r['variant']}, empty vLLM cache; not in the medians): {r['health_ok_s']:.1f} s."
                )
    return "\n".join(lines) + "\n"


def save(args: argparse.Namespace, report: dict[str, Any]) -> None:
    summary = summarize(report)
    (args.output / f"{args.name}.json").write_text(json.dumps(report | {"summary": summary}, indent=2))
    (args.output / f"{args.name}.md").write_text(markdown(report, summary))


if __name__ == "__main__":
    sys.exit(main())
