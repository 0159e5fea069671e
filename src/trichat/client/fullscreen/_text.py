"""How text from the server is shown: safe to print, names in stable
colours, look-alike names found. Plain functions, no urwid."""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Iterable
from functools import lru_cache
from typing import Final

from ...protocol.messages import name_key

__all__ = [
    "NAME_COLOURS",
    "colour_index",
    "confusables",
    "display_text",
    "mentions",
    "skeleton",
    "unusual_letters",
]

NAME_COLOURS: Final = 10
"""How many colours names are spread over (see ``colour_index``)."""

TAB_SIZE: Final = 4

# Characters of the categories that a terminal may act on rather than show
# (controls, formats such as bidi overrides, surrogates, line and paragraph
# separators) that are still shown as written: they only join or break
# what is around them and cannot move the cursor or reorder text.
_SHOWN_AS_WRITTEN: Final = frozenset(
    {
        "\u00ad",  # soft hyphen
        "\u200b",  # zero width space
        "\u200c",  # zero width non-joiner (Persian, Hindi...)
        "\u200d",  # zero width joiner (emoji sequences, Indic scripts)
        "\u2060",  # word joiner
        *map(chr, range(0xE0020, 0xE0080)),  # tags: subdivision flags
    }
)
_UNSAFE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


@lru_cache(maxsize=4096)
def _is_unsafe(char: str) -> bool:
    return (
        unicodedata.category(char) in _UNSAFE_CATEGORIES
        and char not in _SHOWN_AS_WRITTEN
    )


def _escaped(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def display_text(text: str) -> str:
    """*text* as the screen shows it.

    Letters, marks, emoji and their joiners (ZWJ, ZWNJ, soft hyphens) are
    shown as written and TAB as spaces to the next tab stop. Controls (ESC
    among them, so no escape sequence reaches the terminal), bidi overrides
    and other format characters, line separators and lone surrogates are
    shown as Python escapes: ``\\x1b``, ``\\u202e``.
    """
    if text.isprintable():
        return text
    shown: list[str] = []
    column = 0
    for char in text:
        if char == "\t":
            spaces = TAB_SIZE - column % TAB_SIZE
            shown.append(" " * spaces)
            column += spaces
            continue
        piece = _escaped(char) if _is_unsafe(char) else char
        shown.append(piece)
        column += len(piece)
    return "".join(shown)


def colour_index(name: str) -> int:
    """Which of ``NAME_COLOURS`` colours *name* is shown in: the same in
    every run and every client, and the same for names that clash."""
    return zlib.crc32(name_key(name).encode()) % NAME_COLOURS


# Letters of other scripts (and digits) that look like a Latin letter in
# most fonts, after casefolding. A small table, not Unicode's full list of
# confusables: enough to catch the usual impersonations.
_LOOK_ALIKES: Final = str.maketrans(
    {
        unicodedata.lookup(name): latin
        for name, latin in (
            ("CYRILLIC SMALL LETTER A", "a"),
            ("CYRILLIC SMALL LETTER VE", "b"),
            ("CYRILLIC SMALL LETTER ES", "c"),
            ("CYRILLIC SMALL LETTER KOMI DE", "d"),
            ("CYRILLIC SMALL LETTER IE", "e"),
            ("CYRILLIC SMALL LETTER SHHA", "h"),
            ("CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I", "i"),
            ("CYRILLIC SMALL LETTER PALOCHKA", "l"),
            ("CYRILLIC SMALL LETTER JE", "j"),
            ("CYRILLIC SMALL LETTER KA", "k"),
            ("CYRILLIC SMALL LETTER EM", "m"),
            ("CYRILLIC SMALL LETTER O", "o"),
            ("CYRILLIC SMALL LETTER ER", "p"),
            ("CYRILLIC SMALL LETTER QA", "q"),
            ("CYRILLIC SMALL LETTER GHE", "r"),
            ("CYRILLIC SMALL LETTER DZE", "s"),
            ("CYRILLIC SMALL LETTER TE", "t"),
            ("CYRILLIC SMALL LETTER IZHITSA", "v"),
            ("CYRILLIC SMALL LETTER WE", "w"),
            ("CYRILLIC SMALL LETTER HA", "x"),
            ("CYRILLIC SMALL LETTER U", "y"),
            ("GREEK SMALL LETTER ALPHA", "a"),
            ("GREEK SMALL LETTER BETA", "b"),
            ("GREEK LUNATE SIGMA SYMBOL", "c"),
            ("GREEK SMALL LETTER EPSILON", "e"),
            ("GREEK SMALL LETTER ETA", "n"),
            ("GREEK SMALL LETTER IOTA", "i"),
            ("GREEK LETTER YOT", "j"),
            ("GREEK SMALL LETTER KAPPA", "k"),
            ("GREEK SMALL LETTER MU", "u"),
            ("GREEK SMALL LETTER NU", "v"),
            ("GREEK SMALL LETTER OMICRON", "o"),
            ("GREEK SMALL LETTER RHO", "p"),
            ("GREEK SMALL LETTER TAU", "t"),
            ("GREEK SMALL LETTER UPSILON", "u"),
            ("GREEK SMALL LETTER CHI", "x"),
            ("GREEK SMALL LETTER GAMMA", "y"),
            ("GREEK SMALL LETTER OMEGA", "w"),
            ("LATIN SMALL LETTER DOTLESS I", "i"),
            ("LATIN SMALL LETTER SCRIPT G", "g"),
            ("LATIN SMALL LETTER ALPHA", "a"),
        )
    }
    | {"0": "o", "1": "l"}
)
_PAIRS: Final = (("rn", "m"), ("vv", "w"), ("cl", "d"))


@lru_cache(maxsize=4096)
def skeleton(name: str) -> str:
    """What *name* looks like: its ``name_key``, with letters of other
    scripts that look like Latin ones (Cyrillic and Greek small o, say),
    some digits (``0``, ``1``) and pairs (``rn``) replaced by what they
    pass for.

    Two names with the same skeleton but different keys are look-alikes.
    """
    shape = name_key(name).translate(_LOOK_ALIKES)
    # "1" passes for "l", and so does "i" next to the pair rules' "l".
    shape = shape.replace("i", "l")
    for pair, single in _PAIRS:
        shape = shape.replace(pair, single)
    return shape


def confusables(names: Iterable[str]) -> dict[str, list[str]]:
    """For each of *names* that looks like another of them (same
    ``skeleton``, different ``name_key``), the others it looks like;
    names that look like no other are left out."""
    by_shape: dict[str, dict[str, str]] = {}
    for name in names:
        by_shape.setdefault(skeleton(name), {})[name_key(name)] = name
    found: dict[str, list[str]] = {}
    for group in by_shape.values():
        if len(group) < 2:
            continue
        for key, name in group.items():
            found[name] = [other for k, other in group.items() if k != key]
    return found


def unusual_letters(name: str) -> list[str]:
    """The characters of *name* that a look-alike may hide behind: those
    that are not ASCII, each as ``U+0435 CYRILLIC SMALL LETTER IE``."""
    return [
        f"U+{ord(char):04X} {unicodedata.name(char, 'unnamed')}"
        for char in dict.fromkeys(name)
        if not char.isascii()
    ]


@lru_cache(maxsize=64)
def _mention_pattern(name: str) -> re.Pattern[str]:
    # The name as a word of its own: not inside a longer name.
    word = re.escape(name_key(name))
    return re.compile(rf"(?<![\w.-]){word}(?![\w-]|\.\w)")


def mentions(text: str, name: str) -> bool:
    """Whether *text* mentions *name* as a word of its own (``@bob``,
    ``bob:``, ``Bob,``), under the clash rules (case, NFKC)."""
    return _mention_pattern(name).search(name_key(text)) is not None
