"""Where a run's inputs come from: ITEM arguments, ``--range``, ``--repeat`` or ``--input``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from fanout.errors import InputError

MAX_KEPT = 1000  # inputs kept for the human table's input column


class InputSource:
    """The inputs of one ``fanout run``, read lazily; the first few are kept for display."""

    def __init__(
        self, items: list[str] | None, range_: int | None, repeat: int | None, path: str | None
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
        self.repeat = repeat
        self.total: int | None = None  # the task count, when it is known up front
        self.kept: list[Any] = []
        self.source: Iterator[Any] | None = None
        if repeat is not None:
            self.total = repeat
        elif range_ is not None:
            self.source, self.total = iter(range(range_)), range_
        elif path is not None:
            self.source = read_json_lines(path)
        else:
            values = [parse_item(text) for text in items or []]
            self.source, self.total = iter(values), len(values)

    def items(self, keep: bool) -> Iterator[Any] | None:
        """The inputs (None for ``--repeat``); ``keep``: remember the first few."""
        if self.source is None or not keep:
            return self.source
        return self._keeping(self.source)

    def _keeping(self, source: Iterator[Any]) -> Iterator[Any]:
        for item in source:
            if len(self.kept) < MAX_KEPT:
                self.kept.append(item)
            yield item


def parse_item(text: str) -> Any:
    """An ITEM argument: JSON when it parses, else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_json_lines(source: str) -> Iterator[Any]:
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
