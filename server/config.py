"""Settings, each a dataclass field: ``ponder serve``'s flags and ``--config`` YAML keys are generated from them.

- :class:`ServerConfig`: what is served and the caps every request is held to (what :func:`server.app.create_app`
  reads);
- :class:`EngineConfig`: which models are served, and how their engines start;
- :class:`ServeConfig`: ``ponder serve`` whole: the two above, and the process around them (address, shutdown, logs).

A field's ``metadata`` holds its ``help``, and where it has them its ``choices``, ``metavar`` and ``flag`` (the flag's
name where it is not the field's: ``api_keys`` is ``--api-key``; None: no flag, the field is derived). Every field is
checked where the dataclass is built (``__post_init__``: a ValueError with a one-line message naming the flag), so a
bad value fails the same way from a flag, a YAML key or Python.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reward_models import PRM_FORMATS
from server.engine import BACKENDS

LOG_LEVELS = ("debug", "info", "warning", "error")


def _option(default: Any, help: str, **metadata: Any) -> Any:
    return field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class ServerConfig:
    """What is served and the caps every request is held to.

    It refuses what is meaningless anywhere (a negative cap, no request slot, a deadline that has passed); a cap of
    0 messages is allowed here (it refuses every request: tests use it), not by ``ponder serve`` (:class:`ServeConfig`).
    """

    model_name: str = _option(
        "ponder-default",
        "the id clients send as `model` and /v1/models lists (ponder serve: --served-model-name)",
        flag=None,
    )
    reward_model_name: str | None = _option(
        None, "None: no reward model loaded; strategies that need one answer 400 (ponder serve: --prm)", flag=None
    )
    max_num_samples: int = _option(64, "cap on N per request (num_samples, n); above it a request gets a 400")
    max_total_tokens: int = _option(65536, "cap on tokens generated per request, across all candidates and steps")
    max_tree_nodes: int = _option(4096, "cap on samples (tree nodes) one request draws across all search rounds")
    default_max_tokens: int = _option(1024, "max_tokens per sample when a request sends none")
    request_timeout: float = _option(
        600.0, "wall-clock deadline per request, seconds; its engine work is aborted when it passes"
    )
    max_body_bytes: int = _option(4 << 20, "cap on request body size; larger bodies are refused (413) unparsed")
    max_messages: int = _option(512, "cap on messages per request")
    max_concurrent_requests: int = _option(64, "chat requests served at once; more wait in the queue")
    max_queued_requests: int = _option(256, "chat requests waiting for a slot; beyond it a request gets 429")
    api_keys: tuple[str, ...] = _option(
        (),
        "accept this bearer key (repeatable; or env PONDER_API_KEYS, comma-separated); every route but /health then "
        "needs one (none: no authentication)",
        flag="--api-key",
        metavar="KEY",
    )
    log_prompts: bool = _option(False, "log messages and outputs with each request")
    enable_auto_tool_choice: bool = _option(
        False, "vLLM's flag: let the model call tools on its own (tool_choice auto); needs --tool-call-parser"
    )
    tool_call_parser: str | None = _option(
        None, "vLLM's tool-call parser that reads the model's tool calls (e.g. hermes for Qwen3)", metavar="NAME"
    )
    trust_request_chat_template: bool = _option(
        False, "vLLM's flag: accept a chat_template sent in a request (refused otherwise)"
    )

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise ValueError("--enable-auto-tool-choice needs --tool-call-parser NAME")
        if self.tool_call_parser:
            from vllm.tool_parsers import ToolParserManager

            known = ToolParserManager.list_registered()
            if self.tool_call_parser not in known:
                raise ValueError(
                    f"--tool-call-parser {self.tool_call_parser!r} is not one of vLLM's: {', '.join(known)}"
                )
        if self.max_concurrent_requests < 1:
            raise ValueError("--max-concurrent-requests must be at least 1")
        if self.request_timeout <= 0:
            raise ValueError("--request-timeout must be positive")
        for f in dataclasses.fields(self):
            if f.type == "int" and getattr(self, f.name) < 0:
                raise ValueError(f"{flag_of(ServerConfig, f.name)} must not be negative")


@dataclass(frozen=True)
class EngineConfig:
    """Which models are served and how their engines start. Folders are checked where ``ponder serve`` resolves
    them, not here; a backend's needs (:data:`server.engine.BACKENDS`) are."""

    model: str | None = _option(None, "policy checkpoint folder (default: the embedded default policy)", metavar="PATH")
    prm: str | None = _option(
        None,
        "reward-model checkpoint folder: a PRM (Qwen2ForProcessRewardModel layout) or an ORM (default: the embedded "
        "default PRM when --model is not given)",
        metavar="PATH",
    )
    no_prm: bool = _option(False, "serve without a reward model")
    prm_format: str | None = _option(
        None,
        "how the PRM reads steps: qwen (*ForProcessRewardModel), math_shepherd or rlhflow (a causal LM judging each "
        "step by its '+'/'-' token), likelihood (a causal LM, e.g. the policy, judging each step by its own lowest "
        "token probability); default: from the checkpoint",
        choices=PRM_FORMATS,
    )
    backend: str = _option(
        "vllm",
        "; ".join(f"{name}: {backend.help}" for name, backend in BACKENDS.items()),
        choices=BACKENDS,  # the registry itself: a backend registered later is a choice too
    )
    base_url: str | None = _option(None, "with --backend openai: the remote server's /v1 URL", metavar="URL")
    remote_model: str | None = _option(
        None, "with --backend openai: the model name the remote server serves", metavar="NAME"
    )
    remote_api_key: str | None = _option(
        None, "with --backend openai: bearer key for the remote server (env PONDER_REMOTE_API_KEY)", metavar="KEY"
    )
    tokenizer: str | None = _option(
        None, "tokenizer folder (default: --model); the chat template is applied here", metavar="PATH"
    )
    served_model_name: str | None = _option(
        None, "the model id clients see (default: the model folder's name)", metavar="NAME"
    )
    memory_fraction: float = _option(0.25, "policy KV cache: fraction of GPU memory (of RAM on the CPU engine)")
    prm_memory_fraction: float = _option(0.1, "reward model's KV cache: fraction of GPU memory (of RAM on the CPU)")
    max_model_len: int | None = _option(None, "context length (default: the model's)")
    tensor_parallel_size: int = _option(1, "vLLM's tensor parallelism")
    enforce_eager: bool | None = _option(
        None,
        "skip vLLM's torch.compile warm-up (--enforce-eager) or run it (--no-enforce-eager: 15-30 s more per engine "
        "start for about 14% more sampling throughput on the default models, results/startup); default: the engines' "
        "own, eager",
    )
    scorer_cpus: str | None = _option(
        None,
        "vLLM CPU build: the cores of the reward model's engine, e.g. 1 or 12-15, or 'shared' for vLLM's own binding "
        "(default: the last core, which vLLM leaves out of the policy's; same as env PONDER_SCORER_CPUS)",
        metavar="CORES",
    )
    seed: int = _option(0, "the engines' seed")
    reasoning_parser: str | None = _option(
        None,
        "vLLM's reasoning parser that sets a thinking model's reasoning apart (e.g. qwen3, deepseek_r1); default: the "
        "checkpoint's ponder_reasoning_parser in its config.json, else none",
        metavar="NAME",
    )
    structured_outputs_config: str | None = _option(
        None,
        "vLLM's flag, as JSON: the engine's structured-output settings, e.g. "
        '\'{"backend": "xgrammar", "disable_any_whitespace": true}\' (default: vLLM\'s)',
        metavar="JSON",
    )

    def structured_outputs(self) -> dict[str, Any] | None:
        """``--structured-outputs-config`` read: vLLM's ``StructuredOutputsConfig`` fields."""
        return _structured_outputs(self.structured_outputs_config)

    def __post_init__(self) -> None:
        _check_fields(self)
        _structured_outputs(self.structured_outputs_config)  # a bad value fails here, with the flag's name
        if self.reasoning_parser:
            from vllm.reasoning import ReasoningParserManager

            known = ReasoningParserManager.list_registered()
            if self.reasoning_parser not in known:
                raise ValueError(
                    f"--reasoning-parser {self.reasoning_parser!r} is not one of vLLM's: {', '.join(known)}"
                )
        if not 0 < self.memory_fraction < 1 or not 0 < self.prm_memory_fraction < 1:
            raise ValueError("--memory-fraction and --prm-memory-fraction must be between 0 and 1")
        if self.tensor_parallel_size < 1:
            raise ValueError("--tensor-parallel-size must be at least 1")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError("--max-model-len must be at least 1")
        if self.prm_format and self.no_prm:
            raise ValueError("--prm-format names how to read a reward model; it cannot go with --no-prm")
        backend = BACKENDS[self.backend]
        missing = [name for name in backend.requires if not getattr(self, name)]
        if missing:
            needs = " and ".join(f"{flag_of(EngineConfig, n)} {_metavar(EngineConfig, n)}" for n in backend.requires)
            raise ValueError(f"--backend {self.backend} needs {needs}")
        if not backend.local and not (self.tokenizer or self.model):
            raise ValueError(f"--backend {self.backend} needs --tokenizer PATH (the remote model's tokenizer folder)")


def _structured_outputs(value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        settings = json.loads(value)
    except ValueError:
        raise ValueError(f"--structured-outputs-config must be a JSON object, got {value!r}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"--structured-outputs-config must be a JSON object, got {value!r}")
    from vllm.config import StructuredOutputsConfig  # deferred: vLLM only when the flag is given

    try:
        StructuredOutputsConfig(**settings)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--structured-outputs-config: {' '.join(str(exc).split())}") from None
    return settings


@dataclass(frozen=True)
class ServeConfig:
    """``ponder serve``: the engines, the server, and the process around them.

    It holds ``ponder serve`` to stricter caps than :class:`ServerConfig` does: each at least 1."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    host: str = _option("127.0.0.1", "address to listen on", metavar="HOST")
    port: int = _option(8000, "port to listen on")
    shutdown_grace: float = _option(
        30.0, "on SIGTERM, seconds to let in-flight requests finish before they are cancelled"
    )
    log_level: str = _option("info", "log level", choices=LOG_LEVELS)

    def __post_init__(self) -> None:
        _check_fields(self)
        _check_serve_caps(lambda name: getattr(self.server, name))
        if self.shutdown_grace < 0:
            raise ValueError("--shutdown-grace must not be negative")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port {self.port} is not a valid port")

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> ServeConfig:
        """The config from field names to values (YAML keys, flags' dests); the rest keep their defaults.

        ValueError for an unknown name, a value of the wrong type, or one :meth:`__post_init__` refuses."""
        values = check_flat(values)
        nested = {f.name: owner for owner, f in flat_fields(cls)}
        parts: dict[type, dict[str, Any]] = {EngineConfig: {}, ServerConfig: {}, ServeConfig: {}}
        for name, value in values.items():
            parts[nested[name]][name] = value
        defaults = {f.name: f.default for f in dataclasses.fields(ServerConfig)}
        _check_serve_caps(lambda name: parts[ServerConfig].get(name, defaults[name]))  # before ServerConfig's own
        return cls(engine=EngineConfig(**parts[EngineConfig]), server=ServerConfig(**parts[ServerConfig]), **parts[cls])

    def flat(self) -> dict[str, Any]:
        """Field name -> value, the nested configs' fields in place of them (the inverse of :meth:`from_flat`)."""
        owners = {EngineConfig: self.engine, ServerConfig: self.server, ServeConfig: self}
        return {f.name: getattr(owners[owner], f.name) for owner, f in flat_fields(type(self))}


SERVE_CAPS = (  # each at least 1 for ponder serve
    "max_num_samples",
    "max_total_tokens",
    "default_max_tokens",
    "max_tree_nodes",
    "max_body_bytes",
    "max_messages",
    "max_concurrent_requests",
    "request_timeout",
)


def _check_serve_caps(value_of: Callable[[str], Any]) -> None:
    for name in SERVE_CAPS:
        if value_of(name) < 1:
            raise ValueError(f"{flag_of(ServerConfig, name)} must be at least 1")


def flat_fields(cls: type = ServeConfig) -> list[tuple[type, dataclasses.Field]]:
    """``(owning dataclass, field)`` for every setting of ``cls``, a nested dataclass's fields in its place."""
    hints = typing.get_type_hints(cls)
    found: list[tuple[type, dataclasses.Field]] = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            found += flat_fields(hint)
        else:
            found.append((cls, f))
    names = [f.name for _, f in found]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    assert not duplicated, f"settings named twice: {duplicated}"  # flat YAML keys and flags need unique names
    return found


def has_flag(f: dataclasses.Field) -> bool:
    """Whether a field is a setting (a flag and a YAML key), not derived (``flag=None``: set by ponder serve)."""
    return f.metadata.get("flag", "") is not None


def flag_of(cls: type, name: str) -> str:
    """The flag of field ``name`` of ``cls`` (its ``flag`` metadata, else ``--`` and the name with dashes)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.metadata.get("flag", "--" + name.replace("_", "-")) or name


def _metavar(cls: type, name: str) -> str:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.metadata.get("metavar", name.upper())


def check_flat(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (field name -> value) with each value checked against its field's type and choices (an int as a
    float; a list or comma-separated string as a tuple). ValueError for an unknown name or a wrong value; what
    depends on several fields is left to the dataclasses."""
    known = {f.name: (owner, f) for owner, f in flat_fields() if has_flag(f)}  # derived fields are not settings
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown key{'s' * (len(unknown) > 1)} {', '.join(unknown)}; keys: {', '.join(known)}")
    return {name: _checked(known[name][0], known[name][1], value) for name, value in values.items()}


def _check_fields(instance: Any) -> None:
    """Check (and coerce, e.g. an int to a float) every non-nested field of a frozen dataclass instance."""
    hints = typing.get_type_hints(type(instance))
    for f in dataclasses.fields(instance):
        if not dataclasses.is_dataclass(hints[f.name]):
            object.__setattr__(instance, f.name, _checked(type(instance), f, getattr(instance, f.name)))


def _checked(cls: type, f: dataclasses.Field, value: Any) -> Any:
    hint = typing.get_type_hints(cls)[f.name]
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if optional:
        if value is None:
            return None
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    checked, what = _as_type(hint, value)
    if checked is _WRONG:
        raise ValueError(f"{f.name}: expected {what}{' or null' * optional}, got {value!r}")
    choices = f.metadata.get("choices")
    if choices is not None and checked not in choices:
        raise ValueError(f"{f.name}: {checked!r} is not one of {', '.join(map(str, choices))}")
    return checked


_WRONG = object()


def _as_type(hint: Any, value: Any) -> tuple[Any, str]:
    """``(value as hint, hint in words)``; ``_WRONG`` in place of a value that is not one."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if hint is bool:
        return (value if isinstance(value, bool) else _WRONG), "true or false"
    if hint is int:
        return (value if isinstance(value, int) and not isinstance(value, bool) else _WRONG), "an integer"
    if hint is float:
        return (float(value) if number else _WRONG), "a number"
    if hint is str:
        return (value if isinstance(value, str) else _WRONG), "a string"
    if typing.get_origin(hint) is tuple:
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        ok = isinstance(items, list | tuple) and all(isinstance(v, str) for v in items)
        return (tuple(items) if ok else _WRONG), "a list of strings"
    raise TypeError(f"no check for settings of type {hint}")


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, as the command lines print their mistakes."""
    return " ".join(str(exc).split())


def read_yaml_mapping(path: str, keys: str) -> dict[str, Any]:
    """The mapping in the ``--config`` YAML file at ``path`` (``keys``: what its keys are, for the message);
    ValueError, one line, for a missing file, invalid YAML or anything but a mapping."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"--config {path!r}: no such file")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"--config {path!r} is not valid YAML: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path!r} must hold a mapping of {keys} to values")
    return data
