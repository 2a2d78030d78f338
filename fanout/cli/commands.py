"""The commands: each parses its options and calls the library, nothing more.

Options a backend takes (``--daemon``, ``--redis-url``, ...) go to it by name when they
are given; the backend refuses one it does not take (UnknownOption), said here as the
flag the user typed.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from fanout.cli import options as opt
from fanout.cli import rq_options as ropt
from fanout.cli.exitcodes import errors_as_exit_codes
from fanout.cli.running import RunSettings, execute

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help, and user text is never read as markup
    help="Fan one Python function out over many inputs, on local processes or RQ workers.",
)


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
    redis_wait: opt.RunRedisWait = None,
    timeout: opt.Timeout = None,
    retries: opt.Retries = 0,
    max_failures: opt.MaxFailures = None,
    max_memory: opt.MaxMemory = None,
    max_tasks_per_worker: opt.MaxTasksPerWorker = None,
    max_memory_per_worker: opt.MaxMemoryPerWorker = None,
    ordered: opt.Ordered = True,
    json_out: opt.Json = False,
    tracebacks: opt.Tracebacks = False,
    progress: opt.ShowProgress = None,
    daemon: opt.Daemon = None,
    detach: opt.Detach = False,
    journal: opt.JournalPath = None,
    resume: opt.ResumeFlag = False,
    resume_failed: opt.ResumeFailed = False,
    report: opt.ReportPath = None,
) -> None:
    """Run TARGET once per input and report every result with the process that made it."""
    given = {"daemon": daemon, "redis_url": redis_url, "queue": queue, "secret_file": secret_file,
             "redis_wait": redis_wait, "max_tasks_per_worker": max_tasks_per_worker,
             "max_memory_per_worker": max_memory_per_worker}  # fmt: skip
    settings = RunSettings(
        target,
        (items, range_, repeat, input_, lines),
        backend,
        workers,
        options={name: value for name, value in given.items() if value is not None},
        map_options={
            "star": star,
            "ordered": ordered,
            "timeout": timeout,
            "retries": retries,
            "max_failures": max_failures,
            "max_memory": max_memory,
            "journal": journal,
            "resume": "failed" if resume_failed else resume,
        },
        json_out=json_out,
        tracebacks=tracebacks,
        progress=progress,
        detach=detach,
        report=report,
    )
    execute(settings)


@app.command("worker")
def worker_command(
    redis_url: ropt.RedisUrl = None,
    queue: ropt.WorkerQueue = "fanout",
    name: ropt.WorkerName = None,
    burst: ropt.Burst = False,
    processes: ropt.Processes = 1,
    allow: ropt.Allow = None,
    secret_file: ropt.SecretFile = None,
    quiet: ropt.Quiet = False,
    redis_wait: ropt.RedisWait = 60.0,
    metrics_port: ropt.MetricsPort = None,
    max_tasks_per_worker: opt.MaxTasksPerWorker = None,
    max_memory_per_worker: opt.MaxMemoryPerWorker = None,
) -> None:
    """Serve fanout jobs (plain RQ jobs) from QUEUE until SIGTERM or Ctrl-C."""
    from fanout.backends.rq.allowlist import parse_allow
    from fanout.backends.rq.worker import run_worker

    sys.path.insert(0, os.getcwd())  # like `rq worker`: task modules in the current directory
    with errors_as_exit_codes():
        prefixes = parse_allow(allow or [])
        code = run_worker(redis_url, queue, name, burst, processes, prefixes, secret_file, quiet,
                          redis_wait, metrics_port, max_tasks_per_worker=max_tasks_per_worker,
                          max_memory_per_worker=max_memory_per_worker)  # fmt: skip
    raise typer.Exit(code)
