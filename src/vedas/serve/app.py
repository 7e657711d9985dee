"""The HTTP face of ``vedas serve``: a FastAPI app over a :class:`~vedas.serve.batcher.Batcher`.

    app = create_app(vm, Settings(served="tiny", max_batch_size=16, batch_timeout_s=0.01))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: ``POST /v1/chat/completions`` (OpenAI format, :mod:`vedas.serve.protocol`),
``GET /v1/models``, ``GET /health`` (status, the queue and the batcher's counters). Every
error is an OpenAI error object: 400 for a bad request, checked at arrival against everything
the engine would refuse (naming the field, before the request is queued), 401 without the
``--api-key``, 413 for a body over the limit, 429 with ``Retry-After`` while ``--max-queued``
requests wait, 500 when the engine failed on this request alone (a failed batch is re-run row
by row, so one request never fails the others), 503 while shutting down, 504 past
``--request-timeout-s``. With ``stream: true`` text is sent as it is decoded.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from vedas.errors import UserError
from vedas.serve.batcher import Batcher, QueueFull, ShuttingDown
from vedas.serve.protocol import (
    ApiError,
    ChatJob,
    JobResult,
    Limits,
    completion,
    parse_chat,
    usage,
    vedas_info,
)
from vedas.serve.runner import TextStream, admission, admit, run_jobs


@dataclass(frozen=True)
class Settings:
    served: str = "vedas"
    default_mode: str = "vedas"
    max_batch_size: int = 16
    batch_timeout_s: float = 0.010
    max_body_bytes: int = 32 * 2**20
    limits: Limits = field(default_factory=Limits)
    max_queued: int = 256
    request_timeout_s: float = 600.0
    api_key: str | None = None


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


def _submit(batcher: Batcher, job: ChatJob) -> Future:
    try:
        return batcher.submit(job, key=job.key)
    except QueueFull as e:
        raise ApiError(429, f"server: {e}; retry later", None, "rate_limit_error") from None
    except ShuttingDown as e:
        raise ApiError(503, f"server: {e}", None, "server_error") from None


def _failure(e: BaseException) -> ApiError:
    """The error object for a job whose engine call raised (it ran alone: the fault is its own)."""
    if isinstance(e, ShuttingDown):
        return ApiError(503, f"server: {e}", None, "server_error")
    if isinstance(e, UserError):  # the engine refused this request's input
        return ApiError(400, f"messages: the engine refused this request: {e}", "messages")
    return ApiError(
        500, f"server: the engine failed on this request: {type(e).__name__}: {e}", None, "server_error"
    )


async def _answer(request: Request, future: Future, timeout_s: float) -> JobResult:
    """Wait for the job's batch, or give up on the job when its client goes away or time runs out."""
    waiter = asyncio.wrap_future(future)
    gone = asyncio.ensure_future(_disconnected(request))
    done, _ = await asyncio.wait({waiter, gone}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    if waiter not in done:
        waiter.cancel()  # dropped if its batch has not started; else computed and thrown away
        if gone in done:
            raise _ClientGone
        raise ApiError(
            504, f"server: no answer within {timeout_s:g} s (--request-timeout-s)", None, "server_error"
        )
    try:
        return waiter.result()
    except Exception as e:
        raise _failure(e) from None


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def _stream(
    future: Future, queue: asyncio.Queue, base: dict[str, Any], job: ChatJob, timeout_s: float
) -> AsyncIterator[str]:
    """The server-sent events of one streamed answer: a role chunk at once, text as it is decoded, the end."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    waiter = asyncio.wrap_future(future)
    deadline = time.monotonic() + timeout_s
    try:
        # the role chunk goes out before the prefill and the latent phase, so a client sees the stream open
        yield chunk({"role": "assistant", "content": ""})
        while not (waiter.done() and queue.empty()):
            getter = asyncio.ensure_future(queue.get())
            left = deadline - time.monotonic()
            done, _ = await asyncio.wait(
                {getter, waiter}, timeout=max(left, 0), return_when=asyncio.FIRST_COMPLETED
            )
            if getter in done:
                yield chunk({"content": getter.result()})
            else:
                getter.cancel()
            if not done:
                raise ApiError(
                    504,
                    f"server: no answer within {timeout_s:g} s (--request-timeout-s)",
                    None,
                    "server_error",
                )
        try:
            result = waiter.result()
        except Exception as e:
            raise _failure(e) from None
        yield chunk({}, result.finish_reason)
        if job.include_usage:
            yield _sse({**base, "choices": [], "usage": usage(result), "vedas": vedas_info(job, result)})
        yield "data: [DONE]\n\n"
    except ApiError as e:  # the status line is sent already: the error goes in the stream, as OpenAI does
        yield _sse(e.body())
        yield "data: [DONE]\n\n"
    finally:
        waiter.cancel()  # the client went away: its job is dropped if still queued


def create_app(vm: Any, settings: Settings) -> FastAPI:
    """The FastAPI app serving ``vm`` (a :class:`vedas.VedasModel`)."""
    admission(vm)  # the arrival checks' own tokenizer, copied before the worker uses vm's
    batcher = Batcher(
        lambda jobs: run_jobs(vm, jobs),
        settings.max_batch_size,
        settings.batch_timeout_s,
        settings.max_queued,
    )

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

    if settings.api_key is not None:
        expected = f"Bearer {settings.api_key}".encode()

        @app.middleware("http")
        async def check_key(request: Request, call_next: Any) -> Any:
            # /health stays open for load balancers; every /v1 route needs the key (compared in constant time)
            if request.url.path.startswith("/v1"):
                given = request.headers.get("authorization", "").encode()
                if not hmac.compare_digest(given, expected):
                    return _error(
                        ApiError(401, "authorization: missing or wrong API key", None, "authentication_error")
                    )
            return await call_next(request)

    @app.get("/health")
    async def health() -> Any:
        body = {
            "status": "shutting_down" if batcher.stopping else "ok",
            "model": settings.served,
            "queued": batcher.queued(),
            "max_queued": settings.max_queued,
            **asdict(batcher.stats),
        }
        return JSONResponse(body, status_code=503 if batcher.stopping else 200)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": settings.served, "object": "model", "created": int(time.time()), "owned_by": "vedas"}
        return {"object": "list", "data": [card]}

    def parse(body: Any) -> ChatJob:
        job = parse_chat(body, settings.limits, settings.served, settings.default_mode)
        admit(vm, job)
        return job

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        try:
            if batcher.stopping:
                raise ShuttingDown("the server is shutting down")
            body = await _read_body(request, settings.max_body_bytes)
            # decoding images and tokenising are CPU work: off the event loop, and before the queue
            job = await run_in_threadpool(parse, body)
            job_id = f"chatcmpl-{uuid.uuid4().hex}"
            if job.stream:
                loop, queue = asyncio.get_running_loop(), asyncio.Queue()
                job.text_stream = TextStream(
                    lambda piece: loop.call_soon_threadsafe(queue.put_nowait, piece), job.stop
                )
                future = _submit(batcher, job)
                base = {
                    "id": job_id,
                    "object": "chat.completion.chunk",
                    "created": job.created,
                    "model": settings.served,
                }
                events = _stream(future, queue, base, job, settings.request_timeout_s)
                return StreamingResponse(events, media_type="text/event-stream")
            result = await _answer(request, _submit(batcher, job), settings.request_timeout_s)
        except ShuttingDown as e:
            return _error(ApiError(503, f"server: {e}", None, "server_error"))
        except ApiError as e:
            response = _error(e)
            if e.status == 429:
                response.headers["Retry-After"] = "1"
            return response
        except _ClientGone:
            return Response(status_code=499)  # nobody reads it; nginx's "client closed request"
        return JSONResponse(completion(job_id, settings.served, job, result))

    return app
