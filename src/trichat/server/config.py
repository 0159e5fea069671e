"""What a server listens on and the limits it enforces."""

from __future__ import annotations

import math
import os
import ssl
from typing import Any

import attrs

from .. import __version__
from ..protocol.messages import MAX_NAME, MAX_TEXT

__all__ = ["PRESENCE_MODES", "ServerConfig"]


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 < value < math.inf:
        raise ValueError(f"{attribute.name} must be positive, not {value}")


def _not_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 <= value < math.inf:
        raise ValueError(f"{attribute.name} must not be negative, not {value}")


def _presence(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in PRESENCE_MODES:
        raise ValueError(f"{attribute.name} must be 'global' or 'rooms', not {value!r}")


PRESENCE_MODES = ("global", "rooms")


def _port(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be 0 to 65535, not {value}")


def _a_quarter_of_memory() -> int:
    """A quarter of this machine's memory (at least 64 MiB): what all the
    queues together may hold by default."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        memory = 4 << 30
    return max(64 << 20, memory // 4)


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
    max_queued_bytes: int = attrs.field(
        factory=_a_quarter_of_memory, validator=_not_negative
    )
    """Bytes all the outgoing queues together may hold (0: no limit);
    beyond it, the connections holding the most are dropped first."""
    max_queued_bytes_per_ip: int = attrs.field(
        default=64 << 20, validator=_not_negative
    )
    """Bytes the outgoing queues of one address's connections may hold
    together (0: no limit; loopback: none); beyond it, that address's
    connections holding the most are dropped first."""
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
    max_sender_wait: float = attrs.field(default=0.25, validator=_not_negative)
    """The longest a sender's reading pauses, in all, per read, for the
    recipients it filled past half to drain; after that it goes on, and a
    recipient that cannot keep up is dropped when its queue is full."""
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
    logins_per_ip: float = attrs.field(default=10.0, validator=_not_negative)
    """Logins a second from one address, on average (twice as many at
    once); 0: no limit. Loopback addresses have none: a presence storm
    from this machine is the operator's own."""
    full_collection_interval: float = attrs.field(default=0.0, validator=_not_negative)
    """Seconds between the cycle collector's full collections, which the
    server then runs on this timer instead of when Python would (see
    ``ChatServer._collect_garbage``); 0: Python's own schedule. ``trichat
    serve`` sets it; a program that embeds the server keeps its own."""
    max_rooms: int = attrs.field(default=50, validator=_not_negative)
    """How many rooms one user may be in at once; 0: no limit."""
    presence: str = attrs.field(default="global", validator=_presence)
    """``global``: every user is in ``*`` and hears of every login and exit
    (version 1's way); ``rooms``: users hear of each other only through the
    rooms they share, and there is no ``*`` (for large servers)."""
    db: str | None = None
    """The store's file (accounts, offline messages, history); ``:memory:``
    for one that keeps nothing after the server stops; None: no store at
    all (no accounts, nothing kept)."""
    history: int = attrs.field(default=1000, validator=_not_negative)
    """Messages kept per room, per ``*`` and per account's conversation
    (0: none)."""
    history_cache: int = attrs.field(default=64 << 20, validator=_not_negative)
    """About how many bytes of memory the newest 100 messages of the
    conversations used last may take: a page within them is answered
    without reading the file (0: every page reads it)."""
    offline_max: int = attrs.field(default=1000, validator=_not_negative)
    """Direct messages kept for one account while it is offline."""
    allow_plain_passwords: bool = False
    """Take passwords over plain TCP from addresses other than loopback."""
    resume_window: float = attrs.field(default=120.0, validator=_not_negative)
    """How long a protocol-2 session waits for a resume after its
    connection drops; 0: sessions end with their connections."""
    ssl_context: ssl.SSLContext | None = None

    @property
    def global_presence(self) -> bool:
        return self.presence == "global"

    def settings(self) -> tuple[tuple[str, str], ...]:
        """What ``hello`` tells a client about this server: its version and
        every limit a client must keep to, each as ``key=value`` (0: off or
        no limit). Without a store nothing is kept: ``history=0``."""
        return (
            ("server", f"trichat/{__version__}"),
            ("max-line", str(self.max_line)),
            ("max-text", str(MAX_TEXT)),
            ("max-name", str(MAX_NAME)),
            ("rate", f"{self.rate:g}"),
            ("burst", str(self.burst)),
            ("ping", f"{self.ping_interval:g}"),
            ("rooms", str(self.max_rooms)),
            ("logins-per-ip", f"{self.logins_per_ip:g}"),
            ("history", str(self.history if self.db is not None else 0)),
            ("offline-max", str(self.offline_max if self.db is not None else 0)),
            ("resume", f"{self.resume_window:g}"),
            ("presence", self.presence),
            ("queue-size", str(self.queue_size)),
            ("queue-bytes", str(self.queue_bytes)),
            ("max-queued-bytes", str(self.max_queued_bytes)),
            ("max-queued-bytes-per-ip", str(self.max_queued_bytes_per_ip)),
        )
