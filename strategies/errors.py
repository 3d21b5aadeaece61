"""Errors raised by engine and reward-model adapters; the server maps them to 503 responses."""


class EngineError(RuntimeError):
    """The policy engine failed on a request."""


class EngineUnavailableError(EngineError):
    """The engine cannot take requests: it died, or its remote endpoint cannot be reached."""


class ScorerError(RuntimeError):
    """The reward model failed; strategies that need it answer 503, the others keep working."""
