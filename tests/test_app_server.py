"""Settings → "Serve on localhost": the model the app has loaded answers the official ``openai``
client, every model call on the app's worker thread, the window's own chat still answering,
and quitting frees the port."""

import socket
import threading

import httpx
import openai
import pytest
from openai import OpenAI
from PySide6.QtWidgets import QDialogButtonBox

from mlx_minicpmv import generate
from tests.app_driver import WAIT, ask, open_window
from tests.media import noise_image
from tests.server_harness import png_url

MAX_TOKENS = 8


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_background(qtbot, call):
    """Run a blocking client call off the GUI thread (the window keeps running) and return its result."""
    out = {}

    def run():
        try:
            out["value"] = call()
        except Exception as e:  # noqa: BLE001 - re-raised on the test's thread
            out["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    qtbot.waitUntil(lambda: not thread.is_alive(), timeout=WAIT)
    if "error" in out:
        raise out["error"]
    return out["value"]


def turn_on_server(qtbot, window, port: int, key: str) -> None:
    window.open_settings()
    dialog = window.settings_dialog
    dialog.serve.setChecked(True)
    dialog.port.setValue(port)
    dialog.key.setText(key)
    with qtbot.waitSignal(window.local_server.started, timeout=WAIT):
        dialog.buttons.button(QDialogButtonBox.Ok).click()
    qtbot.waitUntil(window.serving.isVisible, timeout=WAIT)


def test_serve_on_localhost_shares_the_apps_model_through_its_worker(qtbot, home, tiny):
    window = open_window(qtbot, home, tiny.mlx_path)
    port = free_port()
    turn_on_server(qtbot, window, port, "secret")
    address = f"http://127.0.0.1:{port}/v1"
    assert window.serving.text() == f"Serving {address} · key required"
    assert window.settings.serve and window.settings.serve_port == port

    worker_thread = window.worker.submit(lambda model, processor: threading.get_ident()).result(WAIT / 1000)
    model, processor = tiny.load()
    cls = type(model.language_model)
    original, callers = cls.__call__, set()

    def recording(self, *a, **k):
        callers.add(threading.get_ident())
        return original(self, *a, **k)

    client = OpenAI(base_url=address, api_key="secret", max_retries=0, timeout=WAIT / 1000)
    picture = noise_image(120, 90, seed=4)
    request = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_url(picture)}},
                                            {"type": "text", "text": "What is it?"}]}]
    cls.__call__ = recording
    try:
        assert [m.id for m in in_background(qtbot, client.models.list).data] == [tiny.mlx_path.name]
        reply = in_background(qtbot, lambda: client.chat.completions.create(
            model=tiny.mlx_path.name, messages=request, max_tokens=MAX_TOKENS, temperature=0))
        # A streamed request while the window answers its own question: both are answered.
        pieces = []
        streaming = threading.Thread(target=lambda: pieces.extend(
            c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model=tiny.mlx_path.name, messages=request, max_tokens=MAX_TOKENS, temperature=0, stream=True)
            if c.choices))
        streaming.start()
        reason, _ = ask(qtbot, window, "Hello there")
        qtbot.waitUntil(lambda: not streaming.is_alive(), timeout=WAIT)
    finally:
        cls.__call__ = original
    assert callers == {worker_thread}, "every model call ran on the app's worker thread"
    library = [{"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": "What is it?"}]}]
    expected = generate(model, processor, library, max_tokens=MAX_TOKENS, temperature=0.0)
    assert reply.choices[0].message.content == expected and "".join(pieces) == expected
    assert reply.model == tiny.mlx_path.name and reason in ("stop", "length")

    with pytest.raises(openai.AuthenticationError, match="wrong API key"):
        in_background(qtbot, lambda: OpenAI(base_url=address, api_key="guess", max_retries=0).models.list())

    window.close()  # quitting stops the server: the port is free again
    with pytest.raises(httpx.ConnectError):
        httpx.get(address + "/models", timeout=5)
    with socket.socket() as s:  # (the address is reusable as a restarted server's would be, not held)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


def test_the_server_follows_the_loaded_model_and_says_why_it_cannot_start(qtbot, home, tiny, alt_tiny):
    window = open_window(qtbot, home, tiny.mlx_path)
    port = free_port()
    turn_on_server(qtbot, window, port, "")
    address = f"http://127.0.0.1:{port}/v1"
    assert window.serving.text() == f"Serving {address}"
    client = OpenAI(base_url=address, api_key="none", max_retries=0, timeout=WAIT / 1000)
    assert [m.id for m in in_background(qtbot, client.models.list).data] == [tiny.mlx_path.name]

    with qtbot.waitSignal(window.local_server.started, timeout=WAIT) as started:
        window.requestLoad.emit(str(alt_tiny.mlx_path))  # another model: the server moves to it
    assert started.args == [address]
    assert [m.id for m in in_background(qtbot, client.models.list).data] == [alt_tiny.mlx_path.name]

    with socket.socket() as taken:  # a port another program holds: a message, and the app serves nothing
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        window.open_settings()
        window.settings_dialog.port.setValue(busy)
        with qtbot.waitSignal(window.local_server.failed, timeout=WAIT) as failed:
            window.settings_dialog.buttons.button(QDialogButtonBox.Ok).click()
        assert f"cannot listen on 127.0.0.1:{busy}" in failed.args[0] and "choose another port" in failed.args[0]
        qtbot.waitUntil(lambda: not window.serving.isVisible(), timeout=WAIT)
        assert "choose another port" in window.statusBar().currentMessage()
    turn_on_server(qtbot, window, port, "")  # the port is free again: OK in Settings tries again
    assert [m.id for m in in_background(qtbot, client.models.list).data] == [alt_tiny.mlx_path.name]
    window.open_settings()
    window.settings_dialog.serve.setChecked(False)
    with qtbot.waitSignal(window.local_server.stopped, timeout=WAIT):
        window.settings_dialog.buttons.button(QDialogButtonBox.Ok).click()
    with pytest.raises(httpx.ConnectError):
        httpx.get(address + "/models", timeout=5)
