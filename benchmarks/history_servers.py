r"""The cost of history to the server: the same ``trichat serve`` twice,
with ``--db FILE --history 1000`` and with ``--history 0``, in the same
runs, measured with the Go load generator (``../shared/bench``)::

    python benchmarks/history_servers.py             # 3 runs, ~4 minutes
    python benchmarks/history_servers.py --runs 5 --duration 5s

Two scenarios, those issue 12 sets a target for (history at least 0.7x
of no history, medians of 3):

- ``fanout-room2``: one protocol-2 sender to a room of 200 protocol-2
  receivers (``-hello -room '#bench'``): every message is stored once,
  in the room's history;
- ``dm2-accounts``: 50 protocol-2 pairs, sender to receiver, all of them
  accounts that log in with a password: every message is stored twice,
  in the history of each account's conversation with the other.

Each run of each scenario starts a new server on a copy of one store file
made beforehand with the 100 accounts (so the two servers start alike),
in a temporary directory. Runs go run by run, and within a run the two
servers take turns first, so that both meet the same machine. Each run's
one-line summary, with the load average when it started, goes to stderr
as it finishes; then the medians, and the ratio of history 1000 to
history 0 in each run and of the medians.

A third, ``history-under-rate`` (not among the defaults; name it), is
issue 12's last target: a server started on a file that holds 1,000,000
messages (1,000 rooms of 1,000, ``--history 1000``) must be up within 2 s,
and ``history|ROOM|latest|100`` must be answered within 10 ms at the 99th
percentile while a ``rate`` load runs (the generator's ``-scenario rate``
between the 50 pairs of accounts, 20,000 direct messages a second, each
stored twice). A protocol-2 guest in 50 of the rooms asks for a page of
a room every 20 ms (back to back, the pages themselves would be the
load), from the moment the generator's 100 accounts are
online until the generator ends; each answer is checked (100 messages)
and timed from the request written to the last line of the page read
(raw lines: the client library's decoding is the client's cost). Start-up is timed
from the server's process made to its port taking connections.

    python benchmarks/history_servers.py history-under-rate --runs 3
    python benchmarks/history_servers.py history-under-rate --history-cache 0

(the second with no page in the server's memory: each read from the file).

The generator logs in without a password (``login|NAME``); for the
accounts this script builds a copy of it, in the temporary directory,
that adds ``|PASSWORD`` to its logins when ``LOADGEN_PASSWORD`` is set
(a change of two lines, made to the copy only). Go is needed, as for
``build.sh``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio
from bench_rooms import fresh_server

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT.parent / "shared" / "bench" / "loadgen"
PREFIX = "hb"  # the generator's names: hbs0.. send to hbr0.. (dm)
PAIRS = 50
PASSWORD = "history-bench-password"

SCENARIOS: dict[str, list[str]] = {
    "fanout-room2": [
        "-scenario", "fanout", "-N", "200", "-W", "16", "-hello", "-room", "#bench",
    ],
    "dm2-accounts": ["-scenario", "dm", "-P", str(PAIRS), "-W", "16", "-hello"],
}  # fmt: skip
FIGURES = ["msgs_per_s", "p50_ms", "p99_ms", "srv_cpu_pct"]

# history-under-rate: the generator's load, and what the file holds.
RATE_LOAD = ["-scenario", "rate", "-P", str(PAIRS), "-hello"]
ROOMS = 1000
STORED = 1_000_000
ROOMS_ASKED = 50  # the guest's rooms (the server's --max-rooms by default)
PAGE = 100
PAGES_PER_S = 50  # one page every 20 ms, from one client

# The copy's change: a login line ends with |PASSWORD when asked to.
_LOGIN = 'err = c.write([]byte("hello|2\\nlogin|" + name + "\\n"))'
_LOGIN_WITH_PASSWORD = (
    'err = c.write([]byte("hello|2\\nlogin|" + name + passwordSuffix() + "\\n"))'
)
_PASSWORD_SUFFIX = """
// passwordSuffix: |PASSWORD for accounts (LOADGEN_PASSWORD), else nothing.
func passwordSuffix() string {
	if p := os.Getenv("LOADGEN_PASSWORD"); p != "" {
		return "|" + p
	}
	return ""
}
"""


def build_generator(directory: Path) -> str:
    """The generator, built from a copy that can log in with a password."""
    source = directory / "loadgen-src"
    shutil.copytree(GENERATOR, source)
    for path in source.iterdir():
        path.chmod(0o644)
    main = source / "main.go"
    text = main.read_text()
    if text.count(_LOGIN) != 1:
        raise SystemExit(f"{main}: the login line changed; update {__file__}")
    main.write_text(text.replace(_LOGIN, _LOGIN_WITH_PASSWORD) + _PASSWORD_SUFFIX)
    binary = directory / "loadgen"
    subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=source,
        check=True,
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    )
    return str(binary)


async def make_accounts(path: Path) -> None:
    """The store file every server starts from: the dm pairs' accounts,
    hashed with the server's own parameters (no rehash at login)."""
    from trichat.server.store import Store

    store = Store(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for role in ("s", "r"):
            for i in range(PAIRS):
                await store.register(f"{PREFIX}{role}{i}", PASSWORD)
        nursery.cancel_scope.cancel()


async def add_rooms(path: Path) -> None:
    """Fill the accounts' file with STORED messages, ROOMS rooms of as
    many as --history 1000 keeps (as ``store_bench.py big`` does)."""
    from store_bench import Traffic

    from trichat.server.store import Store

    store = Store(path, history=STORED // ROOMS)
    traffic = Traffic(1, ROOMS, 10, 0)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        while traffic.count < STORED:
            for accepted in traffic.make(min(2000, STORED - traffic.count)):
                store.record(accepted)
            if store.congested:
                await store.make_room(10.0)
            await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()


@contextmanager
def server(
    port: int, db: Path, history: int, cache: int | None = None
) -> Iterator[int]:
    """A new ``trichat serve`` of this checkout on *db* (with *cache* as its
    ``--history-cache``, if given); its process id."""
    command = [
        sys.executable, "-m", "trichat", "serve", "--port", str(port),
        "--rate", "0", "--max-per-ip", "0", "--log-level", "warning",
        "--db", str(db), "--history", str(history),
    ]  # fmt: skip
    if cache is not None:
        command += ["--history-cache", str(cache)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    # A store on disk may take a while to open: 20 s.
    with fresh_server(command, env, port, within=20.0) as pid:
        yield pid


def run_once(
    generator: str, template: Path, directory: Path, port: int,
    scenario: str, history: int, duration: str, cache: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    db = directory / f"run-{history}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(template, db)
    load = os.getloadavg()[0]
    env = dict(os.environ)
    if scenario == "dm2-accounts":
        env["LOADGEN_PASSWORD"] = PASSWORD
    with server(port, db, history, cache) as pid:
        done = subprocess.run(
            [
                generator,
                "-proto",
                "trichat",
                "-addr",
                f"127.0.0.1:{port}",
                "-pid",
                str(pid),
                "-label",
                f"history-{history}",
                "-prefix",
                PREFIX,
                "-D",
                duration,
                *SCENARIOS[scenario],
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
    lines = done.stdout.splitlines()
    result: dict[str, Any] = json.loads(lines[0]) if lines else {"ok": False}
    result["load"] = load
    if not result.get("ok", True) or not lines:
        raise SystemExit(f"{scenario}, history {history}: {done.stdout}{done.stderr}")
    print(
        f"  {scenario:13} history {history:4}: load {load:.1f}; "
        + (lines[1].lstrip("# ") if len(lines) > 1 else ""),
        file=sys.stderr,
        flush=True,
    )
    return result


def history_under_rate(
    generator: str, template: Path, directory: Path, port: int, duration: str,
    rate: float, cache: int | None,
) -> dict[str, float]:  # fmt: skip
    """One run of history-under-rate: start-up, and the history pages'
    round trips (ms) while the generator's rate load runs."""
    db = directory / "run-big.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(template, db)
    load = os.getloadavg()[0]
    started = time.monotonic()
    with server(port, db, 1000, cache) as pid:
        startup = time.monotonic() - started
        command = [
            generator, "-proto", "trichat", "-addr", f"127.0.0.1:{port}",
            "-pid", str(pid), "-prefix", PREFIX, "-D", duration, *RATE_LOAD,
            "-R", str(rate),
        ]  # fmt: skip
        times, load_line = trio.run(_ask_while, command, port)
    times.sort()
    result = {
        "load": load,
        "startup_s": startup,
        "pages": len(times),
        "p50_ms": times[len(times) // 2] * 1000,
        "p99_ms": times[min(len(times) - 1, len(times) * 99 // 100)] * 1000,
        "max_ms": times[-1] * 1000,
    }
    print(
        f"  history-under-rate: load {load:.1f}; start-up {startup:.2f} s; "
        f"{len(times)} pages: p50 {result['p50_ms']:.2f} ms, "
        f"p99 {result['p99_ms']:.2f} ms, max {result['max_ms']:.1f} ms; "
        f"load: {load_line}",
        file=sys.stderr,
        flush=True,
    )
    return result


class _Lines:
    """The server's frames as raw lines: the pages are timed to their last
    byte, without the client library's decoding (a client's cost, not
    the server's)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> bytes:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                raise RuntimeError("the server closed the connection")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line


async def _ask_while(command: list[str], port: int) -> tuple[list[float], str]:
    """Run the generator (accounts logging in with their password); from
    the moment its 100 accounts are online until it ends, ask for history
    pages, paced. The round trips (s), and the generator's summary line."""
    times: list[float] = []
    online: set[bytes] = set()
    output = ""
    env = {**os.environ, "LOADGEN_PASSWORD": PASSWORD}
    rooms = [f"#Room{i}" for i in range(ROOMS_ASKED)]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    lines = _Lines(stream)
    await stream.send_all(
        b"hello|2\nlogin|hq\n" + b"".join(f"join|{r}\n".encode() for r in rooms)
    )

    async def ask() -> None:
        # Paced, as users scroll back: pages back to back would make the
        # pages themselves the load.
        every = 1 / PAGES_PER_S
        start = trio.current_time()
        for turn in itertools.count():
            await trio.sleep_until(start + turn * every)
            room = rooms[turn % len(rooms)]
            end = f"history|{room}|".encode()
            asked = time.perf_counter()
            await stream.send_all(f"history|{room}|latest|{PAGE}\n".encode())
            got = 0
            while not (line := await lines.next()).startswith(end):
                got += line.startswith(b"hist|")
            times.append(time.perf_counter() - asked)
            if got != PAGE or line != end + str(PAGE).encode():
                raise RuntimeError(f"{room}: {got} messages, then {line!r}")

    async def watch_logins() -> None:
        prefix = f"login|{PREFIX}".encode()
        while len(online) < 2 * PAIRS:
            line = await lines.next()
            if line.startswith(prefix):
                online.add(line)

    async def generate() -> None:
        nonlocal output
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, env=env
        )
        output = done.stdout.decode()
        nursery.cancel_scope.cancel()  # the load is over: so is asking

    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(generate)
        with trio.fail_after(120):
            await watch_logins()
        await ask()
    summary = output.splitlines()
    return times, (summary[1].lstrip("# ") if len(summary) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"any of {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", default="10s", help="the generator's -D")
    parser.add_argument("--port", type=int, default=7391)
    parser.add_argument("--history", type=int, default=1000)
    parser.add_argument(
        "--rate",
        type=float,
        default=20000,
        help="history-under-rate: the direct messages a second offered (-R)",
    )
    parser.add_argument(
        "--history-cache",
        type=int,
        default=None,
        help="the server's --history-cache (default: its own)",
    )
    args = parser.parse_args()
    scenarios = args.scenarios or list(SCENARIOS)
    if "history-under-rate" in scenarios:
        if scenarios != ["history-under-rate"]:
            parser.error("history-under-rate runs alone")
        under_rate(args)
        return
    for scenario in scenarios:
        if scenario not in SCENARIOS:
            parser.error(f"no such scenario: {scenario}")
    variants = [args.history, 0]
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="trichat-history-") as name:
        directory = Path(name)
        generator = build_generator(directory)
        template = directory / "accounts.db"
        trio.run(make_accounts, template)
        for run in range(args.runs):
            print(f"run {run + 1} of {args.runs}", file=sys.stderr, flush=True)
            order = variants if run % 2 == 0 else variants[::-1]
            for scenario in scenarios:
                for history in order:
                    result = run_once(
                        generator, template, directory, args.port,
                        scenario, history, args.duration, args.history_cache,
                    )  # fmt: skip
                    results.setdefault((scenario, history), []).append(result)
    for scenario in scenarios:
        loads = _loads(results, scenario)
        print(f"{scenario} (medians of {args.runs}; load averages {loads})")
        for history in variants:
            runs = results[(scenario, history)]
            figures = "  ".join(
                f"{figure} {statistics.median(float(r[figure]) for r in runs):,.1f}"
                for figure in FIGURES
                if all(figure in r for r in runs)
            )
            print(f"  history {history:4}: {figures}")
        ours = [float(r["msgs_per_s"]) for r in results[(scenario, args.history)]]
        theirs = [float(r["msgs_per_s"]) for r in results[(scenario, 0)]]
        each = ", ".join(f"{a / b:.2f}" for a, b in zip(ours, theirs, strict=True))
        ratio = statistics.median(ours) / statistics.median(theirs)
        print(
            f"  msgs_per_s, history {args.history} / history 0: {ratio:.2f} "
            f"(each run: {each}); target at least 0.7: "
            + ("met" if ratio >= 0.7 else "MISSED")
        )


def under_rate(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="trichat-history-") as name:
        directory = Path(name)
        generator = build_generator(directory)
        template = directory / "big.db"
        trio.run(make_accounts, template)
        filling = time.monotonic()
        trio.run(add_rooms, template)
        print(
            f"  {STORED:,} messages stored in {time.monotonic() - filling:.1f} s",
            file=sys.stderr,
        )
        runs = []
        for run in range(args.runs):
            print(f"run {run + 1} of {args.runs}", file=sys.stderr, flush=True)
            runs.append(
                history_under_rate(
                    generator,
                    template,
                    directory,
                    args.port,
                    args.duration,
                    args.rate,
                    args.history_cache,
                )
            )
    loads = f"{min(r['load'] for r in runs):.1f} to {max(r['load'] for r in runs):.1f}"
    print(f"history-under-rate (medians of {args.runs}; load averages {loads})")
    for figure, target in (("startup_s", 2.0), ("p99_ms", 10.0)):
        value = statistics.median(r[figure] for r in runs)
        each = ", ".join(f"{r[figure]:.2f}" for r in runs)
        verdict = "met" if value < target else "MISSED"
        print(f"  {figure} {value:.2f} (each run: {each}); under {target}: {verdict}")
    median = statistics.median(r["p50_ms"] for r in runs)
    print(f"  p50_ms {median:.2f}, pages per run {[r['pages'] for r in runs]}")


def _loads(results: dict[tuple[str, int], list[dict[str, Any]]], scenario: str) -> str:
    loads = [
        r["load"] for (s, _), runs in results.items() if s == scenario for r in runs
    ]
    return f"{min(loads):.1f} to {max(loads):.1f}"


if __name__ == "__main__":
    main()
