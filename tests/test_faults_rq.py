"""Faults on the rq backend, against real redis-servers and real worker processes:
every submitted task yields exactly one result, nothing hangs (pytest-timeout is the
outer watchdog), nothing is left running (conftest)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import fanout
from tests import tasks
from tests.helpers import (
    ROOT,
    RedisServer,
    accepts_connections,
    free_port,
    start_cli,
    start_worker,
    stop_workers,
    wait_for_workers,
    wait_until,
)


def exactly_one_each(results: list[fanout.TaskResult], count: int) -> None:
    assert sorted(r.index for r in results) == list(range(count))


@pytest.fixture
def server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    if server.process.poll() is None:
        server.stop()


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    stop_workers(started)
    for process in started:  # the task processes of killed workers die with them
        for child in psutil.Process(os.getpid()).children(recursive=True):
            if child.ppid() == process.pid:
                child.kill()


def kill_whole_worker(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL an RQ worker and its task process at once: a lost machine."""
    family = psutil.Process(process.pid).children(recursive=True)
    process.kill()
    for child in family:
        child.kill()
    process.wait()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_stock_workers_horse_killed_mid_task_gives_worker_lost_within_seconds(
    server: RedisServer, workers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    env = dict(os.environ)
    workers.append(
        subprocess.Popen(
            [sys.executable, "-m", "rq.cli", "worker", "-u", server.url, "--name", "stock-h",
             "fanout"],
            cwd=ROOT, env=env, stderr=subprocess.DEVNULL,
        )
    )  # fmt: skip
    wait_for_workers(server.url, ["stock-h"])
    started = time.monotonic()
    folder = str(tmp_path)
    results = fanout.run(tasks.note_pid_or_die, [(folder, 1), (folder, -1), (folder, 3)],
                         star=True, backend="rq", redis_url=server.url)  # fmt: skip
    assert time.monotonic() - started < 20
    exactly_one_each(results, 3)
    assert [r.ok for r in results] == [True, False, True]
    error = results[1].error
    assert error is not None
    assert error.type == "WorkerLost"
    assert (error.cause, error.signal) == ("killed", 9)
    assert "stock-h" in error.message
    assert "task 1" in error.message
    # What is known of the work-horse that died: its worker, its own pid (issue 22,
    # defect 17: it was 0), that worker's pid (its parent), its host.
    lost = results[1].worker
    assert (lost.name, lost.ppid, lost.host) == ("stock-h", workers[-1].pid, socket.gethostname())
    assert lost.pid == int((tmp_path / "-1").read_text())


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("retries", [0, 1])
def test_a_whole_fanout_worker_killed_mid_task_is_detected_and_its_task_settled(
    server: RedisServer, workers: list[subprocess.Popen[bytes]], tmp_path, retries: int
) -> None:
    victim = start_worker(server.url, "victim")
    workers.append(victim)
    wait_for_workers(server.url, ["victim"])
    marker = tmp_path / "started"
    box: list[list[fanout.TaskResult]] = []

    def caller() -> None:
        box.append(
            fanout.run(
                tasks.touch_then_sleep, [(str(marker), 1.0)], star=True, backend="rq",
                redis_url=server.url, retries=retries, dead_after=4.0,
            )
        )  # fmt: skip

    thread = threading.Thread(target=caller)
    thread.start()
    wait_until(marker.exists, 20, "the task starts")
    kill_whole_worker(victim)
    killed_at = time.monotonic()
    workers.append(start_worker(server.url, "spare"))
    thread.join(60)
    assert not thread.is_alive(), "the run hung after its worker died"
    detected_in = time.monotonic() - killed_at
    (result,) = box[0]
    assert detected_in < 30, f"took {detected_in:.0f} s"
    if retries:
        assert result.ok
        assert result.worker.name == "spare"
        assert result.attempts == 2
    else:
        assert result.error is not None
        assert result.error.type == "WorkerLost"
        assert result.error.cause == "lost"
        assert "victim" in result.error.message


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_redis_restarted_mid_run_loses_no_task(
    workers: list[subprocess.Popen[bytes]],
) -> None:
    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    redis = [subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL)]
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_until(lambda: accepts_connections(port), 10, "redis-server accepts connections")
        workers.extend(start_worker(url, name) for name in ("r-1", "r-2"))
        wait_for_workers(url, ["r-1", "r-2"])
        first_results = threading.Event()

        def items() -> Iterator[float]:
            for i in range(30):
                if i == 8:
                    first_results.set()
                yield 0.2

        def restart() -> None:
            first_results.wait(20)
            # The fault's shape, not a wait for a condition: Redis dies mid-run and is
            # down for a while before it comes back empty.
            time.sleep(0.5)
            redis[0].kill()  # nothing on disk: every job and result list is gone
            redis[0].wait()
            time.sleep(1.5)
            redis[0] = subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL)

        thread = threading.Thread(target=restart)
        thread.start()
        results = fanout.run(tasks.sleep_for, items(), backend="rq", redis_url=url)
        thread.join()
        exactly_one_each(results, 30)
        assert all(r.ok for r in results), [r.error for r in results if not r.ok][:2]
    finally:
        redis[0].kill()
        redis[0].wait()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_redis_gone_for_good_is_backend_unavailable_after_the_configured_wait(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    # The worker's own wait for Redis short too: its job's results can never be pushed,
    # and its stop at the end waits for that job.
    workers.append(start_worker(server.url, "g-1", "--redis-wait", "1"))
    wait_for_workers(server.url, ["g-1"])
    with fanout.Fanout("rq", redis_url=server.url, redis_wait=3.0) as fo:
        results = fo.map(tasks.sleep_for, [0.3] * 20)
        next(results)
        server.stop()
        lost_at = time.monotonic()
        with pytest.raises(fanout.BackendUnavailable, match="lost Redis") as info:
            list(results)
        assert 3.0 <= time.monotonic() - lost_at < 20
    assert str(server.port) in str(info.value)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_no_worker_serving_the_queue_warns_then_gives_up_when_asked(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fanout")
    started = time.monotonic()
    with pytest.raises(fanout.BackendUnavailable, match="no worker has served"):
        fanout.run(
            tasks.square, [1, 2], backend="rq", redis_url=server.url, queue="nobody",
            warn_after=1.0, give_up_after=3.0,
        )  # fmt: skip
    assert 3.0 <= time.monotonic() - started < 15
    assert any("no worker is serving queue 'nobody'" in m for m in caplog.messages)
    from redis import Redis

    assert Redis.from_url(server.url).llen("rq:queue:nobody") == 0  # cancelled


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_chaos_a_whole_worker_killed_and_a_spare_started_loses_nothing(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    from redis import Redis

    pool = [start_worker(server.url, name) for name in ("c-1", "c-2")]
    workers.extend(pool)
    wait_for_workers(server.url, ["c-1", "c-2"])
    box: list[list[fanout.TaskResult]] = []
    items = [0.5] * 20

    def caller() -> None:
        box.append(
            fanout.run(
                tasks.sleep_for, items, backend="rq", redis_url=server.url, retries=2,
                dead_after=4.0, ordered=False,
            )
        )  # fmt: skip

    def running_on_c1() -> bool:
        """c-1 has a job started: it is inside a half-second task (or about to be)."""
        connection = Redis.from_url(server.url)
        with connection:
            for key in connection.scan_iter("rq:job:fanout-*"):
                status, worker = connection.hmget(key, "status", "worker_name")
                if status == b"started" and worker == b"c-1":
                    return True
        return False

    thread = threading.Thread(target=caller)
    thread.start()
    wait_until(running_on_c1, 30, "c-1 runs a task of the run")
    kill_whole_worker(pool[0])
    workers.append(start_worker(server.url, "c-spare"))
    thread.join(100)
    assert not thread.is_alive()
    results = box[0]
    exactly_one_each(results, len(items))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:2]
    # c-1 died mid-task: that task was lost, noticed, and run again (attempt 2)...
    assert [r.attempts for r in results].count(2) == 1, [r.attempts for r in results]
    # ... and the spare took its share of what was left.
    assert "c-spare" in {r.worker.name for r in results}


def test_a_full_redis_is_one_clear_line_and_exit_3() -> None:
    """Redis at maxmemory with noeviction refuses writes: no traceback, exit 3."""
    from redis import Redis
    from redis.exceptions import OutOfMemoryError

    server = RedisServer("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    try:
        filler = Redis.from_url(server.url)

        def fill() -> None:
            for i in range(10_000):
                filler.set(f"filler:{i}", "x" * 10_000)

        with pytest.raises(OutOfMemoryError):
            fill()
        filler.close()
        process = start_cli(
            "run", "tests.tasks:square", "--range", "3", "--backend", "rq",
            "--redis-url", server.url,
        )  # fmt: skip
        _out, err = process.communicate(timeout=60)
    finally:
        server.stop()
    assert process.returncode == 3, err
    assert "is full and refuses writes" in err
    assert "maxmemory" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
