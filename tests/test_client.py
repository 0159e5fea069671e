"""The library client against a scripted fake server."""

from __future__ import annotations

import ssl

import pytest
import trio
import trio.testing
import trustme
from fakeserver import (
    OLD_SERVER,
    SETTINGS,
    FakeServer,
    ResetStream,
    fail_after,
    fake_server_pair,
    free_port,
    logged_in,
    serve_fake,
)

from trichat.client import (
    MAX_SERVER_FRAME,
    BadServerFrame,
    Client,
    ConnectionLost,
    LoginRefused,
    connect,
    open_client,
)
from trichat.protocol import encode
from trichat.protocol.messages import (
    Delivery,
    Error,
    ErrorCode,
    Exit,
    Hello,
    Login,
    Ping,
    Pong,
    Talk,
    UnknownErrorCode,
)


def roster(client: Client) -> tuple[str, ...]:
    return client.online


async def next_message(client: Client) -> object:
    return await client.__anext__()


# Logging in

VERSIONS = pytest.mark.parametrize("version", [1, 2])
"""Run a test of logging in with each protocol version a client can ask for."""


async def answer_hello(server: FakeServer, version: int) -> None:
    """Send what a server answers ``hello`` with, ahead, if *version* says it."""
    if version > 1:
        await server.send(f"hello|{version}|{SETTINGS}")


async def expect_hello(server: FakeServer, version: int) -> None:
    """Take the client's ``hello``, if *version* says it."""
    if version > 1:
        await server.expect(Hello(version, ("echo",)))


@fail_after(5)
async def test_login_waits_for_the_acknowledgement() -> None:
    client, server = await logged_in("alice")
    assert client.name == "alice"
    assert roster(client) == ()
    await client.aclose()
    await server.expect_closed()


@VERSIONS
@fail_after(5)
async def test_the_name_is_the_one_the_server_acknowledged(version: int) -> None:
    client_stream, server = fake_server_pair()
    await answer_hello(server, version)
    await server.send("login|Zoë")
    client = await Client.login(client_stream, "\uff3aOË", version=version)
    assert client.name == "Zoë"
    await expect_hello(server, version)
    await server.expect(Login("\uff3aOË"))


@VERSIONS
@pytest.mark.parametrize(
    "code", [ErrorCode.BAD_NAME, ErrorCode.NAME_TAKEN, ErrorCode.SERVER_FULL]
)
@fail_after(5)
async def test_a_refusal_raises_login_refused(version: int, code: ErrorCode) -> None:
    client_stream, server = fake_server_pair()
    await answer_hello(server, version)
    await server.send(f"error|{code.value}|not you | not now")
    with pytest.raises(LoginRefused) as refused:
        await Client.login(client_stream, "alice", version=version)
    assert refused.value.error == Error(code, "not you | not now")
    assert str(refused.value) == f"{code.value}: not you | not now"


@VERSIONS
@fail_after(5)
async def test_a_refusal_with_a_code_this_client_does_not_know(version: int) -> None:
    client_stream, server = fake_server_pair()
    await answer_hello(server, version)
    await server.send("error|banned|not here")
    with pytest.raises(LoginRefused) as refused:
        await Client.login(client_stream, "alice", version=version)
    assert refused.value.error == Error(UnknownErrorCode("banned"), "not here")
    assert str(refused.value) == "banned: not here"


@VERSIONS
@fail_after(5)
async def test_after_a_refusal_the_stream_can_log_in_again(version: int) -> None:
    client_stream, server = fake_server_pair()
    await answer_hello(server, version)
    await server.send("error|name-taken|alice is online")
    with pytest.raises(LoginRefused) as refused:
        await Client.login(client_stream, "alice", version=version)
    await expect_hello(server, version)
    await server.expect(Login("alice"))
    await server.send("login|alice2")
    # What was agreed stands: no second hello, which a server refuses.
    client = await Client.login(client_stream, "alice2", after=refused.value)
    assert (client.name, client.version) == ("alice2", version)
    assert client.echo == (version == 2)
    assert bool(client.settings) == (version == 2)
    await server.expect(Login("alice2"))


@fail_after(5)
async def test_a_hello_refused_on_its_own_is_said_again_on_the_next_try() -> None:
    client_stream, server = fake_server_pair()
    await server.send("error|rate-limited|slow down")
    with pytest.raises(LoginRefused) as refused:
        await Client.login(client_stream, "alice")
    assert refused.value.error.code is ErrorCode.RATE_LIMITED
    # Nothing but the hello was sent.
    await server.expect(Hello(2, ("echo",)))
    await answer_hello(server, 2)
    await server.send("login|alice")
    client = await Client.login(client_stream, "alice", after=refused.value)
    assert client.version == 2
    await server.expect(Hello(2, ("echo",)))
    await server.expect(Login("alice"))


@fail_after(5)
async def test_a_name_the_protocol_refuses_is_not_sent() -> None:
    client_stream, server = fake_server_pair()
    with pytest.raises(ValueError, match="may not contain"):
        await Client.login(client_stream, "no spaces")
    with pytest.raises(ValueError, match="may not contain"):
        await connect("*")
    await client_stream.aclose()
    await server.expect_closed()


@pytest.mark.parametrize("version", [0, 3])
@fail_after(5)
async def test_a_version_this_client_does_not_speak_is_not_asked_for(
    version: int,
) -> None:
    client_stream, server = fake_server_pair()
    with pytest.raises(ValueError, match="speaks protocol 1 to 2"):
        await Client.login(client_stream, "alice", version=version)
    with pytest.raises(ValueError, match="speaks protocol 1 to 2"):
        await connect("alice", port=free_port(), version=version)
    await client_stream.aclose()
    await server.expect_closed()


@VERSIONS
@fail_after(5)
async def test_end_of_stream_before_the_acknowledgement(version: int) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    await answer_hello(FakeServer(server_stream), version)
    await server_stream.send_eof()
    with pytest.raises(ConnectionLost, match="before accepting the login"):
        await Client.login(client_stream, "alice", version=version)


@fail_after(5)
async def test_end_of_stream_before_the_answer_to_hello() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    await server_stream.send_eof()
    with pytest.raises(ConnectionLost, match="before answering hello"):
        await Client.login(client_stream, "alice")


@fail_after(5)
async def test_pings_before_the_answer_to_hello_are_answered() -> None:
    client_stream, server = fake_server_pair()
    await server.send("ping|early", "pong|stray", f"hello|2|{SETTINGS}")
    await server.send("login|alice")
    client = await Client.login(client_stream, "alice")
    assert client.version == 2
    await server.expect(Hello(2, ("echo",)))
    await server.expect(Pong("early"))
    await server.expect(Login("alice"))


@VERSIONS
@fail_after(5)
async def test_a_ping_before_the_acknowledgement_is_answered(version: int) -> None:
    client_stream, server = fake_server_pair()
    await answer_hello(server, version)
    await server.send("ping|early", "pong|stray", "login|alice")
    client = await Client.login(client_stream, "alice", version=version)
    assert client.name == "alice"
    await expect_hello(server, version)
    await server.expect(Login("alice"))
    await server.expect(Pong("early"))


@VERSIONS
@pytest.mark.parametrize("frame", ["login|bob", "talk|bob|alice|hi", "exit|bob"])
@fail_after(5)
async def test_another_frame_instead_of_the_acknowledgement(
    version: int, frame: str
) -> None:
    client_stream, server = fake_server_pair()
    await answer_hello(server, version)
    await server.send(frame)
    with pytest.raises(BadServerFrame, match="before the login was accepted"):
        await Client.login(client_stream, "alice", version=version)


@pytest.mark.parametrize(
    ("frame", "complaint"),
    [
        ("login|alice", "unexpected login frame before the answer to hello"),
        ("msg|1|2026-12-03T09:15:02.125Z|bob|alice|hi", "unexpected msg frame"),
        (f"hello|3|{SETTINGS}", "answered hello|2 with 3"),
        ("hello|2", "hello takes 2 fields"),
    ],
)
@fail_after(5)
async def test_another_frame_instead_of_the_answer_to_hello(
    frame: str, complaint: str
) -> None:
    client_stream, server = fake_server_pair()
    await server.send(frame)
    with pytest.raises(BadServerFrame, match=complaint):
        await Client.login(client_stream, "alice")


@fail_after(5)
async def test_a_malformed_answer_to_login() -> None:
    client_stream, server = fake_server_pair()
    await server.send("login")
    with pytest.raises(BadServerFrame, match="login takes 1 field"):
        await Client.login(client_stream, "alice", version=1)


@VERSIONS
@fail_after(5)
async def test_frames_of_unknown_kinds_before_the_acknowledgement_are_skipped(
    version: int,
) -> None:
    # A newer server may greet first, in frames this client does not know.
    client_stream, server = fake_server_pair()
    await server.send("whisper|trichat|2", "welcome")
    await answer_hello(server, version)
    await server.send("motd|welcome to trichat", "login|alice")
    client = await Client.login(client_stream, "alice", version=version)
    assert client.name == "alice"


# Saying hello


@fail_after(5)
async def test_hello_agrees_on_protocol_2_and_reads_the_settings() -> None:
    client, server = await logged_in("alice")
    assert server.hello == Hello(2, ("echo",))
    assert client.version == 2
    assert client.echo
    assert client.settings["server"] == "trichat/2.0.0"
    assert client.settings["presence"] == "global"
    assert (client.max_frame, client.max_text) == (4096, 4000)
    await client.aclose()


@fail_after(5)
async def test_hello_without_echo() -> None:
    client_stream, server = fake_server_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.accept, "alice")
        client = await Client.login(client_stream, "alice", echo=False)
    assert (client.version, client.echo) == (2, False)
    assert server.hello == Hello(2)


@fail_after(5)
async def test_a_server_that_answers_with_protocol_1() -> None:
    # A server that knows hello but speaks only version 1 still gives its
    # settings; it does not echo.
    client_stream, server = fake_server_pair()
    await server.send("hello|1|max-line=1024 max-text=1000 colour=blue", "login|al")
    client = await Client.login(client_stream, "al")
    assert (client.version, client.echo) == (1, False)
    assert client.settings == {"max-line": "1024", "max-text": "1000", "colour": "blue"}
    assert (client.max_frame, client.max_text) == (1024, 1000)


@fail_after(5)
async def test_version_1_says_no_hello() -> None:
    client, server = await logged_in("alice", version=1)
    assert server.hello is None
    assert (client.version, client.echo, client.settings) == (1, False, {})
    assert (client.max_frame, client.max_text) == (4096, 4000)
    await client.talk("bob", "hi")
    await server.expect(Talk("bob", "hi"))


@fail_after(5)
async def test_a_server_that_does_not_know_hello_is_spoken_to_in_protocol_1() -> None:
    # trichat 1.0 answers hello|2 with a bad-frame and keeps the connection.
    client, server = await logged_in("alice", online=["bob"], settings=OLD_SERVER)
    assert (client.name, client.version, client.echo) == ("alice", 1, False)
    assert client.settings == {}
    assert await next_message(client) == Login("bob")
    await server.send("talk|bob|alice|hi")
    assert await next_message(client) == Delivery("bob", "alice", "hi")
    await client.talk("bob", "hello")
    await server.expect(Talk("bob", "hello"))


@pytest.mark.parametrize(
    ("settings", "max_frame", "max_text"),
    [
        ("max-line=512 max-text=300", 512, 300),
        # 0 is no limit: what the protocol itself allows.
        ("max-line=0 max-text=0", MAX_SERVER_FRAME, 4000),
        # A server cannot allow more text than the protocol does.
        ("max-line=65536 max-text=9000", 65536, 4000),
        # Words that are not numbers are no limits.
        ("max-line=lots max-text=-1 rooms=5", 4096, 4000),
        ("server=trichat/9", 4096, 4000),
    ],
)
@fail_after(5)
async def test_the_limits_are_the_servers(
    settings: str, max_frame: int, max_text: int
) -> None:
    client, _server = await logged_in("alice", settings=settings)
    assert (client.max_frame, client.max_text) == (max_frame, max_text)


@fail_after(5)
async def test_a_message_over_the_servers_limits_is_not_sent() -> None:
    # A server started with --max-line 512 closes a connection that sends a
    # longer line: the client refuses to send it instead.
    client, server = await logged_in("alice", settings="max-line=512 max-text=300")
    with pytest.raises(ValueError, match=r"the frame has 513 bytes; .* at most 512"):
        await client.talk("bob", "x" * 97 + "é" * 203)
    with pytest.raises(ValueError, match=r"301 characters; .* at most 300"):
        await client.talk("#lunch", "x" * 301)
    with pytest.raises(ValueError, match=r"301 characters; .* at most 300"):
        await client.send(Talk("bob", "x" * 301))
    with pytest.raises(ValueError, match="at most 300"):
        await client.talk_batch("bob", ["fine", "x" * 301])
    with pytest.raises(ValueError, match="at most 512"):
        await client.talk_batch("bob", ["fine", "é" * 260])
    # Nothing was sent, and the connection is as it was.
    text = "x" * 300
    await client.talk("bob", text)
    await client.talk_batch("bob", ["one", "two"])
    await server.expect(Talk("bob", text))
    await server.expect(Talk("bob", "one"))
    await server.expect(Talk("bob", "two"))
    await server.send("talk|bob|alice|still here")
    assert await next_message(client) == Delivery("bob", "alice", "still here")


# What arrives


@fail_after(5)
async def test_the_roster_follows_login_and_exit_frames() -> None:
    client, server = await logged_in("alice", online=["bob", "carol"])
    assert await next_message(client) == Login("bob")
    assert roster(client) == ("bob",)
    assert await next_message(client) == Login("carol")
    assert roster(client) == ("bob", "carol")
    await server.send("exit|BOB", "login|ALICE", "exit|nobody", "login|dave")
    assert await next_message(client) == Exit("BOB")
    assert roster(client) == ("carol",)
    # Its own name (in any case) is not someone else online.
    assert await next_message(client) == Login("ALICE")
    assert await next_message(client) == Exit("nobody")
    assert await next_message(client) == Login("dave")
    assert roster(client) == ("carol", "dave")


@fail_after(5)
async def test_deliveries_are_yielded() -> None:
    client, server = await logged_in("alice")
    await server.send("talk|bob|alice|hi | how are you?", "talk|carol|*|lunch?")
    direct = await next_message(client)
    assert direct == Delivery("bob", "alice", "hi | how are you?")
    assert isinstance(direct, Delivery)
    assert not direct.is_broadcast
    assert await next_message(client) == Delivery("carol", "*", "lunch?")


@fail_after(5)
async def test_a_delivery_longer_than_the_servers_own_limit_is_read() -> None:
    client, server = await logged_in("alice")
    # 4000 four-byte characters: the most a client can send, and more bytes
    # than any frame a server reads.
    text = "\U0001f600" * 4000
    await server.send(f"talk|{'ö' * 32}|alice|{text}")
    message = await next_message(client)
    assert isinstance(message, Delivery)
    assert message.text == text
    assert len(f"talk|{'ö' * 32}|alice|{text}\r\n".encode()) < MAX_SERVER_FRAME


@fail_after(5)
async def test_pings_are_answered_and_yielded() -> None:
    client, server = await logged_in("alice")
    await server.send("ping|t1", "pong|mine")
    assert await next_message(client) == Ping("t1")
    await server.expect(Pong("t1"))
    assert await next_message(client) == Pong("mine")


@fail_after(5)
async def test_an_error_that_keeps_the_connection_is_yielded() -> None:
    client, server = await logged_in("alice")
    await server.send("error|no-such-user|carol", "talk|bob|alice|still here")
    assert await next_message(client) == Error(ErrorCode.NO_SUCH_USER, "carol")
    assert await next_message(client) == Delivery("bob", "alice", "still here")


@fail_after(5)
async def test_an_error_with_a_code_this_client_does_not_know_is_yielded() -> None:
    # What a newer server may send: an error all the same, not a bad frame,
    # and one that does not end the iteration (the server closes if it must).
    client, server = await logged_in("alice")
    await server.send("error|quota-exceeded|slow | down", "talk|bob|alice|still here")
    error = await next_message(client)
    assert error == Error(UnknownErrorCode("quota-exceeded"), "slow | down")
    assert isinstance(error, Error)
    assert (error.code.value, error.code.closes) == ("quota-exceeded", False)
    assert await next_message(client) == Delivery("bob", "alice", "still here")
    await server.send("error|quota-exceeded|again", "talk|bob|alice|more")
    assert await client.receive_batch() == [
        Error(UnknownErrorCode("quota-exceeded"), "again"),
        Delivery("bob", "alice", "more"),
    ]


@fail_after(5)
async def test_a_closing_error_is_yielded_then_iteration_ends() -> None:
    client, server = await logged_in("alice")
    # The server keeps the stream open: the error alone ends the iteration.
    await server.send("error|shutting-down|bye", "talk|bob|alice|never seen")
    received = [message async for message in client]
    assert received == [Error(ErrorCode.SHUTTING_DOWN, "bye")]
    assert [message async for message in client] == []


@fail_after(5)
async def test_iteration_ends_when_the_server_closes() -> None:
    client, server = await logged_in("alice", online=["bob"])
    await server.send("talk|bob|alice|last words")
    await server.stream.aclose()
    received = [message async for message in client]
    assert received == [Login("bob"), Delivery("bob", "alice", "last words")]
    assert [message async for message in client] == []


@fail_after(5)
async def test_a_frame_cut_by_the_end_of_the_stream_is_dropped() -> None:
    client, server = await logged_in("alice")
    await server.stream.send_all(b"talk|bob|alice|cut sh")
    await server.stream.aclose()
    assert [message async for message in client] == []


@fail_after(5)
async def test_a_malformed_frame_raises_and_reading_goes_on() -> None:
    client, server = await logged_in("alice")
    await server.stream.send_all(
        b"exit\nerror|some-code|\x07\ntalk|b\xffb|alice|x\ntalk|bob|alice|ok\n"
    )
    with pytest.raises(BadServerFrame, match="exit takes 1 field") as bad:
        await next_message(client)
    assert not bad.value.fatal
    assert bad.value.problem.code is ErrorCode.BAD_FRAME
    with pytest.raises(BadServerFrame, match="bad-frame: an error detail"):
        await next_message(client)
    with pytest.raises(BadServerFrame, match="UTF-8"):
        await next_message(client)
    assert await next_message(client) == Delivery("bob", "alice", "ok")


@fail_after(5)
async def test_frames_of_unknown_kinds_are_skipped() -> None:
    # What a newer server may send; the frames of known kinds around them
    # are read as usual, and the end of the stream ends the iteration.
    client, server = await logged_in("alice", online=["bob"])
    await server.send(
        "typing|#lobby|bob|hi",
        "talk|bob|alice|one",
        "TALK|bob|alice|not a kind",
        "sticker|#lobby|joined",
        "talk|bob|alice|two",
        "archive|end",
    )
    await server.stream.aclose()
    assert [message async for message in client] == [
        Login("bob"),
        Delivery("bob", "alice", "one"),
        Delivery("bob", "alice", "two"),
    ]


@fail_after(5)
async def test_receive_batch_skips_frames_of_unknown_kinds() -> None:
    client, server = await logged_in("alice")
    await server.send("typing|#lobby|bob|hi", "talk|bob|alice|one", "archive|end")
    assert await client.receive_batch() == [Delivery("bob", "alice", "one")]
    await server.send("sticker|#lobby|joined")
    await server.stream.aclose()
    assert await client.receive_batch() == []


@fail_after(5)
async def test_a_line_over_the_limit_is_fatal() -> None:
    client, server = await logged_in("alice")
    await server.stream.send_all(b"x" * (MAX_SERVER_FRAME + 1))
    with pytest.raises(BadServerFrame, match="too-long") as bad:
        await next_message(client)
    assert bad.value.fatal
    assert [message async for message in client] == []


@fail_after(5)
async def test_a_broken_connection_raises_connection_lost() -> None:
    client = Client(ResetStream(reason="reset by peer"))
    with pytest.raises(ConnectionLost, match="reset by peer"):
        await next_message(client)
    assert [message async for message in client] == []
    with pytest.raises(ConnectionLost, match="reset by peer"):
        await client.talk("bob", "hi")
    with pytest.raises(ConnectionLost, match="reset by peer"):
        await Client.login(ResetStream(reason="reset by peer"), "alice")
    await client.exit()  # leaving a lost connection is not an error


@fail_after(5)
async def test_only_one_task_reads_at_a_time() -> None:
    client, _server = await logged_in("alice")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(next_message, client)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await next_message(client)
        nursery.cancel_scope.cancel()


@fail_after(5)
async def test_last_heard_is_when_the_last_frame_arrived(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = await logged_in("alice")
    start = client.last_heard
    assert start == trio.current_time()
    await trio.sleep(3)
    assert client.last_heard == start
    await server.send("ping|x")
    await next_message(client)
    assert client.last_heard == start + 3


# Sending


@fail_after(5)
async def test_what_the_client_sends() -> None:
    client, server = await logged_in("alice")
    await client.talk("bob", "hi | there")
    await client.broadcast("lunch?")
    await client.ping("t-1")
    await client.send(Pong("t-2"))
    await server.expect(Talk("bob", "hi | there"))
    await server.expect(Talk("*", "lunch?"))
    await server.expect(Ping("t-1"))
    await server.expect(Pong("t-2"))


@fail_after(5)
async def test_exit_says_goodbye_and_closes() -> None:
    client, server = await logged_in("alice")
    await client.exit()
    await server.expect(Exit())
    await server.expect_closed()
    assert [message async for message in client] == []
    with pytest.raises(ConnectionLost, match="closed"):
        await client.talk("bob", "too late")
    await client.aclose()


@fail_after(5)
async def test_what_the_protocol_forbids_is_not_sent() -> None:
    client, server = await logged_in("alice")
    with pytest.raises(ValueError, match="control characters"):
        await client.talk("bob", "\x1b[2J")
    with pytest.raises(ValueError, match="may not contain"):
        await client.talk("bob carol", "hi")
    with pytest.raises(ValueError, match="1 to 4000"):
        await client.broadcast("")
    with pytest.raises(ValueError, match="may not contain"):
        await client.ping("a|b")
    # Valid text that makes a frame over the server's limit.
    with pytest.raises(ValueError, match="at most 4096"):
        await client.talk("bob", "ö" * 2100)
    await client.talk("bob", "fine")
    await server.expect(Talk("bob", "fine"))


@fail_after(5)
async def test_sending_after_the_server_closed() -> None:
    client, server = await logged_in("alice")
    await server.stream.aclose()
    with pytest.raises(ConnectionLost):
        await client.talk("bob", "anyone?")


@fail_after(5)
async def test_several_tasks_may_send_at_once() -> None:
    # In lockstep, send_all waits for the reader, so sends really overlap.
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    server = FakeServer(server_stream)
    server.connection.logged_in("alice")
    client = Client(client_stream)
    texts = [f"message {number} " * 20 for number in range(10)]
    async with trio.open_nursery() as nursery:
        for text in texts:
            nursery.start_soon(client.talk, "bob", text)
        received = [await server.receive() for _ in texts]
    assert sorted(received, key=repr) == sorted(
        (Talk("bob", text) for text in texts), key=repr
    )


@fail_after(5)
async def test_a_send_cancelled_halfway_breaks_later_sends() -> None:
    client_stream, _server_stream = trio.testing.lockstep_stream_pair()
    client = Client(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.talk, "bob", "nobody reads this")
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    with pytest.raises(ConnectionLost, match="interrupted"):
        await client.talk("bob", "or this")
    await client.exit()


@fail_after(5)
async def test_exit_gives_up_on_a_server_that_does_not_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # In lockstep nothing is buffered: a server that never reads blocks
    # every send, and exit must still return after its grace period.
    client_stream, _server_stream = trio.testing.lockstep_stream_pair()
    client = Client(client_stream)
    start = trio.current_time()
    await client.exit()
    assert 0 < trio.current_time() - start < 5
    with pytest.raises(ConnectionLost):
        await client.talk("bob", "after exit")


# Many frames at once


class WriteRecorder(trio.abc.Stream):
    """A stream that keeps each write apart, and has nothing to read."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.writes.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


@fail_after(5)
@pytest.mark.parametrize("to", ["bob", "*", "Zoë"])
async def test_talk_batch_sends_every_text_in_one_write(to: str) -> None:
    stream = WriteRecorder()
    client = Client(stream)
    texts = ["hi | there", "tab\tand ü", "\u200bzero-width start", "x" * 4000]
    await client.talk_batch(to, texts)
    assert stream.writes == [b"".join(encode(Talk(to, text)) for text in texts)]
    await client.talk_batch(to, [])
    assert len(stream.writes) == 1


@fail_after(5)
async def test_talk_batch_reaches_the_server_in_order() -> None:
    client, server = await logged_in("alice")
    await client.talk_batch("bob", ["one", "two", "three"])
    for text in ("one", "two", "three"):
        await server.expect(Talk("bob", text))


@fail_after(5)
@pytest.mark.parametrize(
    ("to", "texts", "complaint"),
    [
        ("bob carol", ["hi"], "may not contain"),
        ("bob", ["fine", "\x1b[2J", "fine"], "control characters"),
        ("bob", ["fine", ""], "1 to 4000"),
        ("bob", ["fine", "x" * 4001], "1 to 4000"),
        ("bob", ["fine", "line\nbreak"], "control characters"),
        ("bob", ["fine", "\ud800"], "surrogates"),
        # Valid text that makes a frame over the server's limit.
        ("bob", ["fine", "ö" * 2100], "at most 4096"),
    ],
)
async def test_talk_batch_sends_nothing_when_one_text_is_refused(
    to: str, texts: list[str], complaint: str
) -> None:
    stream = WriteRecorder()
    client = Client(stream)
    with pytest.raises(ValueError, match=complaint):
        await client.talk_batch(to, texts)
    assert stream.writes == []


@fail_after(5)
async def test_talk_batch_wants_texts_not_one_text() -> None:
    stream = WriteRecorder()
    with pytest.raises(TypeError, match="not one text"):
        await Client(stream).talk_batch("bob", "hello")
    assert stream.writes == []


@fail_after(5)
async def test_talk_batch_on_a_lost_connection() -> None:
    client = Client(ResetStream(reason="reset by peer"))
    with pytest.raises(ConnectionLost, match="reset by peer"):
        await client.talk_batch("bob", ["hi", "there"])


@fail_after(5)
async def test_receive_batch_takes_what_has_arrived_and_keeps_the_roster() -> None:
    client, server = await logged_in("alice", online=["bob", "carol"])
    # Read with the acknowledgement: no need to wait for more.
    assert await client.receive_batch() == [Login("bob"), Login("carol")]
    assert roster(client) == ("bob", "carol")
    await server.send("exit|bob", "talk|carol|alice|hi", "talk|carol|*|all")
    assert await client.receive_batch() == [
        Exit("bob"),
        Delivery("carol", "alice", "hi"),
        Delivery("carol", "*", "all"),
    ]
    assert roster(client) == ("carol",)


@fail_after(5)
async def test_receive_batch_answers_pings() -> None:
    client, server = await logged_in("alice")
    await server.send("ping|t1", "talk|bob|alice|x", "pong|mine")
    assert await client.receive_batch() == [
        Ping("t1"),
        Delivery("bob", "alice", "x"),
        Pong("mine"),
    ]
    await server.expect(Pong("t1"))


@fail_after(5)
async def test_receive_batch_waits_for_a_read() -> None:
    client, server = await logged_in("alice")
    async with trio.open_nursery() as nursery:

        async def send_later() -> None:
            await trio.testing.wait_all_tasks_blocked()
            await server.send("talk|bob|alice|at last")

        nursery.start_soon(send_later)
        assert await client.receive_batch() == [Delivery("bob", "alice", "at last")]


@fail_after(5)
async def test_receive_batch_ends_after_a_closing_error() -> None:
    client, server = await logged_in("alice")
    await server.send("talk|bob|alice|before", "error|shutting-down|bye", "talk|b|a|x")
    assert await client.receive_batch() == [
        Delivery("bob", "alice", "before"),
        Error(ErrorCode.SHUTTING_DOWN, "bye"),
    ]
    assert await client.receive_batch() == []
    assert await client.receive_batch() == []
    assert [message async for message in client] == []


@fail_after(5)
async def test_receive_batch_ends_when_the_server_closes() -> None:
    client, server = await logged_in("alice")
    await server.send("talk|bob|alice|last words")
    await server.stream.aclose()
    assert await client.receive_batch() == [Delivery("bob", "alice", "last words")]
    assert await client.receive_batch() == []


@fail_after(5)
async def test_receive_batch_returns_the_frames_before_a_bad_one_first() -> None:
    client, server = await logged_in("alice")
    await server.stream.send_all(
        b"talk|bob|alice|one\nerror|no-such-user|\x07\ntalk|bob|alice|two\n"
        b"talk|b\xffb|alice|x\ntalk|bob|alice|three\n"
    )
    assert await client.receive_batch() == [Delivery("bob", "alice", "one")]
    with pytest.raises(BadServerFrame, match="detail") as bad:
        await client.receive_batch()
    assert not bad.value.fatal
    assert await client.receive_batch() == [Delivery("bob", "alice", "two")]
    # Iteration, too, finds the bad frame a batch stopped at.
    with pytest.raises(BadServerFrame, match="UTF-8"):
        await next_message(client)
    assert await next_message(client) == Delivery("bob", "alice", "three")


@fail_after(5)
async def test_receive_batch_after_a_line_over_the_limit() -> None:
    client, server = await logged_in("alice")
    await server.stream.send_all(b"x" * (MAX_SERVER_FRAME + 1))
    with pytest.raises(BadServerFrame, match="too-long") as bad:
        await client.receive_batch()
    assert bad.value.fatal
    assert await client.receive_batch() == []


@fail_after(5)
async def test_receive_batch_on_a_broken_connection() -> None:
    client = Client(ResetStream(reason="reset by peer"))
    with pytest.raises(ConnectionLost, match="reset by peer"):
        await client.receive_batch()
    assert await client.receive_batch() == []


@fail_after(5)
async def test_receive_batch_is_one_reader_at_a_time() -> None:
    client, _server = await logged_in("alice")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.receive_batch)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await client.receive_batch()
        with pytest.raises(trio.BusyResourceError):
            await next_message(client)
        nursery.cancel_scope.cancel()


@fail_after(5)
async def test_receive_batch_sets_last_heard(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = await logged_in("alice")
    start = client.last_heard
    await trio.sleep(3)
    await server.send("talk|bob|alice|x")
    await client.receive_batch()
    assert client.last_heard == start + 3


# Connecting over TCP and TLS


async def chat_server(server: FakeServer) -> None:
    """Accept any login, then echo the client's talk back to it; until exit."""
    login = await server.login_request()
    assert login is not None
    server.connection.logged_in(login.name)
    await server.send(f"login|{login.name}", "login|bob")
    while True:
        message = await server.receive()
        if message is None or isinstance(message, Exit):
            break
        if isinstance(message, Talk):
            await server.send(f"talk|bob|{message.to}|{message.text}")
    await server.stream.aclose()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_contexts(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context


@fail_after(10)
async def test_open_client_over_tcp() -> None:
    async with trio.open_nursery() as nursery:
        port = await serve_fake(nursery, chat_server)
        async with open_client("alice", port=port) as client:
            assert client.name == "alice"
            await client.talk("bob", "echo")
            assert await next_message(client) == Login("bob")
            assert await next_message(client) == Delivery("bob", "bob", "echo")
            await client.exit()
        nursery.cancel_scope.cancel()


@fail_after(10)
async def test_open_client_over_tls(ca: trustme.CA) -> None:
    server_context, client_context = tls_contexts(ca)
    async with trio.open_nursery() as nursery:
        port = await serve_fake(nursery, chat_server, server_context)
        async with open_client(
            "alice", port=port, ssl_context=client_context, server_hostname="localhost"
        ) as client:
            await client.broadcast("over tls")
            assert await next_message(client) == Login("bob")
            assert await next_message(client) == Delivery("bob", "*", "over tls")
            await client.exit()
        nursery.cancel_scope.cancel()


@fail_after(10)
async def test_tls_with_an_untrusted_certificate(ca: trustme.CA) -> None:
    server_context, _ = tls_contexts(ca)
    other_ca = trustme.CA()
    client_context = ssl.create_default_context()
    other_ca.configure_trust(client_context)
    async with trio.open_nursery() as nursery:
        port = await serve_fake(nursery, chat_server, server_context)
        with pytest.raises(ConnectionLost, match=r"TLS handshake failed.*verify"):
            await connect("alice", port=port, ssl_context=client_context)
        nursery.cancel_scope.cancel()


@fail_after(10)
async def test_tls_to_a_plain_tcp_server(ca: trustme.CA) -> None:
    _, client_context = tls_contexts(ca)

    async def plain(server: FakeServer) -> None:
        # What a plain server answers bytes that are not a frame.
        await server.stream.send_all(b"error|bad-frame|frame is not valid UTF-8\n")
        await server.stream.aclose()

    async with trio.open_nursery() as nursery:
        port = await serve_fake(nursery, plain)
        with pytest.raises(ConnectionLost, match="TLS handshake failed"):
            await connect("alice", port=port, ssl_context=client_context)
        nursery.cancel_scope.cancel()


@fail_after(10)
async def test_an_unreachable_server() -> None:
    with pytest.raises(OSError, match="connect"):
        await connect("alice", port=free_port())
