"""How ``fanout run`` shows results: one JSON line each, or the human view (what each
task printed, prefixed by its worker, then a table and a summary), with an optional
progress bar on stderr."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any, Protocol

from fanout.cli.exitcodes import EXIT_FAILED, EXIT_OK
from fanout.models import TaskResult

MAX_ROWS = 1000  # rows kept for the human table; --json streams any number


class View(Protocol):
    def show(self, result: TaskResult) -> None: ...

    def finish(self, inputs: list[Any] | None) -> None: ...


class JsonView:
    """Exactly one JSON object per task on stdout, nothing else."""

    def show(self, result: TaskResult) -> None:
        record = result.to_dict()
        try:
            json.dumps(record["value"], allow_nan=False)
        except (TypeError, ValueError):
            record["value"] = repr(result.value)
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    def finish(self, inputs: list[Any] | None) -> None:
        pass


class HumanView:
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

    def finish(self, inputs: list[Any] | None) -> None:
        if not self.count:
            return
        from rich.console import Console

        console = Console(highlight=False)
        console.print(self.table(inputs or []))
        if self.count > len(self.rows):
            console.print(f"... {self.count - len(self.rows)} more rows (use --json for all)")
        console.print(self.summary(), style="red" if self.failed else "green")

    def table(self, kept: list[Any]) -> Any:
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("#", "input", "value / error", "worker", "pid", "ppid", "host", "s"):
            table.add_column(
                column, justify="right" if column in ("#", "pid", "ppid", "s") else "left"
            )
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
        return table

    def summary(self) -> str:
        elapsed = time.perf_counter() - self.started
        ok = self.count - self.failed
        summary = (
            f"{self.count} task{'s' if self.count != 1 else ''}: {ok} ok, {self.failed} failed"
            f" in {elapsed:.2f} s on {len(self.workers)} {self.backend} worker"
            f"{'s' if len(self.workers) != 1 else ''}"
        )
        if len(self.hosts) > 1:  # the multi-machine case: say so
            summary += f" on {len(self.hosts)} hosts"
        return summary


def consume(results: Iterator[TaskResult], view: View, total: int | None, bar: bool) -> int:
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


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"
