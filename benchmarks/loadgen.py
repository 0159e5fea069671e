r"""Measure ``trichat serve`` with the Go load generator in ../shared/bench.

Builds the generator (``../shared/bench/build.sh``), runs each scenario a
few times, each against a new ``trichat serve`` with flood control and the
per-address cap off, and prints the median of each figure, the way
docs/performance.md quotes them::

    python benchmarks/loadgen.py                 # dm rate fanout idle, 3 runs each
    python benchmarks/loadgen.py dm rate --runs 5 --duration 5s
    python benchmarks/loadgen.py --issue-11      # and the protocol-2 scenarios

Runs go run by run: each run index runs every scenario asked for on every
server, so that scenarios compared with each other meet the same machine.
Besides the four of the generator (``dm``, ``rate``, ``fanout``, ``idle``)
there are protocol 2's (issue 11), which only a trichat that speaks
protocol 2 runs (this checkout's; never 1.0):

- ``dm2``: ``dm`` as protocol-2 users (``-hello``);
- ``fanout-room``: ``fanout`` to a room of all 200 receivers (``-room
  '#bench'``), as protocol-1 users like ``fanout`` to ``*``; an IRC server
  runs its channel fanout here (and in ``fanout``), the same shape;
- ``fanout2``, ``fanout-room2``: the same two as protocol-2 users;
- ``idle-room``: 2,000 protocol-2 users in one room of a server started
  with ``--presence rooms`` (``-room '#bench' -own-login-only -hello``);
  an IRC server's 2,000 in ``#bench``.

After the tables come the ratios between scenarios of the same run that
issue 11 sets targets for (``fanout-room`` / ``fanout`` at least 0.9,
``dm2`` / ``dm`` at least 0.85), each run's own ratio, and whether the
medians meet the target. Every run's one-line summary, with the load
average when it started, goes to stderr as it finishes.

The trichat under test is this checkout's (``python -m trichat serve`` with
``src`` on the path, on the Python running this script, keeping nothing:
``--db :memory: --history 0``); ``--trichat
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
other in IRC (``LABEL:irc=`` or ``LABEL:trichat=`` says which; such a
trichat is taken for one that speaks protocol 1 only, unless labelled
``LABEL:trichat2=``). ``--loadgen-flags LABEL=FLAGS`` gives the generator
more flags for one server (InspIRCd registers logins on a one-second tick,
so its idle runs need ``-conc 256``)::

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
run: the time until all 2,000 are logged in (with ``-room``: and joined)
and have had the presence traffic (the join lists).

Issue 11's comparison, with two IRC servers installed from Debian for
the measurement only (their configuration files written to /tmp by
scripts outside the checkout; see docs/performance.md)::

    .nox/test/bin/python benchmarks/loadgen.py --issue-11 \
        --against "ngircd=/tmp/irc-bench/ngircd.sh {port}" \
        --against "inspircd=/tmp/irc-bench/inspircd.sh {port}" \
        --loadgen-flags "inspircd=-conc 256"

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
import statistics
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench_rooms import ServerFailed, fresh_server

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT.parent / "shared" / "bench" / "build.sh"


@dataclass(frozen=True)
class Scenario:
    """One load: the generator's flags, and who runs it how.

    ``trichat`` are flags given to the generator only against a trichat
    server, ``serve`` options given to ``trichat serve`` for it. A
    ``protocol2`` scenario runs only on a trichat that speaks protocol 2
    (this checkout's, or one labelled ``LABEL:trichat2=``), never on 1.0;
    an IRC server runs a scenario, with ``generator`` alone, if ``irc``.
    """

    generator: list[str]
    figures: list[str]
    trichat: list[str] = field(default_factory=list)
    serve: list[str] = field(default_factory=list)
    protocol2: bool = False
    irc: bool = True


_DM = ["-scenario", "dm", "-P", "50", "-W", "16", "-D", "10s"]
_FANOUT = ["-scenario", "fanout", "-N", "200", "-W", "16", "-D", "10s"]
_IDLE = ["-scenario", "idle", "-C", "2000"]
_ROOM = ["-room", "#bench"]
_DM_FIGURES = ["msgs_per_s", "p50_ms", "p99_ms", "srv_cpu_pct", "gen_cpu_pct"]
_FANOUT_FIGURES = ["msgs_per_s", "p50_ms", "p99_ms", "srv_cpu_pct"]
_IDLE_FIGURES = [
    "login_s",
    "settle_s",
    "login_presence_s",
    "rss_per_conn_kb",
    "p99_ms",
    "bcast_full_ms_median",
    "srv_cpu_pct",
]

SCENARIOS: dict[str, Scenario] = {
    "dm": Scenario(_DM, _DM_FIGURES),
    "rate": Scenario(
        ["-scenario", "rate", "-P", "50", "-R", "20000", "-D", "10s"],
        ["msgs_per_s", "p50_ms", "p99_ms", "max_ms", "srv_cpu_pct"],
    ),
    "fanout": Scenario(_FANOUT, _FANOUT_FIGURES),
    "idle": Scenario(_IDLE, _IDLE_FIGURES),
    # Protocol 2 (issue 11). dm as protocol-2 users: hello|2 first, msg
    # frames with an id and a time.
    "dm2": Scenario(_DM, _DM_FIGURES, ["-hello"], protocol2=True, irc=False),
    # fanout to a room of all 200 receivers, as protocol 1 users like the
    # fanout to * it is compared with; an IRC server runs its channel fanout
    # (everyone in #bench), the same shape.
    "fanout-room": Scenario(_FANOUT, _FANOUT_FIGURES, _ROOM, protocol2=True),
    # The same two as protocol-2 users.
    "fanout2": Scenario(
        _FANOUT, _FANOUT_FIGURES, ["-hello"], protocol2=True, irc=False
    ),
    "fanout-room2": Scenario(
        _FANOUT, _FANOUT_FIGURES, ["-hello", *_ROOM], protocol2=True, irc=False
    ),
    # 2,000 protocol-2 users in one room under --presence rooms: login and
    # join, memory, the room broadcast; an IRC server's 2,000 in #bench.
    "idle-room": Scenario(
        _IDLE,
        _IDLE_FIGURES,
        ["-hello", "-own-login-only", *_ROOM],
        ["--presence", "rooms"],
        protocol2=True,
    ),
}
DEFAULT_SCENARIOS = ["dm", "rate", "fanout", "idle"]
ISSUE_11 = ["fanout", "fanout-room", "dm", "dm2", "idle-room"]
"""The scenarios issue 11's targets need (``--issue-11``)."""

# Ratios of this checkout's medians between two scenarios of the same run,
# with the issue's targets: (scenario, of scenario, figure, at least).
COMPARISONS: list[tuple[str, str, str, float]] = [
    ("fanout-room", "fanout", "msgs_per_s", 0.9),
    ("dm2", "dm", "msgs_per_s", 0.85),
    ("fanout-room2", "fanout2", "msgs_per_s", 0.9),
    ("fanout2", "fanout", "msgs_per_s", 0.0),
]
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

PROTOCOLS = ("trichat", "trichat2", "irc")
# "LABEL=COMMAND" or "LABEL:PROTO=COMMAND"; a command alone has a space or
# a slash before any "=".
LABELLED = re.compile(r"(?P<label>[\w.+-]+)(?::(?P<proto>\w+))?=(?P<command>.*)", re.S)


@dataclass(frozen=True)
class Server:
    """A server to measure: how to start it and how to speak to it."""

    label: str
    command: list[str]
    proto: str
    """The generator's -proto: trichat or irc."""
    env: Mapping[str, str]
    protocol2: bool = False
    """A trichat that speaks protocol 2 (runs the protocol2 scenarios)."""
    flags: tuple[str, ...] = ()
    """More flags for the generator in every run against this server."""

    def runs(self, scenario: Scenario) -> bool:
        if self.proto == "irc":
            return scenario.irc
        return self.protocol2 or not scenario.protocol2

    def command_for(self, scenario: Scenario) -> list[str]:
        if self.proto == "irc":
            return self.command
        return [*self.command, *scenario.serve]

    def generator_flags(self, scenario: Scenario) -> list[str]:
        if self.proto == "irc":
            return [*scenario.generator, *self.flags]
        return [*scenario.generator, *scenario.trichat, *self.flags]


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
        # Nothing kept, as 1.0 kept nothing (and nothing written to the
        # user's data directory): history's own cost is measured by
        # history_servers.py.
        "--db",
        ":memory:",
        "--history",
        "0",
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return Server("trichat", command, "trichat", env, protocol2=True)


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
    protocol2 = proto == "trichat2"
    if protocol2:
        proto = "trichat"
    return Server(label or default_label(words), words, proto, env, protocol2)


def build_loadgen() -> str:
    built = subprocess.run(
        ["bash", str(BUILD)], check=True, capture_output=True, text=True
    )
    return built.stdout.strip().splitlines()[-1]


def scenario_args(flags: list[str], duration: str | None) -> list[str]:
    args = list(flags)
    if duration is not None and "-D" in args:
        args[args.index("-D") + 1] = duration
    return args


def run_once(
    loadgen: str, server: Server, port: int, scenario: str, duration: str | None
) -> dict[str, Any]:
    """One run of *scenario* against a new *server*: the generator's figures,
    or ``ok`` false and an ``error``."""
    load = SCENARIOS[scenario]
    try:
        with fresh_server(server.command_for(load), server.env, port) as pid:
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
                *scenario_args(server.generator_flags(load), duration),
            ]
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (ServerFailed, subprocess.TimeoutExpired) as error:
        return {"ok": False, "error": str(error)}
    lines = done.stdout.splitlines()
    if not lines:
        return {"ok": False, "error": done.stderr.strip() or "no output"}
    result: dict[str, Any] = json.loads(lines[0])
    result["load"] = load_at_start()
    if len(lines) > 1:
        result["summary"] = lines[1].lstrip("# ")
    for figure, parts in DERIVED.items():
        if all(part in result for part in parts):
            result[figure] = sum(float(result[part]) for part in parts)
    return result


def load_at_start() -> float:
    """The machine's load average over the last minute."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def medians(scenario: str, results: list[dict[str, Any]]) -> dict[str, float]:
    return {
        figure: statistics.median(float(r[figure]) for r in results)
        for figure in SCENARIOS[scenario].figures
        if results and all(figure in r for r in results)
    }


def comparisons(
    label: str, results: dict[str, dict[str, list[dict[str, Any]]]]
) -> list[str]:
    """Lines comparing *label*'s medians between scenarios of this run
    (``COMPARISONS``), with each run's own ratio and the target; none for
    a pair that *label* did not run both of."""
    lines = []
    for scenario, other, figure, target in COMPARISONS:
        ours = results.get(scenario, {}).get(label, [])
        theirs = results.get(other, {}).get(label, [])
        if not ours or not theirs:
            continue
        mine = statistics.median(float(r[figure]) for r in ours)
        base = statistics.median(float(r[figure]) for r in theirs)
        each = ", ".join(
            f"{float(a[figure]) / float(b[figure]):.2f}"
            for a, b in zip(ours, theirs, strict=False)
        )
        line = (
            f"{label} {scenario} / {other} {figure}: {number(mine)} / "
            f"{number(base)} = {mine / base:.2f} (run by run: {each})"
        )
        if target:
            verdict = "met" if mine / base >= target else "MISSED"
            line += f"; target >= {target:g}: {verdict}"
        lines.append(line)
    return lines


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
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"any of {', '.join(SCENARIOS)} (default: {' '.join(DEFAULT_SCENARIOS)})",
    )
    parser.add_argument(
        "--issue-11",
        action="store_true",
        help=f"add the scenarios issue 11's targets need: {' '.join(ISSUE_11)}",
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
    parser.add_argument(
        "--loadgen-flags",
        metavar="LABEL=FLAGS",
        action="append",
        default=[],
        help="more flags for the generator against server LABEL (repeatable), "
        "e.g. 'inspircd=-conc 256'",
    )
    parser.add_argument("--save", type=Path, metavar="FILE")
    parser.add_argument("--baseline", type=Path, metavar="FILE")
    parser.add_argument("--tolerance", type=float, default=0.10)
    args = parser.parse_args()
    scenarios = list(args.scenarios)
    for scenario in scenarios:
        if scenario not in SCENARIOS:
            parser.error(f"unknown scenario {scenario!r}")
    if args.issue_11:
        scenarios += [name for name in ISSUE_11 if name not in scenarios]
    if not scenarios:
        scenarios = list(DEFAULT_SCENARIOS)
    ours = (
        parse_server(args.trichat, args.port)
        if args.trichat
        else this_checkout(args.port)
    )
    servers = [*(parse_server(spec, args.port) for spec in args.against), ours]
    for spec in args.loadgen_flags:
        label, _, flags = spec.partition("=")
        matching = [i for i, s in enumerate(servers) if s.label == label]
        if not matching:
            parser.error(f"--loadgen-flags {spec!r}: no server labelled {label!r}")
        for i in matching:
            servers[i] = replace(servers[i], flags=tuple(shlex.split(flags)))
    for scenario in list(scenarios):
        if not ours.runs(SCENARIOS[scenario]):
            print(f"{scenario}: skipped, {ours.label} does not speak protocol 2")
            scenarios.remove(scenario)
    labels = [server.label for server in servers]
    if len(set(labels)) < len(labels):
        raise SystemExit(f"labels {labels}: name each server with LABEL=COMMAND")
    loadgen = build_loadgen()
    for server in servers:
        print(f"{server.label} ({server.proto}): {shlex.join(server.command)}")
    summary: dict[str, dict[str, float]] = {}
    # Run by run, every scenario on every server, so that the scenarios
    # compared with each other (COMPARISONS) meet the same machine too.
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        scenario: {s.label: [] for s in servers if s.runs(SCENARIOS[scenario])}
        for scenario in scenarios
    }
    failed: dict[str, dict[str, str]] = {scenario: {} for scenario in scenarios}
    for run in range(args.runs):
        turn = run % len(servers)
        for scenario in scenarios:
            for server in servers[turn:] + servers[:turn]:
                if server.label in failed[scenario]:
                    continue
                if not server.runs(SCENARIOS[scenario]):
                    continue
                result = run_once(loadgen, server, args.port, scenario, args.duration)
                if not result.get("ok"):
                    why = str(result.get("error"))
                    if server is ours:
                        raise SystemExit(f"{scenario} ({server.label}) failed: {why}")
                    # Not a reason to stop: miniircd cannot hold 2,000
                    # connections.
                    failed[scenario][server.label] = why
                    continue
                print(
                    f"run {run + 1}/{args.runs} {scenario} {server.label} "
                    f"(load {result['load']:.1f}): {result.get('summary', '')}",
                    file=sys.stderr,
                    flush=True,
                )
                results[scenario][server.label].append(result)
    for scenario in scenarios:
        columns = {
            label: medians(scenario, runs) for label, runs in results[scenario].items()
        }
        summary[scenario] = columns[ours.label]
        loads = [r["load"] for runs in results[scenario].values() for r in runs]
        print(
            f"\n{scenario}, median of {args.runs} run(s) per server "
            f"(load average {min(loads):.1f} to {max(loads):.1f}):"
        )
        print("\n".join(table(ours.label, columns, failed[scenario])))
    # Ours first, then any other server that ran both scenarios of a pair.
    lines = [
        line
        for label in [ours.label, *(s.label for s in servers if s is not ours)]
        for line in comparisons(label, results)
    ]
    if lines:
        print("\nthe same run's scenarios compared:")
        print("\n".join(lines))
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
