"""The one long-lived worker thread: the only place the app calls ``mlx_minicpmv``.

Shaped like superqt's GeneratorWorker: each step of a library generator becomes a signal,
cancellation is checked between steps, errors become a signal with words a person can act
on. The window owns the wiring (signals to slots); the worker never reaches into it.

The worker is the one owner of the model: anything else that needs it (a local server started
from the app, say) hands it a job with ``submit``, which runs on this thread between the
window's jobs, so MLX is only ever driven from here.
"""

import threading
import traceback
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List

from PySide6.QtCore import QObject, Signal, Slot

from .model_finder import describe


@dataclass
class GenerateRequest:
    """One turn: the whole conversation so far (library chat form) and where it lives."""

    conversation_id: str
    messages: List[dict]
    options: dict = field(default_factory=dict)
    system_prompt: str = ""


def friendly(error: BaseException) -> str:
    """Plain words and what to do, for the errors a person can meet."""
    from mlx_minicpmv import MediaError
    from mlx_minicpmv.generate import ContextError
    from mlx_minicpmv.loading import CheckpointError

    if isinstance(error, MediaError):
        return f"This file can't be used. {error}."
    if isinstance(error, ContextError):
        return f"The conversation is too long for the model: {error}."
    if isinstance(error, CheckpointError):
        return f"The model could not be loaded: {error}."
    if isinstance(error, MemoryError):
        return "Out of memory. Try fewer video frames, a lower image detail, or a quantised model."
    return f"Something went wrong: {type(error).__name__}: {error}"


def grounding_prompt(target: str) -> str:
    """The question that asks the model where ``target`` is (``mlx_minicpmv.grounding``)."""
    from mlx_minicpmv import grounding

    return grounding.prompt(target)


def answer_part(text: str) -> str:
    """What follows the thinking, where the boxes of an answer are."""
    return text.rsplit("</think>", 1)[-1]


class Cancelled(Exception):
    pass


class ModelWorker(QObject):
    loading = Signal(str)
    loaded = Signal(dict)  # path, name, precision, memory (GB in use)
    download_progress = Signal(int, int)  # bytes done, bytes total
    prompt_progress = Signal(int, int)  # prompt tokens done, total
    text = Signal(str)  # a streamed piece of the answer
    done = Signal(str, dict)  # finish reason, statistics (and the answer's boxes and points)
    failed = Signal(str)  # a message for a person
    frames = Signal(str, list, float)  # video path, [(seconds, width, height, rgb bytes)], duration
    summary_progress = Signal(str, int, int, float)  # stage, done, total, seconds left (-1: unknown)
    summary_chapter = Signal(object)  # a finished mlx_minicpmv.summary.Chapter
    summary_done = Signal(object)  # the Summary
    frame_ready = Signal(str, float, int, int, bytes)  # path, seconds, width, height, rgb
    thumbnails = Signal(str, list)  # video path, [(seconds, width, height, rgb bytes)] for a timeline
    exported = Signal(str)
    _job = Signal(object)  # (callable, Future) from ``submit``

    def __init__(self):
        super().__init__()
        self.model = self.processor = None
        self.model_path = ""
        self.adapter_path = ""  # set by ``set_adapter`` (queued before a load), used by ``load``
        self._cancel = threading.Event()
        self._cache = None
        self._held = None  # (conversation id, the messages the cache holds, the last answer included)
        self._summary = (None, None)  # (conversation id, its last video Summary)
        self._job.connect(self._run_job)

    def cancel(self) -> None:
        """Called from the GUI thread: a flag the running job checks between steps."""
        self._cancel.set()

    def submit(self, job: Callable) -> Future:
        """Run ``job(model, processor)`` on the worker thread after the jobs queued before it;
        safe from any thread. The returned future holds its result or its exception."""
        future = Future()
        self._job.emit((job, future))
        return future

    @Slot(object)
    def _run_job(self, item) -> None:
        job, future = item
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(job(self.model, self.processor))
            except BaseException as e:  # noqa: BLE001 - the caller gets it through the future
                future.set_exception(e)

    # -- jobs (run on the worker thread, through queued signals) --------------------------------
    @Slot(str)
    def set_adapter(self, path: str) -> None:
        """The adapters the next ``load`` puts on the model ("" for none)."""
        self.adapter_path = path

    @Slot(str)
    def load(self, path: str) -> None:
        self._cancel.clear()
        self.loading.emit(path)
        try:
            import mlx.core as mx

            from mlx_minicpmv import load

            from mlx_minicpmv.generate import feature_cache

            old, self.model, self.processor = self.model, None, None
            if old is not None:
                # Its encoded images go now, not whenever the collector gets to the model (a
                # local server's request may still hold it), and before the new model's memory comes.
                feature_cache.forget(old)
            del old
            self._cache, self._held, self._summary = None, None, (None, None)
            self.model, self.processor = load(path, adapter_path=self.adapter_path or None)
            self.model_path = path
            found = describe(path)
            name = found.name if found else path
            if self.adapter_path:
                name = f"{name} + {Path(self.adapter_path).name}"
            self.loaded.emit(dict(path=path, name=name, adapter=self.adapter_path,
                                  precision=found.precision if found else "",
                                  memory=mx.get_active_memory() / 1e9))
        except Exception as e:  # noqa: BLE001 - every failure must reach the window
            self.failed.emit(friendly(e))

    @Slot(str, str)
    def download_and_convert(self, repo_id: str, target: str) -> None:
        """Download a Hugging Face repo (progress, Cancel) and convert it to ``target``."""
        self._cancel.clear()
        try:
            from tqdm.auto import tqdm

            from mlx_minicpmv.convert import convert
            from mlx_minicpmv.loading import resolve

            worker = self

            class Progress(tqdm):
                def update(self, n=1):
                    if worker._cancel.is_set():
                        raise Cancelled()
                    out = super().update(n)
                    if self.unit == "B" and self.total:
                        worker.download_progress.emit(int(self.n), int(self.total))
                    return out

            source = resolve(repo_id, tqdm_class=Progress)  # offline: a CheckpointError saying so
            out = convert(source, target, force=True)
            self.load(str(out))
        except Cancelled:
            self.failed.emit("Download cancelled. Nothing was saved.")
        except Exception as e:  # noqa: BLE001
            self.failed.emit(friendly(e))

    def _continue(self, conversation_id: str, messages: List[dict]) -> List[dict]:
        """The messages the model has not seen: the rest after what the cache holds when it
        holds the start of exactly this conversation, else all of them on a new cache (another
        chat, an edit, a regenerate, a changed system prompt)."""
        from mlx_minicpmv import PromptCache

        if self._cache is not None and self._held is not None:
            held_id, held = self._held
            if held_id == conversation_id and len(messages) > len(held) and messages[:len(held)] == held:
                return messages[len(held):]
        self._cache = PromptCache.new(self.model)
        return messages

    @Slot(object)
    def generate(self, request: GenerateRequest) -> None:
        self._cancel.clear()
        if self.model is None:
            self.failed.emit("No model is loaded yet. Choose a model first.")
            return
        from mlx_minicpmv import grounding, stream_generate

        system = [{"role": "system", "content": request.system_prompt}] if request.system_prompt else []
        messages = system + list(request.messages)
        options = dict(request.options)

        def progress(done, total):
            self.prompt_progress.emit(done, total)
            if self._cancel.is_set():
                raise Cancelled()  # between prefill chunks: a long video stops promptly too

        summary_id, summary = self._summary
        try:
            import mlx.core as mx

            if summary_id == request.conversation_id and isinstance(messages[-1]["content"], str):
                # A text question after a video summary: answered from the frames the summary
                # saw, so nothing is decoded or encoded again.
                from mlx_minicpmv.summary import follow_up

                self._cache = self._held = None
                stream = follow_up(self.model, self.processor, summary, messages[-1]["content"],
                                   system=request.system_prompt, cancel=self._cancel.is_set, progress=progress,
                                   **options)
            else:
                new = self._continue(request.conversation_id, messages)
                self._held = None  # unknown until this turn ends
                stream = stream_generate(self.model, self.processor, new, prompt_cache=self._cache,
                                         cancel=self._cancel.is_set, progress=progress, **options)
            last, pieces = None, []
            for last in stream:
                if last.text:
                    pieces.append(last.text)
                    self.text.emit(last.text)
            answer = "".join(pieces)
            regions = [(r.label, "box", (r.x1, r.y1, r.x2, r.y2)) if isinstance(r, grounding.Box)
                       else (r.label, "point", (r.x, r.y)) for r in grounding.parse(answer_part(answer))]
            stats = dict(prompt_tokens=last.prompt_tokens, prompt_tps=last.prompt_tps,
                         generation_tokens=last.generation_tokens, generation_tps=last.generation_tps,
                         peak_memory=last.peak_memory, memory=mx.get_active_memory() / 1e9, regions=regions)
            if self._cache is not None:
                self._held = (request.conversation_id, messages + [{"role": "assistant", "content": answer}])
            self.done.emit(last.finish_reason or "stop", stats)
        except Cancelled:
            self._cache = None  # stopped inside the prompt: the state is partial
            self.done.emit("cancelled", dict(prompt_tokens=0, prompt_tps=0.0, generation_tokens=0,
                                             generation_tps=0.0, peak_memory=0.0, regions=[]))
        except Exception as e:  # noqa: BLE001
            self._cache = None
            traceback.print_exc()
            self.failed.emit(friendly(e))

    @Slot(str, int, float)
    def preview_video(self, path: str, max_frames: int, fps: float) -> None:
        """The frames the model will see, as small thumbnails with their times."""
        try:
            from mlx_minicpmv.processing.video import load_video_units, probe

            thumbs = []
            for image, seconds in load_video_units(path, max_frames, 1, fps):
                image = image.copy()  # the units are cached for the question: leave them whole
                image.thumbnail((160, 160))
                thumbs.append((seconds, image.width, image.height, image.convert("RGB").tobytes()))
            self.frames.emit(path, thumbs, probe(path).duration)
        except Exception as e:  # noqa: BLE001
            self.failed.emit(friendly(e))

    @Slot(str, str, dict)
    def summarise(self, conversation_id: str, path: str, options: dict) -> None:
        """Summarise a video chapter by chapter; Stop keeps the chapters done so far."""
        self._cancel.clear()
        if self.model is None:
            self.failed.emit("No model is loaded yet. Choose a model first.")
            return
        try:
            from mlx_minicpmv.summary import summarize

            for event in summarize(self.model, self.processor, path, cancel=self._cancel.is_set, **options):
                eta = event.eta_seconds if event.eta_seconds is not None else -1.0
                self.summary_progress.emit(event.stage, event.done, event.total, eta)
                if event.chapter is not None:
                    self.summary_chapter.emit(event.chapter)
                if event.summary is not None:
                    self._summary = (conversation_id, event.summary)
                    self.summary_done.emit(event.summary)
        except Exception as e:  # noqa: BLE001
            self.failed.emit(friendly(e))

    def _frames(self, path: str, times: List[float], size: int) -> list:
        from mlx_minicpmv.processing.video import iter_frames, probe

        info = probe(path)
        indices = sorted({min(int(t * info.fps), info.total_num_frames - 1) for t in times})
        out = []
        for frame in iter_frames(path, indices, info):
            image = frame.image.convert("RGB")
            image.thumbnail((size, size))
            out.append((frame.time, image.width, image.height, image.tobytes()))
        return out

    @Slot(str, float)
    def frame_at(self, path: str, seconds: float) -> None:
        """The video frame shown at ``seconds``, for a clicked time."""
        try:
            found = self._frames(path, [seconds], 960)
            if not found:
                self.failed.emit(f"No frame could be read at {seconds:.0f} s in {path}.")
                return
            self.frame_ready.emit(path, *found[0])
        except Exception as e:  # noqa: BLE001
            self.failed.emit(friendly(e))

    @Slot(str, list)
    def chapter_frames(self, path: str, times: list) -> None:
        """One small frame for each time (a summary's chapter starts), for its timeline."""
        try:
            self.thumbnails.emit(path, self._frames(path, [float(t) for t in times], 240))
        except Exception as e:  # noqa: BLE001 - a timeline without pictures still works
            self.thumbnails.emit(path, [])
            traceback.print_exception(e)

    @Slot(object, str)
    def export_summary(self, summary, path: str) -> None:
        """Write a summary as .md, .srt, .vtt or .json (by suffix), atomically."""
        from pathlib import Path

        from mlx_minicpmv.files import write_atomic  # the umask's mode: an export is the person's file
        from mlx_minicpmv.summary.export import FORMATS

        fmt = Path(path).suffix.lstrip(".").lower()
        if fmt not in FORMATS:
            self.failed.emit(f"Can't export as .{fmt}: choose .md, .srt, .vtt or .json.")
            return
        try:
            write_atomic(Path(path), FORMATS[fmt](summary))
            self.exported.emit(path)
        except OSError as e:
            self.failed.emit(f"Could not write {path}: {e.strerror or e}. Choose another folder or free some space.")

