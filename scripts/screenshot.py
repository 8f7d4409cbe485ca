"""Drive the real window with a tiny random model and save assets/screenshot.png.

    xvfb-run -s "-screen 0 1280x900x24" python scripts/screenshot.py

(Needs the test extra: the tiny checkpoint is built with transformers. The model is random,
so its answer is noise; the window around it is the real one.)
"""

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlx_minicpmv  # noqa: E402,F401  (first: picks the BLAS)
from PySide6.QtCore import QEventLoop, QTimer  # noqa: E402
from PySide6.QtGui import QIcon  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from app.window import MainWindow  # noqa: E402
from mlx_minicpmv.convert import convert  # noqa: E402
from tests.checkpoints import build_checkpoint  # noqa: E402
from tests.media import make_video, scene_frame  # noqa: E402


def wait_for(signal, timeout_ms=120_000):
    loop = QEventLoop()
    signal.connect(loop.quit)
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()


def main():
    work = Path(tempfile.mkdtemp(prefix="minicpmv-shot-"))
    os.environ["MINICPMV_APP_HOME"] = str(work / "home")
    build_checkpoint(work / "hf", text=dict(linear_key_head_dim=32, linear_value_head_dim=32))
    model = convert(str(work / "hf"), str(work / "model"), dtype="float32")
    from PIL import Image

    photo = work / "street.png"
    Image.fromarray(scene_frame(3, 640, 400, scene=2)).save(photo)
    video = make_video(work / "drive.mp4", seconds=6, fps=10, width=320, height=180, scenes=(0, 1, 3))

    app = QApplication(sys.argv)
    app.setWindowIcon(QIcon(str(ROOT / "assets" / "icon-256.png")))
    window = MainWindow()
    window.resize(1180, 820)
    window.show()
    window.requestLoad.emit(str(model))
    wait_for(window.worker.loaded)
    window.settings.max_tokens = 48
    window.settings.temperature = 0.0
    window.composer.attach([str(photo)])
    window.composer.edit.setPlainText("What is in this picture?")
    window.composer.send()
    wait_for(window.worker.done)
    window.composer.attach([str(video)])
    wait_for(window.worker.frames)
    window.composer.edit.setPlainText("Summarise this video, with times.")
    app.processEvents()
    out = ROOT / "assets" / "screenshot.png"
    window.grab().save(str(out))
    print(f"saved {out}")
    window.close()


if __name__ == "__main__":
    main()
