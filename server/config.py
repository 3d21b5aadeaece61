"""Server-wide settings: what is served and the caps every request is held to."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    model_name: str = "ponder-default"  # the id clients send as `model` and /v1/models lists
    reward_model_name: str | None = None  # None: no reward model loaded; strategies that need one answer 400
    max_num_samples: int = 64  # cap on N per request (num_samples / n); above it a request gets a 400
    max_total_tokens: int = 65536  # cap on tokens generated for one request across all candidates and steps
    default_max_tokens: int = 1024  # per-sample max_tokens when the client sends none (bounded by the context)
