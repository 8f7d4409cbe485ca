"""Settings → "Serve on localhost": the OpenAI-compatible server on the model the app has loaded.

The library's ``EmbeddedServer`` listens on a thread of its own and touches MLX only in
``pump()``; here every pump is a job for the app's ``ModelWorker`` (``worker.submit``), so the
worker stays the one owner of MLX. A request's arrival queues one pump job, and each job queues
the next while work is left: the window's own jobs (an answer, a summary) take their turn in
between, and an idle server costs nothing. While the window answers, server requests wait,
and the other way round only for one prefill chunk or decode step.

The server follows the model: it stops as the worker starts loading another one (from the
worker's thread, before the old model is let go) and starts again on the new one.
"""

import threading
from concurrent.futures import Future, TimeoutError
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QObject, Qt, Signal, Slot

SHUTDOWN_WAIT_S = 20  # at quit, for the worker to finish its cancelled job and stop the server


class LocalServer(QObject):
    started = Signal(str)  # the address clients use, "http://127.0.0.1:8080/v1"
    stopped = Signal()
    failed = Signal(str)  # a message for a person

    def __init__(self, worker, parent=None):
        super().__init__(parent)
        self.worker = worker
        self.server = None  # the running EmbeddedServer; read and written on the worker's thread
        self.wanted = None  # (port, key) while the person wants it on, else None
        self._pumping = self._shut = False
        self._lock = threading.Lock()
        # Direct: runs on the worker's thread at the start of a load, before it drops the old model.
        worker.loading.connect(self._model_leaving, Qt.DirectConnection)
        worker.loaded.connect(self._model_loaded)

    # -- the GUI thread -------------------------------------------------------------------------
    def configure(self, enabled: bool, port: int, key: str = "") -> None:
        """Serve on ``port`` (with ``key`` when given), or stop; a no-op when nothing changed."""
        wanted = (port, key) if enabled else None
        if wanted == self.wanted:
            return
        self.wanted = wanted
        if wanted is None:
            self.worker.submit(self._stop_job)
        elif self.worker.model is not None:  # else it starts when a model has loaded
            self._start()  # (stopping the one on the old port first)

    def shutdown(self) -> None:
        """At quit, before the worker's thread ends: stop serving and free the port."""
        if self._shut:
            return  # a second close: the worker's thread is gone, and so is the server
        self._shut, self.wanted = True, None
        future = self.worker.submit(self._stop_job)
        try:
            future.result(SHUTDOWN_WAIT_S)
        except TimeoutError:  # the worker is stuck in a long step: at least free the port
            server = self.server
            if server is not None:
                server.stop_listening()

    def _start(self) -> None:
        port, key = self.wanted
        future = self.worker.submit(lambda model, processor: self._start_job(model, processor, port, key))
        future.add_done_callback(self._reply)

    @Slot(dict)
    def _model_loaded(self, _info: dict) -> None:
        if self.wanted is not None:
            self._start()

    # -- the worker's thread --------------------------------------------------------------------
    def _start_job(self, model, processor, port: int, key: str) -> str:
        from mlx_minicpmv.server.embedded import EmbeddedServer

        if model is None:
            raise RuntimeError("no model is loaded yet; choose a model first")
        self._stop_job()
        # The id clients send, as ``serve`` names it: the model's folder.
        name = Path(self.worker.model_path.rstrip("/")).name or "MiniCPM-V"
        server = EmbeddedServer(model, processor, port=port, api_key=key or None, model_name=name,
                                notify=self._wake)
        server.start()
        self.server = server
        return server.address

    def _reply(self, future: Future) -> None:
        error = future.exception()
        if error is None:
            self.started.emit(future.result())  # queued to the GUI thread: this one is the worker's
        else:
            self.wanted = None  # so that OK in Settings tries again
            self.failed.emit(f"The local server could not start: {error}")

    def _stop_job(self, _model=None, _processor=None) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop()
            self.stopped.emit()

    def _model_leaving(self, _path: str) -> None:
        self._stop_job()

    def _wake(self) -> None:
        """A request arrived (on the HTTP thread): queue a pump unless one is queued already."""
        with self._lock:
            if self._pumping:
                return
            self._pumping = True
        self.worker.submit(self._pump_job)

    def _pump_job(self, _model, _processor) -> None:
        server = self.server
        more = server is not None and server.pump(0)
        if more:
            self.worker.submit(self._pump_job)  # behind the jobs queued meanwhile: they take their turn
            return
        with self._lock:
            self._pumping = False
        # A request that came while this job ran saw a pump queued and queued none of its own.
        if server is not None and server is self.server and server.scheduler.busy:
            self._wake()
