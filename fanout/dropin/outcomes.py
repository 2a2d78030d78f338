"""How a map's outcomes reach the drop-ins' callers: in chunks, in input order when asked.

A drop-in's map is a *bare* run (``MapSpec.bare``): a backend that can hands its
successes on as chunks of values, without a TaskResult each; failures still come as
TaskResults. Both become chunks here, ``(ok, values)`` (a failure: ``(False,
[exception])``), which :class:`InOrder` puts back in input order; and a :class:`Budget`
keeps the input from running far ahead of what the caller has taken.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fanout.backends.runstate import RunState
from fanout.dropin.common import exception_of
from fanout.dropin.driver import Values
from fanout.models import TaskResult

Chunk = tuple[bool, list[Any]]
# Results a map may hold that its caller has not taken yet (its input waits meanwhile).
DEFAULT_BUFFER = 1 << 16


def spans(indices: Sequence[int], values: list[Any]) -> Iterator[tuple[int, list[Any]]]:
    """``values`` cut where ``indices`` stop being consecutive: (first index, values)."""
    if isinstance(indices, range):
        yield indices.start, values
        return
    start = 0
    for k in range(1, len(indices) + 1):
        if k == len(indices) or indices[k] != indices[k - 1] + 1:
            yield indices[start], values[start:k]
            start = k


def chunks_of(
    run: RunState,
    results: list[TaskResult],
    remote: Callable[[str], BaseException],
) -> list[tuple[int, Chunk]]:
    """TaskResults as (index, chunk of one)."""
    return [
        (r.index, (True, [r.value]) if r.ok else (False, [exception_of(r, run, remote)]))
        for r in results
    ]


def value_chunks(values: Values) -> list[tuple[int, Chunk]]:
    return [
        (first, (True, part)) for indices, got, _ in values for first, part in spans(indices, got)
    ]


class InOrder:
    """Chunks back in input order: each is released once every index before it is."""

    def __init__(self) -> None:
        self.next = 0
        self.pending: dict[int, Chunk] = {}

    def add(self, first: int, chunk: Chunk) -> list[Chunk]:
        if first != self.next:
            self.pending[first] = chunk
            return []
        released = [chunk]
        self.next += len(chunk[1])
        while self.next in self.pending:
            chunk = self.pending.pop(self.next)
            released.append(chunk)
            self.next += len(chunk[1])
        return released


class Budget:
    """At most ``limit`` tasks taken from the input and not yet taken by the caller
    (Python 3.14's ``buffersize``): the run asks ``room()`` before it reads input."""

    def __init__(self, limit: int, wake: Callable[[], None]) -> None:
        self.limit = limit
        self.wake = wake
        self.taken = 0  # by the caller
        self.read = 0  # from the input, as the run last said
        self.starved = False
        self.lock = threading.Lock()

    def room(self, read: int) -> int:
        """(The driver's thread.) How many more inputs may be read, ``read`` read so far."""
        with self.lock:
            self.read = read
            room = self.limit - (read - self.taken)
            self.starved = room <= 0
            return room

    def took(self, n: int) -> None:
        """The caller took ``n`` more results: the run may read on if it was waiting."""
        with self.lock:
            self.taken += n
            # Waking once half the budget is free keeps the run's batches large.
            wake = self.starved and self.read - self.taken <= self.limit // 2
            if wake:
                self.starved = False
        if wake:
            self.wake()
