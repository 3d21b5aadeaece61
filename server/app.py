"""HTTP routes. The engine and reward model are built outside and injected; handlers parse, run, respond.

``create_app(config, engine=..., scorer=...)`` serves ready-made adapters (tests, embedding); with ``loader=``, the
app loads them at startup in the background and ``/health`` answers 503 until they are ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

import strategies
from server.completions import CompletionRequest, CompletionResponse, Completions
from server.config import ServerConfig
from server.engine import ServedEngine, ServedScorer
from server.errors import APIError, install_error_handlers
from server.limits import Admission, GuardMiddleware
from server.metrics import Metrics
from server.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    StrategyCard,
)
from server.responses import PonderResponse, Responses, no_stored_response
from server.responses_input import ResponsesRequest
from server.serving import ChatService
from strategies.base import Scorer
from strategies.errors import EngineError, ScorerError

log = logging.getLogger("ponder.app")
Loader = Callable[[], Awaitable[tuple[ServedEngine, Scorer | None]]]  # the engines, started off the event loop
DISCONNECT_POLL_SECONDS = 0.25
WATCHDOG_SECONDS = 1.0  # how often the engine's health is checked


def create_app(
    config: ServerConfig,
    *,
    engine: ServedEngine | None = None,
    scorer: Scorer | None = None,
    loader: Loader | None = None,
) -> FastAPI:
    metrics = Metrics()
    admission = Admission(config.max_concurrent_requests, config.max_queued_requests)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_load(app, loader, config, metrics)) if loader is not None else None
        watchdog = asyncio.create_task(_watch_engine(app))
        try:
            yield  # the server accepts connections at once; /health is 503 until loading is done
        finally:
            watchdog.cancel()
            if loading is not None and not loading.done():
                loading.cancel()
            service = app.state.service
            if service is not None:
                await service.engine.shutdown()
                if isinstance(service.scorer, ServedScorer):  # the fakes in tests hold nothing to stop
                    await service.scorer.shutdown()

    app = FastAPI(
        title="Ponder", version="0.1.0", lifespan=lifespan, description="OpenAI-compatible test-time-scaling server."
    )
    app.state.service = None
    if engine is not None:
        _serve(app, ChatService(engine, scorer, config, metrics))
    app.state.metrics = metrics
    app.state.exit_code = 0  # set to 1 when the engine dies; the CLI exits with it so a supervisor restarts us
    app.state.uvicorn = None  # the uvicorn.Server, when the CLI runs one: the watchdog stops it
    install_error_handlers(app)
    app.openapi = lambda: _openapi_without_422(app)  # type: ignore[method-assign]
    app.add_middleware(GuardMiddleware, api_keys=config.api_keys, max_body_bytes=config.max_body_bytes)

    def service_of(request: Request) -> ChatService:
        service: ChatService | None = request.app.state.service
        if service is None:
            raise APIError(
                "the server is still loading its models",
                status=503,
                type="service_unavailable",
                code="not_ready",
                headers={"Retry-After": "5"},
            )
        if not service.engine.healthy():
            raise APIError("the engine is not running", status=503, type="service_unavailable", code="engine_dead")
        return service

    @app.get("/health", responses={503: {"description": "Loading, or the engine is down"}})
    async def health(request: Request) -> Response:
        try:
            service_of(request)
        except APIError as exc:
            return JSONResponse({"status": exc.code}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models", response_model=ModelList, responses=AUTH_RESPONSES)
    async def models(request: Request) -> ModelList:
        has_scorer = request.app.state.service is not None and request.app.state.service.scorer is not None
        cards = [
            StrategyCard(
                name=s.name,
                description=s.description,
                needs_reward_model=s.needs_scorer,
                available=has_scorer or not s.needs_scorer,
                params=_defaults(s.config_cls),
            )
            for s in strategies.available()
        ]
        return ModelList(
            data=[ModelCard(id=config.model_name)],
            strategies=cards,
            reward_model=config.reward_model_name if has_scorer else None,
        )

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses=AUTH_RESPONSES
        | {
            200: {
                "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}},
                "description": "Prometheus text format",
            }
        },
    )
    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletionResponse,
        responses=ERROR_RESPONSES
        | {
            200: {
                "content": {"text/event-stream": {}},
                "description": "A chat completion, or with stream=true an SSE stream of chunks",
            }
        },
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        service = service_of(request)
        return await answer(request, service, service.prepare(body), body.stream)

    @app.post("/v1/completions", response_model=CompletionResponse, responses=_with_stream(ERROR_RESPONSES))
    async def completions(body: CompletionRequest, request: Request) -> Any:
        endpoint = Completions(service_of(request))
        return await answer(request, endpoint, endpoint.prepare(body), body.stream)

    @app.post(
        "/v1/responses",
        response_model=PonderResponse,
        response_model_exclude_unset=True,
        responses=_with_stream(ERROR_RESPONSES),
    )
    async def responses(body: ResponsesRequest, request: Request) -> Any:
        endpoint = Responses(service_of(request))
        return await answer(request, endpoint, endpoint.prepare(body), body.stream)

    @app.get("/v1/responses/{response_id}", responses=NOT_KEPT)
    @app.delete("/v1/responses/{response_id}", responses=NOT_KEPT)
    @app.post("/v1/responses/{response_id}/cancel", responses=NOT_KEPT)
    @app.get("/v1/responses/{response_id}/input_items", responses=NOT_KEPT)
    async def stored_response(response_id: str) -> Response:
        raise no_stored_response(response_id)

    async def answer(
        request: Request, endpoint: ChatService | Completions | Responses, job: Any, stream: bool | None
    ) -> Any:
        """A prepared request of any endpoint, admitted, run and answered (or streamed); its status recorded."""
        if admission.full():
            metrics.rejected.inc()
            raise admission.busy()
        if stream:
            return StreamingResponse(_tracked(metrics, admission, endpoint.stream(job)), media_type="text/event-stream")
        started, status, result = time.perf_counter(), 200, None
        try:
            async with admission.slot():
                metrics.in_flight.inc()
                try:
                    result = await _unless_disconnected(request, endpoint.run(job))
                finally:
                    metrics.in_flight.dec()
            return endpoint.respond(job, result)
        except APIError as exc:
            status = exc.status
            raise
        except (EngineError, ScorerError):
            status = 503  # answered by server.errors' handlers
            raise
        except ClientGoneError:
            status = 499  # nobody to answer; nginx's "client closed request"
            return Response(status_code=499)
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            endpoint.record(job, status, started, result)

    return app


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": what}
    for code, what in (
        (400, "Invalid request: bad field, unknown strategy or parameter, above a cap"),
        (401, "Missing or invalid API key"),
        (413, "Request body above the cap"),
        (429, "Server at capacity; retry after Retry-After seconds"),
        (503, "Models loading, engine down, or reward model failed"),
    )
}


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "description": "Missing or invalid API key",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
}


def _with_stream(responses: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    return responses | {
        200: {"content": {"text/event-stream": {}}, "description": "The answer, or with stream=true SSE"}
    }


NOT_KEPT: dict[int | str, dict[str, Any]] = AUTH_RESPONSES | {
    404: {"model": ErrorResponse, "description": "Ponder keeps no responses (store is always false)"}
}


def _openapi_without_422(app: FastAPI) -> dict[str, Any]:
    """The schema as served: validation errors are 400s here (server.errors), so FastAPI's 422 is removed."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


def _serve(app: FastAPI, service: ChatService) -> None:
    app.state.service = service
    service.metrics.watch_engine(service.engine.num_running)


async def _load(app: FastAPI, loader: Loader, config: ServerConfig, metrics: Metrics) -> None:
    engine, scorer = await loader()
    _serve(app, ChatService(engine, scorer, config, metrics))


async def _watch_engine(app: FastAPI) -> None:
    """Stop the server with exit status 1 when the engine dies, so a supervisor restarts it."""
    while True:
        await asyncio.sleep(WATCHDOG_SECONDS)
        service = app.state.service
        if service is not None and not service.engine.healthy():
            log.error("the engine has died; shutting down with exit status 1")
            app.state.exit_code = 1
            if app.state.uvicorn is not None:
                app.state.uvicorn.should_exit = True
            return


async def _tracked(metrics: Metrics, admission: Admission, frames: AsyncIterator[str]) -> AsyncIterator[str]:
    """A stream that holds an admission slot while it runs (acquired here, so an unstarted stream holds none)."""
    async with admission.slot(queue_anyway=True):  # admitted by the endpoint's check: never refused mid-stream
        metrics.in_flight.inc()
        try:
            async for frame in frames:
                yield frame
        finally:
            metrics.in_flight.dec()


class ClientGoneError(Exception):
    """The client disconnected before its answer was ready; its work has been aborted."""


async def _unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Await ``work``, cancelling it (which aborts its engine requests) if the client goes away first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                return task.result()
            if await request.is_disconnected():
                log.info("client disconnected; aborting")
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise ClientGoneError
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _defaults(config_cls: type) -> dict[str, Any]:

    return {
        f.name: (f.default if f.default is not dataclasses.MISSING else None) for f in dataclasses.fields(config_cls)
    }
