"""What a run comes to: its result (what ``--json`` prints), the warnings
about what the numbers mean, and the table ``trichat bench`` prints."""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..protocol.messages import ErrorCode
from .latency import summarize_latencies
from .run import Run
from .settings import Settings
from .usage import loop_note, usage_summary

__all__ = ["LATE_WARNING_MS", "begin_result", "finish_result", "format_report"]

LATE_WARNING_MS = 5.0
"""Rate scenario: warn when the generator's schedule slips this much (p99)."""


def begin_result(settings: Settings) -> dict[str, Any]:
    """A result that says what the run was asked to do, before it runs."""
    return {
        "tool": "trichat bench",
        "version": __version__,
        "proto": "trichat",
        "scenario": settings.scenario,
        "addr": f"{settings.host}:{settings.port}",
        "size": settings.size,
        "D_s": settings.duration,
        "warmup_s": settings.warmup,
        "prefix": settings.prefix,
        "protocol": settings.protocol,
        **_parameters(settings),
        "ok": True,
        "warnings": [],
    }


def _parameters(settings: Settings) -> dict[str, Any]:
    """The load's parameters under the Go generator's names."""
    if settings.scenario == "dm":
        return {"P": settings.pairs, "W": settings.in_flight}
    if settings.scenario == "rate":
        return {"P": settings.pairs, "R": settings.offered}
    if settings.scenario == "fanout":
        return {"N": settings.receivers, "W": settings.in_flight}
    if settings.scenario == "rooms":
        return {
            "users": settings.users,
            "rooms": settings.rooms,
            "rooms_each": settings.rooms_each,
            "R": settings.offered,
            "conc": settings.conc,
        }
    return {"C": settings.connections, "K": settings.broadcasts, "conc": settings.conc}


def finish_result(run: Run, result: dict[str, Any]) -> None:
    """Add *run*'s counters to *result*, with a warning for each thing
    that makes its numbers mean less than they seem to."""
    settings = run.settings
    result.update(summarize_latencies(run.latencies))
    result["latency_samples"] = len(run.latencies)
    result["errors"] = run.errors
    if run.error_codes:
        result["error_codes"] = dict(run.error_codes)
    if run.last_error:
        result["last_error"] = run.last_error
    result["bad_stamps"] = run.bad_stamps
    result["conns_lost"] = run.conns_lost
    result["exits_seen"] = run.exits_seen
    result["logged_in"] = run.logged_in
    warnings: list[str] = result["warnings"]
    rate_limited = bool(run.error_codes.get(ErrorCode.RATE_LIMITED.value))
    if rate_limited:
        warnings.append(
            "the server rate-limited the generator's users (error|rate-limited): "
            "the numbers measure that limit, not the server's capacity. Start "
            "the server with --rate 0 to benchmark it."
        )
    if run.usage_start is not None and run.usage_end is not None:
        usage, notes = usage_summary(run.usage_start, run.usage_end)
        result.update(usage)
        warnings.extend(notes)
        note = loop_note(settings.scenario, usage)
        if note is not None and not rate_limited:
            warnings.append(note)
    if (
        run.usage_end is not None
        and settings.pid is not None
        and "srv_cpu_s" not in result
    ):
        warnings.append(f"could not read /proc/{settings.pid}/stat: no server CPU")
    if run.conns_lost:
        warnings.append(
            f"the server closed {run.conns_lost} connection(s) during the run "
            "(a client that cannot keep up is dropped)"
        )
    lost = result.get("lost", 0)
    if lost > 0:
        warnings.append(
            f"{lost:,} deliveries had not arrived when the run ended (--drain)"
        )
    late = result.get("gen_late_p99_ms")
    if late is not None and late > LATE_WARNING_MS:
        warnings.append(
            f"the generator fell behind its own schedule (p99 {late:g} ms, max "
            f"{result['gen_late_max_ms']:g} ms late): that delay is in the "
            "latencies; offer less (-R) or use more generators."
        )
    misrouted = result.get("misrouted", 0)
    if misrouted:
        warnings.append(
            f"{misrouted:,} deliveries named a room their receiver is not in"
        )
    if run.bad_stamps:
        warnings.append(
            f"{run.bad_stamps:,} messages from bench senders had no valid stamp, "
            "came twice, or came after the run had given up on them"
        )


# (key, label, unit) in the order the table shows them.
_ROWS: tuple[tuple[str, str, str], ...] = (
    ("msgs_per_s", "throughput", "msg/s"),
    ("bcasts_per_s", "broadcasts", "/s"),
    ("offered_per_s", "offered", "msg/s"),
    ("sent", "sent", "messages"),
    ("delivered", "delivered", "messages"),
    ("bcasts_sent", "broadcasts sent", ""),
    ("bcasts_complete", "complete", "broadcasts"),
    ("deliveries", "deliveries", ""),
    ("lost", "lost", ""),
    ("refused", "refused", ""),
    ("msgs_incomplete", "incomplete", "messages"),
    ("misrouted", "misrouted", ""),
    ("login_s", "all logged in", "s"),
    ("join_s", "all joined", "s"),
    ("joins_per_s", "join rate", "joins/s"),
    ("joins_settled_s", "join lists settled", "s after"),
    ("join_gen_cpu_s", "joining: generator", "s CPU"),
    ("join_srv_cpu_s", "joining: server", "s CPU"),
    ("join_frames", "join frames", ""),
    ("logins_per_s", "login rate", "logins/s"),
    ("settle_s", "presence settled", "s after"),
    ("presence_frames", "presence frames", ""),
    ("p50_ms", "latency p50", "ms"),
    ("p90_ms", "latency p90", "ms"),
    ("p99_ms", "latency p99", "ms"),
    ("max_ms", "latency max", "ms"),
    ("bcast_full_ms_median", "full broadcast", "ms (median)"),
    ("gen_late_p99_ms", "schedule slip p99", "ms"),
    ("gen_late_max_ms", "schedule slip max", "ms"),
    ("errors", "errors", ""),
    ("conns_lost", "connections lost", ""),
    ("gen_cpu_pct", "generator CPU", "% of one core"),
    ("gen_cpu_wait_pct", "generator CPU wait", "% of the window"),
    ("srv_cpu_pct", "server CPU", "% of one core"),
    ("srv_cpu_wait_pct", "server CPU wait", "% of the window"),
    ("rss0_kb", "server RSS before", "KiB"),
    ("rss_kb", "server RSS", "KiB"),
    ("rss_per_conn_kb", "RSS per connection", "KiB"),
    ("rss_per_user_kb", "RSS per user", "KiB"),
    ("gen_us_per_delivery", "generator CPU", "us per delivery"),
    ("srv_us_per_delivery", "server CPU", "us per delivery"),
)


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    return str(value)


def _describe(result: dict[str, Any]) -> str:
    scenario = result["scenario"]
    if scenario == "dm":
        load = f"{result.get('P')} pairs, {result.get('W')} in flight each"
    elif scenario == "rate":
        load = f"{result.get('P')} pairs, {_number(result.get('R'))} msg/s offered"
    elif scenario == "fanout":
        load = f"{result.get('N')} receivers, {result.get('W')} broadcasts in flight"
    elif scenario == "rooms":
        load = (
            f"{result.get('users')} users in {result.get('rooms')} rooms, "
            f"{result.get('rooms_each')} each, {_number(result.get('R'))} msg/s "
            "offered"
        )
    else:
        load = f"{result.get('C')} connections, {result.get('conc')} logging in at once"
    text = f"trichat bench {scenario} against {result['addr']}: {load}"
    if result.get("protocol", 2) != 2:
        text += f", protocol {result['protocol']}"
    if scenario != "idle":
        text += (
            f", {result['size']}-character messages, {result['D_s']:g} s window "
            f"after {result['warmup_s']:g} s warmup"
        )
    return text


def format_report(result: dict[str, Any]) -> str:
    """The table that ``trichat bench`` prints for *result*."""
    lines = [_describe(result)]
    if not result.get("ok", False):
        lines.append(f"error: {result.get('error', 'the run failed')}")
    for key, label, unit in _ROWS:
        if key not in result:
            continue
        value = _number(result[key])
        if key == "gen_cpu_pct" and "gen_cpu_s" in result:
            unit += f" ({_number(result['gen_cpu_s'])} s CPU)"
        elif key == "srv_cpu_pct" and "srv_cpu_s" in result:
            unit += f" ({_number(result['srv_cpu_s'])} s CPU)"
        lines.append(f"  {label:<20} {value:>12} {unit}".rstrip())
    if result.get("last_error"):
        lines.append(f"  last error: {result['last_error']}")
    lines.extend(f"warning: {warning}" for warning in result.get("warnings", ()))
    return "\n".join(lines)
