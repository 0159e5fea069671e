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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process's exit status."""
    args = build_parser().parse_args(argv)
    status: int = args.main(args)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
