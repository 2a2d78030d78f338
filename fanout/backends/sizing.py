"""Batch sizing from measurements: seconds and pickled bytes per task, folded in as
results come back, so that a batch holds about as much work as its backend wants."""

from __future__ import annotations

import math
from collections.abc import Sequence

from fanout._wire import Record


class Sizing:
    """A run's measurements (a base of :class:`~fanout.backends.runstate.RunState`)."""

    def __init__(self) -> None:
        self.per_task: float | None = None  # measured seconds per task
        self.bytes_seen: dict[bool, float] = {}  # measured pickled bytes per task, in and out
        self.bytes_per_task: float | None = None

    def measure(self, span: float, tasks: int) -> None:
        """Fold ``tasks`` that took ``span`` seconds in all into the per-task estimate."""
        per = max(span, 0.0) / max(tasks, 1)
        self.per_task = per if self.per_task is None else 0.5 * (self.per_task + per)

    def measure_records(self, records: Sequence[Record]) -> None:
        """Measure from the timings of consecutive records of one worker."""
        _, _, _, first_started, *_ = records[0]
        _, _, _, _, last_finished, *_ = records[-1]
        self.measure(last_finished - first_started, len(records))

    def measure_bytes(self, nbytes: int, tasks: int, inputs: bool) -> None:
        """Fold a message of ``nbytes`` carrying ``tasks`` inputs (or results) in."""
        per = nbytes / max(tasks, 1)
        old = self.bytes_seen.get(inputs)
        self.bytes_seen[inputs] = per if old is None else 0.5 * (old + per)
        self.bytes_per_task = max(self.bytes_seen.values())

    def sized(self, seconds: float, max_tasks: int, max_bytes: int) -> int:
        """How many tasks make a batch of about ``seconds`` of work and ``max_bytes``;
        one until durations are measured, so slow tasks spread from the start."""
        if self.per_task is None:
            return 1
        size = min(max_tasks, int(seconds / max(self.per_task, 1e-7)))
        if self.bytes_per_task:
            size = min(size, int(max_bytes / self.bytes_per_task))
        return max(1, size)


def guided(size: int, least: int, left: int, workers: int) -> int:
    """Guided self-scheduling for the tail of an input: a batch of at most ``size`` tasks
    holds no more than a worker's share of the ``left`` tasks (0: not known), and no
    fewer than ``least`` (each batch has a fixed cost), so that workers finish together."""
    if not left or not workers:
        return size
    return max(1, min(size, max(least, math.ceil(left / workers))))
