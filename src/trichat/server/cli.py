"""``trichat serve``: options, logging and signal handling around ChatServer."""

from __future__ import annotations

import argparse
import logging
import re
import signal
import ssl
import sys
from typing import TypeVar

import attrs
import trio

from .._process import raise_file_limit
from .._units import duration, size
from ._logs import background_stderr
from .app import ChatServer, ServerConfig
from .config import PRESENCE_MODES
from .store import StoreError, default_path

E = TypeVar("E", bound=BaseException)

log = logging.getLogger("trichat.server")

_DEFAULTS = ServerConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = _DEFAULTS
    parser.add_argument(
        "--host", default=d.host, help="address to listen on (%(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=d.port, help="TCP port (%(default)s)"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=["debug", "info", "warning", "error"],
        help="how much to log to stderr, in any case (%(default)s)",
    )
    parser.add_argument(
        "--presence",
        default=d.presence,
        choices=PRESENCE_MODES,
        help="global: everyone is in '*' and hears of every login and exit; "
        "rooms: users hear of each other only through the rooms they share, "
        "and there is no '*' (for large servers) (%(default)s)",
    )
    limits = parser.add_argument_group(
        "limits (0 switches off those that say so; durations are seconds, or "
        "take a unit: 10s, 1.5s, 500ms, 2m; sizes are bytes, or take a unit: "
        "512K, 64M, 1G)"
    )
    limits.add_argument(
        "--max-line",
        type=int,
        default=d.max_line,
        help="longest frame in bytes, LF included (%(default)s)",
    )
    limits.add_argument(
        "--queue-size",
        type=int,
        default=d.queue_size,
        help="frames queued for a client before it counts as too slow (%(default)s)",
    )
    limits.add_argument(
        "--queue-bytes",
        type=size,
        default=d.queue_bytes,
        help="bytes queued for a client before it counts as too slow (%(default)s)",
    )
    limits.add_argument(
        "--max-clients",
        type=int,
        default=d.max_clients,
        help="connections in all (%(default)s)",
    )
    limits.add_argument(
        "--max-per-ip",
        type=int,
        default=d.max_per_ip,
        help="connections from one address; 0: no limit (%(default)s)",
    )
    limits.add_argument(
        "--login-timeout",
        type=duration,
        default=d.login_timeout,
        help="how long a connection has to log in (%(default)gs)",
    )
    limits.add_argument(
        "--ping-interval",
        type=duration,
        default=d.ping_interval,
        help="silence before the server pings a client; 0: never (%(default)gs)",
    )
    limits.add_argument(
        "--ping-timeout",
        type=duration,
        default=d.ping_timeout,
        help="how long a pinged client has to send anything (%(default)gs)",
    )
    limits.add_argument(
        "--rate",
        type=float,
        default=d.rate,
        help="frames per second a client may send on average; 0: no limit "
        "(%(default)s)",
    )
    limits.add_argument(
        "--burst",
        type=int,
        default=d.burst,
        help="frames a client may send at once above the rate (%(default)s)",
    )
    limits.add_argument(
        "--flood-grace",
        type=duration,
        default=d.flood_grace,
        help="how long a client may go over the rate before its connection is "
        "closed (%(default)gs)",
    )
    limits.add_argument(
        "--stall-timeout",
        type=duration,
        default=d.stall_timeout,
        help="how long a sender waits for a client with a half-full queue that "
        "reads nothing, before that client counts as stalled (%(default)gs)",
    )
    limits.add_argument(
        "--max-sender-wait",
        type=duration,
        default=d.max_sender_wait,
        help="the longest one read of a sender's waits, in all, for the "
        "recipients it filled past half to drain; then it goes on, and one "
        "that cannot keep up is dropped when its queue is full "
        "(%(default)gs)",
    )
    limits.add_argument(
        "--presence-delay",
        type=duration,
        default=d.presence_delay,
        help="longest time logins and exits wait to be sent in one batch; less "
        "with few users online; 0: send each at once (%(default)gs)",
    )
    limits.add_argument(
        "--full-collection-interval",
        type=duration,
        default=600.0,
        help="time between the cycle collector's full collections, which "
        "otherwise pause a server with many connections for hundreds of "
        "milliseconds whenever Python decides; 0: Python's own schedule "
        "(%(default)gs)",
    )
    store = parser.add_argument_group("the store: accounts, offline messages, history")
    store.add_argument(
        "--db",
        metavar="PATH",
        default=None,
        help="the store's SQLite file, made on first use; ':memory:' keeps "
        f"nothing after the server stops (default: {default_path()})",
    )
    store.add_argument(
        "--history",
        type=int,
        default=d.history,
        help="messages kept per room, per '*' and per account's conversation; "
        "0: none (%(default)s)",
    )
    store.add_argument(
        "--history-cache",
        type=size,
        default=d.history_cache,
        help="bytes of memory, about, for the newest 100 messages of the "
        "conversations used last, so that pages of them need no read of the "
        "file; 0: none (%(default)s)",
    )
    store.add_argument(
        "--offline-max",
        type=int,
        default=d.offline_max,
        help="direct messages kept for an account while it is offline; beyond "
        "that its senders get mailbox-full (%(default)s)",
    )
    store.add_argument(
        "--allow-plain-passwords",
        action="store_true",
        help="take passwords over plain TCP from other addresses than "
        "loopback (they are refused with tls-required otherwise)",
    )
    limits.add_argument(
        "--resume-window",
        type=duration,
        default=d.resume_window,
        help="how long a protocol-2 session whose connection dropped waits "
        "for a resume, keeping its name, rooms and messages; 0: off "
        "(%(default)gs)",
    )
    limits.add_argument(
        "--logins-per-ip",
        type=float,
        default=d.logins_per_ip,
        help="logins a second from one address, on average (twice as many "
        "at once), beyond which a login gets rate-limited; loopback has no "
        "limit; 0: none (%(default)g)",
    )
    limits.add_argument(
        "--max-rooms",
        type=int,
        default=d.max_rooms,
        help="rooms one user may be in at once; 0: no limit (%(default)s)",
    )
    limits.add_argument(
        "--max-queued-bytes",
        type=size,
        default=d.max_queued_bytes,
        help="bytes all the outgoing queues together may hold; beyond it the "
        "connections holding the most are dropped first; 0: no limit "
        "(default: a quarter of this machine's memory, %(default)s)",
    )
    limits.add_argument(
        "--max-queued-bytes-per-ip",
        type=size,
        default=d.max_queued_bytes_per_ip,
        help="bytes the outgoing queues of one address's connections may hold "
        "together (loopback: no limit); beyond it that address's connections "
        "holding the most are dropped first; 0: no limit (%(default)s)",
    )
    limits.add_argument(
        "--max-refusing",
        type=int,
        default=d.max_refusing,
        help="refused connections held at once while they are told why; "
        "beyond that, one is told without waiting (not over TLS), and closed "
        "(%(default)s)",
    )
    limits.add_argument(
        "--no-shared-reader",
        dest="shared_reader",
        action="store_false",
        help="let each connection's task wait for its own socket, instead of "
        "one task watching every idle connection and reading for it (Linux)",
    )
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls-cert", metavar="FILE", help="certificate chain (PEM)")
    tls.add_argument("--tls-key", metavar="FILE", help="private key (PEM)")


def _tls_context(cert: str, key: str) -> ssl.SSLContext:
    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as error:
            raise ValueError(
                f"cannot read {option} {path}: {error.strerror or error}"
            ) from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise ValueError(
            f"cannot load the TLS certificate {cert} with the key {key}: {error}"
        ) from None
    return context


_COMPARISONS = {">=": "at least", "<=": "at most", ">": "more than", "<": "less than"}


def _naming_the_option(args: argparse.Namespace, refusal: ValueError) -> str:
    """Why ServerConfig refused *args*, naming the option (``--max-line``)
    where it names a field (``max_line``).

    Each option is checked on its own with its field's validator, to learn
    which one it refused; attrs' own wording (``'max_line' must be >= 64:
    10``) is put in words."""
    for field in attrs.fields(ServerConfig):
        if field.validator is None or not hasattr(args, field.name):
            continue
        try:
            field.validator(None, field, getattr(args, field.name))
        except ValueError as error:
            message = str(error)
        else:
            continue
        option = "--" + field.name.replace("_", "-")
        for spelling in (f"'{field.name}'", field.name):
            if message.startswith(spelling + " "):
                message = message.removeprefix(spelling)
                break
        else:
            return f"{option}: {message}"
        compared = re.fullmatch(r" must be ([<>]=?) (\S+): (.*)", message)
        if compared is not None:
            words = _COMPARISONS[compared[1]]
            message = f" must be {words} {compared[2]}, not {compared[3]}"
        return option + message
    return str(refusal)


def _config(args: argparse.Namespace) -> ServerConfig:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    context = None
    if args.tls_cert is not None:
        context = _tls_context(args.tls_cert, args.tls_key)
    try:
        return _server_config(args, context)
    except ValueError as refusal:
        raise ValueError(_naming_the_option(args, refusal)) from None


def _server_config(
    args: argparse.Namespace, context: ssl.SSLContext | None
) -> ServerConfig:
    return ServerConfig(
        host=args.host,
        port=args.port,
        max_line=args.max_line,
        queue_size=args.queue_size,
        queue_bytes=args.queue_bytes,
        max_clients=args.max_clients,
        max_per_ip=args.max_per_ip,
        login_timeout=args.login_timeout,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        rate=args.rate,
        burst=args.burst,
        flood_grace=args.flood_grace,
        stall_timeout=args.stall_timeout,
        max_sender_wait=args.max_sender_wait,
        presence_delay=args.presence_delay,
        full_collection_interval=args.full_collection_interval,
        max_refusing=args.max_refusing,
        max_queued_bytes=args.max_queued_bytes,
        max_queued_bytes_per_ip=args.max_queued_bytes_per_ip,
        shared_reader=args.shared_reader,
        max_rooms=args.max_rooms,
        logins_per_ip=args.logins_per_ip,
        resume_window=args.resume_window,
        db=str(default_path()) if args.db is None else args.db,
        history=args.history,
        history_cache=args.history_cache,
        offline_max=args.offline_max,
        allow_plain_passwords=args.allow_plain_passwords,
        presence=args.presence,
        ssl_context=context,
    )


async def run(server: ChatServer) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully.

    A second signal while shutting down stops at once.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def serve_then_stop() -> None:
                await server.serve()
                nursery.cancel_scope.cancel()

            nursery.start_soon(serve_then_stop)
            async for signum in signals:
                if server.stopping:
                    log.warning("second %s: stopping now", signal.Signals(signum).name)
                    if server.store is not None:
                        server.store.stop_now()  # (its writer is shielded)
                    nursery.cancel_scope.cancel()
                    return
                log.info("%s received", signal.Signals(signum).name)
                server.shutdown()


def main(args: argparse.Namespace) -> int:
    # Written by a thread of its own, a few lines of a kind a second.
    with background_stderr(
        args.log_level.upper(), sys.stderr, "%(asctime)s %(levelname)s %(message)s"
    ):
        return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
    except ValueError as error:
        print(f"trichat serve: {error}", file=sys.stderr)
        return 2
    raise_file_limit(config.max_clients + 64)
    failures: list[OSError] = []
    unusable: list[StoreError] = []
    try:
        trio.run(run, ChatServer(config))
    except* StoreError as group:
        unusable.extend(_leaves(group, StoreError))
    except* OSError as group:
        failures.extend(_leaves(group, OSError))
    if unusable:
        # A file locked by another process, a newer trichat's, a directory
        # that cannot be made: said once, without a traceback.
        print(f"trichat serve: {unusable[0]}", file=sys.stderr)
        return 1
    if failures:
        reason = failures[0].strerror or failures[0]
        print(
            f"trichat serve: cannot listen on {config.host}:{config.port}: {reason}",
            file=sys.stderr,
        )
        return 1
    return 0


def _leaves(group: BaseExceptionGroup[E], kind: type[E]) -> list[E]:
    """The exceptions of *kind* in *group*, however deeply nested (a
    nursery inside a nursery nests its group in the outer one's)."""
    found: list[E] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            found += _leaves(error, kind)
        elif isinstance(error, kind):
            found.append(error)
    return found
