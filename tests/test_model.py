"""The server against a model of who is online, on programs hypothesis writes.

A ``RuleBasedStateMachine`` writes a program: clients connect, say
``hello`` (protocol 1, 2 or later, with or without ``echo``; or never, and
stay on protocol 1), log in (names drawn from a small pool full of clashes),
talk to users, to rooms and to everyone, send bursts from several clients at
once, join and part rooms (names that clash too, under a low ``--max-rooms``),
list the rooms, exit, drop their connection (some with a reset) and
reconnect. Each program runs with ``--presence global`` or ``rooms``. The
machine only records the program; its teardown runs it against a fresh
server over TCP in one ``trio.run``, and after each step checks every frame
each client received against ``Model``: an accepted message reaches its
receivers exactly once and in order per sender, as ``talk`` on protocol 1
and ``msg`` on protocol 2 (echoed to a sender that asked), or its sender
got the error the protocol names; presence and room frames match who is
online and in which rooms; every connection sees message ids increase, and
all copies of one message carry one id and one time.

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
from helpers import STEP_TIMEOUT, LineClient, LiveServer, Msg, running_server
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
# Rooms that clash the same ways, and a limit low enough to reach.
ROOMS = ["#a", "#A", "#b", "#\uff42", "#c\u00e9", "#CE\u0301"]
MAX_ROOMS = 2
PRESENCE = ["global", "rooms"]
TARGETS = [*NAMES, *ROOMS, "*"]
# A whole example must finish well within this.
RUN_TIMEOUT = 30.0


# -- the program ---------------------------------------------------------------


@attrs.frozen
class Connect:
    slot: int


@attrs.frozen
class Hello:
    """``hello|VERSION`` or ``hello|VERSION|echo``."""

    slot: int
    version: int
    echo: bool

    def frame(self) -> str:
        return f"hello|{self.version}" + ("|echo" if self.echo else "")


@attrs.frozen
class Join:
    slot: int
    room: str


@attrs.frozen
class Part:
    slot: int
    room: str


@attrs.frozen
class ListRooms:
    slot: int


@attrs.frozen
class LogIn:
    slot: int
    name: str


@attrs.frozen
class Say:
    """``talk|TO|TEXT``; TO a name, a room, or ``*`` (everyone)."""

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


Action = (
    Connect
    | Hello
    | LogIn
    | Say
    | Burst
    | Join
    | Part
    | ListRooms
    | Leave
    | ExitOther
    | Drop
    | Reconnect
)


# -- the model and the run -----------------------------------------------------


def normalize(line: str) -> str:
    """*line* as the model writes it: a ``hello`` answer without its
    settings; a ``msg`` without its id and time (``msg|FROM|TO|TEXT``); an
    error's detail left out, except that of ``no-such-user`` and
    ``not-in-room``, which is the target as the sender wrote it."""
    kind = line.partition("|")[0]
    if kind == "hello":
        return "|".join(line.split("|")[:2])
    if kind == "msg":
        msg = Msg.parse(line)
        return f"msg|{msg.sender}|{msg.to}|{msg.text}"
    if kind == "error" and line.split("|")[1] not in ("no-such-user", "not-in-room"):
        return "|".join(line.split("|")[:2])
    return line


def by_source(lines: list[str]) -> dict[str, list[str]]:
    """*lines* (normalized) split by who caused them: a delivery by its
    sender, the rest by the server; each list keeps its order."""
    sources: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        kind, _, rest = line.partition("|")
        sources[rest.partition("|")[0] if kind in ("talk", "msg") else ""].append(line)
    return dict(sources)


@attrs.define
class Room:
    """A room as the model sees it: its name as its first member wrote it,
    and its members' slots."""

    shown: str
    members: list[int]


class Model:
    """Who is connected, which version each speaks, who is online and who
    is in which room, and what each step should cause."""

    def __init__(self, live: LiveServer, presence: str) -> None:
        self.live = live
        self.global_presence = presence == "global"
        self.clients: dict[int, LineClient] = {}
        self.versions: dict[int, int] = {}
        """The version a slot's connection said hello with (none: 1)."""
        self.echo: set[int] = set()
        self.names: dict[int, str] = {}
        self.rooms: dict[str, Room] = {}
        self.last_id: dict[int, int] = {}
        """The last message id each connection has seen."""
        self.tokens = itertools.count()
        self.history: list[str] = [f"presence {presence}"]

    def online(self, name: str) -> int | None:
        """The slot of the online user whose name clashes with *name*."""
        for slot, other in self.names.items():
            if name_key(other) == name_key(name):
                return slot
        return None

    def version(self, slot: int) -> int:
        return self.versions.get(slot, 1)

    def rooms_of(self, slot: int) -> list[Room]:
        return [room for room in self.rooms.values() if slot in room.members]

    def delivery(self, slot: int, sender: str, to: str, text: str) -> str:
        """A message as the model writes it for *slot*'s version."""
        kind = "talk" if self.version(slot) == 1 else "msg"
        return f"{kind}|{sender}|{to}|{text}"

    # -- driving one step ----------------------------------------------------

    async def step(self, action: Action) -> None:
        self.history.append(repr(action))
        expected: dict[int, list[str]] = defaultdict(list)
        actors: list[int] = []
        answer_of: int | None = None
        match action:
            case Connect(slot):
                await self.connect(slot)
                actors.append(slot)
            case Hello(slot):
                self.hello(action, expected)
                await self.clients[slot].send(action.frame())
                actors.append(slot)
            case LogIn(slot, name):
                answer_of = self.log_in(slot, name, expected)
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
            case Join(slot, room):
                answer_of = self.join(slot, room, expected)
                await self.clients[slot].send(f"join|{room}")
                actors.append(slot)
            case Part(slot, room):
                self.part(slot, room, expected)
                await self.clients[slot].send(f"part|{room}")
                actors.append(slot)
            case ListRooms(slot):
                self.list_rooms(slot, expected)
                await self.clients[slot].send("rooms")
                actors.append(slot)
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
        self.check(action, received, expected, answer_of)

    async def connect(self, slot: int) -> None:
        assert slot not in self.clients
        self.clients[slot] = await self.live.connect()
        self.versions.pop(slot, None)
        self.echo.discard(slot)
        self.last_id.pop(slot, None)

    def hello(self, hello: Hello, expected: dict[int, list[str]]) -> None:
        slot = hello.slot
        if slot in self.names:
            expected[slot].append("error|already-logged-in")
        elif slot in self.versions:
            expected[slot].append("error|bad-frame")  # at most once
        else:
            version = min(hello.version, 2)
            expected[slot].append(f"hello|{version}")
            self.versions[slot] = version
            if hello.echo and version == 2:
                self.echo.add(slot)

    def log_in(
        self, slot: int, name: str, expected: dict[int, list[str]]
    ) -> int | None:
        """The model's side of a login; the slot whose answer to check."""
        if slot in self.names:
            expected[slot].append("error|already-logged-in")
            return None
        if self.online(name) is not None:
            expected[slot].append("error|name-taken")
            return None
        expected[slot].append(f"login|{name}")
        if self.global_presence:
            for other, other_name in self.names.items():
                expected[slot].append(f"login|{other_name}")
                expected[other].append(f"login|{name}")
        self.names[slot] = name
        return slot

    def say(self, say: Say, expected: dict[int, list[str]]) -> None:
        sender = self.names.get(say.slot)
        if sender is None:
            expected[say.slot].append("error|not-logged-in")
            return
        to, text = say.to, say.text
        if to == "*":
            if not self.global_presence:
                expected[say.slot].append("error|not-in-room|*")
                return
            receivers = [slot for slot in self.names if slot != say.slot]
        elif to.startswith("#"):
            room = self.rooms.get(name_key(to))
            if room is None or say.slot not in room.members:
                expected[say.slot].append(f"error|not-in-room|{to}")
                return
            to = room.shown
            receivers = [slot for slot in room.members if slot != say.slot]
        else:
            target = self.online(to)
            if target is None:
                expected[say.slot].append(f"error|no-such-user|{to}")
                return
            to = self.names[target]
            receivers = [target]
        if say.slot in self.echo and say.slot not in receivers:
            receivers.append(say.slot)  # the echo (to oneself: once)
        for slot in receivers:
            expected[slot].append(self.delivery(slot, sender, to, text))

    def join(self, slot: int, name: str, expected: dict[int, list[str]]) -> int | None:
        """The model's side of a join; the slot whose answer to check."""
        own = self.names.get(slot)
        if own is None:
            expected[slot].append("error|not-logged-in")
            return None
        room = self.rooms.get(name_key(name))
        if room is not None and slot in room.members:
            expected[slot].append("error|already-in-room")
            return None
        if len(self.rooms_of(slot)) >= MAX_ROOMS:
            expected[slot].append("error|too-many-rooms")
            return None
        if room is None:
            room = self.rooms[name_key(name)] = Room(name, [])
        frame = f"join|{room.shown}|{own}"
        expected[slot].append(frame)
        for member in room.members:
            expected[member].append(frame)
            expected[slot].append(f"join|{room.shown}|{self.names[member]}")
        room.members.append(slot)
        return slot

    def part(self, slot: int, name: str, expected: dict[int, list[str]]) -> None:
        own = self.names.get(slot)
        if own is None:
            expected[slot].append("error|not-logged-in")
            return
        room = self.rooms.get(name_key(name))
        if room is None or slot not in room.members:
            expected[slot].append(f"error|not-in-room|{name}")
            return
        for member in room.members:
            expected[member].append(f"part|{room.shown}|{own}")
        room.members.remove(slot)
        if not room.members:
            del self.rooms[name_key(name)]

    def list_rooms(self, slot: int, expected: dict[int, list[str]]) -> None:
        if slot not in self.names:
            expected[slot].append("error|not-logged-in")
            return
        for room in self.rooms.values():
            expected[slot].append(f"room|{room.shown}|{len(room.members)}")
        expected[slot].append(f"rooms|{len(self.rooms)}")

    def went_offline(self, slot: int, expected: dict[int, list[str]]) -> None:
        name = self.names.pop(slot, None)
        if name is None:
            return
        if self.global_presence:
            told = list(self.names)
        else:  # once to each who shares any room with it
            told = sorted(
                {m for room in self.rooms_of(slot) for m in room.members} - {slot}
            )
        for other in told:
            expected[other].append(f"exit|{name}")
        for key, room in list(self.rooms.items()):
            if slot in room.members:
                room.members.remove(slot)
                if not room.members:
                    del self.rooms[key]

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
        action: Action,
        received: dict[int, list[str]],
        expected: dict[int, list[str]],
        answer_of: int | None,
    ) -> None:
        stamps: set[tuple[int, str]] = set()
        for slot in sorted(set(received) | set(expected)):
            msgs = [
                Msg.parse(line) for line in received.get(slot, []) if line[:4] == "msg|"
            ]
            ids = [self.last_id.get(slot, 0), *(msg.id for msg in msgs)]
            assert ids == sorted(set(ids)), (
                f"slot {slot} saw ids {ids} after {self.history[-1]}:\n"
                f"  steps: {self.history}"
            )
            self.last_id[slot] = ids[-1]
            stamps.update((msg.id, msg.time) for msg in msgs)
            got = [normalize(line) for line in received.get(slot, [])]
            want = list(expected.get(slot, []))
            if slot == answer_of:
                # The acknowledgement first, then the list in any order.
                got[1:] = sorted(got[1:])
                want[1:] = sorted(want[1:])
            if isinstance(action, ListRooms) and slot == action.slot:
                got[:-1] = sorted(got[:-1])
                want[:-1] = sorted(want[:-1])
            assert by_source(got) == by_source(want), (
                f"slot {slot} after {self.history[-1]}:\n"
                f"  got      {got}\n  expected {want}\n"
                f"  steps: {self.history}"
            )
        if isinstance(action, Say):
            # One message: one id and one time in every copy of it.
            assert len(stamps) <= 1, (stamps, self.history)
        assert sorted(self.live.server.hub.names()) == sorted(self.names.values())


async def run_program(presence: str, actions: list[Action]) -> None:
    failure: AssertionError | None = None
    with trio.fail_after(RUN_TIMEOUT):
        # Sessions (protocol.md section 7) are not modelled: a dropped
        # connection goes offline at once.
        async with running_server(
            rate=0, presence=presence, max_rooms=MAX_ROOMS, resume_window=0
        ) as live:
            model = Model(live, presence)
            try:
                for action in actions:
                    await model.step(action)
            except AssertionError as error:
                failure = error
    if failure is not None:
        raise failure


# -- the program's author ------------------------------------------------------


Arrival = tuple[int | None, bool, int]
"""How a new connection starts: the version of its hello (None: none),
whether it asks for echo, and which name it logs in with (see
``ChatPrograms.arrive``; the last choice: it does not log in)."""

ARRIVALS: st.SearchStrategy[Arrival] = st.tuples(
    st.sampled_from([None, 2, 1, 3]),
    st.booleans(),
    st.integers(0, len(NAMES)),
)
OWN_NAMES = ["ann", "bo", "Zo\u00eb", "cy"]
"""Each slot's first choice of name."""


class ChatPrograms(RuleBasedStateMachine):
    """Writes a program of client actions; its teardown runs it."""

    def __init__(self) -> None:
        super().__init__()
        self.presence = PRESENCE[0]
        self.actions: list[Action] = []
        self.connected: set[int] = set()

    def free_slot(self) -> int:
        return min(set(range(SLOTS)) - self.connected)

    def pick(self, data: st.DataObject) -> int:
        return data.draw(st.sampled_from(sorted(self.connected)), label="slot")

    def arrive(self, slot: int, arrival: Arrival) -> None:
        """After connecting: maybe a hello, maybe a login."""
        version, echo, choice = arrival
        if version is not None:
            self.actions.append(Hello(slot, version, echo))
        # The first choice is a name of the slot's own, clashing with no
        # other slot's first choice: the simplest programs log everyone in.
        own = OWN_NAMES[slot]
        names = [own, *(name for name in NAMES if name != own), None]
        name = names[choice]
        if name is not None:
            self.actions.append(LogIn(slot, name))

    @initialize(
        presence=st.sampled_from(PRESENCE),
        arrivals=st.lists(ARRIVALS, min_size=2, max_size=2),
    )
    def two_clients(self, presence: str, arrivals: list[Arrival]) -> None:
        self.presence = presence
        for arrival in arrivals:
            self.connect(arrival)

    @precondition(lambda self: len(self.connected) < SLOTS)
    @rule(arrival=ARRIVALS)
    def connect(self, arrival: Arrival) -> None:
        slot = self.free_slot()
        self.connected.add(slot)
        self.actions.append(Connect(slot))
        self.arrive(slot, arrival)

    @precondition(lambda self: bool(self.connected))
    @rule(
        data=st.data(),
        version=st.sampled_from([1, 2, 2, 3]),
        echo=st.booleans(),
    )
    def hello(self, data: st.DataObject, version: int, echo: bool) -> None:
        self.actions.append(Hello(self.pick(data), version, echo))

    @precondition(lambda self: bool(self.connected))
    @rule(data=st.data(), name=st.sampled_from(NAMES))
    def log_in(self, data: st.DataObject, name: str) -> None:
        self.actions.append(LogIn(self.pick(data), name))

    @precondition(lambda self: bool(self.connected))
    @rule(data=st.data(), to=st.sampled_from(TARGETS), text=texts(max_size=8))
    def say(self, data: st.DataObject, to: str, text: str) -> None:
        self.actions.append(Say(self.pick(data), to, text))

    @precondition(lambda self: bool(self.connected))
    @rule(data=st.data())
    def burst(self, data: st.DataObject) -> None:
        say = st.builds(
            Say,
            st.sampled_from(sorted(self.connected)),
            st.sampled_from(TARGETS),
            texts(max_size=8),
        )
        says = data.draw(st.lists(say, min_size=2, max_size=12), label="says")
        self.actions.append(Burst(tuple(says)))

    @precondition(lambda self: bool(self.connected))
    @rule(data=st.data())
    def join(self, data: st.DataObject) -> None:
        """One to three joins, one step each: rooms fill up."""
        join = st.builds(
            Join, st.sampled_from(sorted(self.connected)), st.sampled_from(ROOMS)
        )
        joins = data.draw(st.lists(join, min_size=1, max_size=3), label="joins")
        self.actions.extend(joins)

    @precondition(lambda self: bool(self.connected))
    @rule(data=st.data(), room=st.sampled_from(ROOMS))
    def part(self, data: st.DataObject, room: str) -> None:
        self.actions.append(Part(self.pick(data), room))

    @precondition(lambda self: bool(self.connected))
    @rule(data=st.data())
    def list_rooms(self, data: st.DataObject) -> None:
        self.actions.append(ListRooms(self.pick(data)))

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
    @rule(data=st.data(), reset=st.booleans(), arrival=ARRIVALS)
    def reconnect(self, data: st.DataObject, reset: bool, arrival: Arrival) -> None:
        slot = self.pick(data)
        self.actions.append(Reconnect(slot, reset))
        self.arrive(slot, arrival)

    def teardown(self) -> None:
        trio.run(run_program, self.presence, self.actions)


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
