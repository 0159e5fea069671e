"""History as the server's memory holds it: the stored message, and the
newest messages of the conversations used last (``Recent``), which answer
the pages clients ask for most without reading the store's file. No I/O
and no threads: the store (``store.py``) reads and writes the file, and
tells ``Recent`` what each committed group holds."""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeAlias

import attrs

from .hub import Accepted

__all__ = [
    "TAIL",
    "TAIL_COST",
    "Recent",
    "Row",
    "StoredMessage",
    "message_cost",
    "newest_first",
]

# The newest messages of a conversation kept in memory (see Recent): the
# pages clients ask for most fit (the terminal's join and /history ask for
# 20), as do the 100-message pages of a client that scrolls.
TAIL = 100


@attrs.frozen
class StoredMessage:
    """A message as the store keeps it: its id and time (milliseconds since
    the epoch, UTC), who sent it, to whom (a name, a room as its first
    member wrote it, or ``*``), and its text."""

    id: int
    time_ms: int
    sender: str
    to: str
    text: str


Row: TypeAlias = tuple[tuple[int, ...], Accepted]
"""Messages as the conversations that keep them keep them: their ids (in
order: the same tuple for every message between the same two accounts,
whoever sent it), and the messages as the hub accepted them (one or more
texts, numbered on from the first id). A row per ``Accepted``, not per
text: the event loop only appends it, and the store's writer thread
unpacks it with C code (see ``store._chunk``)."""


def newest_first(messages: Sequence[Accepted], most: int) -> Iterator[StoredMessage]:
    """The newest *most* texts of *messages* (oldest first), newest first,
    each a message of its own."""
    for sender, to, texts, first, time_ms in reversed(messages):
        for i in range(len(texts) - 1, -1, -1):
            if most <= 0:
                return
            most -= 1
            yield StoredMessage(first + i, time_ms, sender, to, texts[i].decode())


class _Tail:
    """The newest messages of one conversation that are in the file:
    *loaded* (oldest first), then *fresh*, the rows commits brought since,
    turned into messages only when a page needs them (a busy room nobody
    asks about costs an append and a sum per committed row). *whole*: the
    file holds no older message of the conversation. *size*: about the
    memory they take, in bytes (see ``message_cost``)."""

    __slots__ = ("fresh", "fresh_count", "fresh_size", "loaded", "loaded_size", "whole")

    def __init__(self, loaded: list[StoredMessage], whole: bool) -> None:
        self.loaded = loaded
        self.loaded_size = sum(message_cost(len(m.text)) for m in loaded)
        self.whole = whole
        self.fresh: deque[Accepted] = deque()
        self.fresh_count = 0
        self.fresh_size = 0

    @property
    def size(self) -> int:
        return TAIL_COST + self.loaded_size + self.fresh_size

    def add(self, accepted: Accepted, length: int) -> int:
        """Committed: *accepted*; how many bytes more the tail takes. (The
        event loop's work for every row of every group: kept short.)"""
        texts = accepted.texts
        count = len(texts)
        cost = _MESSAGE_COST * count + (
            len(texts[0]) if count == 1 else sum(map(len, texts))
        )
        self.fresh_count += count
        self.fresh.append(accepted)
        self.fresh_size += cost
        if self.fresh_count < length + length:
            return cost
        return cost - self._trim(length)

    def _trim(self, length: int) -> int:
        """Keep only the rows that hold the newest *length* (the loaded
        messages are older than all of them); how many bytes that freed."""
        fresh = self.fresh
        freed = self.loaded_size
        while self.fresh_count - len(fresh[0].texts) >= length:
            texts = fresh.popleft().texts
            self.fresh_count -= len(texts)
            cost = row_cost(texts)
            self.fresh_size -= cost
            freed += cost
        self.loaded = []
        self.loaded_size = 0
        self.whole = False
        return freed

    def held(self, length: int) -> list[StoredMessage]:
        """The messages it holds, oldest first (not to be changed): the
        newest of the file's, all of them if *whole*."""
        if self.fresh:
            if len(self.loaded) + self.fresh_count > length:
                self.whole = False
            fresh = list(newest_first(self.fresh, length))
            fresh.reverse()
            self.loaded = (self.loaded + fresh)[-length:]
            self.loaded_size = sum(message_cost(len(m.text)) for m in self.loaded)
            self.fresh.clear()
            self.fresh_count = self.fresh_size = 0
        return self.loaded


# About what a message in memory takes besides its text's characters: the
# message, its id and time, the text's header, a list's pointer to it, and
# what Python's allocator keeps around them; its names are shared (see
# store._unpack). Measured: 100,000 messages with 64-byte texts took 43 MB
# more of the server's resident memory (docs/performance.md).
_MESSAGE_COST = 370


# And what a tail takes with no message: the object, its deque's first block,
# its place in the dict (measured with tracemalloc over 100,000 empty ones).
TAIL_COST = 1000


def message_cost(text_length: int) -> int:
    """About the bytes a message with a text of *text_length* takes."""
    return _MESSAGE_COST + text_length


def row_cost(texts: Sequence[bytes]) -> int:
    """About the bytes the messages of *texts* take."""
    return _MESSAGE_COST * len(texts) + sum(map(len, texts))


class Recent:
    """The newest *length* messages of the conversations used last, in
    memory (their tails), about *budget* bytes of them at most: a page
    within a tail is answered without reading the file, which under load
    cost a few milliseconds of a worker thread's turns at the GIL and of
    the event loop's.

    A tail holds what the file holds, not what waits for the writer (that
    is added to a page as for a read of the file): the store adds each
    group's rows to the tails when told the group is committed. Tails come
    from the file at the start (``store._newest_tails``), when a
    conversation is made, and from a ``latest`` page of a conversation
    with no tail read from the file (``fill_from``, then ``filled``). That
    read sees only the ids the store had seen when it was asked for
    (``Store._read_latest_page``), so a commit told of later adds nothing
    it holds; and a commit to the conversation told of while it ran may
    hold ids it did not see: then its result is not kept."""

    def __init__(self, budget: int, length: int) -> None:
        self.budget = budget if length > 0 else 0
        self.length = length
        self.size = 0
        self.tails: OrderedDict[int, _Tail] = OrderedDict()
        # Conversations being read to fill their tails: the read's token.
        self._filling: dict[int, int] = {}
        self._tokens = itertools.count(1)

    def install(
        self, conversation: int, messages: list[StoredMessage], whole: bool
    ) -> None:
        """*messages*: the newest of *conversation* in the file (all of
        them, if *whole*), oldest first."""
        if not self.budget:
            return
        length = self.length
        if len(messages) > length:
            messages, whole = messages[-length:], False
        self.forget((conversation,))
        tail = self.tails[conversation] = _Tail(messages, whole)
        self.size += tail.size
        self._shrink()

    def held(self, conversation: int) -> tuple[list[StoredMessage], bool] | None:
        """The newest messages of *conversation* in the file, oldest first
        (not to be changed), and whether they are all of them; None if
        memory holds none of its."""
        tail = self.tails.get(conversation)
        if tail is None:
            return None
        self.tails.move_to_end(conversation)
        size = tail.size
        messages = tail.held(self.length)
        self.size += tail.size - size
        self._shrink()  # (the list stays whole if its tail goes)
        return messages, tail.whole

    def committed(self, rows: list[Row]) -> None:
        """On the event loop: *rows* are in the file now."""
        tails, filling, length = self.tails, self._filling, self.length
        grown = 0
        for conversations, accepted in rows:
            for conversation in conversations:
                tail = tails.get(conversation)
                if tail is not None:
                    grown += tail.add(accepted, length)
                elif filling and conversation in filling:
                    del filling[conversation]  # the read may have missed it
        self.size += grown
        self._shrink()

    def _shrink(self) -> None:
        """Forget the tails used longest ago while over budget."""
        tails = self.tails
        while self.size > self.budget and tails:
            _, tail = tails.popitem(last=False)
            self.size -= tail.size

    def forget(self, conversations: Iterable[int]) -> None:
        """*conversations* lost messages (an account was deleted), or get
        a new tail."""
        for conversation in conversations:
            tail = self.tails.pop(conversation, None)
            if tail is not None:
                self.size -= tail.size
            self._filling.pop(conversation, None)

    def fill_from(self, conversation: int) -> int:
        """A read of *conversation*'s newest messages is about to start:
        a token for ``filled``, or 0 if its tail is not wanted."""
        if (
            not self.budget
            or conversation in self._filling
            or conversation in self.tails
        ):
            return 0
        token = self._filling[conversation] = next(self._tokens)
        return token

    def filled(
        self,
        conversation: int,
        token: int,
        messages: list[StoredMessage] | None,
        whole: bool,
    ) -> None:
        """The read of *token* ended with *messages* (None: it failed)."""
        if token and self._filling.get(conversation) == token:
            del self._filling[conversation]
            if messages is not None:
                self.install(conversation, messages, whole)
