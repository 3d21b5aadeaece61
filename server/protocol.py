"""The OpenAI chat-completions schema, as pydantic models, plus Ponder's extensions in one marked block.

Fields follow the order of OpenAI's API reference. Request fields that OpenAI defines but Ponder does not act on
(``tools``, ``response_format``, ...) are accepted and ignored, as vLLM's server does with unsupported extras;
fields nobody defines are refused (400), so a typo does not pass silently.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text; a list of content parts keeps its text parts."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1)
    presence_penalty: float | None = None
    response_format: dict[str, Any] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # what the engine can carry
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    user: str | None = None

    # --- Ponder extensions (send with `extra_body` from the official openai client) ---
    strategy: str = Field(default="none", description="Reasoning strategy; GET /v1/models lists them.")
    strategy_params: dict[str, Any] = Field(
        default_factory=dict,
        description="Parameters of the strategy, validated against its config; unknown keys are a 400.",
    )

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        return [value] if isinstance(value, str) else value

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: None = None
    finish_reason: str


class PonderInfo(BaseModel):
    """What the strategy did and what it cost; in every response."""

    strategy: str
    engine_calls: int = Field(description="Engine submissions (one per batched round).")
    engine_requests: int = Field(description="Prompts submitted to the engine across all calls.")
    scorer_calls: int = Field(description="Batched reward-model calls.")
    scorer_seconds: float = Field(description="Wall time spent waiting for the reward model.")
    chosen_completion_tokens: int = Field(description="Tokens of the returned answer(s) alone.")
    candidates: list[dict[str, Any]] | None = Field(default=None, description="With return_trace: every candidate.")
    trace: dict[str, Any] | None = Field(default=None, description="With return_trace: strategy-specific details.")


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=_completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    ponder: PonderInfo


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    ponder: PonderInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "ponder"


class StrategyCard(BaseModel):
    name: str
    description: str
    needs_reward_model: bool
    available: bool = Field(description="False when it needs a reward model and none is loaded.")
    params: dict[str, Any] = Field(description="Parameter names with their defaults.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    strategies: list[StrategyCard]
    reward_model: str | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
