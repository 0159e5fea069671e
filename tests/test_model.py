"""The server against a model of who is online, on programs hypothesis writes.

A ``RuleBasedStateMachine`` writes a program: clients connect, log in (names
drawn from a small pool full of clashes), talk, broadcast, send bursts from
several clients at once, exit, drop their connection (some with a reset) and
reconnect. The machine only records the program; its teardown runs it
against a fresh server over TCP in one ``trio.run``, and after each step
checks every frame each client received against ``Model``: an accepted
message reaches its receivers exactly once and in order per sender, or its
sender got the error the protocol names; presence frames match who is
online.

After each step every client answers a ``ping|TOKEN`` barrier, first the
ones that acted, then everyone, so that everything the step caused has
arrived before the check.
"""

from __future__ import annotations

import itertools
import socket
import struct
from collections import defaultdict

import attrs
import trio
from helpers import STEP_TIMEOUT, LineClient, LiveServer, running_server
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)
from strategies import texts

from trichat import Role, decode, name_key

SLOTS = 4
# Several spellings of one name: case, a diaeresis, a full-width letter.
NAMES = ["ann", "Ann", "bo", "Zo\u00eb", "ZO\u00cb", "\uff3ao\u00eb", "cy"]
# A whole example must finish well within this.
RUN_TIMEOUT = 30.0


# -- the program ---------------------------------------------------------------


@attrs.frozen
class Connect:
    slot: int


@attrs.frozen
class LogIn:
    slot: int
    name: str


@attrs.frozen
class Say:
    """``talk|TO|TEXT``; TO ``*`` is a broadcast."""

    slot: int
    to: str
    text: str

    def frame(self) -> bytes:
        return f"talk|{self.to}|{self.text}\n".encode()


@attrs.frozen
class Burst:
    """Several clients send at once, each its frames in one write."""

    says: tuple[Say, ...]


@attrs.frozen
class Leave:
    """``exit``; or, when logged in and *named*, ``exit|NAME`` with the
    client's own name, spelled another way that clashes if *variant*."""

    slot: int
    named: bool
    variant: bool


@attrs.frozen
class ExitOther:
    """``exit|NAME`` naming somebody else: refused, the connection stays."""

    slot: int
    name: str


@attrs.frozen
class Drop:
    """Close the socket without a word; with *reset*, by a TCP RST."""

    slot: int
    reset: bool


@attrs.frozen
class Reconnect:
    slot: int
    reset: bool


Action = Connect | LogIn | Say | Burst | Leave | ExitOther | Drop | Reconnect


# -- the model and the run -----------------------------------------------------


def normalize(line: str) -> str:
    """*line* as the model writes it: an error's detail is left out, except
    that of ``no-such-user``, which is the name asked for."""
    if line.startswith("error|") and not line.startswith("error|no-such-user|"):
        return "|".join(line.split("|")[:2])
    return line


def by_source(lines: list[str]) -> dict[str, list[str]]:
    """*lines* split by who caused them: talk by its sender, the rest by
    the server; each list keeps its order."""
    sources: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        kind, _, rest = line.partition("|")
        sources[rest.partition("|")[0] if kind == "talk" else ""].append(line)
    return dict(sources)


class Model:
    """Who is connected and who is online, and what each step should cause."""

    def __init__(self, live: LiveServer) -> None:
        self.live = live
        self.clients: dict[int, LineClient] = {}
        self.names: dict[int, str] = {}
        self.tokens = itertools.count()
        self.history: list[str] = []

    def online(self, name: str) -> int | None:
        """The slot of the online user whose name clashes with *name*."""
        for slot, other in self.names.items():
            if name_key(other) == name_key(name):
                return slot
        return None

    # -- driving one step ----------------------------------------------------

    async def step(self, action: Action) -> None:
        self.history.append(repr(action))
        expected: dict[int, list[str]] = defaultdict(list)
        actors: list[int] = []
        roster_of: int | None = None
        match action:
            case Connect(slot):
                await self.connect(slot)
                actors.append(slot)
            case LogIn(slot, name):
                roster_of = self.log_in(slot, name, expected)
                await self.clients[slot].send(f"login|{name}")
                actors.append(slot)
            case Say(slot):
                self.say(action, expected)
                await self.clients[slot].send_raw(action.frame())
                actors.append(slot)
            case Burst(says):
                frames: dict[int, bytes] = defaultdict(bytes)
                for say in says:
                    self.say(say, expected)
                    frames[say.slot] += say.frame()
                async with trio.open_nursery() as nursery:
                    for slot, data in frames.items():
                        nursery.start_soon(self.clients[slot].send_raw, data)
                actors.extend(frames)
            case Leave(slot, named, variant):
                await self.leave(slot, named, variant, expected)
            case ExitOther(slot, name):
                own = self.names.get(slot)
                if own is None:
                    expected[slot].append("error|not-logged-in")
                else:
                    name = next(n for n in NAMES if name_key(n) != name_key(own))
                    expected[slot].append("error|bad-frame")
                await self.clients[slot].send(f"exit|{name}")
                actors.append(slot)
            case Drop(slot, reset):
                await self.drop(slot, reset, expected)
            case Reconnect(slot, reset):
                await self.drop(slot, reset, expected)
                await self.connect(slot)
                actors.append(slot)
        received = await self.barrier(actors)
        self.check(received, expected, roster_of)

    async def connect(self, slot: int) -> None:
        assert slot not in self.clients
        self.clients[slot] = await self.live.connect()

    def log_in(
        self, slot: int, name: str, expected: dict[int, list[str]]
    ) -> int | None:
        """The model's side of a login; the slot whose roster to check."""
        if slot in self.names:
            expected[slot].append("error|already-logged-in")
            return None
        if self.online(name) is not None:
            expected[slot].append("error|name-taken")
            return None
        expected[slot].append(f"login|{name}")
        for other, other_name in self.names.items():
            expected[slot].append(f"login|{other_name}")
            expected[other].append(f"login|{name}")
        self.names[slot] = name
        return slot

    def say(self, say: Say, expected: dict[int, list[str]]) -> None:
        sender = self.names.get(say.slot)
        if sender is None:
            expected[say.slot].append("error|not-logged-in")
        elif say.to == "*":
            for other, _ in self.names.items():
                if other != say.slot:
                    expected[other].append(f"talk|{sender}|*|{say.text}")
        elif (target := self.online(say.to)) is None:
            expected[say.slot].append(f"error|no-such-user|{say.to}")
        else:
            expected[target].append(f"talk|{sender}|{self.names[target]}|{say.text}")

    def went_offline(self, slot: int, expected: dict[int, list[str]]) -> None:
        name = self.names.pop(slot, None)
        if name is not None:
            for other in self.names:
                expected[other].append(f"exit|{name}")

    async def leave(
        self, slot: int, named: bool, variant: bool, expected: dict[int, list[str]]
    ) -> None:
        client = self.clients.pop(slot)
        name = self.names.get(slot)
        if named and name is not None:
            if variant:
                # Another spelling of the same name, if the pool has one.
                clashes = [n for n in NAMES if name_key(n) == name_key(name)]
                name = next((n for n in clashes if n != name), name)
            await client.send(f"exit|{name}")
        else:
            await client.send("exit")
        self.went_offline(slot, expected)
        # The server takes the client offline before it closes: once the
        # connection is closed, the others' exit frames are queued.
        lines = await client.read_until_closed()
        assert lines == [], f"after exit: {lines}"

    async def drop(
        self, slot: int, reset: bool, expected: dict[int, list[str]]
    ) -> None:
        client = self.clients.pop(slot)
        stream = client.stream
        if reset:
            assert isinstance(stream, trio.SocketStream)
            stream.socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        await client.aclose()
        self.went_offline(slot, expected)
        # Nothing tells us when the server has noticed; its connection count
        # does (a session leaves the hub before it leaves the count).
        with trio.fail_after(STEP_TIMEOUT):
            while self.live.server.connections != len(self.clients):  # noqa: ASYNC110
                await trio.sleep(0.001)

    async def barrier(self, actors: list[int]) -> dict[int, list[str]]:
        """Every connected client's lines up to its answer to a ping: first
        each actor's (so the server has acted on all they sent), then
        everyone's (so all that caused has arrived)."""
        received: dict[int, list[str]] = defaultdict(list)

        async def ping(slot: int) -> None:
            token = f"b{next(self.tokens)}"
            client = self.clients[slot]
            await client.send(f"ping|{token}")
            while (line := await client.read_line()) != f"pong|{token}":
                decode(line.encode(), Role.CLIENT)  # a valid server frame
                received[slot].append(line)

        for group in ([s for s in actors if s in self.clients], list(self.clients)):
            async with trio.open_nursery() as nursery:
                for slot in group:
                    nursery.start_soon(ping, slot)
        return received

    def check(
        self,
        received: dict[int, list[str]],
        expected: dict[int, list[str]],
        roster_of: int | None,
    ) -> None:
        for slot in sorted(set(received) | set(expected)):
            got = [normalize(line) for line in received.get(slot, [])]
            want = list(expected.get(slot, []))
            if slot == roster_of:
                # The acknowledgement first, then the roster in any order.
                got[1:] = sorted(got[1:])
                want[1:] = sorted(want[1:])
            assert by_source(got) == by_source(want), (
                f"slot {slot} after {self.history[-1]}:\n"
                f"  got      {got}\n  expected {want}\n"
                f"  steps: {self.history}"
            )
        assert sorted(self.live.server.hub.names()) == sorted(self.names.values())


async def run_program(actions: list[Action]) -> None:
    failure: AssertionError | None = None
    with trio.fail_after(RUN_TIMEOUT):
        async with running_server(rate=0) as live:
            model = Model(live)
            try:
                for action in actions:
                    await model.step(action)
            except AssertionError as error:
                failure = error
    if failure is not None:
        raise failure


# -- the program's author ------------------------------------------------------


class ChatPrograms(RuleBasedStateMachine):
    """Writes a program of client actions; its teardown runs it."""

    def __init__(self) -> None:
        super().__init__()
        self.actions: list[Action] = []
        self.connected: set[int] = set()

    def free_slot(self) -> int:
        return min(set(range(SLOTS)) - self.connected)

    def pick(self, data: st.DataObject) -> int:
        return data.draw(st.sampled_from(sorted(self.connected)), label="slot")

    @initialize()
    def two_clients(self) -> None:
        for _ in range(2):
            self.connect()

    @precondition(lambda self: len(self.connected) < SLOTS)
    @rule()
    def connect(self) -> None:
        slot = self.free_slot()
        self.connected.add(slot)
        self.actions.append(Connect(slot))

    @precondition(lambda self: bool(self.connected))
    @rule(data=st.data(), name=st.sampled_from(NAMES))
    def log_in(self, data: st.DataObject, name: str) -> None:
        self.actions.append(LogIn(self.pick(data), name))

    @precondition(lambda self: bool(self.connected))
    @rule(data=st.data(), to=st.sampled_from([*NAMES, "*"]), text=texts(max_size=8))
    def say(self, data: st.DataObject, to: str, text: str) -> None:
        self.actions.append(Say(self.pick(data), to, text))

    @precondition(lambda self: bool(self.connected))
    @rule(data=st.data())
    def burst(self, data: st.DataObject) -> None:
        say = st.builds(
            Say,
            st.sampled_from(sorted(self.connected)),
            st.sampled_from([*NAMES, "*"]),
            texts(max_size=8),
        )
        says = data.draw(st.lists(say, min_size=2, max_size=12), label="says")
        self.actions.append(Burst(tuple(says)))

    @precondition(lambda self: bool(self.connected))
    @rule(data=st.data(), named=st.booleans(), variant=st.booleans())
    def leave(self, data: st.DataObject, named: bool, variant: bool) -> None:
        slot = self.pick(data)
        self.connected.discard(slot)
        self.actions.append(Leave(slot, named, variant))

    @precondition(lambda self: bool(self.connected))
    @rule(data=st.data(), name=st.sampled_from(NAMES))
    def exit_other(self, data: st.DataObject, name: str) -> None:
        self.actions.append(ExitOther(self.pick(data), name))

    @precondition(lambda self: bool(self.connected))
    @rule(data=st.data(), reset=st.booleans())
    def drop(self, data: st.DataObject, reset: bool) -> None:
        slot = self.pick(data)
        self.connected.discard(slot)
        self.actions.append(Drop(slot, reset))

    @precondition(lambda self: bool(self.connected))
    @rule(data=st.data(), reset=st.booleans())
    def reconnect(self, data: st.DataObject, reset: bool) -> None:
        self.actions.append(Reconnect(self.pick(data), reset))

    def teardown(self) -> None:
        trio.run(run_program, self.actions)


def test_server_matches_the_model() -> None:
    run_state_machine_as_test(
        ChatPrograms,
        settings=settings(
            max_examples=100,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
