"""The commands: each parses its options and calls the library, nothing more.

Options a backend takes (``--daemon``, ``--redis-url``, ...) go to it by name when they
are given; the backend refuses one it does not take (UnknownOption), said here as the
flag the user typed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from types import FrameType
from typing import Annotated, Any, NoReturn

import typer

from fanout.api import Fanout
from fanout.cli import options as opt
from fanout.cli.exitcodes import (
    EXIT_INTERRUPTED,
    EXIT_STDOUT_CLOSED,
    EXIT_TERMINATED,
    errors_as_exit_codes,
)
from fanout.cli.inputs import InputSource
from fanout.cli.views import HumanView, JsonView, StdoutClosed, View, consume
from fanout.errors import InputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help, and user text is never read as markup
    help="Fan one Python function out over many inputs, on local processes or RQ workers.",
)


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so that cleanup runs as for Ctrl-C."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


def _show_version(value: bool) -> None:
    if value:
        from fanout import __version__

        typer.echo(f"fanout {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_show_version, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Fan one Python function out over many inputs, on local processes or RQ workers."""


@app.command("run", cls=opt.RunCommand, epilog=opt.RUN_EXAMPLES)
def run_command(
    target: opt.Target,
    items: opt.Items = None,
    range_: opt.Range = None,
    repeat: opt.Repeat = None,
    input_: opt.Input = None,
    lines: opt.Lines = False,
    star: opt.Star = False,
    backend: opt.BackendName = None,
    workers: opt.Workers = None,
    redis_url: opt.RunRedisUrl = None,
    queue: opt.RunQueue = None,
    secret_file: opt.RunSecretFile = None,
    timeout: opt.Timeout = None,
    retries: opt.Retries = 0,
    ordered: opt.Ordered = True,
    json_out: opt.Json = False,
    tracebacks: opt.Tracebacks = False,
    progress: opt.ShowProgress = None,
    daemon: opt.Daemon = None,
) -> None:
    """Run TARGET once per input and report every result with the process that made it."""
    given = {"daemon": daemon, "redis_url": redis_url, "queue": queue, "secret_file": secret_file}
    options = {name: value for name, value in given.items() if value is not None}
    sys.path.insert(0, os.getcwd())  # like `python -m`: targets in the current directory
    signal.signal(signal.SIGTERM, _on_sigterm)
    fo: Fanout | None = None
    view: View | None = None
    try:
        with errors_as_exit_codes():
            inputs = InputSource(items, range_, repeat, input_, lines)
            fo = Fanout(backend, workers, **options)
            with fo:
                view = JsonView() if json_out else HumanView(fo.backend_name, tracebacks)
                results = fo.map(
                    target, inputs.items(keep=not json_out), repeat=repeat, star=star,
                    ordered=ordered, timeout=timeout, retries=retries,
                )  # fmt: skip
                show_bar = progress if progress is not None else sys.stderr.isatty()
                try:
                    code = consume(results, view, inputs.taken, inputs.total, show_bar)
                except InputError:
                    view.finish()  # bad input part-way: show the tasks that ran before it
                    raise
            view.finish(complete=True)
    except (KeyboardInterrupt, _Terminated) as exc:
        _interrupted(exc, fo, view)
    except StdoutClosed:
        # Quietly: nothing more can be shown. No error at exit from flushing it either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(EXIT_STDOUT_CLOSED) from None
    raise typer.Exit(code)


def _interrupted(exc: BaseException, fo: Fanout | None, view: View | None) -> NoReturn:
    if view is not None:
        view.finish(interrupted=True)  # what finished before the signal
    note = fo.stop_note if fo is not None else "nothing had started"
    if isinstance(exc, KeyboardInterrupt):
        say_and_exit(f"fanout: interrupted; {note}", EXIT_INTERRUPTED)
    say_and_exit(f"fanout: terminated; {note}", EXIT_TERMINATED)


def say_and_exit(message: str, code: int) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code) from None


@app.command("worker")
def worker_command(
    redis_url: opt.RedisUrl = None,
    queue: opt.WorkerQueue = "fanout",
    name: opt.WorkerName = None,
    burst: opt.Burst = False,
    processes: opt.Processes = 1,
    allow: opt.Allow = None,
    secret_file: opt.SecretFile = None,
    quiet: opt.Quiet = False,
    redis_wait: opt.RedisWait = 60.0,
) -> None:
    """Serve fanout jobs (plain RQ jobs) from QUEUE until SIGTERM or Ctrl-C."""
    from fanout.backends.rq.allowlist import parse_allow
    from fanout.backends.rq.worker import run_worker

    sys.path.insert(0, os.getcwd())  # like `rq worker`: task modules in the current directory
    with errors_as_exit_codes():
        prefixes = parse_allow(allow or [])
        code = run_worker(
            redis_url, queue, name, burst, processes, prefixes, secret_file, quiet, redis_wait
        )
    raise typer.Exit(code)


@app.command("status")
def status_command(
    redis_url: opt.RedisUrl = None,
    queue: opt.StatusQueue = None,
    json_out: opt.StatusJson = False,
) -> None:
    """Queues with their lengths, and workers with name, pid, host, state, current job."""
    from fanout.backends.rq.status import queue_status

    with errors_as_exit_codes():
        status = queue_status(redis_url, queue)
    if json_out:
        typer.echo(json.dumps(status))
        return
    _print_status(status)


def _print_status(status: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False, markup=False)  # names are shown as given
    console.print(f"Redis {status['redis']}")
    queues = Table("queue", "length", box=None, header_style="bold")
    for q in status["queues"]:
        queues.add_row(Text(q["name"]), Text(str(q["length"])))
    console.print(queues)
    workers = Table(
        "worker", "pid", "host", "state", "current job", "queues", box=None, header_style="bold"
    )
    for w in status["workers"]:
        cells = (w["name"], str(w["pid"]), w["host"] or "", w["state"], w["current_job"] or "-",
                 ", ".join(w["queues"]))  # fmt: skip
        workers.add_row(*map(Text, cells))
    console.print(workers)
    console.print(f"{len(status['queues'])} queue(s), {len(status['workers'])} worker(s)")
