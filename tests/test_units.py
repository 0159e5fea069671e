"""Durations as the commands read them."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trichat._units import duration, parse_duration


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
