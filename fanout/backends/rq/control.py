"""A run by its id, from any process: its record, the lease of whoever drives it, and
status, cancel and removal (what ``fanout status|cancel|results RUN_ID`` and
:class:`fanout.Run` do). Everything here reads and writes the keys of ``protocol.py``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import TYPE_CHECKING, Any

from rq import Queue, Worker
from rq.command import send_command
from rq.job import Job

from fanout._wire import FAILED, NOT_RUN
from fanout.backends.base import MapSpec
from fanout.backends.rq.protocol import (
    CANCELLED,
    CANCELLED_TTL,
    DEFAULT_QUEUE,
    DROP_SCRIPT,
    ENDED_TTL,
    FEEDER_MS,
    PUSH_SCRIPT,
    READER_MS,
    RECORD_SCRIPT,
    REMOVE_SCRIPT,
    SHORTEN_SCRIPT,
    JobArgs,
    RunKeys,
    pack_results,
    push_args,
    push_keys,
    text,
)
from fanout.models import NOT_RUN as NOT_RUN_NAME
from fanout.models import TaskError, TaskResult, WorkerInfo

if TYPE_CHECKING:
    from fanout.backends.rq.backend import RQBackend
    from fanout.backends.rq.run import RQRun

LEASE_MS = 15_000  # a driver that stops renewing its lease this long is taken for gone

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not holder then return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) and 1 or 0 end
return 0
"""


def create(connection: Any, keys: RunKeys, spec: MapSpec, backend: RQBackend) -> None:
    """The run's record: what it runs, where, and its counts (all zero yet)."""
    record = {
        "target": spec.target or "",
        "queue": backend.queue.name,
        "state": "running",
        "total": 0,
        "enqueued_all": 0,
        "jobs": 0,
        "ok": 0,
        "failed": 0,
        "cancelled": 0,
        "created": time.time(),
        "result_ttl": backend.result_ttl,
        "star": int(spec.star),
        "timeout": "" if spec.timeout is None else spec.timeout,
        "retries": spec.retries,
    }
    pipe = connection.pipeline()
    pipe.hset(keys.meta, mapping=record)
    pipe.expire(keys.meta, backend.result_ttl)
    pipe.set(keys.feeder, 1, px=FEEDER_MS)  # its caller feeds it (feeder.py keeps it so)
    pipe.execute()


def update(connection: Any, keys: RunKeys, fields: dict[str, Any]) -> bool:
    """Set ``fields`` of the run's record if it exists (False if it is gone: a write
    here must never make a removed run again, by halves)."""
    args = [x for pair in fields.items() for x in pair]
    return bool(connection.register_script(RECORD_SCRIPT)(keys=[keys.meta], args=["set", *args]))


def count_jobs(connection: Any, keys: RunKeys, count: int) -> int | None:
    """Add ``count`` to the run's job counter: the new count, None if the run is gone."""
    script = connection.register_script(RECORD_SCRIPT)
    return int(script(keys=[keys.meta], args=["incr", "jobs", count])) or None


def server_id(connection: Any) -> str | None:
    """Which Redis process this is (it changes when Redis restarts, or fails over); None
    if it will not say."""
    try:
        return str(connection.info("server")["run_id"])
    except Exception:
        return None


def feeding(connection: Any, keys: RunKeys) -> bool:
    """Does the run's caller live and still have inputs to enqueue?"""
    return bool(connection.exists(keys.feeder))


def record_of(connection: Any, keys: RunKeys) -> dict[str, str] | None:
    """The run's record, None if there is no such run (never was, or expired)."""
    raw = connection.hgetall(keys.meta)
    return {text(k): text(v) for k, v in raw.items()} if raw else None


class Lease:
    """Who drives a run (watches its jobs, runs lost tasks again): one process at a time.
    The caller that started it holds it; a collector takes it once it lapses."""

    def __init__(self, connection: Any, keys: RunKeys) -> None:
        self.connection = connection
        self.key = keys.driver
        self.token = uuid.uuid4().hex
        self.held = False
        self._renew = connection.register_script(_RENEW)
        self._release = connection.register_script(_RELEASE)

    def take(self) -> bool:
        """Take or keep the lease if nobody else holds it; True while it is ours."""
        self.held = bool(self._renew(keys=[self.key], args=[self.token, LEASE_MS]))
        return self.held

    def release(self) -> None:
        """Let the lease go now (if Redis cannot be told, it lapses by itself)."""
        if self.held:
            self.held = False
            with contextlib.suppress(Exception):
                self._release(keys=[self.key], args=[self.token])


def publish(connection: Any, keys: RunKeys, keyring: Any, results: list[TaskResult]) -> None:
    """Push results decided outside any worker onto the run's stream."""
    w = results[0].worker
    identity = (w.name, w.pid, w.ppid, w.host)
    records = [
        (r.index, NOT_RUN if r.worker.name == NOT_RUN_NAME else FAILED, r.error,
         r.started_at, r.finished_at, r.duration, r.output)
        for r in results
    ]  # fmt: skip
    data = pack_results(keys, identity, records, [r.attempts for r in results], keyring)
    connection.register_script(PUSH_SCRIPT)(keys=push_keys(keys), args=push_args(data, records))


def job_sizes(connection: Any, keys: RunKeys) -> dict[str, int]:
    """Every job the run has had (job id -> its task count): those its caller made and
    those workers split off (split.py)."""
    return {keys.job_id(name): int(size) for name, size in connection.hgetall(keys.jobs).items()}


def job_ids(connection: Any, keys: RunKeys) -> list[str]:
    return list(job_sizes(connection, keys))


def job_statuses(connection: Any, ids: list[str]) -> list[str | None]:
    pipe = connection.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(Job.key_for(job_id), "status")
    return [text(s) if s else None for s in pipe.execute()]


def job_args(connection: Any, job_id: str, serializer: Any) -> JobArgs | None:
    """A job's arguments (its tasks), None if the job is gone."""
    try:
        job = Job.fetch(job_id, connection=connection, serializer=serializer)
        return JobArgs(*job.args)
    except Exception:
        return None


def cancel(
    backend: RQBackend, keys: RunKeys, run: RQRun | None = None, keep: int = CANCELLED_TTL
) -> int:
    """Cancel a run: its queued tasks get their result (Cancelled, run by no one), its
    running jobs are stopped (their workers cancel what they had not run), and nothing
    of it stays queued. ``run``: the caller's own RQRun, if it is the one cancelling.
    ``keep``: seconds (at most) the run's results stay collectable; 0: nobody can
    collect them (nobody has the run's id), so they are dropped now and the run's
    record stays ``ENDED_TTL`` as a marker. Returns how many jobs were told to stop."""
    cancel_queued(backend, keys, run, state="cancelled")
    connection = backend.connection
    ids = job_ids(connection, keys)
    pipe = connection.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(Job.key_for(job_id), "status", "worker_name")
    replies = pipe.execute()
    running = [(job_id, text(worker)) for job_id, (status, worker) in zip(ids, replies, strict=True)
               if status == b"started" and worker]  # fmt: skip
    pipe = connection.pipeline(transaction=False)
    for _, worker in running:
        pipe.exists(Worker.redis_worker_namespace_prefix + worker)
    stopped = 0
    for (job_id, worker), alive in zip(running, pipe.execute(), strict=True):
        # Not RQ's send_stop_job_command: it fetches the job again, and a job that ended
        # since its status was read is then an error. A stop that comes after its job
        # ended the worker ignores; a worker gone (its job lost) hears none.
        if alive:
            send_command(connection, worker, "stop-job", job_id=job_id)
            stopped += 1
    if keep:  # (not its caller's word that it feeds the run: that is the caller's)
        data = [key for key in keys.data() if key != keys.feeder]
        connection.register_script(SHORTEN_SCRIPT)(keys=data, args=[keep])
    else:
        connection.register_script(DROP_SCRIPT)(keys=keys.data(), args=[time.time(), ENDED_TTL])
    return stopped


def cancel_queued(backend: RQBackend, keys: RunKeys, run: RQRun | None, state: str) -> None:
    """Set the run's state, take its jobs out of the queue, and cancel their tasks (and
    the tasks the caller had yet to send again)."""
    connection = backend.connection
    record: dict[str, Any] = {"state": state}
    if run is not None:  # every input it took gets its result: each counts
        record["total"] = run.next_index
    update(connection, keys, record)
    ids = list(run.jobs) if run is not None else job_ids(connection, keys)
    queue = run.queue.key if run is not None else queue_key(connection, keys)
    pipe = connection.pipeline(transaction=False)
    for job_id in ids:
        pipe.lrem(queue, 0, job_id)
    removed = [job_id for job_id, count in zip(ids, pipe.execute(), strict=True) if count]
    why = "the run was cancelled" if state == "cancelled" else "the run stopped (max_failures)"
    error = TaskError(CANCELLED, f"{why} before a worker took the task")
    indices: list[int] = []
    for job_id in removed:
        if run is not None and job_id in run.jobs:
            job = run.jobs[job_id]
            indices += [job.tasks.indices[pos] for pos in run.forget_job(job)]
        elif (args := job_args(connection, job_id, backend.serializer)) is not None:
            indices += args.indices
        connection.delete(Job.key_for(job_id))
    if run is not None:
        indices += [task.index for task in run.retry]
        indices += [index for batch in run.unsent for index in batch.indices]
        run.retry.clear()
        run.unsent = []
    now = time.time()
    info = WorkerInfo.not_run(backend.name)
    for start in range(0, len(indices), 1000):
        part = indices[start : start + 1000]
        results = [TaskResult(i, False, None, error, info, 0, now, now, 0.0) for i in part]
        publish(connection, keys, backend.keyring, results)


def queue_key(connection: Any, keys: RunKeys) -> str:
    """The Redis key of the queue the run's jobs are on (its record says which)."""
    name = connection.hget(keys.meta, "queue")
    return Queue.redis_queue_namespace_prefix + (text(name) if name else DEFAULT_QUEUE)


def remove(connection: Any, keys: RunKeys, reader: str = "") -> bool:
    """A completed collection (by ``reader``, a collector's token; '' for the caller):
    the run's data goes, unless another collector reads it still (then that one removes
    it). Late pushes are then dropped (the push script wants the run's record). True if
    removed."""
    now = int(time.time() * 1000)
    script = connection.register_script(REMOVE_SCRIPT)
    return bool(script(keys=[keys.readers, *keys.data()], args=[reader, now, CANCELLED_TTL]))


def reading(connection: Any, keys: RunKeys, reader: str) -> None:
    """Collector ``reader`` reads the run (for ``READER_MS`` more)."""
    pipe = connection.pipeline(transaction=False)
    pipe.zadd(keys.readers, {reader: int(time.time() * 1000) + READER_MS})
    pipe.pexpire(keys.readers, 2 * READER_MS)
    pipe.execute()


def status(backend: RQBackend, keys: RunKeys) -> dict[str, Any] | None:
    """The run's counts (total, ok, failed, cancelled, queued, running) and the workers
    running its tasks now; None if there is no such run."""
    connection = backend.connection
    record = record_of(connection, keys)
    if record is None:
        return None
    sizes = job_sizes(connection, keys)
    ids = list(sizes)
    statuses = job_statuses(connection, ids)
    queued = sum(sizes[job_id] for job_id, s in zip(ids, statuses, strict=True) if s == "queued")
    total = int(record["total"])
    done = sum(int(record[k]) for k in ("ok", "failed", "cancelled"))
    workers = []
    for job_id, s in zip(ids, statuses, strict=True):
        if s == "started" and (name := connection.hget(Job.key_for(job_id), "worker_name")):
            host = connection.hget(Worker.redis_worker_namespace_prefix + text(name), "hostname")
            workers.append({"name": text(name), "host": text(host) if host else ""})
    state = record["state"]
    if state == "running" and record["enqueued_all"] == "1" and done >= total:
        state = "finished"  # every task has its result; nobody has collected them yet
    if "dropped" in record:  # only its record is left: what had not finished never will
        queued, workers = 0, []
        record["cancelled"] = str(total - int(record["ok"]) - int(record["failed"]))
        done = total
    return {
        "run": keys.run_id,
        "state": state,
        "target": record["target"],
        "queue": record["queue"],
        "total": total,
        "enqueued_all": record["enqueued_all"] == "1",
        "feeding": state == "running" and feeding(connection, keys),
        "dropped": "dropped" in record,
        "ok": int(record["ok"]),
        "failed": int(record["failed"]),
        "cancelled": int(record["cancelled"]),
        "queued": queued,
        "running": max(0, total - done - queued),
        "workers": sorted(workers, key=lambda w: w["name"]),
    }
