"""Server-wide settings: what is served and the caps every request is held to."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    model_name: str = "ponder-default"  # the id clients send as `model` and /v1/models lists
    reward_model_name: str | None = None  # None: no reward model loaded; strategies that need one answer 400
    max_num_samples: int = 64  # cap on N per request (num_samples / n); above it a request gets a 400
    max_total_tokens: int = 65536  # cap on tokens generated for one request across all candidates and steps
    max_tree_nodes: int = 4096  # cap on samples (tree nodes) one request may draw across all search rounds
    default_max_tokens: int = 1024  # per-sample max_tokens when the client sends none (bounded by the context)
    request_timeout: float = 600.0  # wall-clock deadline per request, seconds; its work is aborted when it passes
    max_body_bytes: int = 4 << 20  # request bodies above this are refused (413) before they are parsed
    max_messages: int = 512  # messages per request
    max_concurrent_requests: int = 64  # chat requests served at once; more wait in the queue
    max_queued_requests: int = 256  # chat requests waiting for a slot; beyond it: 429 with Retry-After
    api_keys: tuple[str, ...] = ()  # accepted bearer keys; empty: no authentication
    log_prompts: bool = False  # include messages and outputs in the per-request log line
