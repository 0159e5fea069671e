"""``trichat serve`` as a user runs it: a subprocess, stopped by a signal."""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
from functools import partial

import pytest
import trio
from helpers import STEP_TIMEOUT, LineClient

from trichat.server.cli import _config, add_arguments


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


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        (["--queue-size", "0"], "queue_size must be positive"),
        (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
        (["--rate", "-1"], "rate must not be negative"),
        (["--max-refusing", "0"], "max_refusing must be positive"),
    ],
)
async def test_bad_options_are_refused_with_a_reason(
    options: list[str], complaint: str
) -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "trichat", "serve", "--port", "0", *options],
        stdin=subprocess.DEVNULL,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 2
    assert complaint in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()


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
