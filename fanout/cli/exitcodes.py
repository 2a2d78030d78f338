"""The exit codes of ``fanout`` and its one way of saying a user's mistake."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NoReturn

import typer

from fanout.errors import BackendUnavailable, FanoutError, UnknownOption

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
EXIT_HANGUP, EXIT_INTERRUPTED, EXIT_STDOUT_CLOSED, EXIT_TERMINATED = 129, 130, 141, 143


def fail(message: str, code: int) -> NoReturn:
    """One line on stderr, then exit with ``code``."""
    typer.echo(f"fanout: error: {message}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def errors_as_exit_codes() -> Iterator[None]:
    """fanout's errors, said in one line with their exit code: 3 for a backend that cannot
    be reached, 2 for the user's mistakes (bad target, input, option)."""
    try:
        yield
    except UnknownOption as exc:
        flag = "--" + exc.option.replace("_", "-")
        fail(f"{flag} does not apply to the {exc.backend} backend", EXIT_USAGE)
    except BackendUnavailable as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except (FanoutError, ValueError) as exc:
        fail(str(exc), EXIT_USAGE)
