"""How busy the generator and the server were: CPU time, CPU wait and
memory, read from ``/proc`` (Linux), and what they say about a run's
numbers.

The generator is one Python process on one core: it measures its own CPU
time and says when it, not the server, was the limit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BOTTLENECK_PCT",
    "CPU_WAIT_WARNING_PCT",
    "Usage",
    "loop_note",
    "process_cpu",
    "process_cpu_wait",
    "process_rss_kb",
    "rss_kb_or_none",
    "usage_summary",
]

BOTTLENECK_PCT = 90.0
"""CPU use, in % of one core, from which a process counts as the limit."""
CPU_WAIT_WARNING_PCT = 10.0
"""Warn when a process waited this much of the window (%) for a CPU."""

_NS = 1_000_000_000


def process_cpu(pid: int | str) -> float:
    """User + system CPU seconds of process *pid* (not its children)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
        data = file.read()
    # Fields after the command name, which may hold spaces and parentheses;
    # utime and stime are fields 14 and 15 of the whole line.
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_kb(pid: int) -> int:
    """Resident memory (VmRSS) of process *pid*, in KiB."""
    with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise OSError(f"no VmRSS for process {pid}")


def rss_kb_or_none(pid: int | None) -> int | None:
    """``process_rss_kb(pid)``, or None without a *pid* or a /proc to ask."""
    if pid is None:
        return None
    try:
        return process_rss_kb(pid)
    except (OSError, ValueError, IndexError):
        return None


def process_cpu_wait(pid: int | str) -> float:
    """Seconds the threads of process *pid* spent runnable but waiting for a
    CPU (the run-queue delay in ``/proc/PID/task/*/schedstat``)."""
    total = 0
    tasks = f"/proc/{pid}/task"
    for task in os.listdir(tasks):
        try:
            with open(f"{tasks}/{task}/schedstat", encoding="ascii") as file:
                total += int(file.read().split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that just ended
    return total / _NS


def _maybe(read: Callable[[int | str], float], pid: int | str | None) -> float | None:
    if pid is None:
        return None
    try:
        return read(pid)
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Usage:
    """CPU counters at one moment: the wall clock, ours and the server's CPU
    time, and how long each has waited for a CPU (None: unknown)."""

    wall: float
    cpu: float
    wait: float | None
    server_cpu: float | None
    server_wait: float | None

    @classmethod
    def now(cls, pid: int | None) -> Usage:
        """The counters now, of this process and of the server *pid*."""
        return cls(
            time.perf_counter(),
            time.process_time(),
            _maybe(process_cpu_wait, "self"),
            _maybe(process_cpu, pid),
            _maybe(process_cpu_wait, pid),
        )


def usage_summary(
    start: Usage, end: Usage, cores: int | None = None
) -> tuple[dict[str, Any], list[str]]:
    """CPU use between *start* and *end*, and warnings about what it means
    for the numbers; *cores* is the machine's (``os.cpu_count()`` if None)."""
    wall = end.wall - start.wall
    if wall <= 0:
        return {}, []
    cores = cores or os.cpu_count() or 1
    summary: dict[str, Any] = {"window_s": round(wall, 3)}
    warnings = []
    gen_cpu = end.cpu - start.cpu
    gen_pct = gen_cpu / wall * 100
    summary["gen_cpu_s"] = round(gen_cpu, 3)
    summary["gen_cpu_pct"] = round(gen_pct)
    summary["gen_bottleneck"] = gen_pct >= BOTTLENECK_PCT
    if summary["gen_bottleneck"]:
        warnings.append(
            f"the generator used {gen_pct:.0f}% of one core: it was probably "
            "the bottleneck, so these numbers are a lower bound on what the "
            "server can do. Run several generators at once or use the Go "
            "loadgen to push harder."
        )
    waits = []
    if start.wait is not None and end.wait is not None:
        pct = (end.wait - start.wait) / wall * 100
        summary["gen_cpu_wait_pct"] = round(pct)
        if pct >= CPU_WAIT_WARNING_PCT:
            waits.append(f"the generator {pct:.0f}%")
    if start.server_cpu is not None and end.server_cpu is not None:
        server_cpu = end.server_cpu - start.server_cpu
        summary["srv_cpu_s"] = round(server_cpu, 3)
        summary["srv_cpu_pct"] = round(server_cpu / wall * 100)
        if (gen_cpu + server_cpu) / wall >= 0.9 * cores:
            warnings.append(
                f"the generator and the server together kept all {cores} "
                "cores busy: they competed for CPU; run them on separate "
                "machines for a fair measure."
            )
    if start.server_wait is not None and end.server_wait is not None:
        pct = (end.server_wait - start.server_wait) / wall * 100
        summary["srv_cpu_wait_pct"] = round(pct)
        if pct >= CPU_WAIT_WARNING_PCT:
            waits.append(f"the server {pct:.0f}%")
    if waits:
        warnings.append(
            "the CPUs were contended: "
            + " and ".join(waits)
            + " of the window was ready to run but waited for a CPU. Other "
            "processes (or generator and server) competed, so throughput is "
            "understated and latency overstated."
        )
    return summary, warnings


def loop_note(scenario: str, summary: dict[str, Any]) -> str | None:
    """For a closed-loop run in which neither the generator nor the server
    kept a core busy, a note that the rate is not the server's capacity."""
    if scenario not in ("dm", "fanout") or summary.get("gen_bottleneck", True):
        return None
    server = summary.get("srv_cpu_pct")
    if server is None or server >= BOTTLENECK_PCT:
        return None
    return (
        f"neither the server ({server}%) nor the generator "
        f"({summary['gen_cpu_pct']}%) kept a core busy: the closed loop (what "
        "is in flight, and how fast the generator answers) set this rate, "
        "not the server's capacity (for a one-process server). Try a larger "
        "-W or -P, several generators, or the Go loadgen."
    )
