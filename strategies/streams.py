"""Samples drawn as concurrent one-sample streams that a strategy watches token by token and may stop.

The adaptive strategies (``deepconf``, ``adaptive_consistency``, ``best_of_n`` with early rejection) decide while
their samples are being generated: a trace whose confidence falls, a vote already decided, a prefix the reward model
dislikes. Each sample is its own engine request (``n`` = 1, the seed plus its index, so seeded runs repeat), and
stopping one closes its stream: the in-process engine aborts the vLLM request, the remote backend closes its HTTP
stream (which vLLM's server aborts), so the slot in the continuous batch goes to other work at once.

A :class:`StreamPool` runs the traces; a strategy launches them (:meth:`StreamPool.launch`), reads each as it ends
(:meth:`StreamPool.finished`), stops any with a reason (:meth:`StreamPool.stop`), and leaves the pool's ``async
with`` block to stop whatever still runs. A ``watch`` function sees every trace after each of its deltas and returns
a reason to stop it, or None.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

from strategies.base import Candidate, Engine, FinishReason, SamplingSpec, TokenLogprob


@dataclass
class Trace:
    """One streamed sample so far."""

    index: int  # launch order within its pool; the seed offset
    prompt: str
    text: str = ""
    num_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)  # with the spec's logprobs set: one per token
    finish_reason: FinishReason | None = None  # None while it runs; "abort" once stopped
    stop_reason: str | None = None  # the stop string that ended it
    stopped_by: str | None = None  # why the strategy stopped it

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def candidate(self) -> Candidate:
        """The trace as a candidate (an unfinished one counts as aborted)."""
        logprobs = tuple(self.logprobs) if self.logprobs else None
        return Candidate(self.text, self.num_tokens, self.finish_reason or "abort", logprobs=logprobs)


Watch = Callable[[Trace], str | None]  # after each delta of a running trace: a reason to stop it, or None


class StreamPool:
    """Concurrent one-sample streams of ``spec`` (its ``n`` is ignored), each trace its own engine request."""

    def __init__(self, engine: Engine, spec: SamplingSpec, request_id: str, watch: Watch | None = None) -> None:
        self.engine, self.spec, self.request_id, self.watch = engine, spec, request_id, watch
        self.traces: list[Trace] = []
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._ended: asyncio.Queue[Trace] = asyncio.Queue()
        self._error: BaseException | None = None

    async def __aenter__(self) -> StreamPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_all("the strategy is done")

    @property
    def running(self) -> list[Trace]:
        return [trace for trace in self.traces if not trace.done]

    def launch(self, count: int, prompt: str) -> list[Trace]:
        """Start ``count`` more traces of ``prompt``."""
        new = [Trace(len(self.traces) + i, prompt) for i in range(count)]
        for trace in new:
            self.traces.append(trace)
            self._tasks[trace.index] = asyncio.create_task(self._run(trace))
        return new

    async def finished(self) -> AsyncIterator[Trace]:
        """Each trace as it ends (finished or stopped), until none runs; an engine error is raised here."""
        while self.running or not self._ended.empty():
            trace = await self._ended.get()
            if self._error is not None:
                raise self._error
            yield trace

    async def stop(self, trace: Trace, reason: str) -> None:
        """Stop ``trace`` (its engine request is aborted); nothing if it has ended."""
        task = self._tasks.get(trace.index)
        if trace.done or task is None or task.done():
            return
        trace.stopped_by = reason
        task.cancel()
        await asyncio.wait({task})

    async def stop_all(self, reason: str) -> None:
        for trace in self.running:
            await self.stop(trace, reason)

    def _spec(self, trace: Trace) -> SamplingSpec:
        seed = None if self.spec.seed is None else self.spec.seed + trace.index
        return dataclasses.replace(self.spec, n=1, seed=seed)

    async def _run(self, trace: Trace) -> None:
        stream = self.engine.stream(trace.prompt, self._spec(trace), f"{self.request_id}-t{trace.index}")
        try:
            async with aclosing(stream):
                async for delta in stream:
                    trace.text += delta.text
                    trace.num_tokens = delta.num_tokens
                    trace.logprobs.extend(delta.logprobs or ())
                    if delta.finish_reason is not None:
                        trace.finish_reason, trace.stop_reason = delta.finish_reason, delta.stop_reason
                        break
                    reason = self.watch(trace) if self.watch else None
                    if reason is not None:
                        trace.stopped_by = reason
                        break
        except asyncio.CancelledError:
            pass  # stopped through stop(): the stream is closed, the engine request aborted
        except Exception as error:  # noqa: BLE001 - raised to the strategy by finished()
            self._error = self._error or error
        finally:
            if trace.finish_reason is None:
                trace.finish_reason = "abort"
            self._ended.put_nowait(trace)
