"""Policy engines behind :class:`strategies.base.Engine`: the in-process vLLM one (:mod:`server.engine.vllm_engine`)
and a remote OpenAI-compatible server (:mod:`server.engine.openai_engine`).

Strategies see only :class:`strategies.base.Engine`; the server also needs what :class:`ServedEngine` adds.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from strategies.base import Engine, Scorer


class ServedEngine(Engine, Protocol):
    """An engine as the server uses it: a tokenizer for the chat template, the context length, and a lifecycle."""

    tokenizer: Any  # a Hugging Face tokenizer; apply_chat_template renders requests
    max_model_len: int

    def count_tokens(self, text: str) -> int: ...

    def healthy(self) -> bool: ...

    def num_running(self) -> int: ...

    async def shutdown(self) -> None: ...


@runtime_checkable
class ServedScorer(Scorer, Protocol):
    """A reward model as the server holds it: one it can stop at shutdown."""

    async def shutdown(self) -> None: ...
