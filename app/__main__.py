import sys

from PySide6.QtWidgets import QApplication


def main() -> int:
    import mlx_minicpmv  # noqa: F401  (first: picks the BLAS before mlx.core is loaded by the worker)

    from .window import MainWindow

    app = QApplication(sys.argv)
    app.setApplicationName("MiniCPM-V")
    app.setOrganizationName("mlx-minicpmv")
    window = MainWindow()
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
