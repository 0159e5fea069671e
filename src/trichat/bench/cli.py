"""``trichat bench``'s options, and the command itself.

The ``trichat`` command builds every subcommand's parser, so this module is
all of the load generator that ``trichat connect`` or ``trichat serve``
loads: the rest (``runner`` and what it uses) is imported only when
``main`` runs.
"""

from __future__ import annotations

import argparse
import random
import string
import sys
from dataclasses import dataclass

from .._units import duration
from ..client.library import DEFAULT_PORT
from ..protocol.messages import MAX_NAME, MAX_TEXT, check_name

__all__ = ["SCENARIOS", "Settings", "add_arguments", "main"]

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``trichat bench``'s options to *parser*."""
    d = Settings()
    parser.epilog = (
        "Durations take a unit: 10s, 1.5s, 500ms, 2m (a number alone is "
        "seconds). Benchmark a server started with --rate 0, or its "
        "per-client rate limit is what you measure."
    )
    target = parser.add_argument_group("target")
    target.add_argument("--host", default=d.host, help="server address (%(default)s)")
    target.add_argument(
        "--port", type=int, default=d.port, help="server port (%(default)s)"
    )
    target.add_argument(
        "--pid",
        type=int,
        help="the server's process id, to report its CPU time and memory "
        "(VmRSS) from /proc; the server must run on this machine",
    )
    load = parser.add_argument_group("load")
    load.add_argument(
        "-s",
        "--scenario",
        choices=SCENARIOS,
        default=d.scenario,
        help="dm: pairs in a closed loop; fanout: one sender broadcasting to -N; "
        "rate: open loop at -R msgs/s; idle: -C connections log in "
        "(%(default)s)",
    )
    load.add_argument(
        "-P",
        "--pairs",
        type=int,
        default=d.pairs,
        help="dm, rate: sender->receiver pairs (%(default)s)",
    )
    load.add_argument(
        "-W",
        "--in-flight",
        type=int,
        default=d.in_flight,
        help="dm: messages in flight per pair; fanout: broadcasts in flight "
        "(%(default)s)",
    )
    load.add_argument(
        "-N",
        "--receivers",
        type=int,
        default=d.receivers,
        help="fanout: receivers (%(default)s)",
    )
    load.add_argument(
        "-C",
        "--connections",
        type=int,
        default=d.connections,
        help="idle: connections (%(default)s)",
    )
    load.add_argument(
        "-K",
        "--broadcasts",
        type=int,
        default=d.broadcasts,
        help="idle: broadcasts timed after the logins (%(default)s)",
    )
    load.add_argument(
        "-R",
        "--rate",
        type=float,
        default=d.rate,
        help="rate: messages/s offered in all (%(default)g)",
    )
    load.add_argument(
        "--size",
        type=int,
        default=d.size,
        help="TEXT characters per message, stamp included (%(default)s)",
    )
    load.add_argument(
        "--conc",
        type=int,
        default=d.conc,
        help="logins in flight at a time (%(default)s)",
    )
    load.add_argument(
        "--prefix",
        help="user name prefix (default: b and two random letters)",
    )
    timing = parser.add_argument_group("timing")
    timing.add_argument(
        "-D",
        "--duration",
        type=duration,
        default=d.duration,
        help="measured window (%(default)gs)",
    )
    timing.add_argument(
        "--warmup",
        type=duration,
        default=d.warmup,
        help="traffic before the window, not counted (%(default)gs)",
    )
    timing.add_argument(
        "--drain",
        type=duration,
        default=d.drain,
        help="longest wait for messages in flight after the window; idle: for "
        "each timed broadcast (%(default)gs)",
    )
    timing.add_argument(
        "--settle",
        type=duration,
        default=d.settle,
        help="idle: longest wait for the presence frames (%(default)gs)",
    )
    timing.add_argument(
        "--login-timeout",
        type=duration,
        default=d.login_timeout,
        help="longest wait for one login (%(default)gs)",
    )
    timing.add_argument(
        "--deadline",
        type=duration,
        default=d.deadline,
        help="idle: longest time for all the logins (%(default)gs)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--json", action="store_true", help="print one JSON object, not a table"
    )
    output.add_argument(
        "-q", "--quiet", action="store_true", help="no progress on stderr"
    )


def main(args: argparse.Namespace) -> int:
    """Run ``trichat bench``; 0 when the run was carried out, 1 when it
    could not be, 2 for unusable options, 130 when interrupted."""
    try:
        settings = Settings.from_args(args)
    except ValueError as error:
        print(f"trichat bench: {error}", file=sys.stderr)
        return 2
    from .runner import run_command  # the load generator itself

    return run_command(settings)
