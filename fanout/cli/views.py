"""How ``fanout run`` shows results: one JSON line each, or the human view (what each
task printed, prefixed by its worker, then a table with what each task cost, every
failed task in full with why it ended, the cancelled ones by reason, and a summary
that counts the failures by cause). ``progress.py`` feeds them as results come.

User text (inputs, values, errors, names) is never read as markup, and a JSON line is
never wrapped.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from fanout._memory import format_size
from fanout.errors import Cancelled
from fanout.journal import json_line, json_record
from fanout.models import NOT_RUN, TaskError, TaskResult

MAX_ROWS = 1000  # rows kept for the human table; failed tasks are all listed below it
Print = Callable[[str], None]


class StdoutClosed(Exception):
    """Whoever read our stdout has gone (``| head``): the run stops quietly."""


def stdout_console() -> Any:
    """A rich Console on stdout that prints user text as given and, when stdout is
    closed, raises StdoutClosed (rich's own handler exits with 1, which says a task
    failed)."""
    from rich.console import Console

    class StdoutConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise StdoutClosed()

    return StdoutConsole(highlight=False, markup=False, soft_wrap=False)


def write_line(line: str) -> None:
    """One line on stdout, as is."""
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise StdoutClosed() from None


class View(Protocol):
    def show(self, result: TaskResult, item: Any, out: Print) -> None: ...

    def finish(self, complete: bool = False, interrupted: bool = False) -> None:
        """After the last result: ``complete`` when the run ended as it should (then an
        empty run says so too)."""


class JsonView:
    """Exactly one JSON object per task on stdout, nothing else."""

    def show(self, result: TaskResult, item: Any, out: Print) -> None:
        out(json_line(json_record(result)).decode())

    def finish(self, complete: bool = False, interrupted: bool = False) -> None:
        pass


class HumanView:
    """Each task's output prefixed by its worker, then a table, the failed tasks in full
    (with their tracebacks if asked) and a summary line."""

    def __init__(self, backend: str, tracebacks: bool = False, span: bool = False) -> None:
        """``span``: the summary gives the time from the first task's start to the last
        one's end (a run collected later), not the time this view has been showing."""
        self.backend = backend
        self.tracebacks = tracebacks
        self.span = span
        self.first_start = float("inf")
        self.last_end = 0.0
        self.rows: list[tuple[TaskResult, Any]] = []
        self.failures: list[tuple[TaskResult, Any]] = []  # failed, not cancelled
        self.cancelled: dict[str, list[int]] = {}  # why -> the indexes cancelled for it
        self.count = 0
        self.workers: set[tuple[str, str]] = set()
        self.hosts: set[str] = set()
        self.started = time.perf_counter()

    def show(self, result: TaskResult, item: Any, out: Print) -> None:
        self.count += 1
        if result.started_at:
            self.first_start = min(self.first_start, result.started_at)
            self.last_end = max(self.last_end, result.finished_at)
        w = result.worker
        if w.name != NOT_RUN:  # a result that no process ran is not a worker's
            self.workers.add((w.host, w.name))
            self.hosts.add(w.host)
        if len(self.rows) < MAX_ROWS:
            self.rows.append((result, item))
        error = result.error
        if error is not None and error.type == Cancelled.__name__:
            self.cancelled.setdefault(error.message, []).append(result.index)
        elif error is not None:
            self.failures.append((result, item))
        if result.output:
            prefix = f"{w.name}[{w.pid}]: "
            for line in result.output.splitlines():
                out(prefix + line)

    def finish(self, complete: bool = False, interrupted: bool = False) -> None:
        if not (self.count or complete):
            return
        console = stdout_console()
        if self.rows:
            console.print(self.table(console.width))
        if self.count > len(self.rows):
            console.print(f"... {self.count - len(self.rows)} more rows (use --json for all)")
        if self.failures:
            console.print(f"failed task{'s' if len(self.failures) != 1 else ''}:")
            for result, item in sorted(self.failures, key=lambda f: f[0].index):
                assert result.error is not None
                error = result.error
                console.print(f"  task {result.index}, input {_shown(item)}, {error.cause or '?'}:"
                              f" {error_text(error)}", soft_wrap=True)  # fmt: skip
                if self.tracebacks and error.traceback:
                    console.print("    " + error.traceback.rstrip().replace("\n", "\n    "),
                                  soft_wrap=True)  # fmt: skip
        for why, indices in self.cancelled.items():
            count = len(indices)
            console.print(f"cancelled, {count} task{'s' if count != 1 else ''}"
                          f" ({_spans(indices)}): {why}", soft_wrap=True)  # fmt: skip
        bad = self.failures or self.cancelled
        console.print(self.summary(interrupted), style="red" if bad else "green")

    def table(self, width: int) -> Any:
        """The rows as a table ``width`` columns wide: identity columns in full, inputs
        and values given the rest, each cut to one line."""
        from rich.table import Table
        from rich.text import Text

        rows: list[tuple[str, ...]] = []
        for r, item in sorted(self.rows, key=lambda row: row[0].index):
            if r.ok:
                outcome = _shown(r.value)
            else:
                assert r.error is not None
                outcome = _one_line(error_text(r.error))
            w, u = r.worker, r.usage
            cpu, mem = ("-", "-") if u is None else (f"{u.cpu:.3f}", format_size(u.max_rss))
            rows.append((str(r.index), _shown(item), outcome, w.name, str(w.pid), str(w.ppid),
                         w.host, f"{r.duration:.3f}", cpu, mem))  # fmt: skip
        headers = ("#", "input", "value / error", "worker", "pid", "ppid", "host", "s", "cpu",
                   "mem")  # fmt: skip
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
        room = max(20, width - sum(widths) + widths[1] + widths[2] - 2 * (len(headers) - 1))
        widths[1] = min(widths[1], max(5, room // 4))
        widths[2] = min(widths[2], room - widths[1])
        table = Table(box=None, pad_edge=False, header_style="bold")
        for i, header in enumerate(headers):
            numeric = header in ("#", "pid", "ppid", "s", "cpu", "mem")
            table.add_column(header, justify="right" if numeric else "left", no_wrap=True,
                             width=widths[i], overflow="ellipsis")  # fmt: skip
        ordered = sorted(self.rows, key=lambda row: row[0].index)
        for (result, _), row in zip(ordered, rows, strict=True):
            cells = [Text(cell) for cell in row]
            if not result.ok:
                cells[2].stylize("red")
            table.add_row(*cells)
        return table

    def summary(self, interrupted: bool = False) -> str:
        elapsed = time.perf_counter() - self.started
        if self.span:
            elapsed = max(0.0, self.last_end - self.first_start) if self.last_end else 0.0
        failed = len(self.failures)
        cancelled = sum(map(len, self.cancelled.values()))
        workers = len(self.workers)
        summary = (
            f"{self.count} task{'s' if self.count != 1 else ''}:"
            f" {self.count - failed - cancelled} ok, {failed} failed{self.causes()}"
            + (f", {cancelled} cancelled" if cancelled else "")
            + f" in {elapsed:.2f} s"
        )
        if workers:
            summary += f" on {workers} {self.backend} worker{'s' if workers != 1 else ''}"
        elif self.count:  # none ran (refused, cancelled): not "on 0 workers"
            summary += f"; no {self.backend} worker ran any"
        if len(self.hosts) > 1:  # the multi-machine case: say so
            summary += f" on {len(self.hosts)} hosts"
        if interrupted:
            summary += " (interrupted: these finished)"
        return summary

    def causes(self) -> str:
        """`` (2 memory-limit, 1 killed)``: the failures by cause, most first."""
        if not self.failures:
            return ""
        counts = Counter(r.error.cause or "?" for r, _ in self.failures if r.error is not None)
        return " (" + ", ".join(f"{n} {cause}" for cause, n in counts.most_common()) + ")"


def _shown(value: Any) -> str:
    return value if isinstance(value, _NotShown) else repr(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def error_text(error: TaskError) -> str:
    """``Type: message``, or the type alone when the message is empty
    (``KeyboardInterrupt()``)."""
    return f"{error.type}: {error.message}" if error.message else error.type


def _spans(indices: list[int], most: int = 20) -> str:
    """Indexes as ranges (``2-5, 9``), the first ``most`` of them, then how many more."""
    spans: list[list[int]] = []
    for index in sorted(indices):
        if spans and index == spans[-1][1] + 1:
            spans[-1][1] = index
        else:
            spans.append([index, index])
    shown = ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in spans[:most])
    more = len(spans) - most
    return f"{shown} and {more} more range{'s' if more != 1 else ''}" if more > 0 else shown


class _NotShown(str):
    """Stands for an input that was not kept (``--repeat`` has none)."""


NOT_SHOWN = _NotShown("-")
