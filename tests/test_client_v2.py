"""The library client's protocol-2 events and rooms, against a scripted
fake server: messages with ids and times, joins and parts and the rooms
they make up, and room lists."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import trio
from fakeserver import FakeServer, fail_after, logged_in

from trichat.client import BadServerFrame, Client, RoomList
from trichat.protocol.messages import (
    Delivery,
    Exit,
    Join,
    Joined,
    ListRooms,
    Login,
    Message,
    Part,
    Parted,
    RoomInfo,
    Talk,
)

TIME = "2026-12-03T09:15:02.125Z"
WHEN = datetime(2026, 12, 3, 9, 15, 2, 125000, tzinfo=UTC)


async def next_event(client: Client) -> object:
    return await client.__anext__()


async def events_until_closed(client: Client, server: FakeServer) -> list[object]:
    """Every event the client yields once the server closes after what it sent."""
    await server.stream.aclose()
    return [event async for event in client]


# Messages


@fail_after(5)
async def test_messages_carry_their_id_and_time() -> None:
    client, server = await logged_in("alice")
    await server.send(
        f"msg|1041|{TIME}|bob|alice|hi | there",
        f"msg|1042|{TIME}|bob|#lunch|pizza?",
        f"msg|1043|{TIME}|carol|*|all",
    )
    direct = await next_event(client)
    assert direct == Message(1041, WHEN, "bob", "alice", "hi | there")
    assert client.last_id == 1041
    assert await next_event(client) == Message(1042, WHEN, "bob", "#lunch", "pizza?")
    assert await next_event(client) == Message(1043, WHEN, "carol", "*", "all")
    assert client.last_id == 1043


@fail_after(5)
async def test_last_id_is_the_highest_id_received() -> None:
    client, server = await logged_in("alice")
    assert client.last_id == 0
    # Protocol-1 deliveries have no id.
    await server.send("talk|bob|alice|old style")
    await next_event(client)
    assert client.last_id == 0
    await server.send(f"msg|7|{TIME}|bob|alice|a", f"msg|5|{TIME}|bob|alice|b")
    await next_event(client)
    await next_event(client)
    assert client.last_id == 7
    await server.send(f"msg|99999999999999999999|{TIME}|bob|alice|c")
    assert await client.receive_batch() == [
        Message(10**20 - 1, WHEN, "bob", "alice", "c")
    ]
    assert client.last_id == 10**20 - 1


@fail_after(5)
async def test_the_echo_of_an_own_message() -> None:
    client, server = await logged_in("alice")
    assert client.echo
    await client.talk("bob", "hi")
    await server.expect(Talk("bob", "hi"))
    await server.send(f"msg|12|{TIME}|alice|bob|hi", f"msg|13|{TIME}|bob|alice|yo")
    echo = await next_event(client)
    answer = await next_event(client)
    assert isinstance(echo, Message)
    assert isinstance(answer, Message)
    assert client.is_own(echo)
    assert not client.is_own(answer)
    # Both belong to the conversation with bob.
    assert client.conversation(echo) == client.conversation(answer) == "bob"
    assert client.last_id == 13


@pytest.mark.parametrize(
    ("sender", "to", "conversation"),
    [
        ("bob", "alice", "bob"),
        ("ALICE", "bob", "bob"),
        ("bob", "#lunch", "#lunch"),
        ("alice", "#lunch", "#lunch"),
        ("bob", "*", "*"),
        ("alice", "*", "*"),
    ],
)
@fail_after(5)
async def test_the_conversation_a_message_belongs_to(
    sender: str, to: str, conversation: str
) -> None:
    client, _server = await logged_in("alice")
    assert client.conversation(Message(1, WHEN, sender, to, "x")) == conversation
    assert client.conversation(Delivery(sender, to, "x")) == conversation


# Sending


@fail_after(5)
async def test_what_the_room_requests_send() -> None:
    client, server = await logged_in("alice")
    await client.join("#lunch")
    await client.talk("#lunch", "pizza?")
    await client.talk("*", "everyone")
    await client.list_rooms()
    await client.part("#Lunch")
    await server.expect(Join("#lunch"))
    await server.expect(Talk("#lunch", "pizza?"))
    await server.expect(Talk("*", "everyone"))
    await server.expect(ListRooms())
    await server.expect(Part("#Lunch"))


@pytest.mark.parametrize("room", ["lunch", "#", "#no spaces", "*", "#" + "x" * 33])
@fail_after(5)
async def test_a_room_name_the_protocol_refuses_is_not_sent(room: str) -> None:
    client, server = await logged_in("alice")
    with pytest.raises(ValueError, match="room name"):
        await client.join(room)
    with pytest.raises(ValueError, match="room name"):
        await client.part(room)
    await client.aclose()
    await server.expect_closed()


# Rooms


@fail_after(5)
async def test_the_rooms_follow_joins_and_parts() -> None:
    client, server = await logged_in("alice")
    assert client.rooms == {}
    await client.join("#Lunch")
    # The joiner's own join first, then one per member already there.
    await server.send("join|#Lunch|alice", "join|#Lunch|bob", "join|#Lunch|carol")
    assert await next_event(client) == Joined("#Lunch", "alice")
    assert client.rooms == {"#Lunch": ("alice",)}
    await next_event(client)
    await next_event(client)
    assert client.rooms == {"#Lunch": ("alice", "bob", "carol")}
    # Rooms and names are compared as the protocol compares names.
    assert client.members("#lunch") == ("alice", "bob", "carol")
    await server.send(
        "join|#ops|alice",
        "join|#lunch|dave",
        "part|#LUNCH|BOB",
        "part|#ops|nobody",
    )
    for _ in range(4):
        await next_event(client)
    assert client.rooms == {
        "#Lunch": ("alice", "carol", "dave"),
        "#ops": ("alice",),
    }
    await server.send("part|#lunch|alice")
    assert await next_event(client) == Parted("#lunch", "alice")
    assert client.rooms == {"#ops": ("alice",)}
    assert client.members("#lunch") == ()


@fail_after(5)
async def test_an_exit_takes_a_user_out_of_every_room() -> None:
    client, server = await logged_in("alice", online=["bob"])
    await server.send(
        "join|#a|alice", "join|#a|bob", "join|#b|alice", "join|#b|bob", "exit|Bob"
    )
    events = await events_until_closed(client, server)
    assert events[-1] == Exit("Bob")
    assert client.rooms == {"#a": ("alice",), "#b": ("alice",)}
    assert client.online == ()


@fail_after(5)
async def test_joins_and_parts_of_rooms_the_client_is_not_in_are_yielded() -> None:
    client, server = await logged_in("alice")
    await server.send("join|#other|bob", "part|#other|bob", "part|#ops|alice")
    assert await events_until_closed(client, server) == [
        Joined("#other", "bob"),
        Parted("#other", "bob"),
        Parted("#ops", "alice"),
    ]
    assert client.rooms == {}


@fail_after(5)
async def test_the_rooms_dict_is_a_copy() -> None:
    client, server = await logged_in("alice")
    await server.send("join|#a|alice")
    await next_event(client)
    client.rooms["#a"] = ()
    del client.rooms["#a"]
    assert client.rooms == {"#a": ("alice",)}


@fail_after(5)
async def test_receive_batch_keeps_the_rooms() -> None:
    client, server = await logged_in("alice")
    await server.send(
        "join|#a|alice", "join|#a|bob", f"msg|3|{TIME}|bob|#a|hi", "part|#a|bob"
    )
    assert await client.receive_batch() == [
        Joined("#a", "alice"),
        Joined("#a", "bob"),
        Message(3, WHEN, "bob", "#a", "hi"),
        Parted("#a", "bob"),
    ]
    assert client.rooms == {"#a": ("alice",)}
    assert client.last_id == 3


# Room lists


@fail_after(5)
async def test_a_rooms_answer_is_one_room_list() -> None:
    client, server = await logged_in("alice")
    await client.list_rooms()
    await server.send("room|#lunch|3", "room|#ops|1", "rooms|2", "rooms|0")
    listing = await next_event(client)
    assert listing == RoomList((RoomInfo("#lunch", 3), RoomInfo("#ops", 1)))
    assert isinstance(listing, RoomList)
    assert len(listing) == 2
    assert [(info.room, info.members) for info in listing] == [
        ("#lunch", 3),
        ("#ops", 1),
    ]
    assert (listing.members("#LUNCH"), listing.members("#nowhere")) == (3, 0)
    # No rooms: an empty list.
    empty = await next_event(client)
    assert empty == RoomList(())
    assert isinstance(empty, RoomList)
    assert len(empty) == 0
    assert list(empty) == []


@fail_after(5)
async def test_a_rooms_answer_split_between_reads() -> None:
    client, server = await logged_in("alice")
    await server.send("room|#lunch|3", "room|#ops|1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.send, "room|#tea|2", "rooms|3", "login|bob")
        assert await client.receive_batch() == [
            RoomList((RoomInfo("#lunch", 3), RoomInfo("#ops", 1), RoomInfo("#tea", 2))),
            Login("bob"),
        ]


@fail_after(5)
async def test_a_rooms_answer_that_miscounts_is_a_bad_frame() -> None:
    client, server = await logged_in("alice")
    await server.send("room|#lunch|3", "rooms|2", "login|bob", "room|#a|1", "rooms|1")
    with pytest.raises(BadServerFrame, match=r"rooms\|2 ended an answer that listed 1"):
        await next_event(client)
    # Reading goes on, with the next answer whole.
    assert await next_event(client) == Login("bob")
    assert await next_event(client) == RoomList((RoomInfo("#a", 1),))


@fail_after(5)
async def test_receive_batch_returns_the_events_before_a_miscounted_answer() -> None:
    client, server = await logged_in("alice")
    await server.send("login|bob", "rooms|1", "login|carol")
    assert await client.receive_batch() == [Login("bob")]
    with pytest.raises(BadServerFrame, match="listed 0") as bad:
        await client.receive_batch()
    assert not bad.value.fatal
    assert await client.receive_batch() == [Login("carol")]


# What this client does not know


@fail_after(5)
async def test_frames_of_kinds_this_client_does_not_know_are_skipped() -> None:
    # Frames of later parts of protocol 2, and of versions to come.
    client, server = await logged_in("alice")
    await server.send(
        "session|q3V8mJx0r6c2kPZ9wYtL1A|120",
        f"msg|1041|{TIME}|bob|#lunch|pizza?",
        "resumed|alice|0",
        "typing|#lunch|bob",
    )
    assert await events_until_closed(client, server) == [
        Message(1041, WHEN, "bob", "#lunch", "pizza?")
    ]


@fail_after(5)
async def test_a_hello_answer_after_login_is_not_an_event() -> None:
    client, server = await logged_in("alice")
    await server.send("hello|2|max-line=10", "login|bob")
    assert await events_until_closed(client, server) == [Login("bob")]
    # The limits stay those of the answer read at login.
    assert client.max_frame == 4096
