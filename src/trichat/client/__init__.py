"""The trichat client: a library for programs and bots (``library``) and the
terminal front end of ``trichat connect`` (``terminal``).

The events a client yields are the protocol's frames (``trichat.Message``,
``trichat.Joined``...), but for ``RoomList``, ``HistoryPage`` and the
``ConnectionEvent``s of a ``ReconnectingClient`` (``Disconnected``,
``Reconnecting``, ``Resumed``, ``ResumeFailed``), which are the client's
own. (``trichat.client.Resumed`` is such an event; ``trichat.Resumed`` is
the protocol's ``resumed`` frame.)
"""

from .library import (
    DEFAULT_PORT,
    MAX_SERVER_FRAME,
    MAX_UNCONFIRMED,
    Backoff,
    BadServerFrame,
    Client,
    ConnectionEvent,
    ConnectionLost,
    Disconnected,
    Event,
    HistoryPage,
    LoginRefused,
    NotSent,
    Reconnecting,
    ReconnectingClient,
    ReconnectingEvent,
    Resumed,
    ResumeFailed,
    RoomList,
    StreamOpener,
    connect,
    open_client,
    open_reconnecting_client,
    open_stream,
)

__all__ = [
    "DEFAULT_PORT",
    "MAX_SERVER_FRAME",
    "MAX_UNCONFIRMED",
    "Backoff",
    "BadServerFrame",
    "Client",
    "ConnectionEvent",
    "ConnectionLost",
    "Disconnected",
    "Event",
    "HistoryPage",
    "LoginRefused",
    "NotSent",
    "Reconnecting",
    "ReconnectingClient",
    "ReconnectingEvent",
    "ResumeFailed",
    "Resumed",
    "RoomList",
    "StreamOpener",
    "connect",
    "open_client",
    "open_reconnecting_client",
    "open_stream",
]
