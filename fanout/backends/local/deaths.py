"""Death forensics and time-outs: what a dead or over-running worker means, decided here;
the pool's loop (:mod:`.pool`) acts on it.

When a worker dies (its pidfd or sentinel becomes readable) the pool reads what it
managed to send, then asks :func:`autopsy`, which reads the shared marker to learn which
task was running and returns a :class:`Settlement`: that task fails with ``WorkerLost``
(or ``TaskTimeout``/``MemoryLimitExceeded`` when the pool killed it for over-running
its run's time or memory; all are retried while ``retries`` allow), its cause said by
:class:`Ending`; every other task it held without a result runs again elsewhere
without counting an attempt: those not started, and those that finished in the last
instant before the crash but whose results were never sent. The pool applies the
settlement to the runs (``break_target``, ``failed_attempt``, ``requeue``).

Time-outs: :func:`next_deadline` tells the loop how long it may wait, and
:func:`overrunning` which workers run a task past its run's ``timeout``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fanout._memory import format_size
from fanout._proc import describe_exit
from fanout._wire import Task
from fanout.backends.local.protocol import (
    LOADING_TARGET,
    MARK_BATCH,
    MARK_CPU,
    MARK_PEAK,
    MARK_PHASE,
    MARK_POS,
    PHASES,
)
from fanout.errors import MemoryLimitExceeded, TaskTimeout, WorkerLost
from fanout.models import TaskError, TaskResult, Usage

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


def autopsy(
    worker: WorkerHandle,
    code: int | None,
    backend: str,
    oom: bool = False,
    cpu: float | None = None,
) -> Settlement:
    """What ``worker``, dead with exit code ``code``, leaves to settle (read before its
    marker is released); ``oom``: the kernel's OOM killer ended it; ``cpu``: the CPU
    seconds the dead process used in all (None: unknown). Only runs not yet finished
    are settled."""
    live = [b for b in worker.inflight if not b.run.finished]
    settlement = Settlement()
    if not live:
        return settlement
    batch_id = worker.marker[MARK_BATCH]
    ending = Ending.of(worker, code, oom)
    if batch_id == LOADING_TARGET:
        message = f"{worker.describe()} died while loading the target: {ending.words}"
        error = TaskError(WorkerLost.__name__, message, cause="not-run", signal=ending.signal,
                          exit_code=ending.exit_code)  # fmt: skip
        settlement.broken = (live[0].run, error)
    culprit = _culprit(worker, live, batch_id, worker.marker[MARK_POS])
    for batch in live:
        for p in range(batch.done, batch.end):  # those past end went back already
            if culprit == (batch, p):
                doing = PHASES.get(worker.marker[MARK_PHASE], "running")
                settlement.failed = _failed_running(worker, batch, p, ending, doing, backend,
                                                    _usage_of(worker, cpu))  # fmt: skip
            else:
                settlement.rerun.setdefault(batch.run, []).append(batch.tasks.task(p))
    return settlement


@dataclass(frozen=True)
class Ending:
    """How a worker's process ended: the cause (``models.CAUSES``), the raw facts, and
    the words for a message."""

    cause: str
    signal: int | None
    exit_code: int | None
    words: str

    @classmethod
    def of(cls, worker: WorkerHandle, code: int | None, oom: bool) -> Ending:
        sig = -code if code is not None and code < 0 else None
        exit_code = code if code is not None and code >= 0 else None
        words = describe_exit(code)
        reason = worker.kill_reason
        if reason in ("timeout", "memory-limit"):
            cause = reason
        elif reason == "abandoned":
            cause = "cancelled"  # its run ended while it ran (the caller left, or cancelled)
        elif code is None:
            cause = "lost"
        elif sig is None:
            cause = "exited"
        elif sig == signal.SIGKILL and oom:
            cause = "oom-killed"
            seen = f" at {format_size(worker.resident)}" if worker.resident else ""
            words = f"killed by the kernel's OOM killer{seen}"
        else:
            cause = "killed"
        return cls(cause, sig, exit_code, words)


def _usage_of(worker: WorkerHandle, cpu: float | None) -> Usage | None:
    """What the task a worker died running cost: the CPU the process used since its last
    reading (in clock ticks), and the most memory it was seen to hold."""
    if cpu is None:
        return None
    spent = max(0.0, cpu - worker.marker[MARK_CPU] / 1e9)
    return Usage(spent, max(worker.resident, worker.marker[MARK_PEAK]))


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
    killed_for_one = worker.kill_reason in ("timeout", "memory-limit")
    if culprit and killed_for_one and culprit[0].tasks.indices[culprit[1]] != worker.killed_for:
        culprit = None  # the task it was killed for finished just before the kill
    return culprit


def _failed_running(
    worker: WorkerHandle,
    batch: Batch,
    pos: int,
    ending: Ending,
    doing: str,
    backend: str,
    usage: Usage | None,
) -> tuple[LocalRun, Task, TaskResult]:
    """The failed attempt of the task at ``pos`` of ``batch``, which the worker was
    ``doing`` when it died: ``TaskTimeout`` or ``MemoryLimitExceeded`` if the pool
    killed it for that, else ``WorkerLost``; the message says how, where, and who."""
    run = batch.run
    task = batch.tasks.task(pos)
    info = worker.fallback_info(backend)
    who = f"{info.name} (pid {info.pid}) on {info.host}"
    timeout, limit = run.spec.timeout, run.spec.max_memory
    if ending.cause == "timeout" and timeout is not None:
        kind = TaskTimeout.__name__
        message = (f"task {task.index} ran longer than its timeout of {timeout:g} s; "
                   f"{who} was killed and replaced")  # fmt: skip
    elif ending.cause == "memory-limit" and limit is not None:
        kind = MemoryLimitExceeded.__name__
        message = (f"task {task.index} grew past the memory limit of {format_size(limit)}"
                   f" ({format_size(worker.resident)} reached); {who} was killed and"
                   " replaced")  # fmt: skip
    else:
        kind = WorkerLost.__name__
        message = f"{who} died while {doing} task {task.index}: {ending.words}"
    error = TaskError(kind, message, cause=ending.cause, signal=ending.signal,
                      exit_code=ending.exit_code)  # fmt: skip
    now = time.time()
    started = worker.task_started
    result = TaskResult(task.index, False, None, error, info, task.attempts + 1, started, now,
                        now - started, "", usage)  # fmt: skip
    return run, task, result
