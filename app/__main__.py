import sys
from pathlib import Path

from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

ICON = Path(__file__).resolve().parents[1] / "assets" / "icon-256.png"


def main() -> int:
    import mlx_minicpmv  # noqa: F401  (first: picks the BLAS before mlx.core is loaded by the worker)

    from .window import MainWindow

    app = QApplication(sys.argv)
    app.setApplicationName("MiniCPM-V")
    app.setOrganizationName("mlx-minicpmv")
    if ICON.exists():
        app.setWindowIcon(QIcon(str(ICON)))
    window = MainWindow()
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
