"""HTTP routes. The engine and reward model are built outside and injected; handlers parse, run, respond.

``create_app(config, engine=..., scorer=...)`` serves ready-made adapters (tests, embedding); with ``loader=``, the
app loads them at startup in the background and ``/health`` answers 503 until they are ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

import strategies
from server.config import ServerConfig
from server.errors import APIError, install_error_handlers
from server.metrics import Metrics
from server.protocol import ChatCompletionRequest, ChatCompletionResponse, ModelCard, ModelList, StrategyCard
from server.serving import ChatService
from strategies.base import Scorer

log = logging.getLogger("ponder.app")
Loader = Callable[[], Awaitable[tuple[Any, Scorer | None]]]
DISCONNECT_POLL_SECONDS = 0.25


def create_app(config: ServerConfig, *, engine: Any = None, scorer: Scorer | None = None,
               loader: Loader | None = None) -> FastAPI:
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_load(app, loader, config, metrics)) if loader is not None else None
        try:
            yield  # the server accepts connections at once; /health is 503 until loading is done
        finally:
            if loading is not None and not loading.done():
                loading.cancel()
            service = app.state.service
            for part in (service.engine, service.scorer) if service is not None else ():
                if hasattr(part, "shutdown"):
                    await part.shutdown()

    app = FastAPI(title="Ponder", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible test-time-scaling server.")
    app.state.service = ChatService(engine, scorer, config, metrics) if engine is not None else None
    app.state.metrics = metrics
    install_error_handlers(app)

    def service_of(request: Request) -> ChatService:
        service: ChatService | None = request.app.state.service
        if service is None:
            raise APIError("the server is still loading its models", status=503, type="service_unavailable",
                           code="not_ready", headers={"Retry-After": "5"})
        if hasattr(service.engine, "healthy") and not service.engine.healthy():
            raise APIError("the engine is not running", status=503, type="service_unavailable", code="engine_dead")
        return service

    @app.get("/health")
    async def health(request: Request) -> Response:
        try:
            service_of(request)
        except APIError as exc:
            return JSONResponse({"status": exc.code}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models", response_model=ModelList)
    async def models(request: Request) -> ModelList:
        has_scorer = request.app.state.service is not None and request.app.state.service.scorer is not None
        cards = [StrategyCard(name=s.name, description=s.description, needs_reward_model=s.needs_scorer,
                              available=has_scorer or not s.needs_scorer, params=_defaults(s.config_cls))
                 for s in strategies.available()]
        return ModelList(data=[ModelCard(id=config.model_name)], strategies=cards,
                         reward_model=config.reward_model_name if has_scorer else None)

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse,
              responses={400: {"description": "Invalid request"}, 503: {"description": "Engine not available"}})
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        service = service_of(request)
        job = service.prepare(body)
        if body.stream:
            return StreamingResponse(_tracked(metrics, service.stream(job)), media_type="text/event-stream")
        started, status = time.perf_counter(), 200
        metrics.in_flight.inc()
        try:
            result = await _unless_disconnected(request, service.run(job))
            return service.respond(job, result)
        except APIError as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            metrics.in_flight.dec()
            service.record(job, status, started)

    return app


async def _load(app: FastAPI, loader: Loader, config: ServerConfig, metrics: Metrics) -> None:
    engine, scorer = await loader()
    app.state.service = ChatService(engine, scorer, config, metrics)


async def _tracked(metrics: Metrics, frames: AsyncIterator[str]) -> AsyncIterator[str]:
    metrics.in_flight.inc()
    try:
        async for frame in frames:
            yield frame
    finally:
        metrics.in_flight.dec()


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
                raise asyncio.CancelledError
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _defaults(config_cls: type) -> dict[str, Any]:
    import dataclasses

    return {f.name: (f.default if f.default is not dataclasses.MISSING else None)
            for f in dataclasses.fields(config_cls)}
