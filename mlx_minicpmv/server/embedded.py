"""The server inside a program whose own thread owns MLX (the desktop app's model worker).

HTTP runs on a thread of its own and never touches MLX; the owner keeps calling ``pump()``
between its own jobs, and the requests make progress only then::

    server = EmbeddedServer(model, processor, port=8080, api_key=None)
    address = server.start()                 # "http://127.0.0.1:8080/v1"; OSError if the port is taken
    while worker_is_running:                 # on the thread that owns MLX
        do_own_work_if_any()
        server.pump(timeout=0.05)            # one prefill chunk + one decode step, or a short wait
    server.stop()                            # from the same thread: pending requests get a 503

An owner that runs queued jobs instead of a loop (the app's worker) passes ``notify``: it is
called on the HTTP thread when a request arrives, to queue a job that pumps until ``pump()``
returns False (nothing left to do).
"""

import socket
import threading
from typing import Callable, Optional, Sequence

from .app import ServerConfig, create_app
from .conversations import ConversationStore
from .media import MediaResolver
from .scheduler import Scheduler
from .sequence import Sampling


class EmbeddedServer:
    def __init__(self, model, processor, *, host: str = "127.0.0.1", port: int = 8080, api_key: Optional[str] = None,
                 model_name: str = "MiniCPM-V", media_dirs: Sequence = (), max_concurrency: int = 4,
                 max_queue: int = 16, sampling: Optional[Sampling] = None, enable_thinking: bool = False,
                 notify: Optional[Callable[[], None]] = None):
        from ..generate import generation_defaults

        self.host, self.port = host, port
        self.scheduler = Scheduler(model, processor, max_concurrency=max_concurrency, max_queue=max_queue,
                                   store=ConversationStore(8, 1 << 30), notify=notify)
        config = ServerConfig(model_name=model_name, api_key=api_key, enable_thinking=enable_thinking,
                              sampling=sampling or Sampling(**generation_defaults(processor)))
        self.app = create_app(self.scheduler, MediaResolver(media_dirs), config)
        self._server = self._thread = self._socket = None

    def start(self) -> str:
        """Bind and serve HTTP on a background thread; the address clients use."""
        import uvicorn

        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            raise OSError(f"cannot listen on {self.host}:{self.port} ({e.strerror}); choose another port") from None
        sock.listen(128)  # clients may connect at once: they wait in the backlog until uvicorn is up
        self._socket = sock
        self.port = sock.getsockname()[1]
        # A streamed answer still open at shutdown has had its error event; it must not hold the port.
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=2))
        self._thread = threading.Thread(target=self._server.run, kwargs=dict(sockets=[sock]), name="http",
                                        daemon=True)
        self._thread.start()
        return self.address

    @property
    def address(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def pump(self, timeout: float = 0.0) -> bool:
        """Call on the thread that owns MLX; True while requests are in progress."""
        return self.scheduler.pump(timeout)

    def stop_listening(self) -> None:
        """Refuse new connections (any thread; uvicorn notices within a tenth of a second)."""
        if self._server is not None:
            self._server.should_exit = True

    def stop(self) -> None:
        """Stop listening and fail what is still pending (call on the owner's thread)."""
        self.stop_listening()
        self.scheduler.close()  # first: the open requests end (503) so that uvicorn can finish
        if self._server is not None:
            self._thread.join(10)
            self._socket.close()
            self._server = None
