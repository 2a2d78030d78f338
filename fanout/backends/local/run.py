"""One map() on the local pool: how big its batches are, how far ahead it may read, how
many batches a worker may hold for it. The rest of its logic is the shared RunState."""

from __future__ import annotations

import itertools

from fanout._wire import TaskBatch
from fanout.backends.base import MapSpec
from fanout.backends.feed import Feed
from fanout.backends.runstate import ORDER_WINDOW, RunState

TARGET_BATCH_SECONDS = 0.01
# A worker sends finished results once they represent this much work, so that a crash
# later in a batch costs little to redo; tiny tasks go in bulk.
FLUSH_WORK_SECONDS = 0.001
MAX_BATCH = 1024
MAX_BARE_BATCH = 16384
# A batch's pickled inputs are kept to about this size, and an ordered run's results
# waiting for an earlier one to about this much.
MAX_BATCH_BYTES = 4 << 20
MAX_WINDOW_BYTES = 128 << 20
# Batches of tasks slower than this go one at a time: no prefetch, so work spreads evenly.
SLOW_TASK_SECONDS = 0.05
# A task that has run this long, or twice as long as the run's tasks take, runs longer
# than its batch assumed: its worker gets no more, and what it holds unstarted is taken
# back for an idle worker.
OVERDUE_SECONDS = 0.02
OVERDUE_FACTOR = 2.0

_batch_ids = itertools.count()
_fn_ids = itertools.count(1)


class LocalRun(RunState):
    """A run on the local pool: its target (pickled once) and its batch sizing."""

    def __init__(
        self,
        spec: MapSpec,
        fn_bytes: bytes,
        workers: int,
        backend: str,
        batch_seconds: float = TARGET_BATCH_SECONDS,
        flush_seconds: float = FLUSH_WORK_SECONDS,
    ) -> None:
        super().__init__(spec, backend)
        self.fn_id = next(_fn_ids)  # a worker loads the target again when this changes
        self.fn_bytes = fn_bytes
        self.workers = workers
        self.batch_seconds = batch_seconds
        # A worker sends finished results once they hold this much work (0: each): each
        # at once with a timeout (the caller times the next task from it), or when the
        # input is live (submit: every call's caller waits for its own result).
        each = spec.timeout is not None or (isinstance(spec.items, Feed) and spec.items.prompt)
        self.flush_seconds = 0.0 if each else flush_seconds

    def batch_size(self) -> int:
        # A bare run's batch costs one message whatever its size (no record per task):
        # larger batches keep workers busy while the caller's threads wait for the GIL.
        most = MAX_BARE_BATCH if self.spec.bare else MAX_BATCH
        return self.sized(self.batch_seconds, most, MAX_BATCH_BYTES)

    def window(self) -> int:
        window = max(ORDER_WINDOW, 4 * self.workers * self.batch_size())
        if self.bytes_per_task:
            window = min(window, max(4 * self.workers, int(MAX_WINDOW_BYTES / self.bytes_per_task)))
        return window

    def depth(self) -> int:
        """How many batches a worker may hold: 2 hides the round trip for quick tasks."""
        if self.per_task is None or self.per_task * self.batch_size() >= SLOW_TASK_SECONDS:
            return 1
        return 2

    def overdue_after(self) -> float:
        """How long a claim of this run's tasks may run before it counts as overdue."""
        return max(OVERDUE_SECONDS, OVERDUE_FACTOR * (self.per_task or 0.0))

    def next_batch(self, limit: int | None = None) -> Batch | None:
        tasks = self.take_batch(limit)
        return None if tasks is None else Batch(self, tasks)


class Batch:
    """A batch in flight to one worker: its tasks, its run, how many results are in, and
    how far the worker may still go in it (tasks from ``end`` on were taken back)."""

    __slots__ = ("done", "end", "id", "run", "sent_at", "tasks")

    def __init__(self, run: LocalRun, tasks: TaskBatch) -> None:
        self.id = next(_batch_ids)
        self.run = run
        self.tasks = tasks
        self.done = 0  # results received, in order
        self.end = len(tasks)  # the worker runs no task from here on
        self.sent_at = 0.0

    def __len__(self) -> int:
        return len(self.tasks)
