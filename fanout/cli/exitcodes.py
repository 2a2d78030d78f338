"""The exit codes of ``fanout`` and its one way of saying a user's mistake."""

from __future__ import annotations

from typing import NoReturn

import typer

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_STDOUT_CLOSED, EXIT_TERMINATED = 130, 141, 143


def fail(message: str, code: int) -> NoReturn:
    """One line on stderr, then exit with ``code``."""
    typer.echo(f"fanout: error: {message}", err=True)
    raise typer.Exit(code)
