r"""Measure ``trichat serve`` with the Go load generator in ../shared/bench.

Builds the generator (``../shared/bench/build.sh``), runs each scenario a
few times, each against a new ``trichat serve`` with flood control and the
per-address cap off, and prints the median of each figure, the way
docs/performance.md quotes them::

    python benchmarks/loadgen.py                 # every scenario, 3 runs each
    python benchmarks/loadgen.py dm rate --runs 5 --duration 5s

The trichat under test is this checkout's (``python -m trichat serve`` with
``src`` on the path, on the Python running this script); ``--trichat
[LABEL=]COMMAND`` runs another one instead. ``--against [LABEL=]COMMAND``,
repeatable, measures other servers in the same run: for each run index
every server runs once, each on a new process, in an order that rotates
from one run to the next (the first run: the ``--against`` servers in the
order given, then trichat), so that all meet the same machine. Each
scenario prints one table: every server's medians, then trichat's figures
as ratios of each other server's. A scenario that another server fails is
reported and not run on it again; trichat's runs go on. In a COMMAND,
``{port}`` is the port; commands other than the default run without
``PYTHONPATH``, so that an installed trichat runs its own code. LABEL
defaults to the command's name (a Python script's, or module's); a
command running ``trichat serve`` is spoken to in trichat's protocol, any
other in IRC (``LABEL:irc=`` or ``LABEL:trichat=`` says which)::

    python benchmarks/loadgen.py dm --against \
        "python3 /path/to/miniircd --listen 127.0.0.1 --ports {port} --setuid root"

The comparison issue 10 asks for: release 1.0 (installed outside the
checkout: ``git archive v1.0.0 | tar -x -C /tmp/trichat-v1``, then
``pip install /tmp/trichat-v1`` into the venv ``/tmp/trichat-v1/.venv``)
against this checkout and miniircd 2.3 (its one file at
``/tmp/miniircd/miniircd``), medians of 3, both trichats on the same Trio
(the nox test venv's, as in 1.0's venv). A backslash at the end of a line
inside the double quotes joins the lines, so this pastes into a shell::

    .nox/test/bin/python benchmarks/loadgen.py dm fanout rate idle \
        --against "v1.0=/tmp/trichat-v1/.venv/bin/trichat serve --port {port} \
            --rate 0 --max-per-ip 0 --log-level warning" \
        --against "miniircd=python3 /tmp/miniircd/miniircd --listen 127.0.0.1 \
            --ports {port} --setuid root"

The idle table's ``login_presence_s`` is ``login_s + settle_s`` of each
run: the time until all 2,000 are logged in and have had the presence
traffic.

``--save FILE`` keeps trichat's medians; ``--baseline FILE`` compares with
medians saved earlier (before a change, say) and exits 1 if a figure got
worse by more than ``--tolerance`` (10% unless told).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
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
        "login_presence_s",
        "rss_per_conn_kb",
        "p99_ms",
        "bcast_full_ms_median",
        "srv_cpu_pct",
    ],
}
# Figures made from the generator's own, per run.
DERIVED = {"login_presence_s": ("login_s", "settle_s")}

# Figures where less is better; for the others (throughput) more is.
LOWER_IS_BETTER = {
    "p50_ms",
    "p99_ms",
    "max_ms",
    "srv_cpu_pct",
    "gen_cpu_pct",
    "login_s",
    "settle_s",
    "login_presence_s",
    "rss_per_conn_kb",
    "bcast_full_ms_median",
}

PROTOCOLS = ("trichat", "irc")
# "LABEL=COMMAND" or "LABEL:PROTO=COMMAND"; a command alone has a space or
# a slash before any "=".
LABELLED = re.compile(r"(?P<label>[\w.+-]+)(?::(?P<proto>\w+))?=(?P<command>.*)", re.S)


@dataclass(frozen=True)
class Server:
    """A server to measure: how to start it and how to speak to it."""

    label: str
    command: list[str]
    proto: str
    env: Mapping[str, str]


def this_checkout(port: int) -> Server:
    command = [
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
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return Server("trichat", command, "trichat", env)


def runs_trichat(words: list[str]) -> bool:
    """Whether *words* run ``trichat serve`` (or ``python -m trichat serve``)."""
    return any(
        Path(word).name == "trichat" and following == "serve"
        for word, following in itertools.pairwise(words)
    )


def default_label(words: list[str]) -> str:
    """The program's name, or the script's or module's a Python runs."""
    program = Path(words[0]).name
    if not program.startswith("python"):
        return program
    rest = iter(words[1:])
    for word in rest:
        if word == "-m":
            return next(rest, program)
        if not word.startswith("-"):
            return Path(word).stem
    return program


def parse_server(spec: str, port: int) -> Server:
    """A server from ``[LABEL[:PROTO]=]COMMAND``, ``{port}`` filled in."""
    label = proto = None
    if (labelled := LABELLED.fullmatch(spec)) is not None:
        label, proto, spec = labelled.group("label", "proto", "command")
    words = shlex.split(spec.format(port=port))
    if not words:
        raise SystemExit(f"no command in {spec!r}")
    if proto is None:
        proto = "trichat" if runs_trichat(words) else "irc"
    elif proto not in PROTOCOLS:
        raise SystemExit(f"{proto!r}: the protocols are {', '.join(PROTOCOLS)}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return Server(label or default_label(words), words, proto, env)


def build_loadgen() -> str:
    built = subprocess.run(
        ["bash", str(BUILD)], check=True, capture_output=True, text=True
    )
    return built.stdout.strip().splitlines()[-1]


def port_in_use(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_for_port(server: subprocess.Popen[bytes], port: int, within: float) -> None:
    """Return once something accepts connections on *port*."""
    deadline = time.monotonic() + within
    while not port_in_use(port):
        if server.poll() is not None:
            raise RuntimeError(f"exited with status {server.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not listening on {port} after {within:g} s")
        time.sleep(0.05)


@contextmanager
def fresh_server(server: Server, port: int) -> Iterator[int]:
    """A new server for one run (so that one run's teardown or memory does
    not show in the next); yields its process id."""
    if port_in_use(port):
        raise SystemExit(f"something else is listening on port {port}")
    process = subprocess.Popen(
        server.command, env=server.env, stdout=subprocess.DEVNULL
    )
    try:
        wait_for_port(process, port, within=10.0)
        yield process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def scenario_args(scenario: str, duration: str | None) -> list[str]:
    args = list(SCENARIOS[scenario])
    if duration is not None and "-D" in args:
        args[args.index("-D") + 1] = duration
    return args


def run_once(
    loadgen: str, server: Server, port: int, scenario: str, duration: str | None
) -> dict[str, Any]:
    """One run of *scenario* against a new *server*: the generator's figures,
    or ``ok`` false and an ``error``."""
    try:
        with fresh_server(server, port) as pid:
            command = [
                loadgen,
                "-proto",
                server.proto,
                "-addr",
                f"127.0.0.1:{port}",
                "-pid",
                str(pid),
                "-label",
                server.label,
                *scenario_args(scenario, duration),
            ]
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        return {"ok": False, "error": str(error)}
    lines = done.stdout.splitlines()
    if not lines:
        return {"ok": False, "error": done.stderr.strip() or "no output"}
    result: dict[str, Any] = json.loads(lines[0])
    for figure, parts in DERIVED.items():
        if all(part in result for part in parts):
            result[figure] = sum(float(result[part]) for part in parts)
    return result


def medians(scenario: str, results: list[dict[str, Any]]) -> dict[str, float]:
    return {
        figure: statistics.median(float(r[figure]) for r in results)
        for figure in FIGURES[scenario]
        if results and all(figure in r for r in results)
    }


def number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def table(
    ours: str, columns: dict[str, dict[str, float]], failed: dict[str, str]
) -> list[str]:
    """Rows of figures, a column per server and one per ratio of *ours* to
    another server's."""
    others = [label for label in columns if label != ours]
    header = ["figure", *columns, *(f"{ours}/{label}" for label in others)]
    rows = [header]
    for figure in columns[ours]:
        row = [figure]
        row += [
            number(figures[figure]) if figure in figures else "-"
            for figures in columns.values()
        ]
        for label in others:
            theirs = columns[label].get(figure)
            row.append(f"{columns[ours][figure] / theirs:.2f}" if theirs else "-")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines += [f"  {label} failed: {why}" for label, why in failed.items()]
    return lines


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
    parser.add_argument(
        "scenarios", nargs="*", default=list(SCENARIOS), choices=list(SCENARIOS)
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=7171)
    parser.add_argument(
        "--duration",
        metavar="D",
        help="measured window of dm, rate and fanout, as the generator's -D "
        "takes it (10s unless told)",
    )
    parser.add_argument(
        "--trichat",
        metavar="[LABEL=]COMMAND",
        help="the trichat to measure, instead of this checkout's; {port} is its port",
    )
    parser.add_argument(
        "--against",
        metavar="[LABEL[:PROTO]=]COMMAND",
        action="append",
        default=[],
        help="another server to measure in the same runs (repeatable); "
        "{port} is its port",
    )
    parser.add_argument("--save", type=Path, metavar="FILE")
    parser.add_argument("--baseline", type=Path, metavar="FILE")
    parser.add_argument("--tolerance", type=float, default=0.10)
    args = parser.parse_args()
    ours = (
        parse_server(args.trichat, args.port)
        if args.trichat
        else this_checkout(args.port)
    )
    servers = [*(parse_server(spec, args.port) for spec in args.against), ours]
    labels = [server.label for server in servers]
    if len(set(labels)) < len(labels):
        raise SystemExit(f"labels {labels}: name each server with LABEL=COMMAND")
    loadgen = build_loadgen()
    for server in servers:
        print(f"{server.label} ({server.proto}): {shlex.join(server.command)}")
    summary: dict[str, dict[str, float]] = {}
    for scenario in args.scenarios:
        results: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
        failed: dict[str, str] = {}
        for run in range(args.runs):
            turn = run % len(servers)
            for server in servers[turn:] + servers[:turn]:
                if server.label in failed:
                    continue
                result = run_once(loadgen, server, args.port, scenario, args.duration)
                if not result.get("ok"):
                    why = str(result.get("error"))
                    if server is ours:
                        raise SystemExit(f"{scenario} ({server.label}) failed: {why}")
                    # Not a reason to stop: miniircd cannot hold 2,000
                    # connections.
                    failed[server.label] = why
                    continue
                results[server.label].append(result)
        columns = {label: medians(scenario, runs) for label, runs in results.items()}
        summary[scenario] = columns[ours.label]
        print(f"\n{scenario}, median of {args.runs} run(s) per server:")
        print("\n".join(table(ours.label, columns, failed)))
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
