"""Render the real window into assets/ for the README: the empty state (serving on localhost), the
settings, a chat with an image whose answer has boxes and a video, light and dark, and a video
summary's timeline.

    xvfb-run -s "-screen 0 1400x1000x24" python scripts/screenshot.py

The conversations are staged (the test suite's tiny model writes noise, and no real checkpoint
can be downloaded here): the text is written below, while the window, the cards, the boxes drawn
from the answer, the chips, the frames of the video and the timeline's pictures are the app's own,
decoded and drawn by it. Needs Xvfb (``apt-get install xvfb``) and, for a font close to the Mac's,
``fonts-inter``.
"""

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlx_minicpmv  # noqa: E402,F401  (first: picks the BLAS)
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402
from PySide6.QtCore import QEventLoop, QTimer  # noqa: E402
from PySide6.QtGui import QIcon  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from app.history import Attachment, Conversation, Message  # noqa: E402
from app.window import MainWindow  # noqa: E402
from tests.media import make_video  # noqa: E402

ASSETS = ROOT / "assets"


def street_photo(path: Path) -> Path:
    """A simple painted scene (sky, hills, road, a red car, a ball) to draw boxes on."""
    w, h = 960, 640
    y = np.linspace(0, 1, h)[:, None, None]
    sky = (np.array([120, 180, 240]) * (1 - y) + np.array([220, 235, 250]) * y).astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(sky, (h, w, 3)).copy())
    d = ImageDraw.Draw(image)
    d.ellipse((-200, 300, 600, 760), fill=(98, 160, 90))
    d.ellipse((380, 330, 1200, 800), fill=(80, 140, 78))
    d.polygon([(0, 520), (960, 470), (960, 640), (0, 640)], fill=(70, 72, 80))
    d.line([(0, 585), (960, 555)], fill=(235, 235, 235), width=6)
    d.rounded_rectangle((430, 430, 730, 540), 30, fill=(214, 40, 48))  # the car
    d.rounded_rectangle((485, 380, 660, 450), 28, fill=(200, 34, 42))
    d.rectangle((505, 392, 640, 440), fill=(170, 210, 240))
    for cx in (490, 670):
        d.ellipse((cx - 36, 505, cx + 36, 577), fill=(25, 25, 28))
        d.ellipse((cx - 14, 527, cx + 14, 555), fill=(160, 160, 165))
    d.ellipse((180, 520, 250, 590), fill=(250, 200, 40))  # the ball
    d.arc((180, 520, 250, 590), 200, 340, fill=(230, 120, 30), width=5)
    d.ellipse((760, 80, 860, 180), fill=(255, 236, 150))  # the sun
    image = image.filter(ImageFilter.GaussianBlur(0.8))
    image.save(path)
    return path


def wait(signal, timeout_ms=60_000):
    loop = QEventLoop()
    signal.connect(loop.quit)
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()


def settle(app, ms=400):
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()
    app.processEvents()


def chat(photo: Path, video: Path) -> Conversation:
    c = Conversation(title="The car and the ball")
    c.add(Message("user", "Find the red car and the ball.", [Attachment(str(photo), "image")]))
    c.add(Message("assistant", "There is <ref>a red car</ref><box>448 585 766 906</box> parked on the road and "
                               "<ref>a yellow ball</ref><box>187 810 262 925</box> at the roadside, to the left.\n\n"
                               "Boxes are on the 0–1000 scale the model answers in; `grounding.parse` reads them:\n"
                               "```python\nfrom mlx_minicpmv import grounding\n"
                               "boxes = grounding.parse(answer)  # [Box('a red car', 448, 585, 766, 906), ...]\n```",
                  stats="1,021 prompt tokens · 61 tokens",
                  regions=[("a red car", "box", (448, 585, 766, 906)), ("a yellow ball", "box", (187, 810, 262, 925))]))
    c.add(Message("user", "And what happens in this clip?", [Attachment(str(video), "video")]))
    c.add(Message("assistant", "A short drive in three shots: an **orange** title card, then a **blue** street, then "
                               "a **green** park, each with moving stripes.", stats="1,742 prompt tokens · 31 tokens"))
    return c


def summary_chat(video: Path) -> Conversation:
    chapters = [dict(start=0.0, end=4.0, title="An orange title card", segments=[
                    dict(start=0.0, end=4.0, text="Orange stripes move across the frame.", frame_times=[0.0])]),
                dict(start=4.0, end=8.0, title="The blue street", segments=[
                    dict(start=4.0, end=8.0, text="The picture cuts to blue with bright bands.", frame_times=[4.0])]),
                dict(start=8.0, end=12.0, title="Into the green park", segments=[
                    dict(start=8.0, end=12.0, text="A green scene closes the clip.", frame_times=[8.0])])]
    summary = dict(video=str(video), duration=12.0, title="drive", overview="Three scenes, each with moving stripes: "
                   "orange, blue, then green.", chapters=chapters, warnings=[])
    from app.summary_view import chapters_markdown

    c = Conversation(title="Summary of drive.mp4")
    c.add(Message("user", "Summarise this video.", [Attachment(str(video), "video")]))
    c.add(Message("assistant", chapters_markdown(chapters, summary["overview"]), stats="3 chapters", summary=summary))
    return c


def shoot(window, app, name: str) -> None:
    settle(app)
    out = ASSETS / name
    window.grab().save(str(out))
    print(f"saved {out}")


def main():
    work = Path(tempfile.mkdtemp(prefix="minicpmv-shot-"))
    os.environ["MINICPMV_APP_HOME"] = str(work / "home")
    photo = street_photo(work / "street.png")
    video = make_video(work / "drive.mp4", seconds=12, fps=10, width=320, height=180, scenes=(0, 1, 2))

    app = QApplication(sys.argv)
    app.setApplicationName("MiniCPM-V")
    app.setWindowIcon(QIcon(str(ASSETS / "icon-256.png")))
    window = MainWindow()
    window.resize(1240, 820)
    window.show()
    window.header.set_model("MiniCPM-V-4.6", "bf16", 0)
    window.pages.setCurrentIndex(1)
    for title in ("Receipt from the café", "What breed is this dog?", "Slides from Monday's talk"):
        c = Conversation(title=title)
        c.add(Message("user", title))
        window.history.save(c)
    window.refresh_chats()
    window.settings.serve, window.settings.serve_port = True, 8080
    window.on_serving("http://127.0.0.1:8080/v1")  # staged: Settings → "Serve on localhost" (app/local_server.py)
    shoot(window, app, "app-empty.png")
    window.open_settings()
    settle(app)
    window.settings_dialog.grab().save(str(ASSETS / "app-settings.png"))
    print(f"saved {ASSETS / 'app-settings.png'}")
    window.settings_dialog.reject()

    window.conversation = chat(photo, video)
    window.history.save(window.conversation)
    window.refresh_chats()
    window.render()
    window.composer.attach([str(video)])
    wait(window.worker.frames)
    window.composer.edit.setPlainText("Which scene is longest?")
    settle(app)
    settle(app)
    window.view.stick = False  # show the top: the picture and its boxes
    window.view.scroll.verticalScrollBar().setValue(260)
    shoot(window, app, "app-chat-light.png")
    shoot(window, app, "screenshot.png")
    window.theme.set_appearance("dark")
    settle(app)
    window.view.stick = False
    window.view.scroll.verticalScrollBar().setValue(260)
    shoot(window, app, "app-chat-dark.png")

    window.composer.clear()
    window.conversation = summary_chat(video)
    window.history.save(window.conversation)
    window.refresh_chats()
    window.render()
    wait(window.worker.thumbnails)
    shoot(window, app, "app-summary-dark.png")
    window.theme.set_appearance("light")
    window.render()
    wait(window.worker.thumbnails, 5000)
    shoot(window, app, "app-summary-light.png")
    window.close()


if __name__ == "__main__":
    main()
