"""Ponder's serving overhead: ``best_of_n`` (and ``none``) with N samples through Ponder against the same N samples
from vLLM's own OpenAI server (``n=N``), same model, prompt and sampling, requests one at a time.

Prints and saves (``OUTPUT/overhead.json``, ``OUTPUT/overhead.md``) the median latency of each, the ratio, the
reward-model time inside Ponder's latency, and how many engine requests one Ponder request made.

    ponder bench overhead --output results/overhead            # the embedded default models
    ponder bench overhead --model ~/.cache/ponder/smollm2-135m-instruct --output results/overhead-smollm2
    ponder bench overhead --workload arith --level 6 --output results/overhead-arith   # the policy's own task

``--extra JSON`` adds request fields to every request of all three, e.g. structured outputs and logprobs on a greedy
``none`` request (both servers then draw the same tokens)::

    ponder bench overhead --num-samples 1 --temperature 0 --skip-best-of-n \\
        --extra '{"response_format": {"type": "json_object"}, "logprobs": true, "top_logprobs": 2}'

``--workload gsm8k`` (the default) sends one GSM8K question every time; ``arith`` sends the arith task's test problems
as its policy sees them (``--level``), request i the i-th problem, in the same order to both servers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
from tqdm import tqdm

from benchmarks.serve import workload_prompts
from benchmarks.servers import check_model_folders, ponder_cmd, running, shown_path, vllm_cmd
from reward_models import PRM_FORMATS
from server.default_models import ensure_default_models

PROMPT = [
    {
        "role": "user",
        "content": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
        "many clips in May. How many clips did Natalia sell altogether?",
    }
]


def prompts(workload: str, count: int, level: int | None) -> list[list[dict]]:
    """The messages of each request in turn: the GSM8K question, or ``count`` arith test problems."""
    if workload == "gsm8k":
        return [PROMPT]

    texts, _ = workload_prompts("arith", count, level)
    return [[{"role": "user", "content": text}] for text in texts]


def measure(url: str, body: dict, messages: list[list[dict]], requests: int, warmup: int, label: str) -> list[dict]:
    """Send ``warmup`` + ``requests`` requests one at a time, request i with ``messages[i % len(messages)]``; a row
    per timed request."""
    rows = []
    with httpx.Client(base_url=url, timeout=600) as client:
        for i in tqdm(range(warmup + requests), desc=label, file=sys.stderr):
            start = time.perf_counter()
            r = client.post("/v1/chat/completions", json=body | {"messages": messages[i % len(messages)]})
            elapsed = time.perf_counter() - start
            r.raise_for_status()
            data = r.json()
            if i >= warmup:
                ponder = data.get("ponder") or {}
                rows.append(
                    {
                        "latency_s": elapsed,
                        "completion_tokens": data["usage"]["completion_tokens"],
                        "scorer_seconds": ponder.get("scorer_seconds", 0.0),
                        "engine_requests": ponder.get("engine_requests"),
                    }
                )
    return rows


def summary(rows: list[dict]) -> dict:
    return {
        "median_latency_s": statistics.median(r["latency_s"] for r in rows),
        "median_scorer_s": statistics.median(r["scorer_seconds"] for r in rows),
        "mean_completion_tokens": statistics.fmean(r["completion_tokens"] for r in rows),
        "engine_requests": sorted({r["engine_requests"] for r in rows if r["engine_requests"] is not None}),
        "requests": len(rows),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; a missing folder, a server that does not start or an error answer is one line on stderr
    and exit status 2 (the servers' logs stay in ``--output``)."""
    args = build_parser().parse_args(argv)
    try:
        check_model_folders(("--model", args.model), ("--prm", args.prm))
        run(args)
    except ValueError as exc:
        print(f"ponder bench overhead: error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, httpx.HTTPError) as exc:  # a server that did not start, or an error answer
        print(f"ponder bench overhead: error: {str(exc).splitlines()[0]} (logs in {args.output})", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ponder bench overhead", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="policy folder (default: the embedded default policy)")
    p.add_argument("--prm", help="reward model folder (default: the embedded default PRM)")
    p.add_argument("--prm-format", choices=PRM_FORMATS, help="how Ponder reads --prm (default: its config)")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--requests", type=int, default=24)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--memory-fraction", type=float, default=0.2)
    p.add_argument("--workload", choices=("gsm8k", "arith"), default="gsm8k", help="what the requests ask (above)")
    p.add_argument("--level", type=int, choices=range(1, 7), help="arith: problems of this level (default: all)")
    p.add_argument("--extra", type=_json_object, default={}, help="request fields (JSON) added to every request")
    p.add_argument("--skip-best-of-n", action="store_true", help="measure vLLM and Ponder's none only")
    p.add_argument("--output", type=Path, default=Path("results/overhead"))
    return p


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
    return value


def run(args: argparse.Namespace) -> None:
    """Measure vLLM's server, then Ponder's ``best_of_n`` and ``none``; write and print the table."""
    if args.model is None or args.prm is None:
        defaults = ensure_default_models()
        args.model, args.prm = args.model or str(defaults.policy), args.prm or str(defaults.prm_or_stand_in())
    args.output.mkdir(parents=True, exist_ok=True)
    n = args.num_samples
    sampling = {"max_tokens": args.max_tokens, "temperature": args.temperature} | args.extra
    messages = prompts(args.workload, args.warmup + args.requests, args.level)

    with running(vllm_cmd(args.model, args.memory_fraction), args.output / "vllm.log") as server:
        plain = sampling | {"model": "model", "n": n}
        vllm_rows = measure(server.url, plain, messages, args.requests, args.warmup, f"vllm n={n}")
    with running(
        ponder_cmd(args.model, args.prm, args.memory_fraction, prm_format=args.prm_format), args.output / "ponder.log"
    ) as server:
        url = server.url
        bon = sampling | {"strategy": "best_of_n", "strategy_params": {"num_samples": n}}
        bon_rows = (
            []
            if args.skip_best_of_n
            else measure(url, bon, messages, args.requests, args.warmup, f"ponder best_of_n N={n}")
        )
        none_rows = measure(url, sampling | {"n": n}, messages, args.requests, args.warmup, f"ponder none n={n}")

    result = {
        "model": shown_path(args.model),
        "prm": shown_path(args.prm),
        "num_samples": n,
        "max_tokens": args.max_tokens,
        "workload": args.workload,
        "level": args.level,
        "temperature": args.temperature,
        "extra": args.extra,
        "vllm": summary(vllm_rows),
        "ponder_none": summary(none_rows),
    }
    if bon_rows:
        result["ponder_best_of_n"] = summary(bon_rows)
    base = result["vllm"]["median_latency_s"]
    if bon_rows:
        result["ratio_best_of_n"] = result["ponder_best_of_n"]["median_latency_s"] / base
    result["ratio_none"] = result["ponder_none"]["median_latency_s"] / base
    (args.output / "overhead.json").write_text(
        json.dumps(
            result | {"rows": {"vllm": vllm_rows, "ponder_best_of_n": bon_rows, "ponder_none": none_rows}}, indent=2
        )
    )
    table = [
        "| run | median latency (s) | of which reward model (s) | mean generated tokens | ratio to vLLM |",
        "|---|---|---|---|---|",
    ]
    for key, label in (
        ("vllm", f"vLLM server, n={n}"),
        ("ponder_none", f"Ponder none, n={n}"),
        ("ponder_best_of_n", f"Ponder best_of_n, N={n}"),
    ):
        if key not in result:
            continue
        s = result[key]
        table.append(
            f"| {label} | {s['median_latency_s']:.3f} | {s['median_scorer_s']:.3f} | "
            f"{s['mean_completion_tokens']:.0f} | {s['median_latency_s'] / base:.2f} |"
        )
    if bon_rows:
        table.append(f"\nEngine requests per Ponder best_of_n request: {result['ponder_best_of_n']['engine_requests']}")
    if args.extra:
        table.append(f"\nEvery request also sent: `{json.dumps(args.extra)}`")
    (args.output / "overhead.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    sys.exit(main())
