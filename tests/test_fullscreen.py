"""The full-screen client against a real ChatServer: keys in, screen text
out. The server runs in memory on a MockClock (``clocked_server``), so its
flood limit is real and its seconds cost nothing; the screen is the urwid
view rendered to text, as a terminal of 80 x 24 would show it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio
import trio.testing
from helpers import STEP_TIMEOUT, ClockedServer, clocked_server, running_server

from trichat.client.fullscreen._app import FullScreen
from trichat.client.library import Client, Event
from trichat.protocol.messages import Exit, Message, Pong

SIZE = (80, 24)
FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # one emoji, three people
# Persian "I want", with a zero width non-joiner
PERSIAN = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"


def screen(app: FullScreen, size: tuple[int, int] = SIZE) -> list[str]:
    """The rows of the screen, as the terminal would show them."""
    canvas = app.view.render(size, focus=True)
    return [row.decode().rstrip() for row in canvas.text]


def shown(app: FullScreen) -> str:
    return "\n".join(screen(app))


def press(app: FullScreen, *keys: str) -> None:
    for key in keys:
        app.view.keypress(SIZE, key)


def type_text(app: FullScreen, text: str) -> None:
    press(app, *text)


async def settle() -> None:
    """Let every task (server, clients, the app's) finish what it can."""
    await trio.testing.wait_all_tasks_blocked()


class Chat:
    """A server, full-screen apps and plain library clients."""

    def __init__(self, server: ClockedServer, nursery: trio.Nursery) -> None:
        self.server = server
        self.nursery = nursery
        self.rings: dict[str, int] = {}

    async def app(self, name: str, version: int = 2) -> FullScreen:
        client = await Client.login(
            await self.server.open_stream(), name, version=version
        )
        self.rings[name] = 0

        def ring() -> None:
            self.rings[name] += 1

        app = FullScreen(client, ping_interval=0, on_bell=ring)
        self.nursery.start_soon(app.run)
        await settle()
        return app

    async def client(self, name: str, version: int = 2) -> Client:
        client = await Client.login(
            await self.server.open_stream(), name, version=version
        )
        await settle()
        return client


@asynccontextmanager
async def chat(**config: object) -> AsyncIterator[Chat]:
    # Every test is bounded (in the MockClock's seconds, which pass at once
    # while every task waits).
    with trio.fail_after(120):
        async with (
            clocked_server("memory", **config) as server,
            trio.open_nursery() as nursery,
        ):
            yield Chat(server, nursery)
            nursery.cancel_scope.cancel()


async def drain(client: Client) -> list[Event]:
    """What *client* has been sent so far."""
    await settle()
    events: list[Event] = []
    while True:
        with trio.move_on_after(1) as scope:
            batch = await client.receive_batch()
        if scope.cancelled_caught or not batch:
            return events
        events.extend(batch)


def texts(events: Sequence[Event], sender: str = "alice") -> list[str]:
    """The texts of the messages from *sender* among *events*."""
    return [
        event.text
        for event in events
        if isinstance(event, Message) and event.sender == sender
    ]


async def test_typing_while_messages_arrive_keeps_the_input_visible(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat() as world:
        alice = await world.app("alice")
        bob = await world.client("bob")
        type_text(alice, "half typed")
        for number in range(40):
            await bob.talk("*", f"message {number}")
        await settle()
        rows = screen(alice)
        assert rows[-1] == "*> half typed"
        assert "<bob> message 39" in rows[-3]
        type_text(alice, " and done")
        press(alice, "enter")
        await settle()
        assert texts(await drain(bob))[-1] == "half typed and done"


async def test_enter_goes_to_the_shown_target_whatever_arrives(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat() as world:
        alice = await world.app("alice")
        bob = await world.client("bob")
        carol = await world.client("carol")
        type_text(alice, "/query bob")
        press(alice, "enter")
        assert screen(alice)[-1] == "bob>"
        await carol.talk("alice", "psst, it's carol")
        await carol.talk("*", "hello all")
        await settle()
        # Told where it is, without being taken there.
        assert "* carol (window 3, Alt-3): psst, it's carol" in shown(alice)
        # Nothing that arrived moved alice: her text still goes to bob.
        assert screen(alice)[-1] == "bob>"
        assert "to bob" in screen(alice)[-2]
        type_text(alice, "lunch?")
        press(alice, "enter")
        await settle()
        assert texts(await drain(bob)) == ["lunch?"]
        assert texts(await drain(carol)) == []
        # Her message is shown, confirmed by the server's echo.
        assert "<alice> lunch?" in shown(alice)


async def test_window_switching_and_unread_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat() as world:
        alice = await world.app("alice")
        bob = await world.client("bob")
        await bob.join("#lunch")
        type_text(alice, "/join #lunch")
        press(alice, "enter")
        await settle()
        press(alice, "meta 1")
        for number in range(3):
            await bob.talk("#lunch", f"pizza {number}")
        await bob.talk("alice", "just you")
        await settle()
        bar = screen(alice)[0]
        assert "2:#lunch(3)" in bar
        assert "3:bob(1)" in bar
        assert world.rings["alice"] == 1  # the direct message
        press(alice, "meta 3")
        assert "<bob> just you" in shown(alice)
        assert screen(alice)[-1] == "bob>"
        press(alice, "ctrl p")
        assert screen(alice)[-1] == "#lunch>"
        assert "<bob> pizza 2" in shown(alice)
        assert "(3)" not in screen(alice)[0]
        press(alice, "ctrl n", "ctrl n")
        assert screen(alice)[-1] == "*>"
        type_text(alice, "/win 2")
        press(alice, "enter")
        assert screen(alice)[-1] == "#lunch>"


async def test_completion_of_commands_names_and_rooms(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat() as world:
        alice = await world.app("alice")
        await world.client("carol")
        await world.client("bob")
        type_text(alice, "/jo")
        press(alice, "tab")
        type_text(alice, "#lunch")
        press(alice, "enter")
        await settle()
        assert screen(alice)[-1] == "#lunch>"
        type_text(alice, "/part #lu")
        press(alice, "tab")
        assert screen(alice)[-1] == "#lunch> /part #lunch"
        press(alice, "ctrl u")
        press(alice, "meta 1")
        type_text(alice, "ca")
        press(alice, "tab")
        type_text(alice, "hi")
        assert screen(alice)[-1] == "*> carol: hi"
        press(alice, "ctrl u")
        type_text(alice, "/msg b")
        press(alice, "tab")
        assert screen(alice)[-1] == "*> /msg bob"


async def test_tab_completes_a_room_others_made_from_the_servers_list(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A room alice has never seen: the first Tab asks the server for its
    # rooms, without a word on the screen, and the next completes.
    async with chat() as world:
        alice = await world.app("alice")
        bob = await world.client("bob")
        await bob.join("#lunch")
        await settle()
        type_text(alice, "/join #lu")
        press(alice, "tab")
        await settle()
        assert screen(alice)[-1] == "*> /join #lu"
        press(alice, "tab")
        assert screen(alice)[-1] == "*> /join #lunch"
        assert "rooms:" not in shown(alice)
        press(alice, "ctrl u")
        type_text(alice, "/rooms")
        press(alice, "enter")
        await settle()
        assert "rooms: #lunch (1)" in shown(alice)


async def test_a_paste_is_paced_under_the_servers_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat(rate=2.0, burst=2) as world:
        alice = await world.app("alice")
        bob = await world.client("bob")
        lines = [f"line {number}" for number in range(30)]
        press(alice, "begin paste", *"\n".join(lines), "end paste")
        # The last line stays in the input until Enter, as typed text would.
        assert screen(alice)[-1] == "*> line 29"
        press(alice, "enter")
        started = trio.current_time()
        await trio.sleep(1)
        assert "sending" in screen(alice)[-2]
        received: list[str] = []
        while len(received) < len(lines):
            received.extend(texts(await bob.receive_batch()))
        assert received == lines
        # At the server's 2 a second, 30 lines take most of 15 seconds.
        assert trio.current_time() - started > 12
        await settle()
        # Not one refused by the flood limit, and none shown as failed.
        assert "!" not in shown(alice)
        assert "sending" not in screen(alice)[-2]


async def test_a_long_input_wraps_and_is_sent_whole(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat() as world:
        alice = await world.app("alice")
        bob = await world.client("bob")
        press(alice, "meta 1")
        text = "".join(chr(ord("a") + n % 26) for n in range(300))
        type_text(alice, text)
        rows = screen(alice)
        # 3 + 300 characters on 80 columns: the input grows to 4 rows.
        assert "".join(rows[-4:]) == "*> " + text
        assert rows[0].startswith(" 1:*")
        press(alice, "enter")
        await settle()
        assert texts(await drain(bob)) == [text]
        assert screen(alice)[-1] == "*>"


async def test_unicode_is_shown_as_written_and_controls_escaped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat() as world:
        alice = await world.app("alice")
        bob = await world.client("bob")
        written = f"family {FAMILY} {PERSIAN} soft\u00adhy"
        await bob.talk("*", written)
        await bob.talk("*", "a\tb \u202etxt.exe \u2066x")
        await settle()
        text = shown(alice)
        assert written in text
        assert "a   b \\u202etxt.exe \\u2066x" in text
        assert "\u202e" not in text


async def test_a_mention_rings_and_a_look_alike_is_flagged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat() as world:
        alice = await world.app("alice")
        bob = await world.client("bob")
        await bob.talk("*", "hello everyone")
        await bob.talk("*", "Alice: are you there?")
        await settle()
        assert world.rings["alice"] == 1
        impostor = await world.client("b\u043eb")  # a Cyrillic o
        await settle()
        wide = "\n".join(screen(alice, (120, 24)))
        assert (
            "b\u043eb is online (looks like bob,"
            " but has U+043E CYRILLIC SMALL LETTER O)" in wide
        )
        await impostor.talk("alice", "it's me, bob")
        await settle()
        press(alice, "meta 2")
        assert "<!b\u043eb> it's me, bob" in shown(alice)
        assert "looks like another name" in screen(alice)[-2]


async def test_the_name_with_the_foreign_letters_is_named_whoever_came_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The impostor is online first: when the real bob comes, the note
    # says which of the two hides a letter of another script, not only
    # that they differ (which reads as if bob were the odd one).
    async with chat() as world:
        alice = await world.app("alice")
        await world.client("b\u043eb")
        await world.client("bob")
        wide = "\n".join(screen(alice, (120, 24)))
        assert (
            "bob is online (looks like b\u043eb, which has"
            " U+043E CYRILLIC SMALL LETTER O)" in wide
        )


async def test_history_says_what_it_brought_even_out_of_sight() -> None:
    # Earlier messages merge in id order, above what is in view: the
    # answer to /history says how many it found, and how many are new.
    # (A server with a store, which runs on a real port.)
    async def until(text: str) -> None:
        with trio.fail_after(STEP_TIMEOUT):
            while text not in shown(alice):  # noqa: ASYNC110 (a screen has no event)
                await trio.sleep(0.01)

    async def close_at_the_end(server: ClockedServer) -> None:
        try:
            await trio.sleep_forever()
        finally:
            await server.close_clients()

    async with (
        running_server(db=":memory:") as live,
        trio.open_nursery() as nursery,
    ):
        world = Chat(ClockedServer(live.server, nursery, live.port), nursery)
        nursery.start_soon(close_at_the_end, world.server)
        bob = await world.client("bob")
        await bob.join("#lunch")
        for number in range(25):
            await bob.talk("#lunch", f"said {number}")
        # All 25 routed (and so in history) before alice joins: else some
        # reach her live, and the counts below differ.
        await bob.ping("routed")
        with trio.fail_after(STEP_TIMEOUT):
            async for event in bob:
                if event == Pong("routed"):
                    break
        alice = await world.app("alice")
        type_text(alice, "/join #lunch")
        press(alice, "enter")
        await until("said 24")
        type_text(alice, "/history 25")
        press(alice, "enter")
        await until("25 earlier messages: 5 more in this window (PageUp)")
        type_text(alice, "/history 3")
        press(alice, "enter")
        await until("3 earlier messages, all in this window already")
        nursery.cancel_scope.cancel()


async def test_protocol_1_times_are_marked_as_local(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat() as world:
        alice = await world.app("alice", version=1)
        old = await world.app("old", version=1)
        bob = await world.client("bob")
        await bob.talk("*", "server time is not sent on protocol 1")
        type_text(old, "and my own is not confirmed")
        press(old, "enter")
        await settle()
        # When it arrived here, marked "~": the server did not say.
        line = next(row for row in screen(alice) if "<bob>" in row)
        assert line.startswith("~")
        assert line.endswith("not sent on protocol 1")
        line = next(row for row in screen(alice) if "<old>" in row)
        assert line.startswith("~")
        assert line.endswith("not confirmed")
        assert texts(await drain(bob), "old") == ["and my own is not confirmed"]


async def test_quit_asks_while_pasted_lines_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat(rate=1.0, burst=3) as world:
        alice = await world.app("alice")
        bob = await world.client("bob")
        press(alice, "begin paste", *"one\ntwo\nthree\nfour\n", "end paste")
        type_text(alice, "/quit")
        press(alice, "enter")
        await settle()
        assert "lines are not sent yet" in shown(alice)
        statuses = [alice.status]
        type_text(alice, "/quit")
        press(alice, "enter")
        statuses.append(alice.status)
        assert statuses == [None, 0]
        received = texts(await drain(bob))
        assert len(received) < 4


async def test_a_refused_message_is_marked_not_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat() as world:
        alice = await world.app("alice")
        type_text(alice, "@bbo hi")
        press(alice, "enter")
        await settle()
        assert "not sent to bbo: no such user: bbo" in shown(alice)
        press(alice, "meta 2")
        assert "hi  [no such user: bbo]" in shown(alice)


async def test_the_server_going_away_is_shown_and_quit_says_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat() as world:
        alice = await world.app("alice")
        world.server.server.shutdown()
        await settle()
        rows = screen(alice)
        assert "disconnected" in rows[-2]
        # Said once, with what to do.
        assert shown(alice).count("shutting down") == 1
        assert "the server is stopping (/quit leaves)" in shown(alice)
        type_text(alice, "still typing")
        press(alice, "enter")
        assert "not sent: not connected" in shown(alice)
        type_text(alice, "/quit")
        press(alice, "enter")
        assert alice.status == 1


async def test_lag_is_measured_with_pings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat() as world:
        client = await Client.login(await world.server.open_stream(), "alice")
        app = FullScreen(client, ping_interval=5)
        world.nursery.start_soon(app.run)
        await trio.sleep(1)
        assert " | lag 0 ms" in screen(app)[-2]


async def test_help_lists_the_commands(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat() as world:
        alice = await world.app("alice")
        type_text(alice, "/help")
        press(alice, "enter")
        text = "\n".join(screen(alice, (80, 40)))
        commands = ("/msg", "/join", "/part", "/win", "/register", "/password", "/quit")
        for command in commands:
            assert command in text


async def test_errors_from_the_server_reach_the_screen(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat() as world:
        alice = await world.app("alice")
        type_text(alice, "/part #nowhere")
        press(alice, "enter")
        await settle()
        assert "! not in room: #nowhere" in shown(alice)


async def test_scrolling_back_stays_put_while_messages_arrive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat() as world:
        alice = await world.app("alice")
        bob = await world.client("bob")
        for number in range(60):
            await bob.talk("*", f"message {number}")
        await settle()
        assert "message 59" in screen(alice)[-3]
        press(alice, "page up", "page up")
        rows = screen(alice)
        assert "scrolled back" in rows[-2]
        assert not any("message 59" in row for row in rows)
        before = rows[1:-2]
        await bob.talk("*", "one more")
        await settle()
        # What arrives while scrolled back does not move the pane.
        assert screen(alice)[1:-2] == before
        press(alice, "page down", "page down", "page down")
        rows = screen(alice)
        assert "one more" in rows[-3]
        assert "scrolled back" not in rows[-2]
        # The mouse wheel scrolls too.
        for _ in range(5):
            alice.view.mouse_event(SIZE, "mouse press", 4, 10, 10, True)
        assert "scrolled back" in screen(alice)[-2]
        # A click in the pane leaves the keys to the input line.
        alice.view.mouse_event(SIZE, "mouse press", 1, 10, 10, True)
        type_text(alice, "still here")
        assert screen(alice)[-1] == "*> still here"


async def test_without_global_presence_the_star_window_says_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat(presence="rooms") as world:
        alice = await world.app("alice")
        assert "rooms only" in screen(alice)[-2]
        type_text(alice, "anyone?")
        press(alice, "enter")
        await settle()
        assert "anyone?  [not in room: *]" in shown(alice)


async def test_ctrl_c_leaves_at_once_saying_exit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat(rate=1.0, burst=3) as world:
        alice = await world.app("alice")
        bob = await world.client("bob")
        press(alice, "begin paste", *"".join(f"line {n}\n" for n in range(20)))
        press(alice, "end paste")
        await settle()
        alice.interrupt()
        await settle()
        assert alice.status == 130
        events = await drain(bob)
        # What waited to be sent was not, and alice said goodbye.
        assert len(texts(events)) < 20
        assert Exit("alice") in events
