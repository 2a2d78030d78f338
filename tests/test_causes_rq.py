"""Why each task ended, on the rq backend, caused for real: a task that raises, exits,
overruns its time-out, grows past ``max_memory``, is SIGKILLed from outside, or whose
worker is cut off from Redis — on a ``fanout worker`` and on a stock ``rq worker``
(real redis-server, real worker processes). Each result says its cause, signal or exit
code, and the pid and host of the process that ran it (DESIGN: "Why each task ended")."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from redis import Redis

import fanout
from fanout.backends.rq.fleet import TASK_PID_FIELD
from tests import tasks
from tests.cgroups import memory_cgroup, v1_limits, v1_parent, v2_limits, v2_memory, v2_parent
from tests.helpers import (
    ROOT,
    CuttableProxy,
    RedisServer,
    start_worker,
    stop_workers,
    wait_for_workers,
    wait_until,
)

HOST = socket.gethostname()


@pytest.fixture
def queue() -> str:
    return f"causes-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    stop_workers(started)


def serve(workers: list[subprocess.Popen[bytes]], url: str, queue: str, name: str,
          *args: str, stock: bool = False) -> subprocess.Popen[bytes]:  # fmt: skip
    """A ``fanout worker`` (or a stock ``rq worker``) named ``name`` on ``queue``, once
    it has registered."""
    if stock:
        command = [sys.executable, "-m", "rq.cli", "worker", "-u", url, "--name", name, queue]
        workers.append(subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL))
    else:
        workers.append(start_worker(url, name, "--queue", queue, *args))
    wait_for_workers(url, [name])
    return workers[-1]


def kill_when_started(folder: Path, x: int) -> threading.Thread:
    """SIGKILL, from outside, the process that runs task ``x`` once it has started."""

    def kill() -> None:
        path = folder / str(x)
        wait_until(path.exists, 60, f"task {x} starts")
        os.kill(int(path.read_text()), signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def run_endings(url: str, queue: str, folder: Path, how: list[str], **options: Any
                ) -> list[fanout.TaskResult]:  # fmt: skip
    """Task ``x`` ends as ``how[x]`` says (tasks.end_as), on ``queue``."""
    return fanout.run(tasks.end_as, [(str(folder), h, x) for x, h in enumerate(how)],
                      star=True, backend="rq", redis_url=url, queue=queue,
                      **options)  # fmt: skip


def pid_of_task(folder: Path, x: int) -> int:
    return int((folder / str(x)).read_text())


def check(results: list[fanout.TaskResult], causes: list[str | None], folder: Path,
          name: str) -> None:  # fmt: skip
    """Each result failed for its ``cause`` (None: it succeeded), and names the process
    that ran it: its worker's name, the pid the task saw, this host."""
    assert [r.index for r in results] == list(range(len(causes)))
    for result, cause in zip(results, causes, strict=True):
        assert result.ok == (cause is None), result
        if cause is not None:
            assert result.error is not None
            assert result.error.cause == cause, result.error
        assert result.worker.name == name
        assert result.worker.pid == pid_of_task(folder, result.index)
        assert result.worker.host == HOST


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_every_ending_on_a_fanout_worker_says_its_cause_signal_and_pid(
    redis_server: RedisServer, workers: list[subprocess.Popen[bytes]], queue: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    serve(workers, redis_server.url, queue, "causes-fw")
    how = ["ok", "raise", "exit", "sleep", "grow", "wait", "ok"]
    killer = kill_when_started(tmp_path, 5)
    results = run_endings(redis_server.url, queue, tmp_path, how, timeout=5, max_memory="200M")
    killer.join(5)
    causes = [None, "raised", "exited", "timeout", "memory-limit", "killed", None]
    check(results, causes, tmp_path, "causes-fw")
    errors = [r.error for r in results]
    assert errors[1] is not None
    assert errors[1].type == "ValueError"
    assert errors[2] is not None
    assert (errors[2].exit_code, errors[2].signal) == (3, None)
    assert errors[3] is not None
    assert errors[3].type == "TaskTimeout"
    assert errors[4] is not None
    assert errors[4].type == "MemoryLimitExceeded"
    assert "200" in errors[4].message or "MB" in errors[4].message
    assert errors[5] is not None
    assert errors[5].signal == signal.SIGKILL
    # Every result a process ran says what it cost.
    for result in results:
        assert result.usage is not None, result
        assert result.usage.cpu >= 0
        assert result.usage.max_rss > 0
    assert results[4].usage is not None
    assert results[4].usage.max_rss >= 200 * 2**20
    # The task process was replaced after each death: each death in a process of its own.
    dead = [r.worker.pid for r in results[2:6]]
    assert len(set(dead)) == 4
    assert results[6].worker.pid not in dead


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_kernels_oom_killer_on_a_fanout_worker_is_oom_killed(
    redis_server: RedisServer, workers: list[subprocess.Popen[bytes]], queue: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    parent, limits = (v2_parent(), v2_limits()) if v2_memory() else (v1_parent(), v1_limits())
    with memory_cgroup(parent, limits) as cgroup:
        worker = serve(workers, redis_server.url, queue, "oom-fw")
        # The worker and whatever it has started so far: its task process then forks
        # inside the cgroup, whose limit the task's 400 MB pass.
        family = [worker.pid, *(c.pid for c in psutil.Process(worker.pid).children(True))]
        for pid in family:
            (cgroup / "cgroup.procs").write_text(str(pid))
        results = run_endings(redis_server.url, queue, tmp_path, ["ok", "grow", "ok"])
        stop_workers([worker])
    check(results, [None, "oom-killed", None], tmp_path, "oom-fw")
    error = results[1].error
    assert error is not None
    assert (error.type, error.signal, error.exit_code) == ("WorkerLost", signal.SIGKILL, None)
    assert "killed by the kernel's OOM killer" in error.message
    assert results[2].worker.pid != results[1].worker.pid


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_stock_workers_horse_that_dies_says_how_with_its_pid(
    redis_server: RedisServer, workers: list[subprocess.Popen[bytes]], queue: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    serve(workers, redis_server.url, queue, "causes-stock", stock=True)
    how = ["ok", "exit", "wait", "raise", "sleep"]
    killer = kill_when_started(tmp_path, 2)
    results = run_endings(redis_server.url, queue, tmp_path, how, timeout=3)
    killer.join(5)
    causes = [None, "exited", "killed", "raised", "timeout"]
    check(results, causes, tmp_path, "causes-stock")
    exited, killed = results[1].error, results[2].error
    assert exited is not None
    assert (exited.type, exited.exit_code) == ("WorkerLost", 3)
    assert "exited with code 3" in exited.message
    assert killed is not None
    assert (killed.type, killed.signal) == ("WorkerLost", signal.SIGKILL)
    assert "SIGKILL" in killed.message
    # The work-horse that died is the stock worker's child.
    assert results[1].worker.ppid == workers[0].pid
    assert results[0].usage is not None
    assert results[3].usage is not None


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_limits_on_a_stock_worker_run_in_a_task_process_of_the_job(
    redis_server: RedisServer, workers: list[subprocess.Popen[bytes]], queue: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    serve(workers, redis_server.url, queue, "limits-stock", stock=True)
    how = ["ok", "grow", "ok", "ok", "ok"]
    results = run_endings(redis_server.url, queue, tmp_path, how, max_memory="200M")
    causes = [None, "memory-limit", None, None, None]
    check(results, causes, tmp_path, "limits-stock")
    # Each task ran in a task process, a child of its job's work-horse (not the RQ worker
    # itself), and a new one took the place of the one that grew past the limit.
    assert all(r.worker.ppid not in (workers[0].pid, r.worker.pid) for r in results)
    assert results[1].worker.pid not in {r.worker.pid for r in results[2:]}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_worker_cut_off_from_redis_mid_task_is_lost_naming_its_task_process(
    redis_server: RedisServer, workers: list[subprocess.Popen[bytes]], queue: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    proxy = CuttableProxy(redis_server.port)
    serve(workers, proxy.url, queue, "cut-off")
    box: list[list[fanout.TaskResult]] = []
    caller = threading.Thread(target=lambda: box.append(fanout.run(
        tasks.end_as, [(str(tmp_path), "wait", 0)], star=True, backend="rq",
        redis_url=redis_server.url, queue=queue, dead_after=4.0,
    )))  # fmt: skip
    caller.start()
    wait_until((tmp_path / "0").exists, 30, "the task starts")
    with Redis.from_url(redis_server.url) as redis:
        key = f"rq:worker:{'cut-off'}"
        wait_until(lambda: redis.hget(key, TASK_PID_FIELD), 10, "a heartbeat names the task pid")
    proxy.cut()
    caller.join(60)
    assert not caller.is_alive(), "the run hung after its worker was cut off"
    (result,) = box[0]
    check([result], ["lost"], tmp_path, "cut-off")
    assert result.error is not None
    assert result.error.type == "WorkerLost"
    assert (result.error.signal, result.error.exit_code) == (None, None)
    assert result.worker.ppid == workers[0].pid
    # Cut off, it could only stop warmly once Redis answered: end it and its task
    # process here, as a lost machine ends.
    for process in [*psutil.Process(workers[0].pid).children(recursive=True), workers[0]]:
        process.kill()
    workers[0].wait()


@pytest.mark.timeout(60)
def test_max_tasks_per_worker_recycles_a_fanout_workers_task_process(
    redis_server: RedisServer, workers: list[subprocess.Popen[bytes]], queue: str
) -> None:
    serve(workers, redis_server.url, queue, "recycler")
    with fanout.Pool(backend="rq", maxtasksperchild=2, redis_url=redis_server.url,
                     queue=queue) as pool:  # fmt: skip
        pids = pool.map(tasks.pid_of, range(6), chunksize=6)
    assert len(set(pids)) == 3
    assert all(pids.count(pid) == 2 for pid in set(pids))


@pytest.mark.timeout(60)
def test_a_fanout_worker_takes_its_own_recycling_limit(
    redis_server: RedisServer, workers: list[subprocess.Popen[bytes]], queue: str
) -> None:
    serve(workers, redis_server.url, queue, "worn", "--max-tasks-per-worker", "3")
    results = fanout.run(tasks.pid_of, range(6), backend="rq", redis_url=redis_server.url,
                         queue=queue)  # fmt: skip
    pids = [r.value for r in results]
    assert len(set(pids)) == 2, pids
    assert [r.worker.pid for r in results] == pids
