"""Passwords: their rules, Argon2id hashes made in worker threads behind a
limiter, and the throttle on failed logins."""

from __future__ import annotations

import logging
import unicodedata
from pathlib import Path

import pytest
import trio
import trio.testing

from trichat.server.passwords import (
    MEMORY_KIB,
    PARALLELISM,
    TIME_COST,
    BadPassword,
    Hasher,
    LoginThrottle,
    check_password,
)
from trichat.server.store import Store


def cheap(limiter: trio.CapacityLimiter | None = None) -> Hasher:
    return Hasher(memory_kib=8, time_cost=1, limiter=limiter)


@pytest.mark.parametrize(
    "password", ["12345678", "x" * 256, "correct horse battery", "pässwörd|€🔑"]
)
def test_good_passwords(password: str) -> None:
    check_password(password)


@pytest.mark.parametrize(
    "password", ["", "1234567", "x" * 257, "tab\there", "new\nline", "nul\x00byte"]
)
def test_bad_passwords(password: str) -> None:
    with pytest.raises(BadPassword) as refused:
        check_password(password)
    assert refused.value.code.value == "bad-password"


def test_the_default_parameters_are_at_least_owasps() -> None:
    assert (MEMORY_KIB, TIME_COST, PARALLELISM) >= (19 * 1024, 2, 1)
    made = Hasher().hash_sync("correct horse")
    assert made.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert Hasher().verify_sync(made, "correct horse")


def test_hashes_are_salted_and_verify() -> None:
    hasher = cheap()
    one, two = hasher.hash_sync("password1"), hasher.hash_sync("password1")
    assert one != two
    assert "password1" not in one
    assert hasher.verify_sync(one, "password1")
    assert hasher.verify_sync(two, "password1")
    assert not hasher.verify_sync(one, "password2")
    assert not hasher.verify_sync("not a hash", "password1")
    assert not hasher.verify_sync(one[:-4], "password1")


def test_a_password_is_the_same_however_its_accents_are_typed() -> None:
    hasher = cheap()
    composed = unicodedata.normalize("NFC", "crème brûlée")
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    assert hasher.verify_sync(hasher.hash_sync(composed), decomposed)


def test_needs_rehash_when_the_parameters_change() -> None:
    old = cheap().hash_sync("password1")
    assert not cheap().needs_rehash(old)
    assert Hasher(memory_kib=16, time_cost=1).needs_rehash(old)
    assert Hasher(memory_kib=8, time_cost=2).needs_rehash(old)
    assert cheap().needs_rehash("$2b$12$something-else")


def test_a_hasher_says_its_parameters_not_a_password() -> None:
    assert repr(cheap()) == "Hasher(m=8 KiB, t=1, p=1)"


async def test_hashing_waits_for_the_limiter() -> None:
    limiter = trio.CapacityLimiter(1)
    hasher = cheap(limiter)
    made: list[str] = []

    async def hash_one() -> None:
        made.append(await hasher.hash("password1"))

    async with trio.open_nursery() as nursery, limiter:  # the only thread is taken
        nursery.start_soon(hash_one)
        nursery.start_soon(hash_one)
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.statistics().tasks_waiting == 2
        assert made == []
    assert len(made) == 2
    assert await hasher.verify(made[0], "password1")
    assert not await hasher.verify(made[1], "password2")


async def test_passwords_are_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = Store(tmp_path / "t.db", hasher=cheap())
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.register("alice", "sekrit-password")
        assert await store.verify("alice", "sekrit-password")
        assert not await store.verify("alice", "wrong-password")
        await store.set_password("alice", "other-sekrit")
        nursery.cancel_scope.cancel()
    logged = caplog.text
    assert "sekrit" not in logged
    assert "wrong-password" not in logged


# -- the throttle ----------------------------------------------------------------


def test_three_failures_a_minute_per_account() -> None:
    throttle = LoginThrottle(per_account=3, per_address=100, window=60)
    for t in (0, 10, 20):
        assert throttle.allowed("alice", f"10.0.0.{t}", t)
        throttle.failed("alice", f"10.0.0.{t}", t)
    # From anywhere: the account is what is guessed at.
    assert not throttle.allowed("alice", "10.0.0.99", 30)
    assert throttle.allowed("bob", "10.0.0.99", 30)
    # The first failure leaves the window a minute after it was made.
    assert not throttle.allowed("alice", "10.0.0.99", 59.9)
    assert throttle.allowed("alice", "10.0.0.99", 60)
    throttle.failed("alice", "10.0.0.99", 60)
    assert not throttle.allowed("alice", "10.0.0.99", 61)


def test_failures_per_address_across_accounts() -> None:
    throttle = LoginThrottle(per_account=3, per_address=5, window=60)
    for i in range(5):
        assert throttle.allowed(f"user{i}", "10.0.0.1", i)
        throttle.failed(f"user{i}", "10.0.0.1", i)
    assert not throttle.allowed("someone-else", "10.0.0.1", 6)
    assert throttle.allowed("someone-else", "10.0.0.2", 6)
    assert throttle.allowed("someone-else", "10.0.0.1", 60)


def test_a_success_clears_the_account_not_the_address() -> None:
    throttle = LoginThrottle(per_account=2, per_address=3, window=60)
    throttle.failed("alice", "10.0.0.1", 0)
    throttle.failed("alice", "10.0.0.1", 1)
    assert not throttle.allowed("alice", "10.0.0.2", 2)
    throttle.succeeded("alice", "10.0.0.2", 3)
    assert throttle.allowed("alice", "10.0.0.2", 3)
    # The address that failed twice has one try left, whatever it logs in to.
    throttle.succeeded("mallory", "10.0.0.1", 4)
    throttle.failed("bob", "10.0.0.1", 5)
    assert not throttle.allowed("mallory", "10.0.0.1", 6)


def test_attempts_being_checked_count_as_failed_until_they_end() -> None:
    throttle = LoginThrottle(per_account=2, per_address=10, window=60)
    throttle.attempt("alice", "10.0.0.1", 0)
    throttle.attempt("alice", "10.0.0.2", 0)
    # Full, but only of attempts still being checked: a third waits for
    # them (settled) rather than being refused.
    assert not throttle.allowed("alice", "10.0.0.3", 1)
    assert throttle.worth_waiting("alice", "10.0.0.3", 1)
    throttle.ended("alice", "10.0.0.1", 0, right=True)
    assert throttle.allowed("alice", "10.0.0.3", 1)
    throttle.ended("alice", "10.0.0.2", 0, right=False)
    # Full of settled failures: others' checks (bob's, from the same
    # address) are no reason to wait.
    throttle.failed("alice", "10.0.0.3", 1)
    throttle.attempt("bob", "10.0.0.3", 1)
    assert not throttle.allowed("alice", "10.0.0.3", 2)
    assert not throttle.worth_waiting("alice", "10.0.0.3", 2)
    throttle.ended("bob", "10.0.0.3", 1, right=True)
    assert not throttle.allowed("alice", "10.0.0.4", 3)


def test_a_success_keeps_the_failures_of_guesses_still_being_checked() -> None:
    # A correct login alongside guesses (sent at the same time) must not
    # wipe them: each counts until it proves right.
    throttle = LoginThrottle(per_account=2, per_address=100, window=60)
    throttle.attempt("alice", "10.0.0.1", 0)  # the owner
    throttle.attempt("alice", "10.0.0.9", 1)  # a guess
    throttle.ended("alice", "10.0.0.1", 0, right=True)
    throttle.succeeded("alice", "10.0.0.1", 2)
    throttle.ended("alice", "10.0.0.9", 1, right=False)
    throttle.failed("alice", "10.0.0.9", 3)
    assert not throttle.allowed("alice", "10.0.0.9", 4)


async def test_settled_wakes_when_an_attempt_ends() -> None:
    throttle = LoginThrottle()
    throttle.attempt("alice", "10.0.0.1", 0)
    woken = trio.Event()

    async def waiter() -> None:
        await throttle.settled()
        woken.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not woken.is_set()
        throttle.ended("alice", "10.0.0.1", 0, right=True)
    assert woken.is_set()
    assert throttle.allowed("alice", "10.0.0.1", 1)


def test_the_throttle_forgets_old_failures() -> None:
    throttle = LoginThrottle(per_account=3, per_address=3, window=60)
    for i in range(2000):
        throttle.failed(f"user{i}", f"10.0.{i // 256}.{i % 256}", float(i) / 100)
    remembered = len(throttle)
    assert remembered > 2000
    # A minute later every one of those has left the window.
    for i in range(600):
        throttle.failed(f"new{i}", "10.1.0.1", 100 + float(i) / 100)
    # Only the new accounts and their address are left.
    assert len(throttle) == 600 + 1 < remembered


def test_a_throttle_allows_something() -> None:
    with pytest.raises(ValueError, match="one failure"):
        LoginThrottle(per_account=0)
    with pytest.raises(ValueError, match="one failure"):
        LoginThrottle(window=0)
