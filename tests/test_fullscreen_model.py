"""The full-screen client's model and text rules, without urwid or a server:
windows and targets, completion, history, pacing, escaping, look-alikes;
a connection that drops and comes back; the answers to /register and
/password."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from trichat.client.fullscreen._model import (
    ChatModel,
    Completer,
    Entry,
    EntryKind,
    EntryState,
    History,
    Link,
    Pacer,
    edit_line,
    split_text,
)
from trichat.client.fullscreen._text import (
    colour_index,
    confusables,
    display_text,
    mentions,
    skeleton,
)

NOW = datetime(2026, 12, 3, 9, 15, 2, tzinfo=UTC)


def model(
    name: str = "alice", *, online: tuple[str, ...] = ("bob", "carol")
) -> ChatModel:
    return ChatModel(name, version=2, echo=True, online=online, clock=lambda: NOW)


def texts(window_entries: list[Entry]) -> list[str]:
    return [entry.text for entry in window_entries]


# -- what the screen shows --------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "👨\u200d👩\u200d👧 family",  # ZWJ sequence
        # Persian "I want", with a zero width non-joiner
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
        "hy\u00adphen",  # soft hyphen
        "🏳️\u200d🌈 and 🇫🇷",  # variation selector, ZWJ, regional indicators
        "café, naïve, ﬁ",  # marks and a ligature, as written
    ],
)
def test_legitimate_unicode_is_shown_as_written(text: str) -> None:
    assert display_text(text) == text


def test_tab_is_shown_as_spaces_to_the_next_stop() -> None:
    assert display_text("a\tb") == "a   b"
    assert display_text("abcd\te") == "abcd    e"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[2J", "\\x1b[2J"),  # an escape sequence
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),  # right-to-left override
        ("\u2066isolate\u2069", "\\u2066isolate\\u2069"),
        ("mark\u200f", "mark\\u200f"),
        ("one\u2028two", "one\\u2028two"),  # line separator
        ("bell\x07", "bell\\x07"),
        ("c1\x9b", "c1\\x9b"),
    ],
)
def test_controls_bidi_and_separators_are_escaped(text: str, shown: str) -> None:
    assert display_text(text) == shown


def test_look_alike_names_share_a_skeleton() -> None:
    assert skeleton("bob") == skeleton("b\u043eb")  # Cyrillic o
    assert skeleton("alice") == skeleton("\u0430lice")  # Cyrillic a
    assert skeleton("paypal") == skeleton("\u03c1aypal")  # Greek rho
    assert skeleton("carol") != skeleton("karol")
    found = confusables(["bob", "b\u043eb", "carol", "Carol"])
    assert found == {"bob": ["b\u043eb"], "b\u043eb": ["bob"]}


def test_names_that_clash_are_not_look_alikes_and_get_one_colour() -> None:
    assert confusables(["bob", "BOB"]) == {}
    assert colour_index("Zoë") == colour_index("ZOË")


@pytest.mark.parametrize(
    ("text", "mentioned"),
    [
        ("alice: lunch?", True),
        ("ask ALICE", True),
        ("@alice hi", True),
        ("malice aforethought", False),
        ("alice_b is here", False),
        ("alices", False),
    ],
)
def test_mentions_are_the_name_as_a_word(text: str, mentioned: bool) -> None:
    assert mentions(text, "alice") is mentioned


# -- editing, history, completion -------------------------------------------------


def test_editing_keys() -> None:
    line = "hello big world"
    assert edit_line("ctrl a", line, 7) == (line, 0)
    assert edit_line("ctrl e", line, 7) == (line, len(line))
    assert edit_line("ctrl w", line, 10) == ("hello world", 6)
    assert edit_line("ctrl u", line, 6) == ("big world", 0)
    assert edit_line("ctrl k", line, 5) == ("hello", 5)
    assert edit_line("x", line, 5) is None


def test_history_recalls_lines_and_keeps_the_draft() -> None:
    history = History()
    history.add("first")
    history.add("second")
    assert history.previous("draft") == "second"
    assert history.previous("second") == "first"
    assert history.previous("first") is None
    assert history.next() == "second"
    assert history.next() == "draft"
    assert history.next() is None


def test_completion_cycles_through_the_candidates() -> None:
    completer = Completer()
    names = ["carl", "carol"]
    first = completer.complete("hi ca", 5, lambda word, first: names)
    assert first == ("hi carl ", 8)
    second = completer.complete(*first, lambda word, first: names)
    assert second == ("hi carol ", 9)
    assert completer.complete(*second, lambda word, first: names) == first


def test_completion_of_names_rooms_and_commands() -> None:
    chat = model(online=("bob", "carol", "Carla"))
    chat.joined("#lunch", "alice")
    assert chat.candidates("/jo", True) == ["/join"]
    assert chat.candidates("#l", False) == ["#lunch"]
    assert chat.candidates("car", False) == ["Carla", "carol"]
    assert chat.candidates("@b", True) == ["@bob"]
    # Starting a line in a room or *: addressed, IRC style; not to a peer.
    assert chat.candidates("b", True) == ["bob:"]
    chat.show(chat.window_for("carol"))
    assert chat.candidates("b", True) == ["bob"]


# -- windows and targets ----------------------------------------------------------


def test_incoming_messages_never_change_the_current_window() -> None:
    chat = model()
    chat.show(chat.window_for("bob"))
    chat.delivered("carol", "alice", "psst", id=1, time=NOW)
    chat.delivered("carol", "*", "hello all", id=2, time=NOW)
    assert chat.current.target == "bob"
    carol = chat.find_window("carol")
    assert carol is not None
    assert (carol.unread, carol.alert) == (1, True)
    assert (chat.windows[0].unread, chat.windows[0].alert) == (1, False)
    assert chat.submit("see you")
    assert [(item.target, item.text) for item in chat.outbox] == [("bob", "see you")]


def test_at_name_sends_a_direct_message_without_switching() -> None:
    chat = model()
    assert chat.submit("@bob psst")
    assert chat.current is chat.windows[0]
    assert [(item.target, item.text) for item in chat.outbox] == [("bob", "psst")]
    bob = chat.find_window("bob")
    assert bob is not None
    assert texts(bob.entries) == ["psst"]


def test_window_commands() -> None:
    chat = model()
    chat.window_for("bob")
    chat.window_for("carol")
    assert chat.submit("/win 3")
    assert chat.current.target == "carol"
    chat.show_next()
    assert chat.current.target == "*"
    chat.show_next(-1)
    assert chat.current.target == "carol"
    assert chat.submit("/win bob")
    assert chat.current.target == "bob"
    assert chat.submit("/close")
    assert [window.target for window in chat.windows] == ["*", "carol"]
    assert chat.submit("/win 7")
    assert chat.current.entries[-1].kind is EntryKind.ERROR


def test_own_message_is_pending_until_its_echo() -> None:
    chat = model()
    chat.show(chat.window_for("bob"))
    chat.submit("hi")
    item = chat.outbox[0]
    chat.take_outgoing()
    chat.sent(item)
    entry = item.entry
    assert entry is not None
    before = entry.state
    chat.delivered("alice", "bob", "hi", id=7, time=NOW)
    assert (before, entry.state) == (EntryState.PENDING, EntryState.DONE)
    assert (entry.id, entry.server_time) == (7, True)
    assert len(chat.current.entries) == 1


def test_a_refusal_marks_the_message_it_refuses() -> None:
    chat = model()
    chat.submit("@bbo hi")
    item = chat.take_outgoing()
    chat.sent(item)
    chat.refused("no-such-user", "bbo", "no such user: bbo")
    assert item.entry is not None
    assert item.entry.state is EntryState.FAILED
    assert "no such user" in item.entry.note


def test_a_room_join_lists_who_is_there() -> None:
    chat = model()
    chat.joined("#lunch", "alice")
    chat.joined("#lunch", "bob")
    chat.end_of_batch()
    chat.joined("#lunch", "carol")
    room = chat.find_window("#lunch")
    assert room is not None
    assert texts(room.entries) == [
        "you joined #lunch; here: bob",
        "carol joined #lunch",
    ]
    assert sorted(room.members) == ["alice", "bob", "carol"]


def test_history_merges_by_id_without_duplicates() -> None:
    chat = model()
    window = chat.windows[0]

    def message(id: int) -> Entry:
        return Entry(EntryKind.MESSAGE, f"m{id}", NOW, sender="bob", id=id)

    chat.add(window, message(5))
    chat.add(window, message(9))
    assert chat.insert_history(window, [message(3), message(5), message(7)]) == 2
    assert texts(window.entries) == ["m3", "m5", "m7", "m9"]


def test_quit_asks_first_while_lines_wait() -> None:
    chat = model()
    chat.paste("one\ntwo\n")
    assert chat.submit("/quit")  # asked, not left
    assert "2 pasted lines are not sent yet" in chat.current.entries[-1].text
    assert not chat.submit("/quit")


def test_quit_does_not_ask_for_what_was_typed() -> None:
    chat = model()
    chat.submit("typed, not yet sent")
    # Sent on the way out: nothing to ask.
    assert not chat.submit("/quit")
    assert [item.text for item in chat.outbox] == ["typed, not yet sent"]


def test_a_lost_connection_marks_what_was_not_sent() -> None:
    chat = model()
    chat.paste("one\ntwo\n")
    chat.lost("connection lost")
    assert chat.link is Link.DISCONNECTED
    states = [entry.state for entry in chat.windows[0].entries if entry.own]
    assert states == [EntryState.FAILED, EntryState.FAILED]
    assert not chat.submit("/quit")


def test_a_paste_is_text_even_where_it_looks_like_a_command() -> None:
    chat = model()
    rest = chat.paste("/quit\n\n  \n@bob x\nunfinished")
    assert rest == "unfinished"
    assert [(item.target, item.text) for item in chat.outbox] == [
        ("*", "/quit"),
        ("*", "@bob x"),
    ]


# -- pacing and long lines --------------------------------------------------------


def test_the_pacer_keeps_under_the_rate_after_a_burst() -> None:
    pacer = Pacer(rate=2, burst=3)
    now = 0.0
    sent: list[float] = []
    while len(sent) < 9:
        delay = pacer.delay(now)
        if delay:
            now += delay
            continue
        pacer.spend(now)
        sent.append(now)
    assert sent[:3] == [0, 0, 0]
    assert sent[-1] == pytest.approx(3.0)  # 6 more at 2 a second
    # Pacing under a server's limit leaves room for pings and pongs.
    under = Pacer.under(rate=100, burst=200)
    assert (under.rate, under.burst, under.delay(0)) == (80, 100, 0)
    assert Pacer.under(rate=2, burst=2).delay(0) == 1 / 1.6


def test_split_text_keeps_pieces_under_both_limits() -> None:
    text = "word " * 50
    pieces = split_text(text, max_chars=40)
    assert all(len(piece) <= 40 for piece in pieces)
    assert "".join(pieces) == text
    wide = "字" * 30
    pieces = split_text(wide, max_chars=100, max_bytes=40)
    assert all(len(piece.encode()) <= 40 for piece in pieces)
    assert "".join(pieces) == wide


# -- a connection that drops and comes back ---------------------------------------


def link(chat: ChatModel) -> Link:
    return chat.link


def asking(chat: ChatModel) -> bool:
    """Whether a password is being asked for."""
    return chat.password_entry is not None


def sent_to_bob(chat: ChatModel, text: str) -> Entry:
    """*text* said in bob's window and written (awaiting its echo)."""
    chat.show(chat.window_for("bob"))
    chat.submit(text)
    item = chat.take_outgoing()
    chat.sent(item)
    assert item.entry is not None
    return item.entry


def test_own_messages_unconfirmed_at_a_drop_are_settled_by_the_resume() -> None:
    chat = model()
    echoed = sent_to_bob(chat, "this one got through")
    lost = sent_to_bob(chat, "this one did not")
    chat.dropped("connection reset")
    assert link(chat) is Link.AWAY
    assert lost.note == "not confirmed yet: the connection dropped"
    chat.resumed(2)
    assert link(chat) is Link.CONNECTED
    assert texts(chat.current.entries)[-1] == "back: 2 messages missed while away"
    chat.delivered("carol", "*", "while away", id=7, time=NOW)
    # The missed may still hold it.
    assert (lost.state, lost.note) == (
        EntryState.PENDING,
        "not confirmed yet: the connection dropped",
    )
    chat.delivered("alice", "bob", "this one got through", id=8, time=NOW)
    assert (echoed.state, echoed.note) == (EntryState.DONE, "")
    # Everything missed has come: the other never reached the server,
    # and the reconnecting client has sent it again (not the outbox).
    assert (lost.state, lost.note) == (
        EntryState.PENDING,
        "sent again: the server never got it",
    )
    assert not chat.outbox
    chat.delivered("alice", "bob", "this one did not", id=9, time=NOW)
    assert (lost.state, lost.note) == (EntryState.DONE, "")


def test_what_is_said_while_away_waits_in_the_outbox() -> None:
    chat = model()
    chat.dropped("connection reset")
    chat.show(chat.window_for("bob"))
    chat.submit("later")
    assert [item.text for item in chat.outbox] == ["later"]
    entry = chat.outbox[0].entry
    assert entry is not None
    assert entry.note == "waiting for the connection"
    # Taken, but the connection was gone: it goes first once back.
    chat.submit("after it")
    item = chat.take_outgoing()
    chat.put_back(item)
    assert [item.text for item in chat.outbox] == ["later", "after it"]
    chat.resumed(0)
    chat.sent(chat.take_outgoing())
    assert entry.note == ""


def test_a_session_not_kept_marks_each_gap_in_its_window() -> None:
    chat = model()
    chat.joined("#lunch", "alice")
    chat.outbox.clear()
    chat.dropped("connection reset")
    chat.resume_failed("the session has ended", 3, ["#lunch", "*"], True)
    gap = "messages sent here while you were away may be missing"
    assert any(gap in text for text in texts(chat.window_for("#lunch").entries))
    assert any(gap in text for text in texts(chat.window_for("*").entries))
    shown = " ".join(texts(chat.current.entries))
    assert "3 messages found in the server's history" in shown
    assert "direct messages sent to you while you were away may be missing" in shown


def test_the_answers_to_register_and_password_are_said_as_such() -> None:
    chat = model()
    chat.command("/register")
    assert asking(chat)
    chat.password_entered("long enough")
    chat.password_entered("long enough")
    assert not asking(chat)
    assert [(item.kind, item.secret) for item in chat.outbox] == [
        ("register", "long enough")
    ]
    assert "long enough" not in repr(chat.outbox[0])
    chat.sent(chat.take_outgoing())
    chat.refused("tls-required", "passwords go over TLS only", "tls required: ...")
    assert texts(chat.current.entries)[-1] == (
        "/register refused: tls required: ...; nothing changed"
    )
    # Not a refusal of a message waiting for its echo.
    hi = sent_to_bob(chat, "hi")
    chat.command("/password")
    chat.password_entered("long enough")
    chat.password_entered("long enough")
    chat.sent(chat.take_outgoing())
    chat.password_changed("alice")
    assert texts(chat.current.entries)[-1] == "the password of alice is changed"
    chat.refused("rate-limited", "slow down", "rate limited: slow down")
    assert (hi.state, hi.note) == (EntryState.FAILED, "rate limited: slow down")


def test_a_drop_cancels_a_password_being_typed_and_forgets_the_unanswered() -> None:
    chat = model()
    chat.command("/password")
    chat.dropped("connection reset")
    assert not asking(chat)
    chat.command("/register")
    assert not asking(chat)
    assert texts(chat.current.entries)[-1] == (
        "not connected just now: try again once back"
    )


def test_a_message_being_written_at_a_drop_is_not_taken_for_lost() -> None:
    # The reconnecting client sends it again over the new connection.
    chat = model()
    chat.show(chat.window_for("bob"))
    chat.submit("in flight")
    item = chat.take_outgoing()
    chat.dropped("connection reset")
    chat.resumed(0)
    chat.sent(item)
    assert item.entry is not None
    assert item.entry.state is EntryState.PENDING
    chat.delivered("alice", "bob", "in flight", id=3, time=NOW)
    assert (item.entry.state, item.entry.note) == (EntryState.DONE, "")
    assert texts(chat.current.entries).count("in flight") == 1


def test_a_message_kept_while_offline_does_not_make_its_sender_online() -> None:
    chat = model(online=())
    earlier = datetime(2026, 1, 1, tzinfo=UTC)
    chat.delivered("dave", "alice", "while you were out", id=3, time=earlier)
    chat.who()
    assert texts(chat.current.entries)[-1] == "nobody else is online"
    dave = chat.find_window("dave")
    assert dave is not None
    chat.show(dave)
    chat.who()
    assert texts(dave.entries)[-1] == "dave is not online (as far as this client knows)"
    assert chat.candidates("@d", True) == ["@dave"]
