"""The one long-lived worker thread: the only place the app calls ``mlx_minicpmv``.

Shaped like superqt's GeneratorWorker: each step of a library generator becomes a signal,
cancellation is checked between steps, errors become a signal with words a person can act
on. The window owns the wiring (signals to slots); the worker never reaches into it.
"""

import threading
import traceback
from dataclasses import dataclass, field
from typing import List, Optional

from PySide6.QtCore import QObject, Signal, Slot


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


class Cancelled(Exception):
    pass


class ModelWorker(QObject):
    loading = Signal(str)
    loaded = Signal(str)
    download_progress = Signal(int, int)  # bytes done, bytes total
    prompt_progress = Signal(int, int)  # prompt tokens done, total
    text = Signal(str)  # a streamed piece of the answer
    done = Signal(str, dict)  # finish reason, statistics
    failed = Signal(str)  # a message for a person
    frames = Signal(str, list)  # video path, [(seconds, width, height, rgb bytes)]
    summary_progress = Signal(str, int, int, float)  # stage, done, total, seconds left (-1: unknown)
    summary_chapter = Signal(object)  # a finished mlx_minicpmv.summary.Chapter
    summary_done = Signal(object)  # the Summary
    frame_ready = Signal(str, float, int, int, bytes)  # path, seconds, width, height, rgb
    exported = Signal(str)

    def __init__(self):
        super().__init__()
        self.model = self.processor = None
        self.model_path = ""
        self._cancel = threading.Event()
        self._cache = None
        self._cached_for = (None, 0)  # (conversation id, messages the cache holds)
        self._summary = (None, None)  # (conversation id, its last video Summary)

    def cancel(self) -> None:
        """Called from the GUI thread: a flag the running job checks between steps."""
        self._cancel.set()

    # -- jobs (run on the worker thread, through queued signals) --------------------------------
    @Slot(str)
    def load(self, path: str) -> None:
        self._cancel.clear()
        self.loading.emit(path)
        try:
            from mlx_minicpmv import load

            self.model, self.processor = load(path)
            self.model_path, self._cache, self._cached_for = path, None, (None, 0)
            self.loaded.emit(path)
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

    @Slot(object)
    def generate(self, request: GenerateRequest) -> None:
        self._cancel.clear()
        if self.model is None:
            self.failed.emit("No model is loaded yet. Choose a model first.")
            return
        from mlx_minicpmv import PromptCache, stream_generate

        messages = list(request.messages)
        if request.system_prompt:
            messages.insert(0, {"role": "system", "content": request.system_prompt})
        # Continue the cache when it holds exactly this conversation up to its last answer;
        # otherwise (another chat, an edit, a regenerate) start it over.
        key, held = self._cached_for
        if self._cache is not None and key == request.conversation_id and held == len(messages) - 1:
            new = messages[held:]
        else:
            self._cache, new = PromptCache.new(self.model), messages
        self._cached_for = (request.conversation_id, None)  # unknown until this turn ends well
        options = dict(request.options)

        def progress(done, total):
            self.prompt_progress.emit(done, total)
            if self._cancel.is_set():
                raise Cancelled()  # between prefill chunks: a long video stops promptly too

        summary_id, summary = self._summary
        if summary_id == request.conversation_id and isinstance(messages[-1]["content"], str):
            # A text question after a video summary: answered from the frames the summary saw,
            # so nothing is decoded or encoded again.
            from mlx_minicpmv.summary import follow_up

            self._cache, self._cached_for = None, (None, 0)
            stream = lambda: follow_up(self.model, self.processor, summary, messages[-1]["content"],  # noqa: E731
                                       cancel=self._cancel.is_set, progress=progress, **options)
        else:
            stream = lambda: stream_generate(self.model, self.processor, new, prompt_cache=self._cache,  # noqa: E731
                                             cancel=self._cancel.is_set, progress=progress, **options)
        try:
            last = None
            for last in stream():
                if last.text:
                    self.text.emit(last.text)
            stats = dict(prompt_tokens=last.prompt_tokens, prompt_tps=last.prompt_tps,
                         generation_tokens=last.generation_tokens, generation_tps=last.generation_tps,
                         peak_memory=last.peak_memory)
            if self._cache is not None:
                self._cached_for = (request.conversation_id, len(messages) + 1)
            self.done.emit(last.finish_reason or "stop", stats)
        except Cancelled:
            self._cache = None  # stopped inside the prompt: the state is partial
            self.done.emit("cancelled", dict(prompt_tokens=0, prompt_tps=0.0, generation_tokens=0,
                                             generation_tps=0.0, peak_memory=0.0))
        except Exception as e:  # noqa: BLE001
            self._cache = None
            traceback.print_exc()
            self.failed.emit(friendly(e))

    @Slot(str, int, float)
    def preview_video(self, path: str, max_frames: int, fps: float) -> None:
        """The frames the model will see, as small thumbnails with their times."""
        try:
            from mlx_minicpmv.processing.video import load_video_units

            thumbs = []
            for image, seconds in load_video_units(path, max_frames, 1, fps):
                image.thumbnail((96, 96))
                thumbs.append((seconds, image.width, image.height, image.convert("RGB").tobytes()))
            self.frames.emit(path, thumbs)
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

    @Slot(str, float)
    def frame_at(self, path: str, seconds: float) -> None:
        """The video frame shown at ``seconds``, for a clicked timestamp."""
        try:
            from mlx_minicpmv.processing.video import iter_frames, probe

            info = probe(path)
            index = min(int(seconds * info.fps), info.total_num_frames - 1)
            for frame in iter_frames(path, [index], info):
                image = frame.image.convert("RGB")
                image.thumbnail((640, 640))
                self.frame_ready.emit(path, frame.time, image.width, image.height, image.tobytes())
                return
            self.failed.emit(f"No frame could be read at {seconds:.0f} s in {path}.")
        except Exception as e:  # noqa: BLE001
            self.failed.emit(friendly(e))

    @Slot(object, str)
    def export_summary(self, summary, path: str) -> None:
        """Write a summary as .md, .srt, .vtt or .json (by suffix), atomically."""
        from pathlib import Path

        from mlx_minicpmv.summary.export import FORMATS

        from .history import write_atomic

        fmt = Path(path).suffix.lstrip(".").lower()
        if fmt not in FORMATS:
            self.failed.emit(f"Can't export as .{fmt}: choose .md, .srt, .vtt or .json.")
            return
        try:
            write_atomic(Path(path), FORMATS[fmt](summary))
            self.exported.emit(path)
        except OSError as e:
            self.failed.emit(f"Could not write {path}: {e.strerror or e}. Choose another folder or free some space.")
