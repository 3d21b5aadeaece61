r"""The policy as its own likelihood PRM, on the policy's engine: no second engine, and no second forward pass for
the steps it sampled.

When ``--prm`` names the policy's own checkpoint in the ``likelihood`` format (:mod:`reward_models.likelihood`),
the PRM would run a second copy of the policy only to read back the probabilities the policy gave the tokens it
just sampled. vLLM returns those with the samples (``logprobs=0``: the sampled token's log-probability under the
raw distribution, temperature 1), so :class:`SelfLikelihoodPRM` asks for them and scores each step from them, as
DeepConf (Fu et al. 2025, "Deep Think with Confidence") reads token confidence off the generation itself.

Per request, :meth:`SelfLikelihoodPRM.session` gives the strategy an engine that records, for every sample, the
score of each step it wrote (the lowest probability among the step's tokens and, where another step follows, the
delimiter after it: :func:`reward_models.likelihood.render`'s spans) keyed by the steps up to it; and a scorer that
answers from that record. Only what the likelihood PRM would read the same way is recorded: the request's prompt
must be the policy's chat template over the question alone (no system prompt), and the solution must be written
as :func:`reward_models.likelihood.render` writes it (steps without surrounding whitespace, one delimiter apart).
Anything else (a step the policy did not sample, a value prompt's text) is read as
:class:`~reward_models.likelihood.LikelihoodPRM` reads it, by ``prompt_logprobs`` on the same engine.

The recorded probabilities are those of the tokens the policy sampled; a fresh read re-tokenizes the text, so the
two agree where the sampled tokenization is the tokenizer's own (always, for a character-level tokenizer).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

from reward_models.likelihood import DELIMITER, LikelihoodPRM, render
from strategies.base import Engine, Sample, SamplingSpec, Scorer, Task

Key = tuple[tuple[str, ...], bool]  # (the steps up to this one, whether the delimiter after it is read)


class SelfLikelihoodPRM(LikelihoodPRM):
    """:class:`LikelihoodPRM` on the policy's own vLLM engine; :meth:`session` reads sampled steps' scores from
    the samples."""

    def __init__(self, engine: Any, model_name: str, delimiter: str = DELIMITER) -> None:
        super().__init__(engine.llm, model_name, delimiter)
        self.totals = Counter()  # over every session: items scored from the samples ("hits") or read again ("misses")

    def session(self, task: Task, engine: Engine) -> tuple[Engine, Scorer]:
        """The engine and scorer one request's strategy runs on (they share its record of step scores)."""
        record = StepRecord(
            task,
            self.delimiter,
            enabled=render(self.tokenizer, task.question, [])[0] == task.prompt,
            totals=self.totals,
        )
        return RecordingEngine(engine, record), RecordedScorer(self, record)

    async def shutdown(self) -> None:
        """Nothing to stop: the engine is the policy's, which the server shuts down."""


class StepRecord:
    """One request's step scores read from its samples, keyed by the steps up to each one."""

    def __init__(self, task: Task, delimiter: str, *, enabled: bool, totals: Counter | None = None) -> None:
        self.task, self.delimiter, self.enabled = task, delimiter, enabled
        self.scores: dict[Key, float] = {}
        self.hits = self.misses = 0
        self.totals = totals if totals is not None else Counter()  # the PRM's, summed over its sessions

    def count(self, hits: int, misses: int) -> None:
        """Items answered from this record (hits) and read again (misses), here and in the PRM's totals."""
        self.hits += hits
        self.misses += misses
        self.totals.update(hits=hits, misses=misses)

    def add(self, prompt: str, sample: Sample) -> None:
        """Record every step of ``sample`` (a continuation of ``prompt``) that it wrote whole."""
        if not self.enabled or sample.token_logprobs is None or not prompt.startswith(self.task.prompt):
            return
        prefix = prompt[len(self.task.prompt) :]
        text, base = prefix + sample.text, len(prefix)
        tokens, start = [], base
        for end, logprob in sample.token_logprobs:
            tokens.append((start, base + end, math.exp(logprob)))
            start = base + end
        pieces, a = text.split(self.delimiter), 0
        for k, piece in enumerate(pieces):
            step = piece.rstrip()
            if not step or step != step.lstrip():  # not as render() writes it: leave it to a fresh read
                break
            b, steps = a + len(step), (*pieces[:k], step)
            if a >= base:  # as the last step of an item: its own tokens (render() drops trailing whitespace too)
                self.scores[(steps, False)] = _lowest(tokens, a, b)
            if step != piece:  # render() would write the delimiter right after the step: what follows differs
                break
            if a >= base and k < len(pieces) - 1:
                self.scores[(steps, True)] = _lowest(tokens, a, b + len(self.delimiter))
            a = b + len(self.delimiter)

    def lookup(self, question: str, steps: Sequence[str]) -> list[float] | None:
        """The item's step scores, or None if one step was not recorded."""
        if not self.enabled or question != self.task.question:
            return None
        pieces = tuple(step.rstrip("\n") for step in steps)  # as render() writes them
        scores = []
        for k, step in enumerate(steps):
            key = (pieces[: k + 1], k < len(steps) - 1 or step.endswith(self.delimiter))
            if key not in self.scores:
                return None
            scores.append(self.scores[key])
        return scores


def _lowest(tokens: Sequence[tuple[int, int, float]], a: int, b: int) -> float:
    """The lowest probability among the tokens that overlap characters ``[a, b)`` (:func:`encode_steps`' rule)."""
    return min((p for s, e, p in tokens if e > s and s < b and e > a), default=1.0)


class RecordingEngine:
    """The policy engine, asking for each sampled token's log-probability and recording the steps' scores."""

    def __init__(self, engine: Engine, record: StepRecord) -> None:
        self._engine, self.record = engine, record

    async def generate(self, prompts: Sequence[str], spec: SamplingSpec, request_id: str) -> list[list[Sample]]:
        wanted = spec if spec.logprobs is not None or not self.record.enabled else replace(spec, logprobs=0)
        outputs = await self._engine.generate(prompts, wanted, request_id)
        for prompt, samples in zip(prompts, outputs, strict=True):
            for sample in samples:
                self.record.add(prompt, sample)
        return outputs

    def stream(self, prompt: str, spec: SamplingSpec, request_id: str) -> AsyncIterator[Sample]:
        return self._engine.stream(prompt, spec, request_id)

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)

    def __getattr__(self, name: str) -> Any:  # count_tokens, max_model_len, ...: the engine's own
        return getattr(self._engine, name)


class RecordedScorer:
    """Step scores from the request's record where every step of an item is there; the rest in one fresh read."""

    kind = "prm"
    aggregation = LikelihoodPRM.aggregation

    def __init__(self, prm: SelfLikelihoodPRM, record: StepRecord) -> None:
        self._prm, self.record = prm, record

    async def score(self, items: Sequence[tuple[str, Sequence[str]]], request_id: str) -> list[list[float]]:
        found = [self.record.lookup(question, steps) if steps else [] for question, steps in items]
        missing = [i for i, got in enumerate(found) if got is None]
        self.record.count(len(items) - len(missing), len(missing))
        if missing:
            read = await self._prm.score([items[i] for i in missing], request_id)
            for i, scores in zip(missing, read, strict=True):
                found[i] = scores
        return [scores or [] for scores in found]
