"""The server's basic exchange, end to end over TCP."""

from __future__ import annotations

from helpers import running_server


async def test_two_users_talk_and_leave() -> None:
    async with running_server() as live:
        alice = await live.login("alice")
        bob = await live.login("bob")
        await bob.expect("login|alice")
        await alice.expect("login|bob")
        await alice.send("talk|BOB|hi | how are you?")
        await bob.expect("talk|alice|bob|hi | how are you?")
        await bob.send("exit")
        await alice.expect("exit|bob")
        assert await bob.read_until_closed() == []
