"""The ``trichat`` command: ``serve``, ``connect``, ``bench`` and ``accounts``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    # Each command's options, and nothing more: bench.cli imports the load
    # generator only when ``trichat bench`` runs.
    from .bench import cli as bench
    from .client import fullscreen
    from .server import accounts_cli
    from .server import cli as serve_cli

    parser = argparse.ArgumentParser(
        prog="trichat",
        description="A many-user chat server and terminal client on Trio.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module, summary in (
        ("serve", serve_cli, "run a chat server"),
        ("connect", fullscreen, "log in and chat from the terminal"),
        ("bench", bench, "load-test a trichat server"),
        ("accounts", accounts_cli, "list, delete or set the password of accounts"),
    ):
        command = commands.add_parser(name, help=summary, description=summary)
        module.add_arguments(command)
        command.set_defaults(main=module.main)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line *argv* (default ``sys.argv[1:]``), parsed."""
    given = list(sys.argv[1:] if argv is None else argv)
    return build_parser().parse_args(_connect_options_after_name(given))


def _connect_options_after_name(argv: list[str]) -> list[str]:
    """``trichat connect -- -x --port N``: for ``connect``, ``--`` ends
    the options only for the NAME right after it (a name may start with
    ``-``; the server says whether it takes it), and the options after the
    name are read as options. argparse takes every word after ``--`` as a
    positional one, so those options are moved before it."""
    if "connect" not in argv:
        return argv
    command = argv.index("connect")
    # "connect" is the command only when nothing but options comes before.
    if any(not word.startswith("-") for word in argv[:command]):
        return argv
    rest = argv[command + 1 :]
    if "--" not in rest:
        return argv
    dashes = rest.index("--")
    if dashes + 1 >= len(rest):
        return argv
    name, after = rest[dashes + 1], rest[dashes + 2 :]
    return [*argv[: command + 1], *rest[:dashes], *after, "--", name]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process's exit status."""
    args = parse_args(argv)
    status: int = args.main(args)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
