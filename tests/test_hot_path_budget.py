"""A budget of Python work per frame on the hot path, checked in CI.

Timings on a shared machine vary by a fifth from one run to the next, too
much to catch a regression. The number of Python bytecode instructions an
operation runs does not vary at all for one interpreter version, so each
micro-benchmark of ``benchmarks/micro.py`` has a budget here: what it cost
when the budget was set, with 5% of headroom. A change that makes the hot
path do more fails this test; if the extra work is intended, raise the
budget and say why in the commit. (A change that makes it cheaper should
lower the budget.) Bytecode differs between Python versions, so on any
Python but CPython 3.11 the budgets are skipped, each with a reason that
``pytest -ra`` shows.

Reads and writes cost the most on the hot path, so their number is
checked too, on any Python: each operation must make exactly as many as
it did (the writer's one write per run of talk it takes at once, one per
recipient of a broadcast). How long C code and the kernel take is not
counted: the Go load generator (``benchmarks/loadgen.py --baseline``) is
the check for that.
"""

from __future__ import annotations

import functools
import platform
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import micro

# The interpreter the opcode budgets were counted with: bytecode differs
# from one CPython version to the next, and between implementations.
COUNTED_WITH = ("cpython", (3, 11))

SCALE = 0.05  # the batch sizes the budgets were counted with
HEADROOM = 1.05
# Opcodes per operation when the budgets were last set (re-based for the
# mailbox design: see docs/performance.md).
BUDGETS = {
    "decode+validate talk (server)": 215.0,
    "decode+validate delivery (client)": 339.1,
    "encode Delivery": 35.0,
    # 160 before rooms: a target is now a name, a room or "*".
    "build+encode Delivery": 170.0,
    "name_key, cached": 8.1,
    "name_key, uncached": 19.0,
    "read: split+check, per talk of 16": 11.3,
    # 99.8 before protocol 2: each message now gets an id, and the hub
    # looks at the recipients' versions and the sender's echo.
    "session: run of 16 to 1 user, written, per talk": 106.0,
    # Trichat 2 (the figures before it in brackets): each message gets an
    # id; the hub picks a block by the recipient's protocol version; a
    # mailbox counts the server's own answers out of its byte limit and
    # notes the batch its writer is writing (for a resume); a sender tells
    # queues it filled from queues others filled (--max-sender-wait).
    "session: 16 decoded talks to 1 user, written, per talk": 840.0,  # 796.0
    "hub: direct talk to 1 user": 460.0,  # 435.5
    "hub: broadcast, per recipient of 1000": 352.0,  # 322.1
    "hub: broadcast, written, per recipient of 1000": 446.0,  # 410.1
    "presence: login+exit, per user of 1000": 534.0,  # 499.5
    "mailbox: put+next_batch, per frame of 16": 202.9,
}


# Reads and writes per operation, for those that make any; every other
# makes none. Checked on any Python: one write per run of talk a writer
# takes at once, one per recipient of a broadcast.
SYSTEM_CALLS = {
    "session: run of 16 to 1 user, written, per talk": 1 / 16,
    "session: 16 decoded talks to 1 user, written, per talk": 1 / 16,
    "hub: broadcast, written, per recipient of 1000": 1.0,
}


@functools.cache
def costs() -> dict[str, tuple[float, float]]:
    """Opcodes and system calls per operation of every micro-benchmark
    (counted once: the hubs of a thousand users take a while to build)."""
    return {
        name: (micro.opcodes_per_op(batch), micro.system_calls_per_op(batch))
        for name, batch in micro.benchmarks(SCALE)
    }


async def test_every_micro_benchmark_has_a_budget() -> None:
    assert sorted(costs()) == sorted(BUDGETS)
    assert set(SYSTEM_CALLS) <= set(BUDGETS)


@pytest.mark.parametrize("name", sorted(BUDGETS))
async def test_the_hot_path_makes_the_system_calls_it_did(name: str) -> None:
    calls = costs()[name][1]
    expected = SYSTEM_CALLS.get(name, 0.0)
    assert calls == pytest.approx(expected), (
        f"{name}: {calls:.4f} reads and writes per operation, not the "
        f"{expected:.4f} it made; if that is intended, change it here"
    )


@pytest.mark.parametrize("name", sorted(BUDGETS))
def test_the_hot_path_stays_within_its_budget(name: str) -> None:
    running = (sys.implementation.name, sys.version_info[:2])
    if running != COUNTED_WITH:
        # Shown by pytest -ra (on by default here), so that a run on another
        # Python says what it did not check.
        pytest.skip(
            f"opcode budgets are counted in CPython 3.11's bytecode, not "
            f"{platform.python_implementation()} {platform.python_version()}'s: "
            "not checked (system calls are)"
        )
    cost = costs()[name][0]
    assert cost <= BUDGETS[name] * HEADROOM, (
        f"{name}: {cost:.1f} opcodes per operation, over its budget of "
        f"{BUDGETS[name]} (+{HEADROOM - 1:.0%}); if that is intended, raise it"
    )
