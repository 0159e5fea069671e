"""The chaos test of issue 13: a TCP proxy between protocol-2 clients (the
library's ReconnectingClient) and a real ChatServer cuts connections at
random moments, mid-frame included, while the clients talk in rooms, to
everyone and directly. At the end every client has received every message
addressed to it exactly once, in order, and ``exit`` only for the clients
that said it.

The seed is fixed for CI; ``TRICHAT_CHAOS_SEED`` (a number, or ``random``)
and ``TRICHAT_CHAOS_CUTS`` (how many cuts to make at least; more messages
are sent for more cuts) run it by hand:

    TRICHAT_CHAOS_SEED=random TRICHAT_CHAOS_CUTS=200 pytest tests/test_chaos.py -s
"""

from __future__ import annotations

import os
import random
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import partial

import attrs
import pytest
import trio
from helpers import running_server

from trichat.client import (
    Backoff,
    Client,
    ConnectionLost,
    Disconnected,
    ReconnectingClient,
    Resumed,
    ResumeFailed,
    connect,
    open_stream,
)
from trichat.protocol.messages import BROADCAST, Exit, Message, Pong, is_room

pytestmark = pytest.mark.trio

SEED = 20261203
"""The seed CI runs with."""
CUTS = 40
"""How many cuts CI makes at least."""
TIME_LIMIT = 25.0
RESET_SERVERS = bool(os.environ.get("TRICHAT_CHAOS_RESETS"))


def _reset(stream: trio.SocketStream) -> None:
    """Make closing *stream* send a reset instead of a FIN."""
    stream.socket.setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )


def _seed() -> int:
    given = os.environ.get("TRICHAT_CHAOS_SEED", "")
    if given == "random":
        return random.SystemRandom().randrange(2**32)
    return int(given) if given else SEED


class CuttingProxy:
    """Forwards loopback connections to the server, and while ``cutting``
    cuts each after a random number of bytes (in either direction, so
    often in the middle of a frame) or a random time, with a FIN or a
    reset."""

    def __init__(self, server_port: int, rng: random.Random) -> None:
        self.server_port = server_port
        self.rng = rng
        self.cutting = False
        self.started = trio.Event()
        """Set when cutting starts."""
        self.cuts = 0
        self.mid_frame = 0
        self.resets = 0
        self.connections = 0

    async def serve(self, nursery: trio.Nursery) -> int:
        listeners = await nursery.start(
            partial(trio.serve_tcp, self._link, 0, host="127.0.0.1")
        )
        sock = listeners[0].socket
        port: int = sock.getsockname()[1]
        return port

    async def _link(self, client: trio.SocketStream) -> None:
        self.connections += 1
        try:
            # Shielded: a connect cancelled as it succeeds leaks its socket.
            with trio.CancelScope(shield=True), trio.fail_after(5):
                server = await trio.open_tcp_stream("127.0.0.1", self.server_port)
        except OSError:
            client.socket.close()
            return
        try:
            if await self._forward(client, server):
                self.cuts += 1
                await self._cut(client, server)
        except OSError:
            pass
        finally:
            client.socket.close()
            server.socket.close()

    async def _cut(self, client: trio.SocketStream, server: trio.SocketStream) -> None:
        """The client's end is reset (as a lost network ends it) or closed;
        the server's end is closed, and what the server writes after that
        is thrown away, as a network that went down would. With
        ``TRICHAT_CHAOS_RESETS`` the server's end is reset instead (see
        test_a_session_whose_writer_fails_waits)."""
        if self.rng.random() < 0.5:
            self.resets += 1
            _reset(client)
        if RESET_SERVERS:
            _reset(server)
            return
        await client.aclose()
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await server.send_eof()
            with trio.move_on_after(5):
                while await server.receive_some(65536):
                    pass

    async def _forward(
        self, client: trio.SocketStream, server: trio.SocketStream
    ) -> bool:
        """Forward both ways until one end closes (False) or the link is
        cut (True). Most links are cut after a few bytes or kilobytes (in
        either direction), some only after a while: a resume with a long
        replay gets through too."""
        budget = self.rng.choice(
            [self.rng.randint(1, 300), self.rng.randint(300, 8000), 1 << 40]
        )
        cut = False

        async def pipe(source: trio.SocketStream, sink: trio.SocketStream) -> None:
            nonlocal budget, cut
            try:
                while data := await source.receive_some(4096):
                    if self.cutting and budget <= len(data):
                        part = data[:budget]
                        if part:
                            await sink.send_all(part)
                        cut = True
                        if not part.endswith(b"\n"):
                            self.mid_frame += 1
                        break
                    if self.cutting:
                        budget -= len(data)
                    await sink.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            nursery.cancel_scope.cancel()

        async def timer() -> None:
            nonlocal cut
            await trio.sleep(self.rng.uniform(0.05, 1.0))
            await self.started.wait()
            cut = True
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe, client, server)
            nursery.start_soon(pipe, server, client)
            nursery.start_soon(timer)
        return cut


@attrs.define
class Seen:
    """What one client received."""

    messages: list[Message] = attrs.Factory(list)
    exits: list[str] = attrs.Factory(list)
    pongs: set[str] = attrs.Factory(set)
    drops: int = 0
    resumes: int = 0
    failures: list[ResumeFailed] = attrs.Factory(list)
    changed: trio.Event = attrs.Factory(trio.Event)

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


async def read(client: ReconnectingClient, seen: Seen) -> None:
    async for event in client:
        match event:
            case Message():
                seen.messages.append(event)
            case Exit(str(name)):
                seen.exits.append(name)
            case Pong(token):
                seen.pongs.add(token)
            case Disconnected():
                seen.drops += 1
            case Resumed():
                seen.resumes += 1
            case ResumeFailed():
                seen.failures.append(event)
        seen.poke()


async def in_sync(client: ReconnectingClient, seen: Seen, token: str) -> None:
    """Until a ping of this client has been answered: everything the server
    did before it for this client has arrived. A ping lost in a drop is
    sent again."""
    attempt = 0
    while True:
        attempt += 1
        ask = f"{token}-{attempt}"
        drops = seen.drops
        try:
            await client.ping(ask)
        except ConnectionLost:
            continue
        while ask not in seen.pongs and seen.drops == drops:
            await seen.changed.wait()
        if ask in seen.pongs:
            return


@asynccontextmanager
async def through(
    proxy_port: int, name: str, rng: random.Random
) -> AsyncIterator[ReconnectingClient]:
    first: Client = await connect(name, "127.0.0.1", proxy_port)
    async with ReconnectingClient.wrap(
        first,
        partial(open_stream, "127.0.0.1", proxy_port),
        backoff=Backoff(first=0.005, factor=2.0, cap=0.1, jitter=0.5),
        give_up_after=10.0,
        keepalive=0,
        rng=random.Random(rng.random()),
    ) as client:
        yield client


NAMES = ("ann", "ben", "cy", "dee")
ROOMS = {"#red": ("ann", "ben", "cy"), "#blue": ("ben", "cy", "dee")}
LEAVING = ("ann", "cy")


def recipients(message: Message) -> set[str]:
    if message.to == BROADCAST:
        return set(NAMES)
    if is_room(message.to):
        return set(ROOMS[message.to])
    return {message.sender, message.to}


async def test_clients_lose_nothing_through_a_proxy_that_cuts_at_random() -> None:
    seed = _seed()
    wanted_cuts = int(os.environ.get("TRICHAT_CHAOS_CUTS", "") or CUTS)
    rng = random.Random(seed)
    per_client = max(30, wanted_cuts * 2)
    limit = TIME_LIMIT if wanted_cuts <= CUTS else 30.0 + wanted_cuts * 0.5
    with trio.fail_after(limit):
        async with (
            running_server(resume_window=30, rate=0) as live,
            trio.open_nursery() as nursery,
        ):
            proxy = CuttingProxy(live.port, rng)
            port = await proxy.serve(nursery)
            seen = {name: Seen() for name in NAMES}
            clients: dict[str, ReconnectingClient] = {}
            async with trio.open_nursery() as clients_nursery:
                for name in NAMES:
                    client = await clients_nursery.start(
                        partial(_run_client, port, name, rng, seen[name])
                    )
                    clients[name] = client
                for room, members in ROOMS.items():
                    for member in members:
                        await clients[member].join(room)
                for name in NAMES:
                    await in_sync(clients[name], seen[name], "joined")

                proxy.cutting = True
                proxy.started.set()
                async with trio.open_nursery() as talkers:
                    for name in NAMES:
                        talkers.start_soon(
                            _talk,
                            clients[name],
                            random.Random(rng.random()),
                            per_client,
                        )
                    # Keep cutting until enough cuts were made.
                    while proxy.cuts < wanted_cuts:  # noqa: ASYNC110
                        await trio.sleep(0.05)
                proxy.cutting = False

                # Everything every client sent has been handled, then
                # everything sent to each client has arrived.
                for name in NAMES:
                    await in_sync(clients[name], seen[name], "sent")
                for name in NAMES:
                    await in_sync(clients[name], seen[name], "received")

                accepted = {
                    message.id: message
                    for name in NAMES
                    for message in seen[name].messages
                    if message.sender == name
                }
                for name in NAMES:
                    ids = [message.id for message in seen[name].messages]
                    expected = sorted(
                        number
                        for number, message in accepted.items()
                        if name in recipients(message)
                    )
                    assert ids == expected, _difference(name, ids, expected, seen)
                    assert seen[name].failures == []
                assert proxy.cuts >= wanted_cuts
                assert sum(client.reconnects for client in clients.values()) > 0
                assert len(accepted) > len(NAMES) * per_client // 2

                for name in LEAVING:
                    await clients[name].exit()
                for name in NAMES:
                    if name not in LEAVING:
                        while len(seen[name].exits) < len(LEAVING):
                            await seen[name].changed.wait()
                for name in NAMES:
                    assert set(seen[name].exits) == (
                        set() if name in LEAVING else set(LEAVING)
                    )
                for name in NAMES:
                    if name not in LEAVING:
                        await clients[name].exit()
            nursery.cancel_scope.cancel()
    drops = sum(s.drops for s in seen.values())
    resumes = sum(s.resumes for s in seen.values())
    print(
        f"\nchaos seed={seed}: {proxy.cuts} cuts ({proxy.mid_frame} mid-frame,"
        f" {proxy.resets} resets), {drops} drops seen, {resumes} resumes,"
        f" {len(accepted)} messages"
    )


async def _run_client(
    port: int,
    name: str,
    rng: random.Random,
    seen: Seen,
    *,
    task_status: trio.TaskStatus[ReconnectingClient] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with through(port, name, rng) as client:
        task_status.started(client)
        await read(client, seen)


async def _talk(client: ReconnectingClient, rng: random.Random, count: int) -> None:
    mine = [room for room, members in ROOMS.items() if client.name in members]
    others = [name for name in NAMES if name != client.name]
    for number in range(count):
        to = rng.choice([*mine, BROADCAST, *others])
        with suppress(ConnectionLost):  # then it never reached the server
            await client.talk(to, f"{client.name} {number}")
        await trio.sleep(rng.uniform(0, 0.02))


def _difference(
    name: str, ids: list[int], expected: list[int], seen: dict[str, Seen]
) -> str:
    missing = sorted(set(expected) - set(ids))
    extra = sorted(set(ids) - set(expected))
    twice = len(ids) - len(set(ids))
    return (
        f"{name}: {len(missing)} missing (first {missing[:5]}), {len(extra)} not"
        f" expected (first {extra[:5]}), {twice} twice, in order:"
        f" {ids == sorted(ids)}; {seen[name].drops} drops,"
        f" {seen[name].resumes} resumes, failures {seen[name].failures}"
    )
