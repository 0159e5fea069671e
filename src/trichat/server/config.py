"""What a server listens on and the limits it enforces."""

from __future__ import annotations

import math
import ssl
from typing import Any

import attrs

__all__ = ["ServerConfig"]


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 < value < math.inf:
        raise ValueError(f"{attribute.name} must be positive, not {value}")


def _not_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 <= value < math.inf:
        raise ValueError(f"{attribute.name} must not be negative, not {value}")


def _port(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be 0 to 65535, not {value}")


@attrs.frozen(kw_only=True)
class ServerConfig:
    """Where the server listens and the limits it enforces.

    Times are in seconds. ``max_per_ip``, ``rate`` and ``ping_interval`` of
    0 switch that limit off.
    """

    host: str = "127.0.0.1"
    port: int = attrs.field(default=8089, validator=_port)
    max_line: int = attrs.field(default=4096, validator=attrs.validators.ge(64))
    queue_size: int = attrs.field(default=1024, validator=_positive)
    queue_bytes: int = attrs.field(default=1 << 20, validator=_positive)
    max_clients: int = attrs.field(default=10_000, validator=_positive)
    max_per_ip: int = attrs.field(default=1000, validator=_not_negative)
    login_timeout: float = attrs.field(default=10.0, validator=_positive)
    ping_interval: float = attrs.field(default=60.0, validator=_not_negative)
    ping_timeout: float = attrs.field(default=30.0, validator=_positive)
    rate: float = attrs.field(default=100.0, validator=_not_negative)
    burst: int = attrs.field(default=200, validator=_positive)
    flood_grace: float = attrs.field(default=5.0, validator=_positive)
    presence_delay: float = attrs.field(default=0.1, validator=_not_negative)
    """Longest time logins and exits may wait to be sent together (with few
    users online they wait much less); 0: never."""
    stall_timeout: float = attrs.field(default=1.0, validator=_positive)
    """How long a sender waits for a congested recipient that reads nothing."""
    close_timeout: float = attrs.field(default=0.5, validator=_positive)
    """How long a closing connection may take to flush and say goodbye (and
    over TLS as long again to send its close_notify)."""
    max_refusing: int = attrs.field(
        default=100, validator=[attrs.validators.instance_of(int), _positive]
    )
    """Refused connections held at once while their error is delivered (up
    to close_timeout each, twice that over TLS); beyond that, one gets its
    error only if it can be written at once, and is closed without waiting
    (over TLS, with no error: that would take a handshake)."""
    shared_reader: bool = True
    """Watch the plain sockets of connections with nothing to read from one
    task, which reads and handles what they send as a select loop would
    (see _shared_reader); False: each connection's task waits for its own.
    Linux only: elsewhere each task always waits for its own."""
    ssl_context: ssl.SSLContext | None = None
