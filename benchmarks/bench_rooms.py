r"""Measure ``trichat serve`` with ``trichat bench -s rooms``, issue 11's way.

Each run starts a new ``trichat serve`` (this checkout's, flood control and
the per-address cap off, ``--presence rooms``, room for every user under
``--max-clients``), runs ``trichat bench -s rooms`` against it once per
rate asked for, and the medians of the runs are printed against issue
11's targets (all joined within 15 s, at most 16 KiB per user, p99 under
50 ms at the rate offered, nothing lost)::

    .nox/test/bin/python benchmarks/bench_rooms.py               # 10,000 users, 3 runs
    .nox/test/bin/python benchmarks/bench_rooms.py --rate 500 --rate 2000
    .nox/test/bin/python benchmarks/bench_rooms.py --users 2000 --rooms 200 --runs 1

The generator is this checkout's ``trichat bench`` on the Python running
this script (the nox test venv's has the Trio the project tests with).
``--trichat COMMAND`` measures another server (``{port}`` is its port);
``--serve-option`` (repeatable) adds an option to this checkout's server;
what follows ``--`` goes to ``trichat bench`` as it is.
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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# (figure, label, the target it must meet: "<=" or ">=" a value, or None)
FIGURES: list[tuple[str, str, tuple[str, float] | None]] = [
    ("join_s", "all logged in and joined, s", ("<=", 15.0)),
    ("joins_settled_s", "join lists settled after that, s", None),
    ("join_srv_cpu_s", "server CPU logging in and joining, s", None),
    ("join_gen_cpu_s", "generator CPU logging in and joining, s", None),
    ("rss_per_user_kb", "server RSS per user, KiB", ("<=", 16.0)),
    ("offered_per_s", "offered, msg/s", None),
    ("msgs_per_s", "delivered in the window, deliveries/s", None),
    ("p50_ms", "latency p50, ms", None),
    ("p99_ms", "latency p99, ms", ("<", 50.0)),
    ("max_ms", "latency max, ms", None),
    ("lost", "deliveries lost", ("<=", 0.0)),
    ("msgs_incomplete", "messages not delivered to every member", ("<=", 0.0)),
    ("gen_late_p99_ms", "generator schedule slip p99, ms", None),
    ("srv_cpu_pct", "server CPU, % of a core", None),
    ("gen_cpu_pct", "generator CPU, % of a core", None),
    ("srv_us_per_delivery", "server CPU per delivery, us", None),
    ("gen_us_per_delivery", "generator CPU per delivery, us", None),
]


def port_in_use(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class ServerFailed(SystemExit):
    """The server of a run exited, or did not listen in time. A script
    that does not catch it exits with its message; one that compares
    servers (loadgen.py) records the run as failed and goes on."""


@contextmanager
def fresh_server(
    command: list[str], env: Mapping[str, str], port: int, within: float = 10.0
) -> Iterator[int]:
    """A new server for one run (so that one run's teardown or memory does
    not show in the next), listening within *within* seconds; yields its
    process id, and stops it with SIGTERM after."""
    if port_in_use(port):
        raise SystemExit(f"something else is listening on port {port}")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + within
        while not port_in_use(port):
            if process.poll() is not None:
                raise ServerFailed(
                    f"the server exited with status {process.returncode}"
                )
            if time.monotonic() > deadline:
                raise ServerFailed(f"the server is not listening on {port}")
            time.sleep(0.05)
        yield process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def server_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    if args.trichat:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return shlex.split(args.trichat.format(port=args.port)), env
    command = [
        sys.executable,
        "-m",
        "trichat",
        "serve",
        "--port",
        str(args.port),
        "--rate",
        "0",
        "--max-per-ip",
        "0",
        "--max-clients",
        str(args.users + 100),
        "--presence",
        "rooms",
        "--log-level",
        "warning",
        *args.serve_option,
    ]
    return command, {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def bench_once(args: argparse.Namespace, rate: float, pid: int) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "trichat",
        "bench",
        "-s",
        "rooms",
        "--port",
        str(args.port),
        "--pid",
        str(pid),
        "--users",
        str(args.users),
        "--rooms",
        str(args.rooms),
        "--rooms-each",
        str(args.rooms_each),
        "--rate",
        f"{rate:g}",
        "--duration",
        args.duration,
        "--conc",
        str(args.conc),
        "--json",
        "-q",
        *args.bench_args,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    load = os.getloadavg()[0]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise SystemExit(
            f"trichat bench failed ({done.returncode}): {done.stderr.strip()}"
        ) from None
    result["load"] = load
    return result


def verdict(value: float, target: tuple[str, float] | None) -> str:
    if target is None:
        return ""
    op, limit = target
    if op == "<=":
        met = value <= limit
    elif op == "<":
        met = value < limit
    else:
        met = value >= limit
    return f"{op} {limit:g}: {'met' if met else 'MISSED'}"


def report(rate: float, results: list[dict[str, Any]]) -> list[str]:
    loads = [r["load"] for r in results]
    lines = [
        f"\n{results[0]['users']:,} users, {results[0]['rooms']:,} rooms, "
        f"{results[0]['rooms_each']} each, {rate:g} msg/s offered; median of "
        f"{len(results)} run(s) (load average {min(loads):.1f} to {max(loads):.1f})"
    ]
    for figure, label, target in FIGURES:
        values = [float(r[figure]) for r in results if figure in r]
        if not values:
            continue
        median = statistics.median(values)
        each = ", ".join(f"{v:g}" for v in values)
        lines.append(
            f"  {label:<42} {median:>10g}  ({each})  {verdict(median, target)}"
        )
    for result in results:
        for warning in result.get("warnings", []):
            lines.append(f"  warning: {warning}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=7191)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rooms", type=int, default=1_000)
    parser.add_argument("--rooms-each", type=int, default=5)
    parser.add_argument(
        "--rate",
        type=float,
        action="append",
        help="messages/s offered in all (repeatable: each run runs each rate, "
        "a new server for each); 2000 unless told",
    )
    parser.add_argument("--duration", default="10s")
    parser.add_argument("--conc", type=int, default=64, help="logins in flight")
    parser.add_argument("--trichat", metavar="COMMAND")
    parser.add_argument("--serve-option", action="append", default=[])
    parser.add_argument(
        "--save", type=Path, metavar="FILE", help="every run's result, as JSON lines"
    )
    parser.add_argument("bench_args", nargs="*", help="after --: for trichat bench")
    args = parser.parse_args()
    rates: list[float] = args.rate or [2000.0]
    command, env = server_command(args)
    print(f"server: {shlex.join(command)}", flush=True)
    results: dict[float, list[dict[str, Any]]] = {rate: [] for rate in rates}
    for run in range(args.runs):
        for rate in rates:
            with fresh_server(command, env, args.port) as pid:
                result = bench_once(args, rate, pid)
            results[rate].append(result)
            if args.save:
                with args.save.open("a") as file:
                    file.write(json.dumps(result) + "\n")
            brief = {
                k: result.get(k)
                for k in (
                    "ok",
                    "join_s",
                    "rss_per_user_kb",
                    "p99_ms",
                    "lost",
                    "conns_lost",
                    "errors",
                )
            }
            print(
                f"run {run + 1}/{args.runs} at {rate:g} msg/s "
                f"(load {result['load']:.1f}): {brief}",
                file=sys.stderr,
                flush=True,
            )
            if not result.get("ok"):
                print(f"  error: {result.get('error')}", file=sys.stderr)
    for rate in rates:
        ok = [r for r in results[rate] if r.get("ok")]
        if ok:
            print("\n".join(report(rate, ok)))
        failed = len(results[rate]) - len(ok)
        if failed:
            print(f"  {failed} run(s) at {rate:g} msg/s failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
