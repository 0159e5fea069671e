"""trichat bench: its pure parts, and short runs against a real server."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import running_server
from hypothesis import given
from hypothesis import strategies as st

from trichat.bench.cli import Settings, add_arguments, main
from trichat.bench.latency import parse_stamp, percentile, stamp, summarize_latencies
from trichat.bench.reader import FedStream, SharedReader, available
from trichat.bench.report import format_report
from trichat.bench.run import Handler, Progress, Run
from trichat.bench.runner import run_bench
from trichat.bench.usage import (
    Usage,
    loop_note,
    process_cpu,
    process_cpu_wait,
    process_rss_kb,
    usage_summary,
)
from trichat.client import DEFAULT_PORT, Client
from trichat.protocol.messages import (
    MAX_TEXT,
    Error,
    check_room,
    check_text,
)

# An end-to-end run takes well under a second; this only stops a hang.
RUN_TIMEOUT = 20.0


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trichat bench")
    add_arguments(parser)
    return parser.parse_args(argv)


# -- percentiles -------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 99.9) == 100
    assert percentile(values, 100) == 100
    assert percentile(values, 0.5) == 1


@pytest.mark.parametrize("n", [10, 100, 1000, 7919, 100_000])
@pytest.mark.parametrize("q", [50, 90, 99, 99.9, 99.99])
def test_percentile_rank_has_no_float_error(n: int, q: float) -> None:
    # Nearest rank: at least q% of the n values are at or below it.
    rank = percentile(range(1, n + 1), q)
    assert rank * 100 >= q * n - 1e-6
    assert (rank - 1) * 100 < q * n - 1e-6


def test_percentile_of_few_values() -> None:
    assert percentile([7], 50) == 7
    assert percentile([7], 99) == 7
    assert percentile([1, 2], 50) == 1
    assert percentile([1, 2], 51) == 2
    assert percentile([0.5, 1.5, 2.5], 50) == 1.5


@pytest.mark.parametrize("q", [0, -1, 100.1])
def test_percentile_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match="out of range"):
        percentile([1, 2, 3], q)


def test_percentile_of_nothing() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_summarize_latencies_in_milliseconds() -> None:
    ns = [i * 1_000_000 for i in range(1, 1001)]  # 1 ms .. 1000 ms
    summary = summarize_latencies(ns[::-1])  # any order
    assert summary == {
        "p50_ms": 500.0,
        "p90_ms": 900.0,
        "p99_ms": 990.0,
        "p999_ms": 999.0,
        "max_ms": 1000.0,
        "mean_ms": 500.5,
    }
    assert summarize_latencies([]) == {}


# -- stamps ------------------------------------------------------------------------


def test_stamp_pads_to_size() -> None:
    text = stamp(1234567890, 42, 64)
    assert text.startswith("1234567890 42 x")
    assert len(text) == 64
    assert set(text[len("1234567890 42 ") :]) == {"x"}


def test_stamp_never_cuts_itself() -> None:
    assert stamp(1234567890, 42, 5) == "1234567890 42"
    assert stamp(1234567890, 42, 13) == "1234567890 42"
    assert stamp(1234567890, 42, 14) == "1234567890 42 "


@given(
    sent_ns=st.integers(min_value=0, max_value=2**63 - 1),
    seq=st.integers(min_value=0, max_value=10**12),
    size=st.integers(min_value=1, max_value=MAX_TEXT),
)
def test_stamp_round_trip(sent_ns: int, seq: int, size: int) -> None:
    text = stamp(sent_ns, seq, size)
    assert parse_stamp(text) == (sent_ns, seq)
    assert len(text) == max(size, len(f"{sent_ns} {seq}"))
    check_text(text)  # valid protocol TEXT


@pytest.mark.parametrize(
    "text", ["", "hello", "12", "12 ", "12 x3", "-1 2", "a 2 xx", " 1 2"]
)
def test_parse_stamp_rejects_other_text(text: str) -> None:
    with pytest.raises(ValueError, match="not a bench stamp"):
        parse_stamp(text)


# -- options -------------------------------------------------------------------------


def test_default_settings() -> None:
    settings = Settings.from_args(parse())
    assert settings.scenario == "dm"
    assert (settings.host, settings.port) == ("127.0.0.1", DEFAULT_PORT)
    assert (settings.pairs, settings.in_flight, settings.size) == (50, 16, 64)
    assert (settings.duration, settings.warmup) == (10.0, 1.0)
    assert settings.pid is None
    assert not settings.json
    assert re.fullmatch("b[a-z]{2}", settings.prefix)


def test_settings_from_flags() -> None:
    settings = Settings.from_args(
        parse(
            *("--host", "::1", "--port", "7000", "-s", "fanout", "-N", "3"),
            *("-W", "2", "-D", "300ms", "--warmup", "0", "--pid", "123"),
            *("--prefix", "zz", "--json", "-q", "--size", "100", "--conc", "4"),
        )
    )
    assert settings == Settings(
        host="::1",
        port=7000,
        scenario="fanout",
        receivers=3,
        in_flight=2,
        duration=0.3,
        warmup=0.0,
        pid=123,
        prefix="zz",
        json=True,
        quiet=True,
        size=100,
        conc=4,
    )
    assert settings.sockets == 4


def test_scenario_flags() -> None:
    rate = Settings.from_args(parse("--scenario", "rate", "-P", "4", "-R", "1e3"))
    assert (rate.scenario, rate.pairs, rate.rate, rate.sockets) == ("rate", 4, 1e3, 8)
    idle = Settings.from_args(parse("-s", "idle", "-C", "30", "-K", "2"))
    assert (idle.connections, idle.broadcasts, idle.sockets) == (30, 2, 30)
    rooms = Settings.from_args(
        parse("-s", "rooms", "--users", "90", "--rooms", "9", "--rooms-each", "4")
    )
    assert (rooms.users, rooms.rooms, rooms.rooms_each) == (90, 9, 4)
    assert rooms.sockets == 90
    assert rooms.shared_reader
    assert not Settings.from_args(parse("--no-shared-reader")).shared_reader


def test_the_rate_offered_depends_on_the_scenario() -> None:
    assert Settings.from_args(parse("-s", "rate")).offered == 20000
    assert Settings.from_args(parse("-s", "rooms")).offered == 200
    assert Settings.from_args(parse("-s", "rooms", "-R", "50")).offered == 50
    assert Settings(scenario="rooms").rate is None


def test_protocol_option() -> None:
    assert Settings.from_args(parse()).protocol == 2
    assert Settings.from_args(parse("--protocol", "1")).protocol == 1
    with pytest.raises(SystemExit):
        parse("--protocol", "3")
    with pytest.raises(ValueError, match="protocol"):
        Settings(protocol=3)


@pytest.mark.parametrize(
    ("users", "rooms", "each"),
    [(200, 20, 3), (10_000, 1_000, 5), (7, 3, 3), (5, 10, 2), (13, 4, 1)],
)
def test_rooms_are_dealt_out_evenly(users: int, rooms: int, each: int) -> None:
    settings = Settings(scenario="rooms", users=users, rooms=rooms, rooms_each=each)
    sizes = [0] * rooms
    for user in range(users):
        mine = settings.rooms_of(user)
        assert len(set(mine)) == each  # all different
        for room in mine:
            sizes[room] += 1
    assert sum(sizes) == users * each
    # Each of a user's slots deals the users out to the rooms in turn.
    assert max(sizes) - min(sizes) <= each
    if users % rooms == 0:
        assert set(sizes) == {users * each // rooms}


def test_room_names() -> None:
    settings = Settings(scenario="rooms", prefix="zq", rooms=1000)
    assert settings.room(0) == "#zq0"
    assert settings.room(999) == "#zq999"
    check_room(settings.room(999))
    with pytest.raises(ValueError, match="room name"):
        Settings(scenario="rooms", prefix="p" * 27, rooms=10**6)


def test_unknown_scenario_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        parse("-s", "chaos")


def test_durations_take_units(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("-D", "1.5s", "--warmup", "500ms", "--settle", "2m", "--drain", "3")
    assert (args.duration, args.warmup, args.settle, args.drain) == (1.5, 0.5, 120, 3)
    with pytest.raises(SystemExit):
        parse("-D", "10 seconds")
    assert "not a duration: '10 seconds'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"size": 0}, "size"),
        ({"size": MAX_TEXT + 1}, "size"),
        ({"pairs": 0}, "pairs"),
        ({"rate": 0.0}, "rate"),
        ({"duration": 0.0}, "duration"),
        ({"warmup": -1.0}, "warmup"),
        ({"prefix": "x" * 30}, "prefix too long"),
        ({"prefix": "#b"}, "name"),
        ({"pid": 0}, "pid"),
        ({"port": 70000}, "port"),
        ({"users": 0}, "users"),
        ({"rooms": 0}, "rooms"),
        ({"rooms_each": 0}, "rooms_each"),
        (
            {"scenario": "rooms", "rooms": 2, "rooms_each": 3},
            "rooms_each must not be more than rooms",
        ),
        ({"scenario": "rooms", "rate": -1.0}, "rate"),
    ],
)
def test_settings_refuse_unusable_values(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(**changes)


def test_main_reports_unusable_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(parse("--size", "0")) == 2
    assert "size" in capsys.readouterr().err


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_main_json_when_the_server_is_not_there(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(parse("--port", str(_closed_port()), "--json", "-q", "-P", "1"))
    assert status == 1
    out = capsys.readouterr().out
    result = json.loads(out)  # one JSON object and nothing else
    assert result["ok"] is False
    assert "cannot connect" in result["error"]
    assert result["scenario"] == "dm"


def test_main_table_when_the_server_is_not_there(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(parse("--port", str(_closed_port()), "-q", "-P", "1")) == 1
    out = capsys.readouterr().out
    assert out.startswith("trichat bench dm against 127.0.0.1:")
    assert "error: cannot connect" in out


# -- CPU and the report ----------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_process_counters_of_this_process() -> None:
    pid = os.getpid()
    assert process_cpu(pid) >= 0
    assert process_rss_kb(pid) > 0
    assert process_cpu_wait(pid) >= 0
    assert process_cpu_wait("self") >= 0


def test_generator_bottleneck_is_reported() -> None:
    summary, warnings = usage_summary(
        Usage(10.0, 1.0, 0.0, 5.0, 0.0), Usage(20.0, 10.5, 0.1, 11.0, 0.2), cores=4
    )
    assert summary == {
        "window_s": 10.0,
        "gen_cpu_s": 9.5,
        "gen_cpu_pct": 95,
        "gen_bottleneck": True,
        "gen_cpu_wait_pct": 1,
        "srv_cpu_s": 6.0,
        "srv_cpu_pct": 60,
        "srv_cpu_wait_pct": 2,
    }
    assert len(warnings) == 1
    assert "bottleneck" in warnings[0]


def test_an_idle_generator_is_not_the_bottleneck() -> None:
    summary, warnings = usage_summary(
        Usage(0.0, 0.0, None, None, None), Usage(10.0, 3.0, None, None, None)
    )
    assert summary == {
        "window_s": 10.0,
        "gen_cpu_s": 3.0,
        "gen_cpu_pct": 30,
        "gen_bottleneck": False,
    }
    assert warnings == []


def test_contended_cpus_are_reported() -> None:
    _, warnings = usage_summary(
        Usage(0.0, 0.0, 0.0, 0.0, 0.0), Usage(10.0, 9.5, 2.0, 9.0, 0.5), cores=2
    )
    assert len(warnings) == 3
    assert "bottleneck" in warnings[0]
    assert "all 2 cores" in warnings[1]
    assert "the generator 20%" in warnings[2]
    assert "server" not in warnings[2].split("of the window")[0]


def test_closed_loop_note() -> None:
    calm = {"gen_cpu_pct": 60, "gen_bottleneck": False, "srv_cpu_pct": 70}
    note = loop_note("dm", calm)
    assert note is not None
    assert note.startswith("neither the server (70%) nor the generator (60%)")
    assert loop_note("fanout", calm) is not None
    # Open loop, a saturated server or generator, or no server figures: no note.
    assert loop_note("rate", calm) is None
    assert loop_note("dm", {**calm, "srv_cpu_pct": 95}) is None
    assert loop_note("dm", {**calm, "gen_bottleneck": True}) is None
    assert loop_note("dm", {"gen_cpu_pct": 60, "gen_bottleneck": False}) is None


def test_report_table() -> None:
    result = {
        "scenario": "dm",
        "addr": "127.0.0.1:8089",
        "P": 50,
        "W": 16,
        "size": 64,
        "D_s": 10.0,
        "warmup_s": 1.0,
        "ok": True,
        "msgs_per_s": 123456,
        "sent": 1300000,
        "delivered": 1300000,
        "lost": 0,
        "p50_ms": 1.5,
        "p99_ms": 12.25,
        "max_ms": 40.0,
        "errors": 0,
        "gen_cpu_s": 9.6,
        "gen_cpu_pct": 96,
        "gen_bottleneck": True,
        "warnings": ["the generator used 96% of one core: ..."],
    }
    lines = format_report(result).splitlines()
    assert lines[0] == (
        "trichat bench dm against 127.0.0.1:8089: 50 pairs, 16 in flight each, "
        "64-character messages, 10 s window after 1 s warmup"
    )
    rows = {line.split("  ")[1].strip(): line for line in lines[1:-1]}
    assert list(rows) == [
        "throughput",
        "sent",
        "delivered",
        "lost",
        "latency p50",
        "latency p99",
        "latency max",
        "errors",
        "generator CPU",
    ]
    assert rows["throughput"].split()[1:] == ["123,456", "msg/s"]
    assert rows["latency p99"].split()[2:] == ["12.25", "ms"]
    assert rows["latency max"].split()[2:] == ["40", "ms"]
    assert rows["generator CPU"].endswith("96 % of one core (9.6 s CPU)")
    assert lines[-1] == "warning: the generator used 96% of one core: ..."


def test_report_of_a_rooms_run() -> None:
    result = {
        "scenario": "rooms",
        "addr": "h:1",
        "users": 10000,
        "rooms": 1000,
        "rooms_each": 5,
        "R": 2000.0,
        "protocol": 1,
        "size": 64,
        "D_s": 10.0,
        "warmup_s": 1.0,
        "ok": True,
        "join_s": 12.5,
        "joins_settled_s": 0.25,
        "rss_per_user_kb": 15.25,
        "msgs_incomplete": 0,
        "misrouted": 3,
        "warnings": ["3 deliveries named a room their receiver is not in"],
    }
    lines = format_report(result).splitlines()
    assert lines[0] == (
        "trichat bench rooms against h:1: 10000 users in 1000 rooms, 5 each, "
        "2,000 msg/s offered, protocol 1, 64-character messages, 10 s window "
        "after 1 s warmup"
    )
    rows = [line.split("  ")[1].strip() for line in lines[1:-1]]
    assert rows == [
        "incomplete",
        "misrouted",
        "all joined",
        "join lists settled",
        "RSS per user",
    ]


def test_report_of_a_failed_run() -> None:
    text = format_report(
        {
            "scenario": "idle",
            "addr": "h:1",
            "C": 10,
            "conc": 8,
            "ok": False,
            "error": "boom",
            "last_error": "error|server-full|full",
        }
    )
    assert text.splitlines() == [
        "trichat bench idle against h:1: 10 connections, 8 logging in at once",
        "error: boom",
        "  last error: error|server-full|full",
    ]


# -- end to end, against a server in this process ------------------------------------


def tiny(port: int, scenario: str, **changes: Any) -> Settings:
    options: dict[str, Any] = {
        "port": port,
        "scenario": scenario,
        "pairs": 2,
        "in_flight": 4,
        "receivers": 3,
        "connections": 5,
        "broadcasts": 2,
        "rate": 200.0,
        "duration": 0.3,
        "warmup": 0.1,
        "drain": 3.0,
        "settle": 3.0,
        "login_timeout": 3.0,
        "deadline": 5.0,
        "prefix": "t",
    }
    options.update(changes)
    return Settings(**options)


def assert_clean(result: dict[str, Any]) -> None:
    assert result["ok"], result.get("error")
    assert result["errors"] == 0, result.get("last_error")
    assert result["lost"] == 0
    assert result["conns_lost"] == 0
    assert result["bad_stamps"] == 0
    json.dumps(result)  # what --json prints


async def test_dm_end_to_end() -> None:
    with trio.fail_after(RUN_TIMEOUT):
        async with running_server(rate=0) as live:
            result = await run_bench(tiny(live.port, "dm"))
    assert_clean(result)
    assert result["logged_in"] == 4
    assert result["delivered"] == result["sent"] > 0
    assert result["msgs_per_s"] > 0
    assert result["latency_samples"] > 0
    assert result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["gen_cpu_s"] > 0
    assert "srv_cpu_s" not in result  # no --pid


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
async def test_the_server_figures_are_those_of_the_pid_given() -> None:
    # The server runs in this process, which works hard; --pid names a
    # process that sleeps through the run. Its figures, not ours, must be
    # reported as the server's.
    with trio.fail_after(RUN_TIMEOUT):
        async with trio.open_nursery() as nursery:
            sleeper: trio.Process = await nursery.start(
                partial(trio.run_process, ["sleep", "60"], check=False)
            )
            try:
                async with running_server(rate=0) as live:
                    settings = tiny(
                        live.port, "dm", pid=sleeper.pid, pairs=4, in_flight=64
                    )
                    result = await run_bench(settings)
                sleeper_rss = process_rss_kb(sleeper.pid)
            finally:
                sleeper.kill()
    assert_clean(result)
    # This process's CPU, generator and server, is at least two of the
    # clock ticks that /proc counts in (10 ms); the sleeper's is none.
    assert result["gen_cpu_s"] >= 0.02
    assert result["srv_cpu_s"] == 0
    assert result["srv_cpu_wait_pct"] == 0
    assert "rss0_kb" not in result  # only the idle scenario reports memory
    assert sleeper_rss < process_rss_kb(os.getpid())


async def test_fanout_end_to_end() -> None:
    with trio.fail_after(RUN_TIMEOUT):
        async with running_server(rate=0) as live:
            result = await run_bench(tiny(live.port, "fanout"))
    assert_clean(result)
    assert result["logged_in"] == 4
    assert result["bcasts_sent"] == result["bcasts_complete"] > 0
    assert result["deliveries"] == 3 * result["bcasts_sent"]
    assert result["msgs_per_s"] > 0


async def test_rate_end_to_end() -> None:
    with trio.fail_after(RUN_TIMEOUT):
        async with running_server(rate=0) as live:
            result = await run_bench(tiny(live.port, "rate"))
    assert_clean(result)
    # 200 msgs/s for 0.4 s: the schedule fixes the count.
    assert result["sent"] == result["delivered"] == 80
    assert result["msgs_per_s"] > 0
    assert "gen_late_max_ms" in result


async def test_idle_end_to_end() -> None:
    with trio.fail_after(RUN_TIMEOUT):
        async with running_server(rate=0) as live:
            result = await run_bench(tiny(live.port, "idle", pid=os.getpid()))
    assert_clean(result)
    assert result["logged_in"] == 5
    assert result["presence_frames"] == result["presence_expected"] == 25
    assert result["bcasts_sent"] == result["bcasts_complete"] == 2
    assert result["deliveries"] == 2 * 4
    assert result["rss_kb"] > 0
    assert "settle_s" in result


async def test_a_rate_limited_server_is_reported_not_hung() -> None:
    with trio.fail_after(RUN_TIMEOUT):
        async with running_server(rate=20, burst=5) as live:
            result = await run_bench(tiny(live.port, "dm", pid=os.getpid()))
    assert result["ok"]
    assert "--rate 0" in result["warnings"][0]
    assert not any(w.startswith("neither") for w in result["warnings"])
    assert result["error_codes"]["rate-limited"] == result["errors"] > 0
    # Every message was either delivered or refused: none went missing.
    assert result["lost"] == 0
    assert result["refused"] == result["errors"]


class ShutDownWhenMeasuring(Progress):
    def __init__(self, shutdown: Callable[[], None]) -> None:
        super().__init__()
        self.shutdown = shutdown

    def phase(self, run: Any, text: str) -> None:
        if text == "measuring":
            self.shutdown()


async def test_the_server_going_away_ends_the_run() -> None:
    with trio.fail_after(RUN_TIMEOUT):
        async with running_server(rate=0) as live:
            settings = tiny(live.port, "dm", duration=0.5, drain=0.5)
            progress = ShutDownWhenMeasuring(live.server.shutdown)
            result = await run_bench(settings, progress)
    assert result["ok"]
    assert result["sent"] > 0  # it went away mid-run
    assert result["conns_lost"] == 4
    assert result["error_codes"] == {"shutting-down": 4}
    assert any("closed 4 connection(s)" in w for w in result["warnings"])


async def test_a_taken_name_fails_the_run() -> None:
    with trio.fail_after(RUN_TIMEOUT):
        async with running_server(rate=0) as live:
            await live.login("tr0")
            result = await run_bench(tiny(live.port, "dm"))
    assert not result["ok"]
    assert "tr0 could not log in: error|name-taken|" in result["error"]


def assert_rooms_clean(result: dict[str, Any], users: int) -> None:
    assert_clean(result)
    assert result["logged_in"] == users
    assert result["misrouted"] == result["msgs_incomplete"] == 0
    assert result["join_frames"] == result["join_frames_expected"]
    assert "joins_settled_s" in result
    assert result["delivered"] > 0
    assert result["latency_samples"] > 0


@pytest.mark.parametrize("presence", ["global", "rooms"])
@pytest.mark.parametrize("shared_reader", [True, False])
async def test_rooms_end_to_end(presence: str, shared_reader: bool) -> None:
    with trio.fail_after(RUN_TIMEOUT):
        async with running_server(rate=0, presence=presence) as live:
            settings = tiny(
                live.port,
                "rooms",
                users=7,
                rooms=3,
                rooms_each=2,
                shared_reader=shared_reader,
                pid=os.getpid(),
            )
            result = await run_bench(settings)
    assert_rooms_clean(result, 7)
    assert result["shared_reader"] is (shared_reader and available())
    # 7 users x 2 rooms over 3 rooms: 5, 5 and 4 members.
    assert (result["members_min"], result["members_max"]) == (4, 5)
    assert result["join_frames_expected"] == 5 * 4 + 5 * 4 + 4 * 3
    # 200 msgs/s for 0.4 s: the schedule fixes the count; each reaches the
    # room's other members.
    assert result["sent"] == 80
    assert 3 * 80 <= result["delivered"] <= 4 * 80
    assert result["rss_per_user_kb"] is not None
    assert result["srv_us_per_delivery"] > 0
    assert result["gen_us_per_delivery"] > 0
    assert result["join_gen_cpu_s"] > 0
    assert result["join_srv_cpu_s"] >= 0
    # Global presence tells everyone of every login; rooms only the owner.
    assert result["exits_seen"] == 0


@pytest.mark.parametrize("scenario", ["rooms", "dm", "fanout"])
async def test_protocol_1_end_to_end(scenario: str) -> None:
    with trio.fail_after(RUN_TIMEOUT):
        async with running_server(rate=0) as live:
            settings = tiny(
                live.port, scenario, protocol=1, users=5, rooms=2, rooms_each=2
            )
            result = await run_bench(settings)
    assert_clean(result)
    assert result["protocol"] == 1
    assert result["delivered" if scenario != "fanout" else "deliveries"] > 0


async def test_rooms_refused_join_fails_the_run() -> None:
    with trio.fail_after(RUN_TIMEOUT):
        async with running_server(rate=0, max_rooms=2) as live:
            settings = tiny(live.port, "rooms", users=3, rooms=3, rooms_each=3)
            result = await run_bench(settings)
    assert not result["ok"]
    assert "could not join its rooms: error|too-many-rooms|" in result["error"]


# -- the shared reader -------------------------------------------------------------


class Recorder(Handler):
    def __init__(self, run: Run) -> None:
        super().__init__(run)
        self.texts: list[str] = []

    def delivered(self, sender: str, to: str, text: str, now: int) -> None:
        self.texts.append(f"{sender}>{to}: {text}")

    def joined(self, room: str, name: str) -> None:
        self.texts.append(f"{name} in {room}")

    def error(self, error: Error) -> None:
        self.texts.append(f"error {error.code}")


MSG = b"msg|7|2026-12-03T09:15:02.125Z|b|#r|"


async def step(server: trio.SocketStream, data: bytes) -> None:
    await server.send_all(data)
    await trio.testing.wait_all_tasks_blocked()


@pytest.mark.skipif(not available(), reason="needs epoll")
@pytest.mark.parametrize("raw", [True, False])
async def test_the_shared_reader_hands_on_what_arrives(raw: bool) -> None:
    # The server's side is scripted: what it sends arrives in pieces, frames
    # split across reads, a bad frame and a kind nobody knows among good
    # ones, a ping, then an error that ends it. The reader hands on the same
    # whether it splits lines itself (raw, once a read ended a line) or not.
    run = Run(tiny(0, "rooms"), Progress())
    a, b = trio.socket.socketpair()
    server = trio.SocketStream(b)
    stream = FedStream(trio.SocketStream(a))
    recorder = Recorder(run)
    with trio.fail_after(RUN_TIMEOUT):
        async with trio.open_nursery() as nursery:
            reader = SharedReader(run, raw=raw)
            nursery.start_soon(reader.run)
            await server.send_all(b"hello|2|server=x\nlogin|a\n" + MSG + b"early\n")
            client = await Client.login(stream, "a", echo=False)
            assert await server.receive_some() == b"hello|2\nlogin|a\n"
            await reader.add(client, stream, recorder)
            assert recorder.texts == ["b>#r: early"]  # came with the login
            assert len(reader) == 1
            # Through the client library until a read ends a line...
            await step(server, MSG + b"one\n" + MSG[:9])
            await step(server, MSG[9:] + b"two")
            await step(server, b"\r\njoin|#r|c\n")
            # ... then split by the reader itself, if raw.
            await step(server, b"nonsense|x\nmsg|1|2\ntalk|d|#r|three\n" + MSG[:20])
            await step(server, MSG[20:] + b"four\r\nping|tok\n")
            assert await server.receive_some() == b"pong|tok\n"
            assert recorder.texts == [
                "b>#r: early",
                "b>#r: one",
                "b>#r: two",
                "c in #r",
                "d>#r: three",
                "b>#r: four",
            ]
            assert run.errors == 1  # the bad frame; the unknown kind is skipped
            assert "msg takes 5 fields" in run.last_error
            await step(server, b"error|shutting-down|bye\n" + MSG + b"late\n")
            assert recorder.texts[-1] == "error shutting-down"
            assert len(reader) == 0  # the end: no longer read
            assert run.conns_lost == 1
            await server.aclose()
            await client.aclose()
            nursery.cancel_scope.cancel()
