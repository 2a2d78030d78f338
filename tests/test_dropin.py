"""fanout.Executor and fanout.Pool on every backend (issue 14): what the stdlib's pools do,
plus the TaskResult of every call; bad input raises what the stdlib raises.

CPython's own test suites of the stdlib pools run against them in test_cpython_suites.py.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import multiprocessing
import os
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fanout
from fanout.errors import SerializationError
from tests import tasks
from tests.helpers import start_python, wait_until


def split(options: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
    """(worker count, the rest) of the ``options`` fixture, for the drop-ins' signatures."""
    rest = dict(options)
    return rest.pop("workers", None), rest


@pytest.fixture
def executor(options: dict[str, Any]) -> Iterator[fanout.Executor]:
    workers, rest = split(options)
    with fanout.Executor(workers, **rest) as ex:
        yield ex


@pytest.fixture
def pool(options: dict[str, Any]) -> Iterator[fanout.Pool]:
    workers, rest = split(options)
    with fanout.Pool(workers, **rest) as p:
        yield p


# --------------------------------------------------------------------------- Executor


def test_submit_gives_a_future_with_the_value_and_the_task_result(
    executor: fanout.Executor, backend: str
) -> None:
    future = executor.submit(tasks.add, 2, b=3)
    assert isinstance(future, cf.Future)
    assert isinstance(future, fanout.TaskFuture)
    assert future.result(timeout=30) == 5
    result = future.task_result
    assert result is not None
    assert result.ok
    assert result.value == 5
    assert result.worker.backend == backend
    assert result.worker.pid > 0
    if backend == "inline":
        assert result.worker.pid == os.getpid()


def test_a_task_exception_is_raised_as_its_own_type_with_the_workers_traceback(
    executor: fanout.Executor,
) -> None:
    future = executor.submit(tasks.fail, 7)
    with pytest.raises(ValueError, match="bad input 7") as caught:
        future.result(timeout=30)
    cause = caught.value.__cause__
    assert cause is not None
    assert type(cause).__name__ == "_RemoteTraceback"  # as ProcessPoolExecutor's
    assert 'raise ValueError(f"bad input {x!r}")' in str(cause)
    assert future.task_result is not None
    assert future.task_result.error is not None
    assert future.task_result.error.type == "ValueError"


def test_map_keeps_order_reads_input_lazily_and_stops_when_dropped(
    executor: fanout.Executor,
) -> None:
    assert list(executor.map(tasks.add, range(50), range(50), chunksize=7)) == [
        2 * i for i in range(50)
    ]
    taken = itertools.count()
    endless = (next(taken) for _ in itertools.repeat(None))
    values = executor.map(tasks.square, endless, buffersize=4)
    assert [next(values) for _ in range(20)] == [i * i for i in range(20)]
    values.close()  # type: ignore[attr-defined]
    # Bounded read-ahead: an endless input was read only so far.
    assert next(taken) < 20_000


def test_map_raises_the_first_failure_in_order(executor: fanout.Executor) -> None:
    values = executor.map(tasks.divide, [1, 2, 0, 4])
    assert next(values) == 1.0
    assert next(values) == 0.5
    with pytest.raises(ZeroDivisionError):
        next(values)


def test_several_maps_and_submits_run_at_once_on_one_executor(
    executor: fanout.Executor,
) -> None:
    first = executor.map(tasks.square, range(200))
    second = executor.map(tasks.add, range(200), itertools.repeat(1))
    futures = [executor.submit(tasks.square, i) for i in range(50)]
    # Interleaved: neither map has to finish before the other yields.
    pairs = [(next(first), next(second)) for _ in range(100)]
    assert pairs == [(i * i, i + 1) for i in range(100)]
    assert [f.result(timeout=30) for f in futures] == [i * i for i in range(50)]
    assert list(first) == [i * i for i in range(100, 200)]
    assert list(second) == [i + 1 for i in range(100, 200)]


def test_submits_from_many_threads_each_get_their_own_result(
    executor: fanout.Executor,
) -> None:
    out: dict[int, int] = {}

    def submit_some(base: int) -> None:
        futures = {base + i: executor.submit(tasks.square, base + i) for i in range(40)}
        for key, future in futures.items():
            out[key] = future.result(timeout=60)

    threads = [threading.Thread(target=submit_some, args=(n * 100,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert out == {k: k * k for n in range(4) for k in range(n * 100, n * 100 + 40)}


def test_cancel_stops_tasks_no_worker_has_yet(
    options: dict[str, Any], tmp_path: Path, backend: str
) -> None:
    workers, rest = split(options)
    release = tmp_path / "release"
    ex = fanout.Executor(workers, **rest)
    try:
        blockers = [ex.submit(tasks.wait_for_file, str(release)) for _ in range(2)]
        queued = [ex.submit(tasks.square, i) for i in range(100)]
        cancelled = [f for f in queued if f.cancel()]
        assert len(cancelled) > 50, len(cancelled)
        assert all(f.cancelled() and f.done() for f in cancelled)
        release.touch()
        assert [f.result(timeout=60) for f in blockers] == [str(release)] * 2
        others = [f for f in queued if not f.cancelled()]
        assert all(f.result(timeout=60) == queued.index(f) ** 2 for f in others)
        with pytest.raises(cf.CancelledError):
            cancelled[0].result()
    finally:
        release.touch()
        ex.shutdown(wait=True, cancel_futures=True)


def test_shutdown_cancel_futures_cancels_the_queued_and_finishes_the_running(
    options: dict[str, Any], tmp_path: Path, backend: str
) -> None:
    workers, rest = split(options)
    release = tmp_path / "release"
    ex = fanout.Executor(workers, **rest)
    # Every worker busy (two here, one inline): none takes more.
    busy = 1 if backend == "inline" else 2
    started = [tmp_path / f"started-{n}" for n in range(busy)]
    running = [ex.submit(tasks.start_then_wait, str(s), str(release)) for s in started]
    wait_until(lambda: all(s.exists() for s in started), 30, "every worker is busy")
    queued = [ex.submit(tasks.square, i) for i in range(100)]
    threading.Timer(0.5, release.touch).start()
    ex.shutdown(wait=True, cancel_futures=True)
    assert [f.result(timeout=0) for f in running] == [str(release)] * busy
    assert [i for i, f in enumerate(queued) if not f.cancelled()] == []
    assert all(f.done() for f in queued)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(tasks.square, 1)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.map(tasks.square, [1])


def test_works_with_wait_and_as_completed(executor: fanout.Executor) -> None:
    futures = [executor.submit(tasks.square, i) for i in range(20)]
    done, not_done = cf.wait(futures, timeout=60)
    assert len(done) == 20
    assert not not_done
    assert sorted(f.result() for f in cf.as_completed(futures)) == [i * i for i in range(20)]


def test_what_a_task_prints_shows_in_the_callers_stdout(
    executor: fanout.Executor, capsys: pytest.CaptureFixture[str]
) -> None:
    future = executor.submit(tasks.chatty, 3)
    assert future.result(timeout=30) == 3
    out = capsys.readouterr().out
    assert "out 3" in out
    assert future.task_result is not None
    assert "out 3" in future.task_result.output


# --------------------------------------------------------------------------- Pool


def test_pool_api(pool: fanout.Pool) -> None:
    assert pool.apply(tasks.add, (2, 3)) == 5
    assert pool.apply(tasks.add, (), {"a": 1, "b": 2}) == 3
    assert pool.map(tasks.square, range(10), chunksize=3) == [i * i for i in range(10)]
    assert pool.starmap(tasks.add, [(1, 2), (3, 4)]) == [3, 7]
    assert pool.map_async(tasks.square, [3]).get(timeout=30) == [9]
    assert pool.starmap_async(tasks.add, [(1, 1)]).get(timeout=30) == [2]
    assert list(pool.imap(tasks.square, range(10), chunksize=4)) == [i * i for i in range(10)]
    assert sorted(pool.imap_unordered(tasks.square, range(10), 2)) == [i * i for i in range(10)]
    applied = pool.apply_async(tasks.square, (4,))
    applied.wait(timeout=30)
    assert applied.ready()
    assert applied.successful()
    assert applied.get() == 16
    assert applied.task_result is not None
    assert applied.task_result.worker.pid > 0


def test_pool_callbacks_and_errors(pool: fanout.Pool) -> None:
    seen: list[Any] = []
    pool.apply_async(tasks.square, (5,), callback=seen.append, error_callback=seen.append).wait(30)
    pool.apply_async(tasks.fail, (1,), callback=seen.append, error_callback=seen.append).wait(30)
    pool.map_async(tasks.divide, [1, 0], callback=seen.append, error_callback=seen.append).wait(30)
    assert seen[0] == 25
    assert isinstance(seen[1], ValueError)
    assert isinstance(seen[2], ZeroDivisionError)
    failed = pool.apply_async(tasks.fail, (2,))
    failed.wait(30)
    assert not failed.successful()
    with pytest.raises(ValueError, match="bad input 2") as caught:
        failed.get()
    assert type(caught.value.__cause__).__name__ == "RemoteTraceback"
    pending = pool.apply_async(tasks.sleep_for, (1,))
    with pytest.raises(multiprocessing.TimeoutError):
        pending.get(timeout=0.05)
    with pytest.raises(ValueError, match="not ready"):
        pending.successful()


def test_pool_async_results_in_flight_at_once(pool: fanout.Pool) -> None:
    maps = [pool.map_async(tasks.square, range(n, n + 30)) for n in (0, 100)]
    imap = pool.imap(tasks.square, range(30))
    applied = [pool.apply_async(tasks.add, (i, i)) for i in range(30)]
    assert next(imap) == 0
    assert [m.get(timeout=60) for m in maps] == [
        [i * i for i in range(30)],
        [i * i for i in range(100, 130)],
    ]
    assert [a.get(timeout=60) for a in applied] == [2 * i for i in range(30)]
    assert list(imap) == [i * i for i in range(1, 30)]


def test_pool_initializer_runs_once_in_each_process_that_runs_tasks(
    options: dict[str, Any], tmp_path: Path, backend: str
) -> None:
    workers, rest = split(options)
    log = tmp_path / "inits"
    with fanout.Pool(workers, tasks.remember, (str(log), "set"), **rest) as p:
        seen = p.map(tasks.initialized_with, range(40)) + [
            p.apply(tasks.initialized_with) for _ in range(5)
        ]
    assert {value for _, value in seen} == {"set"}
    pids = {pid for pid, _ in seen}
    inits = log.read_text().split()
    assert sorted(inits) == sorted(set(inits)), "an initializer ran twice in one process"
    assert {int(pid) for pid in inits} >= pids
    if backend == "inline":
        assert pids == {os.getpid()}


def test_maxtasksperchild_replaces_local_workers(tmp_path: Path) -> None:
    with fanout.Pool(2, maxtasksperchild=3) as p:
        pids = p.map(tasks.pid_of, range(24), chunksize=1)
    assert len(set(pids)) >= 8  # each process ran at most 3 of the 24 tasks
    assert max(pids.count(pid) for pid in set(pids)) <= 3


def test_pool_close_join_and_terminate(options: dict[str, Any], tmp_path: Path) -> None:
    workers, rest = split(options)
    p = fanout.Pool(workers, **rest)
    result = p.map_async(tasks.square, range(20))
    p.close()
    with pytest.raises(ValueError, match="Pool not running"):
        p.map(tasks.square, [1])
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply_async(tasks.square, (1,))
    p.join()
    assert result.get(timeout=0) == [i * i for i in range(20)]

    stuck = fanout.Pool(workers, **rest)
    never = stuck.apply_async(tasks.wait_for_file, (str(tmp_path / "never"), 60))
    with pytest.raises(ValueError, match="Pool is still running"):
        stuck.join()
    stuck.terminate()
    stuck.join()
    assert never.ready()
    assert not never.successful()
    with pytest.raises(ValueError, match="Pool not running"), stuck:
        pass


# --------------------------------------------------------------------------- bad input


def test_bad_worker_counts_raise_the_stdlibs_errors() -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"^max_workers must be greater than 0$"):
            fanout.Executor(bad)
        with pytest.raises(ValueError, match=r"^Number of processes must be at least 1$"):
            fanout.Pool(bad)
    with pytest.raises(ValueError, match="maxtasksperchild must be a positive int or None"):
        fanout.Pool(1, maxtasksperchild=0)
    with pytest.raises(TypeError, match="initializer must be a callable"):
        fanout.Pool(1, initializer=3)  # type: ignore[arg-type]


def test_an_argument_that_cannot_be_pickled_raises_the_pickling_error(
    executor: fanout.Executor, pool: fanout.Pool
) -> None:
    future = executor.submit(tasks.identity, threading.Lock())
    with pytest.raises(TypeError, match=r"cannot pickle '_thread\.lock' object") as caught:
        future.result(timeout=30)
    assert isinstance(caught.value.__cause__, SerializationError)
    with pytest.raises(TypeError, match=r"cannot pickle '_thread\.lock' object"):
        pool.map(tasks.identity, [1, threading.Lock()])
    assert executor.submit(tasks.square, 3).result(timeout=30) == 9  # nothing else lost


@pytest.mark.parametrize("backend", ["rq"])
def test_a_lambda_on_rq_raises_a_pickling_error(
    options: dict[str, Any], rq_workers: list[str]
) -> None:
    workers, rest = split(options)
    with fanout.Executor(workers, **rest) as ex:
        future = ex.submit(lambda x: x, 1)
        with pytest.raises(pickle.PicklingError, match="a lambda has no importable name"):
            future.result(timeout=30)
        with pytest.raises(pickle.PicklingError, match="a lambda has no importable name"):
            ex.map(lambda x: x, [1])
        assert ex.submit(tasks.square, 4).result(timeout=30) == 16
    with fanout.Pool(workers, **rest) as p, pytest.raises(pickle.PicklingError):
        p.apply(lambda: 1)


@pytest.mark.parametrize("backend", ["rq"])
def test_bound_methods_and_partials_run_on_rq(
    options: dict[str, Any], rq_workers: list[str]
) -> None:
    import functools

    workers, rest = split(options)
    with fanout.Executor(workers, **rest) as ex:
        assert ex.submit(functools.partial(tasks.add, 1), 2).result(timeout=30) == 3
        assert list(ex.map(functools.partial(tasks.add, b=10), [1, 2])) == [11, 12]
        assert ex.submit("a-b".split, "-").result(timeout=30) == ["a", "b"]


# --------------------------------------------------------------------------- docs/moving.md


def _primes_demo(name: str, env: dict[str, str] | None = None) -> list[str]:
    proc = start_python(f"demo/moving/{name}.py", env=env)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    return stdout.splitlines()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "rq"])
def test_the_moving_guides_program_gives_the_stdlibs_answers_on_fanout(
    backend: str, request: pytest.FixtureRequest
) -> None:
    env = {}
    if backend == "rq":
        # A database of its own: the session's shared workers serve database 0's queue.
        url = request.getfixturevalue("redis_server").url.replace("/0", "/5")
        env = {"FANOUT_BACKEND": "rq", "FANOUT_REDIS_URL": url}
    stdlib, ours = _primes_demo("stdlib_primes"), _primes_demo("fanout_primes", env)
    # The same counts (the order of as_completed may differ), the same Pool.map line.
    assert sorted(line for line in stdlib if line.startswith("below")) == sorted(
        line.split("  (")[0] for line in ours if line.startswith("below")
    )
    assert [line for line in stdlib if line.startswith("Pool")] == [
        line for line in ours if line.startswith("Pool")
    ]
    # Every result names its process: this backend, at most two of them, on this host.
    who = {line.split("  (")[1] for line in ours if line.startswith("below")}
    assert all(
        w.startswith(f"{backend} ") and w.endswith(f" on {os.uname().nodename})") for w in who
    )
    assert 1 <= len(who) <= 2
