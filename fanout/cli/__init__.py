"""The ``fanout`` command line, built with typer: ``commands`` (run, worker), ``runs``
(results, cancel, status), ``fleet`` (drain, pause, resume), ``report`` (report),
``metrics`` (metrics), ``running`` (what run does), ``inputs`` (where a run's inputs
come from), ``views`` (JSON lines, the human view, the progress bar), ``report_view``
(run --report), ``options``, ``exitcodes``.

Exit codes: 0 every task ok, 1 some task failed, 2 usage error or bad target or input,
3 backend unavailable, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

import logging
import os
import sys

import typer

from fanout.cli import fleet as _fleet  # noqa: F401 - registers drain, pause, resume
from fanout.cli import metrics as _metrics  # noqa: F401 - registers metrics
from fanout.cli import report as _report  # noqa: F401 - registers report
from fanout.cli import runs as _runs  # noqa: F401 - registers results, cancel, status
from fanout.cli.commands import app
from fanout.cli.exitcodes import EXIT_INTERRUPTED, EXIT_STDOUT_CLOSED, EXIT_USAGE
from fanout.cli.views import StdoutClosed


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``fanout`` console script.

    Usage errors that typer finds itself (a bad option value, an unknown option) are
    said in one line too, as every other user mistake is.
    """
    log_to_stderr()
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="fanout", standalone_mode=False)
    except typer.Abort:  # Ctrl-C outside a run
        sys.exit(EXIT_INTERRUPTED)
    except (StdoutClosed, BrokenPipeError):  # `fanout status | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        sys.exit(EXIT_STDOUT_CLOSED)
    except Exception as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # plain `fanout`: its help
            typer.echo(str(getattr(exc, "format_message", lambda: "")()))
            sys.exit(0)
        message = _usage_error(exc)
        if message is None:
            raise
        typer.echo(f"fanout: error: {message}", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(code if isinstance(code, int) else 0)


def log_to_stderr() -> None:
    """fanout's warnings (a lost Redis, no worker serving a queue) as the CLI's other
    lines are: ``fanout: ...`` on stderr. The library itself leaves logging to its user."""
    logger = logging.getLogger("fanout")
    if any(getattr(h, "fanout_cli", False) for h in logger.handlers):
        return  # main() called again in this process
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("fanout: %(message)s"))
    handler.fanout_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False  # once, even if a task configures the root logger


def _usage_error(exc: Exception) -> str | None:
    """The one-line message of a usage error found by typer/click, else None."""
    format_message = getattr(exc, "format_message", None)
    if not callable(format_message) or getattr(exc, "exit_code", None) != EXIT_USAGE:
        return None
    message = " ".join(str(format_message()).split())
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else "fanout"
    return f"{message} (see '{path} --help')"


__all__ = ["app", "main"]
