"""What a Redis in trouble does to a run (issue 12, items 1, 2, 3, 6, 7), each against a
real ``redis-server`` of the test's own and real ``fanout worker`` processes: a queued job
lost from its queue, Redis full (refusing writes, or evicting keys), a partition cutting
a worker off, keys that must expire, a result too big for Redis."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psutil
import pytest
from redis import Redis
from redis.exceptions import OutOfMemoryError

import fanout
from tests import tasks
from tests.helpers import (
    CuttableProxy,
    RedisServer,
    start_cli,
    start_worker,
    stop_workers,
    wait_for_workers,
    wait_until,
)


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
    for process in started:  # a worker stopped with SIGSTOP must be able to hear SIGTERM
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
    stop_workers(started)


def serve(url: str, workers: list[subprocess.Popen[bytes]], *names: str) -> None:
    workers.extend(start_worker(url, name) for name in names)
    wait_for_workers(url, list(names))


def exactly_one_each(results: list[fanout.TaskResult], count: int) -> None:
    assert sorted(r.index for r in results) == list(range(count))


def run_in_thread(**kwargs: object) -> tuple[threading.Thread, list[list[fanout.TaskResult]]]:
    box: list[list[fanout.TaskResult]] = []
    thread = threading.Thread(target=lambda: box.append(fanout.run(**kwargs)), daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread, box


def run_keys(connection: Redis) -> list[bytes]:
    return [*connection.scan_iter("fanout:run:*"), *connection.scan_iter("rq:job:fanout-*")]


# --------------------------------------------------------------------------- item 1


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_queued_job_removed_from_its_queue_is_enqueued_again(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    serve(server.url, workers, "q-1")
    connection = Redis.from_url(server.url)
    thread, box = run_in_thread(
        target=tasks.sleep_for, items=[0.5] * 6, backend="rq", redis_url=server.url
    )
    # One job runs on the only worker; the next waits in the queue: take it out by hand.
    lost = wait_until(lambda: connection.lpop("rq:queue:fanout"), 20, "a job waits queued")
    assert lost.startswith(b"fanout-")
    thread.join(30)
    assert not thread.is_alive(), "the run waits for the job that left its queue"
    exactly_one_each(box[0], 6)
    assert all(r.ok for r in box[0])


# --------------------------------------------------------------------------- item 2


def fill(connection: Redis, policy: str = "noeviction") -> None:
    """Make Redis full: 5 MB more data than its new maxmemory allows, kept there."""
    for i in range(500):
        connection.set(f"filler:{i}", "x" * 10_000)
    used = int(connection.info("memory")["used_memory"])
    connection.config_set("maxmemory-policy", policy)
    connection.config_set("maxmemory", used - 5_000_000)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_redis_full_mid_run_ends_the_run_in_one_line_and_the_workers_live_on(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    serve(server.url, workers, "full-1")
    connection = Redis.from_url(server.url)
    proc = start_cli(
        "run", "tests.tasks:sleep_for", *["0.05"] * 100, "--backend", "rq", "--json",
        "--redis-url", server.url,
    )  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.readline()  # the run is going
    fill(connection)
    with pytest.raises(OutOfMemoryError):
        connection.set("one-more", "x")
    full_at = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, stderr
    assert time.monotonic() - full_at < 15
    lines = [line for line in stderr.splitlines() if not line.startswith("run ")]
    assert len(lines) == 1, stderr  # beside the run's id, one line
    assert "is full" in lines[0]
    assert "maxmemory" in lines[0]
    # The worker lived through it, and once Redis has room again it finishes the run,
    # which is collected whole (a run outlives its caller), and serves new ones.
    assert workers[0].poll() is None
    connection.config_set("maxmemory", 0)
    run_id = next(line.split()[1] for line in stderr.splitlines() if line.startswith("run "))
    collected = list(fanout.attach(run_id, redis_url=server.url).results())
    assert sorted(r.index for r in collected) == list(range(100))
    assert all(r.ok for r in collected), [r.error for r in collected if not r.ok][:2]
    results = fanout.run(tasks.square, [3, 4], backend="rq", redis_url=server.url)
    assert [(r.value, r.worker.name) for r in results] == [(9, "full-1"), (16, "full-1")]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_redis_full_with_cli_workers_exits_3_without_a_traceback(server: RedisServer) -> None:
    connection = Redis.from_url(server.url)
    proc = start_cli(
        "run", "tests.tasks:sleep_for", *["0.05"] * 400, "--backend", "rq", "--json",
        "--workers", "2", "--redis-url", server.url,
    )  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.readline()
    fill(connection)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, stderr
    assert "Traceback" not in stderr
    # The run's id, the error, and at most a word per worker.
    assert len(stderr.splitlines()) <= 4, stderr


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_redis_that_evicts_keys_mid_run_ends_the_run_in_one_line(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    serve(server.url, workers, "lru-1")
    connection = Redis.from_url(server.url)
    seen: list[fanout.TaskResult] = []

    def run_until_evicted() -> None:
        with fanout.Fanout("rq", redis_url=server.url) as fo:
            for r in fo.map(tasks.sleep_for, [0.05] * 400):
                seen.append(r)
                if r.index == 2:
                    fill(connection, "allkeys-lru")  # from now on, writes evict keys

    with pytest.raises(fanout.BackendUnavailable, match="evicts keys") as info:
        run_until_evicted()
    assert "noeviction" in str(info.value)
    assert len(seen) < 400


# --------------------------------------------------------------------------- item 3


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_worker_cut_off_from_redis_lives_and_serves_again(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    """The link goes down while a task runs and stays down past the worker's wait for
    its results, so RQ meets the broken connection while it fails the job."""
    proxy = CuttableProxy(server.port)
    workers.append(start_worker(proxy.url, "cut-1", "--redis-wait", "2"))
    wait_for_workers(server.url, ["cut-1"])
    connection = Redis.from_url(server.url)
    thread, box = run_in_thread(
        target=tasks.sleep_for, items=[1.0] * 4, backend="rq", redis_url=server.url,
        retries=1,
    )  # fmt: skip
    wait_until(lambda: connection.zcard("rq:wip:fanout"), 20, "a task runs")
    proxy.cut()
    time.sleep(6.0)  # the fault's shape: down longer than the worker's --redis-wait
    proxy.restore()
    thread.join(90)
    assert not thread.is_alive()
    exactly_one_each(box[0], 4)
    assert all(r.ok for r in box[0]), [r.error for r in box[0] if not r.ok][:2]
    assert workers[0].poll() is None, "the worker quit when its Redis went away"
    results = fanout.run(tasks.square, [5], backend="rq", redis_url=server.url)
    assert results[0].worker.name == "cut-1"


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_an_idle_worker_serves_again_within_seconds_of_a_long_outage_ending(
    workers: list[subprocess.Popen[bytes]],
) -> None:
    """RQ's idle worker waits ever longer between tries (1, 2, 4, 8, 16 s...): after a
    16 s outage it came back 15 s after Redis did. fanout's tries at least every 5 s."""
    server = RedisServer()
    try:
        serve(server.url, workers, "idle-1")
        server.stop()
        time.sleep(16.0)  # the fault's shape: down long enough for the pauses to grow
        server = RedisServer(port=server.port)  # back, empty
        back = time.monotonic()
        results = fanout.run(tasks.square, [2, 3], backend="rq", redis_url=server.url)
        assert time.monotonic() - back < 8
        assert [(r.value, r.worker.name) for r in results] == [(4, "idle-1"), (9, "idle-1")]
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_a_worker_waiting_for_its_gone_redis_stops_at_once_on_sigterm(
    server: RedisServer,
) -> None:
    """An idle worker stops on RQ's StopRequested; with Redis gone, the teardown after it
    fails too, and that failure used to be taken for an outage to wait out, for ever."""
    worker = start_cli("worker", "--name", "wait-1", env={"FANOUT_REDIS_URL": server.url})
    try:
        wait_for_workers(server.url, ["wait-1"])
        server.stop()
        assert worker.stderr is not None
        for line in worker.stderr:  # RQ's word that the worker met the lost Redis
            if "could not connect to Redis" in line:
                break
        stopped_at = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        assert time.monotonic() - stopped_at < 5
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


# --------------------------------------------------------------------------- item 6


@pytest.mark.timeout(60)
def test_a_sigkilled_callers_jobs_and_keys_all_expire(server: RedisServer) -> None:
    caller = subprocess.Popen(
        [sys.executable, "-c",
         "import fanout; from tests import tasks; "
         f"fanout.run(tasks.square, range(50), backend='rq', redis_url={server.url!r})"],
    )  # fmt: skip
    connection = Redis.from_url(server.url)
    wait_until(lambda: connection.llen("rq:queue:fanout") >= 2, 20, "jobs wait (no worker)")
    caller.kill()
    caller.wait()
    keys = run_keys(connection)
    assert keys
    assert all(connection.ttl(key) > 0 for key in keys), {k: connection.ttl(k) for k in keys}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_job_taken_for_lost_leaves_nothing_without_a_ttl_and_its_thawed_worker_pushes_nothing(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    serve(server.url, workers, "frozen-1")
    connection = Redis.from_url(server.url)
    thread, box = run_in_thread(
        target=tasks.sleep_for, items=[1.0, 1.0], backend="rq", redis_url=server.url,
        retries=1, dead_after=3.0,
    )  # fmt: skip
    wait_until(lambda: connection.zcard("rq:wip:fanout"), 20, "the job starts")
    frozen = psutil.Process(workers[0].pid)
    family = [frozen, *frozen.children(recursive=True)]
    for process in family:
        process.suspend()  # the worker and its task process stop mid-task
    serve(server.url, workers, "spare-1")
    thread.join(60)
    assert not thread.is_alive()
    exactly_one_each(box[0], 2)
    assert all(r.ok for r in box[0])
    for process in family:
        process.resume()  # thawed: it finishes its task and tries to push
    wait_until(lambda: connection.hget("rq:worker:frozen-1", "state") == b"idle", 30,
               "the thawed worker finishes its task")  # fmt: skip
    assert not list(connection.scan_iter("fanout:run:*:results")), "a late push made a list"
    keys = run_keys(connection)
    assert all(connection.ttl(key) > 0 for key in keys), {k: connection.ttl(k) for k in keys}
    assert connection.zcard("rq:wip:fanout") == 0


# --------------------------------------------------------------------------- item 7


@pytest.mark.timeout(90)
def test_a_result_over_redis_value_limit_fails_its_task_and_the_worker_lives(
    workers: list[subprocess.Popen[bytes]],
) -> None:
    server = RedisServer("--proto-max-bulk-len", "1mb")
    try:
        serve(server.url, workers, "big-1")
        results = fanout.run(
            tasks.identity, [b"x" * 10, b"y" * 3_000_000, b"z" * 10], backend="rq",
            redis_url=server.url,
        )  # fmt: skip
    finally:
        server.stop()
    assert [r.ok for r in results] == [True, False, True]
    error = results[1].error
    assert error is not None
    assert error.type == "SerializationError"
    assert "task 1" in error.message
    assert "3 MiB" in error.message
    assert "1 MiB" in error.message
    assert results[1].worker.name == "big-1"
