"""``trichat connect`` on a pseudo-terminal: full-screen there, the line
client with ``--plain``, and the terminal given back as it was, whether
the user quits, presses Ctrl-C or closes the terminal; a dropped
connection taken back (or, with ``--no-reconnect``, the end)."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import sys
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from fakeserver import free_port
from helpers import STEP_TIMEOUT, running_server
from test_terminal_reconnect import Proxy

ALTERNATE_SCREEN = b"\x1b[?1049h"
NORMAL_SCREEN = b"\x1b[?1049l"


class Terminal:
    """A process on a pseudo-terminal of 80 x 24, and what it wrote."""

    def __init__(self, process: trio.Process, master: trio.lowlevel.FdStream) -> None:
        self.process = process
        self.master = master
        self.output = bytearray()

    async def expect(self, text: bytes) -> None:
        """Read until *text* has been written (bounded)."""
        with trio.fail_after(STEP_TIMEOUT):
            while text not in self.output:
                data = await self.master.receive_some(65536)
                if not data:
                    raise AssertionError(f"no {text!r} in {bytes(self.output)!r}")
                self.output += data

    async def type(self, text: str) -> None:
        await self.master.send_all(text.encode())

    async def exit_status(self) -> int:
        """Wait for the process to end, reading what it writes meanwhile."""
        with trio.fail_after(STEP_TIMEOUT):
            async with trio.open_nursery() as nursery:

                async def read_all() -> None:
                    try:
                        while data := await self.master.receive_some(65536):
                            self.output += data
                    except trio.BrokenResourceError:
                        pass  # EIO: every end of the terminal is closed

                nursery.start_soon(read_all)
                status = await self.process.wait()
        return status


@asynccontextmanager
async def on_a_terminal(*args: str) -> AsyncIterator[Terminal]:
    """``trichat connect`` with *args*, its input and output a terminal."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    command = [sys.executable, "-m", "trichat", "connect", *args]
    process = await trio.lowlevel.open_process(
        command, stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    stream = trio.lowlevel.FdStream(master)
    try:
        yield Terminal(process, stream)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await stream.aclose()


async def test_on_a_terminal_it_is_full_screen_and_quit_restores_it() -> None:
    async with running_server() as live:
        bob = await live.login("bob")
        async with on_a_terminal("alice", "--port", str(live.port)) as terminal:
            await terminal.expect(b"/help lists the commands")
            assert ALTERNATE_SCREEN in terminal.output
            await bob.send("talk|alice|are you there?")
            # A window of its own, with one unread message; then shown.
            await terminal.expect(b"bob(1)")
            await terminal.type("\x1b2")  # Alt-2
            await terminal.expect(b"are you there?")
            await terminal.type("/quit\r")
            assert await terminal.exit_status() == 0
            # The terminal is back on its normal screen, with no traceback.
            assert terminal.output.rindex(NORMAL_SCREEN) > terminal.output.rindex(
                ALTERNATE_SCREEN
            )
            assert b"Traceback" not in terminal.output
        await bob.expect("login|alice", "exit|alice")


async def test_ctrl_c_leaves_with_no_traceback_and_says_exit() -> None:
    # With sessions on: Ctrl-C is the user leaving, not a drop, so the
    # session ends (exit) instead of waiting for a resume.
    async with running_server() as live:
        bob = await live.login("bob")
        async with on_a_terminal("alice", "--port", str(live.port)) as terminal:
            await terminal.expect(b"/help lists the commands")
            await terminal.type("typed but not sent")
            await terminal.expect(b"typed but not sent")
            terminal.process.send_signal(signal.SIGINT)
            assert await terminal.exit_status() == 130
            assert terminal.output.rindex(NORMAL_SCREEN) > terminal.output.rindex(
                ALTERNATE_SCREEN
            )
            assert b"Traceback" not in terminal.output
        await bob.expect("login|alice", "exit|alice")


async def test_plain_keeps_the_line_client_on_a_terminal() -> None:
    async with (
        running_server() as live,
        on_a_terminal("alice", "--plain", "--port", str(live.port)) as terminal,
    ):
        await terminal.expect(b"logged in as alice")
        await terminal.type("/quit\n")
        assert await terminal.exit_status() == 0
        assert ALTERNATE_SCREEN not in terminal.output


async def test_keys_typed_while_connecting_are_kept() -> None:
    async with running_server() as live:
        bob = await live.login("bob")
        async with on_a_terminal("alice", "--port", str(live.port)) as terminal:
            # Typed at once, long before the screen is up.
            await terminal.type("@bob typed early\r/quit\r")
            assert await terminal.exit_status() == 0
        await bob.expect("login|alice", "talk|alice|bob|typed early", "exit|alice")


async def test_a_closed_terminal_says_exit() -> None:
    # With sessions on (the default window): a hang-up is the user closing
    # the chat, which ends the session with exit, rather than leaving it
    # waiting for a resume nobody will make.
    async with running_server() as live:
        bob = await live.login("bob")
        async with on_a_terminal("alice", "--port", str(live.port)) as terminal:
            await terminal.expect(b"/help lists the commands")
            # Reading the terminal and redrawing it both fail (EIO).
            await terminal.master.aclose()
            with trio.fail_after(STEP_TIMEOUT):
                status = await terminal.process.wait()
            assert status == 128 + signal.SIGHUP
        # Said goodbye: the name is free at once.
        await bob.expect("login|alice", "exit|alice")


async def test_a_hang_up_signal_with_the_terminal_gone_says_exit() -> None:
    # As a terminal emulator closes: SIGHUP to the process, and the
    # terminal gone, in either order.
    async with running_server() as live:
        bob = await live.login("bob")
        async with on_a_terminal("alice", "--port", str(live.port)) as terminal:
            await terminal.expect(b"/help lists the commands")
            terminal.process.send_signal(signal.SIGHUP)
            await terminal.master.aclose()
            with trio.fail_after(STEP_TIMEOUT):
                status = await terminal.process.wait()
            assert status == 128 + signal.SIGHUP
        await bob.expect("login|alice", "exit|alice")


async def test_sigterm_says_exit_and_restores_the_terminal() -> None:
    async with running_server() as live:
        bob = await live.login("bob")
        async with on_a_terminal("alice", "--port", str(live.port)) as terminal:
            await terminal.expect(b"/help lists the commands")
            terminal.process.send_signal(signal.SIGTERM)
            assert await terminal.exit_status() == 128 + signal.SIGTERM
            assert terminal.output.rindex(NORMAL_SCREEN) > terminal.output.rindex(
                ALTERNATE_SCREEN
            )
            assert b"Traceback" not in terminal.output
        await bob.expect("login|alice", "exit|alice")


async def test_a_drop_is_taken_back_with_the_typed_line_kept() -> None:
    async with (
        running_server(resume_window=30) as live,
        trio.open_nursery() as nursery,
    ):
        proxy = Proxy(live.port)
        port = await proxy.serve(nursery)
        bob = await live.login("bob")
        async with on_a_terminal("alice", "--port", str(port)) as terminal:
            await terminal.expect(b"/help lists the commands")
            await bob.expect("login|alice")
            await terminal.type("@bob before\r")
            await bob.expect("talk|alice|bob|before")
            await terminal.type("half typed")
            await terminal.expect(b"half typed")
            proxy.cut()
            await terminal.expect(b"connection lost, reconnecting")
            await bob.send("talk|alice|while away")
            proxy.reopen()
            await terminal.expect(b"back: 1 message missed while away")
            await terminal.expect(b"while away")
            await terminal.type(" and done\r")
            await bob.expect("talk|alice|*|half typed and done")
            await terminal.type("/quit\r")
            assert await terminal.exit_status() == 0
            assert terminal.output.rindex(NORMAL_SCREEN) > terminal.output.rindex(
                ALTERNATE_SCREEN
            )
            assert b"Traceback" not in terminal.output
        # Nobody saw alice leave before her /quit.
        await bob.expect("exit|alice")
        nursery.cancel_scope.cancel()


async def test_no_reconnect_exits_on_a_drop_and_says_why() -> None:
    async with (
        running_server(resume_window=30) as live,
        trio.open_nursery() as nursery,
    ):
        proxy = Proxy(live.port)
        port = await proxy.serve(nursery)
        async with on_a_terminal(
            "alice", "--no-reconnect", "--port", str(port)
        ) as terminal:
            await terminal.expect(b"/help lists the commands")
            proxy.cut()
            assert await terminal.exit_status() == 1
            after = terminal.output[terminal.output.rindex(NORMAL_SCREEN) :]
            assert b"trichat: " in after
            assert b"reconnecting" not in terminal.output
        nursery.cancel_scope.cancel()


async def test_an_unreachable_server_is_said_in_the_systems_words() -> None:
    port = free_port()
    async with on_a_terminal("alice", "--port", str(port)) as terminal:
        assert await terminal.exit_status() == 1
        said = f"trichat: cannot connect to 127.0.0.1:{port}: Connection refused"
        assert said.encode() in terminal.output


@pytest.mark.parametrize(
    ("how", "status"),
    [
        ("interrupt", 128 + signal.SIGINT),
        ("hang up", 128 + signal.SIGHUP),
        ("close the terminal", 128 + signal.SIGHUP),
        ("terminate", 128 + signal.SIGTERM),
    ],
)
async def test_the_line_client_says_exit_however_it_is_left(
    how: str, status: int
) -> None:
    # Ctrl-C, a closed terminal or a polite kill is a user who left: the
    # name is free at once, not held for a resume nobody will make.
    async with running_server() as live:
        bob = await live.login("bob")
        async with on_a_terminal(
            "alice", "--plain", "--port", str(live.port)
        ) as terminal:
            await terminal.expect(b"logged in as alice")
            if how == "close the terminal":
                await terminal.master.aclose()  # reading it fails (EIO)
                with trio.fail_after(STEP_TIMEOUT):
                    assert await terminal.process.wait() == status
            else:
                number = {
                    "interrupt": signal.SIGINT,
                    "hang up": signal.SIGHUP,
                    "terminate": signal.SIGTERM,
                }[how]
                terminal.process.send_signal(number)
                assert await terminal.exit_status() == status
                assert b"Traceback" not in terminal.output
        await bob.expect("login|alice", "exit|alice")
