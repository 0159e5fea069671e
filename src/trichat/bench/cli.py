"""``trichat bench``'s options, and the command itself.

The ``trichat`` command builds every subcommand's parser, so this module
and ``settings`` are all of the load generator that ``trichat connect`` or
``trichat serve`` loads: the rest (``runner`` and what it uses) is
imported only when ``main`` runs.
"""

from __future__ import annotations

import argparse
import sys

from .._units import duration
from .settings import DEFAULT_RATES, PROTOCOLS, SCENARIOS, Settings

__all__ = ["SCENARIOS", "Settings", "add_arguments", "main"]


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
        "rate: open loop at -R msgs/s; idle: -C connections log in; rooms: "
        "--users in --rooms, --rooms-each rooms each, talking to them at -R "
        "msgs/s (%(default)s)",
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
        "--users",
        type=int,
        default=d.users,
        help="rooms: users, each in --rooms-each rooms (%(default)s)",
    )
    load.add_argument(
        "--rooms",
        type=int,
        default=d.rooms,
        help="rooms: rooms, the users dealt out to them evenly (%(default)s)",
    )
    load.add_argument(
        "--rooms-each",
        type=int,
        default=d.rooms_each,
        help="rooms: rooms each user joins and talks to in turn (%(default)s)",
    )
    rates = ", ".join(f"{name}: {rate:g}" for name, rate in DEFAULT_RATES.items())
    load.add_argument(
        "-R",
        "--rate",
        type=float,
        default=None,
        help="rate, rooms: messages/s offered in all, each sent on a fixed "
        f"schedule ({rates}; otherwise {Settings(scenario='rate').offered:g})",
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
        "--protocol",
        type=int,
        choices=PROTOCOLS,
        default=d.protocol,
        help="the protocol the users speak: 2 says hello|2 (without echo) "
        "before logging in, 1 logs in as a 1.0 client (%(default)s)",
    )
    load.add_argument(
        "--no-shared-reader",
        dest="shared_reader",
        action="store_false",
        help="rooms: a reader task per connection, as the other scenarios "
        "have, instead of one task reading them all (Linux's epoll)",
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
        help="idle, rooms: longest wait for the presence (idle) or join "
        "(rooms) frames (%(default)gs)",
    )
    timing.add_argument(
        "--login-timeout",
        type=duration,
        default=d.login_timeout,
        help="longest wait for one login (rooms: and its joins) (%(default)gs)",
    )
    timing.add_argument(
        "--deadline",
        type=duration,
        default=d.deadline,
        help="idle, rooms: longest time for all the logins (and joins) (%(default)gs)",
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
