"""Measure ``trichat serve`` with the Go load generator in ../shared/bench.

Builds the generator (``../shared/bench/build.sh``), runs each scenario a
few times, each against a new ``trichat serve`` with flood control and the
per-address cap off, and prints the median of each figure, the way
docs/performance.md quotes them::

    python benchmarks/loadgen.py                 # every scenario, 3 runs each
    python benchmarks/loadgen.py dm rate --runs 5

``--against`` runs an IRC server too, one run of it before each run of
trichat, so that both meet the same machine, and prints trichat's figures
as a ratio of its (the issue's targets are ratios to miniircd's); a
scenario it fails is reported, and trichat's runs go on::

    python benchmarks/loadgen.py dm --against \
        "python3 /path/to/miniircd --listen 127.0.0.1 --ports {port} --setuid root"

``--save FILE`` keeps the medians; ``--baseline FILE`` compares with medians
saved earlier (before a change, say) and exits 1 if a figure got worse by
more than ``--tolerance`` (10% unless told).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
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


# Figures where less is better; for the others (throughput) more is.
LOWER_IS_BETTER = {
    "p50_ms",
    "p99_ms",
    "max_ms",
    "srv_cpu_pct",
    "gen_cpu_pct",
    "login_s",
    "settle_s",
    "rss_per_conn_kb",
    "bcast_full_ms_median",
}


def trichat_command(port: int) -> list[str]:
    return [
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
    ]


@contextmanager
def fresh_server(command: list[str], port: int) -> Iterator[int]:
    """A new server for one run (so that one run's teardown or memory does
    not show in the next); yields its process id."""
    server = subprocess.Popen(
        command,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield server.pid
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def run_once(
    loadgen: str, port: int, pid: int, scenario: str, proto: str = "trichat"
) -> dict[str, Any]:
    command = [
        loadgen,
        "-proto",
        proto,
        "-addr",
        f"127.0.0.1:{port}",
        "-pid",
        str(pid),
        *SCENARIOS[scenario],
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[0])
    return result


def failure(scenario: str, proto: str, result: dict[str, Any]) -> str | None:
    """What went wrong in a run, or None if it went through."""
    if result.get("ok"):
        return None
    return f"{scenario} ({proto}) failed: {result.get('error')}"


def medians(scenario: str, results: list[dict[str, Any]]) -> dict[str, float]:
    return {
        figure: statistics.median(float(r[figure]) for r in results)
        for figure in FIGURES[scenario]
        if all(figure in r for r in results)
    }


def show(figures: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:g}" for k, v in figures.items())


def regressions(
    now: dict[str, dict[str, float]],
    before: dict[str, dict[str, float]],
    tolerance: float,
) -> list[str]:
    """The figures in *now* worse than in *before* by more than *tolerance*."""
    worse = []
    for scenario, figures in now.items():
        for figure, value in figures.items():
            old = before.get(scenario, {}).get(figure)
            if not old or figure == "gen_cpu_pct":
                continue
            change = (value - old) / old
            if figure not in LOWER_IS_BETTER:
                change = -change
            if change > tolerance:
                worse.append(f"{scenario} {figure}: {old:g} -> {value:g}")
    return worse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=7171)
    parser.add_argument(
        "--against",
        metavar="COMMAND",
        help="an IRC server to measure in the same run; {port} is its port",
    )
    parser.add_argument("--save", type=Path, metavar="FILE")
    parser.add_argument("--baseline", type=Path, metavar="FILE")
    parser.add_argument("--tolerance", type=float, default=0.10)
    args = parser.parse_args()
    loadgen = build_loadgen()
    ours = trichat_command(args.port)
    theirs = shlex.split(args.against.format(port=args.port)) if args.against else None
    summary: dict[str, dict[str, float]] = {}
    for scenario in args.scenarios:
        results, others = [], []
        their_failure = None
        for _ in range(args.runs):
            if theirs is not None and their_failure is None:
                with fresh_server(theirs, args.port) as pid:
                    other = run_once(loadgen, args.port, pid, scenario, "irc")
                their_failure = failure(scenario, "irc", other)
                others.append(other)
            with fresh_server(ours, args.port) as pid:
                result = run_once(loadgen, args.port, pid, scenario)
            if (ours_failed := failure(scenario, "trichat", result)) is not None:
                raise SystemExit(ours_failed)
            results.append(result)
        summary[scenario] = medians(scenario, results)
        print(f"{scenario} (median of {args.runs}): {show(summary[scenario])}")
        if their_failure is not None:
            # Not a reason to stop: miniircd cannot hold 2,000 connections.
            print(f"  --against: {their_failure}")
        elif theirs is not None:
            other = medians(scenario, others)
            print(f"  --against (median of {args.runs}): {show(other)}")
            ratios = {k: summary[scenario][k] / v for k, v in other.items() if v}
            print(
                f"  trichat / it: {show({k: round(v, 2) for k, v in ratios.items()})}"
            )
        sys.stdout.flush()
    if args.save:
        args.save.write_text(json.dumps(summary, indent=2) + "\n")
    if args.baseline:
        worse = regressions(
            summary, json.loads(args.baseline.read_text()), args.tolerance
        )
        for line in worse:
            print(f"worse: {line}")
        return 1 if worse else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
