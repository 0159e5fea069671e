"""Sessions for tests, type checking and linting; plain ``nox`` runs all three."""

from __future__ import annotations

import nox

nox.options.sessions = ["test", "typecheck", "lint"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True


@nox.session
def test(session: nox.Session) -> None:
    """Run the test suite with pytest (pass extra pytest arguments after --)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Check src, tests and this file with mypy --strict."""
    session.install("-e", ".[typecheck]")
    session.run("mypy", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint with ruff check and check formatting with ruff format --check."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def bench(session: nox.Session) -> None:
    """Time the hot path per frame: codec, name_key, hub routing (micro.py)."""
    session.install("-e", ".")
    session.run("python", "benchmarks/micro.py", *session.posargs)
