"""A bounded async load generator: a fixed workload of chat prompts sent to one OpenAI-compatible server from
``concurrency`` clients at once, each sending its next request when its last is answered; per level: latency
percentiles of the successful requests, requests/s, generated tokens/s (``usage.completion_tokens`` over the wall
time), errors and the peak number of requests in flight; where the workload has a grader, the accuracy of the
answers (the first choice's text, graded against the prompt's problem). Used by :mod:`benchmarks.serve`."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from benchmarks.load import percentiles


@dataclass(frozen=True)
class Target:
    """A server to load, and what every request to it carries besides the prompt and the sampling settings."""

    name: str  # the label in tables and plots
    url: str
    body: dict[str, Any]  # model, and n / strategy / optillm approach
    headers: dict[str, str] = field(default_factory=dict)


Grader = Callable[[int, str], bool]  # (prompt index, the answer's text) -> right


@dataclass(frozen=True)
class Workload:
    prompts: tuple[str, ...]
    max_tokens: int = 64
    temperature: float = 0.8
    timeout: float = 600.0  # per request, client side
    grade: Grader | None = None  # None: accuracy is not measured

    def grader(self, index: int) -> Callable[[str], bool] | None:
        """The grader of prompt ``index`` (used in turn, as :meth:`body` does), or None."""
        grade = self.grade
        return None if grade is None else lambda text: grade(index % len(self.prompts), text)

    def body(self, target: Target, index: int) -> dict[str, Any]:
        prompt = self.prompts[index % len(self.prompts)]
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            **target.body,
            "messages": [{"role": "user", "content": prompt}],
        }


@dataclass
class Outcome:
    latency_s: float = 0.0
    completion_tokens: int = 0
    error: str | None = None
    correct: bool | None = None  # None: not graded
    scorer_s: float | None = None  # Ponder's reward-model seconds in the latency; None: another server


@dataclass
class Gauge:
    """Requests in flight now, and the most seen at once."""

    now: int = 0
    peak: int = 0

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            yield
        finally:
            self.now -= 1


async def one(
    client: httpx.AsyncClient,
    target: Target,
    body: dict[str, Any],
    gauge: Gauge,
    grade: Callable[[str], bool] | None = None,
) -> Outcome:
    """One chat completion; any status but 200, a transport error or a body without usage is an error. ``grade``
    judges the first choice's text (an answer without text is wrong)."""
    outcome = Outcome()
    started = time.perf_counter()
    with gauge.held():
        try:
            response = await client.post(
                target.url.rstrip("/") + "/v1/chat/completions", json=body, headers=target.headers
            )
            if response.status_code != 200:
                outcome.error = f"{response.status_code}: {response.text[:200]}"
            else:
                payload = response.json()
                outcome.completion_tokens = int(payload["usage"]["completion_tokens"])
                scorer = (payload.get("ponder") or {}).get("scorer_seconds")
                outcome.scorer_s = None if scorer is None else float(scorer)
                if grade is not None:
                    outcome.correct = grade(first_text(payload))
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"[:200]
    outcome.latency_s = time.perf_counter() - started
    return outcome


def first_text(payload: dict[str, Any]) -> str:
    """The first choice's message text; empty when there is none."""
    choices = payload.get("choices") or [{}]
    return (choices[0].get("message") or {}).get("content") or ""


async def run_level(
    client: httpx.AsyncClient, target: Target, workload: Workload, concurrency: int, requests: int
) -> dict[str, Any]:
    """``requests`` requests from ``concurrency`` clients at once, each sending its next one when answered."""
    pending = list(range(requests))[::-1]
    outcomes: list[Outcome] = []
    gauge = Gauge()

    async def client_loop() -> None:
        while pending:
            index = pending.pop()
            outcomes.append(await one(client, target, workload.body(target, index), gauge, workload.grader(index)))

    started = time.perf_counter()
    await asyncio.gather(*[client_loop() for _ in range(min(concurrency, requests))])
    return aggregate(outcomes, time.perf_counter() - started, concurrency) | {"peak_in_flight": gauge.peak}


def aggregate(outcomes: Sequence[Outcome], wall: float, concurrency: int) -> dict[str, Any]:
    """One level's figures: latency percentiles of the successful requests, rates over the wall time, errors, and
    the accuracy of the graded answers (None when none was graded)."""
    ok = [o for o in outcomes if o.error is None]
    tokens = sum(o.completion_tokens for o in ok)
    graded = [o.correct for o in ok if o.correct is not None]
    scorer = [o.scorer_s for o in ok if o.scorer_s is not None]
    return {
        "concurrency": concurrency,
        "requests": len(outcomes),
        "ok": len(ok),
        "errors": len(outcomes) - len(ok),
        "wall_s": wall,
        "latency_s": percentiles([o.latency_s for o in ok]),
        "requests_per_s": len(ok) / wall if wall else None,
        "tokens_per_s": tokens / wall if wall else None,
        "completion_tokens": tokens,
        "completion_tokens_mean": statistics.fmean([o.completion_tokens for o in ok]) if ok else None,
        "graded": len(graded),
        "accuracy": sum(graded) / len(graded) if graded else None,
        "first_errors": sorted({o.error for o in outcomes if o.error})[:3],
        "scorer_s_p50": statistics.median(scorer) if scorer else None,  # of the latency, the reward model's part
    }


async def measure(
    target: Target,
    workload: Workload,
    levels: Sequence[int],
    requests: int,
    warmup: int,
    batch: int = 0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    """A target's figures at every concurrency level (after ``warmup`` requests one at a time), and its batch run."""
    limits = httpx.Limits(max_connections=max([*levels, batch]) + 4, max_keepalive_connections=max([*levels, batch]))
    async with httpx.AsyncClient(timeout=workload.timeout, limits=limits, transport=transport) as client:
        if warmup:
            await run_level(client, target, workload, 1, warmup)
        result: dict[str, Any] = {"url": target.url, "body": target.body, "levels": []}
        for level in levels:
            print(f"serve: {target.name}: concurrency {level}", file=sys.stderr)
            result["levels"].append(await run_level(client, target, workload, level, requests))
        if batch:
            print(f"serve: {target.name}: batch of {batch}", file=sys.stderr)
            result["batch"] = await run_level(client, target, workload, batch, batch)
    return result
