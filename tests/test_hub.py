"""Hub: who is online, presence, and routing envelopes to users or everyone."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import trio

from trichat.server.hub import (
    Accepted,
    Envelope,
    Hub,
    Member,
    NameTaken,
    Refusal,
    RoomRefused,
    Routed,
)
from trichat.server.mailbox import Drainable, Mailbox

TOO_SLOW = "too slow: outgoing queue full"
# The hub's clock in these tests: 2026-12-03T09:15:02.125Z.
NOW = 1_796_289_302.125
STAMP = b"2026-12-03T09:15:02.125Z"


class Crowd:
    """A hub and its members, who note when they are kicked. Message ids
    start at 1, and the clock stands still at NOW."""

    def __init__(
        self,
        *names: str,
        queue: int = 100,
        queue_bytes: int = 10_000,
        global_presence: bool = True,
        max_rooms: int = 0,
    ):
        self.hub = Hub(
            global_presence=global_presence,
            max_rooms=max_rooms,
            first_id=1,
            clock=lambda: NOW,
        )
        self.kicked: list[tuple[str, str]] = []
        self.members: dict[str, Member] = {}
        for name in names:
            self.join(name, queue, queue_bytes)
        self.read_all()

    def member(
        self,
        name: str,
        queue: int = 100,
        queue_bytes: int = 10_000,
        version: int = 1,
        echo: bool = False,
    ) -> Member:
        def kick(reason: str) -> None:
            self.kicked.append((name, reason))

        return Member(
            name, Mailbox(queue, queue_bytes), kick, version=version, echo=echo
        )

    def join(
        self,
        name: str,
        queue: int = 100,
        queue_bytes: int = 10_000,
        version: int = 1,
        echo: bool = False,
    ) -> Member:
        member = self.member(name, queue, queue_bytes, version, echo)
        self.hub.join(member)
        self.members[name] = member
        return member

    def read(self, name: str) -> bytes:
        """What *name* was sent since the last read."""
        return self.members[name].mailbox.drain()

    def read_all(self) -> dict[str, bytes]:
        return {name: self.read(name) for name in self.members}

    def __getitem__(self, name: str) -> Member:
        return self.members[name]


# -- who is online -----------------------------------------------------------------


def test_a_newcomer_gets_itself_then_everyone_and_everyone_gets_the_newcomer() -> None:
    crowd = Crowd("alice", "bob")
    crowd.join("Zoë")
    assert crowd.read_all() == {
        "alice": b"login|Zo\xc3\xab\n",
        "bob": b"login|Zo\xc3\xab\n",
        "Zoë": "login|Zoë\nlogin|alice\nlogin|bob\n".encode(),
    }
    assert crowd.hub.names() == ["alice", "bob", "Zoë"]
    assert len(crowd.hub) == 3
    assert list(crowd.hub) == [crowd["alice"], crowd["bob"], crowd["Zoë"]]


def test_the_roster_goes_whatever_the_limits_as_one_frame() -> None:
    crowd = Crowd(*(f"user{number}" for number in range(20)))
    newcomer = crowd.join("tiny", queue=2, queue_bytes=20)
    assert crowd.kicked == []
    assert newcomer.mailbox.queued_frames == 1
    assert crowd.read("tiny").count(b"\n") == 21


@pytest.mark.parametrize("clash", ["bob", "BOB", "\uff22ob"])
def test_a_name_that_clashes_is_taken_and_nothing_is_sent(clash: str) -> None:
    crowd = Crowd("alice", "bob")
    member = crowd.member(clash)
    with pytest.raises(NameTaken):
        crowd.hub.join(member)
    assert crowd.hub.names() == ["alice", "bob"]
    assert crowd.read_all() == {"alice": b"", "bob": b""}
    assert member.mailbox.drain() == b""


def test_leaving_tells_everyone_else() -> None:
    crowd = Crowd("alice", "bob", "carol")
    crowd.hub.leave(crowd["bob"])
    assert crowd.hub.names() == ["alice", "carol"]
    assert crowd.read_all() == {
        "alice": b"exit|bob\n",
        "bob": b"",
        "carol": b"exit|bob\n",
    }
    # The name is free again.
    crowd.join("BOB")
    assert crowd.read("alice") == b"login|BOB\n"


def test_leaving_without_announcing_tells_nobody() -> None:
    crowd = Crowd("alice", "bob")
    crowd.hub.leave(crowd["bob"], announce=False)
    assert crowd.hub.names() == ["alice"]
    assert crowd.read_all() == {"alice": b"", "bob": b""}


def test_only_the_member_online_can_leave_under_its_name() -> None:
    crowd = Crowd("alice", "bob")
    crowd.hub.leave(crowd.member("bob"))  # another connection's, never joined
    crowd.hub.leave(crowd.member("carol"))  # nobody's
    assert crowd.hub.names() == ["alice", "bob"]
    assert crowd.read_all() == {"alice": b"", "bob": b""}
    crowd.hub.leave(crowd["bob"])
    crowd.hub.leave(crowd["bob"])  # twice: once is all it takes
    assert crowd.read("alice") == b"exit|bob\n"


def test_iterating_is_over_a_snapshot() -> None:
    crowd = Crowd("alice", "bob", "carol")
    for member in crowd.hub:
        crowd.hub.leave(member, announce=False)
    assert len(crowd.hub) == 0


def test_a_member_too_slow_for_presence_is_kicked() -> None:
    crowd = Crowd("alice")
    crowd.join("slow", queue=1)
    crowd.read_all()
    assert crowd["slow"].mailbox.put(b"filler\n")
    crowd.join("bob")
    assert crowd.kicked == [("slow", TOO_SLOW)]
    assert crowd.read("alice") == b"login|bob\n"


def test_online_as_written_is_an_exact_name_or_everyone() -> None:
    crowd = Crowd("alice", "Zoë")
    hub = crowd.hub
    assert hub.online_as_written("alice")
    assert hub.online_as_written("Zoë")
    assert hub.online_as_written("*")
    assert not hub.online_as_written("ALICE")
    assert not hub.online_as_written("zoë")
    assert not hub.online_as_written("bob")
    hub.leave(crowd["alice"])
    assert not hub.online_as_written("alice")


# -- routing -------------------------------------------------------------------------


def test_a_direct_message_reaches_its_recipient_only() -> None:
    crowd = Crowd("alice", "bob", "carol")
    congested: list[Drainable] = []
    routed = crowd.hub.route(
        crowd["alice"], Envelope("alice", "bob", [b"hi"]), congested
    )
    assert routed == Routed(1)
    assert crowd.read_all() == {
        "alice": b"",
        "bob": b"talk|alice|bob|hi\n",
        "carol": b"",
    }
    assert congested == []


@pytest.mark.parametrize("target", ["zoë", "ZOË", "\uff3aoë"])
def test_a_target_is_found_by_its_clash_key_and_shown_as_its_owner_wrote_it(
    target: str,
) -> None:
    crowd = Crowd("alice", "Zoë")
    routed = crowd.hub.route(crowd["alice"], Envelope("alice", target, [b"hi"]), [])
    assert routed == Routed(1)
    assert crowd.read("Zoë") == "talk|alice|Zoë|hi\n".encode()


def test_the_texts_of_an_envelope_go_as_one_batch_of_deliveries() -> None:
    crowd = Crowd("alice", "bob")
    bob = crowd["bob"].mailbox
    first = bob.next_seq
    routed = crowd.hub.route(
        crowd["alice"], Envelope("alice", "bob", [b"1", b"2", b"3"]), []
    )
    assert routed == Routed(3)
    assert bob.next_seq == first + 3
    assert bob.drain() == b"talk|alice|bob|1\ntalk|alice|bob|2\ntalk|alice|bob|3\n"


def test_a_message_to_nobody_online_is_refused() -> None:
    crowd = Crowd("alice", "bob")
    routed = crowd.hub.route(
        crowd["alice"], Envelope("alice", "dave", [b"1", b"2"]), []
    )
    assert routed == Routed(2, Refusal.NO_SUCH_USER, "dave")
    assert crowd.read_all() == {"alice": b"", "bob": b""}


def test_a_recipient_too_slow_is_kicked_and_the_message_refused() -> None:
    crowd = Crowd("alice")
    slow = crowd.join("Slow", queue=2)
    crowd.read_all()
    slow.mailbox.stalled = True  # its writer made no progress for long
    assert slow.mailbox.put(b"filler\n", 2)
    routed = crowd.hub.route(crowd["alice"], Envelope("alice", "slow", [b"hi"]), [])
    assert routed == Routed(1, Refusal.NO_SUCH_USER, "slow")  # as written
    assert crowd.kicked == [("Slow", TOO_SLOW)]
    assert crowd.read("Slow") == b"filler\n"


def test_a_broadcast_reaches_everyone_but_its_sender() -> None:
    crowd = Crowd("alice", "bob", "carol")
    routed = crowd.hub.route(crowd["alice"], Envelope("alice", "*", [b"a", b"b"]), [])
    assert routed == Routed(2)
    both = b"talk|alice|*|a\ntalk|alice|*|b\n"
    assert crowd.read_all() == {"alice": b"", "bob": both, "carol": both}


def test_a_broadcast_with_nobody_to_hear_it_is_not_refused() -> None:
    crowd = Crowd("alice")
    routed = crowd.hub.route(crowd["alice"], Envelope("alice", "*", [b"a"]), [])
    assert routed == Routed(1)
    assert crowd.read("alice") == b""


def test_a_broadcast_goes_on_past_a_recipient_too_slow_for_it() -> None:
    crowd = Crowd("alice", "bob", "carol")
    bob = crowd["bob"].mailbox
    bob.stalled = True
    while bob.put(b"filler\n"):
        pass
    routed = crowd.hub.route(crowd["alice"], Envelope("alice", "*", [b"a"]), [])
    assert routed == Routed(1)  # a broadcast is not refused for one of many
    assert crowd.kicked == [("bob", TOO_SLOW)]
    assert crowd.read("carol") == b"talk|alice|*|a\n"


def test_recipients_left_congested_are_listed_for_the_sender_to_wait_on() -> None:
    crowd = Crowd("alice", "bob", "carol", queue=4)
    congested: list[Drainable] = []
    hub, alice = crowd.hub, crowd["alice"]
    assert hub.route(alice, Envelope("alice", "bob", [b"1", b"2"]), congested)
    assert congested == []
    assert hub.route(alice, Envelope("alice", "bob", [b"3"]), congested) == Routed(1)
    assert congested == [crowd["bob"].mailbox]
    routed = hub.route(alice, Envelope("alice", "*", [b"4", b"5", b"6"]), congested)
    # Bob has room for no more, but a route always takes one text.
    assert routed == Routed(1)
    # Bob is congested again; carol, one frame in, is not.
    assert congested == [crowd["bob"].mailbox, crowd["bob"].mailbox]


def test_a_route_takes_only_what_fits_the_room_of_every_recipient() -> None:
    crowd = Crowd("alice", "bob", "carol", queue=10)
    carol = crowd["carol"].mailbox
    assert carol.put(b"filler\n", 4)  # room for 2 more before half
    congested: list[Drainable] = []
    texts = [b"%d" % number for number in range(5)]
    routed = crowd.hub.route(crowd["alice"], Envelope("alice", "*", texts), congested)
    assert routed == Routed(2)
    assert congested == [carol]
    assert crowd.read("bob") == b"talk|alice|*|0\ntalk|alice|*|1\n"


# -- observers ------------------------------------------------------------------------


def test_observers_see_every_message_accepted_after_its_delivery() -> None:
    crowd = Crowd("alice", "bob", "carol", queue=10)
    seen: list[tuple[Accepted, bytes]] = []

    def observer(accepted: Accepted) -> None:
        # Delivered already: bob's mailbox holds it.
        seen.append((accepted, crowd.read("bob")))

    hub, alice = crowd.hub, crowd["alice"]
    hub.observe(observer)
    hub.route(alice, Envelope("alice", "bob", [b"1"]), [])
    hub.route(alice, Envelope("alice", "BOB", [b"2", b"3"]), [])
    hub.route(alice, Envelope("alice", "*", [b"4"]), [])
    ms = int(NOW * 1000)
    # The target as the hub knows it, and the ids each text got.
    assert seen == [
        (Accepted("alice", "bob", [b"1"], 1, ms), b"talk|alice|bob|1\n"),
        (
            Accepted("alice", "bob", [b"2", b"3"], 2, ms),
            b"talk|alice|bob|2\ntalk|alice|bob|3\n",
        ),
        (Accepted("alice", "*", [b"4"], 4, ms), b"talk|alice|*|4\n"),
    ]


def test_observers_see_only_the_texts_that_went() -> None:
    crowd = Crowd("alice", "bob", queue=4)
    seen: list[Accepted] = []
    crowd.hub.observe(seen.append)
    texts = [b"1", b"2", b"3", b"4"]
    routed = crowd.hub.route(crowd["alice"], Envelope("alice", "bob", texts), [])
    assert routed == Routed(3)
    assert [list(accepted.texts) for accepted in seen] == [[b"1", b"2", b"3"]]


def test_observers_do_not_see_what_was_refused() -> None:
    crowd = Crowd("alice")
    slow = crowd.join("slow", queue=1)
    crowd.read_all()
    slow.mailbox.put(b"filler\n")
    seen: list[Accepted] = []
    crowd.hub.observe(seen.append)
    hub, alice = crowd.hub, crowd["alice"]
    assert hub.route(alice, Envelope("alice", "dave", [b"1"]), []).refused
    assert hub.route(alice, Envelope("alice", "slow", [b"2"]), []).refused
    assert seen == []


def test_every_observer_is_told_until_it_stops() -> None:
    crowd = Crowd("alice", "bob")
    first: list[Accepted] = []
    second: list[Accepted] = []
    stop_first = crowd.hub.observe(first.append)
    crowd.hub.observe(second.append)
    crowd.hub.route(crowd["alice"], Envelope("alice", "bob", [b"1"]), [])
    stop_first()
    crowd.hub.route(crowd["alice"], Envelope("alice", "*", [b"2"]), [])
    assert [accepted.texts for accepted in first] == [[b"1"]]
    assert [accepted.texts for accepted in second] == [[b"1"], [b"2"]]


# -- presence held back --------------------------------------------------------------


def test_held_presence_waits_for_release_and_goes_in_order() -> None:
    crowd = Crowd("alice")
    hub = crowd.hub
    hub.hold_presence = True
    held = hub.presence_held
    assert not held.is_set()
    crowd.join("bob")
    assert held.is_set()
    crowd.join("carol")
    hub.leave(crowd["bob"])
    # The newcomers' rosters go at once; what others hear waits.
    assert crowd.read_all() == {
        "alice": b"",
        "bob": b"login|bob\nlogin|alice\n",
        "carol": b"login|carol\nlogin|alice\nlogin|bob\n",
    }
    hub.release()
    assert crowd.read_all() == {
        # bob came and went within the batch: alice hears of neither.
        "alice": b"login|carol\n",
        "bob": b"",  # gone before it went out
        # carol's roster named bob: she hears that he left.
        "carol": b"exit|bob\n",
    }
    assert hub.presence_held is not held
    assert not hub.presence_held.is_set()


def test_a_message_goes_after_the_presence_held_before_it() -> None:
    crowd = Crowd("alice", "bob")
    hub = crowd.hub
    hub.hold_presence = True
    crowd.join("carol")
    hub.route(crowd["carol"], Envelope("carol", "alice", [b"hi"]), [])
    assert crowd.read("alice") == b"login|carol\ntalk|carol|alice|hi\n"
    hub.release()
    assert crowd.read("alice") == b""
    assert crowd.read("bob") == b"login|carol\n"


def test_a_crowd_leaving_at_once_costs_each_member_one_put() -> None:
    # 4,000 users dropped at once cost every other user 4,000 holds in
    # its mailbox, one exit after another: seconds of the event loop. The
    # batch's exits are now logged once and go to each member as one block.
    crowd = Crowd("alice", "bob", *(f"u{n}" for n in range(50)))
    hub = crowd.hub
    hub.hold_presence = True
    for n in range(50):
        hub.leave(crowd[f"u{n}"])
    seq = crowd["alice"].mailbox.next_seq
    hub.release()
    assert crowd["alice"].mailbox.next_seq == seq + 1  # one put
    assert crowd.read("alice") == b"".join(b"exit|u%d\n" % n for n in range(50))
    assert crowd.read("bob") == b"".join(b"exit|u%d\n" % n for n in range(50))


def test_a_login_taken_back_after_a_broadcast_is_told_only_to_those_given_it() -> None:
    # A broadcast gives everyone the batch so far; a login after it, taken
    # back, concerns only those given something since (once each, however
    # often they were).
    crowd = Crowd("alice", "bob", "carol")
    hub = crowd.hub
    hub.hold_presence = True
    crowd.join("dave")
    hub.route(crowd["carol"], Envelope("carol", "*", [b"hello all"]), [])
    crowd.join("erin")
    hub.route(crowd["erin"], Envelope("erin", "bob", [b"one"]), [])
    hub.route(crowd["erin"], Envelope("erin", "bob", [b"two"]), [])
    hub.leave(crowd["erin"])
    hub.release()
    assert crowd.read("bob") == (
        b"login|dave\ntalk|carol|*|hello all\n"
        b"login|erin\ntalk|erin|bob|one\ntalk|erin|bob|two\nexit|erin\n"
    )
    assert crowd.read("alice") == b"login|dave\ntalk|carol|*|hello all\n"
    assert crowd.read("dave").endswith(b"talk|carol|*|hello all\n")
    assert b"erin" not in crowd.read("dave")


def test_a_reader_that_keeps_up_takes_a_crowd_larger_than_its_queue_bytes() -> None:
    # 50 exits at once make a block larger than tiny's --queue-bytes: tiny
    # read everything before, and is not dropped for a storm it did not
    # make; lagging had not read what came before, and is.
    crowd = Crowd(*(f"u{n}" for n in range(50)))
    tiny = crowd.join("tiny", queue_bytes=100)
    lagging = crowd.join("lagging", queue_bytes=100)
    crowd.read_all()
    hub = crowd.hub
    hub.route(crowd["u0"], Envelope("u0", "lagging", [b"unread"]), [])
    hub.hold_presence = True
    for n in range(50):
        hub.leave(crowd[f"u{n}"])
    hub.release()
    assert crowd.read("tiny") == b"".join(b"exit|u%d\n" % n for n in range(50))
    assert crowd.kicked == [("lagging", "too slow: outgoing queue full")]
    assert tiny.mailbox.queued_frames == 0
    assert lagging.mailbox.lost


def test_a_login_taken_back_is_told_to_whoever_was_given_it() -> None:
    crowd = Crowd("alice", "bob")
    hub = crowd.hub
    hub.hold_presence = True
    crowd.join("carol")
    # carol talks to alice: alice is given carol's login first.
    hub.route(crowd["carol"], Envelope("carol", "alice", [b"hi"]), [])
    hub.leave(crowd["carol"])
    hub.release()
    assert crowd.read_all() == {
        "alice": b"login|carol\ntalk|carol|alice|hi\nexit|carol\n",
        "bob": b"",  # heard of neither
        "carol": b"login|carol\nlogin|alice\nlogin|bob\n",
    }


def test_room_presence_goes_only_to_the_rooms_members() -> None:
    crowd = Crowd("alice", "bob", "carol")
    hub = crowd.hub
    hub.join_room(crowd["alice"], "#x")
    hub.join_room(crowd["bob"], "#y")
    crowd.read_all()
    hub.hold_presence = True
    hub.join_room(crowd["carol"], "#x")
    hub.leave(crowd["bob"])
    assert crowd.read("carol") == b"join|#x|carol\njoin|#x|alice\n"  # its answer
    hub.release()
    assert crowd.read_all() == {
        "alice": b"join|#x|carol\nexit|bob\n",
        "bob": b"",
        "carol": b"exit|bob\n",
    }


def test_room_presence_held_follows_who_was_in_the_room_at_the_time() -> None:
    # Without global presence an exit goes to the rooms the user was in;
    # held, it is logged for those rooms, and who was in them when it was
    # logged gets it: not one who parted before, nor one who joined after.
    crowd = Crowd("alice", "bob", "carol", "dave", global_presence=False)
    hub = crowd.hub
    for name in ("alice", "bob", "carol"):
        hub.join_room(crowd[name], "#x")
    crowd.read_all()
    hub.hold_presence = True
    hub.part_room(crowd["bob"], "#x")  # before carol leaves
    hub.leave(crowd["carol"])
    hub.join_room(crowd["dave"], "#x")  # after
    hub.release()
    assert crowd.read_all() == {
        "alice": b"part|#x|bob\nexit|carol\njoin|#x|dave\n",
        "bob": b"part|#x|bob\n",  # its own, at once
        "carol": b"",
        "dave": b"join|#x|dave\njoin|#x|alice\n",  # its answer, at once
    }


def test_a_member_who_joined_an_empty_room_hears_who_joins_next() -> None:
    crowd = Crowd("alice", "bob", global_presence=False)
    hub = crowd.hub
    hub.hold_presence = True
    hub.join_room(crowd["alice"], "#new")  # nobody told: nobody there
    hub.join_room(crowd["bob"], "#new")
    hub.release()
    assert crowd.read_all() == {
        "alice": b"join|#new|alice\njoin|#new|bob\n",
        "bob": b"join|#new|bob\njoin|#new|alice\n",
    }


def test_presence_not_held_goes_at_once() -> None:
    crowd = Crowd("alice")
    crowd.join("bob")
    assert crowd.read("alice") == b"login|bob\n"
    assert not crowd.hub.presence_held.is_set()


def test_a_member_with_no_room_at_release_is_kicked() -> None:
    crowd = Crowd("alice")
    slow = crowd.join("slow", queue=10)
    crowd.read_all()
    # Its channel full of empty batches: nothing more can go.
    while slow.mailbox.put(b"", 0):
        pass
    crowd.hub.hold_presence = True
    crowd.join("bob")
    assert crowd.kicked == []
    crowd.hub.release()
    assert crowd.kicked == [("slow", TOO_SLOW)]
    assert crowd.read("alice") == b"login|bob\n"


async def test_presence_held_wakes_whoever_sends_it() -> None:
    crowd = Crowd("alice")
    hub = crowd.hub
    hub.hold_presence = True
    released: list[bytes] = []

    async def sender() -> None:
        await hub.presence_held.wait()
        hub.release()
        released.append(crowd.read("alice"))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            crowd.join("bob")
    assert released == [b"login|bob\n"]


def test_a_crowd_of_stalled_users_leaving_at_once_nests_no_call_per_user() -> None:
    """Each user too slow to take an exit is kicked, and its own exit is
    announced: far more users than the recursion limit allows calls."""

    async def main() -> None:
        hub = Hub()
        crowd = sys.getrecursionlimit() * 2
        members: list[Member] = []

        def kicker(index: int) -> Callable[[str], None]:
            return lambda reason: hub.leave(members[index])

        for index in range(crowd):
            member = Member(f"u{index}", Mailbox(crowd + 1, 1 << 30), kicker(index))
            members.append(member)
            hub.join(member)
        for member in members:
            # Stalled and full: the next frame for it kicks it.
            member.mailbox = Mailbox(1, 1 << 20)
            assert member.mailbox.put(b"filler\n")
        hub.leave(members[0])
        assert len(hub) == 0

    trio.run(main)


# -- protocol 2: ids, time, versions, echo -------------------------------------------


def test_each_message_gets_the_next_id_in_routing_order() -> None:
    crowd = Crowd("alice", "carol")
    crowd.join("bob", version=2)
    crowd.read_all()
    hub, alice, carol = crowd.hub, crowd["alice"], crowd["carol"]
    hub.route(alice, Envelope("alice", "bob", [b"one", b"two"]), [])
    hub.route(carol, Envelope("carol", "*", [b"three"]), [])
    assert crowd.read("bob") == (
        b"msg|1|" + STAMP + b"|alice|bob|one\n"
        b"msg|2|" + STAMP + b"|alice|bob|two\n"
        b"msg|3|" + STAMP + b"|carol|*|three\n"
    )
    assert hub.next_id == 4


def test_a_refused_message_gets_no_id() -> None:
    crowd = Crowd("alice")
    crowd.join("bob", version=2)
    crowd.read_all()
    hub, alice = crowd.hub, crowd["alice"]
    assert hub.route(alice, Envelope("alice", "nobody", [b"x"]), []).refused
    hub.route(alice, Envelope("alice", "bob", [b"y"]), [])
    assert crowd.read("bob") == b"msg|1|" + STAMP + b"|alice|bob|y\n"


def test_ids_start_from_the_clock_by_default() -> None:
    # In microseconds: above any id a server issued before a restart, unless
    # it accepted more than a million messages a second.
    before = int(NOW * 1_000_000)
    assert Hub(clock=lambda: NOW).next_id >= before - 10**9 * 10**6


def test_a_broadcast_is_encoded_per_version_once_for_all() -> None:
    crowd = Crowd("alice", "old1", "old2")
    crowd.join("new1", version=2)
    crowd.join("new2", version=2)
    crowd.read_all()
    crowd.hub.route(crowd["alice"], Envelope("alice", "*", [b"hi"]), [])
    # The very same bytes object in every mailbox of a version: one encoding.
    batches = {
        name: crowd[name].mailbox._inbox.receive_nowait()
        for name in ("old1", "old2", "new1", "new2")
    }
    assert batches["old1"][1] is batches["old2"][1]
    assert batches["new1"][1] is batches["new2"][1]
    assert batches["old1"][1] == b"talk|alice|*|hi\n"
    assert batches["new1"][1] == b"msg|1|" + STAMP + b"|alice|*|hi\n"


def test_echo_gives_the_sender_its_message_with_the_target_it_named() -> None:
    crowd = Crowd("bob")
    crowd.join("alice", version=2, echo=True)
    crowd.hub.join_room(crowd["alice"], "#lunch")
    crowd.hub.join_room(crowd["bob"], "#LUNCH")
    crowd.read_all()
    hub, alice = crowd.hub, crowd["alice"]
    hub.route(alice, Envelope("alice", "BOB", [b"dm"]), [])
    hub.route(alice, Envelope("alice", "#Lunch", [b"room"]), [])
    hub.route(alice, Envelope("alice", "*", [b"all"]), [])
    assert crowd.read("alice") == (
        b"msg|1|" + STAMP + b"|alice|bob|dm\n"
        b"msg|2|" + STAMP + b"|alice|#lunch|room\n"
        b"msg|3|" + STAMP + b"|alice|*|all\n"
    )
    assert crowd.read("bob") == (
        b"talk|alice|bob|dm\ntalk|alice|#lunch|room\ntalk|alice|*|all\n"
    )


@pytest.mark.parametrize("to", ["bob", "*"])
def test_a_route_takes_only_what_fits_the_room_of_the_sender_it_echoes_to(
    to: str,
) -> None:
    # The sender's own queue is half full of echoes it has not read; the
    # recipient's is empty: what goes at once must fit the sender's queue
    # too, or the sender is dropped for its own messages.
    crowd = Crowd("bob", queue=10)
    crowd.join("alice", queue=10, version=2, echo=True)
    crowd.read_all()
    alice = crowd["alice"]
    assert alice.mailbox.put(b"echoes\n", 5)
    congested: list[Drainable] = []
    texts = [b"%d" % number for number in range(8)]
    routed = crowd.hub.route(alice, Envelope("alice", to, texts), congested)
    assert routed == Routed(1)
    assert crowd.kicked == []
    assert congested == [alice.mailbox]
    assert crowd.read("bob") == b"talk|alice|" + to.encode() + b"|0\n"


def test_no_echo_for_a_refused_message() -> None:
    crowd = Crowd()
    crowd.join("alice", version=2, echo=True)
    crowd.read_all()
    hub, alice = crowd.hub, crowd["alice"]
    assert hub.route(alice, Envelope("alice", "bob", [b"x"]), []).refused
    assert hub.route(alice, Envelope("alice", "#nope", [b"x"]), []).refused
    assert crowd.read("alice") == b""


# -- rooms ---------------------------------------------------------------------------


def test_a_joiner_gets_itself_then_the_members_and_they_get_the_joiner() -> None:
    crowd = Crowd("alice", "bob", "carol")
    hub = crowd.hub
    hub.join_room(crowd["alice"], "#café")
    hub.join_room(crowd["bob"], "#CAFÉ")
    assert crowd.read_all() == {
        "alice": "join|#café|alice\njoin|#café|bob\n".encode(),
        "bob": "join|#café|bob\njoin|#café|alice\n".encode(),
        "carol": b"",
    }
    hub.join_room(crowd["carol"], "#cafe\u0301")  # NFKC: the same room
    assert crowd.read_all() == {
        "alice": "join|#café|carol\n".encode(),
        "bob": "join|#café|carol\n".encode(),
        "carol": "join|#café|carol\njoin|#café|alice\njoin|#café|bob\n".encode(),
    }
    assert hub.rooms() == [("#café", 3)]
    assert hub.room_members("#Café") == ["alice", "bob", "carol"]


def test_a_join_list_arrives_in_one_piece() -> None:
    crowd = Crowd(*[f"user{n}" for n in range(5)], "zed")
    for n in range(5):
        crowd.hub.join_room(crowd[f"user{n}"], "#big")
    crowd.read_all()
    zed = crowd["zed"]
    crowd.hub.join_room(zed, "#big")
    assert zed.mailbox.in_channel == 1  # one batch: nothing can come between


def test_joining_a_room_twice_is_refused() -> None:
    crowd = Crowd("alice")
    crowd.hub.join_room(crowd["alice"], "#x")
    with pytest.raises(RoomRefused) as refused:
        crowd.hub.join_room(crowd["alice"], "#X")
    assert refused.value.code == "already-in-room"


def test_max_rooms_per_user() -> None:
    crowd = Crowd("alice", "bob", max_rooms=2)
    hub = crowd.hub
    hub.join_room(crowd["alice"], "#one")
    hub.join_room(crowd["alice"], "#two")
    with pytest.raises(RoomRefused) as refused:
        hub.join_room(crowd["alice"], "#three")
    assert refused.value.code == "too-many-rooms"
    assert [name for name, _ in hub.rooms()] == ["#one", "#two"]
    hub.part_room(crowd["alice"], "#one")
    hub.join_room(crowd["alice"], "#three")
    hub.join_room(crowd["bob"], "#one")  # the cap is per user


def test_a_part_is_told_to_the_members_and_the_parting_user() -> None:
    crowd = Crowd("alice", "bob", "carol")
    hub = crowd.hub
    for name in ("alice", "bob"):
        hub.join_room(crowd[name], "#x")
    crowd.read_all()
    hub.part_room(crowd["alice"], "#X")
    assert crowd.read_all() == {
        "alice": b"part|#x|alice\n",
        "bob": b"part|#x|alice\n",
        "carol": b"",
    }
    with pytest.raises(RoomRefused) as refused:
        hub.part_room(crowd["alice"], "#x")
    assert (refused.value.code, refused.value.detail) == ("not-in-room", "#x")


def test_a_room_exists_while_it_has_members() -> None:
    crowd = Crowd("alice", "bob")
    hub = crowd.hub
    hub.join_room(crowd["alice"], "#First")
    hub.part_room(crowd["alice"], "#first")
    assert hub.rooms() == []
    # Made anew: it is written the way its new first member wrote it.
    hub.join_room(crowd["bob"], "#FIRST")
    assert hub.rooms() == [("#FIRST", 1)]
    hub.leave(crowd["bob"])
    assert hub.rooms() == []


def test_talk_to_a_room_reaches_its_other_members_only() -> None:
    crowd = Crowd("alice", "bob", "carol")
    hub = crowd.hub
    for name in ("alice", "bob"):
        hub.join_room(crowd[name], "#x")
    crowd.read_all()
    assert hub.route(crowd["alice"], Envelope("alice", "#x", [b"hi"]), []) == Routed(1)
    assert crowd.read_all() == {
        "alice": b"",
        "bob": b"talk|alice|#x|hi\n",
        "carol": b"",
    }


@pytest.mark.parametrize("room", ["#x", "#nowhere"])
def test_talk_to_a_room_one_is_not_in_is_refused(room: str) -> None:
    crowd = Crowd("alice", "bob")
    crowd.hub.join_room(crowd["bob"], "#x")
    crowd.read_all()
    routed = crowd.hub.route(crowd["alice"], Envelope("alice", room, [b"a", b"b"]), [])
    assert routed == Routed(2, Refusal.NOT_IN_ROOM, room)
    assert crowd.read("bob") == b""


def test_online_as_written_takes_rooms_as_their_first_member_wrote_them() -> None:
    crowd = Crowd("alice")
    crowd.hub.join_room(crowd["alice"], "#Lunch")
    assert crowd.hub.online_as_written("#Lunch")
    assert not crowd.hub.online_as_written("#lunch")


# -- presence by rooms ---------------------------------------------------------------


def test_with_presence_by_rooms_a_login_is_acknowledged_to_its_owner_only() -> None:
    crowd = Crowd("alice", "bob", global_presence=False)
    crowd.join("carol")
    assert crowd.read_all() == {"alice": b"", "bob": b"", "carol": b"login|carol\n"}


def test_with_presence_by_rooms_there_is_no_everyone_room() -> None:
    crowd = Crowd("alice", "bob", global_presence=False)
    routed = crowd.hub.route(crowd["alice"], Envelope("alice", "*", [b"x"]), [])
    assert routed == Routed(1, Refusal.NOT_IN_ROOM, "*")
    assert crowd.read("bob") == b""
    # Direct messages still reach anyone online.
    assert crowd.hub.route(crowd["alice"], Envelope("alice", "bob", [b"y"]), [])
    assert crowd.read("bob") == b"talk|alice|bob|y\n"


def test_with_presence_by_rooms_one_exit_per_user_who_shared_a_room() -> None:
    crowd = Crowd("alice", "bob", "carol", "dave", global_presence=False)
    hub = crowd.hub
    for room in ("#one", "#two", "#three"):
        hub.join_room(crowd["alice"], room)
        hub.join_room(crowd["bob"], room)
    hub.join_room(crowd["carol"], "#three")
    crowd.read_all()
    hub.leave(crowd["alice"])
    assert crowd.read_all() == {
        "alice": b"",
        "bob": b"exit|alice\n",
        "carol": b"exit|alice\n",
        "dave": b"",
    }
    assert hub.rooms() == [("#one", 1), ("#two", 1), ("#three", 2)]


def test_with_global_presence_a_user_leaves_its_rooms_with_exit_not_part() -> None:
    crowd = Crowd("alice", "bob", "carol")
    hub = crowd.hub
    hub.join_room(crowd["alice"], "#x")
    hub.join_room(crowd["bob"], "#x")
    crowd.read_all()
    hub.leave(crowd["alice"])
    assert crowd.read_all() == {
        "alice": b"",
        "bob": b"exit|alice\n",
        "carol": b"exit|alice\n",
    }
    assert hub.room_members("#x") == ["bob"]


def test_a_storm_of_logins_and_exits_within_a_batch_costs_others_nothing() -> None:
    crowd = Crowd("alice", "bob")
    hub = crowd.hub
    hub.hold_presence = True
    for n in range(50):
        crowd.join(f"bot{n}")
        hub.leave(crowd[f"bot{n}"])
    hub.release()
    sent = crowd.read_all()
    assert sent["alice"] == sent["bob"] == b""
    # A login that stays is told, once.
    crowd.join("carol")
    hub.release()
    assert crowd.read("alice") == b"login|carol\n"
