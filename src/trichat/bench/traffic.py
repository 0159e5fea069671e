"""What every scenario's users share: logging in over the client library,
reading, and the measured window (the run's counters are in ``run``).

Each bench user is a ``trichat.client.Client``. A reader takes what
arrives a read at a time (``Client.receive_batch``) and hands each frame to
the scenario's ``Handler``; a sender writes its frames a batch at a time
(``Client.talk_batch``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

import trio

from ..client.library import BadServerFrame, Client, ConnectionLost, LoginRefused
from ..protocol.messages import ErrorCode
from .reader import FedStream, SharedReader, dispatch
from .run import BenchError, Handler, Run, trio_time

__all__ = ["Flow", "log_in_all", "run_window"]


class Flow(Handler):
    """A handler whose sender parks in ``lot`` until there is room for
    more: each read wakes it, and once the run is stopping, checks
    whether everything in flight has arrived."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        self.lot = trio.lowlevel.ParkingLot()

    def batch_done(self) -> None:
        if self.lot:
            self.lot.unpark_all()
        if self.run.stopping:
            self.run.check_drained()


async def _log_in(run: Run, name: str, shared: bool) -> tuple[Client, FedStream | None]:
    """Connect and log in as *name*; BenchError if that fails. For a
    *shared* reader, the client's stream is a FedStream (also returned),
    for that reader to feed."""
    socket_stream = await run.open_socket()
    fed = FedStream(socket_stream) if shared else None
    stream: trio.abc.Stream = socket_stream if fed is None else fed
    timeout = run.settings.login_timeout
    try:
        with trio.fail_after(timeout):
            # Protocol 2 (msg frames, as users get them) unless told 1,
            # without our own messages back: the counts are of deliveries
            # to others.
            client = await Client.login(
                stream, name, version=run.settings.protocol, echo=False
            )
    except trio.TooSlowError:
        raise BenchError(
            f"{name}: no login acknowledgement within {timeout:g} s"
        ) from None
    except LoginRefused as refused:
        hint = ""
        if refused.error.code is ErrorCode.TOO_MANY_CONNECTIONS:
            hint = " (raise the server's --max-per-ip)"
        elif refused.error.code is ErrorCode.SERVER_FULL:
            hint = " (raise the server's --max-clients)"
        raise BenchError(
            f"{name} could not log in: error|{refused.error.code.value}|"
            f"{refused.error.detail}{hint}"
        ) from None
    except (ConnectionLost, BadServerFrame) as error:
        raise BenchError(f"{name} could not log in: {error}") from None
    run.logged_in += 1
    run.presence += 1
    return client, fed


async def _read(run: Run, client: Client, handler: Handler) -> None:
    """Read *client*'s frames until the connection ends, handing them on."""
    receive_batch = client.receive_batch
    while True:
        try:
            messages = await receive_batch()
        except BadServerFrame as bad:
            run.bad_frame(bad)
            continue
        except ConnectionLost:
            break
        if not messages:
            break
        dispatch(run, handler, messages, time.perf_counter_ns())
    run.connection_lost(client)


async def log_in_all(
    run: Run,
    nursery: trio.Nursery,
    names: Sequence[str],
    handlers: Sequence[Handler],
    then: Callable[[int, Client], Awaitable[None]] | None = None,
    *,
    reader: SharedReader | None = None,
) -> list[Client]:
    """Log in as each of *names*, ``--conc`` at a time, in that order; each
    connection's reader starts (in *nursery*) as soon as it is logged in,
    or the run's shared *reader* takes it over.
    *then*, if given, is awaited with each one's index and client after
    that, still counted among the ``--conc`` in flight (the rooms
    scenario joins its rooms there)."""
    clients: list[Client | None] = [None] * len(names)
    limiter = trio.CapacityLimiter(run.settings.conc)

    async def one(index: int) -> None:
        async with limiter:
            client, fed = await _log_in(run, names[index], reader is not None)
            clients[index] = client
            if reader is None or fed is None:
                nursery.start_soon(_read, run, client, handlers[index])
            else:
                await reader.add(client, fed, handlers[index])
            if then is not None:
                await then(index, client)

    async with trio.open_nursery() as logins:
        for index in range(len(names)):
            logins.start_soon(one, index)
    return [client for client in clients if client is not None]


async def run_window(
    run: Run,
    lots: Sequence[trio.lowlevel.ParkingLot],
    senders: Sequence[Callable[[], Awaitable[None]]],
) -> None:
    """Start the window and run *senders* until it ends (the clock wakes
    *lots* then); wait, at most ``--drain``, for what is still in flight."""
    run.start_window()
    with trio.move_on_at(trio_time(run.window_end) + run.settings.drain):
        async with trio.open_nursery() as traffic:
            traffic.start_soon(run.clock, lots)
            for sender in senders:
                traffic.start_soon(sender)
        run.sent_all = True
        run.check_drained()
        await run.drained.wait()
