"""``trichat connect``'s command line as a user types it: a name after
``--`` that starts with ``-`` (with options after it), and
``--no-reconnect`` against reconnecting, through the real ``python -m
trichat`` and a fake server on loopback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from fakeserver import SETTINGS, FakeServer, fail_after, free_port, serve_fake

from trichat.cli import parse_args
from trichat.client.terminal import EXIT_FAILURE, EXIT_OK, EXIT_REFUSED
from trichat.protocol.messages import ClientMessage, Exit, Resume

SECRET = "s3cr3t-session-0123456789abcdef"
SESSIONS = SETTINGS.replace("resume=0", "resume=30")


@pytest.mark.parametrize(
    ("argv", "name", "port"),
    [
        (["connect", "--", "-x", "--port", "9"], "-x", 9),
        (["connect", "--port", "9", "--", "-x"], "-x", 9),
        (["connect", "--", "-x"], "-x", 8089),
        (["connect", "--", "--port", "--port", "9"], "--port", 9),
        (["connect", "--", "--"], "--", 8089),
        (["connect", "alice", "--port", "9"], "alice", 9),
    ],
)
def test_the_name_after_dashes_is_the_name_and_options_may_follow(
    argv: list[str], name: str, port: int
) -> None:
    args = parse_args(argv)
    assert (args.name, args.port) == (name, port)


def test_options_after_the_name_after_dashes_are_options() -> None:
    args = parse_args(
        ["connect", "--plain", "--", "-x", "--host", "example.org", "--no-reconnect"]
    )
    assert (args.name, args.host, args.plain, args.no_reconnect) == (
        "-x",
        "example.org",
        True,
        True,
    )


def test_a_bad_option_after_the_name_is_still_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["connect", "--", "-x", "--port", "http"])
    assert exited.value.code == 2
    assert "--port: not a port number: 'http'" in capsys.readouterr().err


async def run_trichat(*argv: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(20):
        return await trio.run_process(
            [sys.executable, "-m", "trichat", *argv],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def test_a_name_that_starts_with_a_dash_reaches_the_login() -> None:
    # Parsed, then refused as a name (by the protocol's rules, before any
    # connection), not as an option.
    result = await run_trichat("connect", "--", "-x", "--port", str(free_port()))
    assert result.returncode == EXIT_REFUSED
    assert result.stderr.decode() == (
        "trichat: cannot log in as -x: a name must not start with '.' or '-'\n"
    )


@asynccontextmanager
async def connect_started(*argv: str) -> AsyncIterator[trio.Process]:
    """``python -m trichat connect ARGV`` with an input pipe that stays
    open until closed; killed at the end if it still runs."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trichat", "connect", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        process.kill()
        await process.wait()
        for pipe in (process.stdin, process.stdout, process.stderr):
            assert pipe is not None
            await pipe.aclose()


async def read_until(stream: trio.abc.ReceiveStream | None, text: bytes) -> bytes:
    """What *stream* gives until *text* is in it (all of it at its end)."""
    assert stream is not None
    seen = b""
    while text not in seen:
        chunk = await stream.receive_some()
        if not chunk:
            break
        seen += chunk
    return seen


class DropOnce:
    """A server that keeps sessions and drops alice's first connection;
    the next ones take the session back. What each says is kept."""

    def __init__(self) -> None:
        self.connections = 0
        self.resumes: list[Resume] = []
        self.after_resume: list[ClientMessage] = []

    async def __call__(self, server: FakeServer) -> None:
        self.connections += 1
        if self.connections == 1:
            await server.accept("alice", settings=SESSIONS, session=f"{SECRET}|30")
            await server.drop()
            return
        self.resumes.append(await server.resume_request(SESSIONS))
        server.connection.logged_in("alice")
        await server.send("resumed|alice|0", f"session|{SECRET}|30", "login|alice")
        assert await server.answer_ping() == []
        self.after_resume.extend(await server.receive_all())


@fail_after(30)
async def test_no_reconnect_exits_on_a_drop() -> None:
    script = DropOnce()
    async with trio.open_nursery() as nursery:
        port = await serve_fake(nursery, script, broken_is_closed=True)
        async with connect_started(
            "--", "alice", "--port", str(port), "--no-reconnect"
        ) as process:
            status = await process.wait()
            out = await read_until(process.stdout, b"\0")
            err = await read_until(process.stderr, b"\0")
        nursery.cancel_scope.cancel()
    assert status == EXIT_FAILURE
    assert b"logged in as alice" in out
    assert b"reconnecting" not in out
    assert err == b"trichat: the server closed the connection\n"
    assert script.connections == 1


@fail_after(30)
async def test_without_no_reconnect_a_drop_is_resumed() -> None:
    script = DropOnce()
    async with trio.open_nursery() as nursery:
        port = await serve_fake(nursery, script, broken_is_closed=True)
        async with connect_started("--", "alice", "--port", str(port)) as process:
            out = await read_until(process.stdout, b"back: 0 messages missed")
            assert b"connection lost (the server closed the connection)" in out
            assert process.stdin is not None
            await process.stdin.aclose()  # end of input: the user leaves
            status = await process.wait()
        nursery.cancel_scope.cancel()
    assert status == EXIT_OK
    assert script.resumes == [Resume(SECRET, 0)]
    assert script.after_resume == [Exit()]
