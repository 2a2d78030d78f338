"""``fanout drain``, ``fanout pause`` and ``fanout resume``: a fleet of workers operated
from any machine that reaches their Redis (``fanout.backends.rq.fleet``)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fanout.cli import rq_options as ropt
from fanout.cli.commands import app
from fanout.cli.exitcodes import EXIT_FAILED, EXIT_USAGE, errors_as_exit_codes, fail
from fanout.cli.options import check_wait

if TYPE_CHECKING:
    from fanout.backends.rq.fleet import Draining

DrainWorkers = Annotated[
    list[str] | None,
    typer.Argument(metavar="[WORKER]...", show_default=False,
                   help="Workers to drain, by name (default: every worker serving --queue)."),
]  # fmt: skip
DrainQueue = Annotated[
    str,
    typer.Option("--queue", metavar="NAME", help="Drain the workers serving this queue."),
]
DrainTimeout = Annotated[
    float | None,
    typer.Option("--timeout", metavar="SECONDS", callback=check_wait, show_default=False,
                 help="Wait at most this long for the workers to exit [default: as long as"
                      " their running tasks take]."),
]  # fmt: skip
DrainWait = Annotated[
    bool,
    typer.Option("--wait/--no-wait", help="Wait for the workers to exit, or only tell them."),
]
Duration = Annotated[
    int | None,
    typer.Option("--duration", metavar="SECONDS", min=1, show_default=False,
                 help="Resume by itself after this long [default: only on fanout resume]."),
]  # fmt: skip


@contextlib.contextmanager
def _redis(url: str | None) -> Iterator[tuple[Any, str]]:
    """A connection to ``url`` (else $FANOUT_REDIS_URL) and the URL as it may be shown;
    Redis errors said in one line (exit 3)."""
    from fanout.backends.rq.connection import connect, mask_url, redis_url, translate

    with errors_as_exit_codes():
        url = redis_url(url)
        connection = connect(url)
        with translate(url):
            yield connection, mask_url(url)


@app.command("drain")
def drain_command(
    workers: DrainWorkers = None,
    redis_url: ropt.RedisUrl = None,
    queue: DrainQueue = "fanout",
    timeout: DrainTimeout = None,
    wait: DrainWait = True,
) -> None:
    """Drain workers: each finishes the task it runs, gives the unstarted rest of its job
    back to the queue, and exits 0. Waits until they have exited (exit 1 if --timeout
    passes first)."""
    from fanout.backends.rq import fleet

    with _redis(redis_url) as (connection, where):
        names = list(dict.fromkeys(workers or fleet.serving(connection, queue)))
        if not names:
            typer.echo(f"no worker serves queue {queue!r} on {where}: nothing to drain")
            return
        kinds = fleet.registered(connection, names)
        if workers:
            _refuse_unknown(connection, kinds, where)
        chosen = {name: bool(kind) for name, kind in kinds.items() if kind is not None}
        for name, is_fanout in chosen.items():
            if not is_fanout:
                typer.echo(f"fanout: warning: {name} is a stock RQ worker, which cannot give"
                           " its job back: asked for RQ's warm shutdown instead (it finishes"
                           " its whole job, then exits)", err=True)  # fmt: skip
        draining = fleet.start_drain(connection, chosen)
        typer.echo(f"draining {_count(len(draining))} on {where}: {', '.join(chosen)}")
        if not wait:
            typer.echo("told them; each exits once its running task ends")
            return
        began = time.monotonic()
        with _progress() as show:
            left = fleet.wait_drained(connection, draining, timeout, _said(show),
                                      lambda left: show(_waiting(left, began)))  # fmt: skip
    _summary(draining, left, time.monotonic() - began, timeout)


def _refuse_unknown(connection: Any, kinds: dict[str, bool | None], where: str) -> None:
    """Exit 2 naming the workers that are not registered (before anything is sent)."""
    from fanout.backends.rq import fleet

    unknown = [name for name, kind in kinds.items() if kind is None]
    if not unknown:
        return
    known = fleet.serving_any(connection)
    name = unknown[0]
    # `fanout worker --name W --processes N` registers W-1 ... W-N.
    theirs = [w for w in known if w.startswith(f"{name}-")]
    hint = f" (its processes: {', '.join(theirs)})" if theirs else " (fanout status lists them)"
    fail(f"no worker named {name!r} is registered on {where}{hint}", EXIT_USAGE)


def _said(show: Any) -> Any:
    def on_exit(worker: Draining) -> None:
        show(None)
        if worker.outcome == "gone":
            how = "gone without a clean exit (killed, or its host lost): callers rerun its job"
        elif not worker.fanout:
            how = "stopped (RQ's warm shutdown)"
        else:
            gave = worker.gave_back or 0
            how = f"drained, {gave} task{'s' if gave != 1 else ''} given back"
        typer.echo(f"{worker.name}: {how} ({worker.seconds:.1f} s)")

    return on_exit


def _waiting(left: list[Draining], began: float) -> str:
    return (f"waiting for {_count(len(left))} to finish their running task"
            f" ({time.monotonic() - began:.0f} s)")  # fmt: skip


@contextlib.contextmanager
def _progress() -> Iterator[Any]:
    """A line on stderr that says what the drain waits for, on a terminal only."""
    if not sys.stderr.isatty():
        yield lambda text: None
        return
    from rich.console import Console

    with Console(stderr=True).status("waiting for the workers") as status:
        yield lambda text: status.update(text) if text else None


def _summary(draining: list[Draining], left: list[Draining], took: float,
             timeout: float | None) -> None:  # fmt: skip
    done = [w for w in draining if w.outcome is not None]
    gave = sum(w.gave_back or 0 for w in done)
    typer.echo(f"{_count(len(done))} drained in {took:.1f} s; {gave} task"
               f"{'s' if gave != 1 else ''} given back to the queue")  # fmt: skip
    if left:
        names = ", ".join(w.name for w in left)
        fail(f"{_count(len(left))} still draining after {timeout:g} s: {names}; each exits"
             " once its running task ends", EXIT_FAILED)  # fmt: skip


def _count(n: int) -> str:
    return f"{n} worker{'s' if n != 1 else ''}"


@app.command("pause")
def pause_command(redis_url: ropt.RedisUrl = None, duration: Duration = None) -> None:
    """Pause every RQ worker of this Redis: none takes a new job until fanout resume (jobs
    running go on). RQ's own suspend: rq suspend and rq resume work alike."""
    from fanout.backends.rq import fleet

    with _redis(redis_url) as (connection, where):
        again = " (they were paused already)" if fleet.paused(connection) else ""
        fleet.pause(connection, duration)
    until = f"for {duration} s" if duration else "until fanout resume"
    typer.echo(f"paused the workers on {where}{again}: they take no new job {until};"
               " jobs running go on")  # fmt: skip


@app.command("resume")
def resume_command(redis_url: ropt.RedisUrl = None) -> None:
    """Let the workers of this Redis take jobs again (after fanout pause or rq suspend)."""
    from fanout.backends.rq import fleet

    with _redis(redis_url) as (connection, where):
        was = fleet.unpause(connection)
    typer.echo(f"resumed the workers on {where}" if was else
               f"the workers on {where} were not paused")  # fmt: skip
