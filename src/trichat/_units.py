"""Durations and sizes as people write them on a command line: ``10``,
``1.5s``, ``500ms``, ``2m``; ``1048576``, ``512K``, ``64M``, ``1G``. Every
``trichat`` command reads its durations and sizes here."""

from __future__ import annotations

import argparse
import re

__all__ = ["duration", "parse_duration", "parse_size", "size"]

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


_SIZE = re.compile(r"\s*(\d+)\s*([KMG]?)(?:i?B)?\s*", re.IGNORECASE)
_BYTES_PER_UNIT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """The bytes in *text*: a whole number, alone (bytes) or followed by
    ``K``, ``M`` or ``G`` (1,024 bytes, 1,024 of those...; ``KiB``, ``MB``
    and the like mean the same). Raises ValueError, saying what would do,
    for anything else."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"not a size: {text!r} (try 1048576, 512K, 64M or 1G;"
            " a number alone is bytes)"
        )
    return int(match[1]) * _BYTES_PER_UNIT[match[2].upper()]


def size(text: str) -> int:
    """``parse_size`` as an argparse ``type``."""
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
