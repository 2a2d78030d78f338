"""``fanout run --report FILE.html``: every result packed for the report as it is shown,
and the file written when the run ends, however it ends (complete, Ctrl-C, SIGTERM, a
lost Redis, a closed stdout): the picture of what finished."""

from __future__ import annotations

from typing import Any

import typer

from fanout.cli.views import NOT_SHOWN, Print, View
from fanout.errors import InputError
from fanout.models import TaskResult
from fanout.reporting import page
from fanout.reporting.pack import UNKNOWN, Packer


class ReportView:
    """A view that packs each result (and its input) for the report, then shows it as
    ``inner`` does. ``path`` is checked at once, before the run starts."""

    def __init__(self, inner: View, path: str, title: str, source: str) -> None:
        self.inner = inner
        self.path = page.writable(path)
        self.title = title
        self.source = source
        self.packer = Packer()
        self.written = False

    def show(self, result: TaskResult, item: Any, out: Print) -> None:
        self.packer.add(result, UNKNOWN if item is NOT_SHOWN else item)
        self.inner.show(result, item, out)

    def finish(self, complete: bool = False, interrupted: bool = False) -> None:
        try:
            self.inner.finish(complete, interrupted)
        finally:
            self.write(strict=complete)

    def write(self, strict: bool = False) -> None:
        """Write the report, once. A failure raises an InputError when ``strict`` (the
        run completed: exit 2); otherwise it is said in one line, and the run's own
        ending (130, 143, ...) stands."""
        if self.written:
            return
        self.written = True
        try:
            data = self.packer.data(self.title, self.source)
            path = page.write(page.render(data), self.path)
        except InputError as exc:
            if strict:
                raise
            typer.echo(f"fanout: error: {exc}", err=True)
            return
        count = len(self.packer)
        typer.echo(f"fanout: report of {count} task{'s' if count != 1 else ''} written to"
                   f" {path}", err=True)  # fmt: skip
