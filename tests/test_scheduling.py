"""Uneven work: no task waits while a worker that could run it is idle.

How fast that makes runs is measured in benchmarks/uneven.py. These tests check the
behaviour behind it with one task that the test holds up (``tasks.pace``): the tasks
queued behind it on its worker are taken back and run elsewhere while it is held, each
exactly once, also when a worker dies holding work that was taken or given back; a
call submitted while a worker is idle starts there; an explicit chunksize bounds a
batch.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import psutil
import pytest

import fanout
from fanout.backends.local import barrier
from fanout.backends.local.handles import WorkerHandle
from fanout.backends.local.run import LocalRun
from tests import tasks
from tests.helpers import RedisServer, start_worker, stop_workers, wait_for_workers, wait_until

QUICK = 0.0003  # seconds: quick, but longer than a claim's quick task (one task a claim)
VALVE_SECONDS = 60.0  # a held task is let go by then whatever happens: the test then fails


class Hold:
    """The one task a test holds up (its argument, its process, its release: by the
    test, or by a valve if what the test waits for never happens), and the quick tasks
    around it, each of which leaves a file behind when it has run."""

    def __init__(self, tmp_path: Path) -> None:
        self.folder = tmp_path / "hold"
        self.folder.mkdir()
        self.arg = str(self.folder)
        self.runs = tmp_path / "runs"
        self.runs.mkdir()
        self.by_valve = False
        self.valve = threading.Timer(VALVE_SECONDS, self.open_valve)
        self.valve.start()

    def quick(self, index: int, seconds: float = QUICK) -> tuple[float, str, int]:
        return (seconds, str(self.runs), index)

    def ran(self) -> int:
        """How many quick tasks have run (each run counts: a task run twice, twice)."""
        return len(os.listdir(self.runs))

    def runs_of(self) -> Counter[int]:
        """How many times each quick task ran, by index."""
        return Counter(int(name.split("-")[0]) for name in os.listdir(self.runs))

    def once(self, count: int, then: Any) -> threading.Thread:
        """In a thread: once ``count`` quick tasks have run, ``then()``."""

        def watch() -> None:
            wait_until(lambda: self.ran() >= count or self.by_valve, VALVE_SECONDS, "runs")
            then()

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        return thread

    def open_valve(self) -> None:
        self.by_valve = True
        self.release()

    def release(self) -> None:
        (self.folder / "release").touch()

    def pid(self) -> int:
        started = self.folder / "started"
        wait_until(started.exists, 30, "the held task starts")
        return int(started.read_text())

    def close(self) -> None:
        self.valve.cancel()
        self.release()


@pytest.fixture
def hold(tmp_path: Path) -> Iterator[Hold]:
    held = Hold(tmp_path)
    yield held
    held.close()


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts what the caller took back from workers, and what workers gave back."""
    counts: Counter[str] = Counter()
    take_back, gave_back = WorkerHandle.take_back, WorkerHandle.gave_back

    def counted_take_back(self: WorkerHandle, keep: int = 0) -> Any:
        got = take_back(self, keep)
        counts["take_back calls"] += 1
        counts["taken"] += sum(len(tasks) for tasks in got.values())
        return got

    def counted_gave_back(self: WorkerHandle, pos: int) -> Any:
        run, back = gave_back(self, pos)
        counts["given back"] += len(back)
        return run, back

    monkeypatch.setattr(WorkerHandle, "take_back", counted_take_back)
    monkeypatch.setattr(WorkerHandle, "gave_back", counted_gave_back)
    return counts


def needs_barriers() -> None:
    """Taking back at once needs membarrier (barrier.py); CI's machines have it."""
    probe = barrier.everywhere()
    if not probe and not os.environ.get("CI"):
        pytest.skip("this kernel refuses membarrier: work comes back after the running task")
    assert probe, "membarrier is missing on this CI machine"


def uneven(hold: Hold, after: list[Any] | None = None, quick: float = QUICK) -> list[Any]:
    """Quick tasks, the held one at index 200, then more quick ones."""
    items = [hold.quick(i, quick) for i in range(200)] + [hold.arg] + (after or [])
    return items + [hold.quick(i, quick) for i in range(len(items), len(items) + 200)]


def waited_behind(held: fanout.TaskResult, results: list[fanout.TaskResult]) -> list[int]:
    """The tasks after the held one in the input that its process ran after it started
    (``tasks.pace`` returns its pid). One that ran there before it did not wait: under
    load, a task can go back and forth between jobs (or batches), so that a later one
    runs first on the process that then takes the held one."""
    return [r.index for r in results if r.index > held.index and r.value == held.value
            and r.started_at >= held.started_at]  # fmt: skip


def each_index_once(results: list[fanout.TaskResult], count: int) -> dict[int, Any]:
    assert sorted(r.index for r in results) == list(range(count))
    return {r.index: r for r in results}


# -- local ------------------------------------------------------------------------------


def test_tasks_queued_behind_a_held_task_are_taken_back_and_run_on_the_idle_worker(
    hold: Hold, taken: Counter[str]
) -> None:
    needs_barriers()
    items = uneven(hold)
    hold.once(len(items) - 1, hold.release)  # every other task ran while it was held
    with fanout.Fanout(workers=2) as fo:
        results = list(fo.map(tasks.pace, items, ordered=False))
    assert not hold.by_valve, "tasks waited behind the held task while a worker was idle"
    by_index = each_index_once(results, len(items))
    assert all(r.ok for r in results)
    assert hold.ran() == len(items) - 1  # and none ran twice
    assert taken["taken"] > 0, "nothing was taken back: the held task's batch was all it held"
    behind = waited_behind(by_index[200], results)
    # Only tasks claimed before the held one started may follow it on its worker: none,
    # as each quick task runs longer than a claim's quick stretch.
    assert not behind, f"{len(behind)} tasks ran after the held one on its worker"


def test_without_barriers_the_worker_gives_back_after_its_running_task(
    hold: Hold, taken: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(barrier, "everywhere", lambda: False)
    items = uneven(hold)
    releaser = threading.Thread(
        target=lambda: (
            wait_until(lambda: taken["take_back calls"], 30, "the caller asks for work back"),
            hold.release(),
        )
    )
    releaser.start()
    with fanout.Fanout(workers=2) as fo:
        results = list(fo.map(tasks.pace, items, ordered=False))
    releaser.join()
    assert not hold.by_valve
    each_index_once(results, len(items))
    assert all(r.ok for r in results)
    assert hold.ran() == len(items) - 1
    assert taken["taken"] == 0  # no barrier: nothing is the caller's before the worker says
    assert taken["given back"] > 0


def test_a_worker_killed_holding_work_taken_back_from_it_and_one_running_it_lose_nothing(
    hold: Hold, tmp_path: Path
) -> None:
    needs_barriers()
    # Tasks longer than the work a worker lets build up unsent: a task that finished but
    # whose result was never sent is run again when its worker dies (docs/architecture.md),
    # and the count of runs below would show it.
    items = uneven(hold, after=[{"die_once": str(tmp_path / "died")}], quick=0.0012)
    # Once every quick task has run (its batch was taken back from it), the held task's
    # worker is killed.
    hold.once(len(items) - 2, lambda: os.kill(hold.pid(), signal.SIGKILL))
    with fanout.Fanout(workers=2) as fo:
        results = list(fo.map(tasks.pace, items, ordered=False))
    assert not hold.by_valve
    assert hold.ran() == len(items) - 2
    by_index = each_index_once(results, len(items))
    lost = {i for i, r in by_index.items() if not r.ok}
    assert lost == {200, 201}, [(i, by_index[i].error) for i in sorted(lost)]
    assert all(by_index[i].error.type == "WorkerLost" for i in lost)  # type: ignore[union-attr]
    # The task that killed its process ran where the held task's batch was taken to.
    assert by_index[201].worker.pid != hold.pid()


# -- the drop-ins ----------------------------------------------------------------------


def test_executor_submits_start_on_the_idle_worker_not_behind_a_running_task(
    hold: Hold,
) -> None:
    with fanout.Executor(max_workers=2) as ex:
        assert ex.submit(tasks.pace, hold.quick(0)).result() > 0  # both workers are up
        assert ex.submit(tasks.pace, hold.quick(1)).result() > 0
        held = ex.submit(tasks.pace, hold.arg)
        held_by = hold.pid()
        quick = [ex.submit(tasks.pace, hold.quick(i, 0.01)) for i in range(10)]
        done, _ = wait(quick, timeout=VALVE_SECONDS / 2)
        hold.release()
        assert len(done) == 10, "calls waited behind the running task"
        assert held.result() == held_by
    assert held_by not in {f.result() for f in quick}


def test_pool_apply_async_starts_on_the_idle_worker_not_behind_a_running_task(
    hold: Hold,
) -> None:
    with fanout.Pool(processes=2) as pool:
        pool.map(tasks.pace, [hold.quick(i) for i in range(4)])
        held = pool.apply_async(tasks.pace, (hold.arg,))
        held_by = hold.pid()
        quick = [pool.apply_async(tasks.pace, (hold.quick(i, 0.01),)) for i in range(10)]
        pids = [result.get(timeout=VALVE_SECONDS / 2) for result in quick]
        hold.release()
        assert held.get(timeout=30) == held_by
    assert held_by not in pids


@pytest.mark.parametrize("chunksize", [1, 3])
def test_an_explicit_chunksize_is_the_most_tasks_a_batch_holds(
    chunksize: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    next_batch = LocalRun.next_batch

    def counted(self: LocalRun, limit: int | None = None) -> Any:
        batch = next_batch(self, limit)
        if batch is not None:
            sizes.append(len(batch))
        return batch

    monkeypatch.setattr(LocalRun, "next_batch", counted)
    with fanout.Pool(processes=2) as pool:
        assert pool.map(tasks.square, range(2000), chunksize=chunksize) == [
            x * x for x in range(2000)
        ]
        sizes.clear()
        assert list(pool.imap(tasks.square, range(500), chunksize=chunksize)) == [
            x * x for x in range(500)
        ]
    with fanout.Executor(max_workers=2) as ex:
        assert list(ex.map(tasks.square, range(500), chunksize=chunksize))[-1] == 499 * 499
    assert sizes
    assert max(sizes) == chunksize


# -- rq ---------------------------------------------------------------------------------


@pytest.fixture
def two_workers(redis_server: RedisServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """Two ``fanout worker``s on a queue of the test's own; the queue's name."""
    queue = f"sched-{request.node.name[-20:]}-{os.getpid()}"
    names = [f"{queue}-a", f"{queue}-b"]
    started = [start_worker(redis_server.url, name, "--queue", queue) for name in names]
    try:
        wait_for_workers(redis_server.url, names)
        yield queue
    finally:
        stop_workers(started)


def kill_family(pid: int) -> None:
    """SIGKILL a task process and the fanout worker above it: a lost machine."""
    parent = psutil.Process(pid).ppid()
    for victim in (pid, parent):
        os.kill(victim, signal.SIGKILL)


def test_an_rq_job_stuck_behind_a_held_task_gives_its_rest_back_to_the_idle_worker(
    redis_server: RedisServer, two_workers: str, hold: Hold
) -> None:
    needs_barriers()
    items = uneven(hold)
    hold.once(len(items) - 1, hold.release)
    with fanout.Fanout(backend="rq", redis_url=redis_server.url, queue=two_workers) as fo:
        results = list(fo.map(tasks.pace, items, ordered=False))
    assert not hold.by_valve, "tasks waited behind the held task while a worker was idle"
    by_index = each_index_once(results, len(items))
    assert all(r.ok for r in results)
    assert hold.ran() == len(items) - 1
    assert not waited_behind(by_index[200], results)


@pytest.mark.slow
def test_an_rq_worker_killed_after_giving_its_rest_back_loses_nothing(
    redis_server: RedisServer, two_workers: str, hold: Hold
) -> None:
    needs_barriers()
    items = uneven(hold)

    def lose_the_holder() -> None:
        kill_family(hold.pid())
        hold.release()  # the held task, if run again elsewhere, finishes at once

    hold.once(len(items) - 1, lose_the_holder)
    options = {"redis_url": redis_server.url, "queue": two_workers, "dead_after": 4.0}
    with fanout.Fanout(backend="rq", **options) as fo:
        results = list(fo.map(tasks.pace, items, ordered=False))
    assert not hold.by_valve
    by_index = each_index_once(results, len(items))
    # One task is charged with the lost worker (which one the caller cannot tell from
    # outside the lost machine: the first it has no result of), the others ran.
    failed = [r for r in results if not r.ok]
    assert len(failed) == 1
    assert failed[0].error.type == "WorkerLost"  # type: ignore[union-attr]
    assert by_index[200].ok or failed[0].index == 200
    # What the job gave back ran once, elsewhere; only tasks the lost job had run but
    # not yet reported may have run twice.
    runs = hold.runs_of()
    assert all(runs[i] == 1 for i in range(201, len(items)))
    assert all(runs[i] in (1, 2) for i in range(200))
