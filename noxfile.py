"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s bench`, `nox -s completions`.

Each session builds ecgbench (and its Rust extension) into its own virtualenv. torch is installed
first at the version `./dev` uses, so pip does not pull a multi-GB CUDA build for CPU-only machines.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "tests"]
TORCH = os.environ.get("ECGBENCH_TORCH_VERSION", "2.13.0")
PYTHON = ["3.11", "3.12", "3.13"]


def _install(session: nox.Session, extras: str = "test") -> None:
    session.install(f"torch=={TORCH}")
    session.install("maturin>=1.5,<2")
    session.install("-e", f".[{extras}]", "--no-build-isolation")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Rust unit tests and the Python test suite."""
    session.run("cargo", "test", "--release", "-p", "ecgbyte", external=True)
    _install(session, "test,plot,hub,text,eval,demo")  # the extras ./dev setup installs
    session.run("ecgbench", "assets", "fetch")
    session.run("pytest", "-n", "auto", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint + format check) and clippy."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "bench", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "bench", "noxfile.py")
    session.run(
        "cargo",
        "clippy",
        "--release",
        "-p",
        "ecgbyte",
        "--all-targets",
        "--",
        "-D",
        "warnings",
        external=True,
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark at its default (quick) size; each prints our figure beside the peer's."""
    _install(session, "test,plot,hub,text,eval,demo")  # the extras ./dev setup installs
    for script in sorted(os.listdir("bench")):
        if script.startswith("bench_") and script.endswith(".py"):
            session.run("python", f"bench/{script}", *session.posargs)


@nox.session
def completions(session: nox.Session) -> None:
    """Regenerate the bash, zsh and fish completion scripts in completions/."""
    _install(session)
    session.run("python", "-m", "ecgbench.completion", "completions")
