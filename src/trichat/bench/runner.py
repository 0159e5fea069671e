"""One benchmark run, from the first connection to the printed result."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

import trio

from .._process import raise_file_limit, until_interrupted
from .report import begin_result, finish_result, format_report
from .run import BenchError, Progress, Run
from .scenarios import run_scenario
from .settings import Settings
from .usage import process_cpu, process_rss_kb

__all__ = ["run_bench", "run_command"]


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def run_bench(
    settings: Settings, progress: Progress | None = None
) -> dict[str, Any]:
    """Run one benchmark and return its results (what ``--json`` prints).

    A run that could not be carried out has ``ok`` False and ``error``.
    """
    progress = progress or Progress()
    run = Run(settings, progress)
    result = begin_result(settings)
    try:
        if settings.pid is not None:
            try:
                process_cpu(settings.pid)
                process_rss_kb(settings.pid)
            except (OSError, ValueError, IndexError) as error:
                raise BenchError(
                    f"cannot read process {settings.pid} in /proc: {error}"
                ) from None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(progress.show, run)
            await run_scenario(run, nursery, result)
            run.live = False
            nursery.cancel_scope.cancel()
    except* BenchError as group:
        result["ok"] = False
        result["error"] = str(_first_leaf(group))
    finally:
        run.close_all()
        progress.clear()
    finish_result(run, result)
    return result


def run_command(settings: Settings) -> int:
    """Run ``trichat bench`` with *settings* and print what it found; the
    exit status: 0 when the run was carried out, 1 when it could not be,
    130 when interrupted."""
    raise_file_limit(settings.sockets + 64)
    progress = Progress(sys.stderr, quiet=settings.quiet)
    result = None
    try:
        result = trio.run(
            until_interrupted, functools.partial(run_bench, settings, progress)
        )
    except* KeyboardInterrupt:
        pass
    if result is None:
        progress.clear()
        print("trichat bench: interrupted", file=sys.stderr)
        return 130
    if settings.json:
        print(json.dumps(result))
    else:
        print(format_report(result))
    return 0 if result["ok"] else 1
