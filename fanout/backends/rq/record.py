"""A run in Redis, by its id: its record and every key beside it, owned by one object
(:class:`RunRecord`) that whoever acts on the run goes through — its caller, a
collector, ``fanout status|cancel|results RUN_ID`` and :class:`fanout.Run` alike. It
makes the record, reads and changes it, counts its jobs, publishes results decided
outside any worker, cancels, stops and removes; :class:`Lease` says who drives the run.
The keys and scripts are in ``protocol.py``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rq import Queue, Worker
from rq.command import send_command
from rq.job import Job

from fanout._wire import FAILED, NOT_RUN, Record
from fanout.backends.rq.protocol import (
    CANCELLED_TTL,
    DEFAULT_QUEUE,
    DROP_SCRIPT,
    ENDED_TTL,
    FEEDER_MS,
    LIMITS,
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
from fanout.models import TaskResult, WorkerInfo, cancelled, decided_now

if TYPE_CHECKING:
    from fanout.backends.base import MapSpec
    from fanout.backends.rq.settings import RunSettings

LEASE_MS = 15_000  # a driver that stops renewing its lease this long is taken for gone
PUBLISH_PART = 1000  # results pushed in one message at most

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


def server_id(connection: Any) -> str | None:
    """Which Redis process this is (it changes when Redis restarts, or fails over); None
    if it will not say."""
    try:
        return str(connection.info("server")["run_id"])
    except Exception:
        return None


def shown_state(state: str, enqueued_all: bool, done: int, total: int) -> str:
    """A run's state as status and metrics show it: its record's (running, cancelled,
    halted), or "finished" once every task has its result (nobody has collected them)."""
    if state == "running" and enqueued_all and done >= total:
        return "finished"
    return state


class RunRecord:
    """Run ``run_id`` in the Redis of ``settings``: its keys, and what may be done to
    them."""

    def __init__(self, settings: RunSettings, run_id: str) -> None:
        self.settings = settings
        self.connection = settings.connection
        self.keys = RunKeys(run_id)
        self._record = self.connection.register_script(RECORD_SCRIPT)
        self._push = self.connection.register_script(PUSH_SCRIPT)

    @property
    def run_id(self) -> str:
        return self.keys.run_id

    # -- the record ---------------------------------------------------------------------

    def create(self, spec: MapSpec) -> None:
        """The run's record: what it runs, where, and its counts (all zero yet); and its
        caller's word that it feeds the run (``feeder.py`` keeps it so)."""
        settings = self.settings
        record: dict[Any, Any] = {
            "target": spec.target or "",
            "queue": settings.queue.name,
            "state": "running",
            "total": 0,
            "enqueued_all": 0,
            "jobs": 0,
            "ok": 0,
            "failed": 0,
            "cancelled": 0,
            "created": time.time(),
            "result_ttl": settings.result_ttl,
            "star": int(spec.star),
            "timeout": "" if spec.timeout is None else spec.timeout,
            "retries": spec.retries,
            # The limits of the jobs a collector enqueues again (collect.py).
            **{name: "" if getattr(spec, name) is None else getattr(spec, name) for name in LIMITS},
        }
        pipe = self.connection.pipeline()
        pipe.hset(self.keys.meta, mapping=record)
        pipe.expire(self.keys.meta, settings.result_ttl)
        pipe.set(self.keys.feeder, 1, px=FEEDER_MS)
        pipe.execute()

    def read(self) -> dict[str, str] | None:
        """The run's record, None if there is no such run (never was, or expired)."""
        raw = self.connection.hgetall(self.keys.meta)
        return {text(k): text(v) for k, v in raw.items()} if raw else None

    def exists(self) -> bool:
        return bool(self.connection.exists(self.keys.meta))

    def update(self, fields: dict[str, Any], client: Any = None) -> bool:
        """Set ``fields`` of the run's record if it exists (False if it is gone: a write
        here must never make a removed run again, by halves). ``client``: a pipeline
        to queue the write on (then the answer is its reply)."""
        args = [x for pair in fields.items() for x in pair]
        return bool(self._record(keys=[self.keys.meta], args=["set", *args], client=client))

    def count_jobs(self, count: int) -> int | None:
        """Add ``count`` to the run's job counter: the new count, None if the run is gone."""
        return int(self._record(keys=[self.keys.meta], args=["incr", "jobs", count])) or None

    def feeding(self) -> bool:
        """Does the run's caller live and still have inputs to enqueue?"""
        return bool(self.connection.exists(self.keys.feeder))

    def queue_key(self) -> str:
        """The Redis key of the queue the run's jobs are on (its record says which)."""
        name = self.connection.hget(self.keys.meta, "queue")
        return Queue.redis_queue_namespace_prefix + (text(name) if name else DEFAULT_QUEUE)

    # -- jobs ---------------------------------------------------------------------------

    def job_sizes(self) -> dict[str, int]:
        """Every job the run has had (job id -> its task count): those its caller made and
        those workers split off (split.py)."""
        raw = self.connection.hgetall(self.keys.jobs)
        return {self.keys.job_id(text(name)): int(size) for name, size in raw.items()}

    def job_ids(self) -> list[str]:
        return list(self.job_sizes())

    def job_statuses(self, ids: list[str]) -> list[str | None]:
        pipe = self.connection.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(Job.key_for(job_id), "status")
        return [text(s) if s else None for s in pipe.execute()]

    def job_args(self, job_id: str) -> JobArgs | None:
        """A job's arguments (its tasks), None if the job is gone."""
        try:
            job = Job.fetch(job_id, connection=self.connection, serializer=self.settings.serializer)
            return JobArgs(*job.args)
        except Exception:
            return None

    def dequeue(self, ids: Iterable[str], queue_key: str) -> list[str]:
        """Take the jobs ``ids`` out of the queue, those still in it (no worker has taken
        them); the ids of those taken out (their hashes: :meth:`drop_jobs`)."""
        ids = list(ids)
        pipe = self.connection.pipeline(transaction=False)
        for job_id in ids:
            pipe.lrem(queue_key, 0, job_id)
        return [job_id for job_id, count in zip(ids, pipe.execute(), strict=True) if count]

    def drop_jobs(self, ids: list[str]) -> None:
        """Delete the hashes of jobs taken out of the queue (no worker will run them)."""
        if ids:
            self.connection.delete(*(Job.key_for(job_id) for job_id in ids))

    def expire_jobs(self, ids: Iterable[str], ttl: int) -> None:
        """Jobs a worker took have no expiry in RQ while they run: give them ``ttl``, so
        that one whose worker dies (or cannot finish it: Redis full) does not stay."""
        pipe = self.connection.pipeline(transaction=False)
        for job_id in ids:
            pipe.expire(Job.key_for(job_id), ttl)
        pipe.execute()

    def stop_running(self) -> int:
        """Send RQ's stop-job to the live workers running the run's jobs (they cancel
        what they had not run); how many were told."""
        connection = self.connection
        ids = self.job_ids()
        pipe = connection.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(Job.key_for(job_id), "status", "worker_name")
        replies = pipe.execute()
        running = [(job_id, text(worker)) for job_id, (status, worker) in zip(ids, replies,
                   strict=True) if status == b"started" and worker]  # fmt: skip
        pipe = connection.pipeline(transaction=False)
        for _, worker in running:
            pipe.exists(Worker.redis_worker_namespace_prefix + worker)
        stopped = 0
        for (job_id, worker), alive in zip(running, pipe.execute(), strict=True):
            # Not RQ's send_stop_job_command: it fetches the job again, and a job that
            # ended since its status was read is then an error. A stop that comes after
            # its job ended the worker ignores; a worker gone (its job lost) hears none.
            if alive:
                send_command(connection, worker, "stop-job", job_id=job_id)
                stopped += 1
        return stopped

    # -- results ------------------------------------------------------------------------

    def publish(self, results: list[TaskResult], client: Any = None) -> None:
        """Push results decided outside any worker onto the run's stream."""
        w = results[0].worker
        identity = (w.name, w.pid, w.ppid, w.host)
        records: list[Record] = [
            (r.index, NOT_RUN if r.worker.name == NOT_RUN_NAME else FAILED, r.error,
             r.started_at, r.finished_at, r.duration, r.output, None)
            for r in results
        ]  # fmt: skip
        # The attempts made before each record's: a result of an attempt counts it.
        prior = [r.attempts - (record[1] != NOT_RUN) for r, record in zip(results, records,
                 strict=True)]  # fmt: skip
        data = pack_results(self.keys, identity, records, prior, self.settings.keyring)
        self._push(keys=push_keys(self.keys), args=push_args(data, records), client=client)

    def publish_cancelled(self, indices: list[int], why: str, attempts: int = 0) -> None:
        """Each of ``indices`` gets its result: Cancelled (``why``), run by no one."""
        error = cancelled(why)
        now = time.time()
        info = WorkerInfo.not_run(self.settings.backend)
        for start in range(0, len(indices), PUBLISH_PART):
            part = indices[start : start + PUBLISH_PART]
            self.publish([decided_now(i, error, info, attempts, now) for i in part])

    # -- the end ------------------------------------------------------------------------

    def cancel(self, keep: int = CANCELLED_TTL) -> int:
        """Cancel the run by its id (its caller is not the one): its queued tasks get
        their result (Cancelled), its running jobs are stopped, nothing of it stays
        queued, and its data stays ``keep`` seconds at most (see :meth:`shorten`).
        Returns how many jobs were told to stop."""
        self.update({"state": "cancelled"})
        removed = self.dequeue(self.job_ids(), self.queue_key())
        indices: list[int] = []
        for job_id in removed:
            args = self.job_args(job_id)
            if args is not None:
                indices += args.indices
        self.drop_jobs(removed)
        self.publish_cancelled(indices, "the run was cancelled before a worker took the task")
        stopped = self.stop_running()
        self.shorten(keep)
        return stopped

    def shorten(self, keep: int) -> None:
        """A cut-short run's data stays ``keep`` seconds at most (for a collection by its
        id); 0: nobody can collect it (nobody has the run's id), so it is dropped now and
        the run's record stays ``ENDED_TTL`` as a marker of what happened."""
        if keep:  # (not its caller's word that it feeds the run: that is the caller's)
            data = [key for key in self.keys.data() if key != self.keys.feeder]
            self.connection.register_script(SHORTEN_SCRIPT)(keys=data, args=[keep])
        else:
            drop = self.connection.register_script(DROP_SCRIPT)
            drop(keys=self.keys.data(), args=[time.time(), ENDED_TTL])

    def remove(self, reader: str = "") -> bool:
        """A completed collection (by ``reader``, a collector's token; '' for the caller):
        the run's data goes, unless another collector reads it still (then that one
        removes it). Late pushes are then dropped (the push script wants the run's
        record). True if removed."""
        now = int(time.time() * 1000)
        script = self.connection.register_script(REMOVE_SCRIPT)
        return bool(script(keys=[self.keys.readers, *self.keys.data()],
                           args=[reader, now, CANCELLED_TTL]))  # fmt: skip

    def reading(self, reader: str) -> None:
        """Collector ``reader`` reads the run (for ``READER_MS`` more)."""
        pipe = self.connection.pipeline(transaction=False)
        pipe.zadd(self.keys.readers, {reader: int(time.time() * 1000) + READER_MS})
        pipe.pexpire(self.keys.readers, 2 * READER_MS)
        pipe.execute()

    def stop_reading(self, reader: str) -> None:
        self.connection.zrem(self.keys.readers, reader)

    def status(self) -> dict[str, Any] | None:
        """The run's counts (total, ok, failed, cancelled, queued, running) and the
        workers running its tasks now; None if there is no such run."""
        record = self.read()
        if record is None:
            return None
        sizes = self.job_sizes()
        ids = list(sizes)
        statuses = self.job_statuses(ids)
        queued = sum(sizes[i] for i, s in zip(ids, statuses, strict=True) if s == "queued")
        total = int(record["total"])
        done = sum(int(record[k]) for k in ("ok", "failed", "cancelled"))
        state = shown_state(record["state"], record["enqueued_all"] == "1", done, total)
        workers = self._workers(ids, statuses)
        if "dropped" in record:  # only its record is left: what had not finished never will
            queued, workers = 0, []
            record["cancelled"] = str(total - int(record["ok"]) - int(record["failed"]))
            done = total
        return {
            "run": self.run_id,
            "state": state,
            "target": record["target"],
            "queue": record["queue"],
            "total": total,
            "enqueued_all": record["enqueued_all"] == "1",
            "feeding": state == "running" and self.feeding(),
            "dropped": "dropped" in record,
            "ok": int(record["ok"]),
            "failed": int(record["failed"]),
            "cancelled": int(record["cancelled"]),
            "queued": queued,
            "running": max(0, total - done - queued),
            "workers": sorted(workers, key=lambda w: w["name"]),
        }

    def _workers(self, ids: list[str], statuses: list[str | None]) -> list[dict[str, str]]:
        """The workers running the run's started jobs: name, host."""
        workers = []
        for job_id, status in zip(ids, statuses, strict=True):
            name = self.connection.hget(Job.key_for(job_id), "worker_name")
            if status == "started" and name:
                key = Worker.redis_worker_namespace_prefix + text(name)
                host = self.connection.hget(key, "hostname")
                workers.append({"name": text(name), "host": text(host) if host else ""})
        return workers

    def lease(self) -> Lease:
        return Lease(self.connection, self.keys)


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
