"""``deepconf``: self-consistency that reads the policy's own confidence, stops the unconfident traces while they are
generated, weights the vote by confidence and stops sampling once the vote is decided.

DeepConf: Fu, Wang, Tian and Zhao 2025, "Deep Think with Confidence", arXiv:2508.15260 (code:
github.com/facebookresearch/deepconf). No reward model: the confidences come from the engine's top-k logprobs.

Confidence, as the paper defines it:

- token confidence: the negative mean log-probability of the ``top_k`` most likely tokens at a position, the sampled
  one aside (high: a peaked distribution). The authors' code takes the mean over every entry vLLM returns for the
  position, which is the top k plus the sampled token when it is not among them; we take the top k only (the
  engine's ``TokenLogprob.top``). Log-probabilities are the raw distribution's (vLLM's default ``logprobs_mode``),
  as in their code, and are floored at -100 so that a -inf stays a number.
- group confidence: the mean token confidence over a sliding window of ``window`` tokens.
- a trace's score: its lowest group confidence over the full windows ("lowest group confidence"); a trace shorter
  than the window scores its mean token confidence (the authors' code does the same).

Online mode (default; the paper's Algorithm 2 as we read it):

1. Warm-up: ``warmup`` traces drawn in full with top-k logprobs, each its own engine request on
   :class:`strategies.streams.StreamPool` (seed + index).
2. Threshold: the ``100 * (1 - keep)`` th percentile of the warm-up scores (linear interpolation, numpy's default):
   ``keep`` = 0.1 is DeepConf-low (90th percentile), 0.9 DeepConf-high (10th).
3. Further traces run ``parallel`` at a time. Each is watched token by token and stopped in the engine (its request
   aborted) as soon as the group confidence of its last ``window`` tokens falls below the threshold; a window must be
   full before it can stop a trace, so a trace is never stopped before its ``window``-th token. A stopped trace does
   not vote. One that finishes votes if its score holds the threshold (a trace shorter than the window, or whose last
   window came with its final delta, is checked then and left out of the vote when below: "filtered").
4. The vote: weight = the trace's score, answers grouped by ``task.reader.same``. Every warm-up trace votes (the
   paper's Algorithm 2; the authors' ``deepconf-online.py`` lets only the warm-up traces at or above the threshold
   vote, which with our 4 warm-up traces would leave DeepConf-low one vote and decide the vote at once). A voting
   trace without an answer adds its weight to the total only, so a vote few traces answer is not decided.
5. After the warm-up and after each further trace ends: once the leading answer holds at least ``consensus`` of the
   total weight, nothing more is launched and the traces still running are stopped (they do not vote); else the
   next trace is launched, until ``num_samples`` traces (warm-up included) have been launched.

Why ``parallel`` traces at a time rather than all the rest at once (the authors' code launches all of them in one
call with the early stop on, and does not check the consensus): a trace launched after the vote is decided, or run
on while it is, spends tokens for nothing, and a decision can only come as traces end. Launching the rest as the
earlier ones end costs at most ``parallel - 1`` traces' tokens past the decision, and keeps ``parallel`` of the
request's traces in the continuous batch at every moment (the server batches other requests beside them). Smaller
rounds save a little more and lengthen the request.

Offline mode (``mode="offline"``): ``num_samples`` traces in one engine call with logprobs; the ``ceil(keep * N)``
most confident (at least one) vote, weighted by their scores (the paper's offline DeepConf with confidence-weighted
majority voting and top-eta% filtering, eta = 100 keep).

The answer in both modes: the shortest finished trace among the voters with the heaviest answer, as
``self_consistency`` picks (the shortest finished trace of all when no voter states an answer).

Defaults, and how they were scaled to our short answers (arith ~100-200 tokens, Game of 24 ~40; the paper's
traces run to thousands, up to 64k-130k tokens):

- ``num_samples`` = 16 (N, the budget ``ponder bench accuracy --n`` sets): the ceiling on traces, warm-up included,
  as self-consistency's N. The paper's budgets are 256-512.
- ``warmup`` = 4: the paper's N_init is 16 of 256-512 traces (3-6%). 16 would be our whole budget; 4 is a quarter
  of it, the fewest whose percentiles still tell the ends apart (the 10th percentile of 4 scores lies between the
  lowest two, the 90th between the highest two), and 4 traces that agree already decide a 0.95 consensus, so an
  easy question costs 4 traces. Fewer than ``warmup`` are drawn when ``num_samples`` is smaller.
- ``window`` = 16 tokens: the paper's groups are 2,048 tokens (1,024 in some runs) of traces that run to tens of
  thousands, a tenth or less of a trace: long enough to smooth single uncertain tokens, short enough to localise a
  bad stretch. 16 tokens is about a tenth of an arith answer and one or two of its steps; a Game of 24 answer has 2
  or 3 windows' worth.
- ``top_k`` = 20: the authors' code asks vLLM for ``logprobs=20`` (vLLM's default ``max_logprobs``). The engine call
  asks for ``max(top_k, the request's logprobs)`` and the candidates carry the request's own number.
- ``keep`` = 0.9 (DeepConf-high): the paper reports that DeepConf-high keeps accuracy at the level of majority voting
  in nearly every setting, while DeepConf-low (0.1) saves more tokens but loses accuracy in some; with 4 warm-up
  scores, the 90th percentile is close to the best warm-up trace's score and would stop nearly every later trace.
- ``consensus`` = 0.95: the paper's tau.
- ``parallel`` = 4: as many as the warm-up, so the request keeps the same number of traces in flight throughout.
- temperature: the sampling strategies' 0.8 (the authors use 0.6 online and 1.0 offline, with other models).

Cost: online, one engine request per trace (``num_samples`` at most, ``warmup`` at least); offline, one engine
request with ``n = num_samples``. No reward-model call. Tokens: a stopped trace's tokens up to its stop (the ledger
counts them); each trace gets ``max_total_tokens // num_samples`` tokens at most, so the budget holds if all N run
in full. ``extra`` says how many traces were warm-up, launched, stopped for low confidence, stopped by the
consensus and filtered, the threshold, the weighted votes and the tokens each kind of trace spent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

from strategies import register
from strategies.answers import cluster
from strategies.base import (
    Candidate,
    Engine,
    SamplingSpec,
    Scorer,
    StrategyResult,
    Task,
    TokenLogprob,
    per_sample_budget,
    sampling_temperature,
)
from strategies.sampling import DEFAULT_TEMPERATURE, SamplingConfig
from strategies.streams import StreamPool, Trace

Mode = Literal["online", "offline"]
MODES: tuple[Mode, ...] = ("online", "offline")
LOGPROB_FLOOR = -100.0  # a -inf log-probability counts as this, so that means stay finite
MAX_TOP_K = 20  # vLLM's default max_logprobs, and OpenAI's top_logprobs limit
LOW_CONFIDENCE = "low confidence"  # Trace.stopped_by: its group confidence fell below the threshold
CONSENSUS = "consensus"  # Trace.stopped_by: running when the vote was decided
FILTERED = "filtered"  # offline: not among the most confident (drawn in full, no vote)
Same = Callable[[str, str], bool]


@dataclass(frozen=True)
class DeepConfConfig(SamplingConfig):
    budget_doc: ClassVar[str | None] = (
        "at most N traces, warm-up included; online, fewer once the confidence-weighted vote is decided"
    )

    num_samples: int = 16  # N: traces at most (online) or drawn (offline)
    mode: Mode = "online"
    warmup: int = 4  # N_init: warm-up traces that set the threshold (online)
    window: int = 16  # tokens per group (sliding window)
    top_k: int = 20  # alternatives per token in the token confidence
    keep: float = 0.9  # share of traces kept: 0.9 DeepConf-high (10th percentile), 0.1 DeepConf-low (90th)
    consensus: float = 0.95  # tau: the leader's share of the vote weight that stops sampling (online)
    parallel: int = 4  # traces in flight after the warm-up (online)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if self.warmup < 1:
            raise ValueError("warmup must be at least 1")
        if self.window < 1:
            raise ValueError("window must be at least 1 token")
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be between 1 and {MAX_TOP_K}")
        if not 0.0 < self.keep <= 1.0:
            raise ValueError("keep must be above 0 and at most 1 (0.1: DeepConf-low, 0.9: DeepConf-high)")
        if not 0.5 < self.consensus <= 1.0:
            raise ValueError("consensus must be above 0.5 and at most 1")
        if self.parallel < 1:
            raise ValueError("parallel must be at least 1")

    def samples_per_call(self) -> tuple[int, str | None]:
        """Offline: N in one call. Online: the traces in flight at once, each its own one-sample request."""
        if self.mode == "offline":
            return self.num_samples, "num_samples"
        warmup, parallel = min(self.warmup, self.num_samples), min(self.parallel, self.num_samples)
        return (warmup, "warmup") if warmup >= parallel else (parallel, "parallel")


# ---- confidence ----------------------------------------------------------------------------------------------------
def token_confidence(token: TokenLogprob, top_k: int) -> float:
    """The negative mean log-probability of the ``top_k`` most likely tokens at a position (the sampled token's own
    when the engine gave no alternatives).

    >>> token_confidence(TokenLogprob("a", -0.1, (("a", -0.1), ("b", -2.5), ("c", -3.4))), 2)
    1.3
    """
    values = [logprob for _, logprob in token.top[:top_k]] or [token.logprob]
    return -sum(max(value, LOGPROB_FLOOR) for value in values) / len(values)


class GroupConfidence:
    """One trace's token confidences, read as they come, with the lowest full window's mean so far.

    >>> group = GroupConfidence(window=2, top_k=1)
    >>> group.add([TokenLogprob("x", lp, (("x", lp),)) for lp in (-1.0, -3.0, -0.5, -0.5)])
    >>> group.lowest, group.score
    (0.5, 0.5)
    >>> short = GroupConfidence(window=8, top_k=1)
    >>> short.add([TokenLogprob("x", -1.0, (("x", -1.0),))])
    >>> short.lowest, short.score
    (None, 1.0)
    """

    def __init__(self, window: int, top_k: int) -> None:
        self.window, self.top_k = window, top_k
        self.confidences: list[float] = []
        self.lowest: float | None = None  # the lowest full window's mean; None before a window is full
        self._sum = 0.0

    def add(self, tokens: Iterable[TokenLogprob]) -> None:
        for token in tokens:
            self.confidences.append(token_confidence(token, self.top_k))
            self._sum += self.confidences[-1]
            if len(self.confidences) > self.window:
                self._sum -= self.confidences[-self.window - 1]
            if len(self.confidences) >= self.window:
                mean = self._sum / self.window
                self.lowest = mean if self.lowest is None else min(self.lowest, mean)

    def sync(self, logprobs: Sequence[TokenLogprob]) -> None:
        """Read the tokens of ``logprobs`` (a trace's so far) not read yet."""
        self.add(logprobs[len(self.confidences) :])

    @property
    def score(self) -> float:
        """The lowest group confidence; a trace shorter than the window: its mean token confidence (0 for none)."""
        if self.lowest is not None:
            return self.lowest
        return sum(self.confidences) / len(self.confidences) if self.confidences else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile with linear interpolation between the closest ranks (numpy's default).

    >>> percentile([1.0, 2.0, 3.0, 4.0], 90), percentile([1.0, 2.0, 3.0, 4.0], 10)
    (3.7, 1.3)
    """
    ranked = sorted(values)
    position = (len(ranked) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ranked) - 1)
    return ranked[low] + (ranked[high] - ranked[low]) * (position - low)


# ---- the vote ------------------------------------------------------------------------------------------------------
@dataclass
class Vote:
    """A confidence-weighted vote: groups of voters with the same answer, heaviest first."""

    groups: list[tuple[list[int], float]]  # (voter indices, summed weight)
    total: float  # every voter's weight, those without an answer included

    @classmethod
    def of(cls, voters: Sequence[int], answers: Sequence[str | None], weights: Sequence[float], same: Same) -> Vote:
        grouped = cluster([answers[i] for i in voters], same)
        groups = [([voters[k] for k in members], sum(weights[voters[k]] for k in members)) for members in grouped]
        groups.sort(key=lambda group: -group[1])  # stable: equal weights keep the larger group first
        return cls(groups, sum(weights[i] for i in voters))

    @property
    def share(self) -> float:
        """The leading answer's share of the total weight (0 with no answer)."""
        return self.groups[0][1] / self.total if self.groups and self.total > 0 else 0.0


# ---- the strategy --------------------------------------------------------------------------------------------------
@register("deepconf", config=DeepConfConfig)
async def deepconf(task: Task, config: DeepConfConfig, engine: Engine, scorer: Scorer | None) -> StrategyResult:
    """Confidence-weighted voting; unconfident traces stopped early, sampling stopped once the vote is decided."""
    spec = SamplingSpec(
        temperature=sampling_temperature(config, task, DEFAULT_TEMPERATURE),
        top_p=task.top_p,
        max_tokens=per_sample_budget(config, task, config.num_samples),
        stop=task.stop,
        seed=task.seed,
        logprobs=max(config.top_k, task.logprobs or 0),
    )
    if config.mode == "offline":
        return await _offline(task, config, engine, spec)
    return await _online(task, config, engine, spec)


@dataclass
class _Run:
    """What a run knows of its traces: index i is trace i (launch order)."""

    task: Task
    config: DeepConfConfig
    traces: list[Trace]
    groups: list[GroupConfidence]
    threshold: float | None = None
    warmup: int = 0  # the first `warmup` traces are the warm-up
    _answers: dict[int, str | None] = field(default_factory=dict)

    def group(self, trace: Trace) -> GroupConfidence:
        while len(self.groups) <= trace.index:
            self.groups.append(GroupConfidence(self.config.window, self.config.top_k))
        self.groups[trace.index].sync(trace.logprobs)
        return self.groups[trace.index]

    def watch(self, trace: Trace) -> str | None:
        """Stop a later trace once a full window's mean falls below the threshold (the warm-up runs unwatched)."""
        lowest = self.group(trace).lowest
        if self.threshold is not None and lowest is not None and lowest < self.threshold:
            return LOW_CONFIDENCE
        return None

    def answer(self, trace: Trace) -> str | None:
        """A finished trace's answer (read once); None for one still running or stopped."""
        if trace.finish_reason not in ("stop", "length"):
            return None
        if trace.index not in self._answers:
            self._answers[trace.index] = self.task.reader.answer(trace.text)
        return self._answers[trace.index]

    def votes(self, trace: Trace) -> bool:
        if trace.finish_reason not in ("stop", "length") or trace.stopped_by == FILTERED:
            return False
        if trace.index < self.warmup or self.threshold is None:
            return True
        return self.group(trace).score >= self.threshold

    def vote(self, traces: Iterable[Trace]) -> Vote:
        voters = [t.index for t in traces if self.votes(t)]
        answers = [self.answer(t) for t in self.traces]
        return Vote.of(voters, answers, [self.group(t).score for t in self.traces], self.task.reader.same)


async def _online(task: Task, config: DeepConfConfig, engine: Engine, spec: SamplingSpec) -> StrategyResult:
    budget = config.num_samples
    warmup = min(config.warmup, budget)
    async with StreamPool(engine, spec, task.request_id) as pool:
        run = _Run(task, config, pool.traces, [], warmup=warmup)
        pool.watch = run.watch
        pool.launch(warmup, task.prompt)
        async with aclosing(pool.finished()) as ended:
            async for _ in ended:
                pass
        run.threshold = percentile([run.group(t).score for t in pool.traces], 100 * (1 - config.keep))
        seen = list(pool.traces)
        decided = run.vote(seen).share >= config.consensus
        if not decided and budget > warmup:
            pool.launch(min(config.parallel, budget - warmup), task.prompt)
            decided = await _until_decided(pool, run, seen, budget)
    return _result(run, config, decided)


async def _until_decided(pool: StreamPool, run: _Run, seen: list[Trace], budget: int) -> bool:
    """Read the later traces as they end, launching one more for each until the budget; True once decided."""
    async with aclosing(pool.finished()) as ended:
        async for trace in ended:
            seen.append(trace)
            if run.votes(trace) and run.vote(seen).share >= run.config.consensus:
                await pool.stop_all(CONSENSUS)
                return True
            if len(pool.traces) < budget:
                pool.launch(1, run.task.prompt)
    return False


async def _offline(task: Task, config: DeepConfConfig, engine: Engine, spec: SamplingSpec) -> StrategyResult:
    (samples,) = await engine.generate([task.prompt], replace(spec, n=config.num_samples), task.request_id)
    traces = [
        Trace(i, task.prompt, s.text, s.num_tokens, list(s.logprobs or ()), s.finish_reason)
        for i, s in enumerate(samples)
    ]
    run = _Run(task, config, traces, [])
    scores = [run.group(t).score for t in traces]
    kept = sorted(range(len(traces)), key=lambda i: -scores[i])[: max(1, math.ceil(config.keep * len(traces)))]
    run.threshold = min(scores[i] for i in kept)
    for i in set(range(len(traces))) - set(kept):
        traces[i].stopped_by = FILTERED
    return _result(run, config, None)


def _result(run: _Run, config: DeepConfConfig, decided: bool | None) -> StrategyResult:
    traces = run.traces
    vote = run.vote(traces)
    candidates = [_candidate(run, t) for t in traces]
    pool = vote.groups[0][0] if vote.groups else [t.index for t in traces if t.finish_reason != "abort"]
    best = candidates[min(pool or range(len(traces)), key=_shortest_finished(candidates))]
    best.chosen = True
    extra = _extra(run, config, vote, decided)
    if config.return_trace:
        extra["traces"] = [_trace_row(run, t) for t in traces]
    return StrategyResult(choices=[best], candidates=candidates, extra=extra)


def _shortest_finished(candidates: list[Candidate]) -> Callable[[int], tuple[bool, int]]:
    return lambda i: (candidates[i].finish_reason != "stop", candidates[i].num_tokens)


def _candidate(run: _Run, trace: Trace) -> Candidate:
    client = run.task.logprobs
    logprobs = None if client is None else tuple(replace(t, top=t.top[:client]) for t in trace.logprobs)
    candidate = Candidate(trace.text, trace.num_tokens, trace.finish_reason or "abort", logprobs=logprobs)
    candidate.score = round(run.group(trace).score, 6)
    candidate.answer = run.answer(trace)
    return candidate


def _extra(run: _Run, config: DeepConfConfig, vote: Vote, decided: bool | None) -> dict[str, Any]:
    traces = run.traces

    def count(reason: str) -> int:
        return sum(t.stopped_by == reason for t in traces)

    def tokens(which: Iterable[Trace]) -> int:
        return sum(t.num_tokens for t in which)

    answers = [run.answer(t) for t in traces]
    extra: dict[str, Any] = {
        "mode": config.mode,
        "votes": [{"answer": answers[m[0]], "weight": round(w, 4), "count": len(m)} for m, w in vote.groups],
        "vote_share": round(vote.share, 4),
        "threshold": None if run.threshold is None else round(run.threshold, 4),
        "drawn": len(traces),
        "completion_tokens": tokens(traces),
    }
    if config.mode == "offline":
        return extra | {"kept": len(traces) - count(FILTERED), "filtered": count(FILTERED)}
    later = traces[run.warmup :]
    stopped = [t for t in later if t.stopped_by in (LOW_CONFIDENCE, CONSENSUS)]
    return extra | {
        "warmup": run.warmup,
        "launched": len(later),
        "stopped_low_confidence": count(LOW_CONFIDENCE),
        "stopped_consensus": count(CONSENSUS),
        "filtered": sum(t.finish_reason != "abort" and not run.votes(t) for t in later),
        "decided": decided,
        "tokens": {"warmup": tokens(traces[: run.warmup]), "later": tokens(later), "stopped": tokens(stopped)},
    }


def _trace_row(run: _Run, trace: Trace) -> dict[str, Any]:
    return {
        "index": trace.index,
        "warmup": trace.index < run.warmup,
        "score": round(run.group(trace).score, 6),
        "completion_tokens": trace.num_tokens,
        "finish_reason": trace.finish_reason or "abort",
        "stopped_by": trace.stopped_by,
        "votes": run.votes(trace),
    }
