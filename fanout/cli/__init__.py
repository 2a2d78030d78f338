"""The ``fanout`` command line, built with typer: ``commands`` (run, worker, status),
``inputs`` (where a run's inputs come from), ``views`` (JSON lines, the human view, the
progress bar), ``exitcodes``.

Exit codes: 0 every task ok, 1 some task failed, 2 usage error or bad target or input,
3 backend unavailable, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from fanout.cli.commands import app


def main() -> None:
    """Entry point of the ``fanout`` console script."""
    app()


__all__ = ["app", "main"]
