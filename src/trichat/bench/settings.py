"""One ``trichat bench`` run's parameters, checked (``Settings``)."""

from __future__ import annotations

import argparse
import random
import string
from dataclasses import dataclass

from ..client.library import DEFAULT_PORT
from ..protocol.messages import MAX_NAME, MAX_TEXT, check_name

__all__ = ["SCENARIOS", "Settings"]

SCENARIOS = ("dm", "fanout", "rate", "idle")


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
    rate: float = 20000.0
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
        for name in ("pairs", "in_flight", "receivers", "connections", "conc"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.broadcasts < 0:
            raise ValueError("broadcasts must not be negative")
        if not 1 <= self.size <= MAX_TEXT:
            raise ValueError(f"size must be 1 to {MAX_TEXT} (characters of TEXT)")
        if not self.rate > 0:
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
        longest = self.name("s", max(self.pairs, self.receivers, self.connections))
        if len(longest) > MAX_NAME:
            raise ValueError(f"prefix too long: names like {longest!r} break the rules")
        check_name(longest)

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
            rate=args.rate,
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

    @property
    def sockets(self) -> int:
        """How many connections the run opens."""
        if self.scenario == "idle":
            return self.connections
        if self.scenario == "fanout":
            return self.receivers + 1
        return 2 * self.pairs
