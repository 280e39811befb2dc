"""Developer sessions: ``nox -s tests lint typing bench stress docs``."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typing", "tests"]
nox.options.reuse_existing_virtualenvs = True

#: The CPU wheel of torch. Any other spec makes pip pull a multi-GB CUDA build.
TORCH = "torch==2.13.0"


def _install(session: nox.Session, extras: str = "all") -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (everything but the long stress suite)."""
    _install(session)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def stress(session: nox.Session) -> None:
    """Run the long crash and fault suite (at least 100 kills; about half an hour).

    Set SAFEINFER_STRESS_SUMMARY to a file path to get the run's figures as JSON.
    """
    _install(session)
    session.run(
        "python",
        "-m",
        "pytest",
        "-m",
        "stress",
        "-p",
        "no:randomly",
        "--durations=10",
        *session.posargs,
    )


@nox.session
def lint(session: nox.Session) -> None:
    """Check style with ruff."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    """Type-check the package with mypy in strict mode."""
    _install(session, "dev,fast")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks and print the figures recorded in docs/benchmarks.md."""
    _install(session)
    session.run("python", "-m", "bench", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site with warnings as errors.

    Broken internal links and anchors, unresolved API references, pages missing from the
    nav and a command-line reference that differs from ``--help`` all fail the build.
    """
    # The API reference is read from the source without importing it, and building the
    # command-line parser imports no torch, so the docs need neither torch nor diffusers.
    session.install("-e", ".[docs]")
    session.run("python", "scripts/gen_cli_docs.py", "--check")
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})
