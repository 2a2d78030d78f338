"""What a local worker's death or over-run means (fanout/backends/local/deaths.py),
decided from a worker's handle without a process: the pool applies the settlement."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from fanout._wire import TaskBatch
from fanout.backends.local import deaths
from fanout.backends.local.protocol import (
    IDLE,
    LOADING_TARGET,
    MARK_BATCH,
    MARK_PHASE,
    MARK_POS,
    RUNNING,
    UNPICKLING,
)
from fanout.backends.local.run import Batch, LocalRun
from fanout.backends.spec import MapSpec
from fanout.models import WorkerInfo


class FakeHandle:
    """The parts of a WorkerHandle an autopsy reads."""

    def __init__(self, batches: list[Batch], task_started: float = 100.0) -> None:
        self.inflight = deque(batches)
        self.marker = [IDLE, IDLE, RUNNING, IDLE, 0, 0, 0, 0]
        self.kill_reason: str | None = None
        self.killed_for = -1
        self.resident = 0
        self.task_started = task_started

    def running(self, batch: Batch, pos: int, phase: int = RUNNING) -> FakeHandle:
        self.marker[MARK_BATCH], self.marker[MARK_POS] = batch.id, pos
        self.marker[MARK_PHASE] = phase
        return self

    def describe(self) -> str:
        return "worker-1 (pid 4242)"

    def fallback_info(self, backend: str) -> WorkerInfo:
        return WorkerInfo("worker-1", 4242, 1, "box", backend)


def make_run(retries: int = 0, timeout: float | None = None) -> LocalRun:
    spec = MapSpec(abs, None, iter(range(100)), retries=retries, timeout=timeout)
    return LocalRun(spec, b"", 2, "local")


def batch_of(run: LocalRun, indices: list[int]) -> Batch:
    run.take_fresh(len(indices))  # as if taken from its input
    return Batch(run, TaskBatch(indices, list(indices), []))


def autopsy(handle: FakeHandle, code: int | None = -9) -> deaths.Settlement:
    worker: Any = handle
    return deaths.autopsy(worker, code, "local")


def test_the_running_task_fails_with_worker_lost_and_the_rest_run_again_in_order() -> None:
    run = make_run()
    first, second = batch_of(run, [0, 1, 2]), batch_of(run, [3, 4])
    settlement = autopsy(FakeHandle([first, second]).running(first, 1))
    assert settlement.broken is None
    assert settlement.failed is not None
    owner, task, result = settlement.failed
    assert (owner, task.index, result.index, result.attempts) == (run, 1, 1, 1)
    assert result.error is not None
    assert result.error.type == "WorkerLost"
    assert "worker-1 (pid 4242) on box died while running task 1: killed by signal SIGKILL" in (
        result.error.message
    )
    assert (result.error.cause, result.error.signal, result.error.exit_code) == ("killed", 9, None)
    assert [t.index for t in settlement.rerun[run]] == [0, 2, 3, 4]
    assert all(t.attempts == 0 for t in settlement.rerun[run])


@pytest.mark.parametrize(
    ("code", "reason", "oom", "cause", "words"),
    [
        (3, None, False, "exited", "exited with code 3"),
        (-15, None, False, "killed", "killed by signal SIGTERM"),
        (-9, None, True, "oom-killed", "killed by the kernel's OOM killer at 300 MB"),
        (-9, "timeout", False, "timeout", "killed by signal SIGKILL"),
        (-9, "memory-limit", False, "memory-limit", "killed by signal SIGKILL"),
        (-9, "abandoned", False, "cancelled", "killed by signal SIGKILL"),
        (None, None, False, "lost", "it stopped responding"),
    ],
)
def test_how_a_worker_ended_gives_the_cause(
    code: int | None, reason: str | None, oom: bool, cause: str, words: str
) -> None:
    handle = FakeHandle([])
    handle.kill_reason, handle.resident = reason, 300 * 2**20
    ending = deaths.Ending.of(handle, code, oom)  # type: ignore[arg-type]
    assert ending.cause == cause
    assert ending.words == words
    assert ending.signal == (-code if code is not None and code < 0 else None)
    assert ending.exit_code == (code if code is not None and code >= 0 else None)


def test_a_death_while_unpickling_an_input_charges_that_task() -> None:
    run = make_run()
    batch = batch_of(run, [0, 1])
    settlement = autopsy(FakeHandle([batch]).running(batch, 0, UNPICKLING), code=1)
    assert settlement.failed is not None
    _, _, result = settlement.failed
    assert result.error is not None
    assert "died while unpickling the input of task 0" in result.error.message


def test_a_timeout_kill_is_task_timeout_for_the_task_it_was_killed_for() -> None:
    run = make_run(timeout=0.5)
    batch = batch_of(run, [0, 1])
    handle = FakeHandle([batch]).running(batch, 0)
    handle.kill_reason, handle.killed_for = "timeout", 0
    settlement = autopsy(handle)
    assert settlement.failed is not None
    _, _, result = settlement.failed
    assert result.error is not None
    assert result.error.type == "TaskTimeout"
    assert "ran longer than its timeout of 0.5 s" in result.error.message
    assert [t.index for t in settlement.rerun[run]] == [1]


def test_a_task_that_finished_just_before_its_timeout_kill_is_not_charged() -> None:
    run = make_run(timeout=0.5)
    batch = batch_of(run, [0, 1])
    handle = FakeHandle([batch]).running(batch, 1)  # task 0 finished; 1 started
    handle.kill_reason, handle.killed_for = "timeout", 0
    settlement = autopsy(handle)
    assert settlement.failed is None
    assert [t.index for t in settlement.rerun[run]] == [0, 1]


def test_a_death_while_loading_the_target_breaks_the_run() -> None:
    run = make_run()
    batch = batch_of(run, [0, 1])
    handle = FakeHandle([batch])
    handle.marker[MARK_BATCH] = LOADING_TARGET
    settlement = autopsy(handle)
    assert settlement.broken is not None
    broken_run, error = settlement.broken
    assert broken_run is run
    assert error.type == "WorkerLost"
    assert "died while loading the target" in error.message
    assert settlement.failed is None


def test_deaths_outside_any_task_charge_the_first_task_after_three() -> None:
    run = make_run()
    for _ in range(2):
        batch = batch_of(run, [0, 1])
        settlement = autopsy(FakeHandle([batch]))  # marker idle: outside any task
        assert settlement.failed is None
        assert [t.index for t in settlement.rerun[run]] == [0, 1]
    settlement = autopsy(FakeHandle([batch_of(run, [0, 1])]))
    assert settlement.failed is not None
    assert settlement.failed[1].index == 0


def test_a_finished_run_and_tasks_taken_back_are_left_alone() -> None:
    run = make_run()
    batch = batch_of(run, [0, 1, 2])
    batch.done, batch.end = 1, 2  # task 0 reported, task 2 taken back
    settlement = autopsy(FakeHandle([batch]).running(batch, 1))
    assert settlement.failed is not None
    assert settlement.failed[1].index == 1
    assert settlement.rerun == {}
    run.finished = True
    assert autopsy(FakeHandle([batch]).running(batch, 1)) == deaths.Settlement()


def test_overrunning_and_next_deadline_read_each_workers_head_batch() -> None:
    timed, untimed = make_run(timeout=2.0), make_run()
    late = FakeHandle([batch_of(timed, [0])], task_started=100.0)
    early = FakeHandle([batch_of(timed, [1])], task_started=101.5)
    free = FakeHandle([batch_of(untimed, [0])], task_started=0.0)
    idle = FakeHandle([])
    workers: list[Any] = [late, early, free, idle]
    assert deaths.overrunning(workers, now=102.5) == [late]
    late.kill_reason = "timeout"  # already being killed: not again
    assert deaths.overrunning(workers, now=104.0) == [early]
    deadline = deaths.next_deadline(workers)
    assert deadline is not None
    assert deadline < 0  # 103.5 was long ago
