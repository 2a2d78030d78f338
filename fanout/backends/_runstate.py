"""What every backend tracks for one map() call: input taken, results ready, order.

Backends subclass :class:`RunState` and add their own dispatch state; the parts here
(lazy input with a bound, the reorder buffer, exactly one result per index taken,
the input's own error raised after the results of the tasks already taken) are the
same for all of them.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from fanout.backends.base import MapSpec
from fanout.models import TaskError, TaskResult, WorkerInfo

Error = tuple[str, str, str]  # (type, message, traceback)


class RunState:
    """Input, outstanding count and ready results of one map() call."""

    def __init__(self, spec: MapSpec, backend: str) -> None:
        self.spec = spec
        self.backend = backend
        self.source = spec.items
        self.exhausted = False
        self.input_error: BaseException | None = None
        self.finished = False
        self.outstanding = 0  # tasks taken from the input without a final result yet
        self.next_index = 0  # index of the next item to take
        self.next_yield = 0  # ordered runs: index of the next result to yield
        self.ready: deque[TaskResult] = deque()
        self.reorder: dict[int, TaskResult] = {}
        self.per_task: float | None = None  # measured seconds per task
        self.bytes_per_task: float | None = None  # measured pickled bytes per task

    def done(self) -> bool:
        return self.exhausted and self.outstanding == 0 and not self.ready

    def measure(self, span: float, tasks: int) -> None:
        """Fold ``tasks`` that took ``span`` seconds in all into the per-task estimate."""
        per = max(span, 0.0) / max(tasks, 1)
        self.per_task = per if self.per_task is None else 0.5 * (self.per_task + per)

    def sized(self, seconds: float, max_tasks: int, max_bytes: int) -> int:
        """How many tasks make a batch of about ``seconds`` of work and ``max_bytes``;
        one until durations are measured, so slow tasks spread from the start."""
        if self.per_task is None:
            return 1
        size = min(max_tasks, int(seconds / max(self.per_task, 1e-7)))
        if self.bytes_per_task:
            size = min(size, int(max_bytes / self.bytes_per_task))
        return max(1, size)

    def window(self) -> int:
        """How far past the oldest unyielded result an ordered run may take input."""
        return 10_000

    def take_fresh(self, room: int) -> tuple[int, list[Any]]:
        """Up to ``room`` new items and the index of the first; fewer when far ahead."""
        start = self.next_index
        if self.exhausted or room <= 0:
            return start, []
        if self.spec.ordered:
            room = min(room, self.window() - (self.next_index - self.next_yield))
            if room <= 0:
                return start, []
        fresh: list[Any] = []
        append = fresh.append
        try:
            for item in itertools.islice(self.source, room):
                append(item)
        except Exception as exc:
            # Stop reading input; tasks already taken still finish and are yielded.
            self.exhausted = True
            self.input_error = exc
        else:
            if len(fresh) < room:
                self.exhausted = True
        self.next_index += len(fresh)
        self.outstanding += len(fresh)
        return start, fresh

    def fail_in_caller(self, index: int, error: Error) -> None:
        """A task that failed before reaching any worker (attempts: 0)."""
        now = time.time()
        info = WorkerInfo.current(self.backend)
        self.finish(TaskResult(index, False, None, TaskError(*error), info, 0, now, now, 0.0))

    def fail_the_rest(self, error: Error, limit: int = 1024) -> None:
        """Fail up to ``limit`` items still in the input with ``error``."""
        start, fresh = self.take_fresh(limit)
        for offset in range(len(fresh)):
            self.fail_in_caller(start + offset, error)

    def finish(self, result: TaskResult) -> None:
        self.finish_many([result])

    def finish_many(self, results: list[TaskResult]) -> None:
        """Final results: ready to yield now, or once the results before them are."""
        self.outstanding -= len(results)
        if not self.spec.ordered:
            self.ready.extend(results)
            return
        reorder, ready = self.reorder, self.ready
        for result in results:
            if result.index == self.next_yield and not reorder:
                ready.append(result)  # the common case: results arrive in order
                self.next_yield += 1
            else:
                reorder[result.index] = result
        while self.next_yield in reorder:
            ready.append(reorder.pop(self.next_yield))
            self.next_yield += 1

    def results(self, step: Callable[[], None], end: Callable[[], None]) -> Iterator[TaskResult]:
        """Yield results, calling ``step`` to make progress; ``end`` runs however it ends."""
        try:
            while True:
                while self.ready:
                    yield self.ready.popleft()
                if self.done():
                    break
                step()
        finally:
            self.finished = True
            end()
        if self.input_error is not None:
            raise self.input_error
