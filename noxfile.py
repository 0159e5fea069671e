"""Sessions for tests, type checking and linting; plain ``nox`` runs all three."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["test", "typecheck", "lint"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

# The test modules that run servers on real sockets: those that use
# helpers.running_server, which reads TRICHAT_TEST_SHARED_READER.
NETWORK_TESTS = sorted(
    str(path)
    for path in Path("tests").glob("test_*.py")
    if "running_server" in path.read_text()
)


@nox.session
def test(session: nox.Session) -> None:
    """Run the test suite with pytest (pass extra pytest arguments after --)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)
    if not session.posargs:
        # Again without the shared reader, for the tests of live servers
        # (see tests/helpers.py); elsewhere than Linux they are the same.
        session.run(
            "pytest",
            "-q",
            *NETWORK_TESTS,
            env={"TRICHAT_TEST_SHARED_READER": "0"},
        )


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
