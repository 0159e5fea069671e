"""``trichat serve`` and ``trichat connect`` as separate processes, driven
through pipes the way a script would drive them.

Every assertion is about what a user sees: the lines on a client's stdout
(after their ``HH:MM:SS`` time stamp), what it says on stderr, and exit
statuses. Tests wait for output, never for time; every wait is bounded.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from functools import partial

import trio
from helpers import STEP_TIMEOUT

STAMPED = re.compile(r"\d\d:\d\d:\d\d (.*)")


class Program:
    """A ``trichat`` subprocess with its stdin, stdout and stderr on pipes."""

    def __init__(self, process: trio.Process, label: str) -> None:
        self.process = process
        self.label = label
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._unread = 0  # where in stdout the next unread line starts

    @classmethod
    async def start(cls, nursery: trio.Nursery, label: str, *argv: str) -> Program:
        command = [sys.executable, "-m", "trichat", *argv]
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                check=False,
            )
        )
        return cls(process, label)

    # -- the user's side ----------------------------------------------------

    async def type(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(f"{line}\n".encode())

    async def end_input(self) -> None:
        """Close stdin: the end of input, as Ctrl-D or the end of a script."""
        assert self.process.stdin is not None
        await self.process.stdin.aclose()

    async def wait_for(
        self, shown: str | re.Pattern[str], within: float = STEP_TIMEOUT
    ) -> list[str]:
        """Read stdout until a time-stamped line shows *shown* (a string, or
        a pattern the whole of it matches).

        Returns what the lines read on the way show (without their time
        stamps), that line last. Fails when the process ends first or
        nothing matching arrives *within* seconds.
        """
        assert self.process.stdout is not None
        seen: list[str] = []
        with trio.fail_after(within):
            while True:
                end = self.stdout.find(b"\n", self._unread)
                if end < 0:
                    data = await self.process.stdout.receive_some()
                    assert data, (
                        f"{self.label} ended before showing {shown!r};"
                        f" stdout: {self.stdout.decode()!r},"
                        f" stderr: {self.stderr.decode()!r}"
                    )
                    self.stdout += data
                    continue
                line = self.stdout[self._unread : end].decode()
                self._unread = end + 1
                stamped = STAMPED.fullmatch(line)
                seen.append(stamped[1] if stamped else line)
                if stamped and _shows(stamped[1], shown):
                    return seen

    async def wait_for_each(self, *shown: str) -> None:
        """Read stdout until each of *shown* has been shown, in any order."""
        missing = set(shown)
        while missing:
            seen = await self.wait_for(re.compile("|".join(map(re.escape, missing))))
            missing.remove(seen[-1])

    async def finish(self) -> int:
        """Read stdout and stderr to their end and return the exit status."""
        with trio.fail_after(STEP_TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_read_to_end, self.process.stdout, self.stdout)
                nursery.start_soon(_read_to_end, self.process.stderr, self.stderr)
            return await self.process.wait()

    def unread_lines(self) -> list[str]:
        """What the stdout lines not yet waited for show (after finish)."""
        text = self.stdout[self._unread :].decode()
        return [_shown(line) for line in text.splitlines()]

    def error_lines(self) -> list[str]:
        return self.stderr.decode().splitlines()

    def assert_no_traceback(self) -> None:
        assert b"Traceback" not in self.stdout, self.stdout.decode()
        assert b"Traceback" not in self.stderr, self.stderr.decode()


def _shows(text: str, shown: str | re.Pattern[str]) -> bool:
    if isinstance(shown, str):
        return text == shown
    return shown.fullmatch(text) is not None


def _shown(line: str) -> str:
    stamped = STAMPED.fullmatch(line)
    return stamped[1] if stamped else line


async def _read_to_end(stream: trio.abc.ReceiveStream | None, into: bytearray) -> None:
    assert stream is not None
    while data := await stream.receive_some():
        into += data


async def start_server(nursery: trio.Nursery, port: int = 0) -> tuple[Program, int]:
    """``trichat serve --port PORT`` (0: any free one), and the port it
    logged."""
    server = await Program.start(nursery, "serve", "serve", "--port", str(port))
    stderr = server.process.stderr
    assert stderr is not None
    pattern = re.compile(rb"listening on 127\.0\.0\.1 port (\d+)")
    with trio.fail_after(STEP_TIMEOUT):
        while (found := pattern.search(server.stderr)) is None:
            data = await stderr.receive_some()
            assert data, f"the server ended: {server.stderr.decode()}"
            server.stderr += data
    return server, int(found[1])


async def stop_server(server: Program) -> None:
    """SIGTERM; the server must exit 0 without a traceback."""
    server.process.send_signal(signal.SIGTERM)
    assert await server.finish() == 0, server.stderr.decode()
    server.assert_no_traceback()


async def start_users(
    nursery: trio.Nursery, port: int, *names: str, options: tuple[str, ...] = ()
) -> tuple[Program, ...]:
    """``trichat connect NAME`` (with *options*) for each of *names*, all
    started at once, and each one seen to be logged in and to know of all
    the others."""
    users = [
        await Program.start(
            nursery, name, "connect", name, "--port", str(port), *options
        )
        for name in names
    ]

    async def logged_in(user: Program) -> None:
        await user.wait_for(f"* logged in as {user.label}")
        await user.wait_for_each(
            *(f"* {other} is online" for other in names if other != user.label)
        )

    async with trio.open_nursery() as waiting:
        for user in users:
            waiting.start_soon(logged_in, user)
    return tuple(users)


async def test_the_tutorials_chat_between_two_people_needs_no_syntax() -> None:
    async with trio.open_nursery() as nursery:
        server, port = await start_server(nursery)
        alice, bob = await start_users(nursery, port, "alice", "bob")

        # Plain text goes to the only other user online, both ways.
        await alice.type("hi bob | lunch?")
        await bob.wait_for("alice: hi bob | lunch?")
        await bob.type("sure, 12:30")
        await alice.wait_for("bob: sure, 12:30")

        # A user who is not there is an error in plain words.
        await alice.type("@carol are you there?")
        await alice.wait_for("! no such user: carol")

        # /quit: bob sees alice leave; alice exits 0 having said nothing more.
        await alice.type("/quit")
        await bob.wait_for("* alice left")
        assert await alice.finish() == 0
        assert alice.unread_lines() == []
        assert alice.error_lines() == []

        # The end of input ends bob's session with 0, too.
        await bob.end_input()
        assert await bob.finish() == 0
        assert bob.unread_lines() == []
        assert bob.error_lines() == []

        await stop_server(server)
    for program in (alice, bob):
        program.assert_no_traceback()


async def leave_then_stop(server: Program, *users: Program) -> None:
    """End each user's input (each exits 0, silently), then stop the server."""
    for user in users:
        await user.end_input()
        assert await user.finish() == 0, user.stderr.decode()
        assert user.error_lines() == []
        user.assert_no_traceback()
    await stop_server(server)


async def test_direct_messages_and_broadcasts_are_told_apart() -> None:
    async with trio.open_nursery() as nursery:
        server, port = await start_server(nursery)
        alice, bob, carol = await start_users(nursery, port, "alice", "bob", "carol")

        await alice.type("@bob first, by @")
        await alice.type("/msg bob second, by /msg")
        await alice.type("/all third, to everyone")
        assert await bob.wait_for("alice (to all): third, to everyone") == [
            "alice: first, by @",
            "alice: second, by /msg",
            "alice (to all): third, to everyone",
        ]
        # carol got the broadcast, and nothing sent to bob alone before it.
        assert await carol.wait_for("alice (to all): third, to everyone") == [
            "alice (to all): third, to everyone"
        ]
        # The sender does not get her own broadcast back: the next thing she
        # sees is what bob says after he saw it.
        await bob.type("@alice got all three")
        assert await alice.wait_for("bob: got all three") == ["bob: got all three"]

        # With two others online, plain text goes to the current peer: bob
        # has one (alice wrote to him); carol has none and is told so.
        await bob.type("plain text to my current peer")
        await alice.wait_for("bob: plain text to my current peer")
        await carol.type("plain text to whom?")
        await carol.wait_for(re.compile(r"! several users are online: .*"))

        # What carol typed reached nobody: alice's next line is bob's.
        await bob.type("/all still here")
        assert await alice.wait_for("bob (to all): still here") == [
            "bob (to all): still here"
        ]
        await leave_then_stop(server, alice, bob, carol)


async def test_who_lists_the_others_and_presence_follows_them() -> None:
    online = re.compile(r"\* online: (.*)")
    async with trio.open_nursery() as nursery:
        server, port = await start_server(nursery)
        alice, bob, carol = await start_users(nursery, port, "alice", "bob", "carol")

        await bob.type("/who")
        shown = online.fullmatch((await bob.wait_for(online))[-1])
        assert shown is not None
        assert sorted(shown[1].split(", ")) == ["alice", "carol"]

        # carol leaves at the end of her input: the others see it, and /who
        # no longer lists her.
        await carol.end_input()
        assert await carol.finish() == 0
        assert carol.error_lines() == []
        carol.assert_no_traceback()
        await alice.wait_for("* carol left")
        await bob.wait_for("* carol left")
        await bob.type("/who")
        assert (await bob.wait_for(online))[-1] == "* online: alice"

        # A newcomer is announced to those already there.
        (dave,) = await start_users(nursery, port, "dave")
        await alice.wait_for("* dave is online")
        await bob.wait_for("* dave is online")

        # bob says /quit, dave's input ends: alice sees both leave, and then
        # that nobody else is online.
        await bob.type("/quit")
        await dave.end_input()
        for user in (bob, dave):
            assert await user.finish() == 0
            assert user.error_lines() == []
            user.assert_no_traceback()
        # They left at the same time: either may be announced first.
        await alice.wait_for_each("* bob left", "* dave left")
        await alice.type("/who")
        await alice.wait_for("* nobody else is online")
        await alice.type("anyone?")
        await alice.wait_for("! nobody else is online")
        await leave_then_stop(server, alice)


async def test_a_taken_name_is_refused_with_one_clear_line() -> None:
    async with trio.open_nursery() as nursery:
        server, port = await start_server(nursery)
        (alice,) = await start_users(nursery, port, "alice")

        # The name is taken whatever its case.
        for name in ("alice", "ALICE"):
            second = await Program.start(
                nursery, name, "connect", name, "--port", str(port)
            )
            assert await second.finish() == 2
            assert second.stdout == b""
            [complaint] = second.error_lines()
            assert complaint.startswith(f"trichat: cannot log in as {name}: ")
            assert "name taken" in complaint
            second.assert_no_traceback()

        # The first alice is still there and still chatting.
        await alice.type("/who")
        await alice.wait_for("* nobody else is online")
        await alice.end_input()
        assert await alice.finish() == 0
        await stop_server(server)
    alice.assert_no_traceback()


async def test_a_server_stopped_by_sigterm_ends_sessions_with_status_1() -> None:
    # (Sessions that do not reconnect: those that do try again, below.)
    async with trio.open_nursery() as nursery:
        server, port = await start_server(nursery)
        users = await start_users(
            nursery, port, "alice", "bob", options=("--no-reconnect",)
        )

        server.process.send_signal(signal.SIGTERM)
        for user in users:
            assert await user.finish() == 1
            [complaint] = user.error_lines()
            assert complaint == (
                "trichat: the server is shutting down: the server is stopping"
            )
            # Nobody "left": the server went away under everyone.
            assert not any(line.endswith(" left") for line in user.unread_lines())
            user.assert_no_traceback()
        assert await server.finish() == 0
    server.assert_no_traceback()


async def test_a_server_restarted_on_its_port_is_reconnected_to() -> None:
    async with trio.open_nursery() as nursery:
        server, port = await start_server(nursery)
        alice, bob = await start_users(nursery, port, "alice", "bob")
        await stop_server(server)
        for user in (alice, bob):
            await user.wait_for("! the server is shutting down: the server is stopping")
        again, _ = await start_server(nursery, port)
        for user in (alice, bob):
            # Sessions waiting for a resume live in the server's memory:
            # each logs in again, at its next attempt (1 s after the drop,
            # then 2 s later, 4 s...: bounded by three of those).
            back = re.compile(r"! back, but the session was not kept.*")
            await user.wait_for(back, within=3 * STEP_TIMEOUT)
        await bob.type("@alice still there?")
        await alice.wait_for("bob: still there?")
        for user in (alice, bob):
            await user.end_input()
            assert await user.finish() == 0
            assert user.error_lines() == []
            user.assert_no_traceback()
        await stop_server(again)
