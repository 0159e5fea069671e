"""The trichat client: a library for programs and bots (``library``) and the
terminal front end of ``trichat connect`` (``terminal``).

The events a client yields are the protocol's frames (``trichat.Message``,
``trichat.Joined``...), but for ``RoomList`` and ``HistoryPage``, which are
the client's own.
"""

from .library import (
    DEFAULT_PORT,
    MAX_SERVER_FRAME,
    BadServerFrame,
    Client,
    ConnectionLost,
    Event,
    HistoryPage,
    LoginRefused,
    RoomList,
    connect,
    open_client,
)

__all__ = [
    "DEFAULT_PORT",
    "MAX_SERVER_FRAME",
    "BadServerFrame",
    "Client",
    "ConnectionLost",
    "Event",
    "HistoryPage",
    "LoginRefused",
    "RoomList",
    "connect",
    "open_client",
]
