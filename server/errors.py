"""Typed API errors and the one place that turns every error into OpenAI's envelope.

``{"error": {"message", "type", "param", "code"}}``: 4xx for the client's mistakes (never a 500), 503 when the
engine or reward model cannot serve, 500 only for Ponder's own bugs (logged with their traceback, never sent).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from vllm.exceptions import VLLMClientError

from server.protocol import ErrorDetail, ErrorResponse
from strategies.errors import EngineError, ScorerError

log = logging.getLogger("ponder.errors")


class APIError(Exception):
    """An error with an HTTP status and OpenAI error fields."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code
        self.headers = headers


def envelope(
    message: str,
    *,
    status: int,
    type: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=message, type=type, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _location(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or None


async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return envelope(exc.message, status=exc.status, type=exc.type, param=exc.param, code=exc.code, headers=exc.headers)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = _location(tuple(first.get("loc", ())))
    if first.get("type") == "json_invalid":
        return envelope("request body is not valid JSON", status=400, type="invalid_request_error")
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    return envelope(message, status=400, type="invalid_request_error", param=param)


async def _vllm_validation_error(_: Request, exc: VLLMClientError) -> JSONResponse:
    """vLLM's own request checks (its request models raise these from their validators): a 400, as vLLM answers."""
    message = " ".join(str(exc).split())
    return envelope(message, status=400, type="invalid_request_error", param=getattr(exc, "parameter", None))


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return envelope(str(exc.detail), status=exc.status_code, type=kind, headers=getattr(exc, "headers", None))


async def _engine_error(_: Request, exc: EngineError) -> JSONResponse:
    log.error("engine error: %s", exc)
    return envelope(f"the engine failed: {exc}", status=503, type="service_unavailable", code="engine_error")


async def _scorer_error(_: Request, exc: ScorerError) -> JSONResponse:
    log.error("reward model error: %s", exc)
    return envelope(
        f"the reward model failed: {exc}", status=503, type="service_unavailable", code="reward_model_error"
    )


async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error", exc_info=exc)
    return envelope("internal server error", status=500, type="server_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(VLLMClientError, _vllm_validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(ScorerError, _scorer_error)
    app.add_exception_handler(Exception, _internal_error)
