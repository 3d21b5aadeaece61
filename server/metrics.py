"""Prometheus metrics, one registry per app (no global state): requests, latency and tokens by strategy."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ponder_requests",
            "Chat-completion requests by strategy and HTTP status",
            ["strategy", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ponder_request_latency_seconds",
            "Request latency by strategy",
            ["strategy"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "ponder_prompt_tokens", "Prompt tokens by strategy", ["strategy"], registry=self.registry
        )
        self.completion_tokens = Counter(
            "ponder_completion_tokens",
            "Generated tokens (all candidates and steps) by strategy",
            ["strategy"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "ponder_requests_in_flight", "Chat-completion requests being served", registry=self.registry
        )
        self.engine_running = Gauge(
            "ponder_engine_requests_running",
            "Engine requests of this server not yet finished (0 when idle)",
            registry=self.registry,
        )
        self.rejected = Counter(
            "ponder_requests_rejected", "Requests refused by admission control (429)", registry=self.registry
        )
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu seconds, open fds
        self.aborted = Counter(
            "ponder_requests_aborted",
            "Requests aborted before they finished (client gone)",
            ["strategy"],
            registry=self.registry,
        )

    def watch_engine(self, num_running: Callable[[], int]) -> None:
        """Read the engine's running-request count at every scrape."""
        self.engine_running.set_function(num_running)

    def observe(self, strategy: str, status: int, seconds: float, prompt_tokens: int, completion_tokens: int) -> None:
        self.requests.labels(strategy, str(status)).inc()
        self.latency.labels(strategy).observe(seconds)
        self.prompt_tokens.labels(strategy).inc(prompt_tokens)
        self.completion_tokens.labels(strategy).inc(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
