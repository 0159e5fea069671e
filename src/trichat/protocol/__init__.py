"""The trichat protocol with no I/O: messages, the codec, the line buffer
and the sans-IO ``Connection``. Nothing here imports Trio."""

from ._codec import ProtocolError, Role, decode, encode
from .connection import CLOSED, NEED_DATA, Connection, State
from .messages import (
    BROADCAST,
    ClientMessage,
    Delivery,
    Error,
    ErrorCode,
    Exit,
    Login,
    Message,
    Ping,
    Pong,
    ServerMessage,
    Talk,
    UnknownErrorCode,
    name_key,
)

__all__ = [
    "BROADCAST",
    "CLOSED",
    "NEED_DATA",
    "ClientMessage",
    "Connection",
    "Delivery",
    "Error",
    "ErrorCode",
    "Exit",
    "Login",
    "Message",
    "Ping",
    "Pong",
    "ProtocolError",
    "Role",
    "ServerMessage",
    "State",
    "Talk",
    "UnknownErrorCode",
    "decode",
    "encode",
    "name_key",
]
