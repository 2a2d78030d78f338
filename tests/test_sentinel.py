"""Redis Sentinel (issue 15): Sentinel URLs wherever a Redis URL is taken, clear errors,
and a real failover in the middle of a run, with a real master, replica and three
``redis-sentinel`` processes, that loses no task and duplicates no result."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from redis import Redis

import fanout
from fanout.backends.rq.connection import SentinelURL, mask_url, url_passwords
from tests import tasks
from tests.helpers import (
    finish,
    run_fanout,
    start_cli,
    start_worker,
    stop_workers,
    wait_for_workers,
    wait_until,
)
from tests.sentinel import SERVICE, SentinelSet

# -- URLs -------------------------------------------------------------------------------


def test_a_sentinel_url_names_its_sentinels_service_database_and_credentials() -> None:
    config = SentinelURL.parse(
        "rediss+sentinel://app:s3cret@10.0.0.1:26379,[::1]:26380,sentinel-c/cache/3"
        "?sentinel_password=other&ssl_cert_reqs=none"
    )
    assert config.sentinels == [("10.0.0.1", 26379), ("::1", 26380), ("sentinel-c", 26379)]
    assert config.service == "cache"
    assert config.sentinel_password == "other"
    assert config.master["db"] == 3
    assert (config.master["username"], config.master["password"]) == ("app", "s3cret")
    assert config.master["ssl"] is True
    assert config.master["ssl_cert_reqs"] == "none"
    assert SentinelURL.parse("redis+sentinel://h:1/svc").master["db"] == 0


@pytest.mark.parametrize(
    "url", ["redis+sentinel://h:1", "redis+sentinel://h:1/svc/0/extra", "redis+sentinel:///svc"]
)
def test_a_sentinel_url_without_a_service_or_a_sentinel_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="SERVICE"):
        SentinelURL.parse(url)


def test_every_password_of_a_sentinel_url_is_masked() -> None:
    url = "redis+sentinel://u:pw1@h1:1,h2:2/svc/0?sentinel_password=pw2"
    assert mask_url(url) == "redis+sentinel://u:***@h1:1,h2:2/svc/0?sentinel_password=***"
    assert sorted(url_passwords(url)) == ["pw1", "pw2"]


def test_no_sentinel_reachable_is_one_line_naming_the_service_exit_3() -> None:
    started = time.monotonic()
    result = run_fanout(
        "run", "tests.tasks:square", "1", "--backend", "rq",
        "--redis-url", "redis+sentinel://:hunter2@127.0.0.1:9,127.0.0.1:10/orders/0",
    )  # fmt: skip
    # At once: a refused Sentinel is not asked again (redis-py's retries took 16 s).
    assert time.monotonic() - started < 5
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "no Redis Sentinel answers at 127.0.0.1:9,127.0.0.1:10" in result.stderr
    assert "'orders'" in result.stderr
    assert "hunter2" not in result.stderr


# -- a real Sentinel deployment ---------------------------------------------------------


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    deployment = SentinelSet()
    yield deployment
    deployment.stop()


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    stop_workers(started)


@pytest.mark.timeout(60)
def test_an_unknown_service_is_one_line_naming_it_and_status_shows_the_master(
    sentinels: SentinelSet,
) -> None:
    wrong = run_fanout("status", "--redis-url", sentinels.url(service="nope"))
    assert wrong.returncode == 3, wrong.stderr
    assert wrong.stderr.count("\n") == 1, wrong.stderr
    assert f"know no service 'nope' (they know: '{SERVICE}')" in wrong.stderr
    status = run_fanout("status", "--json", "--redis-url", sentinels.url())
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["master"] == f"127.0.0.1:{sentinels.master.port}"
    human = run_fanout("status", "--redis-url", sentinels.url())
    assert f"(master 127.0.0.1:{sentinels.master.port}, found by Sentinel)" in human.stdout


@pytest.mark.timeout(60)
def test_a_worker_on_a_sentinel_url_stops_cleanly_on_sigterm(sentinels: SentinelSet) -> None:
    worker = start_cli("worker", "--name", "t-1", env={"FANOUT_REDIS_URL": sentinels.url()})
    try:
        wait_for_workers(sentinels.master.url, ["t-1"])
        # RQ registers a worker before it installs its signal handlers; it says "idle"
        # once it waits for a job, handlers in place.
        with Redis.from_url(sentinels.master.url) as master:
            wait_until(lambda: master.hget("rq:worker:t-1", "state") == b"idle", 20,
                       "the worker waits for a job")  # fmt: skip
        worker.send_signal(signal.SIGTERM)  # RQ's warm shutdown, while it waits on BLMOVE
        _, stderr = finish(worker, 15)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, stderr
    assert "Error" not in stderr


def fail_over(sentinels: SentinelSet) -> int:
    """Cut the replica off, let the master acknowledge writes it never gets, SIGKILL the
    master: the Sentinels promote the replica, which lacks those writes. The new port."""
    sentinels.link.cut()
    # The fault's shape, not a wait for a condition: the master acknowledges writes for
    # a while (workers push results, take jobs) that no replica will ever have.
    time.sleep(0.7)
    old = sentinels.master.port
    sentinels.master.process.kill()
    sentinels.master.process.wait()
    port: int = wait_until(
        lambda: (port := sentinels.master_port()) != old and port, 30, "the Sentinels fail over"
    )
    return port


def serve(url: str, workers: list[subprocess.Popen[bytes]], master_url: str) -> None:
    workers.extend(start_worker(url, name) for name in ("f-1", "f-2"))
    wait_for_workers(master_url, ["f-1", "f-2"])


def each_index_once_all_ok(results: list[fanout.TaskResult], count: int) -> None:
    seen = Counter(r.index for r in results)
    assert sorted(seen) == list(range(count))
    assert max(seen.values()) == 1
    assert all(r.ok for r in results), Counter(str(r.error) for r in results if not r.ok)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_failover_mid_run_loses_no_task_and_duplicates_no_result(
    sentinels: SentinelSet, workers: list[subprocess.Popen[bytes]]
) -> None:
    url = sentinels.url()
    serve(url, workers, sentinels.master.url)
    under_way = threading.Event()
    promoted: list[int] = []

    def items() -> Iterator[float]:
        for i in range(300):
            if i == 60:
                under_way.set()
            yield 0.05

    def fault() -> None:
        under_way.wait(30)
        promoted.append(fail_over(sentinels))

    thread = threading.Thread(target=fault)
    thread.start()
    results = fanout.run(tasks.sleep_for, items(), backend="rq", redis_url=url)
    thread.join()
    assert promoted == [sentinels.replica.port]
    each_index_once_all_ok(results, 300)
    assert {r.worker.name for r in results} == {"f-1", "f-2"}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_durable_run_is_collected_whole_after_a_failover(
    sentinels: SentinelSet, workers: list[subprocess.Popen[bytes]]
) -> None:
    url = sentinels.url()
    run = fanout.submit(tasks.sleep_for, [0.05] * 300, redis_url=url)
    serve(url, workers, sentinels.master.url)
    wait_until(lambda: run.status()["ok"] >= 60, 30, "a fifth of the run is done")
    assert fail_over(sentinels) == sentinels.replica.port
    # Collected by id, through the Sentinels, from the promoted replica.
    results = list(fanout.attach(run.id, redis_url=url).results())
    each_index_once_all_ok(results, 300)
