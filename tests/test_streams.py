"""StreamPool: concurrent one-sample streams a strategy watches and stops (strategies/streams.py)."""

from __future__ import annotations

import asyncio

from server.accounting import CountingEngine, Ledger
from strategies.base import SamplingSpec
from strategies.streams import StreamPool
from tests.fakes import FakeEngine


def run(coro):
    return asyncio.run(coro)


def _engine() -> tuple[FakeEngine, CountingEngine, Ledger]:
    # sample i has 10 + 5 i words
    fake = FakeEngine(lambda prompt, index: " ".join(f"w{index}-{k}" for k in range(10 + 5 * index)), interleave=True)
    ledger = Ledger(token_budget=10_000)
    return fake, CountingEngine(fake, ledger, "req"), ledger


def test_a_watch_stops_a_trace_and_its_tokens_stop_counting() -> None:
    fake, engine, ledger = _engine()

    async def go():
        watch = lambda trace: "too long" if trace.index == 1 and trace.num_tokens >= 3 else None  # noqa: E731
        async with StreamPool(engine, SamplingSpec(max_tokens=50, seed=7), "req", watch) as pool:
            pool.launch(3, "p")
            return [trace async for trace in pool.finished()], pool

    ended, pool = run(go())
    assert sorted(t.index for t in ended) == [0, 1, 2]
    stopped = pool.traces[1]
    assert (stopped.finish_reason, stopped.stopped_by, stopped.num_tokens) == ("abort", "too long", 3)
    assert [pool.traces[i].num_tokens for i in (0, 2)] == [10, 20]
    assert ledger.completion_tokens == 33 and fake.closed_early == 1
    assert [spec.seed for _, spec in fake.calls] == [7, 8, 9]  # each trace its own request and seed


async def _stop_after_first(pool: StreamPool):
    async for trace in pool.finished():
        yield trace
        await pool.stop_all("decided")  # the first trace to end decides


def test_stop_all_aborts_what_still_runs() -> None:
    fake, engine, ledger = _engine()

    async def go():
        async with StreamPool(engine, SamplingSpec(max_tokens=50), "req") as pool:
            pool.launch(4, "p")
            ended = [trace async for trace in _stop_after_first(pool)]
        return ended[0], pool

    first, pool = run(go())
    others = [t for t in pool.traces if t is not first]
    assert first.finish_reason == "stop" and first.num_tokens == 10
    assert all(
        t.finish_reason == "abort" and t.stopped_by == "decided" and t.num_tokens < 10 + 5 * t.index for t in others
    )
    assert fake.closed_early == 3 and fake.running == 0
    assert ledger.completion_tokens == sum(t.num_tokens for t in pool.traces)


def test_an_engine_error_reaches_the_strategy() -> None:
    class Broken(FakeEngine):
        async def stream(self, prompt, spec, request_id):
            raise RuntimeError("engine down")
            yield  # pragma: no cover

    async def go():
        async with StreamPool(Broken(lambda p, i: "x"), SamplingSpec(), "req") as pool:
            pool.launch(2, "p")
            return [trace async for trace in pool.finished()]

    try:
        run(go())
    except RuntimeError as error:
        assert str(error) == "engine down"
    else:
        raise AssertionError("the engine's error was swallowed")
