"""RunState (fanout/backends/runstate.py), the run logic every backend shares, driven by
hand: batches taken, records settled, results read. No worker, no process."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from fanout._wire import FAILED, NOT_RUN, OK_PICKLED, OK_RAW, Record, Task, TaskBatch
from fanout.backends.feed import Feed
from fanout.backends.runstate import MAX_FREE_REQUEUES, RunState
from fanout.backends.spec import MapSpec
from fanout.models import TaskError, TaskResult, WorkerInfo

WORKER = WorkerInfo("w-1", 10, 1, "box", "unit")


def make(items: Any, **spec: Any) -> RunState:
    return RunState(MapSpec(abs, None, iter(items), **spec), "unit")


class Sized(RunState):
    """A run whose batches hold ``size`` tasks and whose ordered window is ``ahead``."""

    def __init__(self, spec: MapSpec, size: int, ahead: int = 10_000) -> None:
        super().__init__(spec, "unit")
        self.size, self.ahead = size, ahead

    def batch_size(self) -> int:
        return self.size

    def window(self) -> int:
        return self.ahead


def sized(items: Any, size: int, ahead: int = 10_000, **spec: Any) -> Sized:
    return Sized(MapSpec(abs, None, iter(items), **spec), size, ahead)


def ok(index: int, value: Any = None) -> Record:
    return (index, OK_RAW, index if value is None else value, 1.0, 2.0, 1.0, "", None)


def failed(index: int, kind: str = "ValueError") -> Record:
    return (index, FAILED, TaskError(kind, f"task {index} failed"), 1.0, 2.0, 1.0, "", None)


def settle(run: RunState, batch: TaskBatch, records: list[Record]) -> None:
    run.settle(records, WORKER, batch.attempts, batch.task)


def take(run: RunState, limit: int | None = None) -> TaskBatch:
    batch = run.take_batch(limit)
    assert batch is not None
    return batch


def drain(run: RunState) -> list[TaskResult]:
    taken = list(run.ready)
    run.ready.clear()
    return taken


# -- taking input ------------------------------------------------------------------------


def test_batches_hold_one_task_until_the_backend_sizes_them() -> None:
    run = make(range(5))
    assert list(take(run).indices) == [0]
    assert list(take(run).indices) == [1]
    bigger = sized(range(10), size=4)
    assert list(take(bigger).indices) == [0, 1, 2, 3]
    assert list(take(bigger, limit=2).indices) == [4, 5]  # a worker's allowance


def test_an_explicit_chunksize_caps_every_batch() -> None:
    run = sized(range(10), size=8, chunksize=3)
    assert [list(take(run).indices) for _ in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_plain_values_ride_as_they_are_and_others_are_pickled_in_the_caller() -> None:
    run = sized([1, "a", {"k": 1}, None], size=4)
    batch = take(run)
    assert batch.items[:2] == [1, "a"]
    assert batch.pickled == [2]
    assert isinstance(batch.items[2], bytes)
    assert batch.attempts is None  # all first tries: nothing sent per task


def test_an_input_that_cannot_be_pickled_fails_its_own_task_in_the_caller() -> None:
    lock = threading.Lock()
    run = sized([1, lock, 3], size=3, ordered=False)
    batch = take(run)
    assert list(batch.indices) == [0, 2]
    (refused,) = drain(run)
    assert (refused.index, refused.ok, refused.attempts) == (1, False, 0)
    assert refused.error is not None
    assert refused.error.type == "SerializationError"
    assert "task 1" in refused.error.message
    assert refused.worker.name == "(not run)"
    assert type(run.exceptions[1]) is TypeError  # the drop-ins raise it as it is


def test_an_ordered_run_reads_no_further_than_its_window_ahead() -> None:
    run = sized(range(100), size=10, ahead=4)
    assert list(take(run).indices) == [0, 1, 2, 3]
    assert run.take_batch() is None  # 4 ahead of the oldest result not yet yielded
    settle(run, TaskBatch([0], [0], []), [ok(0)])
    assert list(take(run).indices) == [4]


def test_room_is_the_consumers_bound_on_reading_ahead() -> None:
    asked: list[int] = []

    def room(read: int) -> int:
        asked.append(read)
        return 2 - read

    run = sized(range(10), size=5, ordered=False, room=room)
    assert list(take(run).indices) == [0, 1]
    assert run.take_batch() is None
    assert asked == [0, 2]


def test_a_feed_is_taken_without_waiting_and_ends_once_closed_and_empty() -> None:
    feed = Feed()
    run = RunState(MapSpec(abs, None, feed, ordered=False), "unit")
    assert run.take_batch() is None
    assert not run.exhausted
    feed.put("a")
    assert take(run).items == ["a"]
    feed.close()
    assert run.take_batch() is None
    assert run.exhausted


def test_an_item_cancelled_in_the_feed_gets_its_cancelled_result() -> None:
    feed = Feed()
    run = Sized(MapSpec(abs, None, feed, ordered=False), size=2)
    first, second = feed.put([1]), feed.put([2])
    assert feed.cancel(first)
    batch = take(run)
    assert list(batch.indices) == [second]
    (cancelled,) = drain(run)
    assert cancelled.index == first
    assert cancelled.error is not None
    assert (cancelled.error.type, cancelled.attempts) == ("Cancelled", 0)


# -- outcomes ----------------------------------------------------------------------------


def test_records_become_results_with_the_attempts_made() -> None:
    run = sized(range(3), size=3, attempts=[0, 2, 0])
    batch = take(run)
    assert batch.attempts == [0, 2, 0]
    settle(run, batch, [ok(0), ok(1), ok(2)])
    assert [(r.index, r.value, r.attempts, r.worker) for r in drain(run)] == [
        (0, 0, 1, WORKER),
        (1, 1, 3, WORKER),
        (2, 2, 1, WORKER),
    ]


def test_a_failed_attempt_is_retried_first_in_line_while_retries_allow() -> None:
    run = sized(range(4), size=2, retries=1)
    first = take(run)
    settle(run, first, [failed(0), ok(1)])
    assert drain(run) == []  # 1 waits in the reorder buffer behind 0
    again = take(run)
    assert (list(again.indices), again.attempts) == ([0, 2], [1, 0])
    settle(run, again, [failed(0), ok(2)])
    results = drain(run)
    assert [(r.index, r.ok, r.attempts) for r in results] == [
        (0, False, 2),
        (1, True, 1),
        (2, True, 1),
    ]


@pytest.mark.parametrize("kind", ["SerializationError", "TargetError"])
def test_failures_that_would_only_repeat_are_never_retried(kind: str) -> None:
    run = make([1], retries=3)
    settle(run, take(run), [failed(0, kind)])
    (result,) = drain(run)
    assert (result.ok, result.attempts) == (False, 1)


def test_a_target_no_worker_can_load_fails_every_task_left_at_once() -> None:
    run = sized(range(5), size=2)
    batch = take(run)
    error = TaskError("TargetError", "no module named x")
    record: Record = (0, NOT_RUN, error, 1.0, 1.0, 0.0, "", None)
    settle(run, batch, [record, ok(1)])
    assert run.take_batch() is None  # nothing more is sent: the rest fail now
    results = drain(run)
    assert [(r.index, r.ok, r.attempts) for r in results] == [
        (0, False, 0), (1, True, 1), (2, False, 0), (3, False, 0), (4, False, 0),
    ]  # fmt: skip
    assert {r.error.message for r in results if r.error} == {"no module named x"}
    assert results[0].worker.name == "(not run)"
    assert run.done()


def test_a_pickled_value_is_unpickled_and_a_bad_one_fails_its_task() -> None:
    run = sized(range(2), size=2, ordered=False)
    batch = take(run)
    good: Record = (0, OK_PICKLED, pickle.dumps(7), 1.0, 2.0, 1.0, "", None)
    bad: Record = (1, OK_PICKLED, b"not a pickle", 1.0, 2.0, 1.0, "", None)
    settle(run, batch, [good, bad])
    first, second = sorted(drain(run), key=lambda r: r.index)
    assert (first.ok, first.value) == (True, 7)
    assert second.error is not None
    assert second.error.type == "SerializationError"


def test_tasks_taken_back_go_first_in_input_order_without_an_attempt() -> None:
    run = sized(range(10), size=3)
    take(run)
    take(run)
    run.requeue([Task(4, 4, False, 0), Task(3, 3, False, 0)])
    run.requeue([Task(1, 1, False, 0)])
    batch = take(run)
    assert (list(batch.indices), batch.attempts) == ([1, 3, 4], [0, 0, 0])


def test_a_task_requeued_for_free_too_often_is_suspect() -> None:
    run = make([1])
    assert [run.suspect(0) for _ in range(MAX_FREE_REQUEUES)] == [False, False, True]


def test_handing_back_gives_up_what_no_worker_holds_and_takes_nothing_more() -> None:
    run = sized(range(6), size=2, retries=1, attempts=[0, 0, 0, 1, 0, 0])
    held = take(run)
    settle(run, held, [failed(0)])  # 0 waits for its retry; 1 still runs
    given = run.hand_back()
    assert [(t.index, t.attempts) for t in given] == [(0, 1), (2, 0), (3, 1), (4, 0), (5, 0)]
    assert run.take_batch() is None
    run.requeue([Task(1, 1, False, 0)])  # taken back from its worker later
    assert run.handed is not None
    assert [t.index for t in run.handed] == [0, 2, 3, 4, 5, 1]
    assert run.outstanding == 0
    assert run.done()


# -- halting -----------------------------------------------------------------------------


def test_max_failures_halts_and_cancels_every_task_not_started() -> None:
    run = sized(range(3000), size=3, ordered=False, max_failures=2, retries=1)
    running = take(run)  # 0, 1 and 2, which its worker holds unstarted
    settle(run, running, [failed(0, "WorkerLost"), failed(1)])  # both wait for a retry
    assert run.halted is None
    again = take(run, limit=2)
    assert list(again.indices) == [0, 1]
    settle(run, again, [failed(0), failed(1)])
    assert run.halted is not None
    results = drain(run)
    assert [(r.index, r.ok, r.attempts) for r in results] == [(0, False, 2), (1, False, 2)]
    run.requeue([Task(2, 2, False, 0)])  # held unstarted by a worker: cancelled too
    (requeued,) = drain(run)
    assert requeued.error is not None
    assert (requeued.index, requeued.error.type) == (2, "Cancelled")
    assert run.take_batch() is None  # the rest of the input, a part per call
    cancelled = drain(run)
    assert [r.index for r in cancelled] == list(range(3, 1027))
    while not run.exhausted:
        run.take_batch()
    cancelled += drain(run)
    assert [r.index for r in cancelled] == list(range(3, 3000))
    assert all(r.error and r.error.type == "Cancelled" and r.attempts == 0 for r in cancelled)
    assert "max_failures=2" in str(cancelled[0].error)
    assert run.failures == 2  # Cancelled results are not failures
    assert run.done()


# -- order -------------------------------------------------------------------------------


def test_an_ordered_run_holds_early_results_until_the_earlier_arrive() -> None:
    run = sized(range(3), size=3)
    batch = take(run)
    for record, ready in [(ok(2), []), (ok(0), [0]), (ok(1), [1, 2])]:
        run.settle([record], WORKER, None, batch.task)
        assert [r.index for r in drain(run)] == ready


def test_an_unordered_run_hands_results_on_as_they_come() -> None:
    run = sized(range(3), size=3, ordered=False)
    batch = take(run)
    for index in (2, 0, 1):
        run.settle([ok(index)], WORKER, None, batch.task)
        assert [r.index for r in drain(run)] == [index]


def test_columns_of_successes_in_line_are_ready_at_once() -> None:
    run = sized(range(4), size=4)
    batch = take(run)
    run.settle_columns(batch.indices, [0, 1, 4, 9], [1.0] * 4, [0.5] * 4, None, WORKER, None)
    results = drain(run)
    assert [(r.index, r.value, r.finished_at, r.attempts) for r in results] == [
        (0, 0, 1.5, 1), (1, 1, 1.5, 1), (2, 4, 1.5, 1), (3, 9, 1.5, 1),
    ]  # fmt: skip


def test_a_bare_run_hands_values_on_in_chunks() -> None:
    with pytest.raises(ValueError, match="ordered=False"):
        make([1], bare=True)
    run = sized(range(3), size=3, bare=True, ordered=False)
    batch = take(run)
    run.settle_values(batch.indices, [0, 1, 4], "printed")
    assert list(run.ready_values) == [(range(0, 3), [0, 1, 4], "printed")]
    assert not run.ready
    run.ready_values.clear()
    assert run.take_batch() is None  # the end of the input, found
    assert run.done()


# -- the input's own error, the end ------------------------------------------------------


@pytest.mark.parametrize("error", [OSError("input broke"), SystemExit(3)])
def test_the_inputs_error_is_raised_after_the_results_of_the_tasks_taken(
    error: BaseException,
) -> None:
    def items() -> Iterator[int]:
        yield 0
        yield 1
        raise error

    run = sized(items(), size=5)
    ended: list[bool] = []

    def step() -> None:
        batch = run.take_batch()
        if batch is not None:
            settle(run, batch, [ok(i) for i in batch.indices])

    got: list[int] = []
    with pytest.raises(type(error)):
        got.extend(r.index for r in run.results(step, lambda: ended.append(True)))
    assert got == [0, 1]
    assert run.input_error is error
    assert ended == [True]


def test_results_runs_the_end_hook_when_the_consumer_leaves_early() -> None:
    run = sized(range(10), size=10)
    ended: list[bool] = []

    def step() -> None:
        batch = run.take_batch()
        if batch is not None:
            settle(run, batch, [ok(i) for i in batch.indices])

    for result in run.results(step, lambda: ended.append(True)):
        assert result.index == 0
        break
    assert ended == [True]
    assert run.finished


def test_results_are_handed_on_a_list_at_a_time_and_close_ends_the_run() -> None:
    run = sized(range(30), size=10)
    ended: list[bool] = []
    steps: list[int] = []

    def step() -> None:
        steps.append(len(steps))
        batch = run.take_batch()
        if batch is not None:
            settle(run, batch, [ok(i) for i in batch.indices])

    results = run.results(step, lambda: ended.append(True))
    assert results.running
    assert [next(results).index for _ in range(3)] == [0, 1, 2]
    assert steps == [0]  # the ten ready at once came as one list
    results.close()
    assert ended == [True]
    assert run.finished
    assert not results.running
    assert list(results) == []  # the seven handed on but not taken are not yielded


def test_results_run_to_the_end_once_each_and_stop() -> None:
    run = sized(range(25), size=10)

    def step() -> None:
        batch = run.take_batch()
        if batch is not None:
            settle(run, batch, [ok(i) for i in batch.indices])

    results = run.results(step, lambda: None)
    assert [r.index for r in results] == list(range(25))
    assert not results.running
    assert list(results) == []


def test_fail_in_caller_is_a_result_no_process_ran() -> None:
    run = make([1])
    take(run)
    run.fail_in_caller(0, TaskError("Cancelled", "stopped"), attempts=2)
    (result,) = drain(run)
    assert (result.worker.name, result.worker.pid, result.worker.ppid) == ("(not run)", 0, 0)
    assert (result.attempts, result.duration) == (2, 0.0)


def test_done_only_once_the_input_is_read_every_result_in_and_handed_on() -> None:
    run = sized([1, 2], size=1)
    assert not run.done()
    batch = take(run)
    take(run)
    settle(run, batch, [ok(0)])
    assert not run.done()  # input not known to be at its end, one task out
    assert run.take_batch() is None  # reading past the end
    assert run.exhausted
    settle(run, TaskBatch([1], [2], []), [ok(1)])
    assert not run.done()  # results not yet handed on
    drain(run)
    assert run.done()
