"""Light and dark: one palette in one place, following the system's colour scheme live.

Every colour the app paints comes from ``Colors``; ``Theme.apply`` sets Qt's palette and the
one style sheet from it, and widgets that paint themselves read ``theme.colors`` when they paint.
"""

from dataclasses import dataclass

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QColor, QFont, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication


@dataclass(frozen=True)
class Colors:
    window: str  # the conversation's background
    sidebar: str
    surface: str  # cards: the model's answers, the composer
    user: str  # your own messages
    user_text: str
    text: str
    muted: str  # secondary text: times, sizes, statistics
    border: str
    accent: str
    accent_text: str
    hover: str
    code: str  # code block background
    overlay: str  # the drop overlay's tint
    danger: str
    region_colors: tuple  # boxes drawn on images, in turn
    pygments: str  # the Pygments style for code


LIGHT = Colors(window="#ffffff", sidebar="#f5f5f7", surface="#f5f5f7", user="#0a84ff", user_text="#ffffff",
               text="#1d1d1f", muted="#6e6e73", border="#e3e3e8", accent="#0a84ff", accent_text="#ffffff",
               hover="#e9e9ee", code="#f6f8fa", overlay="#0a84ff", danger="#d70015",
               region_colors=("#ff375f", "#30d158", "#0a84ff", "#ff9f0a", "#bf5af2", "#64d2ff"),
               pygments="friendly")
DARK = Colors(window="#1e1e20", sidebar="#161618", surface="#2a2a2d", user="#0a84ff", user_text="#ffffff",
              text="#f2f2f7", muted="#98989f", border="#38383c", accent="#0a84ff", accent_text="#ffffff",
              hover="#333336", code="#161618", overlay="#0a84ff", danger="#ff453a",
              region_colors=("#ff375f", "#30d158", "#64d2ff", "#ffd60a", "#bf5af2", "#ff9f0a"),
              pygments="monokai")


_active = LIGHT


def colors() -> Colors:
    """The colours in use now, for widgets that paint themselves."""
    return _active


def style_sheet(c: Colors) -> str:
    return f"""
    QMainWindow, QDialog {{ background: {c.window}; color: {c.text}; }}
    QWidget#sidebar {{ background: {c.sidebar}; border-right: 1px solid {c.border}; }}
    QWidget#chat, QWidget#picker, QScrollArea#conversation, QWidget#column {{ background: {c.window}; }}
    QLabel {{ color: {c.text}; }}
    QLabel[muted="true"] {{ color: {c.muted}; }}
    QLabel#title {{ font-size: 15px; font-weight: 600; }}
    QLabel#heading {{ font-size: 26px; font-weight: 700; }}
    QFrame#assistant {{ background: transparent; }}
    QFrame#user {{ background: {c.user}; border-radius: 18px; }}
    QFrame#user QLabel {{ color: {c.user_text}; }}
    QFrame#code {{ background: {c.code}; border: 1px solid {c.border}; border-radius: 10px; }}
    QFrame#code QLabel#language {{ color: {c.muted}; font-size: 11px; }}
    QFrame#composer {{ background: {c.surface}; border: 1px solid {c.border}; border-radius: 18px; }}
    QFrame#chip {{ background: {c.window}; border: 1px solid {c.border}; border-radius: 10px; }}
    QFrame#card {{ background: {c.surface}; border: 1px solid {c.border}; border-radius: 14px; }}
    QFrame#card:hover {{ border-color: {c.accent}; }}
    QFrame#header {{ background: {c.window}; border-bottom: 1px solid {c.border}; }}
    QFrame#banner {{ background: {c.surface}; border: 1px solid {c.danger}; border-radius: 10px; }}
    QPlainTextEdit#message {{ background: transparent; border: none; color: {c.text}; font-size: 14px; }}
    QLineEdit {{ background: {c.hover}; border: 1px solid transparent; border-radius: 8px; padding: 5px 8px;
                 color: {c.text}; selection-background-color: {c.accent}; }}
    QLineEdit:focus {{ border-color: {c.accent}; }}
    QListWidget#chats {{ background: transparent; border: none; color: {c.text}; outline: none; }}
    QListWidget#chats::item {{ padding: 7px 10px; border-radius: 8px; margin: 1px 0; }}
    QListWidget#chats::item:hover {{ background: {c.hover}; }}
    QListWidget#chats::item:selected {{ background: {c.accent}; color: {c.accent_text}; }}
    QListWidget#models {{ background: {c.surface}; border: 1px solid {c.border}; border-radius: 12px;
                          color: {c.text}; outline: none; padding: 4px; }}
    QListWidget#models::item {{ padding: 8px; border-radius: 8px; }}
    QListWidget#models::item:selected {{ background: {c.accent}; color: {c.accent_text}; }}
    QPushButton {{ background: {c.surface}; color: {c.text}; border: 1px solid {c.border}; border-radius: 8px;
                   padding: 6px 14px; }}
    QPushButton:hover {{ background: {c.hover}; }}
    QPushButton:focus {{ border-color: {c.accent}; }}
    QPushButton:disabled {{ color: {c.muted}; }}
    QPushButton#primary {{ background: {c.accent}; color: {c.accent_text}; border: none; font-weight: 600; }}
    QPushButton#send {{ background: {c.accent}; border: none; border-radius: 16px; }}
    QPushButton#send:disabled {{ background: {c.border}; }}
    QPushButton#stop {{ background: {c.text}; border: none; border-radius: 16px; }}
    QToolButton {{ background: transparent; border: none; border-radius: 7px; padding: 4px; color: {c.muted}; }}
    QToolButton:hover {{ background: {c.hover}; color: {c.text}; }}
    QToolButton:focus {{ background: {c.hover}; }}
    QToolButton#prompt {{ background: {c.surface}; border: 1px solid {c.border}; border-radius: 12px;
                          padding: 10px 14px; color: {c.text}; text-align: left; }}
    QToolButton#prompt:hover {{ border-color: {c.accent}; }}
    QToolButton#model {{ background: {c.surface}; border: 1px solid {c.border}; border-radius: 14px;
                         padding: 4px 12px; color: {c.text}; }}
    QProgressBar {{ background: {c.hover}; border: none; border-radius: 2px; max-height: 4px; }}
    QProgressBar::chunk {{ background: {c.accent}; border-radius: 2px; }}
    QScrollBar:vertical {{ background: transparent; width: 10px; margin: 2px; }}
    QScrollBar::handle:vertical {{ background: {c.border}; border-radius: 3px; min-height: 30px; }}
    QScrollBar::add-line, QScrollBar::sub-line {{ height: 0; }}
    QScrollBar::add-page, QScrollBar::sub-page {{ background: transparent; }}
    QScrollBar:horizontal {{ background: transparent; height: 10px; margin: 2px; }}
    QScrollBar::handle:horizontal {{ background: {c.border}; border-radius: 3px; min-width: 30px; }}
    QSplitter::handle {{ background: {c.border}; width: 1px; }}
    QMenu {{ background: {c.surface}; color: {c.text}; border: 1px solid {c.border}; border-radius: 8px; padding: 4px; }}
    QMenu::item {{ padding: 5px 18px; border-radius: 5px; }}
    QMenu::item:selected {{ background: {c.accent}; color: {c.accent_text}; }}
    QToolTip {{ background: {c.surface}; color: {c.text}; border: 1px solid {c.border}; }}
    """


def palette(c: Colors) -> QPalette:
    p = QPalette()
    for role, value in ((QPalette.Window, c.window), (QPalette.WindowText, c.text), (QPalette.Base, c.window),
                        (QPalette.AlternateBase, c.surface), (QPalette.Text, c.text), (QPalette.Button, c.surface),
                        (QPalette.ButtonText, c.text), (QPalette.Highlight, c.accent),
                        (QPalette.HighlightedText, c.accent_text), (QPalette.PlaceholderText, c.muted),
                        (QPalette.Link, c.accent), (QPalette.ToolTipBase, c.surface), (QPalette.ToolTipText, c.text)):
        p.setColor(role, QColor(value))
    return p


class Theme(QObject):
    """The app's colours. ``appearance`` is "system", "light" or "dark"; with "system" it follows
    the platform's colour scheme as it changes."""

    changed = Signal()

    def __init__(self, appearance: str = "system"):
        super().__init__()
        self.appearance = appearance
        self.system_dark = QGuiApplication.styleHints().colorScheme() == Qt.ColorScheme.Dark
        self.colors = LIGHT
        QGuiApplication.styleHints().colorSchemeChanged.connect(self.on_system_scheme)

    @property
    def dark(self) -> bool:
        return self.appearance == "dark" or (self.appearance == "system" and self.system_dark)

    def on_system_scheme(self, scheme) -> None:
        self.system_dark = scheme == Qt.ColorScheme.Dark
        self.apply()

    def set_appearance(self, appearance: str) -> None:
        self.appearance = appearance if appearance in ("system", "light", "dark") else "system"
        self.apply()

    def apply(self) -> None:
        global _active
        self.colors = _active = DARK if self.dark else LIGHT
        app = QApplication.instance()
        app.setFont(ui_font())
        app.setPalette(palette(self.colors))
        app.setStyleSheet(style_sheet(self.colors))
        self.changed.emit()


def ui_font() -> QFont:
    """The system's font on a Mac; elsewhere Inter where installed (close to it), else the default."""
    font = QGuiApplication.font()
    if not font.family().startswith((".AppleSystem", "SF")):
        from PySide6.QtGui import QFontDatabase

        if "Inter" in QFontDatabase.families():
            font = QFont("Inter")
    font.setPointSizeF(max(font.pointSizeF(), 10.5))
    return font
