"""The real server (uvicorn on 127.0.0.1, a free port) around a tiny model, for the tests."""

import base64
import contextlib
import io
import socket
import threading
import time

from mlx_minicpmv.server.app import create_app
from mlx_minicpmv.server.command import build_parser, server_parts

MODEL = "tiny"


@contextlib.contextmanager
def running_server(model, processor, path, *flags, pump: bool = True):
    """Yield (base URL, scheduler) of a server started with the command's own ``flags``;
    ``pump=False`` leaves the scheduler stopped (requests wait until ``scheduler.start()``)."""
    import uvicorn

    args = build_parser().parse_args(["--model", str(path), "--temp", "0", "--served-model-name", MODEL, *flags])
    scheduler, resolver, config = server_parts(args, model, processor)
    if pump:
        scheduler.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(scheduler, resolver, config), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs=dict(sockets=[sock]), daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", scheduler
    finally:
        server.should_exit = True
        thread.join(10)
        scheduler.stop()
        sock.close()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return data_url(buf.getvalue(), "image/png")


def wait_idle(scheduler, timeout: float = 30) -> bool:
    deadline = time.time() + timeout
    while scheduler.busy and time.time() < deadline:
        time.sleep(0.02)
    return not scheduler.busy
