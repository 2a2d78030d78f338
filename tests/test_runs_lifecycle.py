"""A durable run's life on rq (issue 22): collectors, status, cancel and results by id,
the run's keys and how long they live, its caller killed, resumed or still feeding it.
Real redis-servers of the tests' own and real ``fanout worker`` processes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from redis import Redis

import fanout
from tests import tasks
from tests.helpers import (
    RedisServer,
    run_fanout,
    start_worker,
    stop_workers,
    wait_for_workers,
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


def serve(url: str, workers: list[subprocess.Popen[bytes]], *names: str, queue: str = "") -> None:
    args = ("--queue", queue) if queue else ()
    workers.extend(start_worker(url, name, *args) for name in names)
    wait_for_workers(url, list(names))


# --------------------------------------------------------------------------- defect 1


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
        results = list(run.results(wait=False))
    assert sorted(r.index for r in results) == list(range(int(record[b"total"])))
    assert {r.error.type for r in results if r.error} == {"Cancelled"}


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
