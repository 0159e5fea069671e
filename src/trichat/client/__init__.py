"""The trichat client: a library for programs and bots (``library``) and the
terminal front end of ``trichat connect`` (``terminal``)."""

from .library import (
    DEFAULT_PORT,
    MAX_SERVER_FRAME,
    BadServerFrame,
    Client,
    ConnectionLost,
    LoginRefused,
    connect,
    open_client,
)

__all__ = [
    "DEFAULT_PORT",
    "MAX_SERVER_FRAME",
    "BadServerFrame",
    "Client",
    "ConnectionLost",
    "LoginRefused",
    "connect",
    "open_client",
]
