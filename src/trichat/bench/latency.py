"""What a bench message carries, and what its latencies come to.

Every message's TEXT is ``<send-time-ns> <seq> xxx...``, padded to the
run's ``--size``; its latency is the time it was read minus that stamp,
both on this process's ``perf_counter_ns`` clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["parse_stamp", "percentile", "stamp", "summarize_latencies"]


def stamp(sent_ns: int, seq: int, size: int) -> str:
    """Message TEXT carrying *sent_ns* and *seq*, padded with ``x`` to *size*.

    The stamp itself is never cut: a *size* below its length gives just the
    stamp.
    """
    head = f"{sent_ns} {seq}"
    pad = size - len(head)
    if pad <= 0:
        return head
    return head + " " + "x" * (pad - 1)


def parse_stamp(text: str) -> tuple[int, int]:
    """The send time (ns) and sequence number that ``stamp`` put in *text*.

    Raises ValueError for text that ``stamp`` did not make.
    """
    parts = text.split(" ", 2)
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        raise ValueError(f"not a bench stamp: {text[:40]!r}")
    return int(parts[0]), int(parts[1])


def percentile(ordered: Sequence[int] | Sequence[float], q: float) -> float:
    """The *q*-th percentile (0 < q <= 100) of the sorted *ordered*, by
    nearest rank: the smallest value with at least q% of them at or below it.
    """
    if not ordered:
        raise ValueError("no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile out of range: {q}")
    # The epsilon keeps float error from bumping an exact rank
    # (99.9% of 1000 values is the 999th, not the 1000th).
    rank = math.ceil(q * len(ordered) / 100 - 1e-9)
    return ordered[max(rank, 1) - 1]


def summarize_latencies(latencies_ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean of *latencies_ns*, in milliseconds."""
    if not latencies_ns:
        return {}
    ordered = sorted(latencies_ns)
    summary = {
        f"{name}_ms": round(percentile(ordered, q) / 1e6, 3)
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9))
    }
    summary["max_ms"] = round(ordered[-1] / 1e6, 3)
    summary["mean_ms"] = round(sum(ordered) / len(ordered) / 1e6, 3)
    return summary
