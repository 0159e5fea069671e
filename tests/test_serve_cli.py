"""``trichat serve`` as a user runs it: a subprocess, stopped by a signal."""

from __future__ import annotations

import argparse
import re
import signal
import sqlite3
import subprocess
import sys
from functools import partial
from pathlib import Path

import attrs
import pytest
import trio
import trustme
from helpers import STEP_TIMEOUT, LineClient

from trichat.server import ServerConfig
from trichat.server.cli import _config, add_arguments
from trichat.server.store import SCHEMA_VERSION


class ServeProcess:
    """A ``trichat serve --port 0`` subprocess and what it logged."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.log = bytearray()

    async def read_log_until(self, pattern: str) -> re.Match[bytes]:
        assert self.process.stderr is not None
        with trio.fail_after(STEP_TIMEOUT):
            while (found := re.search(pattern.encode(), self.log)) is None:
                data = await self.process.stderr.receive_some()
                assert data, f"server exited; its log: {self.log.decode()}"
                self.log += data
        return found

    async def read_log_to_end(self) -> str:
        assert self.process.stderr is not None
        with trio.fail_after(STEP_TIMEOUT):
            while data := await self.process.stderr.receive_some():
                self.log += data
        return self.log.decode()


async def start_serve(nursery: trio.Nursery, *options: str) -> tuple[ServeProcess, int]:
    command = [sys.executable, "-m", "trichat", "serve", "--port", "0", *options]
    process: trio.Process = await nursery.start(
        partial(
            trio.run_process,
            command,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
    )
    serve = ServeProcess(process)
    found = await serve.read_log_until(r"listening on 127\.0\.0\.1 port (\d+)")
    return serve, int(found[1])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_stops_the_server_gracefully(signum: signal.Signals) -> None:
    async with trio.open_nursery() as nursery:
        serve, port = await start_serve(nursery)
        alice = await LineClient.connect(port)
        bob = await LineClient.connect(port)
        try:
            await alice.login("alice")
            await bob.login("bob")
            await bob.expect("login|alice")
            await alice.expect("login|bob")
            await serve.read_log_until("login 127.0.0.1:[0-9]+ bob")
            serve.process.send_signal(signum)
            for client in (alice, bob):
                lines = await client.read_until_closed()
                assert lines == ["error|shutting-down|the server is stopping"]
            log = await serve.read_log_to_end()
            with trio.fail_after(STEP_TIMEOUT):
                assert await serve.process.wait() == 0
        finally:
            await alice.aclose()
            await bob.aclose()
    assert "Traceback" not in log
    assert f"{signum.name} received" in log
    assert "stopped" in log


async def test_the_log_tells_connects_logins_exits_and_drops() -> None:
    async with trio.open_nursery() as nursery:
        serve, port = await start_serve(nursery, "--max-line", "64")
        carol = await LineClient.connect(port)
        dave = await LineClient.connect(port)
        try:
            await carol.login("carol")
            await carol.send("exit")
            assert await carol.read_until_closed() == []
            await dave.login("dave")
            await dave.send("x" * 100)
            assert (await dave.read_until_closed())[0].startswith("error|too-long|")
            await serve.read_log_until(r"drop 127\.0\.0\.1:\d+ dave")
            serve.process.send_signal(signal.SIGTERM)
            log = await serve.read_log_to_end()
            with trio.fail_after(STEP_TIMEOUT):
                assert await serve.process.wait() == 0
        finally:
            await carol.aclose()
            await dave.aclose()
    assert re.search(r"connect 127\.0\.0\.1:\d+", log)
    assert re.search(r"login 127\.0\.0\.1:\d+ carol", log)
    assert re.search(r"exit 127\.0\.0\.1:\d+ carol \(exit\)", log)
    assert re.search(r"drop 127\.0\.0\.1:\d+ dave: too-long", log)


async def test_a_port_in_use_is_one_clear_line() -> None:
    async with trio.open_nursery() as nursery:
        serve, port = await start_serve(nursery)
        second = await trio.run_process(
            [sys.executable, "-m", "trichat", "serve", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            capture_stderr=True,
            check=False,
        )
        serve.process.send_signal(signal.SIGTERM)
        await serve.read_log_to_end()
    assert second.returncode == 1
    message = second.stderr.decode()
    assert f"cannot listen on 127.0.0.1:{port}" in message
    assert "Traceback" not in message


async def test_a_store_that_cannot_be_opened_is_one_clear_line(tmp_path: Path) -> None:
    """A file where the store's directory should be, a store of a newer
    trichat, a store another process holds locked (past the 5 s the server
    waits for it): each said in a line, with the file's name."""
    (tmp_path / "file").write_text("not a directory")
    message = await failed_to_start("--db", str(tmp_path / "file" / "t.db"))
    assert f"cannot open the store {tmp_path / 'file' / 't.db'}" in message

    newer = tmp_path / "newer.db"
    connection = sqlite3.connect(newer)
    with connection:
        connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        connection.execute(
            "INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,)
        )
    connection.close()
    message = await failed_to_start("--db", str(newer))
    assert "newer than this trichat's" in message

    locked = tmp_path / "locked.db"
    holder = sqlite3.connect(locked, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        message = await failed_to_start("--db", str(locked))
    finally:
        holder.close()
    assert f"the store {locked} is locked by another process" in message


async def exits_saying(status: int, *options: str) -> str:
    """What ``trichat serve OPTIONS`` says as it exits with *status*."""
    with trio.fail_after(STEP_TIMEOUT * 3):
        result = await trio.run_process(
            [sys.executable, "-m", "trichat", "serve", "--port", "0", *options],
            stdin=subprocess.DEVNULL,
            capture_stderr=True,
            check=False,
        )
    complaint = result.stderr.decode()
    assert result.returncode == status, complaint
    assert "Traceback" not in complaint
    return complaint


async def refused(*options: str) -> str:
    """What ``trichat serve OPTIONS`` says as it refuses them (status 2)."""
    return await exits_saying(2, *options)


async def failed_to_start(*options: str) -> str:
    """What ``trichat serve OPTIONS`` says as it fails to start (status 1)."""
    return await exits_saying(1, *options)


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        (["--max-line", "10"], "--max-line must be at least 64, not 10"),
        (["--queue-size", "0"], "--queue-size must be positive, not 0"),
        (["--queue-bytes", "0"], "--queue-bytes must be positive"),
        (["--max-clients", "0"], "--max-clients must be positive"),
        (["--max-per-ip", "-1"], "--max-per-ip must not be negative"),
        (["--login-timeout", "0"], "--login-timeout must be positive"),
        (["--ping-timeout", "0s"], "--ping-timeout must be positive"),
        (["--rate", "-1"], "--rate must not be negative"),
        (["--burst", "0"], "--burst must be positive"),
        (["--flood-grace", "0"], "--flood-grace must be positive"),
        (["--stall-timeout", "0ms"], "--stall-timeout must be positive"),
        (["--max-refusing", "0"], "--max-refusing must be positive"),
        (["--port", "70000"], "--port must be 0 to 65535, not 70000"),
        (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
    ],
)
async def test_a_bad_option_is_refused_by_its_name(
    options: list[str], complaint: str
) -> None:
    message = await refused(*options)
    assert f"trichat serve: {complaint}" in message
    # The option, never the Python field behind it.
    assert "_" not in message.removeprefix("trichat serve: ")


def test_every_checked_option_is_named() -> None:
    # Each option whose value ServerConfig checks, set to one it refuses
    # (as a number: the parser itself refuses a negative duration).
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    checked = 0
    for field in attrs.fields(ServerConfig):
        args = parser.parse_args([])
        if field.validator is None or not hasattr(args, field.name):
            continue
        setattr(args, field.name, -1)
        option = "--" + field.name.replace("_", "-")
        with pytest.raises(ValueError, match=f"^{option} must "):
            _config(args)
        checked += 1
    assert checked >= 14


@pytest.mark.parametrize("which", ["--tls-cert", "--tls-key"])
async def test_a_missing_tls_file_is_named(which: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    files = {"--tls-cert": tmp_path / "cert.pem", "--tls-key": tmp_path / "key.pem"}
    issued.private_key_and_cert_chain_pem.write_to_path(str(files["--tls-cert"]))
    issued.private_key_pem.write_to_path(str(files["--tls-key"]))
    files[which] = tmp_path / "missing.pem"
    message = await refused(
        "--tls-cert", str(files["--tls-cert"]), "--tls-key", str(files["--tls-key"])
    )
    missing = tmp_path / "missing.pem"
    assert f"cannot read {which} {missing}: No such file or directory" in message


async def test_a_tls_file_that_is_not_pem_is_named(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    message = await refused("--tls-cert", str(junk), "--tls-key", str(junk))
    assert f"cannot load the TLS certificate {junk} with the key {junk}" in message


async def test_a_duration_that_is_not_one_is_refused() -> None:
    message = await refused("--login-timeout", "10 seconds")
    assert "argument --login-timeout: not a duration: '10 seconds'" in message


def test_durations_take_units() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = [
        *("--login-timeout", "10s", "--ping-interval", "2m"),
        *("--ping-timeout", "1.5s", "--flood-grace", "500ms"),
        *("--stall-timeout", "2", "--presence-delay", "0"),
    ]
    config = _config(parser.parse_args(options))
    assert (config.login_timeout, config.ping_interval) == (10, 120)
    assert (config.ping_timeout, config.flood_grace) == (1.5, 0.5)
    assert (config.stall_timeout, config.presence_delay) == (2, 0)


def test_sizes_take_units() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = [
        *("--queue-bytes", "2M", "--history-cache", "256M"),
        *("--max-queued-bytes", "1G", "--max-queued-bytes-per-ip", "65536"),
    ]
    config = _config(parser.parse_args(options))
    assert (config.queue_bytes, config.history_cache) == (2 << 20, 256 << 20)
    assert config.max_queued_bytes == 1 << 30
    assert config.max_queued_bytes_per_ip == 65536


async def test_a_login_timeout_in_milliseconds() -> None:
    async with trio.open_nursery() as nursery:
        serve, port = await start_serve(nursery, "--login-timeout", "300ms")
        silent = await LineClient.connect(port)
        try:
            lines = await silent.read_until_closed()
        finally:
            await silent.aclose()
        serve.process.send_signal(signal.SIGTERM)
        await serve.read_log_to_end()
    assert len(lines) == 1
    assert lines[0].startswith("error|login-timeout|")


async def test_the_log_level_in_any_case() -> None:
    async with trio.open_nursery() as nursery:
        serve, _ = await start_serve(nursery, "--log-level", "DEBUG")
        serve.process.send_signal(signal.SIGTERM)
        log = await serve.read_log_to_end()
    assert serve.process.returncode == 0
    assert "SIGTERM received" in log
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--log-level", "Warning"]).log_level == "warning"


@pytest.mark.parametrize(
    ("options", "shared_reader"), [([], True), (["--no-shared-reader"], False)]
)
def test_the_shared_reader_is_on_unless_switched_off(
    options: list[str], shared_reader: bool
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert _config(parser.parse_args(options)).shared_reader is shared_reader


async def test_a_server_without_the_shared_reader_serves() -> None:
    async with trio.open_nursery() as nursery:
        serve, port = await start_serve(nursery, "--no-shared-reader")
        alice = await LineClient.connect(port)
        try:
            await alice.login("alice")
            await alice.send("talk|alice|to myself")
            await alice.expect("talk|alice|alice|to myself")
        finally:
            await alice.aclose()
        serve.process.send_signal(signal.SIGTERM)
        await serve.read_log_to_end()
    assert serve.process.returncode == 0
