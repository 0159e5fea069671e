"""The trichat server: sessions, the hub, mailboxes and writers, transports."""

from .app import ChatServer, ServerConfig

__all__ = ["ChatServer", "ServerConfig"]
