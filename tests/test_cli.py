"""The ``trichat`` command as a user runs it: which modules each
subcommand loads, and the load generator kept out of all but ``bench``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from helpers import running_server

from trichat import __version__
from trichat.cli import build_parser, main

# Starting Python and the command takes a fraction of this.
COMMAND_TIMEOUT = 20.0
# What building the ``trichat`` parser may load of the load generator.
LIGHT_BENCH_MODULES = {"trichat.bench", "trichat.bench.cli", "trichat.bench.settings"}
# A dm run that takes a fraction of a second.
QUICK_BENCH = ("-P", "1", "-W", "2", "-D", "200ms", "--warmup", "0", "-q", "--json")


async def run_trichat(
    *argv: str, pythonpath: Path | None = None
) -> tuple[subprocess.CompletedProcess[bytes], set[str]]:
    """Run ``python -m trichat ARGV`` with stdin at its end; return what it
    did and every module it imported (as ``-X importtime`` tells)."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(pythonpath), *filter(None, [env.get("PYTHONPATH")])]
        )
    with trio.fail_after(COMMAND_TIMEOUT):
        result = await trio.run_process(
            [sys.executable, "-X", "importtime", "-m", "trichat", *argv],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    imported = set()
    other_lines = []
    for line in result.stderr.decode().splitlines():
        if line.startswith("import time:"):
            imported.add(line.rsplit("|", 1)[1].strip())
        else:
            other_lines.append(line)
    result.stderr = "\n".join(other_lines).encode()
    return result, imported


def bench_modules(imported: set[str]) -> set[str]:
    return {name for name in imported if name.split(".")[:2] == ["trichat", "bench"]}


async def test_help_lists_the_commands() -> None:
    result, imported = await run_trichat("--help")
    assert result.returncode == 0
    out = result.stdout.decode()
    for command in ("serve", "connect", "bench"):
        assert command in out
    assert bench_modules(imported) <= LIGHT_BENCH_MODULES


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"trichat {__version__}\n"


@pytest.mark.parametrize("command", ["serve", "connect", "bench"])
async def test_each_commands_help(command: str) -> None:
    result, _ = await run_trichat(command, "--help")
    assert result.returncode == 0
    assert result.stdout.decode().startswith(f"usage: trichat {command}")


async def test_connect_never_imports_the_load_generator() -> None:
    async with running_server() as live:
        result, imported = await run_trichat(
            "connect", "alice", "--port", str(live.port)
        )
    assert result.returncode == 0, result.stderr.decode()
    assert "logged in as alice" in result.stdout.decode()
    assert "trichat.client.terminal" in imported  # what it did use
    assert bench_modules(imported) <= LIGHT_BENCH_MODULES


async def test_bench_imports_the_load_generator() -> None:
    # The other side of the test above: the check can see the generator.
    async with running_server(rate=0) as live:
        result, imported = await run_trichat(
            "bench", "--port", str(live.port), *QUICK_BENCH
        )
    assert result.returncode == 0, result.stderr.decode()
    assert {"trichat.bench.runner", "trichat.bench.scenarios"} <= imported


@pytest.fixture
def no_resource_module(tmp_path: Path) -> Path:
    """A directory whose ``resource`` module fails to import, as on systems
    without it (Windows); it leaves ``tried`` behind when something tries."""
    (tmp_path / "resource.py").write_text(
        "import pathlib\n"
        "pathlib.Path(__file__).with_name('tried').touch()\n"
        "raise ImportError('no resource module here')\n"
    )
    return tmp_path


async def test_the_commands_work_without_the_resource_module(
    no_resource_module: Path,
) -> None:
    async with running_server(rate=0) as live:
        port = str(live.port)
        connect, _ = await run_trichat(
            "connect", "alice", "--port", port, pythonpath=no_resource_module
        )
        bench, _ = await run_trichat(
            "bench", "--port", port, *QUICK_BENCH, pythonpath=no_resource_module
        )
    assert connect.returncode == 0, connect.stderr.decode()
    assert bench.returncode == 0, bench.stderr.decode()
    assert json.loads(bench.stdout)["delivered"] > 0
    # The bench did without it (to raise its file limit).
    assert (no_resource_module / "tried").exists()


def test_every_command_takes_durations_with_units() -> None:
    parser = build_parser()
    connect = parser.parse_args(["connect", "alice", "--ping-interval", "1.5s"])
    assert connect.ping_interval == 1.5
    serve = parser.parse_args(["serve", "--login-timeout", "500ms"])
    assert serve.login_timeout == 0.5
    bench = parser.parse_args(["bench", "--duration", "2m"])
    assert bench.duration == 120
