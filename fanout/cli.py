"""The ``fanout`` command line: it parses options and calls the library, nothing more.

Exit codes: 0 every task ok, 1 some task failed, 2 usage error or bad target or input,
3 backend unavailable, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO, NoReturn

import typer

from fanout.api import DEFAULT_BACKEND, Fanout
from fanout.errors import BackendUnavailable, FanoutError, InputError
from fanout.models import TaskResult

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143
MAX_ROWS = 1000  # rows kept for the human table; --json streams any number

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fan one Python function out over many inputs, on local processes or RQ workers.",
)


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so that cleanup runs as for Ctrl-C."""


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"fanout: error: {message}", err=True)
    raise typer.Exit(code)


def _redis_url_option(help: str) -> Any:
    return typer.Option(
        None, "--redis-url", envvar="FANOUT_REDIS_URL", help=help, show_default=False
    )


def _secret_file_option() -> Any:
    return typer.Option(
        None,
        "--secret-file",
        envvar="FANOUT_SECRET_FILE",
        help="Sign jobs and results with the secrets in this file (else $FANOUT_SECRET).",
        show_default=False,
    )


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Show the version and exit."),
) -> None:
    if version:
        from fanout import __version__

        typer.echo(f"fanout {__version__}")
        raise typer.Exit()


@app.command("run")
def run_command(
    target: str = typer.Argument(
        ..., help="package.module:function, or path/to/file.py:function (local backend)."
    ),
    items: list[str] | None = typer.Argument(
        None, help="Inputs, one task each; parsed as JSON when they parse, else strings."
    ),
    range_: int | None = typer.Option(None, "--range", help="Inputs 0..N-1.", min=0),
    repeat: int | None = typer.Option(None, "--repeat", help="Call TARGET() N times.", min=0),
    input_: str | None = typer.Option(
        None, "--input", help="Read one JSON value per line from FILE ('-' for stdin)."
    ),
    star: bool = typer.Option(False, "--star", help="Unpack each input as positional args."),
    backend: str | None = typer.Option(
        None, "--backend", envvar="FANOUT_BACKEND", help="local (default), inline, ..."
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        envvar="FANOUT_WORKERS",
        min=0,
        help="Worker processes (rq: local fanout workers to start for the run).",
    ),
    redis_url: str | None = _redis_url_option("rq: the Redis server."),
    queue: str | None = typer.Option(None, "--queue", help="rq: the queue name (default fanout)."),
    secret_file: str | None = _secret_file_option(),
    timeout: float | None = typer.Option(
        None, "--timeout", min=0.0, help="End a task running longer (seconds)."
    ),
    retries: int = typer.Option(0, "--retries", min=0, help="Retry a failed task N times."),
    ordered: bool = typer.Option(
        True, "--ordered/--unordered", help="Results in input order, or as they finish."
    ),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per task on stdout."),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bar on stderr (default: if a tty)."
    ),
    daemon: bool | None = typer.Option(
        None, "--daemon/--no-daemon", help="Local workers as daemons (default) or not."
    ),
) -> None:
    """Run TARGET once per input and report every result with the process that made it."""
    sources = [
        name
        for name, given in (
            ("ITEM arguments", bool(items)),
            ("--range", range_ is not None),
            ("--repeat", repeat is not None),
            ("--input", input_ is not None),
        )
        if given
    ]
    if len(sources) > 1:
        _fail(f"give only one source of inputs, not {' and '.join(sources)}", EXIT_USAGE)
    if not sources:
        _fail("nothing to run: give ITEMs, --range N, --repeat N or --input FILE", EXIT_USAGE)

    # Like `python -m`, let targets in the current directory be found.
    sys.path.insert(0, os.getcwd())
    name = backend or os.environ.get("FANOUT_BACKEND") or DEFAULT_BACKEND
    options: dict[str, Any] = {}
    if daemon is not None:
        if name != "local":
            _fail("--daemon/--no-daemon applies to the local backend only", EXIT_USAGE)
        options["daemon"] = daemon
    if name == "rq":
        options.update(redis_url=redis_url, queue=queue, secret_file=secret_file)
    elif queue is not None:
        _fail("--queue applies to the rq backend only", EXIT_USAGE)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        inputs, total = _inputs(items, range_, repeat, input_)
        with Fanout(name, workers, **options) as fo:
            view = _JsonView() if json_out else _HumanView(fo.backend_name)
            shown = _Inputs(inputs) if inputs is not None and not json_out else inputs
            results = fo.map(
                target,
                shown,
                repeat=repeat,
                star=star,
                ordered=ordered,
                timeout=timeout,
                retries=retries,
            )
            show_bar = progress if progress is not None else sys.stderr.isatty()
            kept = shown if isinstance(shown, _Inputs) else None
            try:
                code = _consume(results, view, total, show_bar)
            except InputError:
                # Bad input part-way still shows the tasks that ran before the error.
                view.finish(kept)
                raise
            view.finish(kept)
    except KeyboardInterrupt:
        typer.echo("fanout: interrupted; workers stopped", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except _Terminated:
        typer.echo("fanout: terminated; workers stopped", err=True)
        raise typer.Exit(EXIT_TERMINATED) from None
    except BackendUnavailable as exc:
        _fail(str(exc), EXIT_UNAVAILABLE)
    except (FanoutError, ValueError) as exc:
        _fail(str(exc), EXIT_USAGE)
    raise typer.Exit(code)


@app.command("worker")
def worker_command(
    redis_url: str | None = _redis_url_option("The Redis server."),
    queue: str = typer.Option("fanout", "--queue", help="The queue to serve."),
    name: str | None = typer.Option(None, "--name", help="Register with RQ under this name."),
    burst: bool = typer.Option(False, "--burst", help="Exit once the queue is empty."),
    processes: int = typer.Option(1, "--processes", min=1, help="Worker processes to run."),
    allow: list[str] | None = typer.Option(
        None,
        "--allow",
        envvar="FANOUT_ALLOW",
        help="Run only targets in this module or below (repeatable; FANOUT_ALLOW: a,b).",
        show_default=False,
    ),
    secret_file: str | None = _secret_file_option(),
) -> None:
    """Serve fanout jobs (plain RQ jobs) from QUEUE until SIGTERM or Ctrl-C."""
    from fanout.allowlist import parse_allow
    from fanout.rqworker import run_worker

    # Like `rq worker`, import task modules from the current directory too.
    sys.path.insert(0, os.getcwd())
    try:
        prefixes = parse_allow(allow or [])
        code = run_worker(redis_url, queue, name, burst, processes, prefixes, secret_file)
    except BackendUnavailable as exc:
        _fail(str(exc), EXIT_UNAVAILABLE)
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    raise typer.Exit(code)


@app.command("status")
def status_command(
    redis_url: str | None = _redis_url_option("The Redis server."),
    queue: str | None = typer.Option(None, "--queue", help="Only this queue (default: all)."),
    json_out: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Queues with their lengths, and workers with name, pid, host, state, current job."""
    from fanout.backends.rq import queue_status

    try:
        status = queue_status(redis_url, queue)
    except BackendUnavailable as exc:
        _fail(str(exc), EXIT_UNAVAILABLE)
    if json_out:
        typer.echo(json.dumps(status))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    console.print(f"Redis {status['redis']}")
    queues = Table("queue", "length", box=None, header_style="bold")
    for q in status["queues"]:
        queues.add_row(q["name"], str(q["length"]))
    console.print(queues)
    workers = Table(
        "worker", "pid", "host", "state", "current job", "queues", box=None, header_style="bold"
    )
    for w in status["workers"]:
        workers.add_row(
            w["name"], str(w["pid"]), w["host"] or "", w["state"], w["current_job"] or "-",
            ", ".join(w["queues"]),
        )  # fmt: skip
    console.print(workers)
    console.print(f"{len(status['queues'])} queue(s), {len(status['workers'])} worker(s)")


def _inputs(
    items: list[str] | None, range_: int | None, repeat: int | None, input_: str | None
) -> tuple[Iterator[Any] | None, int | None]:
    """The input iterator (None for --repeat) and the task count when it is known."""
    if repeat is not None:
        return None, repeat
    if range_ is not None:
        return iter(range(range_)), range_
    if input_ is not None:
        return _read_json_lines(input_), None
    values = [_parse_item(text) for text in items or []]
    return iter(values), len(values)


def _consume(
    results: Iterator[TaskResult], view: _JsonView | _HumanView, total: int | None, bar: bool
) -> int:
    """Show every result as it arrives; return the exit code the results call for."""
    failed = False
    if not bar:
        for result in results:
            failed |= not result.ok
            view.show(result)
        return EXIT_FAILED if failed else EXIT_OK
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    # Task output and --json lines go to stdout; rich may only fold them in above the
    # bar when stdout is the same terminal, never when stdout is a file or a pipe.
    with Progress(
        *columns,
        console=Console(stderr=True),
        transient=True,
        redirect_stdout=sys.stdout.isatty(),
        redirect_stderr=False,
    ) as bar_view:
        task = bar_view.add_task("tasks", total=total)
        for result in results:
            failed |= not result.ok
            view.show(result)
            bar_view.advance(task)
    return EXIT_FAILED if failed else EXIT_OK


class _Inputs:
    """Passes inputs through, keeping the first few for the table's input column."""

    def __init__(self, source: Iterator[Any]) -> None:
        self.source = source
        self.kept: list[Any] = []

    def __iter__(self) -> Iterator[Any]:
        for item in self.source:
            if len(self.kept) < MAX_ROWS:
                self.kept.append(item)
            yield item


class _JsonView:
    def show(self, result: TaskResult) -> None:
        record = result.to_dict()
        try:
            json.dumps(record["value"], allow_nan=False)
        except (TypeError, ValueError):
            record["value"] = repr(result.value)
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    def finish(self, inputs: _Inputs | None) -> None:
        pass


class _HumanView:
    """Each task's output prefixed by its worker, then a table and a summary line."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.rows: list[TaskResult] = []
        self.count = self.failed = 0
        self.workers: set[tuple[str, int]] = set()
        self.hosts: set[str] = set()
        self.started = time.perf_counter()

    def show(self, result: TaskResult) -> None:
        self.count += 1
        self.failed += not result.ok
        self.workers.add((result.worker.name, result.worker.pid))
        self.hosts.add(result.worker.host)
        if len(self.rows) < MAX_ROWS:
            self.rows.append(result)
        if result.output:
            prefix = f"{result.worker.name}[{result.worker.pid}]: "
            lines = result.output.splitlines()
            sys.stdout.write("".join(f"{prefix}{line}\n" for line in lines))
            sys.stdout.flush()

    def finish(self, inputs: _Inputs | None) -> None:
        if not self.count:
            return
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        console = Console(highlight=False)
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("#", "input", "value / error", "worker", "pid", "ppid", "host", "s"):
            table.add_column(
                column, justify="right" if column in ("#", "pid", "ppid", "s") else "left"
            )
        kept = inputs.kept if inputs is not None else []
        for r in sorted(self.rows, key=lambda r: r.index):
            shown_input = _short(kept[r.index]) if r.index < len(kept) else "-"
            if r.ok:
                outcome = Text(_short(r.value))
            else:
                assert r.error is not None
                message = r.error.message
                message = message if len(message) <= 60 else message[:59] + "…"
                outcome = Text(f"{r.error.type}: {message}", style="red")
            table.add_row(
                str(r.index), shown_input, outcome, r.worker.name, str(r.worker.pid),
                str(r.worker.ppid), r.worker.host, f"{r.duration:.3f}",
            )  # fmt: skip
        console.print(table)
        if self.count > len(self.rows):
            console.print(f"... {self.count - len(self.rows)} more rows (use --json for all)")
        elapsed = time.perf_counter() - self.started
        ok = self.count - self.failed
        summary = (
            f"{self.count} task{'s' if self.count != 1 else ''}: {ok} ok, {self.failed} failed"
            f" in {elapsed:.2f} s on {len(self.workers)} {self.backend} worker"
            f"{'s' if len(self.workers) != 1 else ''}"
        )
        if len(self.hosts) > 1:  # the multi-machine case: say so
            summary += f" on {len(self.hosts)} hosts"
        console.print(summary, style="red" if self.failed else "green")


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _parse_item(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _read_json_lines(source: str) -> Iterator[Any]:
    """One JSON value per line of ``source`` ('-' is stdin); blank lines are skipped."""
    stream: BinaryIO
    if source == "-":
        stream, label = sys.stdin.buffer, "stdin"
    else:
        try:
            stream, label = Path(source).open("rb"), source  # noqa: SIM115 - closed below
        except OSError as exc:
            raise InputError(f"cannot read --input {source!r}: {exc.strerror}") from None

    def lines() -> Iterator[Any]:
        with stream:
            for number, raw in enumerate(stream, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InputError(f"{label} line {number} is not UTF-8 text: {exc}") from None
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise InputError(
                        f"{label} line {number} is not valid JSON ({exc}); "
                        "--input takes one JSON value per line"
                    ) from None

    return lines()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


def main() -> None:
    """Entry point of the ``fanout`` console script."""
    app()


if __name__ == "__main__":
    main()
