"""trichat: a many-user chat server and terminal client on Trio."""

from .protocol._codec import ProtocolError, Role, decode, encode
from .protocol.connection import CLOSED, NEED_DATA, Connection, State
from .protocol.messages import (
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
    name_key,
)

__version__ = "1.0.0"

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
    "__version__",
    "decode",
    "encode",
    "name_key",
]
