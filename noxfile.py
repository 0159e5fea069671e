"""Sessions for tests, type checking and linting; plain ``nox`` runs all three."""

from __future__ import annotations

import nox

nox.options.sessions = ["test", "typecheck", "lint"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

# The test modules whose outcome depends on how the server reads sockets:
# bytes, partial and overlong lines, flood control, limits, timeouts,
# hang-ups, login and resume. They run a second time without the shared
# reader (see tests/helpers.py). The client, terminal, bench and TLS tests
# reach the server through the same session rules (and TLS never uses the
# shared reader), so a second pass of them would test nothing new.
READ_PATH_TESTS = [
    "tests/test_adversarial.py",
    "tests/test_chaos.py",
    "tests/test_fast_path.py",
    "tests/test_hardening.py",
    "tests/test_model.py",
    "tests/test_protocol2.py",
    "tests/test_protocol2_rooms.py",
    "tests/test_resume.py",
    "tests/test_server.py",
    "tests/test_server_robustness.py",
    "tests/test_server_smoke.py",
    "tests/test_shared_reader.py",
    "tests/test_writer.py",
]


@nox.session
def test(session: nox.Session) -> None:
    """Run the test suite with pytest (pass extra pytest arguments after --)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)
    if not session.posargs:
        # Again without the shared reader, for the tests of how the server
        # reads (see READ_PATH_TESTS); elsewhere than Linux they are the same.
        session.run(
            "pytest",
            "-q",
            *READ_PATH_TESTS,
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
