"""The ports every strategy talks through, and the values that cross them.

A strategy is an async function ``(task, config, engine, scorer) -> StrategyResult``. It sees the policy only
through :class:`Engine` and the reward model only through :class:`Scorer`; it imports neither FastAPI, pydantic
nor vLLM. The server wraps both ports in :class:`server.accounting.Ledger` proxies, so engine calls, reward-model
calls and generated tokens are counted in one place and no strategy has to count them itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from strategies.answers import equivalent, extract_answer

FinishReason = Literal["stop", "length", "abort"]


class InvalidRequestError(ValueError):
    """The request cannot be served as asked (the client's mistake); the server answers 400 with this message.

    Raised by engines that refuse a request (sampling parameters, a prompt that fills the context) and by
    strategies whose parameters need something this server lacks.
    """


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample: one engine call draws ``n`` samples for each of its prompts."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()  # strings that end a sample; kept in the text (step delimiters)
    seed: int | None = None
    logprobs: int | None = None  # top-k logprobs per token; None: none
    # the request's own sampling fields, by vLLM's SamplingParams names (top_k, min_p, structured_outputs, ...):
    # opaque to strategies; the server sets them on every engine call of a request, and the engine applies them
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log-probability and the most likely alternatives at its position."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()  # (token, log-probability), most likely first


@dataclass(frozen=True)
class Sample:
    """One sampled continuation of one prompt."""

    text: str
    num_tokens: int
    finish_reason: FinishReason | None  # "stop": EOS or a stop string; "length": max_tokens; None: a stream delta
    stop_reason: str | None = None  # the stop string that ended it, None for EOS or length
    cumulative_logprob: float | None = None
    # with SamplingSpec.logprobs set: each token's (end offset in text, log-probability); None where not known
    token_logprobs: tuple[tuple[int, float], ...] | None = None
    # with SamplingSpec.logprobs set: each token, in OpenAI's terms (the client's logprobs); None where not asked
    logprobs: tuple[TokenLogprob, ...] | None = None


@runtime_checkable
class Engine(Protocol):
    """The policy. Implemented by the in-process vLLM engine and by a remote OpenAI-compatible server."""

    async def generate(self, prompts: Sequence[str], spec: SamplingSpec, request_id: str) -> list[list[Sample]]:
        """Sample ``spec.n`` continuations of every prompt, all submitted at once; result[i] belongs to prompts[i]."""
        ...

    def stream(self, prompt: str, spec: SamplingSpec, request_id: str) -> AsyncIterator[Sample]:
        """Sample one continuation, yielding the text generated since the last yield.

        ``num_tokens`` is cumulative; ``finish_reason`` is None on every delta but the last.
        """
        ...

    async def abort(self, request_id: str) -> None:
        """Stop every engine request whose id starts with ``request_id``."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """A reward model: per-step scores in [0, 1] for each (question, steps) pair (an ORM returns one score)."""

    kind: Literal["prm", "orm"]

    async def score(self, items: Sequence[tuple[str, Sequence[str]]], request_id: str) -> list[list[float]]:
        """Score every item in one batched call; result[i] has one score per step of items[i] (ORM: one)."""
        ...


class AnswerReader(Protocol):
    """How a strategy reads a sample: the answer votes compare, and the text reward models judge.

    The server builds one per request: a reasoning model's thinking is set apart, a structured-output request's
    answer is its JSON in canonical form, a tool-calling one's is its tool calls; :class:`MathReader` otherwise."""

    def answer(self, text: str) -> str | None:
        """What a vote compares (None: the sample states no answer)."""
        ...

    def same(self, a: str, b: str) -> bool:
        """Whether two answers from :meth:`answer` are the same."""
        ...

    def reward_text(self, text: str) -> str:
        """The text a reward model reads: the steps, wherever the model wrote them, without markup."""
        ...


class MathReader:
    """Plain text with a final answer: the last boxed value, \"the answer is\" or the last number, compared as
    mathematical objects (:mod:`strategies.answers`)."""

    def answer(self, text: str) -> str | None:
        return extract_answer(text)

    def same(self, a: str, b: str) -> bool:
        return equivalent(a, b)

    def reward_text(self, text: str) -> str:
        return text


MATH_READER = MathReader()


@dataclass(frozen=True)
class Task:
    """What the client asked for, already rendered for the policy."""

    prompt: str  # the chat template applied to the request's messages, ready for the assistant's reply
    question: str  # the last user message: what the reward model judges the steps against
    max_tokens: int  # per sample
    temperature: float | None  # the request's temperature, None when the client left it out
    top_p: float
    stop: tuple[str, ...] = ()
    seed: int | None = None
    request_id: str = "req"
    options: Mapping[str, Any] = field(default_factory=dict)  # the request's sampling fields (SamplingSpec.options)
    logprobs: int | None = None  # the client asked for logprobs with this many alternatives per token; None: not
    reader: AnswerReader = MATH_READER


@dataclass(frozen=True)
class StrategyConfig:
    """Parameters every strategy shares; a strategy's own config subclasses this.

    Its class attributes and :meth:`samples_per_call` tell the server and the benchmarks what they need to know of
    the strategy, so that neither names one: ``budget_param`` is what a compute budget N sets (``ponder bench
    accuracy --n``), ``n_param`` what the OpenAI ``n`` sets, and ``streams_tokens`` whether the server may stream
    the engine's tokens as they come.
    """

    budget_param: ClassVar[str | None] = None  # the parameter a budget N sets; None: the strategy takes no N
    # what a budget N means for this strategy, in a few words (``ponder bench accuracy --help``); None: N samples
    budget_doc: ClassVar[str | None] = None
    n_param: ClassVar[str | None] = None  # the parameter the OpenAI `n` sets, each sample its own choice; None: n=1
    streams_tokens: ClassVar[bool] = False  # True: drawing one sample, it is plain sampling, streamed token by token
    # True: a solution is drawn in steps, each step its own engine call continuing the text so far; a constraint on a
    # whole sample (structured outputs, a forced tool call, min_tokens) cannot apply to it
    in_steps: ClassVar[bool] = False

    temperature: float | None = None  # None: the request's temperature, else the strategy's default
    max_total_tokens: int | None = None  # hard budget on all tokens generated for the request; None: server cap
    return_trace: bool = False  # return every candidate with its scores in the response's `ponder` object
    # budget forcing (Muennighoff et al. 2025, s1): a sample that ends its thinking before this many tokens has the
    # end replaced by "Wait" and goes on; None: off. Needs a reasoning model (ponder serve --reasoning-parser)
    min_thinking_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.temperature is not None and not 0.0 <= self.temperature <= 2.0:
            raise ValueError("temperature must be between 0 and 2")
        if self.min_thinking_tokens is not None and self.min_thinking_tokens < 0:
            raise ValueError("min_thinking_tokens must not be negative")
        if self.max_total_tokens is not None and self.max_total_tokens < 1:
            raise ValueError("max_total_tokens must be at least 1")

    def samples_per_call(self) -> tuple[int, str | None]:
        """The most samples one engine call of the strategy draws, and the parameter to lower for fewer: what the
        server's ``--max-num-samples`` bounds. Samples are steps and solutions; the policy's verdicts on its own
        steps (a few tokens each) and greedy lookahead steps are not counted. A strategy that draws more than one
        sample per call says so by overriding this."""
        return 1, None


@dataclass
class Candidate:
    """One finished solution a strategy considered, with what it knows about it."""

    text: str
    num_tokens: int
    finish_reason: FinishReason
    step_scores: list[float] = field(default_factory=list)
    score: float | None = None  # aggregated reward, or vote share for self-consistency
    answer: str | None = None  # extracted final answer, when the strategy extracts one
    chosen: bool = False
    logprobs: tuple[TokenLogprob, ...] | None = None  # the sample's own, when it is one sample drawn with them

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "completion_tokens": self.num_tokens,
            "finish_reason": self.finish_reason,
            "step_scores": self.step_scores,
            "score": self.score,
            "answer": self.answer,
            "chosen": self.chosen,
        }


@dataclass
class StrategyResult:
    """What a strategy returns: the chosen completions (usually one) and the candidates behind them."""

    choices: list[Candidate]
    candidates: list[Candidate] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # strategy-specific trace data (e.g. vote counts)


def sampling_temperature(config: StrategyConfig, task: Task, default: float) -> float:
    """The temperature a strategy samples at: its param, else the request's, else the strategy's default."""
    if config.temperature is not None:
        return config.temperature
    return task.temperature if task.temperature is not None else default


def per_sample_budget(config: StrategyConfig, task: Task, num_samples: int) -> int:
    """Tokens one of ``num_samples`` parallel samples may use so that all fit in ``max_total_tokens``."""
    if config.max_total_tokens is None:
        return task.max_tokens
    return max(1, min(task.max_tokens, config.max_total_tokens // num_samples))
