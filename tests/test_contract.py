"""The contract every backend keeps (DESIGN.md), run on each backend of ``conftest.BACKENDS``."""

from __future__ import annotations

import os
import socket
import threading

import pytest

import fanout
from fanout import TaskFailed, TaskResult
from tests import tasks


def test_results_come_back_in_input_order_with_values(backend: str, run, make_fanout) -> None:
    results = run(tasks.square, range(20))
    assert [r.index for r in results] == list(range(20))
    assert [r.value for r in results] == [x * x for x in range(20)]
    assert all(r.ok and r.error is None and r.attempts == 1 for r in results)


def test_unordered_map_yields_each_index_exactly_once(backend: str, run, make_fanout) -> None:
    with make_fanout() as fo:
        results = list(fo.map(tasks.square, range(50), ordered=False))
    assert sorted(r.index for r in results) == list(range(50))
    assert all(r.value == r.index**2 for r in results)


def test_identity_inside_the_task_equals_the_reported_worker(
    backend: str, run, make_fanout
) -> None:
    results = run(tasks.whoami, range(6))
    for r in results:
        assert r.value == {
            "name": r.worker.name,
            "pid": r.worker.pid,
            "ppid": r.worker.ppid,
            "host": r.worker.host,
        }
        assert r.worker.backend == backend
        assert r.worker.host == socket.gethostname()


def test_parent_of_every_worker_is_the_caller_or_its_rq_worker(
    backend: str, run, make_fanout
) -> None:
    results = run(tasks.whoami, range(4))
    ppids = {r.worker.ppid for r in results}
    if backend == "local":
        assert ppids == {os.getpid()}
    elif backend == "inline":
        assert ppids == {os.getppid()}
    else:  # the task process's parent is the RQ worker that dequeued the job
        from tests.conftest import RQ_WORKERS

        assert {r.worker.name for r in results} <= set(RQ_WORKERS)
        assert os.getpid() not in ppids


def test_printed_output_is_captured_per_task(backend: str, run, make_fanout) -> None:
    results = run(tasks.chatty, [1, 2])
    assert [r.output for r in results] == ["out 1\nerr 1\n", "out 2\nerr 2\n"]


def test_task_exception_is_a_failed_result_with_the_remote_traceback(
    backend: str, run, make_fanout
) -> None:
    results = run(tasks.fail, ["x", "y"])
    for r in results:
        assert not r.ok
        assert r.value is None
        assert r.error is not None
        assert r.error.type == "ValueError"
        assert r.error.message == f"bad input {['x', 'y'][r.index]!r}"
        assert "tests/tasks.py" in r.error.traceback
        assert "in fail" in r.error.traceback


def test_unwrap_returns_the_value_or_raises_task_failed(backend: str, run, make_fanout) -> None:
    ok, bad = run(tasks.divide, [2, 0])
    assert ok.unwrap() == 0.5
    with pytest.raises(TaskFailed) as info:
        bad.unwrap()
    assert info.value.error.type == "ZeroDivisionError"
    assert "ZeroDivisionError" in str(info.value.__cause__)
    assert info.value.index == 1


def test_star_unpacks_each_item(backend: str, run, make_fanout) -> None:
    results = run(tasks.add, [(1, 2), [3, 4]], star=True)
    assert [r.value for r in results] == [3, 7]


def test_repeat_calls_the_target_without_arguments(backend: str, run, make_fanout) -> None:
    results = run(tasks.whoami, repeat=5)
    assert len(results) == 5
    assert all(r.ok for r in results)


def test_string_target_is_imported(backend: str, run, make_fanout) -> None:
    results = run("tests.tasks:square", [3])
    assert results[0].value == 9


def test_unpicklable_input_fails_only_its_own_task(backend: str, run, make_fanout) -> None:
    results = run(tasks.identity, [1, threading.Lock(), 3])
    assert [r.ok for r in results] == [True, False, True]
    error = results[1].error
    assert error is not None
    assert error.type == "SerializationError"
    assert "task 1" in error.message
    assert "lock" in error.message


def test_unpicklable_return_value_fails_only_its_own_task(backend: str, run, make_fanout) -> None:
    results = run(tasks.return_lock, [0, 1])
    for r in results:
        assert r.error is not None
        assert r.error.type == "SerializationError"
        assert f"task {r.index}" in r.error.message
    assert run(tasks.square, [4])[0].value == 16


def test_lambdas_and_closures_run_where_they_can(backend: str, run, make_fanout) -> None:
    offset = 10

    def shifted(x: int) -> int:
        return x + offset

    if backend == "rq":  # workers import the target by name: refused up front
        with pytest.raises(fanout.TargetError, match="closure"):
            run(shifted, [1])
        with pytest.raises(fanout.TargetError, match="lambda"):
            run(lambda x: -x, [1])
        return
    assert [r.value for r in run(shifted, [1, 2])] == [11, 12]
    assert [r.value for r in run(lambda x: -x, [1, 2])] == [-1, -2]


def test_lambda_items_travel_through_cloudpickle(backend: str, run, make_fanout) -> None:
    results = run(tasks.identity, [lambda: 1])
    assert results[0].ok
    assert results[0].value() == 1


def test_result_timing_fields_are_consistent(backend: str, run, make_fanout) -> None:
    (r,) = run(tasks.sleep_for, [0.05])
    assert isinstance(r, TaskResult)
    assert r.finished_at >= r.started_at
    assert 0.04 <= r.duration <= 2.0
    assert abs((r.finished_at - r.started_at) - r.duration) < 0.01


def test_retries_rerun_a_failing_task_and_count_attempts(
    backend: str, run, make_fanout, tmp_path
) -> None:
    marker = str(tmp_path / "count")
    (r,) = run(tasks.fail_until, [(marker, 2)], star=True, retries=2)
    assert r.ok
    assert r.value == 3
    assert r.attempts == 3


def test_retries_exhausted_reports_the_last_failure(
    backend: str, run, make_fanout, tmp_path
) -> None:
    marker = str(tmp_path / "count")
    (r,) = run(tasks.fail_until, [(marker, 5)], star=True, retries=1)
    assert not r.ok
    assert r.attempts == 2
    assert r.error is not None
    assert r.error.message == "attempt 2 fails"


def test_timeout_ends_an_overrunning_task_and_others_carry_on(
    backend: str, run, make_fanout
) -> None:
    results = run(tasks.sleep_for, [5, 0.01, 0.01], timeout=0.5)
    assert results[0].error is not None
    assert results[0].error.type == "TaskTimeout"
    assert [r.ok for r in results[1:]] == [True, True]


def test_input_iterator_raising_part_way_yields_taken_tasks_then_raises(
    backend: str, run, make_fanout
) -> None:
    def items():
        yield 1
        yield 2
        raise OSError("input broke")

    with make_fanout() as fo:
        results = fo.map(tasks.square, items())
        seen = [next(results).value, next(results).value]
        with pytest.raises(OSError, match="input broke"):
            next(results)
    assert seen == [1, 4]


def test_a_fanout_is_reused_across_maps(backend: str, run, make_fanout) -> None:
    with make_fanout() as fo:
        first = {r.worker.pid for r in fo.map(tasks.whoami, range(10))}
        second = {r.worker.pid for r in fo.map(tasks.whoami, range(10))}
        assert [r.value for r in fo.map(tasks.square, [5])] == [25]
    if backend == "local":
        assert second <= first  # the same workers, not a new pool per map


def test_breaking_out_of_a_map_then_mapping_again(backend: str, run, make_fanout) -> None:
    with make_fanout() as fo:
        for r in fo.map(tasks.square, range(1000)):
            if r.index == 3:
                break
        assert [r.value for r in fo.map(tasks.square, [7, 8])] == [49, 64]


def test_bad_target_raises_before_any_task_runs(backend: str, run, make_fanout) -> None:
    with pytest.raises(fanout.TargetError, match="no module named"):
        run("no_such_module_xyz:f", [1])
    with pytest.raises(fanout.TargetError, match="has no attribute"):
        run("tests.tasks:nope", [1])
    with pytest.raises(fanout.TargetError, match="not of the form"):
        run("tests.tasks", [1])


def test_empty_input_gives_no_results(backend: str, run, make_fanout) -> None:
    assert run(tasks.square, []) == []
