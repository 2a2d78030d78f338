"""Death forensics and time-outs: what a dead worker leaves behind is settled here.

When a worker dies (its pidfd or sentinel becomes readable) :func:`bury` reads what it
managed to send, then asks the shared marker which task was running. That task fails
with ``WorkerLost`` (or ``TaskTimeout`` when the pool killed it for over-running; both
are retried while ``retries`` allow). Every other task it held without a result runs
again elsewhere without counting an attempt: those not started, and those that
finished in the last instant before the crash but whose results were never sent.
"""

from __future__ import annotations

import time
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
    from fanout.backends.local.pool import Pool
    from fanout.backends.local.run import Batch, LocalRun


def next_deadline(pool: Pool) -> float | None:
    """Seconds until the first running task of a run with a ``timeout`` over-runs."""
    deadlines = [
        w.task_started + timeout
        for w in pool.workers
        if w.inflight
        and w.kill_reason is None
        and w.inflight[0].done < w.inflight[0].end
        and (timeout := w.inflight[0].run.spec.timeout) is not None
    ]
    return min(deadlines) - time.time() if deadlines else None


def enforce_timeouts(pool: Pool) -> None:
    """Kill every worker whose running task has over-run its run's ``timeout``."""
    now = time.time()
    for worker in pool.workers:
        if worker.kill_reason is not None or not worker.inflight:
            continue
        timeout = worker.inflight[0].run.spec.timeout
        if timeout is None or now - worker.task_started < timeout:
            continue
        if worker.inflight[0].done >= worker.inflight[0].end:
            continue  # the rest of it was taken back: it runs none of it
        pool.read(worker)  # a result that just arrived is not a time-out
        if worker.inflight and now - worker.task_started >= timeout:
            head = worker.inflight[0]
            worker.kill_reason = "timeout"
            worker.timeout_index = head.tasks.indices[head.done]
            worker.kill()


def bury(pool: Pool, worker: WorkerHandle) -> None:
    """A worker died: settle every task it held, free its resources."""
    pool.read(worker)
    worker.process.join(1.0)
    code = worker.process.exitcode
    batch_id = worker.marker[MARK_BATCH]
    pos = worker.marker[MARK_POS]
    phase = worker.marker[MARK_PHASE]
    pool.forget(worker)
    live = [b for b in worker.inflight if not b.run.finished]
    if not live:
        return
    if batch_id == LOADING_TARGET:
        message = f"{worker.describe()} died while loading the target: {describe_exit(code)}"
        live[0].run.break_target(TaskError(WorkerLost.__name__, message))
    culprit = _culprit(worker, live, batch_id, pos)
    rest: dict[LocalRun, list[Task]] = {}
    for batch in live:
        for p in range(batch.done, batch.end):  # those past end went back already
            if culprit == (batch, p):
                doing = PHASES.get(phase, "running")
                _fail_running(pool, worker, batch, p, code, doing)
            else:
                rest.setdefault(batch.run, []).append(batch.tasks.task(p))
    for run, tasks in rest.items():  # back to their own run, first in line, in order
        run.requeue(tasks)


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
        # the first one is charged if that keeps happening, so it cannot loop forever.
        pending = [b for b in live if b.done < b.end]
        if pending and pending[0].run.suspect(pending[0].tasks.indices[pending[0].done]):
            culprit = (pending[0], pending[0].done)
    timed_out = worker.kill_reason == "timeout"
    if culprit and timed_out and culprit[0].tasks.indices[culprit[1]] != worker.timeout_index:
        culprit = None  # the timed-out task finished just before the kill
    return culprit


def _fail_running(
    pool: Pool, worker: WorkerHandle, batch: Batch, pos: int, code: int | None, doing: str
) -> None:
    run: LocalRun = batch.run
    task = batch.tasks.task(pos)
    info = worker.fallback_info(pool.backend)
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
    run.failed_attempt(task, result)
