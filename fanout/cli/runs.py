"""``fanout results``, ``fanout cancel`` and ``fanout status``: runs by their id, and the
queues and workers of a Redis, from any machine that reaches it."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer

from fanout.api import Fanout
from fanout.cli import options as opt
from fanout.cli import rq_options as ropt
from fanout.cli.commands import app
from fanout.cli.exitcodes import EXIT_FAILED, EXIT_INTERRUPTED, errors_as_exit_codes, fail
from fanout.cli.progress import consume
from fanout.cli.views import NOT_SHOWN, HumanView, JsonView, StdoutClosed, View, stdout_console
from fanout.errors import FanoutError, IncompleteRun


def _rq(redis_url: str | None) -> Fanout:
    """The rq backend at ``redis_url`` (else $FANOUT_REDIS_URL), starting no worker."""
    return Fanout("rq", 0, **({"redis_url": redis_url} if redis_url else {}))


@app.command("results")
def results_command(
    run_id: ropt.RunId,
    redis_url: ropt.RedisUrl = None,
    json_out: opt.Json = False,
    tracebacks: opt.Tracebacks = False,
    no_wait: ropt.NoWait = False,
    keep: ropt.Keep = False,
    ordered: ropt.CollectOrdered = False,
) -> NoReturn:
    """Every result of run RUN_ID, each index once: those finished at once, the rest as
    they finish. A complete collection removes the run's data (unless --keep). An input
    is shown where its job is still in Redis (a finished job's went with it)."""
    view: View | None = None
    try:
        with errors_as_exit_codes():
            options: dict[str, Any] = {"keep": keep}
            if redis_url:
                options["redis_url"] = redis_url
            with Fanout("rq", 0, **options) as fo:
                view = JsonView() if json_out else HumanView("rq", tracebacks, span=True)
                inputs: dict[int, Any] | None = None if json_out else {}
                results = fo.attach(run_id, not no_wait, ordered, inputs)
                shown = (lambda i: NOT_SHOWN) if inputs is None else (
                    lambda i: inputs.pop(i, NOT_SHOWN))  # fmt: skip
                try:
                    code = consume(results, view, shown, None, False)
                except IncompleteRun as exc:  # every result it has, then the missing inputs
                    view.finish(complete=True)
                    fail(str(exc), EXIT_FAILED)
                except FanoutError:
                    # What was collected, then why it stopped (Redis lost, the results
                    # gone meanwhile).
                    view.finish()
                    raise
            view.finish(complete=True)
    except KeyboardInterrupt:
        if view is not None:
            view.finish(interrupted=True)
        typer.echo(f"fanout: interrupted; run {run_id} goes on: collect it again with"
                   f" fanout results {run_id}", err=True)  # fmt: skip
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except StdoutClosed:
        raise typer.Exit(141) from None
    raise typer.Exit(code)


@app.command("cancel")
def cancel_command(run_id: ropt.RunId, redis_url: ropt.RedisUrl = None) -> None:
    """Cancel run RUN_ID: its queued tasks are cancelled, its running tasks stopped."""
    with errors_as_exit_codes(), _rq(redis_url) as fo:
        fo.backend.cancel_run(run_id)  # returns once its stopped tasks have reported
        status = fo.backend.run_status(run_id)
    left = status["running"]
    still = f"; {left} still stopping" if left else ""
    from fanout.backends.rq.protocol import CANCELLED_TTL, in_words

    kept = in_words(CANCELLED_TTL)
    typer.echo(f"run {run_id} cancelled: {status['ok']} ok, {status['failed']} failed,"
               f" {status['cancelled']} cancelled{still}; collect them within {kept} with:"
               f" fanout results {run_id}", err=True)  # fmt: skip


@app.command("status")
def status_command(
    run_id: ropt.OptionalRunId = None,
    redis_url: ropt.RedisUrl = None,
    queue: ropt.StatusQueue = None,
    json_out: ropt.StatusJson = False,
) -> None:
    """Run RUN_ID's counts and workers; without RUN_ID, the queues with their lengths
    and the workers with name, pid, host, state, current job."""
    with errors_as_exit_codes():
        if run_id is not None:
            with _rq(redis_url) as fo:
                status = fo.backend.run_status(run_id)
        else:
            from fanout.backends.rq.status import queue_status

            status = queue_status(redis_url, queue)
    if json_out:
        typer.echo(json.dumps(status))
    elif run_id is not None:
        _print_run(status)
    else:
        _print_status(status)


def _print_run(status: dict[str, Any]) -> None:
    counts = ", ".join(f"{status[k]} {k}" for k in ("ok", "failed", "cancelled", "queued",
                                                    "running"))  # fmt: skip
    whole, state = "", status["state"]
    if status["feeding"]:
        whole = " (so far: its caller is still enqueueing)"
    elif not status["enqueued_all"] and state == "running":
        whole = " (its caller stopped before it had enqueued every input: the rest are missing)"
    elif not status["enqueued_all"]:
        whole = f" (the run was {state} before every input was enqueued)"
    sys.stdout.write(f"run {status['run']} ({status['state']}): {status['target']} on queue"
                     f" {status['queue']}\n{status['total']} tasks{whole}: {counts}\n")  # fmt: skip
    if status["dropped"]:
        sys.stdout.write("its results were dropped: its caller cut it short, and nobody had its"
                         " id to collect them\n")  # fmt: skip
    for worker in status["workers"]:
        sys.stdout.write(f"  running on {worker['name']} ({worker['host']})\n")


def _print_status(status: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    console = stdout_console()  # names are shown as given
    found = f" (master {status['master']}, found by Sentinel)" if status.get("master") else ""
    console.print(f"Redis {status['redis']}{found}")
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
    paused = "; paused: no worker takes a new job until fanout resume" if status["paused"] else ""
    console.print(f"{len(status['queues'])} queue(s), {len(status['workers'])} worker(s){paused}")
