"""The library client's accounts and history: logging in with a password,
``register``, ``change_password``, and ``history`` answers assembled into
one ``HistoryPage``; against a scripted fake server, and end to end
against a ChatServer with its store in a temporary file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
from fakeserver import fail_after, fake_server_pair, logged_in

from trichat.client import (
    BadServerFrame,
    Client,
    Event,
    HistoryPage,
    LoginRefused,
    connect,
    open_client,
)
from trichat.protocol.messages import (
    ChangePassword,
    Error,
    ErrorCode,
    Hist,
    History,
    Login,
    Message,
    PasswordChanged,
    Ping,
    Pong,
    Register,
    Registered,
)
from trichat.server.app import ChatServer
from trichat.server.config import ServerConfig
from trichat.server.passwords import Hasher

TIME = "2026-12-03T09:15:02.125Z"
WHEN = datetime(2026, 12, 3, 9, 15, 2, 125000, tzinfo=UTC)
PASSWORD = "correct horse"
# Argon2id at its cheapest: what is tested here is the client.
CHEAP = Hasher(memory_kib=8, time_cost=1, parallelism=1)


async def next_event(client: Client) -> Event:
    return await client.__anext__()


# Logging in with a password (fake server)


@fail_after(5)
async def test_the_login_frame_carries_name_and_password() -> None:
    stream, server = fake_server_pair()
    seen: list[Login | None] = []

    async def take() -> None:
        seen.append(await server.login_request())
        server.connection.logged_in("alice")
        await server.send("login|alice")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take)
        await Client.login(stream, "alice", password=PASSWORD)
    assert seen == [Login("alice", PASSWORD)]
    assert seen[0] is not None
    assert seen[0].password == PASSWORD
    # Never shown in a repr (which ends up in logs and tracebacks).
    assert PASSWORD not in repr(seen[0])


@fail_after(5)
async def test_account_required_then_the_same_stream_logs_in_with_the_password() -> (
    None
):
    stream, server = fake_server_pair()
    logins: list[Login | None] = []

    async def serve() -> None:
        logins.append(await server.login_request())
        await server.send("error|account-required|alice is an account")
        logins.append(await server.login_request())
        server.connection.logged_in("alice")
        await server.send("login|alice", "login|bob")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with pytest.raises(LoginRefused) as refused:
            await Client.login(stream, "alice")
        assert refused.value.error.code is ErrorCode.ACCOUNT_REQUIRED
        client = await Client.login(
            stream, "alice", password=PASSWORD, after=refused.value
        )
    assert logins == [Login("alice"), Login("alice", PASSWORD)]
    assert client.name == "alice"
    assert await next_event(client) == Login("bob")


@pytest.mark.parametrize(
    "code", ["wrong-password", "no-such-account", "rate-limited", "tls-required"]
)
@fail_after(5)
async def test_a_refused_password_is_login_refused_with_its_code(code: str) -> None:
    stream, server = fake_server_pair()

    async def serve() -> None:
        await server.login_request()
        await server.send(f"error|{code}|alice")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with pytest.raises(LoginRefused) as refused:
            await Client.login(stream, "alice", password=PASSWORD)
    assert refused.value.error.code.value == code
    assert PASSWORD not in str(refused.value)


@fail_after(5)
async def test_a_password_no_account_can_have_is_refused_before_sending() -> None:
    stream, server = fake_server_pair()
    with pytest.raises(ValueError, match="a password has") as invalid:
        await Client.login(stream, "alice", password="short")
    assert "short" not in str(invalid.value)
    await stream.aclose()
    assert await server.receive() is None


# register and change_password (fake server)


@fail_after(5)
async def test_register_and_change_password_send_their_frames() -> None:
    client, server = await logged_in("alice")
    await client.register(PASSWORD)
    await server.expect(Register(PASSWORD))
    await client.change_password("a new secret")
    await server.expect(ChangePassword("a new secret"))


@fail_after(5)
async def test_registered_and_password_changed_arrive_as_events() -> None:
    client, server = await logged_in("alice")
    await server.send("registered|alice", "password|alice")
    assert await next_event(client) == Registered("alice")
    assert await next_event(client) == PasswordChanged("alice")


@pytest.mark.parametrize("password", ["short", "x" * 257, "tab\there"])
@fail_after(5)
async def test_a_bad_new_password_is_refused_and_nothing_sent(password: str) -> None:
    client, server = await logged_in("alice")
    with pytest.raises(ValueError, match="a password"):
        await client.register(password)
    with pytest.raises(ValueError, match="a password"):
        await client.change_password(password)
    await client.ping("after")
    await server.expect(Ping("after"))


# history (fake server)


@fail_after(5)
async def test_history_requests_say_latest_before_and_after() -> None:
    client, server = await logged_in("alice")
    await client.history("#lunch", 20)
    await server.expect(History("#lunch", "latest", 20))
    await client.history("#lunch", 50, before=1039)
    await server.expect(History("#lunch", "before", 50, 1039))
    await client.history("bob", 500, after=7)
    await server.expect(History("bob", "after", 500, 7))


@pytest.mark.parametrize(
    ("count", "keywords", "problem"),
    [
        (0, {}, "count"),
        (501, {}, "count"),
        (10, {"before": 5, "after": 3}, "not both"),
    ],
)
@fail_after(5)
async def test_a_bad_history_request_is_refused_and_nothing_sent(
    count: int, keywords: dict[str, int], problem: str
) -> None:
    client, server = await logged_in("alice")
    with pytest.raises(ValueError, match=problem):
        await client.history("#lunch", count, **keywords)
    await client.ping("after")
    await server.expect(Ping("after"))


@fail_after(5)
async def test_a_history_answer_is_one_page() -> None:
    client, server = await logged_in("alice")
    await client.history("#Lunch", 3)
    await server.send(
        f"hist|1039|{TIME}|bob|#lunch|hungry?",
        f"hist|1040|{TIME}|alice|#lunch|always",
        "history|#Lunch|2",
        f"msg|1041|{TIME}|bob|#lunch|pizza?",
    )
    page = await next_event(client)
    assert page == HistoryPage(
        "#Lunch",
        (
            Hist(1039, WHEN, "bob", "#lunch", "hungry?"),
            Hist(1040, WHEN, "alice", "#lunch", "always"),
        ),
        asked=3,
        direction="latest",
    )
    assert isinstance(page, HistoryPage)
    assert page.complete  # two of three: there are no more
    assert (page.oldest, page.newest) == (1039, 1040)
    assert [hist.text for hist in page] == ["hungry?", "always"]
    # The live stream goes on after it; earlier messages do not move last_id.
    assert await next_event(client) == Message(1041, WHEN, "bob", "#lunch", "pizza?")
    assert client.last_id == 1041


@fail_after(5)
async def test_a_full_page_is_not_complete_and_an_empty_one_is() -> None:
    client, server = await logged_in("alice")
    await client.history("*", 2, before=1050)
    await client.history("*", 5, after=1049)
    await server.send(
        f"hist|1039|{TIME}|bob|*|one",
        f"hist|1040|{TIME}|bob|*|two",
        "history|*|2",
        "history|*|0",
    )
    full = await next_event(client)
    assert isinstance(full, HistoryPage)
    assert (len(full), full.asked, full.direction, full.complete) == (
        2,
        2,
        "before",
        False,
    )
    empty = await next_event(client)
    assert isinstance(empty, HistoryPage)
    assert (len(empty), empty.asked, empty.direction, empty.complete) == (
        0,
        5,
        "after",
        True,
    )
    assert (empty.oldest, empty.newest) == (None, None)


@fail_after(5)
async def test_refused_requests_do_not_shift_the_pages_after_them() -> None:
    client, server = await logged_in("alice")
    await client.history("#gone", 10)
    await client.history("bob", 7)
    await client.history("#lunch", 20)
    await server.send(
        "error|not-in-room|#gone",
        "error|no-history|a guest's direct messages are not kept",
        f"hist|1039|{TIME}|bob|#lunch|hungry?",
        "history|#lunch|1",
    )
    assert await next_event(client) == Error(ErrorCode.NOT_IN_ROOM, "#gone")
    assert isinstance(await next_event(client), Error)
    page = await next_event(client)
    assert isinstance(page, HistoryPage)
    assert (page.target, page.asked, len(page)) == ("#lunch", 20, 1)


@fail_after(5)
async def test_an_answer_that_miscounts_its_messages_is_a_bad_frame() -> None:
    client, server = await logged_in("alice")
    await client.history("#lunch", 5)
    await client.history("#lunch", 5)
    await server.send(
        f"hist|1039|{TIME}|bob|#lunch|hungry?",
        "history|#lunch|2",
        f"hist|1040|{TIME}|bob|#lunch|pizza?",
        "history|#lunch|1",
    )
    with pytest.raises(BadServerFrame) as bad:
        await next_event(client)
    assert not bad.value.fatal
    # The next answer is whole again.
    page = await next_event(client)
    assert isinstance(page, HistoryPage)
    assert [hist.id for hist in page] == [1040]


@fail_after(5)
async def test_receive_batch_yields_a_page_too() -> None:
    client, server = await logged_in("alice")
    await client.history("#lunch", 5)
    await server.send(
        f"hist|1039|{TIME}|bob|#lunch|hungry?",
        f"hist|1040|{TIME}|bob|#lunch|pizza?",
        "history|#lunch|2",
        "pong|done",
    )
    events: list[Event] = []
    while Pong("done") not in events:
        events.extend(await client.receive_batch())
    assert [type(event) for event in events] == [HistoryPage, Pong]
    page = events[0]
    assert isinstance(page, HistoryPage)
    assert [hist.text for hist in page] == ["hungry?", "pizza?"]


# End to end, against a server with a store


@asynccontextmanager
async def store_server(db: Path, **config: Any) -> AsyncIterator[int]:
    """A server with its store in *db*, sessions off; its port."""
    config.setdefault("resume_window", 0)
    server = ChatServer(ServerConfig(port=0, db=str(db), **config), hasher=CHEAP)
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(server.serve)
        try:
            yield port
        finally:
            server.shutdown()


async def until(client: Client, kind: type[Any]) -> Any:
    """The next event of *kind*, skipping others (presence, pings)."""
    while True:
        event = await next_event(client)
        if isinstance(event, kind):
            return event
        assert not isinstance(event, Error), event


@fail_after(20)
async def test_register_then_log_in_with_the_password(tmp_path: Path) -> None:
    async with store_server(tmp_path / "t.db") as port:
        async with open_client("alice", port=port) as alice:
            await alice.register(PASSWORD)
            assert await until(alice, Registered) == Registered("alice")
            await alice.exit()
        with pytest.raises(LoginRefused) as refused:
            await connect("alice", port=port)
        assert refused.value.error.code is ErrorCode.ACCOUNT_REQUIRED
        with pytest.raises(LoginRefused) as wrong:
            await connect("alice", port=port, password="not the password")
        assert wrong.value.error.code is ErrorCode.WRONG_PASSWORD
        with pytest.raises(LoginRefused) as unknown:
            await connect("nobody", port=port, password=PASSWORD)
        assert unknown.value.error.code is ErrorCode.NO_SUCH_ACCOUNT
        async with open_client("ALICE", port=port, password=PASSWORD) as again:
            # The account's name as registered.
            assert again.name == "alice"


@fail_after(20)
async def test_change_password_replaces_the_old_one(tmp_path: Path) -> None:
    async with store_server(tmp_path / "t.db") as port:
        async with open_client("alice", port=port) as alice:
            await alice.register(PASSWORD)
            await until(alice, Registered)
            await alice.change_password("battery staple")
            assert await until(alice, PasswordChanged) == PasswordChanged("alice")
            await alice.exit()
        with pytest.raises(LoginRefused) as old:
            await connect("alice", port=port, password=PASSWORD)
        assert old.value.error.code is ErrorCode.WRONG_PASSWORD
        async with open_client("alice", port=port, password="battery staple") as a:
            assert a.name == "alice"


@fail_after(20)
async def test_a_guest_cannot_change_a_password(tmp_path: Path) -> None:
    async with (
        store_server(tmp_path / "t.db") as port,
        open_client("guest", port=port) as guest,
    ):
        await guest.change_password(PASSWORD)
        refused = await next_event(guest)
        assert isinstance(refused, Error)
        assert refused.code is ErrorCode.NO_SUCH_ACCOUNT


@fail_after(20)
async def test_history_pages_tile_a_room(tmp_path: Path) -> None:
    async with (
        store_server(tmp_path / "t.db") as port,
        open_client("alice", port=port) as alice,
    ):
        await alice.join("#lunch")
        sent = [f"message {n}" for n in range(30)]
        await alice.talk_batch("#lunch", sent)
        echoed = [await until(alice, Message) for _ in sent]
        ids = [message.id for message in echoed]

        await alice.history("#lunch", 20)
        latest = await until(alice, HistoryPage)
        assert [hist.text for hist in latest] == sent[10:]
        assert [hist.id for hist in latest] == ids[10:]
        assert not latest.complete

        await alice.history("#lunch", 20, before=latest.oldest)
        earlier = await until(alice, HistoryPage)
        assert [hist.text for hist in earlier] == sent[:10]
        assert earlier.complete
        assert all(hist.sender == "alice" for hist in earlier)

        await alice.history("#lunch", 10, after=ids[24])
        after = await until(alice, HistoryPage)
        assert [hist.id for hist in after] == ids[25:]
        assert after.complete


@fail_after(20)
async def test_history_refusals_arrive_as_errors(tmp_path: Path) -> None:
    async with (
        store_server(tmp_path / "t.db") as port,
        open_client("guest", port=port) as guest,
    ):
        await guest.history("#elsewhere", 10)
        not_in = await next_event(guest)
        assert not_in == Error(ErrorCode.NOT_IN_ROOM, "#elsewhere")
        await guest.history("bob", 10)
        no_history = await next_event(guest)
        assert isinstance(no_history, Error)
        assert no_history.code is ErrorCode.NO_HISTORY
        # And a page asked for after them is whole.
        await guest.join("#here")
        await guest.history("#here", 10)
        page = await until(guest, HistoryPage)
        assert (page.target, len(page), page.asked) == ("#here", 0, 10)


@fail_after(20)
async def test_direct_history_and_offline_delivery_for_an_account(
    tmp_path: Path,
) -> None:
    async with store_server(tmp_path / "t.db") as port:
        async with open_client("alice", port=port) as alice:
            await alice.register(PASSWORD)
            await until(alice, Registered)
            await alice.exit()
        async with open_client("bob", port=port) as bob:
            await bob.talk("alice", "are you there?")
            await bob.ping("sent")
            assert await until(bob, Pong) == Pong("sent")
            async with open_client("alice", port=port, password=PASSWORD) as alice:
                offline = await until(alice, Message)
                assert (offline.sender, offline.to, offline.text) == (
                    "bob",
                    "alice",
                    "are you there?",
                )
                await alice.talk("bob", "here now")
                await alice.history("bob", 10)
                page = await until(alice, HistoryPage)
                assert [(h.sender, h.text) for h in page] == [
                    ("bob", "are you there?"),
                    ("alice", "here now"),
                ]
                assert page.messages[0].id == offline.id
