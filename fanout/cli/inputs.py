"""Where a run's inputs come from: ITEM arguments, ``--range``, ``--repeat`` or ``--input``.

``--input -`` (or a pipe, a FIFO: anything but a regular file) may trickle: it is read
by a thread of its own into a ``StreamFeed``, so that results flow while it does.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from fanout.backends.feed import StreamFeed
from fanout.cli.views import NOT_SHOWN
from fanout.errors import InputError


class InputSource:
    """The inputs of one ``fanout run``, read lazily. For display, each input is kept
    until its result has been shown (so as many as are in flight, no more)."""

    def __init__(
        self,
        items: list[str] | None,
        range_: int | None,
        repeat: int | None,
        path: str | None,
        lines: bool = False,
    ) -> None:
        given = [
            name
            for name, on in (
                ("ITEM arguments", bool(items)),
                ("--range", range_ is not None),
                ("--repeat", repeat is not None),
                ("--input", path is not None),
            )
            if on
        ]
        if len(given) > 1:
            raise ValueError(f"give only one source of inputs, not {' and '.join(given)}")
        if not given:
            raise ValueError("nothing to run: give ITEMs, --range N, --repeat N or --input FILE")
        if lines and path is None:
            raise ValueError("--lines says how to read --input FILE; give --input too")
        self.repeat = repeat
        self.total: int | None = None  # the task count, when it is known up front
        self.pending: dict[int, Any] = {}  # inputs taken whose result is not shown yet
        self.source: Iterator[Any] | None = None
        self.live = False  # the source may trickle: read it in a thread of its own
        if repeat is not None:
            self.total = repeat
        elif range_ is not None:
            self.source, self.total = iter(range(range_)), range_
        elif path is not None:
            stream, label = _open(path)
            self.live = not _is_regular(stream)
            self.source = (read_lines if lines else read_json_lines)(stream, label)
        else:
            values = [parse_item(text) for text in items or []]
            self.source, self.total = iter(values), len(values)

    def items(self, keep: bool, wake: Callable[[], None] | None = None) -> Iterator[Any] | None:
        """The inputs (None for ``--repeat``); ``keep``: remember each until ``taken``;
        ``wake``: given, a source that may trickle is read by a thread of its own, and
        ``wake()`` tells the backend each time there is more (``Backend.wake``)."""
        source = self.source
        if source is None:
            return None
        if keep:
            source = self._keeping(source)
        if wake is not None and self.live:
            return StreamFeed(source).start(wake)
        return source

    def _keeping(self, source: Iterator[Any]) -> Iterator[Any]:
        pending = self.pending
        for index, item in enumerate(source):
            pending[index] = item
            yield item

    def taken(self, index: int) -> Any:
        """The input of task ``index`` (once: it is forgotten), or NOT_SHOWN."""
        return self.pending.pop(index, NOT_SHOWN)


def parse_item(text: str) -> Any:
    """An ITEM argument: JSON when it parses, else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _is_regular(stream: BinaryIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError):
        return False


def _open(source: str) -> tuple[BinaryIO, str]:
    try:
        if source == "-":
            # A reader of its own on the same descriptor: a thread blocked reading
            # sys.stdin holds its lock, and a worker forked meanwhile would wait for that
            # lock forever when it closes its sys.stdin (as multiprocessing's children do).
            return os.fdopen(os.dup(sys.stdin.fileno()), "rb"), "stdin"
        return Path(source).open("rb"), source
    except (OSError, ValueError, AttributeError) as exc:
        why = getattr(exc, "strerror", None) or "no such stream"
        raise InputError(f"cannot read --input {source!r}: {why}") from None


def _decoded(stream: BinaryIO, label: str) -> Iterator[tuple[int, str]]:
    with stream:
        for number, raw in enumerate(stream, 1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{label} line {number} is not UTF-8 text: {exc}") from None


def read_lines(stream: BinaryIO, label: str) -> Iterator[str]:
    """``--lines``: each line of ``stream`` is one input, a plain string, blank lines
    too (task ``i`` is line ``i + 1``)."""
    return (line.rstrip("\r\n") for _, line in _decoded(stream, label))


def read_json_lines(stream: BinaryIO, label: str) -> Iterator[Any]:
    """One JSON value per line of ``stream`` (``label`` names it); blank lines are
    skipped."""

    def values() -> Iterator[Any]:
        for number, line in _decoded(stream, label):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as exc:
                raise InputError(
                    f"{label} line {number} is not valid JSON ({exc}); --input takes one JSON"
                    " value per line (add --lines to take each line as a string)"
                ) from None

    return values()
