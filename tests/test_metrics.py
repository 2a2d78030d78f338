"""Metrics for a fleet: ``fanout worker --metrics-port`` and ``fanout metrics``, read as
Prometheus reads them (HTTP scrapes, the text parsed by prometheus_client's parser), from
real workers on a real redis-server."""

from __future__ import annotations

import signal
import tempfile
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import fanout
from fanout.backends.rq.metrics import cause_of
from tests.helpers import (
    RedisServer,
    accepts_connections,
    finish,
    free_port,
    run_fanout,
    start_cli,
    start_worker,
    stop_workers,
    wait_for_workers,
    wait_until,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of Prometheus text: (name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return parse(response.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def queue_name() -> str:
    return f"metrics-{uuid.uuid4().hex[:8]}"


def start_metrics_worker(url: str, name: str, queue: str, port: int, *args: str) -> Any:
    worker = start_worker(url, name, "--queue", queue, "--metrics-port", str(port), "--quiet",
                          *args)  # fmt: skip
    wait_until(lambda: accepts_connections(port), 20, "the worker serves its metrics")
    return worker


@pytest.mark.slow
def test_worker_counts_each_task_by_outcome_and_cause_with_its_duration(
    redis_server: RedisServer,
) -> None:
    """Ok tasks, a task that raises, one over its timeout and one that kills its own
    process: each counted once, under the cause its result gives, on the worker's port;
    and the task processes that replaced the two that were ended."""
    queue, port = queue_name(), free_port()
    worker = start_metrics_worker(redis_server.url, "metrics-w1", queue, port)
    try:
        wait_for_workers(redis_server.url, ["metrics-w1"])
        options: dict[str, Any] = {"backend": "rq", "redis_url": redis_server.url,
                                   "queue": queue}  # fmt: skip
        ok = fanout.run("tests.tasks:square", range(49), **options)
        timed_out = fanout.run("tests.tasks:say_then_sleep", [30], timeout=0.3, **options)
        raised = fanout.run("tests.tasks:fail", [1, 2], **options)  # in a second process
        lost = fanout.run("tests.tasks:kill_self", repeat=1, **options)
        ok += fanout.run("tests.tasks:square", [7], **options)  # in a third
        assert all(r.ok for r in ok)
        assert len({r.worker.pid for r in (*ok, *raised)}) == 3
        failures = [r for r in (*raised, *timed_out, *lost) if not r.ok]
        assert len(failures) == 4
        labels = {"queue": queue, "worker": "metrics-w1"}
        # A job's results reach its caller before the job has ended: busy until then.
        samples = wait_until(
            lambda: (s := scrape(port)) and value(s, "fanout_worker_busy", **labels) == 0 and s,
            10,
            "the last job ended",
        )
    finally:
        stop_workers([worker])
    assert value(samples, "fanout_tasks_total", outcome="ok", **labels) == 50
    by_cause: dict[str, int] = {}
    for r in failures:
        by_cause[cause_of(r.error)] = by_cause.get(cause_of(r.error), 0) + 1
    assert set(by_cause) >= {"raised", "timeout"}
    for cause, count in by_cause.items():
        assert value(samples, "fanout_tasks_total", outcome="failed", cause=cause, **labels) == (
            count
        ), cause
    assert value(samples, "fanout_tasks_total", **labels) == 54  # nothing counted twice
    # Every task ran: each has its duration; the timed-out one ran past 0.3 s.
    assert value(samples, "fanout_task_duration_seconds_count", **labels) == 54
    assert value(samples, "fanout_task_duration_seconds_sum", **labels) >= 0.3
    assert value(samples, "fanout_task_duration_seconds_bucket", le="0.025", **labels) >= 50
    assert value(samples, "fanout_jobs_total", outcome="done", **labels) >= 5
    assert value(samples, "fanout_task_process_starts_total", **labels) == 3


@pytest.mark.slow
def test_worker_is_busy_while_a_job_runs_and_idle_after(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    queue, port = queue_name(), free_port()
    worker = start_metrics_worker(redis_server.url, "metrics-busy", queue, port)
    started, release = tmp_path / "started", tmp_path / "release"
    labels = {"queue": queue, "worker": "metrics-busy"}
    try:
        wait_for_workers(redis_server.url, ["metrics-busy"])
        run = fanout.submit("tests.tasks:start_then_wait", [(str(started), str(release))],
                            star=True, backend="rq", redis_url=redis_server.url,
                            queue=queue)  # fmt: skip
        wait_until(started.exists, 20, "the task starts")
        assert value(scrape(port), "fanout_worker_busy", **labels) == 1
        release.touch()
        assert [r.ok for r in run.results()] == [True]
        samples = wait_until(
            lambda: (s := scrape(port)) and value(s, "fanout_worker_busy", **labels) == 0 and s,
            10,
            "the worker idle again",
        )
    finally:
        stop_workers([worker])
    assert value(samples, "fanout_jobs_total", outcome="done", **labels) == 1
    assert value(samples, "fanout_tasks_total", outcome="ok", **labels) == 1


@pytest.mark.slow
def test_processes_share_one_endpoint_each_worker_its_own_series(
    redis_server: RedisServer,
) -> None:
    queue, port = queue_name(), free_port()
    worker = start_metrics_worker(redis_server.url, "metrics-pool", queue, port,
                                  "--processes", "2")  # fmt: skip
    names = ["metrics-pool-1", "metrics-pool-2"]
    try:
        wait_for_workers(redis_server.url, names)
        results = fanout.run("tests.tasks:square", range(200), backend="rq",
                             redis_url=redis_server.url, queue=queue)  # fmt: skip
        ran_on = {r.worker.name for r in results}
        # The children write what they counted within a second.
        samples = wait_until(
            lambda: (
                (s := scrape(port))
                and value(s, "fanout_tasks_total", outcome="ok", queue=queue) == 200
                and s
            ),
            10,
            "both workers' counts on the one endpoint",
        )
    finally:
        stop_workers([worker])
    for name in names:  # each child's series, from the first snapshot on
        assert ("fanout_worker_busy", frozenset({("queue", queue), ("worker", name)})) in samples
    for name in ran_on:
        count = sum(r.worker.name == name for r in results)
        assert value(samples, "fanout_tasks_total", outcome="ok", worker=name) == count
    tmp = Path(tempfile.gettempdir())
    assert not list(tmp.glob(f"fanout-metrics-{worker.pid}-*"))  # tidied at exit


def test_counting_a_batch_matches_counting_each_record() -> None:
    """The worker counts a batch at a time (a sort, a bisect per bucket): the same
    counts as one record at a time, each duration in the first bucket it fits (le)."""
    import random
    from bisect import bisect_left

    from fanout._wire import FAILED, NOT_RUN, OK_PICKLED, OK_RAW
    from fanout.backends.rq.metrics import DURATION_BUCKETS, WorkerMetrics
    from fanout.models import TaskError

    rng = random.Random(7)
    durations = [0.0, *DURATION_BUCKETS, 0.0011, 3.0, 7200.0]
    records = []
    for index in range(3000):
        status = rng.choice([OK_RAW, OK_PICKLED, OK_RAW, FAILED, NOT_RUN])
        kind = rng.choice(["ValueError", "TaskTimeout", "WorkerLost", "Cancelled", "TargetError"])
        payload = TaskError(kind, "m") if status >= FAILED else index
        records.append((index, status, payload, 0.0, 0.0, rng.choice(durations), ""))
    metrics = WorkerMetrics("q", "w")
    for start in range(0, 3000, 700):
        metrics.count(records[start : start + 700])
    buckets = [0] * (len(DURATION_BUCKETS) + 1)
    failures: dict[tuple[str, str], int] = {}
    for _, status, payload, _, _, duration, _ in records:
        if status != NOT_RUN:
            buckets[bisect_left(DURATION_BUCKETS, duration)] += 1
        if status >= FAILED:
            cancelled = payload.type == "Cancelled"
            key = ("cancelled", "cancelled") if cancelled else ("failed", cause_of(payload, status))
            failures[key] = failures.get(key, 0) + 1
    assert metrics.buckets == buckets
    assert {k: v for k, v in metrics.failures.items() if v} == failures
    assert metrics.ok == sum(r[1] < FAILED for r in records)
    assert metrics.duration_sum == pytest.approx(sum(r[5] for r in records if r[1] != NOT_RUN))
    assert failures[("failed", "not-run")] > 0  # a TargetError no process ran


def test_a_metrics_port_in_use_is_one_line_and_exit_2(redis_server: RedisServer) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104 - where the worker binds by default
        taken.listen()
        port = taken.getsockname()[1]
        result = run_fanout("worker", "--queue", queue_name(), "--metrics-port", str(port),
                            "--burst", env={"FANOUT_REDIS_URL": redis_server.url})  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("fanout: error: cannot serve metrics on")
    assert "--metrics-port" in lines[0]


def test_metrics_once_and_port_are_one_of_the_two(redis_server: RedisServer) -> None:
    env = {"FANOUT_REDIS_URL": redis_server.url}
    neither = run_fanout("metrics", env=env)
    both = run_fanout("metrics", "--once", "--port", str(free_port()), env=env)
    for result in (neither, both):
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1
        assert result.stderr.startswith("fanout: error: ")
        assert result.stdout == ""


def test_metrics_without_redis_is_exit_3_with_the_password_masked() -> None:
    result = run_fanout("metrics", "--once", "--redis-url",
                        f"redis://:s3cret@127.0.0.1:{free_port()}/0")  # fmt: skip
    assert result.returncode == 3
    assert result.stderr.startswith("fanout: error: cannot reach Redis at redis://:***@")
    assert "s3cret" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_metrics_once_gives_every_family_for_a_queue_with_nothing_in_it(
    redis_server: RedisServer,
) -> None:
    queue = queue_name()
    result = run_fanout("metrics", "--once", "--queue", queue,
                        env={"FANOUT_REDIS_URL": redis_server.url})  # fmt: skip
    assert result.returncode == 0, result.stderr
    samples = parse(result.stdout)
    for name in ("fanout_queue_jobs", "fanout_queue_tasks", "fanout_queue_oldest_age_seconds",
                 "fanout_queue_running_jobs", "fanout_queue_failed_jobs"):  # fmt: skip
        assert samples[(name, frozenset({("queue", queue)}))] == 0
    for state in ("busy", "idle", "suspended", "lost"):
        assert samples[("fanout_workers", frozenset({("queue", queue), ("state", state)}))] == 0
    for state in ("running", "finished", "halted", "cancelled", "dropped"):
        assert samples[("fanout_runs", frozenset({("queue", queue), ("state", state)}))] == 0
    assert samples[("fanout_redis_up", frozenset())] == 1


@pytest.mark.slow
def test_metrics_served_on_a_port_say_when_redis_is_gone_and_stop_on_sigterm() -> None:
    """A scrape while Redis is down is fanout_redis_up 0 (not a stale number for an
    autoscaler, not an HTTP error); SIGTERM stops the exporter cleanly."""
    server = RedisServer()
    port = free_port()
    exporter = start_cli("metrics", "--port", str(port), "--addr", "127.0.0.1",
                         env={"FANOUT_REDIS_URL": server.url})  # fmt: skip
    try:
        wait_until(lambda: accepts_connections(port), 20, "the exporter serves")
        assert value(scrape(port), "fanout_redis_up") == 1
        server.stop()
        samples = scrape(port)
        assert samples == {("fanout_redis_up", frozenset()): 0}
    finally:
        if exporter.poll() is None:
            exporter.send_signal(signal.SIGTERM)
        _, stderr = finish(exporter, 20)
        if server.process.poll() is None:
            server.stop()
    assert exporter.returncode == 0, stderr
    assert "fanout_redis_up is 0 until it answers" in stderr
    assert "Traceback" not in stderr


def test_a_stock_rq_job_counts_one_task_waiting(redis_server: RedisServer) -> None:
    """Jobs of other kinds share a queue with fanout's: one task each."""
    from redis import Redis
    from rq import Queue

    queue = queue_name()
    with Redis.from_url(redis_server.url) as connection:
        rq_queue = Queue(queue, connection=connection)
        jobs = [rq_queue.enqueue("tests.tasks:square", 3, ttl=60) for _ in range(3)]
        try:
            result = run_fanout("metrics", "--once", "--queue", queue,
                                env={"FANOUT_REDIS_URL": redis_server.url})  # fmt: skip
        finally:
            for job in jobs:
                job.delete()
    samples = parse(result.stdout)
    assert value(samples, "fanout_queue_jobs", queue=queue) == 3
    assert value(samples, "fanout_queue_tasks", queue=queue) == 3
    assert value(samples, "fanout_queue_oldest_age_seconds", queue=queue) >= 0


def metrics_once(url: str, queue: str) -> Samples:
    result = run_fanout("metrics", "--once", "--queue", queue, env={"FANOUT_REDIS_URL": url})
    assert result.returncode == 0, result.stderr
    return parse(result.stdout)


@pytest.mark.slow
def test_queue_metrics_track_a_backlog_as_it_fills_and_drains(redis_server: RedisServer) -> None:
    """Two runs submitted with no worker serving their queue: the exported numbers grow
    with each; workers started, they fall to 0 as the backlog drains, and the runs are
    counted finished. The plain-script autoscaler's arithmetic, on the same text."""
    from fanout.examples.autoscale import workers_wanted

    url, queue = redis_server.url, queue_name()
    options: dict[str, Any] = {"backend": "rq", "redis_url": url, "queue": queue}
    first = fanout.submit("tests.tasks:say_then_sleep", [0.15] * 10, **options)
    filling = metrics_once(url, queue)
    assert value(filling, "fanout_queue_tasks", queue=queue) == 10
    assert value(filling, "fanout_runs", queue=queue, state="running") == 1
    second = fanout.submit("tests.tasks:say_then_sleep", [0.15] * 20, **options)
    text = run_fanout("metrics", "--once", "--queue", queue,
                      env={"FANOUT_REDIS_URL": url}).stdout  # fmt: skip
    full = parse(text)
    jobs = value(full, "fanout_queue_jobs", queue=queue)
    assert value(full, "fanout_queue_tasks", queue=queue) == 30
    assert 1 <= jobs <= 30
    assert value(full, "fanout_runs", queue=queue, state="running") == 2
    assert value(full, "fanout_queue_oldest_age_seconds", queue=queue) >= value(
        filling, "fanout_queue_oldest_age_seconds", queue=queue
    )
    assert value(full, "fanout_workers", queue=queue) == 0
    # 30 waiting, none busy: ceil(30 / 8) = 4, within the bounds given.
    assert workers_wanted(text, queue, tasks_per_worker=8) == 4
    assert workers_wanted(text, queue, tasks_per_worker=8, max_workers=2) == 2
    assert workers_wanted(text, "another-queue", tasks_per_worker=8, min_workers=1) == 1

    workers = [start_worker(url, f"{queue}-{i}", "--queue", queue, "--quiet") for i in (1, 2)]
    seen: list[float] = []
    try:

        def drained() -> bool:
            samples = metrics_once(url, queue)
            seen.append(value(samples, "fanout_queue_tasks", queue=queue))
            return value(samples, "fanout_runs", queue=queue, state="finished") == 2 and samples

        empty = wait_until(drained, 60, "the backlog drains and both runs finish")
        wait_until(
            lambda: (
                value(metrics_once(url, queue), "fanout_workers", queue=queue, state="idle") == 2
            ),
            20,
            "both workers idle again",
        )
        assert sorted(r.index for r in first.results()) == list(range(10))
        assert sorted(r.index for r in second.results()) == list(range(20))
    finally:
        stop_workers(workers)
    assert seen == sorted(seen, reverse=True)  # it only fell
    assert seen[-1] == 0
    for name in ("fanout_queue_jobs", "fanout_queue_tasks", "fanout_queue_oldest_age_seconds"):
        assert value(empty, name, queue=queue) == 0
    assert [v for v in seen if 0 < v < 30], seen  # read on its way down


def test_a_fanout_worker_whose_heartbeat_stopped_is_counted_lost(
    redis_server: RedisServer,
) -> None:
    """A worker killed outright leaves its registration for a minute; once its heartbeat
    (every 2 s) has been silent 30 s it is 'lost', not 'busy'."""
    from datetime import datetime, timedelta, timezone

    from redis import Redis
    from rq.utils import utcformat

    queue = queue_name()
    old = utcformat(datetime.now(timezone.utc) - timedelta(seconds=45))
    fresh = utcformat(datetime.now(timezone.utc))
    keys = [f"rq:worker:{queue}-dead", f"rq:worker:{queue}-alive"]
    with Redis.from_url(redis_server.url) as connection:
        for key, beat in zip(keys, (old, fresh), strict=True):
            connection.hset(key, mapping={"state": "busy", "last_heartbeat": beat,
                                          "fanout_heartbeat": 2})  # fmt: skip
            connection.expire(key, 60)
        connection.sadd(f"rq:workers:{queue}", *keys)
        connection.expire(f"rq:workers:{queue}", 60)
        try:
            samples = metrics_once(redis_server.url, queue)
        finally:
            connection.delete(*keys, f"rq:workers:{queue}")
    assert value(samples, "fanout_workers", queue=queue, state="lost") == 1
    assert value(samples, "fanout_workers", queue=queue, state="busy") == 1


def deployment_yaml_blocks() -> list[Any]:
    """The YAML blocks of docs/deployment.md's autoscaling section, parsed."""
    import re

    import yaml

    text = (Path(__file__).resolve().parent.parent / "docs" / "deployment.md").read_text()
    section = text[text.index("## 5. Autoscaling workers") :]
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section, re.S)]


def test_the_keda_scaled_objects_read_what_fanout_metrics_exports(
    redis_server: RedisServer,
) -> None:
    """The Prometheus trigger's query uses metrics and labels that `fanout metrics`
    exports, and its value over its threshold is the plain script's arithmetic on the
    same text; the Redis-list trigger reads the list RQ keeps for the queue."""
    import math
    import re

    from rq import Queue

    from fanout.examples.autoscale import workers_wanted

    blocks = deployment_yaml_blocks()
    assert [b["kind"] for b in blocks] == ["ScaledObject", "ScaledObject"]
    (prometheus,) = blocks[0]["spec"]["triggers"]
    (redis_list,) = blocks[1]["spec"]["triggers"]
    assert prometheus["type"] == "prometheus"
    assert redis_list["type"] == "redis"
    assert redis_list["metadata"]["listName"] == Queue.redis_queue_namespace_prefix + "fanout"

    text = run_fanout("metrics", "--once", "--queue", "fanout",
                      env={"FANOUT_REDIS_URL": redis_server.url}).stdout  # fmt: skip
    samples = parse(text)
    query = prometheus["metadata"]["query"]
    terms = re.findall(r"(?:(\d+)\s*\*\s*)?sum\((\w+)\{([^}]*)\}\)", query)
    assert len(terms) == 2
    total = 0.0
    for factor, name, selector in terms:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', selector))
        exported = [ls for (n, ls) in samples if n == name]
        assert exported, f"{name} is not exported"
        assert any(set(labels.items()) <= ls for ls in exported), (name, labels)
        total += int(factor or 1) * value(samples, name, **labels)
    threshold = float(prometheus["metadata"]["threshold"])
    assert float(terms[1][0]) == threshold  # busy workers weigh one threshold each
    assert math.ceil(total / threshold) == workers_wanted(text, "fanout", threshold, 0, 10**6)
