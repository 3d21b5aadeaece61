"""Policy engines behind :class:`strategies.base.Engine`: the in-process vLLM one (:mod:`server.engine.vllm_engine`)
and a remote OpenAI-compatible server (:mod:`server.engine.openai_engine`).

Strategies see only :class:`strategies.base.Engine`; the server also needs what :class:`ServedEngine` adds.

``ponder serve --backend NAME`` picks one from :data:`BACKENDS`, registered lazily as the reward-model formats are
(:mod:`reward_models.registry`): the registry holds ``"module:Class"`` and the module, which may import vLLM, is
imported only when the server starts that engine. A new backend is one file with a class that has
``async from_config(cls, config: EngineConfig) -> ServedEngine`` (:class:`EngineBackend`) and one line in
:data:`BACKENDS`; ``--backend``'s choices come from it.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from strategies.base import Engine, Scorer, TokenLogprob

if TYPE_CHECKING:  # server.config reads BACKENDS for --backend's choices
    from server.config import EngineConfig


class ServedEngine(Engine, Protocol):
    """An engine as the server uses it: a tokenizer for the chat template, the context length, and a lifecycle."""

    tokenizer: Any  # a Hugging Face tokenizer; apply_chat_template renders requests
    max_model_len: int
    reasoning_parser: str | None  # vLLM's parser of the model's thinking, if it thinks

    def count_tokens(self, text: str) -> int: ...

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise InvalidRequestError for request options the engine would refuse."""
        ...

    async def score_text(self, prompt: str, text: str, top: int) -> list[TokenLogprob]:
        """The log-probability of each token of ``text`` after ``prompt``, with ``top`` alternatives each."""
        ...

    def healthy(self) -> bool: ...

    def num_running(self) -> int: ...

    async def shutdown(self) -> None: ...


@runtime_checkable
class ServedScorer(Scorer, Protocol):
    """A reward model as the server holds it: one it can stop at shutdown."""

    async def shutdown(self) -> None: ...


class EngineBackend(Protocol):
    """A backend class: it starts its engine from ``ponder serve``'s engine settings.

    ``config.model`` is the policy folder to load (a local backend) and ``config.tokenizer`` the folder of the
    remote model's tokenizer (a remote one), both already checked to exist."""

    async def from_config(self, config: EngineConfig) -> ServedEngine: ...


@dataclass(frozen=True)
class Backend:
    """A registered backend: where its class lives and what it needs from the settings."""

    target: str  # "module:Class", imported only when the server starts the engine
    help: str
    local: bool = True  # the policy runs in this process from --model (else elsewhere; --tokenizer is read here)
    requires: tuple[str, ...] = ()  # EngineConfig fields it cannot start without

    def load(self) -> EngineBackend:
        """The backend class (importing its module)."""
        module, _, name = self.target.partition(":")
        backend: EngineBackend = getattr(importlib.import_module(module), name)
        return backend


BACKENDS: dict[str, Backend] = {
    "vllm": Backend("server.engine.vllm_engine:VLLMEngine", "in-process vLLM engine"),
    "openai": Backend(
        "server.engine.openai_engine:OpenAIEngine",
        "a remote OpenAI-compatible server (--base-url)",
        local=False,
        requires=("base_url", "remote_model"),
    ),
}


def get_backend(name: str) -> Backend:
    """The backend called ``name``, or ValueError listing the known ones."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; backends: {', '.join(BACKENDS)}") from None


def checkpoint_reasoning_parser(folder: str | Path | None) -> str | None:
    """The reasoning parser a checkpoint names (``ponder_reasoning_parser`` in its ``config.json``), as a reward model
    names its format; None when it names none."""
    if folder is None:
        return None
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = config.get("ponder_reasoning_parser") if isinstance(config, dict) else None
    return name if isinstance(name, str) and name else None
