"""The list of chats: New chat, search, and the conversations newest first."""

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem, QMenu, QToolButton,
                               QVBoxLayout, QWidget)

from . import theme
from .icons import icon

ID_ROLE = Qt.UserRole


class ChatList(QListWidget):
    deleteRequested = Signal(str)

    def keyPressEvent(self, event):
        if event.key() in (Qt.Key_Delete, Qt.Key_Backspace) and self.currentItem() is not None:
            self.deleteRequested.emit(self.currentItem().data(ID_ROLE))
            return
        super().keyPressEvent(event)

    def contextMenuEvent(self, event):
        item = self.itemAt(event.pos())
        if item is not None:
            menu = QMenu(self)
            menu.addAction("Delete chat", lambda: self.deleteRequested.emit(item.data(ID_ROLE)))
            menu.exec(event.globalPos())


class Sidebar(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("sidebar")
        self.setMinimumWidth(220)
        title = QLabel("MiniCPM-V")
        title.setObjectName("title")
        self.new_button = QToolButton()
        self.new_button.setAccessibleName("New chat")
        self.new_button.setToolTip("New chat (⌘N)")
        self.new_button.setIconSize(QSize(20, 20))
        self.settings_button = QToolButton()
        self.settings_button.setAccessibleName("Settings")
        self.settings_button.setToolTip("Settings (⌘,)")
        self.settings_button.setIconSize(QSize(18, 18))
        self.search = QLineEdit(placeholderText="Search chats")
        self.search.setAccessibleName("Search chats")
        self.search.setClearButtonEnabled(True)
        self.search.setAcceptDrops(False)
        self.chats = ChatList()
        self.chats.setObjectName("chats")
        self.chats.setAccessibleName("Chats")
        self.chats.setTextElideMode(Qt.ElideRight)
        top = QHBoxLayout()
        top.addWidget(title)
        top.addStretch()
        top.addWidget(self.settings_button)
        top.addWidget(self.new_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 14, 12, 12)
        layout.setSpacing(10)
        layout.addLayout(top)
        layout.addWidget(self.search)
        layout.addWidget(self.chats, 1)
        self.restyle()

    def restyle(self) -> None:
        c = theme.colors()
        self.new_button.setIcon(icon("edit", c.text, 20))
        self.settings_button.setIcon(icon("settings", c.text, 18))

    def set_chats(self, conversations, current_id: str) -> None:
        self.chats.blockSignals(True)
        self.chats.clear()
        for conversation in conversations:
            item = QListWidgetItem(conversation.title)
            item.setData(ID_ROLE, conversation.id)
            item.setToolTip(conversation.title)
            self.chats.addItem(item)
            if conversation.id == current_id:
                self.chats.setCurrentItem(item)
        self.chats.blockSignals(False)
