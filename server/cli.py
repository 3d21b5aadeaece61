"""The ``ponder`` command line: ``ponder serve`` (and the subcommands other modules add).

Mistakes (a missing model folder, a bad flag, an occupied port) end in one line on stderr and exit status 2;
nothing is loaded before they are checked.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import socket
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import uvicorn

from reward_models import PRM_FORMATS, load_scorer_beside
from reward_models.hardware import scorer_cpu_bind
from server.app import create_app
from server.config import ServerConfig
from server.default_models import ensure_default_models
from server.engine.openai_engine import OpenAIEngine

log = logging.getLogger("ponder")


class CLIError(Exception):
    """A user mistake on the command line: printed as one line, exit status 2."""


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the OpenAI-compatible API",
        description="Serve /v1/chat/completions with reasoning strategies on a vLLM engine.",
    )
    p.add_argument("--model", help="policy checkpoint folder (default: the embedded default policy)")
    p.add_argument(
        "--prm",
        help="reward-model checkpoint folder: a PRM (Qwen2ForProcessRewardModel layout) or an "
        "ORM (default: the embedded default PRM when --model is not given)",
    )
    p.add_argument("--no-prm", action="store_true", help="serve without a reward model")
    p.add_argument(
        "--prm-format",
        choices=PRM_FORMATS,
        help="how the PRM reads steps: qwen (*ForProcessRewardModel), math_shepherd or rlhflow (a causal "
        "LM judging each step by its '+'/'-' token), likelihood (a causal LM, e.g. the policy, "
        "judging each step by its own lowest token probability); default: from the checkpoint",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--backend",
        choices=("vllm", "openai"),
        default="vllm",
        help="vllm: in-process engine; openai: a remote OpenAI-compatible server (--base-url)",
    )
    p.add_argument("--base-url", help="with --backend openai: the remote server's /v1 URL")
    p.add_argument("--remote-model", help="with --backend openai: the model name the remote server serves")
    p.add_argument(
        "--remote-api-key",
        default=os.environ.get("PONDER_REMOTE_API_KEY"),
        help="with --backend openai: bearer key for the remote server (env PONDER_REMOTE_API_KEY)",
    )
    p.add_argument("--tokenizer", help="tokenizer folder (default: --model); the chat template is applied here")
    p.add_argument("--served-model-name", help="the model id clients see (default: the model folder's name)")
    p.add_argument(
        "--memory-fraction",
        type=float,
        default=0.25,
        help="policy KV cache: fraction of GPU memory (of RAM on the CPU engine)",
    )
    p.add_argument("--prm-memory-fraction", type=float, default=0.1, help="reward model's fraction")
    p.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument(
        "--enforce-eager",
        action="store_true",
        help="skip vLLM's torch.compile warm-up: the engines start sooner (same as env PONDER_ENFORCE_EAGER=1)",
    )
    p.add_argument(
        "--scorer-cpus",
        help="vLLM CPU build: the cores of the reward model's engine, e.g. 1 or 12-15, or 'shared' for vLLM's own "
        "binding (default: the last core, which vLLM leaves out of the policy's; same as env PONDER_SCORER_CPUS)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-num-samples", type=int, default=64, help="cap on N per request")
    p.add_argument("--max-total-tokens", type=int, default=65536, help="cap on tokens generated per request")
    p.add_argument("--default-max-tokens", type=int, default=1024, help="max_tokens when a request sends none")
    p.add_argument("--max-tree-nodes", type=int, default=4096, help="cap on samples one request draws in all")
    p.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="wall-clock deadline per request, seconds; its engine work is aborted when it passes",
    )
    p.add_argument("--max-body-bytes", type=int, default=4 << 20, help="cap on request body size (413 above)")
    p.add_argument("--max-messages", type=int, default=512, help="cap on messages per request")
    p.add_argument("--max-concurrent-requests", type=int, default=64, help="chat requests served at once")
    p.add_argument(
        "--max-queued-requests",
        type=int,
        default=256,
        help="chat requests waiting for a slot; beyond it a request gets 429 with Retry-After",
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=None,
        help="accept this bearer key (repeatable; or env PONDER_API_KEYS, comma-separated); "
        "every route but /health then needs one",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds to let in-flight requests finish before they are cancelled",
    )
    p.add_argument("--log-prompts", action="store_true", help="log messages and outputs with each request")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def _checkpoint(path: str | None, what: str) -> Path | None:
    if path is None:
        return None
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise CLIError(f"{what} {path!r} is not a model folder (no config.json there)")
    return folder


def _check_port(host: str, port: int) -> None:
    if not 0 < port < 65536:
        raise CLIError(f"--port {port} is not a valid port")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _resolve_models(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """The policy and reward-model folders to load, after checking they exist."""
    if args.backend == "openai":
        if not args.base_url or not args.remote_model:
            raise CLIError("--backend openai needs --base-url URL and --remote-model NAME")
        if not (args.tokenizer or args.model):
            raise CLIError("--backend openai needs --tokenizer PATH (the remote model's tokenizer folder)")
        return _checkpoint(args.tokenizer or args.model, "--tokenizer"), _checkpoint(args.prm, "--prm")
    if args.model is None:
        defaults = ensure_default_models()
        prm = None if args.no_prm else (_checkpoint(args.prm, "--prm") or defaults.prm)
        return defaults.policy, prm
    return _checkpoint(args.model, "--model"), None if args.no_prm else _checkpoint(args.prm, "--prm")


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _loader(args: argparse.Namespace, policy: Path | None, prm: Path | None):
    async def load() -> tuple[Any, Any]:
        try:
            if args.backend == "openai":
                # deferred import: torch/transformers only on this path
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(str(policy))
                engine: Any = OpenAIEngine(
                    args.base_url,
                    args.remote_model,
                    tokenizer,
                    api_key=args.remote_api_key,
                    max_model_len=args.max_model_len or 4096,
                )
            else:
                # deferred import: vLLM (an optional extra, seconds to import) only where an engine is used
                from server.engine.vllm_engine import VLLMEngine

                if prm is not None:  # a core list that cannot be used fails now, not after the policy has loaded
                    scorer_cpu_bind(requested=args.scorer_cpus)
                engine = await _maybe_await(
                    VLLMEngine.create(
                        str(policy),
                        memory_fraction=args.memory_fraction,
                        max_model_len=args.max_model_len,
                        seed=args.seed,
                        tensor_parallel_size=args.tensor_parallel_size,
                        enforce_eager=args.enforce_eager or None,  # None: the engines' default
                    )
                )
            scorer = None
            if prm is not None:
                scorer = await _maybe_await(
                    load_scorer_beside(
                        engine,
                        policy,
                        prm,
                        format=args.prm_format,
                        memory_fraction=args.prm_memory_fraction,
                        enforce_eager=args.enforce_eager or None,
                        scorer_cpus=args.scorer_cpus,
                    )
                )
        except Exception as exc:  # startup failure: one line, non-zero exit, no traceback for the user
            print(f"ponder: error: could not load the models: {exc}", file=sys.stderr, flush=True)
            os._exit(1)
        log.info("ready: policy %s, reward model %s", policy, prm)
        return engine, scorer

    return load


def serve(args: argparse.Namespace) -> None:

    for flag in (
        "max_num_samples",
        "max_total_tokens",
        "default_max_tokens",
        "tensor_parallel_size",
        "max_tree_nodes",
        "max_body_bytes",
        "max_messages",
        "max_concurrent_requests",
        "request_timeout",
    ):
        if getattr(args, flag) < 1:
            raise CLIError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.max_queued_requests < 0 or args.shutdown_grace < 0:
        raise CLIError("--max-queued-requests and --shutdown-grace must not be negative")
    if not 0 < args.memory_fraction < 1 or not 0 < args.prm_memory_fraction < 1:
        raise CLIError("--memory-fraction and --prm-memory-fraction must be between 0 and 1")
    if args.prm_format and args.no_prm:
        raise CLIError("--prm-format names how to read a reward model; it cannot go with --no-prm")
    _check_port(args.host, args.port)
    policy, prm = _resolve_models(args)
    name = args.served_model_name or (args.remote_model if args.backend == "openai" else policy.name)
    keys = tuple(args.api_key or ()) + tuple(
        k.strip() for k in os.environ.get("PONDER_API_KEYS", "").split(",") if k.strip()
    )
    config = ServerConfig(
        model_name=name,
        reward_model_name=prm.name if prm else None,
        max_num_samples=args.max_num_samples,
        max_total_tokens=args.max_total_tokens,
        max_tree_nodes=args.max_tree_nodes,
        default_max_tokens=args.default_max_tokens,
        request_timeout=args.request_timeout,
        max_body_bytes=args.max_body_bytes,
        max_messages=args.max_messages,
        max_concurrent_requests=args.max_concurrent_requests,
        max_queued_requests=args.max_queued_requests,
        api_keys=keys,
        log_prompts=args.log_prompts,
    )
    app = create_app(config, loader=_loader(args, policy, prm))
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=args.shutdown_grace
        )
    )
    app.state.uvicorn = server
    server.run()
    if app.state.exit_code:
        raise SystemExit(app.state.exit_code)


# Subcommands that live with their code: `ponder NAME ...` hands the rest of the line to MODULE.main(argv).
DELEGATED = {
    "train": ("training.cli", "train a policy (sft, dpo, grpo) or a reward model (prm, orm)"),
    "label": ("training.label", "label reasoning steps by Monte Carlo rollouts"),
    "eval": ("training.evaluate", "evaluate a reward model (first-error-step accuracy and F1)"),
    "bench": ("benchmarks.cli", "benchmarks: accuracy against compute, serving speed"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ponder", description="Ponder: a test-time-scaling inference server.")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    for name, (_, help_text) in _delegated().items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _delegated() -> dict[str, tuple[str, str]]:
    """The delegated subcommands whose module this installation has."""

    return {name: entry for name, entry in DELEGATED.items() if find_spec(entry[0]) is not None}


def _delegate(name: str, argv: list[str]) -> int:

    return int(importlib.import_module(DELEGATED[name][0]).main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _delegated():
        return _delegate(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "info").upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            serve(args)
    except CLIError as exc:
        print(f"ponder: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
