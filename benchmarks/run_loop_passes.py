"""Run trichat's server with an instrument timing Trio's run-loop passes.

docs/performance.md explains latency by the passes of Trio's run loop
over the reader tasks; this is how those figures are made. It serves
(flood control and the per-address cap off) for ``--seconds``, or until
Ctrl-C, then prints how long the passes that ran tasks took, how many
task steps each held, and how long the loop waited for I/O::

    python benchmarks/run_loop_passes.py --port 7000 --seconds 12 &
    /tmp/trichat-loadgen -proto trichat -addr 127.0.0.1:7000 \\
        -scenario dm -P 50 -W 16 -D 5s

The instrument itself costs a little time per task step, so the server
runs somewhat slower than without it.
"""

from __future__ import annotations

import argparse
import time

import trio

from trichat._process import until_interrupted
from trichat.server import ChatServer, ServerConfig


class PassTimer(trio.abc.Instrument):
    """Times each pass of the run loop: its run phase (from the end of one
    wait for I/O to the start of the next) and its wait for I/O."""

    def __init__(self) -> None:
        self.runs: list[float] = []
        self.steps: list[int] = []
        self.waits: list[float] = []
        self._mark = time.perf_counter()
        self._steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._steps += 1

    def before_io_wait(self, timeout: float) -> None:
        now = time.perf_counter()
        if self._steps:
            self.runs.append(now - self._mark)
            self.steps.append(self._steps)
        self._steps = 0
        self._mark = now

    def after_io_wait(self, timeout: float) -> None:
        now = time.perf_counter()
        self.waits.append(now - self._mark)
        self._mark = now


def _quantiles(values: list[float], scale: float) -> str:
    ordered = sorted(values)
    if not ordered:
        return "none"
    picks = [
        ordered[min(len(ordered) - 1, int(len(ordered) * q))] for q in (0.5, 0.9, 0.99)
    ]
    shown = ", ".join(f"{v * scale:.3g}" for v in picks)
    return f"p50/p90/p99 {shown}, max {ordered[-1] * scale:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7000)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    server = ChatServer(ServerConfig(port=args.port, rate=0, max_per_ip=0))

    async def serve_for_a_while() -> None:
        with trio.move_on_after(args.seconds):
            await server.serve()

    timer = PassTimer()
    trio.run(until_interrupted, serve_for_a_while, instruments=[timer])
    print(f"passes that ran tasks: {len(timer.runs)}")
    print(f"  run phase, ms: {_quantiles(timer.runs, 1e3)}")
    print(f"  task steps: {_quantiles([float(s) for s in timer.steps], 1)}")
    print(f"waits for I/O, ms: {_quantiles(timer.waits, 1e3)}")


if __name__ == "__main__":
    main()
