"""``fanout drain``, ``fanout pause`` and ``fanout resume`` (issue 26): real ``fanout
worker`` processes (and a stock ``rq worker``) on a redis-server of the tests' own, driven
by the real CLIs, ``fanout`` and ``rq``. Each test serves queues of its own; the pause
test has a Redis of its own, as RQ's suspend flag holds for every worker of a Redis."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Worker
from rq.job import Job

import fanout
from tests import tasks
from tests.helpers import (
    ROOT,
    CuttableProxy,
    RedisServer,
    finish,
    run_fanout,
    start_cli,
    start_worker,
    stop_workers,
    wait_until,
)

RQ_CLI = [sys.executable, "-m", "rq.cli"]  # the installed `rq` console script's module

Start = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def workers() -> Iterator[Start]:
    """``fanout worker`` processes of this test's own (stopped at teardown if still up)."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(url: str, name: str, *args: str) -> subprocess.Popen[bytes]:
        processes.append(start_worker(url, name, *args))
        return processes[-1]

    yield start
    stop_workers(processes)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


def names(url: str) -> set[str]:
    with Redis.from_url(url) as connection:
        return {w.name for w in Worker.all(connection=connection)}


def state_of(url: str, name: str) -> str:
    with Redis.from_url(url) as connection:
        return (connection.hget(f"rq:worker:{name}", "state") or b"").decode()


def current_job(connection: Redis, name: str) -> tuple[str | None, int]:
    """The job worker ``name`` runs now (None: none), and how many tasks it holds."""
    worker = Worker.find_by_key(Worker.redis_worker_namespace_prefix + name, connection)
    job_id = worker.get_current_job_id() if worker is not None else None
    if job_id is None:
        return None, 0
    try:
        return job_id, len(Job.fetch(job_id, connection=connection).args[5])
    except Exception:
        return job_id, 0  # ended meanwhile


def a_new_job(url: str, name: str, tasks: int, timeout: float) -> None:
    """Return as soon as worker ``name`` starts a job it was not running on the call,
    one of at least ``tasks`` tasks."""
    with Redis.from_url(url) as connection:
        seen = {current_job(connection, name)[0]}

        def started() -> bool:
            job_id, held = current_job(connection, name)
            if job_id in seen:
                return False
            seen.add(job_id)
            return held >= tasks

        wait_until(started, timeout, f"{name} starts a new job of {tasks} tasks")


def runs_per_index(folder: Path) -> Counter[int]:
    """How many times each index ran: ``tasks.pace`` leaves a file per execution."""
    return Counter(int(name.split("-")[0]) for name in os.listdir(folder))


@pytest.mark.slow
def test_draining_a_busy_worker_gives_its_jobs_rest_back_and_it_exits_0(
    redis_server: RedisServer, workers: Start, tmp_path: Path
) -> None:
    url, queue = redis_server.url, "drain-busy"
    drained = workers(url, "busy-a", "--queue", queue)
    workers(url, "busy-b", "--queue", queue)
    wait_until(lambda: {"busy-a", "busy-b"} <= names(url), 20, "the workers register")
    n = 80
    results: list[fanout.TaskResult] = []
    items = [(0.1, str(tmp_path), i) for i in range(n)]
    runner = threading.Thread(target=lambda: results.extend(
        fanout.run(tasks.pace, items, backend="rq", redis_url=url, queue=queue)))  # fmt: skip
    runner.start()
    # The drain must come while a job has tasks not started: a job holds about a second
    # of them once they are measured (10 here), and a job that overruns its pace gives
    # them back itself (split.py). So the CLI, started ahead, reaches Redis (through a
    # relay held until then) as busy-a starts such a job, not half a second later.
    relay = CuttableProxy(redis_server.port, held=True)
    drain = start_cli("drain", "busy-a", "--redis-url", relay.url)
    try:
        assert relay.accepted.wait(30), "the drain connects"
        a_new_job(url, "busy-a", 4, 30)
        asked = time.time()
        relay.release()
        stdout, stderr = finish(drain, 60)
        done = time.time()
        assert drain.returncode == 0, stderr
        assert drained.wait(10) == 0
    finally:
        relay.cut()
        runner.join(60)
    lines = stdout.splitlines()
    assert lines[0] == f"draining 1 worker on {relay.url}: busy-a"
    gave = re.fullmatch(r"busy-a: drained, (\d+) tasks? given back \([\d.]+ s\)", lines[1])
    assert gave is not None, lines
    assert int(gave[1]) > 0, "the job's unstarted tasks went back"
    assert re.fullmatch(rf"1 worker drained in [\d.]+ s; {gave[1]} tasks? given back to"
                        " the queue", lines[2])  # fmt: skip
    # Nothing lost, nothing run twice.
    assert sorted(r.index for r in results) == list(range(n))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert runs_per_index(tmp_path) == Counter(range(n))
    # The task it ran when told finished there; the rest went to the other worker.
    mine = [r for r in results if r.worker.name == "busy-a"]
    assert any(r.finished_at > asked for r in mine), "its running task finished"
    assert all(r.started_at < done for r in mine), "it started nothing after it drained"
    assert {r.worker.name for r in results if r.started_at > asked + 1} == {"busy-b"}


@pytest.mark.slow
def test_drain_without_names_drains_every_worker_of_the_queue_and_no_other(
    redis_server: RedisServer, workers: Start
) -> None:
    url = redis_server.url
    mine = [workers(url, name, "--queue", "drain-all") for name in ("all-1", "all-2")]
    other = workers(url, "other-1", "--queue", "drain-other")
    wait_until(lambda: {"all-1", "all-2", "other-1"} <= names(url), 20, "the workers register")
    drain = run_fanout("drain", "--queue", "drain-all", "--redis-url", url, timeout=30)
    assert drain.returncode == 0, drain.stderr
    assert drain.stdout.splitlines()[0] == f"draining 2 workers on {url}: all-1, all-2"
    for name in ("all-1", "all-2"):  # idle: nothing to give back
        assert re.search(rf"^{name}: drained, 0 tasks given back", drain.stdout, re.M)
    assert [p.wait(10) for p in mine] == [0, 0]
    assert other.poll() is None
    assert "other-1" in names(url)

    again = run_fanout("drain", "--queue", "drain-all", "--redis-url", url)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"no worker serves queue 'drain-all' on {url}: nothing to drain\n"


def test_drain_of_an_unknown_worker_is_one_line_and_exit_2(redis_server: RedisServer) -> None:
    drain = run_fanout("drain", "nobody-here", "--redis-url", redis_server.url)
    assert drain.returncode == 2
    assert drain.stdout == ""
    assert drain.stderr == (f"fanout: error: no worker named 'nobody-here' is registered on"
                            f" {redis_server.url} (fanout status lists them)\n")  # fmt: skip


def test_drain_of_an_unreachable_redis_is_one_line_and_exit_3() -> None:
    from tests.helpers import free_port

    url = f"redis://:sekrit-pw@127.0.0.1:{free_port()}/0"
    for command in (["drain"], ["pause"], ["resume"]):
        result = run_fanout(*command, "--redis-url", url)
        assert result.returncode == 3, result.stderr
        [line] = result.stderr.splitlines()
        assert line.startswith("fanout: error: cannot reach Redis at redis://:***@127.0.0.1:")
        assert "sekrit-pw" not in result.stdout + result.stderr


@pytest.mark.slow
def test_a_worker_with_processes_is_drained_by_its_process_names(
    redis_server: RedisServer, workers: Start
) -> None:
    url = redis_server.url
    parent = workers(url, "multi", "--queue", "drain-multi", "--processes", "2")
    wait_until(lambda: {"multi-1", "multi-2"} <= names(url), 20, "its processes register")
    wrong = run_fanout("drain", "multi", "--redis-url", url)
    assert wrong.returncode == 2
    assert wrong.stderr == (f"fanout: error: no worker named 'multi' is registered on {url}"
                            " (its processes: multi-1, multi-2)\n")  # fmt: skip
    drain = run_fanout("drain", "multi-1", "multi-2", "--redis-url", url, timeout=30)
    assert drain.returncode == 0, drain.stderr
    assert parent.wait(10) == 0


@pytest.mark.slow  # RQ's teardown may wait 60 s for its pubsub listener (below)
def test_a_stock_rq_worker_is_asked_for_rqs_warm_shutdown_instead(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    command = [*RQ_CLI, "worker", "-u", url, "--name", "stock-1", "drain-stock"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    stock = subprocess.Popen(command, cwd=ROOT, **quiet)  # type: ignore[call-overload]
    try:
        wait_until(lambda: "stock-1" in names(url), 20, "the stock worker registers")
        drain = run_fanout("drain", "stock-1", "--redis-url", url, timeout=30)
        assert drain.returncode == 0, drain.stderr
        assert drain.stderr == (
            "fanout: warning: stock-1 is a stock RQ worker, which cannot give its job back:"
            " asked for RQ's warm shutdown instead (it finishes its whole job, then exits)\n"
        )
        assert re.search(r"^stock-1: stopped \(RQ's warm shutdown\)", drain.stdout, re.M)
        # "stopped" is its death in its registration, which RQ writes before its teardown
        # unsubscribes; RQ's teardown may then wait for its pubsub listener (up to 60 s
        # with redis-py 8.2 when the listener took the reply first: the race a fanout
        # worker's own unsubscribe avoids, worker.py). Unloaded it exits in 0.2 s (6 of
        # 6 tries); in one of three loaded full runs it outlived a 10 s wait here.
        assert stock.wait(70) == 0
    finally:
        if stock.poll() is None:
            stock.kill()
            stock.wait()


def test_drain_timeout_exits_1_and_the_running_task_still_finishes(
    redis_server: RedisServer, workers: Start, tmp_path: Path
) -> None:
    url, queue = redis_server.url, "drain-timeout"
    worker = workers(url, "slow-1", "--queue", queue)
    wait_until(lambda: "slow-1" in names(url), 20, "the worker registers")
    results: list[fanout.TaskResult] = []
    options: dict[str, Any] = {"backend": "rq", "redis_url": url, "queue": queue}
    runner = threading.Thread(
        target=lambda: results.extend(fanout.run(tasks.pace, [str(tmp_path)], **options))
    )
    runner.start()
    try:
        wait_until((tmp_path / "started").exists, 20, "the task started")
        drain = run_fanout("drain", "slow-1", "--timeout", "0.5", "--redis-url", url)
        assert drain.returncode == 1
        assert drain.stderr == ("fanout: error: 1 worker still draining after 0.5 s: slow-1;"
                                " each exits once its running task ends\n")  # fmt: skip
        assert worker.poll() is None
        (tmp_path / "release").touch()
        assert worker.wait(10) == 0
    finally:
        (tmp_path / "release").touch()
        runner.join(30)
    [result] = results
    assert result.ok, result
    assert result.worker.name == "slow-1"


@pytest.mark.slow
def test_pause_and_resume_with_fanout_and_rq_alike(
    own_redis: RedisServer, workers: Start, caplog: pytest.LogCaptureFixture
) -> None:
    url, queue = own_redis.url, "paused-q"
    worker = workers(url, "pause-1", "--queue", queue)
    wait_until(lambda: "pause-1" in names(url), 20, "the worker registers")

    paused = run_fanout("pause", "--redis-url", url)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout == (f"paused the workers on {url}: they take no new job until fanout"
                             " resume; jobs running go on\n")  # fmt: skip
    # An idle worker sees it within a round of its wait for jobs (2 s).
    wait_until(lambda: state_of(url, "pause-1") == "suspended", 10, "the worker pauses")
    status = run_fanout("status", "--redis-url", url, "--json")
    assert '"paused": true' in status.stdout

    results: list[fanout.TaskResult] = []
    options: dict[str, Any] = {"backend": "rq", "redis_url": url, "queue": queue,
                               "warn_after": 0.5, "give_up_after": 1.0}  # fmt: skip
    caplog.set_level(logging.WARNING, logger="fanout")
    runner = threading.Thread(target=lambda: results.extend(
        fanout.run(tasks.square, [1, 2, 3], **options)))  # fmt: skip
    runner.start()
    try:
        # Paused, the run waits (no BackendUnavailable after give_up_after: its workers
        # are there), says why once, and nothing runs.
        wait_until(
            lambda: "are paused" in caplog.text, 20, "the caller says the workers are paused"
        )
        time.sleep(1.5)  # the worker looks every second: it still takes nothing
        assert results == []
        assert runner.is_alive()
        assert Redis.from_url(url).llen(f"rq:queue:{queue}") >= 1
        resumed = subprocess.run([*RQ_CLI, "resume", "-u", url], capture_output=True, check=False)
        assert resumed.returncode == 0, resumed.stderr
    finally:
        runner.join(30)
    assert [r.value for r in results] == [1, 4, 9]
    [said] = [r.getMessage() for r in caplog.records if "paused" in r.getMessage()]
    assert said == (
        f"the workers serving queue '{queue}' on {url} are paused (fanout pause or"
        " rq suspend); waiting (resume them with: fanout resume --redis-url URL)"
    )

    suspended = subprocess.run([*RQ_CLI, "suspend", "-u", url], capture_output=True, check=False)
    assert suspended.returncode == 0, suspended.stderr
    wait_until(lambda: state_of(url, "pause-1") == "suspended", 10, "rq suspend pauses it")
    assert "paused: no worker takes a new job" in run_fanout("status", "--redis-url", url).stdout
    resumed_by_fanout = run_fanout("resume", "--redis-url", url)
    assert resumed_by_fanout.stdout == f"resumed the workers on {url}\n"
    wait_until(lambda: state_of(url, "pause-1") != "suspended", 10, "fanout resume resumes it")
    assert run_fanout("resume", "--redis-url", url).stdout == (
        f"the workers on {url} were not paused\n"
    )

    # A paused worker drains at once: it runs nothing meanwhile.
    assert run_fanout("pause", "--redis-url", url).returncode == 0
    wait_until(lambda: state_of(url, "pause-1") == "suspended", 10, "the worker pauses")
    began = time.monotonic()
    assert run_fanout("drain", "pause-1", "--redis-url", url).returncode == 0
    assert worker.wait(10) == 0
    assert time.monotonic() - began < 5
