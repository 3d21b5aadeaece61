"""StreamPool on the real tiny vLLM engine: a stopped trace is aborted in vLLM at once, the others run on.

The traces ignore EOS and may run to 2,000 tokens, so a trace that was not aborted would still be running when the
test looks. Nothing here asserts a timing.
"""

from __future__ import annotations

import pytest

from server.accounting import CountingEngine, Ledger
from strategies.base import SamplingSpec
from strategies.streams import StreamPool

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]  # the loop of the engines
LONG = SamplingSpec(max_tokens=2000, temperature=1.0, seed=3, options={"ignore_eos": True})


async def test_stopped_traces_leave_the_engine_and_the_rest_run_on(tiny_engine) -> None:
    ledger = Ledger(token_budget=100_000)
    engine = CountingEngine(tiny_engine, ledger, "streams")
    watch = lambda trace: "enough" if trace.index > 0 and trace.num_tokens >= 3 else None  # noqa: E731
    async with StreamPool(engine, LONG, "streams", watch) as pool:
        pool.launch(4, "What is 2 + 3?")
        ended = []
        async for trace in pool.finished():
            ended.append(trace)
            if len(ended) == 3:  # the three watched traces are out of vLLM; the fourth still runs
                assert tiny_engine.num_running() == 1
                assert tiny_engine.llm.get_num_unfinished_requests() == 1
                await pool.stop(pool.traces[0], "done")
    assert sorted(t.index for t in ended[:3]) == [1, 2, 3]
    assert all(t.finish_reason == "abort" and t.stopped_by == "enough" and t.num_tokens < 10 for t in ended[:3])
    assert pool.traces[0].stopped_by == "done" and pool.traces[0].num_tokens < 2000
    assert tiny_engine.num_running() == 0 and tiny_engine.llm.get_num_unfinished_requests() == 0
    assert ledger.completion_tokens == sum(t.num_tokens for t in pool.traces)
