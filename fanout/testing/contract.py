"""The backend contract's tests, for any backend (see :mod:`fanout.backends.base`).

Subclass :class:`BackendContract` in a test module of your own and give it a
``fanout_options`` fixture: the keyword arguments of ``fanout.run`` and ``fanout.Fanout``
that select your backend with two workers::

    import pytest
    from fanout.testing.contract import BackendContract

    class TestMyBackend(BackendContract):
        @pytest.fixture
        def fanout_options(self):
            return {"backend": "mybackend", "workers": 2}

What they cover: ``map`` (results, identity, output, errors, retries, timeouts, input
errors, ``max_failures``, leaving a map early); the drive interface, by running
``fanout.Executor``, ``fanout.Pool`` and ``fanout.AsyncFanout`` on the backend (skipped
where ``drive_interface`` is False); and, for a backend with ``durable_runs``, a run
submitted, collected, looked at and cancelled by its id.

The tests ask the backend class's capability flags (``runs_in_caller``,
``workers_are_children``, ``needs_importable_target``, ``drive_interface``,
``durable_runs``) what to expect, never its name. Their task functions live in
:mod:`fanout.testing.tasks`, importable wherever fanout is installed.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import fanout
from fanout import TaskFailed, TaskResult
from fanout.backends import Backend, get_backend
from fanout.testing import tasks

CANCELLED = fanout.Cancelled.__name__
WAIT = 60.0  # the longest a test waits for one result
LONG_TASK = 30.0  # seconds: a task that is stopped long before it would end

Run = Callable[..., list[TaskResult]]
MakeFanout = Callable[[], fanout.Fanout]
DropinOptions = tuple["int | None", dict[str, Any]]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(0.02)
    return value


def process_gone(pid: int) -> bool:
    """True once process ``pid`` of this host has exited (a zombie counts: it runs
    nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return False


class BackendContract:
    """The contract's tests; a subclass provides the ``fanout_options`` fixture."""

    @pytest.fixture
    def fanout_options(self) -> dict[str, Any]:
        raise NotImplementedError("give the contract a fanout_options fixture (see above)")

    @pytest.fixture
    def backend_class(self, fanout_options: dict[str, Any]) -> type[Backend]:
        """The class of the backend under test (its capability flags)."""
        name = fanout_options.get("backend") or os.environ.get("FANOUT_BACKEND") or "local"
        return get_backend(name)

    @pytest.fixture
    def worker_processes(self, fanout_options: dict[str, Any]) -> int:
        """How many processes run the tasks (override for a backend with its own pool)."""
        return int(fanout_options.get("workers") or 2)

    @pytest.fixture
    def run(self, fanout_options: dict[str, Any]) -> Run:
        """``fanout.run`` on the backend under test."""

        def run(target: Any, items: Any = None, **kwargs: Any) -> list[TaskResult]:
            return fanout.run(target, items, **{**fanout_options, **kwargs})

        return run

    @pytest.fixture
    def make_fanout(self, fanout_options: dict[str, Any]) -> MakeFanout:
        return lambda: fanout.Fanout(**fanout_options)

    @pytest.fixture
    def dropin_options(
        self, fanout_options: dict[str, Any], backend_class: type[Backend]
    ) -> DropinOptions:
        """The worker count and the other options, for ``fanout.Executor(max_workers,
        **options)`` and ``fanout.Pool(processes, **options)``; skips the test where the
        backend has no drive interface."""
        if not backend_class.drive_interface:
            pytest.skip(f"the {backend_class.name} backend has no drive interface")
        options = dict(fanout_options)
        return options.pop("workers", None), options

    @pytest.fixture
    def durable_options(
        self, fanout_options: dict[str, Any], backend_class: type[Backend]
    ) -> dict[str, Any]:
        """The options of ``fanout.submit``/``fanout.attach`` (the queue's own workers
        run a submitted run: none of its own); skips the test where runs are not
        durable."""
        if not backend_class.durable_runs:
            pytest.skip(f"the {backend_class.name} backend has no durable runs")
        return {k: v for k, v in fanout_options.items() if k != "workers"}

    def test_results_come_back_in_input_order_with_values(self, run: Run) -> None:
        results = run(tasks.square, range(20))
        assert [r.index for r in results] == list(range(20))
        assert [r.value for r in results] == [x * x for x in range(20)]
        assert all(r.ok and r.error is None and r.attempts == 1 for r in results)

    def test_unordered_map_yields_each_index_exactly_once(self, make_fanout: MakeFanout) -> None:
        with make_fanout() as fo:
            results = list(fo.map(tasks.square, range(50), ordered=False))
        assert sorted(r.index for r in results) == list(range(50))
        assert all(r.value == r.index**2 for r in results)

    def test_identity_inside_the_task_equals_the_reported_worker(
        self, run: Run, backend_class: type[Backend]
    ) -> None:
        results = run(tasks.whoami, range(6))
        for r in results:
            assert r.value == {
                "name": r.worker.name,
                "pid": r.worker.pid,
                "ppid": r.worker.ppid,
                "host": r.worker.host,
            }
            assert r.worker.backend == backend_class.name
            if backend_class.runs_in_caller or backend_class.workers_are_children:
                assert r.worker.host == socket.gethostname()

    def test_tasks_run_in_the_caller_its_children_or_elsewhere(
        self, run: Run, backend_class: type[Backend]
    ) -> None:
        results = run(tasks.whoami, range(4))
        pids = {r.worker.pid for r in results}
        ppids = {r.worker.ppid for r in results}
        if backend_class.runs_in_caller:
            assert pids == {os.getpid()}
            assert ppids == {os.getppid()}
        elif backend_class.workers_are_children:
            assert ppids == {os.getpid()}
            assert os.getpid() not in pids
        else:  # remote workers: neither the caller nor its children
            assert os.getpid() not in pids | ppids

    def test_printed_output_is_captured_per_task(self, run: Run) -> None:
        results = run(tasks.chatty, [1, 2])
        assert [r.output for r in results] == ["out 1\nerr 1\n", "out 2\nerr 2\n"]

    def test_task_exception_is_a_failed_result_with_the_remote_traceback(self, run: Run) -> None:
        results = run(tasks.fail, ["x", "y"])
        for r in results:
            assert not r.ok
            assert r.value is None
            assert r.error is not None
            assert r.error.type == "ValueError"
            assert r.error.message == f"bad input {['x', 'y'][r.index]!r}"
            assert tasks.__file__ in r.error.traceback
            assert "in fail" in r.error.traceback

    def test_unwrap_returns_the_value_or_raises_task_failed(self, run: Run) -> None:
        ok, bad = run(tasks.divide, [2, 0])
        assert ok.unwrap() == 0.5
        with pytest.raises(TaskFailed) as info:
            bad.unwrap()
        assert info.value.error.type == "ZeroDivisionError"
        assert "ZeroDivisionError" in str(info.value.__cause__)
        assert info.value.index == 1

    def test_star_unpacks_each_item(self, run: Run) -> None:
        results = run(tasks.add, [(1, 2), [3, 4]], star=True)
        assert [r.value for r in results] == [3, 7]

    def test_repeat_calls_the_target_without_arguments(self, run: Run) -> None:
        results = run(tasks.whoami, repeat=5)
        assert len(results) == 5
        assert all(r.ok for r in results)

    def test_string_target_is_imported(self, run: Run) -> None:
        results = run("fanout.testing.tasks:square", [3])
        assert results[0].value == 9

    def test_unpicklable_input_fails_only_its_own_task(self, run: Run) -> None:
        results = run(tasks.identity, [1, threading.Lock(), 3])
        assert [r.ok for r in results] == [True, False, True]
        error = results[1].error
        assert error is not None
        assert error.type == "SerializationError"
        assert "task 1" in error.message
        assert "lock" in error.message

    def test_unpicklable_return_value_fails_only_its_own_task(self, run: Run) -> None:
        results = run(tasks.return_lock, [0, 1])
        for r in results:
            assert r.error is not None
            assert r.error.type == "SerializationError"
            assert f"task {r.index}" in r.error.message
        assert run(tasks.square, [4])[0].value == 16

    def test_lambdas_and_closures_run_where_they_can(
        self, run: Run, backend_class: type[Backend]
    ) -> None:
        offset = 10

        def shifted(x: int) -> int:
            return x + offset

        if backend_class.needs_importable_target:  # refused up front
            with pytest.raises(fanout.TargetError, match="closure"):
                run(shifted, [1])
            with pytest.raises(fanout.TargetError, match="lambda"):
                run(lambda x: -x, [1])
            return
        assert [r.value for r in run(shifted, [1, 2])] == [11, 12]
        assert [r.value for r in run(lambda x: -x, [1, 2])] == [-1, -2]

    def test_lambda_items_travel_through_cloudpickle(self, run: Run) -> None:
        results = run(tasks.identity, [lambda: 1])
        assert results[0].ok
        assert results[0].value() == 1

    def test_result_timing_fields_are_consistent(self, run: Run) -> None:
        (r,) = run(tasks.sleep_for, [0.05])
        assert isinstance(r, TaskResult)
        assert r.finished_at >= r.started_at
        assert 0.04 <= r.duration <= 2.0
        assert abs((r.finished_at - r.started_at) - r.duration) < 0.01

    def test_retries_rerun_a_failing_task_and_count_attempts(
        self, run: Run, tmp_path: Path
    ) -> None:
        marker = str(tmp_path / "count")
        (r,) = run(tasks.fail_until, [(marker, 2)], star=True, retries=2)
        assert r.ok
        assert r.value == 3
        assert r.attempts == 3

    def test_retries_exhausted_reports_the_last_failure(self, run: Run, tmp_path: Path) -> None:
        marker = str(tmp_path / "count")
        (r,) = run(tasks.fail_until, [(marker, 5)], star=True, retries=1)
        assert not r.ok
        assert r.attempts == 2
        assert r.error is not None
        assert r.error.message == "attempt 2 fails"

    def test_timeout_ends_an_overrunning_task_and_others_carry_on(self, run: Run) -> None:
        results = run(tasks.sleep_for, [5, 0.01, 0.01], timeout=0.5)
        assert results[0].error is not None
        assert results[0].error.type == "TaskTimeout"
        assert [r.ok for r in results[1:]] == [True, True]

    def test_input_iterator_raising_part_way_yields_taken_tasks_then_raises(
        self, make_fanout: MakeFanout
    ) -> None:
        def items() -> Iterator[int]:
            yield 1
            yield 2
            raise OSError("input broke")

        with make_fanout() as fo:
            results = fo.map(tasks.square, items())
            seen = [next(results).value, next(results).value]
            with pytest.raises(OSError, match="input broke"):
                next(results)
        assert seen == [1, 4]

    def test_max_failures_halts_and_every_input_gets_one_result(self, run: Run) -> None:
        """After the N-th failure no new input is taken and tasks not yet started are
        cancelled; running ones finish. Every input, taken or not, gets its one result:
        those that never started ``Cancelled``, attempts 0, run by no one."""
        count = 30
        results = run(tasks.fail_slowly, range(count), max_failures=2)
        assert [r.index for r in results] == list(range(count))
        ran = [r for r in results if r.error is not None and r.error.type != CANCELLED]
        cancelled = [r for r in results if r.error is not None and r.error.type == CANCELLED]
        assert len(ran) + len(cancelled) == count
        assert all(r.error is not None and r.error.type == "ValueError" for r in ran)
        # The two failures, and what the workers were running when the halt reached
        # them (on rq, a worker that holds a job of several tasks learns of it at its
        # next push): far from all of them.
        assert 2 <= len(ran) <= count // 2, len(ran)
        for r in cancelled:
            assert (r.attempts, r.worker.name, r.worker.pid) == (0, "(not run)", 0)
            assert r.error is not None
            assert "max_failures" in r.error.message

    def test_max_failures_counts_failures_not_successes(self, run: Run) -> None:
        results = run(tasks.divide, [1, 0, 2, 0, 4], max_failures=3)
        assert [r.ok for r in results] == [True, False, True, False, True]

    def test_max_failures_counts_final_failures_not_retried_attempts(
        self, run: Run, tmp_path: Path
    ) -> None:
        """A failed attempt that a retry makes good is no failure: were it counted, the
        halt would cancel the retry and the task would fail."""
        marker = str(tmp_path / "count")
        (r,) = run(tasks.fail_until, [(marker, 1)], star=True, retries=1, max_failures=1)
        assert (r.ok, r.value, r.attempts) == (True, 2, 2)

    def test_a_map_left_early_stops_its_running_tasks(
        self, make_fanout: MakeFanout, backend_class: type[Backend], tmp_path: Path
    ) -> None:
        """Leaving a map early ends what still runs for it: a long task is stopped
        (its process ends, where it runs on this host apart from the caller), and the
        next map on the same workers is not held up behind it."""
        notes = [tmp_path / f"task-{i}" for i in range(4)]
        items = [(str(note), 0.0 if i == 0 else LONG_TASK) for i, note in enumerate(notes)]
        with make_fanout() as fo:
            for first in fo.map(tasks.note_then_sleep, items, star=True, ordered=False):
                assert first.index == 0
                if not backend_class.runs_in_caller:  # a long one runs beside the consumer
                    wait_until(lambda: any(n.exists() for n in notes[1:]), WAIT, "a long task")
                break  # the map's iterator is closed here: the run ends
            began = time.monotonic()
            assert [r.value for r in fo.map(tasks.square, [3, 4])] == [9, 16]
            assert time.monotonic() - began < LONG_TASK / 2, "held up behind a stopped task"
            for note in notes[1:]:
                host, pid = note.read_text().split() if note.exists() else ("", "0")
                if host == socket.gethostname() and int(pid) != os.getpid():
                    gone = functools.partial(process_gone, int(pid))
                    wait_until(gone, 15, f"the stopped task's process {pid} ends")

    def test_input_iterator_raising_system_exit_delivers_taken_tasks_then_exits(
        self, make_fanout: MakeFanout
    ) -> None:
        """``sys.exit()`` inside the input generator: the tasks it gave before are run
        and yielded, then the SystemExit goes on (nothing in flight is dropped)."""

        def items() -> Iterator[int]:
            yield from range(5)
            raise SystemExit(3)

        seen: list[int] = []

        def consume(results: Iterator[TaskResult]) -> None:
            seen.extend(r.value for r in results)

        with make_fanout() as fo, pytest.raises(SystemExit) as exited:
            consume(fo.map(tasks.square, items(), ordered=False))
        assert exited.value.code == 3
        assert sorted(seen) == [0, 1, 4, 9, 16]

    def test_a_map_keeps_its_fanout_alive(self, fanout_options: dict[str, Any]) -> None:
        """``for r in fanout.Fanout().map(...)``: nothing else holds the Fanout, and the
        map must not lose its workers to the garbage collector."""
        import gc

        values = []
        for r in fanout.Fanout(**fanout_options).map(tasks.square, range(20)):
            if r.index in (0, 10):  # a full collection is slow in a long test process
                gc.collect()
            values.append(r.value)
        assert values == [x * x for x in range(20)]

    def test_a_fanout_is_reused_across_maps(
        self, make_fanout: MakeFanout, backend_class: type[Backend], worker_processes: int
    ) -> None:
        with make_fanout() as fo:
            first = {r.worker.pid for r in fo.map(tasks.whoami, range(10))}
            second = {r.worker.pid for r in fo.map(tasks.whoami, range(10))}
            assert [r.value for r in fo.map(tasks.square, [5])] == [25]
        if backend_class.runs_in_caller:
            assert first | second == {os.getpid()}
        else:  # the same workers serve both maps, not a new pool per map
            assert len(first | second) <= worker_processes

    def test_breaking_out_of_a_map_then_mapping_again(self, make_fanout: MakeFanout) -> None:
        with make_fanout() as fo:
            for r in fo.map(tasks.square, range(1000)):
                if r.index == 3:
                    break
            assert [r.value for r in fo.map(tasks.square, [7, 8])] == [49, 64]

    def test_bad_target_raises_before_any_task_runs(self, run: Run) -> None:
        with pytest.raises(fanout.TargetError, match="no module named"):
            run("no_such_module_xyz:f", [1])
        with pytest.raises(fanout.TargetError, match="has no attribute"):
            run("fanout.testing.tasks:nope", [1])
        with pytest.raises(fanout.TargetError, match="not of the form"):
            run("fanout.testing.tasks", [1])

    def test_empty_input_gives_no_results(self, run: Run) -> None:
        assert run(tasks.square, []) == []

    # -- the drive interface: fanout.Executor, fanout.Pool, fanout.AsyncFanout ------------

    def test_executor_submit_and_map_run_on_the_backend(
        self, dropin_options: DropinOptions, backend_class: type[Backend]
    ) -> None:
        workers, options = dropin_options
        with fanout.Executor(workers, **options) as ex:
            futures = [ex.submit(tasks.add, i, 10) for i in range(6)]
            assert [f.result(timeout=WAIT) for f in futures] == list(range(10, 16))
            first = futures[0].task_result
            assert first is not None
            assert (first.index, first.ok, first.worker.backend) == (0, True, backend_class.name)
            with pytest.raises(ZeroDivisionError):  # the task's own exception, as itself
                ex.submit(tasks.divide, 0).result(timeout=WAIT)
            squares = list(ex.map(tasks.square, range(10), timeout=WAIT))
            assert squares == [x * x for x in range(10)]
            assert list(ex.map(tasks.add, [1, 2], [3, 4], timeout=WAIT)) == [4, 6]

    def test_executor_shutdown_cancels_the_futures_no_worker_has(
        self, dropin_options: DropinOptions
    ) -> None:
        workers, options = dropin_options
        ex = fanout.Executor(workers, **options)
        futures = [ex.submit(tasks.sleep_for, 0.5) for _ in range(12)]
        ex.shutdown(wait=True, cancel_futures=True)
        assert all(f.done() for f in futures)
        assert futures[-1].cancelled()  # 12 half-second tasks: the last had not started
        for f in futures:
            assert f.cancelled() or f.result() == 0.5

    def test_pool_apply_imap_and_starmap_run_on_the_backend(
        self, dropin_options: DropinOptions
    ) -> None:
        workers, options = dropin_options
        squares = [x * x for x in range(10)]
        with fanout.Pool(workers, **options) as pool:
            assert pool.apply(tasks.add, (1, 2)) == 3
            assert pool.apply_async(tasks.square, (4,)).get(timeout=WAIT) == 16
            assert list(pool.imap(tasks.square, range(10))) == squares
            assert sorted(pool.imap_unordered(tasks.square, range(10))) == squares
            assert pool.starmap(tasks.add, [(1, 2), (3, 4)]) == [3, 7]
            with pytest.raises(ValueError, match="bad input 'x'"):
                pool.apply(tasks.fail, ("x",))

    def test_async_map_and_arun_run_on_the_backend(
        self, dropin_options: DropinOptions, fanout_options: dict[str, Any]
    ) -> None:
        async def main() -> tuple[list[TaskResult], list[TaskResult], list[TaskResult]]:
            async with fanout.AsyncFanout(**fanout_options) as fo:
                ordered = [r async for r in fo.map(tasks.square, range(20))]
                async for r in fo.map(tasks.square, range(1000)):
                    if r.index == 3:
                        break  # left early: the next map is not held up
                again = [r async for r in fo.map(tasks.square, [7])]
            unordered = await fanout.arun(tasks.square, range(10), ordered=False,
                                          **fanout_options)  # fmt: skip
            return ordered, again, unordered

        ordered, again, unordered = asyncio.run(main())
        assert [(r.index, r.value) for r in ordered] == [(x, x * x) for x in range(20)]
        assert [r.value for r in again] == [49]
        assert sorted(r.index for r in unordered) == list(range(10))

    # -- durable runs: submit, attach, status, cancel by id --------------------------------

    def test_a_submitted_run_is_collected_by_its_id_each_index_once(
        self, durable_options: dict[str, Any]
    ) -> None:
        with fanout.submit(tasks.square, range(8), **durable_options) as submitted:
            status = submitted.status()
        assert status["total"] == 8
        with fanout.attach(submitted.id, **durable_options) as run:
            results = list(run.results())
        assert sorted(r.index for r in results) == list(range(8))
        assert all(r.ok and r.value == r.index**2 for r in results)
        # A complete collection removed it.
        with (
            fanout.attach(submitted.id, **durable_options) as run,
            pytest.raises(fanout.UnknownRun),
        ):
            list(run.results())

    def test_an_unknown_run_id_is_unknown(self, durable_options: dict[str, Any]) -> None:
        with fanout.attach("0" * 32, **durable_options) as run:
            with pytest.raises(fanout.UnknownRun):
                run.status()
            with pytest.raises(fanout.UnknownRun):
                list(run.results())

    def test_cancelling_a_run_by_its_id_ends_every_task_of_it(
        self, durable_options: dict[str, Any]
    ) -> None:
        """Queued tasks are cancelled, running ones stopped: each index gets its one
        result, ``Cancelled``, long before a task would have ended."""
        began = time.monotonic()
        with fanout.submit(tasks.sleep_for, [LONG_TASK] * 6, **durable_options) as run:
            run.cancel()
            assert run.status()["queued"] == 0
            results = list(run.results())
        assert sorted(r.index for r in results) == list(range(6))
        assert {r.error.type if r.error else None for r in results} == {CANCELLED}
        assert time.monotonic() - began < LONG_TASK / 2

    def test_a_backend_without_durable_runs_says_so(
        self, make_fanout: MakeFanout, backend_class: type[Backend]
    ) -> None:
        if backend_class.durable_runs:
            pytest.skip(f"the {backend_class.name} backend has durable runs")
        with make_fanout() as fo, pytest.raises(ValueError, match="no runs that outlive"):
            fo.submit(tasks.square, [1])
