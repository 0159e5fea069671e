"""Durations as people write them on a command line: ``10``, ``1.5s``,
``500ms``, ``2m``. Every ``trichat`` command reads its durations here."""

from __future__ import annotations

import argparse
import re

__all__ = ["duration", "parse_duration"]

_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*")
_SECONDS_PER_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """The seconds in *text*: a number, alone (seconds) or followed by
    ``ms``, ``s``, ``m`` or ``h``. Raises ValueError, saying what would do,
    for anything else (a negative number, say)."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(
            f"not a duration: {text!r} (try 10, 10s, 1.5s, 500ms or 2m;"
            " a number alone is seconds)"
        )
    return float(match[1]) * _SECONDS_PER_UNIT[match[2]]


def duration(text: str) -> float:
    """``parse_duration`` as an argparse ``type``: argparse shows its
    message as it is."""
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
