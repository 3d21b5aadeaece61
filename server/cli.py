"""The ``ponder`` command line: ``ponder serve`` (and the subcommands other modules add).

``ponder serve``'s flags are generated from the fields of :class:`server.config.ServeConfig` (``--max-num-samples``
from ``max_num_samples``; a bool is a bare ``--flag``, a tuple a repeatable one), and ``--config FILE.yaml`` reads the
same names; the defaults, then the file, then the flags. Its ``--backend`` is one of :data:`server.engine.BACKENDS`.

Mistakes (a missing model folder, a bad flag, an occupied port) end in one line on stderr and exit status 2;
nothing is loaded before they are checked.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import logging
import os
import socket
import sys
import types
import typing
from collections.abc import Mapping
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from reward_models import load_scorer_beside, reads_policy_itself
from reward_models.hardware import scorer_cpu_bind
from server.config import (
    EngineConfig,
    ServeConfig,
    ServerConfig,
    check_flat,
    flag_of,
    flat_fields,
    has_flag,
    one_line,
    read_yaml_mapping,
)
from server.default_models import ensure_default_models
from server.engine import ServedEngine, get_backend
from strategies.base import Scorer

if TYPE_CHECKING:  # server.app imports vLLM (its request models): only `serve` needs it, not a mistyped flag
    from server.app import Loader

log = logging.getLogger("ponder")


class CLIError(Exception):
    """A user mistake on the command line: printed as one line, exit status 2."""


class _Repeat(argparse.Action):
    """A repeatable flag (``--api-key A --api-key B``) whose values replace the default (a YAML list) instead of
    adding to it, as every flag replaces its YAML key."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        items = [] if current is self.default or current is None else list(current)
        setattr(namespace, self.dest, (*items, values))


def _add_setting(group: Any, owner: type, f: dataclasses.Field) -> None:
    """One ``ponder serve`` flag from a config field: its name, type, choices and help."""
    hint = typing.get_type_hints(owner)[f.name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None: a flag of type X
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    text = f.metadata["help"]
    if f.default is not None and f.default is not False and f.default != ():
        text += f" (default: {f.default})"
    kwargs: dict[str, Any] = {"dest": f.name, "help": text.replace("%", "%%")}
    if hint is bool:  # a bare --flag; an optional one (default None) also has --no-flag
        kwargs["action"] = argparse.BooleanOptionalAction if f.default is None else "store_true"
    elif typing.get_origin(hint) is tuple:
        kwargs |= {"action": _Repeat, "metavar": f.metadata.get("metavar")}
    else:
        choices = f.metadata.get("choices")
        metavar = f.metadata.get("metavar", None if choices else METAVARS[hint])
        kwargs |= {"type": hint, "choices": choices, "metavar": metavar}
    group.add_argument(flag_of(owner, f.name), **kwargs)


METAVARS = {int: "N", float: "X", str: "TEXT"}  # where a field names none
GROUPS = {  # the --help sections, one per config class
    EngineConfig: "models and engines",
    ServerConfig: "caps and keys (every request is held to them)",
    ServeConfig: "the process",
}


def _serve_parser(sub: argparse._SubParsersAction, config: Mapping[str, Any]) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the OpenAI-compatible API",
        description="Serve /v1/chat/completions with reasoning strategies on a vLLM engine. Every flag is also a key "
        "of --config FILE.yaml (its name with underscores); flags override the file, which overrides the defaults.",
    )
    p.add_argument(
        "--config", metavar="FILE.yaml", help="YAML mapping of settings: the flags' names with underscores, e.g. port"
    )
    groups = {owner: p.add_argument_group(title) for owner, title in GROUPS.items()}
    for owner, f in flat_fields(ServeConfig):
        if has_flag(f):
            _add_setting(groups[owner], owner, f)
    p.set_defaults(**(_defaults() | dict(config)))


def _defaults() -> dict[str, Any]:
    """The flags' defaults: the config's, and the remote backend's key from the environment."""
    values = {name: value for name, value in ServeConfig().flat().items() if name not in DERIVED}
    return values | {"remote_api_key": os.environ.get("PONDER_REMOTE_API_KEY")}


DERIVED = {f.name for _, f in flat_fields(ServeConfig) if not has_flag(f)}  # set by ponder serve, not by a flag


def read_config(path: str) -> dict[str, Any]:
    """The settings in a ``--config`` YAML file, each checked against its field; CLIError for a mistake."""
    try:
        data = read_yaml_mapping(path, "settings")
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    try:
        return check_flat(data)
    except ValueError as exc:
        raise CLIError(f"--config {path!r}: {one_line(exc)}") from None


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """``ponder serve``'s settings from its parsed flags (which hold the ``--config`` file's values as defaults),
    with the keys in env ``PONDER_API_KEYS`` added; CLIError for a value the config refuses."""
    values = {name: getattr(args, name) for name in _defaults()}
    env_keys = tuple(k.strip() for k in os.environ.get("PONDER_API_KEYS", "").split(",") if k.strip())
    values["api_keys"] = tuple(values["api_keys"] or ()) + env_keys
    try:
        return ServeConfig.from_flat(values)
    except ValueError as exc:
        raise CLIError(one_line(exc)) from None


def _checkpoint(path: str | None, what: str) -> Path | None:
    if path is None:
        return None
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise CLIError(f"{what} {path!r} is not a model folder (no config.json there)")
    return folder


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _resolve_models(engine: EngineConfig) -> tuple[Path | None, Path | None]:
    """The policy (for a remote backend: its tokenizer) and reward-model folders to load, after checking they exist."""
    if not get_backend(engine.backend).local:
        return _checkpoint(engine.tokenizer or engine.model, "--tokenizer"), _checkpoint(engine.prm, "--prm")
    if engine.model is None:
        defaults = ensure_default_models()
        prm = None if engine.no_prm else (_checkpoint(engine.prm, "--prm") or defaults.prm)
        return defaults.policy, prm
    return _checkpoint(engine.model, "--model"), None if engine.no_prm else _checkpoint(engine.prm, "--prm")


def _loader(settings: argparse.Namespace | ServeConfig, policy: Path | None, prm: Path | None) -> Loader:
    """What the app runs at startup: the backend's engine on ``policy`` (for a remote backend: its tokenizer) and
    the reward model in ``prm`` beside it, both at once (after the policy when the reward model reads the policy's
    own engine). A failure is one line on stderr and exit status 1."""
    config = (settings if isinstance(settings, ServeConfig) else serve_config(settings)).engine
    backend = get_backend(config.backend)
    folder = {"model" if backend.local else "tokenizer": str(policy)}
    resolved = dataclasses.replace(config, **folder, prm=None if prm is None else str(prm))

    async def scorer_beside(engine: ServedEngine | None) -> Scorer | None:
        if prm is None:
            return None
        return await load_scorer_beside(
            engine,
            policy,
            prm,
            format=config.prm_format,
            memory_fraction=config.prm_memory_fraction,
            enforce_eager=config.enforce_eager,  # None: the engines' default
            scorer_cpus=config.scorer_cpus,
        )

    async def load() -> tuple[ServedEngine, Scorer | None]:
        try:
            if prm is not None:  # a core list that cannot be used fails now, not after the policy has loaded
                scorer_cpu_bind(requested=config.scorer_cpus)
            if prm is not None and policy is not None and reads_policy_itself(prm, policy, config.prm_format):
                engine = await backend.load().from_config(resolved)
                scorer = await scorer_beside(engine)  # the policy's own likelihood, read on the policy's engine
            else:  # both engines start at once; each loads in its own process (reward_models.vllm_runtime)
                engine, scorer = await asyncio.gather(backend.load().from_config(resolved), scorer_beside(None))
        except Exception as exc:  # startup failure: one line, non-zero exit, no traceback for the user
            print(f"ponder: error: could not load the models: {exc}", file=sys.stderr, flush=True)
            os._exit(1)
        log.info("ready: policy %s, reward model %s", policy, prm)
        return engine, scorer

    return load


def serve(args: argparse.Namespace) -> None:
    config = serve_config(args)
    _check_port(config.host, config.port)
    policy, prm = _resolve_models(config.engine)
    engine = config.engine
    assert policy is not None  # a remote backend without a tokenizer folder is refused by EngineConfig
    name = engine.served_model_name or (policy.name if get_backend(engine.backend).local else engine.remote_model)
    server_config = dataclasses.replace(config.server, model_name=name, reward_model_name=prm.name if prm else None)
    from server.app import create_app  # deferred: see the TYPE_CHECKING import

    app = create_app(server_config, loader=_loader(config, policy, prm))
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            timeout_graceful_shutdown=config.shutdown_grace,
        )
    )
    app.state.uvicorn = server
    server.run()
    if app.state.exit_code:
        raise SystemExit(app.state.exit_code)


# Subcommands that live with their code: `ponder NAME ...` hands the rest of the line to MODULE.main(argv).
DELEGATED = {
    "train": ("training.cli", "train a policy (sft, dpo, grpo), a reward model (prm, orm), or a model soup"),
    "label": ("training.label", "label reasoning steps by Monte Carlo rollouts"),
    "eval": ("training.evaluate", "evaluate a reward model (prm, orm, labels, bon) or a policy (policy, compare)"),
    "bench": ("benchmarks.cli", "benchmarks: accuracy against compute, serving speed"),
    "tune": ("benchmarks.tune", "fit a strategy's settings on a development split: auto's policy file"),
    "convert": ("training.convert", "convert a model: SmolLM2's GGUF, a policy marked as a likelihood PRM"),
    "recipe": ("training.recipe", "run a recipe: the ponder commands that build a shipped model"),
}


def build_parser(config: Mapping[str, Any] | None = None) -> argparse.ArgumentParser:
    """The ``ponder`` parser; ``config``: settings (a ``--config`` file's) that take the place of the defaults."""
    parser = argparse.ArgumentParser(prog="ponder", description="Ponder: a test-time-scaling inference server.")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub, config or {})
    for name, (_, help_text) in _delegated().items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; for ``ponder serve --config FILE``, again with the file's settings as the defaults, so that
    the flags override the file. CLIError for a mistake in the file."""
    args = build_parser().parse_args(argv)
    if getattr(args, "config", None):
        args = build_parser(read_config(args.config)).parse_args(argv)
    return args


def _delegated() -> dict[str, tuple[str, str]]:
    """The delegated subcommands whose module this installation has."""

    return {name: entry for name, entry in DELEGATED.items() if find_spec(entry[0]) is not None}


def _delegate(name: str, argv: list[str]) -> int:

    return int(importlib.import_module(DELEGATED[name][0]).main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _delegated():
        return _delegate(argv[0], argv[1:])
    try:
        args = parse_args(argv)
        logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
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
