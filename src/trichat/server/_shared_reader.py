"""One task that watches many idle sockets, and reads for their owners.

A connection task that has nothing to read would normally wait for its own
socket (``trio.lowlevel.wait_readable``). Under load that costs, for every
read, a wake-up of that task, an ``epoll`` re-registration and a read that
finds nothing, and Trio runs the woken tasks in an order it reverses at
random, so a message can wait for two rounds of all readers instead of one.

``SharedReader.wait(fd, on_ready)`` parks the calling task instead. The
reader's own task waits on one ``epoll`` set holding every parked socket,
and calls each ready socket's *on_ready* in the order the kernel reports
them, the way a select loop would. *on_ready* reads and handles what it can
without waiting, synchronously, and says whether its owner can stay parked;
when it cannot (a queue to wait for, the end of the connection, an error),
the owner's task is woken and takes over, and parks again once it has
nothing to read. The owner's cancel scopes (timeouts, kicks) work as for
any other wait: a cancelled owner simply stops being watched.

Linux only (``select.epoll``); ``available()`` says whether it can be used.
"""

from __future__ import annotations

import logging
import select
import time
from collections import deque
from collections.abc import Callable

import trio

__all__ = ["SharedReader", "available"]

log = logging.getLogger("trichat.server")

# Ready sockets taken from epoll at a time.
_BATCH = 64
# How long one turn of the reader may go on taking batches before it lets
# other tasks run. Several batches a turn: epoll hands out ready sockets in
# the order they became ready, so when thousands close at once (a connect
# flood ending) an honest user's socket waits behind all of them, and one
# batch per turn of the event loop made that wait seconds long.
_TURN = 0.005
# How many connections that ended (the client closed, an error) the reader
# hands back to their tasks per turn. Each task's ending costs far more than
# the reader's look at its socket, so a crowd that closes at once is read
# at once (an honest user's bytes behind it are not kept waiting), and its
# tasks go on a few at a time.
_ENDINGS_PER_TURN = 32


def available() -> bool:
    return hasattr(select, "epoll")


class _Waiter:
    __slots__ = ("cancelled", "error", "on_ready", "task")

    def __init__(self, on_ready: Callable[[], bool], task: trio.lowlevel.Task) -> None:
        self.on_ready = on_ready
        self.task = task
        self.error: Exception | None = None
        self.cancelled = False


class SharedReader:
    """Watches parked sockets from one task (``run``); see the module."""

    def __init__(
        self,
        expected: tuple[type[Exception], ...] = (),
    ) -> None:
        self._epoll = select.epoll()
        self._waiting: dict[int, _Waiter] = {}
        # Ended connections whose tasks wait for their turn to be woken.
        self._endings: deque[_Waiter] = deque()
        self._expected = expected
        """Errors that are no news (a connection's end) when their owner has
        stopped waiting already; any other is logged with its traceback."""
        self._closed = False

    def __len__(self) -> int:
        """How many tasks are parked."""
        return len(self._waiting)

    async def wait(self, fd: int, on_ready: Callable[[], bool]) -> None:
        """Park until *fd*'s owner has to take over.

        While parked, *on_ready* is called in the reader's task each time
        *fd* is readable (it may find nothing to read). It returns True to
        stay parked and False to end the wait; an exception it raises is
        raised here. A cancelled wait stops watching *fd* at once.
        """
        if self._closed:
            raise trio.ClosedResourceError("the shared reader stopped")
        if fd in self._waiting:
            raise trio.BusyResourceError(f"another task is waiting for fd {fd}")
        waiter = _Waiter(on_ready, trio.lowlevel.current_task())
        self._epoll.register(fd, select.EPOLLIN)
        self._waiting[fd] = waiter

        def abort(_: object) -> trio.lowlevel.Abort:
            if self._waiting.get(fd) is waiter:
                self._forget(fd)
            else:  # among the endings: not to be woken now
                waiter.cancelled = True
                # Nobody will raise it: let it go (its traceback holds the
                # frame that holds the waiter, a cycle otherwise).
                waiter.error = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        if waiter.error is not None:
            error, waiter.error = waiter.error, None
            try:
                raise error
            finally:
                # This frame is in the error's traceback: holding the error
                # too would make a cycle that only the collector frees.
                del error

    def _forget(self, fd: int) -> None:
        del self._waiting[fd]
        self._epoll.unregister(fd)

    def _wake(self, fd: int, waiter: _Waiter) -> None:
        self._forget(fd)
        trio.lowlevel.reschedule(waiter.task)

    async def run(self) -> None:
        """Watch the parked sockets until cancelled; then close."""
        epoll = self._epoll
        waiting = self._waiting
        endings = self._endings
        try:
            while True:
                if endings:
                    await trio.lowlevel.checkpoint()  # a turn for the others
                    for _ in range(min(len(endings), _ENDINGS_PER_TURN)):
                        ended = endings.popleft()
                        if not ended.cancelled:
                            trio.lowlevel.reschedule(ended.task)
                else:
                    await trio.lowlevel.wait_readable(epoll.fileno())
                turn_ends = time.perf_counter() + _TURN
                while True:
                    ready = epoll.poll(0, _BATCH)
                    for fd, _ in ready:
                        waiter = waiting.get(fd)
                        if waiter is not None:  # else woken or cancelled since
                            self._serve(fd, waiter)
                    if len(ready) < _BATCH or time.perf_counter() > turn_ends:
                        break
        finally:
            # Only a server that stops before its connections leaves any
            # parked: they see their socket as closed.
            for fd, waiter in list(waiting.items()):
                waiter.error = trio.ClosedResourceError("the shared reader stopped")
                self._wake(fd, waiter)
            for ended in endings:
                if not ended.cancelled:
                    trio.lowlevel.reschedule(ended.task)
            endings.clear()
            self._closed = True
            epoll.close()

    def _serve(self, fd: int, waiter: _Waiter) -> None:
        """One ready socket's turn. Whatever goes wrong, a bug included, is
        its owner's to raise: the reader itself goes on for everyone else."""
        error: Exception | None = None
        try:
            stay = waiter.on_ready()
        except Exception as raised:
            stay, error = False, raised
        if self._waiting.get(fd) is waiter:
            if error is not None:  # its connection ended: woken in its turn
                waiter.error = error
                self._forget(fd)
                self._endings.append(waiter)
            elif not stay:  # its task takes over: at once
                self._wake(fd, waiter)
        elif error is not None:
            # Its task was cancelled meanwhile (a kick, say) and ends for
            # that reason.
            if isinstance(error, self._expected):
                log.debug("fd %d: %r after its wait ended", fd, error)
            else:
                log.error("fd %d: error after its wait ended", fd, exc_info=error)
        del error  # as in wait: this frame is in its traceback
