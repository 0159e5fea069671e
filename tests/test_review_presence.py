"""Review of the presence batch (_PresenceBatch, Hub.catch_up, release_in_turns),
the turnstiles, the shared reader's deferred endings and the timed full
collections: what was found wrong, as failing tests marked xfail (strict),
and what was found sound, as passing ones."""

from __future__ import annotations

import gc
import socket
import time
import weakref
from collections.abc import Callable

import pytest
import trio
from test_hub import Crowd  # the hub tests' own

from trichat.server import ChatServer, ServerConfig
from trichat.server._shared_reader import SharedReader, available
from trichat.server.hub import Accepted, Envelope


class _Keeper:
    """An OfflineKeeper (the store) for which every name is an account."""

    def account_name(self, key: str) -> str | None:
        return key

    def record_offline(self, accepted: Accepted, account_key: str) -> bool:
        return True


# -- found wrong -------------------------------------------------------------------


def test_a_login_taken_back_takes_its_room_presence_back_too() -> None:
    # Failed at 491e323 (Hub._take_back took back the login only: alice got
    # join|#x|carol and never an exit); fixed in the working tree by the
    # server's owner while this review ran (Hub._note_fresh).
    crowd = Crowd("alice", "bob")
    hub = crowd.hub
    hub.join_room(crowd["alice"], "#x")
    crowd.read_all()
    hub.hold_presence = True
    crowd.join("carol")
    hub.join_room(crowd["carol"], "#x")
    hub.leave(crowd["carol"])
    hub.release()
    heard = crowd.read("alice")
    # Either nothing of carol (she came and went within the batch), or all
    # of it: never a member of #x who never logged in and never left.
    assert heard in (b"", b"login|carol\njoin|#x|carol\nexit|carol\n")


def test_the_echo_of_a_message_kept_offline_comes_after_the_exit() -> None:
    # Fails at 491e323: Hub._keep_offline put the echo without Hub.catch_up
    # (the removed Mailbox.hold had put held frames first). Fixed in the
    # working tree by the server's owner while this review ran.
    crowd = Crowd("bob")
    alice = crowd.join("alice", version=2, echo=True)
    crowd.read_all()
    hub = crowd.hub
    hub.offline = _Keeper()
    hub.hold_presence = True
    hub.leave(crowd["bob"])
    assert hub.route(alice, Envelope("alice", "bob", [b"hi"]), []).refused is None
    hub.release()
    assert crowd.read("alice") == (
        b"exit|bob\nmsg|1|2026-12-03T09:15:02.125Z|alice|bob|hi\n"
    )


def _release_time(members: int, *, one_join: bool) -> float:
    """Seconds ``Hub.release`` takes after half of *members*, all in one
    room, left within the batch (global presence), with or without one
    newcomer joining that room in the same batch."""
    crowd = Crowd()
    hub = crowd.hub
    for number in range(members):
        member = crowd.join(f"user{number:05d}", queue=10_000, queue_bytes=1 << 24)
        hub.join_room(member, "#lobby")
    crowd.read_all()
    hub.hold_presence = True
    for number in range(members // 2):
        hub.leave(crowd[f"user{number:05d}"])
    if one_join:
        late = crowd.join("late", queue=10_000, queue_bytes=1 << 24)
        hub.join_room(late, "#lobby")
    started = time.perf_counter()
    hub.release()
    took = time.perf_counter() - started
    heard = crowd.read(f"user{members - 1:05d}")
    assert heard.count(b"exit|") == members // 2
    return took


def test_one_room_join_in_a_crowds_drop_keeps_the_release_linear() -> None:
    # Failed at 491e323: one join in the batch put every member of #lobby
    # off the shared block, each walking the whole batch (4,000 dropping:
    # release 6 ms -> 400 ms); fixed in the working tree (the batch's
    # segments).
    # Measured together so that the machine's load weighs on both alike.
    plain = _release_time(1000, one_join=False)
    joined = _release_time(1000, one_join=True)
    assert joined < 5 * plain + 0.01


async def test_two_servers_with_timed_collections_give_the_thresholds_back() -> None:
    # Failed at 491e323 (each server restored what it found: (700, 10,
    # 1 << 30) for good); fixed in the working tree (_CollectionTimer).
    before = gc.get_threshold()
    first = ChatServer(ServerConfig(port=0, full_collection_interval=60.0))
    second = ChatServer(ServerConfig(port=0, full_collection_interval=60.0))
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                first_done = trio.Event()

                async def serve_first() -> None:
                    await first.serve()
                    first_done.set()

                nursery.start_soon(serve_first)
                while gc.get_threshold()[2] == before[2]:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                await nursery.start(second.serve)
                await trio.sleep(0.05)  # its collector task has started
                first.shutdown()
                await first_done.wait()
                second.shutdown()
        assert gc.get_threshold() == before
    finally:
        gc.set_threshold(*before)


class _Boom(Exception):
    """An error a connection's step raises (its end), which can be watched."""


@pytest.mark.skipif(not available(), reason="needs select.epoll")
async def test_an_ending_cancelled_while_it_waits_its_turn_is_freed_at_once() -> None:
    # Failed at 491e323 (a cancelled ending kept waiter.error, and with it
    # a cycle through _serve's frame); fixed in the working tree by the
    # server's owner while this review ran (abort clears waiter.error).
    errors: list[weakref.ref[_Boom]] = []
    pairs = [socket.socketpair() for _ in range(2)]
    for watched, _ in pairs:
        watched.setblocking(False)
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        reader = SharedReader()
        ending_scope = trio.CancelScope()

        def boom() -> _Boom:
            error = _Boom("the client closed")
            errors.append(weakref.ref(error))
            return error

        def ends() -> bool:
            raise boom()  # no local of this frame holds it

        def cancels_the_other() -> bool:
            ending_scope.cancel()  # a kick, while the ending waits its turn
            return True

        async def park(fd: int, on_ready: Callable[[], bool]) -> None:
            await reader.wait(fd, on_ready)

        async def ending() -> None:
            with ending_scope:
                await park(pairs[0][0].fileno(), ends)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader.run)
                nursery.start_soon(ending)
                nursery.start_soon(park, pairs[1][0].fileno(), cancels_the_other)
                await trio.testing.wait_all_tasks_blocked()
                pairs[0][1].send(b"x")  # ready first: served first
                pairs[1][1].send(b"x")
                while not ending_scope.cancelled_caught:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                for _ in range(5):
                    await trio.lowlevel.checkpoint()
                nursery.cancel_scope.cancel()
        assert len(errors) == 1
        assert errors[0]() is None
    finally:
        if enabled:
            gc.enable()
        gc.collect()
        for one, other in pairs:
            one.close()
            other.close()


# -- found sound -------------------------------------------------------------------


def _replay(online: set[str], heard: bytes) -> set[str]:
    """Who is online after *heard*, starting from *online*; fails on a login
    of someone online, or an exit of someone not."""
    online = set(online)
    for line in heard.decode().splitlines():
        kind, _, name = line.partition("|")
        if kind == "login":
            assert name not in online, f"login|{name} twice in {heard!r}"
            online.add(name)
        elif kind == "exit":
            assert name in online, f"exit|{name} never announced in {heard!r}"
            online.remove(name)
    return online


@pytest.mark.parametrize("turns_first", [0, 1, 3])
async def test_newcomers_and_leavers_during_a_release_in_turns(
    turns_first: int,
) -> None:
    names = [f"u{number}" for number in range(10)]
    crowd = Crowd(*names)
    hub = crowd.hub
    hub.hold_presence = True
    hub.leave(crowd["u0"])
    crowd.join("fresh")  # logged in in the batch
    before = set(names)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.release_in_turns, 2)
            for _ in range(turns_first):
                await trio.lowlevel.checkpoint()
            crowd.join("newcomer")
            hub.leave(crowd["fresh"])
            hub.leave(crowd["u5"])
            crowd.join("fresh")  # the same name again
            hub.route(crowd["u9"], Envelope("u9", "*", [b"hi"]), [])
    hub.release()
    now = set(hub.names())
    for name in [*names[1:], "newcomer"]:
        if name == "u5":
            continue
        heard = crowd.read(name)
        assert _replay(set() if name == "newcomer" else before, heard) == now


def test_a_waiting_session_kicked_while_caught_up_leaves_once() -> None:
    crowd = Crowd("alice")
    hub = crowd.hub
    waiting = crowd.join("waiting", queue=2)

    def leave_when_kicked(reason: str) -> None:
        # As ChatServer._end_waiting does for a waiting session.
        crowd.kicked.append(("waiting", reason))
        waiting.mailbox.discard()
        hub.leave(waiting)

    waiting.kick = leave_when_kicked
    crowd.read_all()
    for frame in (b"ping|1\n", b"ping|2\n"):  # a full queue, never read
        assert waiting.mailbox.put(frame)
    hub.hold_presence = True
    crowd.join("bob")
    crowd.join("carol")
    crowd.join("dave")
    # A broadcast catches everyone up: "waiting" has no room and leaves,
    # its exit logged in the batch under way, while the catch-up goes on.
    hub.route(crowd["alice"], Envelope("alice", "*", [b"hi"]), [])
    hub.release()
    assert "waiting" in [name for name, _ in crowd.kicked]  # twice: harmless
    assert "waiting" not in hub
    heard = crowd.read("bob")
    assert heard.count(b"exit|waiting\n") == 1
    assert heard.index(b"exit|waiting") > heard.index(b"login|dave")
    assert crowd.read("alice").count(b"exit|waiting\n") == 1


def test_the_same_name_leaving_and_coming_back_within_a_batch() -> None:
    crowd = Crowd("alice", "bob")
    hub = crowd.hub
    hub.hold_presence = True
    hub.leave(crowd["bob"])
    crowd.join("bob")
    hub.route(crowd["bob"], Envelope("bob", "alice", [b"back"]), [])
    hub.leave(crowd["bob"])
    crowd.join("BOB")
    hub.release()
    assert crowd.read("alice") == (
        b"exit|bob\nlogin|bob\ntalk|bob|alice|back\nexit|bob\nlogin|BOB\n"
    )


def test_rooms_mode_a_crowd_leaving_a_room_is_told_in_order() -> None:
    crowd = Crowd("alice", "bob", "carol", "dave", global_presence=False)
    hub = crowd.hub
    for name in ("alice", "bob", "carol"):
        hub.join_room(crowd[name], "#x")
    hub.join_room(crowd["dave"], "#y")
    crowd.read_all()
    hub.hold_presence = True
    hub.leave(crowd["bob"])
    hub.join_room(crowd["dave"], "#x")
    hub.part_room(crowd["carol"], "#x")
    hub.route(crowd["dave"], Envelope("dave", "#x", [b"hi"]), [])
    hub.release()
    assert crowd.read_all() == {
        "alice": b"exit|bob\njoin|#x|dave\npart|#x|carol\ntalk|dave|#x|hi\n",
        "bob": b"",
        "carol": b"exit|bob\njoin|#x|dave\npart|#x|carol\n",
        "dave": b"join|#x|dave\njoin|#x|alice\njoin|#x|carol\npart|#x|carol\n",
    }


def _rooms_release_time(members: int, *, rooms: bool) -> float:
    """Seconds ``Hub.release`` takes after half of *members*, all in one
    room, left within the batch, under --presence rooms or global."""
    crowd = Crowd(global_presence=not rooms)
    hub = crowd.hub
    for number in range(members):
        member = crowd.join(f"user{number:05d}", queue=10_000, queue_bytes=1 << 24)
        hub.join_room(member, "#lobby")
    crowd.read_all()
    hub.hold_presence = True
    for number in range(members // 2):
        hub.leave(crowd[f"user{number:05d}"])
    started = time.perf_counter()
    hub.release()
    took = time.perf_counter() - started
    heard = crowd.read(f"user{members - 1:05d}")
    assert heard.count(b"exit|") == members // 2
    return took


def test_rooms_mode_a_crowd_dropping_costs_about_what_it_does_in_global() -> None:
    global_mode = _rooms_release_time(1000, rooms=False)
    rooms_mode = _rooms_release_time(1000, rooms=True)
    assert rooms_mode < 10 * global_mode + 0.02
