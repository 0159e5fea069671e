"""A budget of Python work per frame on the hot path, checked in CI.

Timings on a shared machine vary by a fifth from one run to the next, too
much to catch a regression. The number of Python bytecode instructions an
operation runs does not vary at all for one interpreter version, so each
micro-benchmark of ``benchmarks/micro.py`` has a budget here, a little
above what it costs today. A change that makes the hot path do more fails
this test; if the extra work is intended, raise the budget and say why in
the commit. (A change that makes it cheaper should lower the budget.)

Reads and writes cost the most on the hot path, so their number is
checked too, on any Python: no operation may make more than it did (a
broadcast makes one write per recipient, a run of 16 talks to one user one
write in all). How long C code and the kernel
take is not counted: the Go load generator (``benchmarks/loadgen.py
--baseline``) is the check for that.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import micro

counted_in_this_bytecode = pytest.mark.skipif(
    sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11),
    reason="the opcode budgets are counted in CPython 3.11's bytecode",
)

SCALE = 0.05  # the batch sizes the budgets were counted with
HEADROOM = 1.05
# Opcodes per operation when the budgets were last set.
BUDGETS = {
    "decode+validate talk (server)": 316.2,
    "decode+validate delivery (client)": 321.2,
    "encode Delivery": 35.0,
    "build+encode Delivery": 160.0,
    "name_key, cached": 8.1,
    "name_key, uncached": 19.0,
    "hub: direct talk to 1 user": 194.3,
    "hub: broadcast, per recipient of 1000": 109.2,
    "read: split+check, per talk of 16": 8.8,
    "relay: run of 16 to 1 user, per talk": 38.0,
    "relay: broadcast, per recipient of 1000": 109.3,
    "relay: broadcast, queued, per recipient of 1000": 481.3,
}


# Reads and writes per operation, for those that make any: no more, ever.
SYSTEM_CALLS = {
    "hub: broadcast, per recipient of 1000": 1.0,
    "relay: run of 16 to 1 user, per talk": 1 / 16,
    "relay: broadcast, per recipient of 1000": 1.0,
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
async def test_the_hot_path_makes_no_more_system_calls_than_it_did(name: str) -> None:
    calls = costs()[name][1]
    allowed = SYSTEM_CALLS.get(name, 0.0)
    assert calls <= allowed, (
        f"{name}: {calls:.4f} reads and writes per operation, more than the "
        f"{allowed:.4f} it made; if that is intended, raise it"
    )


@counted_in_this_bytecode
@pytest.mark.parametrize("name", sorted(BUDGETS))
async def test_the_hot_path_stays_within_its_budget(name: str) -> None:
    cost = costs()[name][0]
    assert cost <= BUDGETS[name] * HEADROOM, (
        f"{name}: {cost:.1f} opcodes per operation, over its budget of "
        f"{BUDGETS[name]} (+{HEADROOM - 1:.0%}); if that is intended, raise it"
    )
