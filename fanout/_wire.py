"""What travels between a caller and its workers, each layout named once.

Both backends use the same layouts, so a record means the same thing wherever it was
made. Records are plain tuples (cheap to pickle by the thousand); read them by
unpacking, or by the index names below.

Result record, one task attempt as a worker reports it::

    (index, status, payload, started_at, finished_at, duration, output, usage)

    status OK_RAW      payload is the value itself (a RAW_TYPES value)
           OK_PICKLED  payload is the value's own pickle (one bad value fails one task)
           FAILED      payload is a TaskError
           NOT_RUN     payload is a TaskError; the target never started for the task
                       (it could not be loaded, or the input could not be read)

    usage              (cpu seconds, peak resident bytes) of the process that ran it
                       (models.Usage), or None: no process ran it, or it was not measured

Tasks travel in batches, column by column (:class:`TaskBatch`): the indices, the
inputs as sent (a raw value, or the input's own pickle at the positions listed in
``pickled``), and the attempts already made (``None`` while every task is on its
first try, the common case, so nothing is sent per task for it).
"""

from __future__ import annotations

from typing import Any, Final

from fanout.models import TaskError

# Status of a result record.
OK_RAW: Final = 0
OK_PICKLED: Final = 1
FAILED: Final = 2
NOT_RUN: Final = 3

# Positions in a result record (Final: type checkers see each field's own type).
INDEX: Final = 0
STATUS: Final = 1
PAYLOAD: Final = 2
STARTED: Final = 3
FINISHED: Final = 4
DURATION: Final = 5
OUTPUT: Final = 6
USAGE: Final = 7

UsageFacts = tuple[float, int]  # (cpu seconds, peak resident bytes): models.Usage's fields
Record = tuple[int, int, Any, float, float, float, str, UsageFacts | None]


def not_run_record(index: int, error: TaskError, now: float) -> Record:
    """The record of a task whose target never started (no time, no output, no usage)."""
    return (index, NOT_RUN, error, now, now, 0.0, "", None)


class Task:
    """One task as the caller keeps it for a retry or a requeue."""

    __slots__ = ("attempts", "index", "item", "pickled")

    def __init__(self, index: int, item: Any, pickled: bool, attempts: int) -> None:
        self.index = index
        self.item = item  # as sent: the raw value, or its pickle when ``pickled``
        self.pickled = pickled
        self.attempts = attempts  # attempts already made (0: never tried)

    def __repr__(self) -> str:
        return f"Task({self.index}, attempts={self.attempts})"

    def tried_again(self) -> Task:
        """The same task with one more attempt made."""
        return Task(self.index, self.item, self.pickled, self.attempts + 1)


class TaskBatch:
    """Tasks sent together, column by column (see the module docstring)."""

    __slots__ = ("attempts", "indices", "items", "pickled")

    def __init__(
        self,
        indices: list[int] | range,
        items: list[Any],
        pickled: list[int],
        attempts: list[int] | None = None,
    ) -> None:
        self.indices = indices
        self.items = items
        self.pickled = pickled  # positions whose item travels as its own pickle
        self.attempts = attempts  # attempts already made per task; None: all first tries

    def __len__(self) -> int:
        return len(self.indices)

    def task(self, pos: int) -> Task:
        attempts = 0 if self.attempts is None else self.attempts[pos]
        return Task(self.indices[pos], self.items[pos], pos in self.pickled, attempts)

    def tasks(self, start: int = 0, end: int | None = None) -> list[Task]:
        """The tasks from position ``start`` on (up to ``end``)."""
        return [self.task(pos) for pos in range(start, len(self.indices) if end is None else end)]
