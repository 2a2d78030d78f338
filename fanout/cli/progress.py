"""Results shown as they arrive, with a progress display on stderr when asked for (or,
by default, when stderr is a terminal): a bar on a terminal; on anything else (a CI log,
a file) a plain line every few seconds and one at the end, since a bar redrawn in place
would either show nothing there or fill the log with escape codes."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from fanout.cli.exitcodes import EXIT_FAILED, EXIT_OK
from fanout.cli.views import Print, View, write_line
from fanout.models import TaskResult

LINE_EVERY_SECONDS = 5.0  # a plain progress line at most this often


def consume(
    results: Iterator[TaskResult],
    view: View,
    taken: Callable[[int], Any],
    total: int | None,
    progress: bool,
) -> int:
    """Show every result as it arrives (``taken(index)`` is its input); return the exit
    code the results call for. ``progress``: a progress display on stderr."""
    if not progress:
        return _show_all(results, view, taken, write_line, lambda failed: None)
    if not sys.stderr.isatty():
        lines = ProgressLines(total)
        code = _show_all(results, view, taken, write_line, lines.advance)
        lines.say()
        return code
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    from rich.text import Text

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(
        *columns,
        console=Console(stderr=True),
        transient=True,
        redirect_stdout=False,  # rich would wrap lines and read markup in them
        redirect_stderr=False,
    ) as bar:

        def above_the_bar(line: str) -> None:
            # The same terminal as the bar: lines go above it, as they are (no wrapping,
            # no markup), or the bar would be drawn over them.
            bar.console.print(Text(line), soft_wrap=True, highlight=False)

        task = bar.add_task("tasks", total=total)
        out = above_the_bar if sys.stdout.isatty() else write_line
        return _show_all(results, view, taken, out, lambda failed: bar.advance(task))


def _show_all(
    results: Iterator[TaskResult],
    view: View,
    taken: Callable[[int], Any],
    out: Print,
    advance: Callable[[bool], None],
) -> int:
    failed = False
    for result in results:
        failed |= not result.ok
        view.show(result, taken(result.index), out)
        advance(not result.ok)
    return EXIT_FAILED if failed else EXIT_OK


class ProgressLines:
    """``--progress`` where stderr is no terminal: ``fanout: 120/1000 tasks done, 3
    failed, 4.1 s`` every ``LINE_EVERY_SECONDS``, and once more at the end."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.started = self.last = time.monotonic()

    def advance(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        if time.monotonic() - self.last >= LINE_EVERY_SECONDS:
            self.say()

    def say(self) -> None:
        self.last = now = time.monotonic()
        of = "" if self.total is None else f"/{self.total}"
        sys.stderr.write(f"fanout: {self.done}{of} tasks done, {self.failed} failed,"
                         f" {now - self.started:.1f} s\n")  # fmt: skip
        sys.stderr.flush()
