"""A durable run's life on rq (issue 22): collectors, status, cancel and results by id,
the run's keys and how long they live, its caller killed, resumed or still feeding it.
Real redis-servers of the tests' own and real ``fanout worker`` processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from redis import Redis

import fanout
from tests import tasks
from tests.helpers import (
    ROOT,
    RedisServer,
    finish,
    run_fanout,
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
    stop_workers(started)


def records(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def serve(url: str, workers: list[subprocess.Popen[bytes]], *names: str, queue: str = "") -> None:
    args = ("--queue", queue) if queue else ()
    workers.extend(start_worker(url, name, *args) for name in names)
    wait_for_workers(url, list(names))


# --------------------------------------------------------------------------- defect 1


@pytest.mark.slow
def test_a_collector_and_a_cancel_act_on_the_runs_own_queue(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    connection = Redis.from_url(server.url)
    run = fanout.submit(tasks.square, range(6), redis_url=server.url, queue="other")
    run.close()
    # Its caller is gone: a collector (no --queue: a run id is enough) drives the run,
    # and checks its jobs at once.
    results = fanout.attach(run.id, redis_url=server.url).results()
    assert connection.llen("rq:queue:fanout") == 0, "jobs enqueued again on the default queue"
    assert connection.llen("rq:queue:other") >= 1
    serve(server.url, workers, "other-1", queue="other")
    got = list(results)
    assert sorted((r.index, r.value) for r in got) == [(i, i * i) for i in range(6)]
    assert {r.worker.name for r in got} == {"other-1"}

    stop_workers(workers)
    workers.clear()
    cancelled = fanout.submit(tasks.square, range(4), redis_url=server.url, queue="other")
    cancelled.close()
    assert connection.llen("rq:queue:other") >= 1
    result = run_fanout("cancel", cancelled.id, "--redis-url", server.url)
    assert result.returncode == 0, result.stderr
    assert connection.llen("rq:queue:other") == 0, "a cancelled run's jobs stayed queued"
    collected = list(fanout.attach(cancelled.id, redis_url=server.url).results())
    assert {r.error.type for r in collected if r.error} == {"Cancelled"}


# --------------------------------------------------------------------------- defect 6


def interrupted_after(count: int) -> Iterator[int]:
    """Inputs as a user's generator gives them, then Ctrl-C while the next is read."""
    yield from range(count)
    raise KeyboardInterrupt


def the_run(connection: Redis) -> tuple[str, dict[bytes, bytes]]:
    (key,) = [k for k in connection.scan_iter("fanout:run:*") if k.count(b":") == 2]
    return key.decode().rsplit(":", 1)[1], connection.hgetall(key)


def test_a_submit_interrupted_before_every_input_is_enqueued_cancels_its_run(
    server: RedisServer,
) -> None:
    connection = Redis.from_url(server.url)
    with fanout.Fanout("rq", redis_url=server.url) as fo:
        with pytest.raises(KeyboardInterrupt):
            fo.submit(tasks.square, interrupted_after(5))
        run_id, record = the_run(connection)
        note = fo.stop_note
    assert record[b"state"] == b"cancelled"
    assert f"run {run_id} cancelled" in note
    assert connection.llen("rq:queue:fanout") == 0, "its jobs stay queued for any worker"
    with fanout.attach(run_id, redis_url=server.url) as run:
        status = run.status()
    # Every input taken has its result, Cancelled (nobody had the run's id to collect
    # them: only the counts are kept).
    assert status["total"] == status["cancelled"] >= 2
    assert (status["ok"], status["failed"], status["queued"], status["running"]) == (0, 0, 0, 0)


@pytest.mark.slow
def test_cancelling_a_run_whose_running_job_ends_meanwhile_raises_nothing(
    server: RedisServer,
) -> None:
    connection = Redis.from_url(server.url)
    run = fanout.submit(tasks.square, range(3), redis_url=server.url)
    # A worker has started one job and finishes it while the cancel looks at the run's
    # jobs: RQ deletes a finished job's hash (result_ttl=0) piece by piece.
    job_id = connection.lpop("rq:queue:fanout").decode()  # type: ignore[union-attr]
    connection.delete(f"rq:job:{job_id}")
    connection.hset(f"rq:job:{job_id}", mapping={"status": "started", "worker_name": "gone-1"})
    run.cancel()
    assert run.status()["state"] == "cancelled"
    assert connection.llen("rq:queue:fanout") == 0
    run.close()


# --------------------------------------------------------------------------- defect 5


def enqueue_one_job(
    url: str, items: list[Any], target: str = "tests.tasks:touch_then_sleep"
) -> str:
    """A run of one job holding every one of ``items`` (star), as a caller enqueues it once
    tasks are measured: a way to have tasks wait behind a running one in their job."""
    from rq import Queue

    from fanout.backends.rq.protocol import RUN_BATCH, JobArgs
    from fanout.backends.rq.record import RunRecord

    with fanout.Fanout("rq", redis_url=url) as fo:
        spec = fo.spec(target, [], star=True)
        backend: Any = fo.backend
        record = RunRecord(backend.settings, uuid.uuid4().hex)
        record.create(spec)
        keys = record.keys
        connection = backend.connection
        connection.hset(keys.meta, mapping={"total": len(items), "enqueued_all": 1, "jobs": 1})
        connection.hset(keys.jobs, "1", len(items))
        args = JobArgs(keys.run_id, target, True, None, 0, list(range(len(items))), items, [], None)
        Queue("fanout", connection=connection).enqueue_call(
            RUN_BATCH, args=tuple(args), job_id=keys.job_id(1), timeout=-1, result_ttl=0
        )
    return keys.run_id


def test_a_cancel_stops_the_running_task_reported_by_its_worker_and_runs_nothing_after(
    server: RedisServer, workers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    marks = [tmp_path / f"ran-{i}" for i in range(4)]
    run_id = enqueue_one_job(
        server.url, [(str(marks[0]), 60.0)] + [(str(m), 0.0) for m in marks[1:]]
    )
    serve(server.url, workers, "c5-1")
    wait_until(marks[0].exists, 20, "the job's first task runs")
    result = run_fanout("cancel", run_id, "--redis-url", server.url)
    assert result.returncode == 0, result.stderr
    # The counts once the running task has stopped, not those of before the cancel.
    assert f"run {run_id} cancelled: 0 ok, 0 failed, 4 cancelled;" in result.stderr
    with fanout.attach(run_id, redis_url=server.url) as run:
        assert run.status()["failed"] == 0, "a cancelled task counted as failed"
        results = sorted(run.results(), key=lambda r: r.index)
    assert [r.error.type if r.error else None for r in results] == ["Cancelled"] * 4
    first = results[0]
    assert (first.worker.name, first.attempts) == ("c5-1", 1), first
    for r in results[1:]:
        assert (r.worker.name, r.attempts) == ("(not run)", 0), r
    assert [m.name for m in marks if m.exists()] == ["ran-0"], "a task ran after the cancel"


@pytest.mark.slow
def test_status_says_a_run_finished_or_cut_short_and_results_give_the_runs_time(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    serve(server.url, workers, "s5-1")
    run = fanout.submit(tasks.sleep_for, [0.4] * 3, redis_url=server.url)
    wait_until(lambda: run.status()["ok"] == 3, 30, "every task finishes")
    assert run.status()["state"] == "finished"  # not collected yet, but not running
    shown = run_fanout("status", run.id, "--redis-url", server.url)
    assert f"run {run.id} (finished)" in shown.stdout
    collected = run_fanout("results", run.id, "--redis-url", server.url)
    assert collected.returncode == 0, collected.stderr
    summary = collected.stdout.splitlines()[-1]
    seconds = float(re.search(r" in ([0-9.]+) s ", summary).group(1))  # type: ignore[union-attr]
    assert seconds >= 1.2, summary  # three tasks of 0.4 s one after another: the run's time
    run.close()

    with fanout.Fanout("rq", redis_url=server.url, queue="nobody") as fo:
        with pytest.raises(KeyboardInterrupt):
            fo.submit(tasks.square, interrupted_after(5))
        run_id = fo.run_id
    assert run_id is not None
    shown = run_fanout("status", run_id, "--redis-url", server.url)
    assert "cancelled before every input was enqueued" in shown.stdout, shown.stdout
    assert "so far" not in shown.stdout


# --------------------------------------------------------------------------- defect 8


def run_keys(connection: Redis, run_id: str) -> dict[str, int]:
    """Every key of run ``run_id`` (its jobs' too) and its TTL."""
    found = [*connection.scan_iter(f"fanout:run:{run_id}*"),
             *connection.scan_iter(f"rq:job:fanout-{run_id}-*")]  # fmt: skip
    return {key.decode(): connection.ttl(key) for key in found}


def test_a_run_cut_short_whose_id_nobody_has_leaves_only_a_small_marker(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    connection = Redis.from_url(server.url)
    serve(server.url, workers, "cut-1")
    with fanout.Fanout("rq", redis_url=server.url) as fo:
        for _ in fo.map(tasks.sleep_for, [0.1] * 20):
            break  # a service's time-out, a cancelled asyncio task: nobody collects it
    run_id, _ = the_run(connection)
    left = run_keys(connection, run_id)
    mine = [key for key in left if key.startswith("fanout:")]
    assert mine == [f"fanout:run:{run_id}"], left  # no stream, bitmap, jobs: a record
    assert 0 < left[f"fanout:run:{run_id}"] <= 3600
    # The job its worker was running (or had just taken) expires too, or goes.
    wait_until(lambda: all(ttl > 0 for ttl in run_keys(connection, run_id).values()), 10,
               "every key of the run expires")  # fmt: skip
    status = run_fanout("status", run_id, "--json", "--redis-url", server.url)
    shown = json.loads(status.stdout)
    assert (shown["state"], shown["total"]) == ("cancelled", shown["ok"] + shown["cancelled"])
    collected = run_fanout("results", run_id, "--redis-url", server.url)
    assert collected.returncode == 2, collected.stderr
    assert "dropped" in collected.stderr
    assert len(collected.stderr.splitlines()) == 1


@pytest.mark.slow
def test_a_run_cut_short_by_ctrl_c_stays_collectable_for_an_hour_then_goes(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    connection = Redis.from_url(server.url)
    serve(server.url, workers, "cut-2")
    proc = start_cli("run", "tests.tasks:sleep_for", *["0.3"] * 20, "--backend", "rq",
                     "--redis-url", server.url)  # fmt: skip
    assert proc.stderr is not None
    run_id = proc.stderr.readline().split()[1]
    wait_until(lambda: fanout.attach(run_id, redis_url=server.url).status()["ok"] >= 1, 20,
               "a task finishes")  # fmt: skip
    proc.send_signal(signal.SIGINT)
    _, stderr = finish(proc)
    assert proc.returncode == 130, stderr
    assert f"within an hour with: fanout results {run_id}" in stderr
    left = run_keys(connection, run_id)
    assert all(0 < ttl <= 3600 for ttl in left.values()), left
    collected = run_fanout("results", run_id, "--json", "--redis-url", server.url)
    assert sorted(r["index"] for r in records(collected.stdout)) == list(range(20))


# --------------------------------------------------------------------------- defects 25-28


FEEDING_CALLER = """
import sys
import fanout
from tests import tasks

with fanout.Executor(backend="rq", redis_url=sys.argv[1]) as ex:
    for line in sys.stdin:  # a task for each line as it comes, as --input - would
        print(ex.submit(tasks.square, int(line)).result(), flush=True)
"""


def feeding_caller(url: str, count: int) -> tuple[subprocess.Popen[str], str]:
    """A caller that enqueues a task for each line it reads, fed ``count`` lines (their
    results in); and its run's id."""
    caller = subprocess.Popen(
        [sys.executable, "-c", FEEDING_CALLER, url], cwd=ROOT, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    feed(caller, *range(count))
    assert caller.stdout is not None
    assert [int(caller.stdout.readline()) for _ in range(count)] == [i * i for i in range(count)]
    run_id, _ = the_run(Redis.from_url(url))
    return caller, run_id


def feed(caller: subprocess.Popen[str], *values: int) -> None:
    assert caller.stdin is not None
    caller.stdin.write("".join(f"{v}\n" for v in values))
    caller.stdin.flush()


@pytest.mark.slow
def test_a_collector_never_ends_a_run_its_caller_still_feeds(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    serve(server.url, workers, "feed-1")
    caller, run_id = feeding_caller(server.url, 4)
    collector = start_cli("results", run_id, "--json", "--redis-url", server.url)
    try:
        assert collector.stdout is not None
        seen = [json.loads(collector.stdout.readline())["index"] for _ in range(4)]
        feed(caller, 4)  # the caller was only waiting for its next input
        fifth = collector.stdout.readline()
        assert fifth, "the collector ended the run while its caller still fed it"
        seen.append(json.loads(fifth)["index"])
        out, err = finish(caller, 60, "")  # the end of its input
        assert caller.returncode == 0, err
        assert out.split() == ["16"]
        rest, err = finish(collector)
        assert collector.returncode == 0, err
        assert sorted(seen) == list(range(5))
        assert rest == ""
    finally:
        for proc in (caller, collector):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    connection = Redis.from_url(server.url)
    wait_until(lambda: not run_keys(connection, run_id), 10, "the run's data is removed")


def results_so_far(url: str, run_id: str) -> int:
    with fanout.attach(run_id, redis_url=url) as run:
        return int(run.status()["ok"])


@pytest.mark.slow
def test_two_collectors_each_get_every_result_or_are_told_why_not(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    connection = Redis.from_url(server.url)
    run = fanout.submit(tasks.sleep_for, [0.05] * 30, redis_url=server.url)
    run.close()
    serve(server.url, workers, "two-1")
    with fanout.attach(run.id, redis_url=server.url) as lagging:
        results = lagging.results()
        first = [next(results) for _ in range(3)]
        other = run_fanout("results", run.id, "--json", "--redis-url", server.url)
        assert other.returncode == 0, other.stderr
        assert sorted(r["index"] for r in records(other.stdout)) == list(range(30))
        rest = list(results)  # the other one completed meanwhile: this one still reads
    assert sorted(r.index for r in first + rest) == list(range(30))
    assert not run_keys(connection, run.id), "the last collection removes the run"

    run = fanout.submit(tasks.sleep_for, [0.05] * 30, redis_url=server.url)
    run.close()
    with fanout.attach(run.id, redis_url=server.url) as lagging:
        results = lagging.results()
        wait_until(lambda: results_so_far(server.url, run.id) >= 5, 20, "5 results")
        next(results)
        connection.delete(*run_keys(connection, run.id))  # gone: expired, or collected
        with pytest.raises(fanout.ResultsGone, match=r"read \d+ of 30"):
            list(results)


@pytest.mark.slow
def test_a_run_whose_caller_died_before_enqueueing_every_input_says_it_is_incomplete(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    serve(server.url, workers, "dead-1")
    caller, run_id = feeding_caller(server.url, 3)
    caller.kill()  # before it has read the rest of its input
    finish(caller)
    collected = run_fanout("results", run_id, "--json", "--redis-url", server.url)
    assert collected.returncode == 1, collected.stderr
    assert sorted(r["index"] for r in records(collected.stdout)) == [0, 1, 2]
    assert all(r["ok"] for r in records(collected.stdout))
    (line,) = collected.stderr.splitlines()
    assert line.startswith(f"fanout: error: run {run_id} is incomplete")
    assert "after enqueueing 3 inputs" in line


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_redis_restart_while_the_caller_still_feeds_its_run_loses_nothing(
    workers: list[subprocess.Popen[bytes]],
) -> None:
    server = RedisServer()
    try:
        serve(server.url, workers, "rs-1")
        with fanout.Executor(backend="rq", redis_url=server.url) as ex:
            first = [ex.submit(tasks.square, i) for i in range(3)]
            assert [f.result(timeout=30) for f in first] == [0, 1, 4]
            server.process.kill()  # nothing on disk: the run's record and jobs are gone
            server.process.wait()
            server.process = RedisServer(port=server.port).process
            rest = [ex.submit(tasks.square, i) for i in range(3, 6)]
            assert [f.result(timeout=60) for f in rest] == [9, 16, 25]
    finally:
        server.stop()


# --------------------------------------------------------------------------- defect 32


CALLER_OF_ONE_LONG_TASK = """
import sys
import fanout
from tests import tasks
fanout.run(tasks.touch_then_sleep, [(sys.argv[2], 60)], star=True, backend="rq",
           redis_url=sys.argv[1])
"""


def test_a_running_jobs_hash_expires_even_if_its_caller_and_its_worker_both_die(
    server: RedisServer, workers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    connection = Redis.from_url(server.url)
    serve(server.url, workers, "both-1")
    marker = tmp_path / "started"
    caller = subprocess.Popen([sys.executable, "-c", CALLER_OF_ONE_LONG_TASK, server.url,
                               str(marker)], cwd=ROOT)  # fmt: skip
    wait_until(marker.exists, 20, "the task runs")
    caller.kill()
    caller.wait()
    worker = psutil.Process(workers[0].pid)
    for process in [worker, *worker.children(recursive=True)]:
        process.kill()
    workers[0].wait()
    (job,) = connection.scan_iter("rq:job:fanout-*")
    assert connection.hget(job, "status") == b"started"
    assert connection.ttl(job) > 0, "a running job's hash would stay for ever"


# --------------------------------------------------------------------------- defect 33


def test_a_worker_that_cannot_import_the_target_gives_its_jobs_to_one_that_can(
    server: RedisServer, workers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    # A stale worker of a rolling deploy: its code has no tests.tasks (it runs from
    # elsewhere). It registers first, so that it is the first to take the run's jobs.
    env = dict(os.environ, FANOUT_REDIS_URL=server.url)
    stale = subprocess.Popen([sys.executable, "-m", "fanout", "worker", "--name", "stale-1"],
                             cwd=tmp_path, env=env)  # fmt: skip
    workers.append(stale)
    wait_for_workers(server.url, ["stale-1"])
    serve(server.url, workers, "fresh-1")
    results = fanout.run(tasks.square, range(12), backend="rq", redis_url=server.url)
    assert sorted((r.index, r.value) for r in results) == [(i, i * i) for i in range(12)]
    assert {r.worker.name for r in results} == {"fresh-1"}

    stop_workers(workers[1:])  # only the stale worker is left: nobody can load it
    del workers[1:]
    results = fanout.run(tasks.square, range(3), backend="rq", redis_url=server.url)
    assert {r.error.type for r in results if r.error} == {"TargetError"}
    assert all("stale-1" in r.error.message for r in results if r.error)


# --------------------------------------------------------------------------- defect 9


@pytest.mark.slow
def test_a_killed_busy_workers_name_is_free_again_at_once_on_its_host(
    server: RedisServer, workers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    connection = Redis.from_url(server.url)
    serve(server.url, workers, "nine-1")
    marker = tmp_path / "started"
    run = fanout.submit(tasks.touch_then_sleep, [(str(marker), 60)], star=True,
                        redis_url=server.url)  # fmt: skip
    run.close()
    wait_until(marker.exists, 20, "nine-1 is busy")
    wait_until(lambda: connection.ttl("rq:worker:nine-1") <= 60, 10, "a heartbeat mid-job")
    worker = psutil.Process(workers[0].pid)
    for process in [worker, *worker.children(recursive=True)]:
        process.kill()  # the worker and its task process, mid-task
    workers[0].wait()
    # Its registration says it lives for at most a minute more, as the message says...
    assert 0 < connection.ttl("rq:worker:nine-1") <= 60
    # ... and on its own host, where its process is seen gone, the name is free at once.
    serve(server.url, workers, "nine-1")
    assert workers[1].poll() is None


# --------------------------------------------------------------------------- defect 31


JOURNALED_CALLER = """
import sys
import fanout
from tests import tasks

url, log, journal = sys.argv[1:]
items = [(log, i, 0.2) for i in range(30)]
with fanout.Fanout("rq", redis_url=url) as fo:
    for r in fo.map(tasks.record_then_sleep, items, star=True, journal=journal):
        print(r.index, flush=True)
"""


@pytest.mark.slow
def test_resuming_a_killed_callers_journal_takes_its_live_runs_results(
    server: RedisServer, workers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    log, journal = tmp_path / "ran", tmp_path / "journal.jsonl"
    serve(server.url, workers, "j-1", "j-2")
    caller = subprocess.Popen(
        [sys.executable, "-c", JOURNALED_CALLER, server.url, str(log), str(journal)],
        cwd=ROOT, text=True, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert caller.stdout is not None
    for _ in range(4):  # a few results journaled; the rest of the run is on its workers
        caller.stdout.readline()
    caller.kill()
    finish(caller)
    items = [(str(log), i, 0.2) for i in range(30)]
    results = fanout.run(tasks.record_then_sleep, items, star=True, journal=journal,
                         resume=True, backend="rq", redis_url=server.url)  # fmt: skip
    assert [(r.index, r.value) for r in results] == [(i, i) for i in range(30)]
    ran = log.read_text().split()
    assert sorted(ran) == sorted(str(i) for i in range(30)), "inputs ran twice (or never)"


def test_a_step_held_whole_is_not_cut_by_ctrl_c_when_another_thread_runs() -> None:
    # rich's progress bar, a driver thread: the kernel gives a process's signal to a
    # thread that does not block it, so blocking it in the main thread alone held
    # nothing back (a Ctrl-C landed mid-enqueue).
    from fanout._proc import signals_deferred

    def a_step() -> None:
        nonlocal whole
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):
                time.sleep(0)  # where the interrupt would land, were it not held
            whole = True

    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    whole = False
    try:
        with pytest.raises(KeyboardInterrupt):
            a_step()
    finally:
        stop.set()
        other.join()
    assert whole
