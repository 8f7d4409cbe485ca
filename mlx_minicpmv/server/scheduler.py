"""The scheduler: the one place that calls MLX, pumped by whichever thread owns the model.

The HTTP side (any thread, any event loop) calls ``submit(job)`` and reads events from the
returned ``Handle``; nothing else touches the model. The owner calls ``pump()`` again and
again: each call admits waiting requests up to ``max_concurrency``, runs prefill chunks of
the requests being prefilled (up to ``prefill_step`` tokens in all), and one decode step of
the running batch, so a long video's prefill never stalls the answers already streaming by
more than a chunk. ``serve_forever`` is that loop on a thread of its own (the ``serve``
command); the desktop app instead calls ``pump`` from its model worker between its own jobs,
keeping one owner of MLX (mlx-lm's server has the same shape: one generation thread, requests
queued to it).

Events a handle receives, in order: one ``start`` (prompt and cached token counts), ``delta``
events (reasoning and answer text, the token's log-probabilities when asked), and one ``done``
(finish reason, usage) or one ``error`` (an ``APIError``).
"""

import asyncio
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, List, Optional

import mlx.core as mx

from ..errors import MediaError
from .batch import DecodeBatch
from .conversations import ConversationStore
from .protocol import APIError, usage
from .sequence import Job, ModelContext, Sequence

log = logging.getLogger("mlx_minicpmv.server")


@dataclass
class Event:
    kind: str  # "start" | "delta" | "done" | "error"
    reasoning: str = ""
    content: str = ""
    logprobs: Optional[List[dict]] = None
    finish_reason: Optional[str] = None
    usage: Optional[dict] = None
    error: Optional[APIError] = None
    prompt_tokens: int = 0
    cached_tokens: int = 0


class Handle:
    """A request's side of the scheduler: events out, cancel in. With an event ``loop`` the
    events arrive on an ``asyncio.Queue`` of that loop (``await handle.get()``), else on a
    thread-safe queue (``handle.get_sync()``)."""

    def __init__(self, loop: Optional[asyncio.AbstractEventLoop] = None):
        self._loop = loop
        self._queue = asyncio.Queue() if loop is not None else queue.Queue()
        self._cancelled = threading.Event()

    def put(self, event: Event) -> None:
        if self._loop is None:
            self._queue.put(event)
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel()

    async def get(self) -> Event:
        return await self._queue.get()

    def get_sync(self, timeout: Optional[float] = None) -> Event:
        return self._queue.get(timeout=timeout)

    def cancel(self) -> None:
        """Stop the request (the client left); its slot is freed at the scheduler's next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class Busy(Exception):
    """The queue is full."""


@dataclass
class Stats:
    waiting: int = 0
    active: int = 0
    decode_batch: int = 0
    served: int = 0
    cache_entries: int = 0
    cache_bytes: int = 0
    cache_hits: int = 0
    tokens: int = 0  # generated since start
    peak_batch: int = 0


class Scheduler:
    def __init__(self, model, processor, *, max_concurrency: int = 8, max_queue: int = 32,
                 store: Optional[ConversationStore] = None, default_max_tokens: int = 1024,
                 prefill_step: int = 512, notify: Optional[Callable[[], None]] = None):
        self.max_concurrency, self.max_queue = max_concurrency, max_queue
        self.notify = notify  # called (on the submitter's thread) when work arrives: an owner that pumps on demand
        self.ctx = ModelContext(model, processor, store or ConversationStore(), default_max_tokens, prefill_step)
        self.batch = DecodeBatch(model)
        self._waiting: deque = deque()
        self._prefilling: deque = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._uid = 0
        self._stop = threading.Event()
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self.served = self.tokens = self.peak_batch = 0

    # -- any thread --------------------------------------------------------------------------------
    def submit(self, job: Job, handle: Optional[Handle] = None) -> Handle:
        handle = handle or Handle()
        with self._lock:
            if self._closed:
                raise APIError(503, "the server is shutting down", code="shutting_down")
            if len(self._waiting) >= self.max_queue:
                raise Busy(f"{self.active} requests are running and {len(self._waiting)} waiting (--max-queue)")
            self._uid += 1
            self._waiting.append(Sequence(job, handle, self._uid))
        self._wake.set()
        if self.notify is not None:
            self.notify()
        return handle

    @property
    def active(self) -> int:
        return len(self._prefilling) + len(self.batch)

    def stats(self) -> Stats:
        s = self.ctx.store
        return Stats(len(self._waiting), self.active, len(self.batch), self.served, len(s.entries), s.nbytes, s.hits,
                     self.tokens, self.peak_batch)

    @property
    def busy(self) -> bool:
        return bool(self._waiting or self._prefilling or self.batch.seqs)

    # -- the owner's thread ------------------------------------------------------------------------
    def pump(self, timeout: float = 0.0) -> bool:
        """Do one round of work; with nothing to do, wait up to ``timeout`` s for a request.
        Returns whether work is left (call again soon)."""
        if not self.busy:
            self._wake.wait(timeout)
            self._wake.clear()
        try:
            self._admit()
            self._prefill()
            self._decode_one()
        except Exception as e:  # a bug must fail the requests in flight, not stop the server
            log.exception("scheduler step failed")
            self._fail_all(as_api_error(e))
        return self.busy

    def serve_forever(self) -> None:
        while not self._stop.is_set():
            self.pump(timeout=0.1)
        self.close()

    def close(self) -> None:
        """Fail whatever is still queued or running, and refuse what comes later (the owner's
        thread, at shutdown)."""
        with self._lock:
            self._closed = True
        self._fail_all(APIError(503, "the server is shutting down", code="shutting_down"))

    def start(self) -> threading.Thread:
        """Run ``serve_forever`` on a thread of its own, which then owns MLX."""
        self._thread = threading.Thread(target=self.serve_forever, name="mlx-scheduler", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    # -- steps ---------------------------------------------------------------------------------------
    def _admit(self) -> None:
        with self._lock:
            while self._waiting and self.active < self.max_concurrency:
                seq = self._waiting.popleft()
                if seq.handle.cancelled:
                    continue
                self._prefilling.append(seq)

    def _prefill(self) -> None:
        """Prefill chunks up to ``prefill_step`` tokens in all between two decode steps: a long
        prompt gets one chunk, several short ones (chat turns arriving together) all of theirs,
        so the eighth of eight new requests does not wait through seven decode steps per chunk."""
        budget = self.ctx.prefill_step
        while self._prefilling and budget > 0:
            budget -= max(self._prefill_one(), 1)

    def _prefill_one(self) -> int:
        """One chunk of the first request being prefilled; the prompt tokens it fed."""
        seq = self._prefilling[0]
        if seq.handle.cancelled:
            self._prefilling.popleft()
            return 0
        before = seq.done_to
        try:
            if seq.cache is None:
                seq.prepare(self.ctx)
                seq.handle.put(Event("start", prompt_tokens=len(seq.ids), cached_tokens=seq.cached))
                before = seq.done_to
            if not seq.prefilled:
                seq.prefill_step(self.ctx.model, self.ctx.store)
        except Exception as e:  # one bad request must not take the server down
            self._prefilling.popleft()
            self._fail(seq, e)
            mx.clear_cache()
            return 0
        if seq.prefilled:
            self._prefilling.popleft()
            self.batch.add(seq)
        return seq.done_to - before

    def _decode_one(self) -> None:
        if not self.batch.seqs:
            return
        leaving = [i for i, s in enumerate(self.batch.seqs) if s.handle.cancelled]
        if leaving:
            self.batch.remove(leaving)
            if not self.batch.seqs:
                return
        self.peak_batch = max(self.peak_batch, len(self.batch))
        try:
            tokens, logprobs = self.batch.step()
        except Exception as e:
            log.exception("decode step failed")
            for seq in self.batch.seqs:
                self._fail(seq, e)
            self.batch = DecodeBatch(self.ctx.model)
            mx.clear_cache()
            return
        finished = []
        for i, (seq, token) in enumerate(zip(self.batch.seqs, tokens)):
            if self._advance(seq, token, logprobs[i] if seq.job.top_logprobs is not None else None):
                finished.append(i)
        if finished:
            self.batch.remove(finished)

    def _advance(self, seq: Sequence, token: int, logprobs) -> bool:
        """Hand one token to its request; True when the request is done."""
        seq.tokens.append(token)
        seq.generated += 1
        self.tokens += 1
        reasoning, content = seq.text.add(token)
        finish = None
        if token in seq.text.eos:
            finish = "stop"
        elif seq.text.stopped:
            finish = "stop"
        elif seq.generated >= seq.max_tokens:
            finish = "length"
        entries = None
        if logprobs is not None and token not in seq.text.eos:
            entries = [self._logprob_entry(token, logprobs, seq.job.top_logprobs)]
        if finish:
            r, c = seq.text.finish()
            reasoning, content = reasoning + r, content + c
        if reasoning or content or entries:
            seq.handle.put(Event("delta", reasoning=reasoning, content=content, logprobs=entries))
        if finish:
            completion = seq.generated - (1 if token in seq.text.eos else 0)
            seq.handle.put(Event("done", finish_reason=finish,
                                 usage=usage(len(seq.ids), completion, seq.cached)))
            self.served += 1
        return finish is not None

    def _logprob_entry(self, token: int, logprobs: mx.array, top: int) -> dict:
        tok = self.ctx.processor.tokenizer

        def entry(t: int, lp: float) -> dict:
            text = tok.decode([t])
            return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

        out = entry(token, logprobs[token].item())
        out["top_logprobs"] = []
        if top:
            best = mx.argpartition(-logprobs, top - 1)[:top]
            values = logprobs[best]
            order = mx.argsort(-values)
            out["top_logprobs"] = [entry(int(t), float(v)) for t, v in
                                   zip(best[order].tolist(), values[order].tolist())]
        return out

    def _fail(self, seq: Sequence, e: Exception) -> None:
        seq.handle.put(Event("error", error=as_api_error(e)))

    def _fail_all(self, error: APIError) -> None:
        for seq in list(self._waiting) + list(self._prefilling) + list(self.batch.seqs):
            seq.handle.put(Event("error", error=error))
        self._waiting.clear()
        self._prefilling.clear()
        self.batch = DecodeBatch(self.ctx.model)


def as_api_error(e: Exception) -> APIError:
    """The error a client sees: the problem and the fix for what a request can get wrong, one
    line without internals for the rest (logged in full on the server)."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, MediaError):
        return APIError(400, str(e), code="invalid_media")
    if isinstance(e, (ValueError, TypeError)):
        return APIError(400, str(e).splitlines()[0] if str(e) else type(e).__name__)
    if isinstance(e, MemoryError):
        return APIError(503, "out of memory for this request; send fewer or smaller images or video frames",
                        code="out_of_memory")
    log.error("request failed", exc_info=e)
    return APIError(500, f"internal error ({type(e).__name__}); the server logged the details")
