"""A budget of Python work per frame on the hot path, checked in CI.

Timings on a shared machine vary by a fifth from one run to the next, too
much to catch a regression. The number of Python bytecode instructions an
operation runs does not vary at all for one interpreter version, so each
micro-benchmark of ``benchmarks/micro.py`` has a budget here, a little
above what it costs today. A change that makes the hot path do more fails
this test; if the extra work is intended, raise the budget and say why in
the commit. (A change that makes it cheaper should lower the budget.)
What C code and the kernel do is not counted: the Go load generator
(``benchmarks/loadgen.py --baseline``) is the check for that.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import micro

pytestmark = pytest.mark.skipif(
    sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11),
    reason="the budgets are counted in CPython 3.11's bytecode",
)

SCALE = 0.05  # the batch sizes the budgets were counted with
HEADROOM = 1.05
# Opcodes per operation when the budgets were last set.
BUDGETS = {
    "decode+validate talk (server)": 314.2,
    "decode+validate delivery (client)": 319.2,
    "encode Delivery": 35.0,
    "build+encode Delivery": 160.0,
    "name_key, cached": 8.1,
    "name_key, uncached": 19.0,
    "hub: direct talk to 1 user": 192.3,
    "hub: broadcast, per recipient of 1000": 109.2,
    "read: split+check, per talk of 16": 8.8,
    "relay: run of 16 to 1 user, per talk": 44.2,
    "relay: broadcast, per recipient of 1000": 109.3,
    "relay: broadcast, queued, per recipient of 1000": 481.3,
}


@functools.cache
def costs() -> dict[str, float]:
    """Opcodes per operation of every micro-benchmark (counted once: the
    hubs of a thousand users take a while to build)."""
    return {
        name: micro.opcodes_per_op(batch) for name, batch in micro.benchmarks(SCALE)
    }


async def test_every_micro_benchmark_has_a_budget() -> None:
    assert sorted(costs()) == sorted(BUDGETS)


@pytest.mark.parametrize("name", sorted(BUDGETS))
async def test_the_hot_path_stays_within_its_budget(name: str) -> None:
    cost = costs()[name]
    assert cost <= BUDGETS[name] * HEADROOM, (
        f"{name}: {cost:.1f} opcodes per operation, over its budget of "
        f"{BUDGETS[name]} (+{HEADROOM - 1:.0%}); if that is intended, raise it"
    )
