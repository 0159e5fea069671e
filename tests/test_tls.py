"""The server over TLS, with certificates from a throwaway CA (trustme)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trustme
from helpers import (
    STEP_TIMEOUT,
    LineClient,
    LiveServer,
    read_until_gone,
    running_server,
    wait_for_connections,
)

from trichat.client import ConnectionLost, open_client
from trichat.protocol.messages import Login, Message

HOSTNAME = "chat.trichat.test"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOSTNAME, "127.0.0.1").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@asynccontextmanager
async def tls_server(
    context: ssl.SSLContext, **config: object
) -> AsyncIterator[LiveServer]:
    async with running_server(ssl_context=context, **config) as live:
        yield live


async def tls_client(
    live: LiveServer, context: ssl.SSLContext, hostname: str = HOSTNAME
) -> LineClient:
    """A LineClient over TLS, handshake done, closed with the server."""
    tcp = await trio.open_tcp_stream("127.0.0.1", live.port)
    stream = trio.SSLStream(tcp, context, server_hostname=hostname)
    client = LineClient(stream)
    live.clients.append(client)
    with trio.fail_after(STEP_TIMEOUT):
        await stream.do_handshake()
    return client


async def tls_login(live: LiveServer, context: ssl.SSLContext, name: str) -> LineClient:
    client = await tls_client(live, context)
    await client.login(name)
    return client


async def assert_certificate_refused(
    live: LiveServer, context: ssl.SSLContext, hostname: str
) -> None:
    """A handshake with *context*, expecting *hostname*, fails: the client
    does not accept the server's certificate."""
    tcp = await trio.open_tcp_stream("127.0.0.1", live.port)
    stream = trio.SSLStream(tcp, context, server_hostname=hostname)
    try:
        with pytest.raises(trio.BrokenResourceError) as caught:
            await stream.do_handshake()
    finally:
        await trio.aclose_forcefully(stream)
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)


async def test_two_tls_clients_talk(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with trio.fail_after(10):
        async with tls_server(server_context) as live:
            alice = await tls_login(live, client_context, "alice")
            bob = await tls_login(live, client_context, "bob")
            await bob.expect("login|alice")
            await alice.expect("login|bob")
            await alice.send("talk|bob|over TLS | with a bar")
            await bob.expect("talk|alice|bob|over TLS | with a bar")
            await bob.send("talk|*|to all")
            await alice.expect("talk|bob|*|to all")
            await bob.send("ping|b")
            await bob.expect("pong|b")
            await bob.send("exit")
            await alice.expect("exit|bob")
            assert await bob.read_until_closed() == []
            await wait_for_connections(live, 1)


async def test_tls_client_with_a_wrong_ca_refuses_the_server(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    other_ca = trustme.CA()
    wrong = ssl.create_default_context()
    other_ca.configure_trust(wrong)
    with trio.fail_after(10):
        async with tls_server(server_context) as live:
            await assert_certificate_refused(live, wrong, HOSTNAME)
            # The failed handshake costs the server nothing.
            await wait_for_connections(live, 0)
            alice = await tls_login(live, client_context, "alice")
            await alice.send("ping|ok")
            await alice.expect("pong|ok")


async def test_tls_client_checks_the_hostname(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with trio.fail_after(10):
        async with tls_server(server_context) as live:
            await assert_certificate_refused(
                live, client_context, "impostor.trichat.test"
            )
            await wait_for_connections(live, 0)


async def test_plain_client_speaking_chat_gets_no_chat_frames(
    server_context: ssl.SSLContext,
) -> None:
    """A plain TCP client that sends chat frames to the TLS port is cut off
    at once: the server reads no ClientHello, and says nothing in clear."""
    with trio.fail_after(10):
        async with tls_server(server_context) as live:
            client = await live.connect()
            await client.send("login|alice")
            received = await read_until_gone(client.stream)
            # At most a TLS alert record (content type 21), never a frame.
            assert not received or received[0] == 21, received
            assert b"login|" not in received
            assert b"error|" not in received
            await wait_for_connections(live, 0)


async def test_silent_plain_client_is_closed_by_the_login_timeout(
    server_context: ssl.SSLContext,
) -> None:
    """A plain client that connects and says nothing (so no TLS handshake
    either) does not hold its connection past the login timeout."""
    with trio.fail_after(10):
        async with tls_server(server_context, login_timeout=0.5) as live:
            client = await live.connect()
            start = trio.current_time()
            received = await read_until_gone(client.stream)
            elapsed = trio.current_time() - start
            assert b"|" not in received
            assert elapsed < 0.5 + live.server.config.close_timeout + 1.0
            await wait_for_connections(live, 0)


async def test_library_client_over_tls(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with trio.fail_after(10):
        async with tls_server(server_context) as live:
            watcher = await tls_login(live, client_context, "watcher")
            async with open_client(
                "bot",
                port=live.port,
                ssl_context=client_context,
                server_hostname=HOSTNAME,
            ) as bot:
                assert bot.name == "bot"
                await watcher.expect("login|bot")
                await watcher.send("talk|bot|hello bot")
                async for message in bot:
                    # Protocol 2, the library's default: a msg frame.
                    if isinstance(message, Message):
                        assert (message.sender, message.to, message.text) == (
                            "watcher",
                            "bot",
                            "hello bot",
                        )
                        break
                    assert message == Login("watcher"), message
                await bot.broadcast("hello all")
                await watcher.expect("talk|bot|*|hello all")
                await bot.exit()
            await watcher.expect("exit|bot")


async def test_library_client_refuses_an_untrusted_server(
    server_context: ssl.SSLContext,
) -> None:
    wrong = ssl.create_default_context()
    trustme.CA().configure_trust(wrong)
    with trio.fail_after(10):
        async with tls_server(server_context) as live:
            with pytest.raises(ConnectionLost, match="certificate verify failed"):
                async with open_client(
                    "bot", port=live.port, ssl_context=wrong, server_hostname=HOSTNAME
                ):
                    raise AssertionError("connected to an untrusted server")
            await wait_for_connections(live, 0)


async def read_to_a_clean_end(client: LineClient) -> bytes:
    """Every byte until the server ends the connection, read as a strict TLS
    client does (not https_compatible, as Trio's default is): an end without
    a close_notify raises BrokenResourceError, unlike ``read_until_gone``."""
    received = b""
    while data := await client.stream.receive_some(65536):
        received += data
    return received


async def test_a_tls_client_that_waits_for_the_end_gets_a_clean_one(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    # A client that reads on after the last error until the server ends
    # the connection: the end comes with a close_notify, not a bare TCP
    # close that a strict client must take for a truncation attack.
    with trio.fail_after(10):
        async with tls_server(server_context) as live:
            alice = await tls_login(live, client_context, "alice")
            live.server.shutdown()
            received = await read_to_a_clean_end(alice)
            assert received.startswith(b"error|shutting-down|")


async def test_a_tls_client_refused_gets_its_error_and_a_clean_end(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with trio.fail_after(10):
        async with tls_server(server_context, max_clients=1) as live:
            await tls_login(live, client_context, "alice")
            refused = await tls_client(live, client_context)
            received = await read_to_a_clean_end(refused)
            assert received.startswith(b"error|server-full|")
