"""One ``trichat bench`` run's parameters, checked (``Settings``)."""

from __future__ import annotations

import argparse
import random
import string
from dataclasses import dataclass

from ..client.library import DEFAULT_PORT
from ..protocol.messages import MAX_NAME, MAX_TEXT, check_name, check_room

__all__ = ["DEFAULT_RATES", "PROTOCOLS", "SCENARIOS", "Settings"]

SCENARIOS = ("dm", "fanout", "rate", "idle", "rooms")
PROTOCOLS = (1, 2)
DEFAULT_RATES = {"rooms": 200.0}
"""``--rate`` when not given, by scenario; 20,000 msg/s for the others."""
_DEFAULT_RATE = 20000.0


@dataclass(frozen=True, kw_only=True)
class Settings:
    """One run's parameters; the command line's flags, checked."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    scenario: str = "dm"
    pairs: int = 50
    in_flight: int = 16
    receivers: int = 200
    connections: int = 2000
    broadcasts: int = 5
    users: int = 200
    rooms: int = 20
    rooms_each: int = 3
    rate: float | None = None
    """rate, rooms: messages/s offered in all; None for the scenario's
    default (``offered`` is the figure either way)."""
    protocol: int = 2
    shared_reader: bool = True
    """rooms: one task reads every connection (``reader.SharedReader``)."""
    duration: float = 10.0
    warmup: float = 1.0
    drain: float = 5.0
    settle: float = 120.0
    login_timeout: float = 120.0
    deadline: float = 300.0
    size: int = 64
    conc: int = 8
    pid: int | None = None
    prefix: str = "bxx"
    json: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}")
        counts = ("pairs", "in_flight", "receivers", "connections", "conc")
        for name in (*counts, "users", "rooms", "rooms_each"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.scenario == "rooms" and self.rooms_each > self.rooms:
            raise ValueError("rooms_each must not be more than rooms")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be 1 or 2, not {self.protocol}")
        if self.broadcasts < 0:
            raise ValueError("broadcasts must not be negative")
        if not 1 <= self.size <= MAX_TEXT:
            raise ValueError(f"size must be 1 to {MAX_TEXT} (characters of TEXT)")
        if not self.offered > 0:
            raise ValueError("rate must be positive")
        for name in ("duration", "login_timeout", "deadline"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in ("warmup", "drain", "settle"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")
        if self.pid is not None and self.pid < 1:
            raise ValueError("pid must be positive")
        most = max(self.pairs, self.receivers, self.connections, self.users)
        longest = self.name("s", most)
        if len(longest) > MAX_NAME:
            raise ValueError(f"prefix too long: names like {longest!r} break the rules")
        check_name(longest)
        if self.scenario == "rooms":
            check_room(self.room(self.rooms - 1))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """Settings from ``add_arguments``' options; ValueError if unusable."""
        prefix = args.prefix
        if prefix is None:
            prefix = "b" + "".join(random.choices(string.ascii_lowercase, k=2))
        return cls(
            host=args.host,
            port=args.port,
            scenario=args.scenario,
            pairs=args.pairs,
            in_flight=args.in_flight,
            receivers=args.receivers,
            connections=args.connections,
            broadcasts=args.broadcasts,
            users=args.users,
            rooms=args.rooms,
            rooms_each=args.rooms_each,
            rate=args.rate,
            protocol=args.protocol,
            shared_reader=args.shared_reader,
            duration=args.duration,
            warmup=args.warmup,
            drain=args.drain,
            settle=args.settle,
            login_timeout=args.login_timeout,
            deadline=args.deadline,
            size=args.size,
            conc=args.conc,
            pid=args.pid,
            prefix=prefix,
            json=args.json,
            quiet=args.quiet,
        )

    def name(self, role: str, index: int) -> str:
        """The user name of the *index*-th user playing *role*."""
        return f"{self.prefix}{role}{index}"

    def room(self, index: int) -> str:
        """The name of the rooms scenario's *index*-th room."""
        return f"#{self.prefix}{index}"

    def rooms_of(self, user: int) -> list[int]:
        """The rooms (indexes) the rooms scenario's *user*-th user joins, in
        the order it joins them and then talks to them.

        The j-th room of user u is ``(u + j * (rooms // rooms_each)) %
        rooms``: for each j that deals the users out to the rooms in turn,
        so every room has ``users * rooms_each / rooms`` members give or
        take ``rooms_each``, and a user's rooms are all different.
        """
        step = self.rooms // self.rooms_each
        return [(user + j * step) % self.rooms for j in range(self.rooms_each)]

    @property
    def offered(self) -> float:
        """The messages/s the run offers in all: ``rate``, or the
        scenario's default."""
        if self.rate is None:
            return DEFAULT_RATES.get(self.scenario, _DEFAULT_RATE)
        return self.rate

    @property
    def sockets(self) -> int:
        """How many connections the run opens."""
        if self.scenario == "idle":
            return self.connections
        if self.scenario == "rooms":
            return self.users
        if self.scenario == "fanout":
            return self.receivers + 1
        return 2 * self.pairs
