"""fanout from asyncio: AsyncFanout and arun on every backend, a loop that keeps its
pace through big runs, and cancellation that ends the run as Ctrl-C does."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from redis import Redis
from rq import Queue

import fanout
from fanout.models import TaskResult
from tests.helpers import RQ_WORKERS, RedisServer, wait_until

BACKENDS = ["local", "inline"]


@pytest.fixture
def rq_url(redis_server: RedisServer, rq_workers: list[str]) -> str:
    """The session's redis-server, served by its two real ``fanout worker`` processes."""
    return redis_server.url


def options_for(backend: str) -> dict[str, Any]:
    return {"backend": backend} if backend == "inline" else {"backend": backend, "workers": 2}


@pytest.mark.parametrize("backend", BACKENDS)
def test_arun_returns_every_result_in_order(backend: str) -> None:
    results = asyncio.run(fanout.arun("tests.tasks:square", range(50), **options_for(backend)))
    assert [r.value for r in results] == [i * i for i in range(50)]
    assert [r.index for r in results] == list(range(50))


def test_arun_on_rq_workers(rq_url: str) -> None:
    results = asyncio.run(fanout.arun("tests.tasks:square", range(200), backend="rq",
                                      redis_url=rq_url))  # fmt: skip
    assert [r.value for r in results] == [i * i for i in range(200)]
    assert {r.worker.name for r in results} == set(RQ_WORKERS)


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_for_yields_as_fanout_map_does(backend: str) -> None:
    async def main() -> list[TaskResult]:
        async with fanout.AsyncFanout(**options_for(backend)) as fo:
            first = [r async for r in fo.map("tests.tasks:square", range(20), ordered=False)]
            second = [r async for r in fo.map("tests.tasks:fail", ["x"])]
        return first + second

    results = asyncio.run(main())
    assert sorted(r.value for r in results[:20]) == [i * i for i in range(20)]
    failed = results[20]
    assert not failed.ok
    assert failed.error is not None
    assert failed.error.type == "ValueError"


def test_a_bad_target_raises_before_any_task_runs() -> None:
    async def main() -> None:
        async with fanout.AsyncFanout(backend="local", workers=1) as fo:
            fo.map("tests.tasks:no_such_function", [1])

    with pytest.raises(fanout.TargetError):
        asyncio.run(main())


TICK = 0.01


def ticks_during(work: Callable[[], Awaitable[Any]]) -> tuple[list[float], float]:
    """How late (seconds) each 10 ms tick of a coroutine was while ``work`` ran, and how
    long ``work`` ran."""

    async def main() -> tuple[list[float], float]:
        late: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            loop = asyncio.get_running_loop()
            due = loop.time() + TICK
            while not done.is_set():
                await asyncio.sleep(max(0.0, due - loop.time()))
                late.append(loop.time() - due)
                due += TICK

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0)  # the ticker has started: the work's first step is timed
        started = time.perf_counter()
        try:
            await work()
        finally:
            elapsed = time.perf_counter() - started
            done.set()
            await tick
        return late, elapsed

    # From a collected heap: a full collection of this (pytest's) process pauses every
    # thread for tens of ms whoever triggers it, and the test before may have left it
    # due. What is measured here is fanout's own share of the loop.
    gc.collect()
    return asyncio.run(main())


def assert_on_time(measured: tuple[list[float], float]) -> None:
    late, elapsed = measured
    # The ticker ran all along: a tick per 10 ms of the work, short by at most the
    # longest stall allowed below (a stall at the very end is one late tick), however
    # quick the run was (an rq run of 10,000 trivial tasks can take well under 0.5 s).
    assert len(late) >= max(3, int((elapsed - 0.250) / TICK)), (len(late), elapsed)
    late.sort()
    assert late[int(0.99 * (len(late) - 1))] <= 0.050, late[-10:]
    assert late[-1] <= 0.250, late[-10:]


def test_the_loop_keeps_its_pace_through_a_100000_task_local_run() -> None:
    results: list[TaskResult] = []

    async def work() -> None:
        results.extend(await fanout.arun("tests.tasks:square", range(100_000), workers=2))

    assert_on_time(ticks_during(work))
    assert len(results) == 100_000


def test_the_loop_keeps_its_pace_through_a_10000_task_rq_run(rq_url: str) -> None:
    count = 0

    async def work() -> None:
        nonlocal count
        async with fanout.AsyncFanout(backend="rq", redis_url=rq_url) as fo:
            async for _ in fo.map("tests.tasks:square", range(10_000)):
                count += 1

    assert_on_time(ticks_during(work))
    assert count == 10_000


def cancel_once_started(folder: Path, expected: int, **options: Any) -> list[int]:
    """Start a map of long tasks, cancel its consumer once ``expected`` of them run;
    the pids that ran them."""

    async def main() -> None:
        async def consume() -> None:
            async with fanout.AsyncFanout(**options) as fo:
                async for _ in fo.map("tests.tasks:note_pid_then_wait", [str(folder)] * 100):
                    pass

        task = asyncio.create_task(consume())
        while len(os.listdir(folder)) < expected:
            await asyncio.sleep(0.01)  # polls a folder, not fanout: the loop stays free
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(main(), 60))
    return [int(name) for name in os.listdir(folder)]


def alive(pid: int) -> bool:
    """Running (a killed process its parent has not reaped yet is not)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_cancelling_the_consumer_ends_the_local_workers_running_its_tasks(tmp_path: Path) -> None:
    began = time.monotonic()
    pids = cancel_once_started(tmp_path, 2, backend="local", workers=2)
    wait_until(lambda: not any(alive(pid) for pid in pids), 10, "the task processes end")
    assert time.monotonic() - began < 30  # not after the tasks' 60 s
    assert len(os.listdir(tmp_path)) == 2  # nothing else started


def test_cancelling_the_consumer_removes_the_runs_queued_rq_jobs(
    rq_url: str, tmp_path: Path
) -> None:
    pids = cancel_once_started(tmp_path, 2, backend="rq", redis_url=rq_url)
    # Its running jobs are stopped too (RQ's stop-job): their task processes end.
    wait_until(lambda: not any(alive(pid) for pid in pids), 20, "the task processes end")
    with Redis.from_url(rq_url) as connection:
        queue = Queue("fanout", connection=connection)
        wait_until(lambda: queue.count == 0, 10, "the run's queued jobs are removed")
    # The workers are free again: a new run is served at once.
    results = asyncio.run(fanout.arun("tests.tasks:square", [3], backend="rq", redis_url=rq_url))
    assert results[0].value == 9


def test_leaving_a_map_early_ends_its_run(tmp_path: Path) -> None:
    async def main() -> list[int]:
        async with fanout.AsyncFanout(backend="local", workers=2) as fo:
            async for r in fo.map("tests.tasks:square", range(1_000_000)):
                if r.index == 10:
                    break
            # The same AsyncFanout serves the next map: the first one is over.
            return [r.value async for r in fo.map("tests.tasks:square", [4])]

    assert asyncio.run(asyncio.wait_for(main(), 60)) == [16]


def test_import_fanout_does_not_import_asyncio_joblib_or_fakeredis() -> None:
    optional = ["asyncio", "fanout.aio", "joblib", "fanout.joblib", "fakeredis", "lupa"]
    code = f"import sys, fanout; print(*[m in sys.modules for m in {optional!r}])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)  # fmt: skip
    imported = [m for m, seen in zip(optional, done.stdout.split(), strict=True) if seen == "True"]
    assert imported == []
