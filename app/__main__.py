"""``minicpmv-app [--model DIR_OR_REPO] [FILES…]``: the desktop app, with those files attached.

On macOS a file dropped on the Dock icon or opened with "Open With" arrives as a
``QFileOpenEvent`` and is attached the same way.
"""

import argparse
import sys
from pathlib import Path

from PySide6.QtCore import QEvent
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

ICON = Path(__file__).resolve().parents[1] / "assets" / "icon-256.png"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="minicpmv-app", description="Ask MiniCPM-V about images and videos in a desktop chat window.")
    parser.add_argument("--model", metavar="DIR_OR_REPO",
                        help="a model folder (made by convert.py, an mlx-community conversion or the original "
                             "checkpoint) or a Hugging Face repo id; default: the last one used")
    parser.add_argument("files", nargs="*", metavar="FILES", help="images or videos to attach to the first message")
    # Qt's own options (-platform, -style, …) pass through to QApplication.
    return parser.parse_known_args(argv)[0]


class Application(QApplication):
    """Files the system asks the app to open (Dock, Finder's "Open With") go to the window."""

    def __init__(self, argv):
        super().__init__(argv)
        self.window = None
        self.pending = []

    def event(self, event):
        if event.type() == QEvent.FileOpen:
            path = event.file()
            if self.window is not None:
                self.window.open_files([path])
            else:
                self.pending.append(path)
            return True
        return super().event(event)


def create_window(args: argparse.Namespace, app: QApplication):
    """The window for these arguments (the test suite starts the app through this too)."""
    from .window import MainWindow

    files = [str(Path(f).expanduser().resolve()) for f in args.files] + list(getattr(app, "pending", []))
    window = MainWindow(files=files, model=args.model)
    if isinstance(app, Application):
        app.window, app.pending = window, []
    return window


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)  # --help exits here, before any window
    import mlx_minicpmv  # noqa: F401  (first: picks the BLAS before mlx.core is loaded by the worker)

    app = Application(sys.argv[:1] + (sys.argv[1:] if argv is None else list(argv)))
    app.setApplicationName("MiniCPM-V")
    app.setOrganizationName("mlx-minicpmv")
    app.setApplicationDisplayName("MiniCPM-V")
    if ICON.exists():
        app.setWindowIcon(QIcon(str(ICON)))
    window = create_window(args, app)
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
