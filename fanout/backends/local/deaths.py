"""Death forensics and time-outs: what a dead or over-running worker means, decided here;
the pool's loop (:mod:`.pool`) acts on it.

When a worker dies (its pidfd or sentinel becomes readable) the pool reads what it
managed to send, then asks :func:`autopsy`, which reads the shared marker to learn which
task was running and returns a :class:`Settlement`: that task fails with ``WorkerLost``
(or ``TaskTimeout`` when the pool killed it for over-running; both are retried while
``retries`` allow); every other task it held without a result runs again elsewhere
without counting an attempt: those not started, and those that finished in the last
instant before the crash but whose results were never sent. The pool applies the
settlement to the runs (``break_target``, ``failed_attempt``, ``requeue``).

Time-outs: :func:`next_deadline` tells the loop how long it may wait, and
:func:`overrunning` which workers run a task past its run's ``timeout``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fanout._proc import describe_exit
from fanout._wire import Task
from fanout.backends.local.protocol import (
    LOADING_TARGET,
    MARK_BATCH,
    MARK_PHASE,
    MARK_POS,
    PHASES,
)
from fanout.errors import TaskTimeout, WorkerLost
from fanout.models import TaskError, TaskResult

if TYPE_CHECKING:
    from fanout.backends.local.handles import WorkerHandle
    from fanout.backends.local.run import Batch, LocalRun


def next_deadline(workers: Iterable[WorkerHandle]) -> float | None:
    """Seconds until the first running task of a run with a ``timeout`` over-runs."""
    deadlines = [
        w.task_started + timeout
        for w in workers
        if w.inflight
        and w.kill_reason is None
        and w.inflight[0].done < w.inflight[0].end
        and (timeout := w.inflight[0].run.spec.timeout) is not None
    ]
    return min(deadlines) - time.time() if deadlines else None


def overrunning(workers: Iterable[WorkerHandle], now: float) -> list[WorkerHandle]:
    """The workers whose running task has run past its run's ``timeout`` at ``now``
    (the pool reads what each has sent, then asks again: a result that just arrived is
    not a time-out)."""
    late = []
    for worker in workers:
        if worker.kill_reason is not None or not worker.inflight:
            continue
        head = worker.inflight[0]
        timeout = head.run.spec.timeout
        if timeout is None or now - worker.task_started < timeout:
            continue
        if head.done >= head.end:
            continue  # the rest of it was taken back: it runs none of it
        late.append(worker)
    return late


@dataclass
class Settlement:
    """What a worker's death means for the runs whose tasks it held."""

    #: No task of this run can run any more: it died loading the target.
    broken: tuple[LocalRun, TaskError] | None = None
    #: The task it died running: a failed attempt, with its result.
    failed: tuple[LocalRun, Task, TaskResult] | None = None
    #: Tasks it held without a result, by run, in order: to run again, for free.
    rerun: dict[LocalRun, list[Task]] = field(default_factory=dict)


def autopsy(worker: WorkerHandle, code: int | None, backend: str) -> Settlement:
    """What ``worker``, dead with exit code ``code``, leaves to settle (read before its
    marker is released). Only runs not yet finished are settled."""
    live = [b for b in worker.inflight if not b.run.finished]
    settlement = Settlement()
    if not live:
        return settlement
    batch_id = worker.marker[MARK_BATCH]
    if batch_id == LOADING_TARGET:
        message = f"{worker.describe()} died while loading the target: {describe_exit(code)}"
        settlement.broken = (live[0].run, TaskError(WorkerLost.__name__, message))
    culprit = _culprit(worker, live, batch_id, worker.marker[MARK_POS])
    for batch in live:
        for p in range(batch.done, batch.end):  # those past end went back already
            if culprit == (batch, p):
                doing = PHASES.get(worker.marker[MARK_PHASE], "running")
                settlement.failed = _failed_running(worker, batch, p, code, doing, backend)
            else:
                settlement.rerun.setdefault(batch.run, []).append(batch.tasks.task(p))
    return settlement


def _culprit(
    worker: WorkerHandle, live: list[Batch], batch_id: int, pos: int
) -> tuple[Batch, int] | None:
    """The (batch, position) of the task the worker died running, if any is to blame."""
    culprit: tuple[Batch, int] | None = None
    for batch in live:
        if batch.id == batch_id and batch.done <= pos < batch.end:
            culprit = (batch, pos)
    if culprit is None and batch_id != LOADING_TARGET:
        # It died outside any task (while reading or sending): its tasks run again, but
        # the first one is charged if that keeps happening, so it cannot loop forever
        # (the run counts its free requeues: RunState.suspect).
        pending = [b for b in live if b.done < b.end]
        if pending and pending[0].run.suspect(pending[0].tasks.indices[pending[0].done]):
            culprit = (pending[0], pending[0].done)
    timed_out = worker.kill_reason == "timeout"
    if culprit and timed_out and culprit[0].tasks.indices[culprit[1]] != worker.timeout_index:
        culprit = None  # the timed-out task finished just before the kill
    return culprit


def _failed_running(
    worker: WorkerHandle, batch: Batch, pos: int, code: int | None, doing: str, backend: str
) -> tuple[LocalRun, Task, TaskResult]:
    """The failed attempt of the task at ``pos`` of ``batch``, which the worker was
    ``doing`` when it died: ``TaskTimeout`` if the pool killed it for that, else
    ``WorkerLost``."""
    run = batch.run
    task = batch.tasks.task(pos)
    info = worker.fallback_info(backend)
    timeout = run.spec.timeout
    if worker.kill_reason == "timeout" and timeout is not None:
        error = TaskError(
            TaskTimeout.__name__,
            f"task {task.index} ran longer than its timeout of {timeout:g} s; "
            f"{info.name} (pid {info.pid}) was killed and replaced",
        )
    else:
        error = TaskError(
            WorkerLost.__name__,
            f"{info.name} (pid {info.pid}) died while {doing} task {task.index}: "
            f"{describe_exit(code)}",
        )
    now = time.time()
    started = worker.task_started
    result = TaskResult(
        task.index, False, None, error, info, task.attempts + 1, started, now, now - started
    )
    return run, task, result
