"""The ASGI app: parse, check, resolve media, hand a ``Job`` to the scheduler, stream its events.

The HTTP layer never touches MLX: it decodes media on worker threads and waits on the
request's ``Handle``. Every failure a client can cause leaves as OpenAI's error body with its
status; anything else as a one-line 500, and the server keeps serving.
"""

import asyncio
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, List, Optional

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import protocol
from .media import MediaResolver, VideoOptions, resolve_messages
from .protocol import APIError, ChatCompletionRequest
from .scheduler import Busy, Event, Handle, Scheduler, as_api_error
from .sequence import Job, Sampling

log = logging.getLogger("mlx_minicpmv.server")
POLL_S = 0.25  # how often a waiting non-streamed request checks that its client is still there


@dataclass
class ServerConfig:
    model_name: str
    api_key: Optional[str] = None
    allowed_origins: List[str] = field(default_factory=list)
    max_request_bytes: int = 256 * 1024 * 1024
    sampling: Sampling = field(default_factory=Sampling)  # defaults a request's fields override
    enable_thinking: bool = False
    processor_options: dict = field(default_factory=dict)  # max_slice_nums, downsample_mode
    video: VideoOptions = field(default_factory=VideoOptions)
    log_conversations: bool = False
    retry_after_s: int = 5


def build_job(req: ChatCompletionRequest, config: ServerConfig, resolver: MediaResolver) -> Job:
    """A validated request -> the scheduler's plain ``Job`` (media decoded here)."""
    mm = req.mm_processor_kwargs
    video = VideoOptions(**{k: getattr(mm, k) if mm and getattr(mm, k) is not None else getattr(config.video, k)
                            for k in ("max_num_frames", "fps", "stack_frames")})
    messages, media = resolve_messages(req.messages, resolver, video)
    options = dict(config.processor_options)
    if mm is not None:
        options.update({k: getattr(mm, k) for k in ("max_slice_nums", "downsample_mode", "use_image_id")
                        if getattr(mm, k) is not None})
    d = config.sampling
    sampling = Sampling(**{k: getattr(req, k) if getattr(req, k) is not None else getattr(d, k)
                           for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                                     "presence_penalty", "frequency_penalty", "logit_bias", "seed")})
    sampling.top_k = max(sampling.top_k, 0)  # vLLM's -1 means off, as 0 does here
    thinking = config.enable_thinking
    if req.chat_template_kwargs is not None and req.chat_template_kwargs.enable_thinking is not None:
        thinking = req.chat_template_kwargs.enable_thinking
    return Job(messages=messages, media_digests=[m.digest for m in media], max_tokens=req.answer_limit,
               sampling=sampling, stop=list(req.stop or []), enable_thinking=thinking, processor_options=options,
               response_format=req.response_format,
               top_logprobs=(req.top_logprobs or 0) if req.logprobs else None)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request is {int(declared) / 2**20:.0f} MB, over the server's limit of "
                       f"{limit / 2**20:.0f} MB (--max-request-mb)", code="request_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise APIError(413, f"the request is over the server's limit of {limit / 2**20:.0f} MB (--max-request-mb)",
                           code="request_too_large")
    return bytes(body)


def create_app(scheduler: Scheduler, resolver: MediaResolver, config: ServerConfig) -> FastAPI:
    app = FastAPI(title="mlx-minicpmv", docs_url=None, redoc_url=None, openapi_url=None)
    created = protocol.now()
    if config.allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=config.allowed_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(APIError)
    async def api_error(_, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, e: StarletteHTTPException):
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_, e: Exception):
        log.exception("request failed")
        return JSONResponse(APIError(500, f"internal error ({type(e).__name__})").body(), status_code=500)

    def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), config.api_key.encode()):
            raise APIError(401, "missing or wrong API key; send 'Authorization: Bearer <key>' with the key the "
                           "server was started with (--api-key)", code="invalid_api_key")

    @app.get("/health")
    async def health():
        s = scheduler.stats()
        return {"status": "ok", "model": config.model_name, "active": s.active, "waiting": s.waiting}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return protocol.model_list(config.model_name, created)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        body = await read_body(request, config.max_request_bytes)
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON ({e})") from None
        req = protocol.parse_request(data)
        if req.model != config.model_name:
            raise APIError(404, f"the model {req.model!r} does not exist; this server serves {config.model_name!r} "
                           "(GET /v1/models)", param="model", code="model_not_found")
        try:
            job = await asyncio.to_thread(build_job, req, config, resolver)
        except Exception as e:
            raise as_api_error(e) from None
        if config.log_conversations:
            log.info("request: %s", json.dumps(data.get("messages"))[:2000])
        handle = Handle(asyncio.get_running_loop())
        try:
            scheduler.submit(job, handle)
        except Busy as e:
            raise APIError(503, f"the server is busy ({e}); retry after {config.retry_after_s} s",
                           code="server_busy", headers={"Retry-After": str(config.retry_after_s)}) from None
        cid = protocol.completion_id()
        waiter = Waiter(handle, request)
        first = await waiter.next()  # "start", or the error that decides the status
        if first.kind == "error":
            raise first.error
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(stream(handle, cid, config.model_name, include_usage, config, job),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await collect(waiter, cid, config.model_name, config, job)

    return app


class Waiter:
    """A request's events while its client may go away: every ``POLL_S`` (whether events
    are flowing or not) the connection is checked, and a client that left cancels the request."""

    def __init__(self, handle: Handle, request: Request):
        self.handle, self.request = handle, request
        self.checked = time.monotonic()

    async def next(self) -> Event:
        while True:
            if time.monotonic() - self.checked >= POLL_S:
                self.checked = time.monotonic()
                if await self.request.is_disconnected():
                    self.handle.cancel()
                    raise APIError(499, "the client closed the connection")
            try:
                return await asyncio.wait_for(self.handle.get(), POLL_S)
            except asyncio.TimeoutError:
                continue


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def stream(handle: Handle, cid: str, model: str, include_usage: bool, config: ServerConfig,
                 job: Job) -> AsyncIterator[str]:
    """Server-sent events. When the client disconnects, Starlette cancels this generator, and
    the ``finally`` frees the request's slot."""
    created = protocol.now()
    answer = []
    try:
        yield _sse(protocol.chunk(cid, model, created, {"role": "assistant", "content": ""}))
        while True:
            event = await handle.get()
            if event.kind == "delta":
                delta = {}
                if event.reasoning:
                    delta["reasoning_content"] = event.reasoning
                if event.content:
                    delta["content"] = event.content
                    answer.append(event.content)
                lp = {"content": event.logprobs} if event.logprobs else None
                yield _sse(protocol.chunk(cid, model, created, delta, logprobs=lp))
            elif event.kind == "done":
                yield _sse(protocol.chunk(cid, model, created, {}, finish_reason=event.finish_reason))
                if include_usage:
                    yield _sse(protocol.usage_chunk(cid, model, created, event.usage))
                if config.log_conversations:
                    log.info("answer: %s", "".join(answer)[:2000])
                break
            elif event.kind == "error":
                yield _sse(event.error.body())
                break
        yield "data: [DONE]\n\n"
    finally:
        handle.cancel()  # a no-op once the request is done


async def collect(waiter: Waiter, cid: str, model: str, config: ServerConfig, job: Job):
    reasoning, content, logprobs = [], [], []
    while True:
        event = await waiter.next()
        if event.kind == "delta":
            reasoning.append(event.reasoning)
            content.append(event.content)
            logprobs += event.logprobs or []
        elif event.kind == "error":
            raise event.error
        elif event.kind == "done":
            break
    if config.log_conversations:
        log.info("answer: %s", "".join(content)[:2000])
    return protocol.completion(cid, model, protocol.now(), "".join(content),
                               "".join(reasoning) if job.enable_thinking else None, event.finish_reason,
                               event.usage, {"content": logprobs} if job.top_logprobs is not None else None)
