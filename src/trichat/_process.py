"""What the commands share about running as a process: signals and limits."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

__all__ = ["raise_file_limit", "until_interrupted"]

T = TypeVar("T")


async def until_interrupted(run: Callable[[], Awaitable[T]]) -> T | None:
    """What ``run()`` returns, or None if SIGINT (Ctrl-C) cancelled it first.

    Receiving the signal in a task, rather than as KeyboardInterrupt, means
    it can never land halfway through something and leave a traceback or a
    never-awaited coroutine behind.
    """
    result: T | None = None
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch)
            result = await run()
            nursery.cancel_scope.cancel()
    return result


def raise_file_limit(wanted: int) -> None:
    """Let the process hold *wanted* open files, as far as the hard limit
    allows (a server or load generator needs one per connection)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
