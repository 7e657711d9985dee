"""The HTTP face of ``vedas serve``: a FastAPI app over a :class:`~vedas.serve.batcher.Batcher`.

    app = create_app(vm, Settings(served="tiny", max_batch_size=16, batch_timeout_s=0.01))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: ``POST /v1/chat/completions`` (OpenAI format, :mod:`vedas.serve.protocol`),
``GET /v1/models``, ``GET /health`` (status and the batcher's counters). Every error is an
OpenAI error object: 4xx for a bad request (naming the field), 413 for a body over the
limit, 500 when the batch that held the request failed (the server goes on serving), 503
while shutting down.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from vedas.serve.batcher import Batcher
from vedas.serve.protocol import ApiError, ChatJob, JobResult, Limits, chunks, completion, parse_chat
from vedas.serve.runner import run_jobs


@dataclass(frozen=True)
class Settings:
    served: str = "vedas"
    default_mode: str = "vedas"
    max_batch_size: int = 16
    batch_timeout_s: float = 0.010
    max_body_bytes: int = 32 * 2**20
    limits: Limits = field(default_factory=Limits)


class _ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


async def _read_body(request: Request, limit: int) -> Any:
    """The JSON body, refused with 413 past ``limit`` bytes (checked as it streams in, not after)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body: {declared} bytes is over the limit of {limit} (--max-body-mb)", "body")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise ApiError(413, f"body: over the limit of {limit} bytes (--max-body-mb)", "body")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"body: not valid JSON: {e}", "body") from None


async def _disconnected(request: Request) -> None:
    """Return once the client has closed the connection (the request body was already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _answer(request: Request, batcher: Batcher, job: ChatJob) -> JobResult:
    """Wait for the job's batch, or give up on the job when its client goes away."""
    try:
        future = batcher.submit(job, key=job.key)
    except RuntimeError as e:
        raise ApiError(503, f"server: {e}", None, "server_error") from None
    waiter = asyncio.wrap_future(future)
    gone = asyncio.ensure_future(_disconnected(request))
    done, _ = await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()  # dropped if its batch has not started; else computed and thrown away
        raise _ClientGone
    gone.cancel()
    try:
        return waiter.result()
    except Exception as e:
        message = f"the batch holding this request failed: {type(e).__name__}: {e}"
        raise ApiError(500, message, None, "server_error") from None


def _sse(objects: list[dict[str, Any]]) -> AsyncIterator[str]:
    async def gen() -> AsyncIterator[str]:
        for obj in objects:
            yield f"data: {json.dumps(obj)}\n\n"
        yield "data: [DONE]\n\n"

    return gen()


def create_app(vm: Any, settings: Settings) -> FastAPI:
    """The FastAPI app serving ``vm`` (a :class:`vedas.VedasModel`)."""
    batcher = Batcher(lambda jobs: run_jobs(vm, jobs), settings.max_batch_size, settings.batch_timeout_s)

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(title="vedas serve", lifespan=lifespan)
    app.state.batcher = batcher

    @app.exception_handler(HTTPException)
    async def http_error(_: Any, exc: HTTPException) -> Any:
        return _error(ApiError(exc.status_code, str(exc.detail), None))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": settings.served, "queued": batcher.queued(), **asdict(batcher.stats)}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": settings.served, "object": "model", "created": int(time.time()), "owned_by": "vedas"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        try:
            body = await _read_body(request, settings.max_body_bytes)
            # decoding images is CPU work: off the event loop
            job = await run_in_threadpool(
                parse_chat, body, settings.limits, settings.served, settings.default_mode
            )
            result = await _answer(request, batcher, job)
        except ApiError as e:
            return _error(e)
        except _ClientGone:
            return Response(status_code=499)  # nobody reads it; nginx's "client closed request"
        job_id = f"chatcmpl-{uuid.uuid4().hex}"
        if job.stream:
            objects = chunks(job_id, settings.served, job, result)
            return StreamingResponse(_sse(objects), media_type="text/event-stream")
        return JSONResponse(completion(job_id, settings.served, job, result))

    return app
