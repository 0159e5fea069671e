"""Durations and sizes as the commands read them."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trichat._units import duration, parse_duration, parse_size, size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10", 10.0),
        ("10s", 10.0),
        ("1.5s", 1.5),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("0", 0.0),
        (".5", 0.5),
        ("3.", 3.0),
        (" 10 s ", 10.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", "s", "ten", "10 seconds", "1d", "-1s", "1e3", "nan", "inf", "10S", "1.2.3"],
)
def test_parse_duration_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration") as refused:
        parse_duration(text)
    assert "try 10, 10s, 1.5s, 500ms or 2m" in str(refused.value)


@given(st.integers(min_value=0, max_value=10**6))
def test_milliseconds_are_thousandths(count: int) -> None:
    assert parse_duration(f"{count}ms") == pytest.approx(count / 1000)


def test_as_an_argparse_type(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="demo")
    parser.add_argument("--wait", type=duration)
    assert parser.parse_args(["--wait", "250ms"]).wait == pytest.approx(0.25)
    with pytest.raises(SystemExit):
        parser.parse_args(["--wait", "soon"])
    assert "argument --wait: not a duration: 'soon'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("1048576", 1 << 20),
        ("0", 0),
        ("512K", 512 << 10),
        ("64M", 64 << 20),
        ("64m", 64 << 20),
        ("64MiB", 64 << 20),
        ("64MB", 64 << 20),
        ("1G", 1 << 30),
        (" 2 K ", 2048),
    ],
)
def test_parse_size(text: str, count: int) -> None:
    assert parse_size(text) == count


@pytest.mark.parametrize(
    "text", ["", "M", "ten", "-1", "1.5M", "1T", "1e6", "64 megabytes", "0x10"]
)
def test_parse_size_refuses_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ValueError, match="not a size") as refused:
        parse_size(text)
    assert "try 1048576, 512K, 64M or 1G" in str(refused.value)


def test_a_size_as_an_argparse_type(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="demo")
    parser.add_argument("--cache", type=size)
    assert parser.parse_args(["--cache", "8M"]).cache == 8 << 20
    with pytest.raises(SystemExit):
        parser.parse_args(["--cache", "8X"])
    assert "argument --cache: not a size: '8X'" in capsys.readouterr().err
