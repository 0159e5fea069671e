"""Account passwords: their rules, their hashes, and how often a login may fail.

- ``check_password`` says whether a new password keeps to the protocol's
  rules (8 to 256 characters, no control characters); ``BadPassword`` is
  the ``bad-password`` refusal.
- ``Hasher`` hashes and verifies passwords with Argon2id (``argon2-cffi``,
  the reference implementation's C code). By default with OWASP's
  parameters (19 MiB of memory, 2 passes, 1 lane), tunable for tests and
  raised for new hashes without invalidating old ones: ``needs_rehash``
  says when a stored hash was made with other parameters, so a login can
  hash the password again. The async methods run the work in a worker
  thread behind the hasher's own ``trio.CapacityLimiter`` (by default
  half the CPUs, at least one), so a flood of logins queues for it
  instead of taking every core or ``19 MiB`` per attempt; the sync ones
  are for command-line tools. The comparison of hashes is the library's,
  in constant time. Passwords are normalized to NFC first (the same
  password typed on two keyboards is the same password), and never
  logged or shown in a repr.
- ``LoginThrottle`` counts failed logins per account and per address,
  sans-IO: the caller says what happened and when (``now``, in seconds
  of any monotonic clock) and asks ``allowed`` before it checks a
  password. By default 3 failures a minute per account, as ergo allows,
  and 10 per address (an address may be many people behind one NAT).
"""

from __future__ import annotations

import math
import os
import unicodedata
from collections import deque

import argon2
import trio
from argon2.exceptions import InvalidHashError, VerificationError

from ..protocol.messages import ErrorCode
from ..protocol.messages import check_password as _check_password

__all__ = [
    "MEMORY_KIB",
    "PARALLELISM",
    "TIME_COST",
    "BadPassword",
    "Hasher",
    "LoginThrottle",
    "check_password",
]

# OWASP's lowest recommended Argon2id parameters (Password Storage Cheat
# Sheet): m=19 MiB, t=2, p=1. About 0.1 s of one core per hash.
MEMORY_KIB = 19 * 1024
TIME_COST = 2
PARALLELISM = 1


class BadPassword(ValueError):
    """A new password breaks the rules; ``code`` is ``bad-password``."""

    code = ErrorCode.BAD_PASSWORD


def check_password(password: str) -> None:
    """Raise BadPassword unless *password* may be a new password: 8 to 256
    characters, none of them a control character."""
    try:
        _check_password(password)
    except ValueError as problem:
        raise BadPassword(str(problem)) from None


def _normalized(password: str) -> str:
    return unicodedata.normalize("NFC", password)


def _default_threads() -> int:
    return max(1, (os.cpu_count() or 1) // 2)


class Hasher:
    """Argon2id hashing and verification of passwords.

    *memory_kib*, *time_cost* and *parallelism* are the parameters of new
    hashes; a hash made with others still verifies, and ``needs_rehash``
    says so. *limiter* bounds the hashes computed at once by the async
    methods (by default one per two CPUs).
    """

    def __init__(
        self,
        *,
        memory_kib: int = MEMORY_KIB,
        time_cost: int = TIME_COST,
        parallelism: int = PARALLELISM,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self._argon2 = argon2.PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            type=argon2.Type.ID,
        )
        self.limiter = limiter or trio.CapacityLimiter(_default_threads())

    def __repr__(self) -> str:
        a = self._argon2
        return f"Hasher(m={a.memory_cost} KiB, t={a.time_cost}, p={a.parallelism})"

    def hash_sync(self, password: str) -> str:
        """The Argon2id hash of *password* (a PHC string with its salt and
        parameters), computed in this thread."""
        return self._argon2.hash(_normalized(password))

    def verify_sync(self, stored_hash: str, password: str) -> bool:
        """Whether *password* matches *stored_hash*, computed in this
        thread; False for a hash that is not one (damaged, or another
        scheme's)."""
        try:
            return self._argon2.verify(stored_hash, _normalized(password))
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        """Whether *stored_hash* was made with other parameters than new
        hashes get (or is not an Argon2id hash at all)."""
        try:
            return self._argon2.check_needs_rehash(stored_hash)
        except (InvalidHashError, ValueError):
            return True

    async def hash(self, password: str) -> str:
        """``hash_sync`` in a worker thread, within the limiter."""
        return await trio.to_thread.run_sync(
            self.hash_sync, password, limiter=self.limiter
        )

    async def verify(self, stored_hash: str, password: str) -> bool:
        """``verify_sync`` in a worker thread, within the limiter."""
        return await trio.to_thread.run_sync(
            self.verify_sync, stored_hash, password, limiter=self.limiter
        )


class LoginThrottle:
    """Failed logins, per account and per address, in a sliding window.

    ``allowed`` is False once *per_account* logins to one account, or
    *per_address* logins from one address, have failed within the last
    *window* seconds; it becomes True again as the oldest of those
    failures leaves the window. A success clears the account's count
    (not the address's: an address that guesses can't wipe its record by
    logging in to an account of its own). Memory: at most *per_account*
    or *per_address* times per key, and keys with no failure in the window
    are forgotten as new ones come.

    An attempt being checked counts as failed until it proves right
    (``attempt``), so that guesses sent at once are limited as those sent
    one after another are. An attempt that finds no room only because of
    others still being checked waits for them (``settled``): correct logins
    sent at once (a user's devices reconnecting) are not refused for
    failures that never happen.
    """

    def __init__(
        self, *, per_account: int = 3, per_address: int = 10, window: float = 60.0
    ) -> None:
        if per_account < 1 or per_address < 1 or not 0 < window < math.inf:
            raise ValueError("a throttle allows one failure at least, in a window")
        self.per_account = per_account
        self.per_address = per_address
        self.window = window
        self._accounts: dict[str, deque[float]] = {}
        self._addresses: dict[str, deque[float]] = {}
        self._sweep_at = 1024
        # Attempts being checked: when each started, per account; how
        # many, per address; and what waiters wait on, set when one ends.
        self._checking_account: dict[str, list[float]] = {}
        self._checking_address: dict[str, int] = {}
        self._ended = trio.Event()

    def allowed(self, account_key: str, address: str, now: float) -> bool:
        """Whether a login to *account_key* from *address* may be tried."""
        return self._room(self._accounts, account_key, now) and self._room(
            self._addresses, address, now
        )

    def worth_waiting(self, account_key: str, address: str, now: float) -> bool:
        """Whether a login that is not ``allowed`` may be once attempts
        being checked end: each limit that is full has an attempt of its
        own being checked (counted as failed until it proves right). A
        limit full of settled failures is a refusal now, whatever others
        are checking."""
        return (
            self._room(self._accounts, account_key, now)
            or account_key in self._checking_account
        ) and (
            self._room(self._addresses, address, now)
            or address in self._checking_address
        )

    async def settled(self) -> None:
        """Wait until an attempt being checked ends."""
        await self._ended.wait()

    def attempt(self, account_key: str, address: str, now: float) -> None:
        """An attempt to *account_key* from *address* starts being checked:
        counted as failed at *now* until ``ended``."""
        self.failed(account_key, address, now)
        self._checking_account.setdefault(account_key, []).append(now)
        self._checking_address[address] = self._checking_address.get(address, 0) + 1

    def ended(self, account_key: str, address: str, when: float, right: bool) -> None:
        """The attempt that started at *when* ended; *right*: it proved
        right, and its failure is taken back (``succeeded`` then forgets
        the account's others)."""
        started = self._checking_account[account_key]
        started.remove(when)
        if not started:
            del self._checking_account[account_key]
        left = self._checking_address[address] - 1
        if left:
            self._checking_address[address] = left
        else:
            del self._checking_address[address]
        if right:
            self.forget(account_key, address, when)
        self._ended.set()
        self._ended = trio.Event()

    def failed(self, account_key: str, address: str, now: float) -> None:
        """A login to *account_key* from *address* failed at *now*."""
        self._count(self._accounts, account_key, now, self.per_account)
        self._count(self._addresses, address, now, self.per_address)
        if len(self._accounts) + len(self._addresses) > self._sweep_at:
            self._sweep(now)

    def forget(self, account_key: str, address: str, when: float) -> None:
        """Take back the failure counted at *when* (an attempt counted as
        failed while it was checked, that proved right)."""
        for failures, key in (
            (self._accounts, account_key),
            (self._addresses, address),
        ):
            times = failures.get(key)
            if times is not None and when in times:
                times.remove(when)

    def succeeded(self, account_key: str, address: str, now: float) -> None:
        """A login to *account_key* from *address* worked: the account's
        failures are forgotten, but for those of attempts still being
        checked (guesses sent alongside it count until they prove right)."""
        times = self._accounts.pop(account_key, None)
        checking = self._checking_account.get(account_key)
        if times and checking:
            kept = deque((t for t in times if t in checking), maxlen=self.per_account)
            if kept:
                self._accounts[account_key] = kept

    def __len__(self) -> int:
        """How many accounts and addresses have failures remembered."""
        return len(self._accounts) + len(self._addresses)

    def _room(self, failures: dict[str, deque[float]], key: str, now: float) -> bool:
        times = failures.get(key)
        if times is None:
            return True
        limit = self.per_account if failures is self._accounts else self.per_address
        return len(times) < limit or now - times[0] >= self.window

    @staticmethod
    def _count(
        failures: dict[str, deque[float]], key: str, now: float, limit: int
    ) -> None:
        times = failures.get(key)
        if times is None:
            times = failures[key] = deque(maxlen=limit)
        times.append(now)

    def _sweep(self, now: float) -> None:
        """Forget the keys whose last failure has left the window."""
        for failures in (self._accounts, self._addresses):
            for key in [k for k, t in failures.items() if now - t[-1] >= self.window]:
                del failures[key]
        self._sweep_at = max(1024, 2 * len(self))
