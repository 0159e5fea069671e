"""Measure ``trichat serve`` with the Go load generator in ../shared/bench.

Builds the generator (``../shared/bench/build.sh``), runs each scenario a
few times, each against a new ``trichat serve`` with flood control and the
per-address cap off, and prints the median of each figure, the way
docs/performance.md quotes them::

    python benchmarks/loadgen.py                 # every scenario, 3 runs each
    python benchmarks/loadgen.py dm rate --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT.parent / "shared" / "bench" / "build.sh"

SCENARIOS: dict[str, list[str]] = {
    "dm": ["-scenario", "dm", "-P", "50", "-W", "16", "-D", "10s"],
    "rate": ["-scenario", "rate", "-P", "50", "-R", "20000", "-D", "10s"],
    "fanout": ["-scenario", "fanout", "-N", "200", "-W", "16", "-D", "10s"],
    "idle": ["-scenario", "idle", "-C", "2000"],
}
# The figures worth a median, per scenario.
FIGURES: dict[str, list[str]] = {
    "dm": ["msgs_per_s", "p50_ms", "p99_ms", "srv_cpu_pct", "gen_cpu_pct"],
    "rate": ["msgs_per_s", "p50_ms", "p99_ms", "max_ms", "srv_cpu_pct"],
    "fanout": ["msgs_per_s", "p50_ms", "p99_ms", "srv_cpu_pct"],
    "idle": [
        "login_s",
        "settle_s",
        "rss_per_conn_kb",
        "p99_ms",
        "bcast_full_ms_median",
        "srv_cpu_pct",
    ],
}


def build_loadgen() -> str:
    built = subprocess.run(
        ["bash", str(BUILD)], check=True, capture_output=True, text=True
    )
    return built.stdout.strip().splitlines()[-1]


def wait_for_port(port: int, within: float = 10.0) -> None:
    """Return once something accepts connections on *port*."""
    deadline = time.monotonic() + within
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def fresh_server(port: int) -> Iterator[int]:
    """A new ``trichat serve`` for one run (so that one run's teardown or
    memory does not show in the next); yields its process id."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trichat",
            "serve",
            "--port",
            str(port),
            "--rate",
            "0",
            "--max-per-ip",
            "0",
            "--log-level",
            "warning",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    try:
        wait_for_port(port)
        yield server.pid
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)


def run_once(loadgen: str, port: int, pid: int, scenario: str) -> dict[str, Any]:
    command = [
        loadgen,
        "-proto",
        "trichat",
        "-addr",
        f"127.0.0.1:{port}",
        "-pid",
        str(pid),
        "-label",
        "trichat",
        *SCENARIOS[scenario],
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[0])
    if not result.get("ok"):
        raise SystemExit(f"{scenario} failed: {result.get('error')}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=7171)
    args = parser.parse_args()
    loadgen = build_loadgen()
    for scenario in args.scenarios:
        results = []
        for _ in range(args.runs):
            with fresh_server(args.port) as pid:
                results.append(run_once(loadgen, args.port, pid, scenario))
        medians = {
            figure: statistics.median(float(r[figure]) for r in results)
            for figure in FIGURES[scenario]
        }
        shown = "  ".join(f"{k}={v:g}" for k, v in medians.items())
        print(f"{scenario} (median of {args.runs}): {shown}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
