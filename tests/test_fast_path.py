"""The server's fast path for talk must do exactly what decoding does.

Most lines a server reads are ``talk`` to a user named exactly as they
wrote their name; it relays those as bytes (``printable``,
``plain_talk_run``, ``Hub.relay_run``) instead of decoding each into a
``Talk``. These tests hold the fast path to the decoder: same deliveries,
same errors, same order, for any mix of lines.
"""

from __future__ import annotations

import pytest
import trio
from helpers import running_server
from hypothesis import given
from hypothesis import strategies as st
from strategies import texts

from trichat.protocol._codec import (
    ProtocolError,
    Role,
    decode,
    plain_talk_run,
    printable,
)
from trichat.protocol.connection import Connection
from trichat.protocol.messages import (
    MAX_TEXT,
    ClientMessage,
    Error,
    ErrorCode,
    ServerMessage,
    Talk,
    check_name,
)
from trichat.server.hub import Hub, Outbox, Peer

# Users online in every hub below; "Zoë" is not ASCII, so talk to her always
# takes the decoder.
ONLINE = ("alice", "bob", "Carol", "Zoë")
SENDER = "alice"

_targets = st.sampled_from(
    ["bob", "BOB", "Bob", "Carol", "carol", "Zoë", "zoë", "*", "dave", "b@b", ""]
)
# Lines that break the fast path's rules, or come close: printable ones
# (which the fast path must look at and turn down) ...
_printable_odd_lines = st.sampled_from(
    [
        b"",
        b"talk|bob|",
        b"talk||hi",
        b"talk|bob",
        b"talk|",
        b"talk",
        b"talk|bob|tab\there",
        b"talk|bob|" + b"x" * MAX_TEXT,
        b"talk|bob|" + b"x" * (MAX_TEXT + 1),
        b"talk|*|" + b"x" * (MAX_TEXT + 1),
        b"ping|t1",
        b"exit|bob",
        b"login|bob",
        b"TALK|bob|hi",
    ]
)
# ... and others, which send the whole read through the decoder.
_other_odd_lines = st.sampled_from(
    [
        b"\r",
        b"talk|bob|crlf\r",
        b"talk|bob|\x7fdel",
        b"talk|bob|\x1b[31m",
        b"talk|bob|caf\xc3\xa9",
        b"talk|bob|\xff",
    ]
)


@st.composite
def _talk_lines(draw: st.DrawFn, text: st.SearchStrategy[str]) -> bytes:
    return f"talk|{draw(_targets)}|{draw(text)}".encode()


_ascii = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_printable_talk = _talk_lines(st.text(_ascii, min_size=1, max_size=20))
_any_talk = _talk_lines(texts())
# Reads of printable lines, which the fast path takes in runs, and reads of
# anything at all.
lines_strategy = st.one_of(
    st.lists(st.one_of(_printable_talk, _printable_odd_lines), max_size=40),
    st.lists(
        st.one_of(_printable_talk, _any_talk, _printable_odd_lines, _other_odd_lines),
        max_size=40,
    ),
)


@given(lines_strategy)
def test_a_plain_run_is_talk_the_decoder_accepts_to_a_valid_target(
    lines: list[bytes],
) -> None:
    if not printable(b"\n".join(lines)):
        return
    for start in range(len(lines)):
        end, target = plain_talk_run(lines, start, len(lines))
        assert start <= end <= len(lines)
        for line in lines[start:end]:
            text = line[len(b"talk|") + len(target) + 1 :].decode()
            try:
                message = decode(line, Role.SERVER)
            except ProtocolError:
                # Only the target can be at fault, and the hub takes only
                # targets that are online names or "*".
                with pytest.raises(ValueError, match="name"):
                    check_name(target.decode())
                continue
            assert message == Talk(target.decode(), text)


@pytest.mark.parametrize(
    "data",
    [
        b"talk|bob|hi\n",
        b"talk|bob|tab\tis fine\n",
        b"talk|bob|hi\ntalk|*|all\n",
    ],
)
def test_printable_lines(data: bytes) -> None:
    assert printable(data)


@pytest.mark.parametrize(
    "data",
    [
        b"talk|bob|crlf\r\n",
        b"talk|bob|nul\x00\n",
        b"talk|bob|del\x7f\n",
        b"talk|bob|esc\x1b\n",
        "talk|bob|café\n".encode(),
        b"talk|bob|\x85\n",
    ],
)
def test_not_printable(data: bytes) -> None:
    assert not printable(data)


@pytest.mark.parametrize("byte", range(256))
def test_printable_is_exactly_ascii_from_space_to_tilde_tab_and_lf(byte: int) -> None:
    expected = byte in (0x09, 0x0A) or 0x20 <= byte <= 0x7E
    assert printable(b"talk|bob|" + bytes([byte]) + b"x\n") is expected


def test_a_run_stops_at_a_new_target_and_at_stop() -> None:
    lines = [b"talk|bob|1", b"talk|bob|2", b"talk|carol|3", b"talk|bob|4"]
    assert plain_talk_run(lines, 0, 4) == (2, b"bob")
    assert plain_talk_run(lines, 0, 1) == (1, b"bob")
    assert plain_talk_run(lines, 2, 4) == (3, b"carol")


def test_a_run_does_not_take_a_target_that_is_a_prefix_of_another() -> None:
    lines = [b"talk|bob|1", b"talk|bobby|2"]
    assert plain_talk_run(lines, 0, 2) == (1, b"bob")


def _hub(queue_size: int = 10_000) -> tuple[Hub, dict[str, Peer]]:
    hub = Hub()
    peers = {}
    for name in ONLINE:
        outbox = Outbox(queue_size, queue_size * 8192, due=hub.due)
        peer = Peer(name, outbox, lambda reason: None)
        hub.join(peer)
        peers[name] = peer
    hub.flush_due()
    for peer in peers.values():
        peer.outbox.drain()
    return hub, peers


def _relay(
    hub: Hub,
    sender: Peer,
    lines: list[bytes],
    start: int,
    stop: int,
    congested: list[Outbox],
) -> tuple[int, Error | None]:
    """Find a run and relay it, as the server does; (start, None) when the
    line at *start* is to be decoded."""
    end, target = plain_talk_run(lines, start, stop)
    if end == start:
        return start, None
    return hub.relay_run(sender, target, lines, start, end, congested)


def _decode_and_deliver(hub: Hub, sender: Peer, line: bytes) -> list[Error]:
    """Handle *line* as the server does without the fast path; returns the
    errors the sender gets."""
    if not line or line == b"\r":
        return []
    try:
        message = decode(line.removesuffix(b"\r"), Role.SERVER)
    except ProtocolError as error:
        return [error.reply]
    if isinstance(message, Talk):
        refused = hub.deliver(sender, message, [])
        if refused is not None:
            return [refused]
    return []


def _handle_all(lines: list[bytes], fast: bool) -> tuple[dict[str, bytes], list[Error]]:
    """What every user online receives, and the errors the sender gets,
    when the sender's *lines* arrive in one read; *fast*: the server's way,
    else every line decoded."""
    hub, peers = _hub()
    sender = peers[SENDER]
    plain = fast and printable(b"\n".join(lines))
    got = dict.fromkeys(peers, b"")
    errors: list[Error] = []
    index = 0
    while index < len(lines):
        end = index
        if plain:
            end, error = _relay(hub, sender, lines, index, len(lines), [])
            errors.extend([error] * (end - index) if error else [])
        if end == index:
            errors.extend(_decode_and_deliver(hub, sender, lines[index]))
            end = index + 1
        index = end
        hub.flush_due()
        for name, peer in peers.items():
            got[name] += peer.outbox.drain()
    return got, errors


@given(lines_strategy)
def test_relaying_delivers_what_decoding_does(lines: list[bytes]) -> None:
    async def main() -> None:
        assert _handle_all(lines, fast=True) == _handle_all(lines, fast=False)

    trio.run(main)


@pytest.mark.parametrize("queue_size", [2, 3, 4, 7])
def test_a_run_stops_where_the_recipient_becomes_congested(queue_size: int) -> None:
    async def main() -> None:
        hub, peers = _hub(queue_size)
        lines = [b"talk|bob|%d" % i for i in range(20)]
        congested: list[Outbox] = []
        end, error = _relay(hub, peers[SENDER], lines, 0, 20, congested)
        assert error is None
        # As many as one at a time would take before the sender must wait.
        assert end == queue_size // 2 + 1
        assert congested == [peers["bob"].outbox]
        hub.flush_due()
        assert peers["bob"].outbox.drain() == b"".join(
            b"talk|alice|bob|%d\n" % i for i in range(end)
        )

    trio.run(main)


def test_a_broadcast_run_stops_where_any_recipient_becomes_congested() -> None:
    async def main() -> None:
        hub, peers = _hub(100)
        carol = peers["Carol"].outbox
        for _ in range(48):
            assert carol.put(b"talk|bob|Carol|filler\n")
        lines = [b"talk|*|%d" % i for i in range(20)]
        congested: list[Outbox] = []
        end, error = _relay(hub, peers[SENDER], lines, 0, 20, congested)
        assert (end, error) == (3, None)
        assert congested == [carol]

    trio.run(main)


def test_a_run_stops_where_the_recipient_congests_by_bytes() -> None:
    async def main() -> None:
        hub = Hub()
        alice = Peer("alice", Outbox(1000, 1000, due=hub.due), lambda reason: None)
        bob = Peer("bob", Outbox(1000, 1000, due=hub.due), lambda reason: None)
        hub.join(alice)
        hub.join(bob)
        hub.flush_due()
        alice.outbox.drain()
        bob.outbox.drain()
        text = b"x" * 90  # 110-byte deliveries
        lines = [b"talk|bob|" + text] * 9
        end, error = _relay(hub, alice, lines, 0, 9, [])
        # 500 bytes is half: the fifth delivery crosses it.
        assert (end, error) == (5, None)
        assert bob.outbox.congested

    trio.run(main)


def test_a_recipient_too_slow_for_a_run_is_dropped_and_the_sender_told() -> None:
    async def main() -> None:
        hub = Hub()
        kicked: list[str] = []
        alice = Peer("alice", Outbox(100, 100_000, due=hub.due), lambda reason: None)
        bob = Peer("bob", Outbox(4, 100_000, due=hub.due), kicked.append)
        hub.join(alice)
        hub.join(bob)
        bob.outbox.stalled = True  # its writer made no progress for long
        for _ in range(4 - bob.outbox.queued_frames):
            bob.outbox.put(b"talk|x|bob|filler\n")
        lines = [b"talk|bob|hi"] * 3
        end, error = _relay(hub, alice, lines, 0, 3, [])
        assert end == 1
        assert error == Error(ErrorCode.NO_SUCH_USER, "bob")
        assert kicked == ["too slow: outgoing queue full"]

    trio.run(main)


async def test_plain_talk_is_relayed_without_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The fast path is what makes the server fast: a change that sent every
    # line through the decoder again would still pass every other test.
    decoded: list[bytes] = []
    original = Connection.decode_line

    def counting(self: Connection, line: bytes) -> ClientMessage | ServerMessage:
        decoded.append(line)
        return original(self, line)

    monkeypatch.setattr(Connection, "decode_line", counting)
    async with running_server(rate=0) as live:
        alice = await live.login("alice")
        bob = await live.login("bob")
        await alice.expect("login|bob")
        await bob.expect("login|alice")
        decoded.clear()
        await alice.send_raw(b"".join(b"talk|bob|%d\n" % i for i in range(100)))
        await alice.send_raw(b"talk|*|all\ntalk|BOB|other case\n")
        await bob.expect(*[f"talk|alice|bob|{i}" for i in range(100)])
        await bob.expect("talk|alice|*|all", "talk|alice|bob|other case")
        # Only the line whose target is not written as bob wrote it.
        assert decoded == [b"talk|BOB|other case"]
