"""``fanout metrics``: the queue side of a fleet, read from Redis at each scrape.

What an autoscaler and an operator read: per queue, the jobs and the tasks waiting,
the oldest waiting job's age, the jobs running and failed; the workers by state; the
runs by state. Nothing is written to Redis, and nothing is unpickled (a signed job
cannot be read without the secret):

- **Tasks waiting.** Each fanout job's task count is already in Redis, in its run's
  jobs hash (``fanout:run:<run>:jobs``: job name -> tasks, written in the transaction
  that enqueues the job, by the caller or by a worker that splits a job). The queue's
  job ids (``fanout-<run>-<name>``) name both, so one HMGET per run in the queue counts
  its tasks: exact, at no cost to enqueueing, and right after a cancel, a split, a
  failover or a hand-run ``rq empty`` (a counter kept beside the queue would drift
  from it in each). A job of another kind counts one task; a fanout job whose run is
  gone counts none (its worker drops it at once).
- **Oldest waiting job.** Jobs wait in line, except the few that go to the front (the
  rest of a split job, a job put back): the oldest ``enqueued_at`` among the first
  ``OLDEST_WINDOW`` jobs in line.
- **Workers** by state from RQ's worker registry (busy, idle, suspended), and "lost"
  for a fanout worker whose heartbeat (every 2 s) has been silent ``LOST_AFTER``.
- **Runs** by state, from their records, found by a SCAN (at most ``SCAN_KEYS``
  keys looked at per scrape).

A queue of up to ``MAX_JOBS`` jobs is read whole; past that, the tasks of the rest
are estimated from those read (``docs/operations.md``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rq.utils import utcparse

from fanout.backends.rq.protocol import RunKeys, text
from fanout.backends.rq.record import shown_state

QUEUE_PREFIX = "rq:queue:"
MAX_JOBS = 100_000  # jobs of one queue read per scrape (the rest: estimated)
OLDEST_WINDOW = 100  # jobs at the head of a queue whose age is read
LOST_AFTER = 30.0  # a fanout worker's heartbeat silent this long: lost (callers' dead_after)
SCAN_KEYS = 1_000_000  # keys a scrape looks at, at most, to find the runs
READ_PART = 1000  # commands per pipeline round trip

WORKER_STATES = ("busy", "idle", "suspended", "lost")
RUN_STATES = ("running", "finished", "halted", "cancelled", "dropped")


@dataclass
class QueueCounts:
    """One queue as a scrape found it."""

    name: str
    jobs: int = 0  # waiting in the queue
    tasks: float = 0  # the tasks those jobs hold (estimated past MAX_JOBS)
    oldest_age: float = 0.0  # seconds the oldest waiting job has waited (0: none)
    running_jobs: int = 0  # in RQ's started registry
    failed_jobs: int = 0  # in RQ's failed registry


@dataclass
class Snapshot:
    """What one scrape read."""

    queues: list[QueueCounts]
    workers: Counter[tuple[str, str]] = field(default_factory=Counter)  # (queue, state)
    runs: Counter[tuple[str, str]] = field(default_factory=Counter)  # (queue, state)
    runs_complete: bool = True  # False: the SCAN stopped at SCAN_KEYS
    paused: bool = False  # RQ's suspend flag (fanout pause, rq suspend)


def read_snapshot(connection: Any, queues: Iterable[str] | None = None) -> Snapshot:
    """Read the queues ``queues`` (None: every queue RQ knows), their workers and their
    runs."""
    names = sorted(set(queues) if queues else _all_queues(connection))
    now = time.time()
    snapshot = Snapshot([_queue_counts(connection, name, now) for name in names])
    for name in names:
        snapshot.workers.update(_worker_states(connection, name, now))
    snapshot.runs_complete = _run_states(connection, set(names), snapshot.runs)
    snapshot.paused = bool(connection.exists("rq:suspended"))
    return snapshot


def _all_queues(connection: Any) -> list[str]:
    return [text(key)[len(QUEUE_PREFIX) :] for key in connection.smembers("rq:queues")]


def _queue_counts(connection: Any, name: str, now: float) -> QueueCounts:
    key = QUEUE_PREFIX + name
    pipe = connection.pipeline(transaction=False)
    pipe.llen(key)
    pipe.lrange(key, 0, MAX_JOBS - 1)
    pipe.zcard(f"rq:wip:{name}")
    pipe.zcard(f"rq:failed:{name}")
    length, ids, running, failed = pipe.execute()
    ids = [text(job_id) for job_id in ids]
    counts = QueueCounts(name, int(length), 0, 0.0, int(running), int(failed))
    tasks = _tasks_of(connection, ids)
    # Jobs enqueued past the ones read: as many tasks each as those read, on average.
    counts.tasks = tasks + (tasks / len(ids) * (counts.jobs - len(ids)) if ids else 0)
    counts.oldest_age = _oldest_age(connection, ids[:OLDEST_WINDOW], now)
    return counts


def _tasks_of(connection: Any, ids: list[str]) -> int:
    """The tasks the jobs ``ids`` hold (see the module docstring)."""
    by_run: dict[str, list[str]] = {}
    others = 0
    for job_id in ids:
        parts = job_id.split("-", 2)
        if len(parts) == 3 and parts[0] == "fanout":
            by_run.setdefault(parts[1], []).append(parts[2])
        else:
            others += 1
    runs = list(by_run.items())
    tasks = others
    for start in range(0, len(runs), READ_PART):
        pipe = connection.pipeline(transaction=False)
        for run, jobs in runs[start : start + READ_PART]:
            pipe.hmget(RunKeys(run).jobs, jobs)
        for sizes in pipe.execute():
            tasks += sum(int(size) for size in sizes if size is not None)
    return tasks


def _oldest_age(connection: Any, ids: list[str], now: float) -> float:
    if not ids:
        return 0.0
    pipe = connection.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(f"rq:job:{job_id}", "enqueued_at")
    times = [utcparse(text(at)).timestamp() for at in pipe.execute() if at]
    return max(0.0, now - min(times)) if times else 0.0


def _worker_states(connection: Any, queue: str, now: float) -> Counter[tuple[str, str]]:
    keys = sorted(text(k) for k in connection.smembers(f"rq:workers:{queue}"))
    states: Counter[tuple[str, str]] = Counter()
    for start in range(0, len(keys), READ_PART):
        pipe = connection.pipeline(transaction=False)
        for key in keys[start : start + READ_PART]:
            pipe.hmget(key, "state", "last_heartbeat", "fanout_heartbeat", "death")
        for state, beat, fanout_beat, death in pipe.execute():
            if state is None or death is not None:
                continue  # gone (its registration expired) or dead: RQ drops it next
            shown = text(state)
            silent = now - utcparse(text(beat)).timestamp() if beat is not None else 0.0
            if fanout_beat is not None and silent > LOST_AFTER:
                shown = "lost"
            states[(queue, "idle" if shown == "started" else shown)] += 1
    return states


def _run_states(connection: Any, queues: set[str], runs: Counter[tuple[str, str]]) -> bool:
    """Count the runs of ``queues`` by state into ``runs``; False if the SCAN stopped
    at ``SCAN_KEYS`` keys before it had seen every key."""
    cursor, looked = 0, 0
    while True:
        cursor, keys = connection.scan(cursor, match="fanout:run:*", count=READ_PART)
        looked += READ_PART
        records = [key for key in keys if key.count(b":") == 2]
        if records:
            pipe = connection.pipeline(transaction=False)
            for key in records:
                pipe.hmget(key, "queue", "state", "enqueued_all", "total", "ok", "failed",
                           "cancelled", "dropped")  # fmt: skip
            for fields in pipe.execute():
                queue, state = _run_state(fields)
                if queue in queues:
                    runs[(queue, state)] += 1
        if cursor == 0:
            return True
        if looked >= SCAN_KEYS:
            return False


def _run_state(fields: list[Any]) -> tuple[str, str]:
    queue, state, enqueued_all, total, ok, failed, cancelled, dropped = fields
    if queue is None or state is None:
        return "", ""  # not a run's record (or one half made)
    if dropped is not None:
        return text(queue), "dropped"
    done = sum(int(n or 0) for n in (ok, failed, cancelled))
    return text(queue), shown_state(text(state), enqueued_all == b"1", done, int(total or 0))


class QueueCollector:
    """The snapshot as Prometheus metric families, read afresh at each scrape
    (prometheus_client's Collector). Redis unreachable: ``fanout_redis_up`` 0, and
    nothing else (no stale numbers for an autoscaler to act on)."""

    def __init__(self, connection: Any, queues: list[str] | None, url: str) -> None:
        self.connection = connection
        self.queues = queues or None
        self.url = url
        self.error: str | None = None  # the last scrape's, said once per outage

    def collect(self) -> Iterator[Any]:
        import redis
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("fanout_redis_up", "1 if the last scrape could read Redis")
        try:
            snapshot = read_snapshot(self.connection, self.queues)
        except (redis.RedisError, OSError) as exc:
            self._lost(exc)
            up.add_metric([], 0)
            yield up
            return
        self.error = None
        up.add_metric([], 1)
        yield up
        yield from families(snapshot)

    def _lost(self, exc: BaseException) -> None:
        import logging

        from fanout.backends.rq.connection import mask_url, scrub

        error = scrub(f"{type(exc).__name__}: {exc}", self.url)
        if error != self.error:
            logging.getLogger("fanout").warning(
                "metrics: cannot read Redis at %s (%s); fanout_redis_up is 0 until it"
                " answers", mask_url(self.url), error)  # fmt: skip
        self.error = error


def families(snapshot: Snapshot) -> Iterator[Any]:
    """The snapshot's metric families."""
    from prometheus_client.core import GaugeMetricFamily

    def gauge(name: str, help_text: str, labels: list[str]) -> Any:
        return GaugeMetricFamily(name, help_text, labels=labels)

    per_queue = [
        ("fanout_queue_jobs", "RQ jobs waiting in the queue", "jobs"),
        ("fanout_queue_tasks", "Tasks waiting in the queue (in the jobs waiting)", "tasks"),
        ("fanout_queue_oldest_age_seconds", "Seconds the oldest waiting job has waited"
         " (0: none waits)", "oldest_age"),
        ("fanout_queue_running_jobs", "RQ jobs workers are running (RQ's started"
         " registry)", "running_jobs"),
        ("fanout_queue_failed_jobs", "RQ jobs in RQ's failed registry (kept an hour)",
         "failed_jobs"),
    ]  # fmt: skip
    for name, help_text, attr in per_queue:
        family = gauge(name, help_text, ["queue"])
        for counts in snapshot.queues:
            family.add_metric([counts.name], getattr(counts, attr))
        yield family
    names = [queue.name for queue in snapshot.queues]
    workers = gauge("fanout_workers", "Workers serving the queue, by state", ["queue", "state"])
    for (queue, state), value in _with_zeros(snapshot.workers, names, WORKER_STATES):
        workers.add_metric([queue, state], value)
    yield workers
    runs = gauge("fanout_runs", "Runs in Redis whose jobs go to the queue, by state",
                 ["queue", "state"])  # fmt: skip
    for (queue, state), value in _with_zeros(snapshot.runs, names, RUN_STATES):
        runs.add_metric([queue, state], value)
    yield runs
    complete = gauge("fanout_runs_complete", "1 if fanout_runs counted every run (the"
                     " scan of Redis's keys was not cut short)", [])  # fmt: skip
    complete.add_metric([], int(snapshot.runs_complete))
    yield complete
    paused = gauge("fanout_paused", "1 while workers take no new jobs (fanout pause,"
                   " rq suspend)", [])  # fmt: skip
    paused.add_metric([], int(snapshot.paused))
    yield paused


def _with_zeros(
    counts: Counter[tuple[str, str]], queues: list[str], states: tuple[str, ...]
) -> list[tuple[tuple[str, str], int]]:
    """Every (queue, state) pair: the usual states at 0 where none is in it (a series
    from the first scrape on), and any other state found."""
    keys = {(queue, state) for queue in queues for state in states} | set(counts)
    return [(key, counts.get(key, 0)) for key in sorted(keys)]


def exposition(snapshot: Snapshot) -> bytes:
    """The snapshot as Prometheus text (``fanout metrics --once``)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily

    class Once:
        def collect(self) -> Iterator[Any]:
            up = GaugeMetricFamily("fanout_redis_up", "1 if the last scrape could read Redis")
            up.add_metric([], 1)
            yield up
            yield from families(snapshot)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Once())
    return generate_latest(registry)
