"""One map() on RQ, the caller's side: jobs enqueued ahead of the workers, results
taken from the run's list with a blocking pop, and the run's keys cleaned up however
it ends. What to run and what counts is the shared RunState; what RQ did with the
jobs is watched in ``watch.py``."""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import TYPE_CHECKING, Any

from rq import Queue
from rq.command import send_stop_job_command
from rq.job import Job
from rq.registry import StartedJobRegistry

from fanout._wire import INDEX, TaskBatch
from fanout.backends.base import MapSpec
from fanout.backends.rq.connection import Outage, RedisLost, translate
from fanout.backends.rq.protocol import (
    FAILURE_TTL,
    RUN_BATCH,
    RUN_TTL,
    Identity,
    JobArgs,
    RunKeys,
    unpack_results,
)
from fanout.backends.rq.watch import JobWatch
from fanout.backends.runstate import ORDER_WINDOW, RunState
from fanout.models import WorkerInfo

if TYPE_CHECKING:
    from fanout.backends.rq.backend import RQBackend

log = logging.getLogger("fanout")

TARGET_JOB_SECONDS = 0.1
MAX_JOB_TASKS = 5000
MAX_JOB_BYTES = 1 << 20
WAIT_SECONDS = 1.0  # longest single blocking pop; checks run between pops
POP_MESSAGES = 1000  # result messages taken in one round trip after a pop


class RQJob:
    """A job of this run in Redis, and its tasks without a result yet."""

    __slots__ = ("id", "identity", "remaining", "tasks")

    def __init__(self, job_id: str, tasks: TaskBatch) -> None:
        self.id = job_id
        self.tasks = tasks
        self.remaining = {index: pos for pos, index in enumerate(tasks.indices)}
        self.identity: Identity | None = None  # the last process seen running its tasks

    def unreported(self) -> list[int]:
        """Positions of its tasks without a result, in order."""
        return sorted(self.remaining.values())


class RQRun(RunState):
    """One map() call on RQ: jobs in flight, the run's keys, what the workers sent."""

    def __init__(self, backend: RQBackend, spec: MapSpec) -> None:
        super().__init__(spec, backend.name)
        assert spec.target is not None
        self.rq = backend
        self.connection = backend.connection
        self.queue = backend.queue
        self.keys = RunKeys(uuid.uuid4().hex)
        self.jobs: dict[str, RQJob] = {}
        self.owner: dict[int, str] = {}  # index -> id of the job that carries it
        self.job_count = 0
        self.refused = 0  # result messages whose signature did not hold
        self.given_up = False  # a job was taken for lost: its worker may yet push
        self.outage = Outage(backend.url, backend.redis_wait)
        self.watch = JobWatch(self)
        self.watch.check()

    # -- dispatch -------------------------------------------------------------------

    def batch_size(self) -> int:
        return self.sized(TARGET_JOB_SECONDS, MAX_JOB_TASKS, MAX_JOB_BYTES)

    def window(self) -> int:
        return max(ORDER_WINDOW, 4 * max(1, self.watch.workers_seen) * self.batch_size())

    def dispatch(self) -> None:
        """Keep about two jobs per serving worker queued or running."""
        room = max(2, 2 * self.watch.workers_seen) - len(self.jobs)
        batches: list[TaskBatch] = []
        while room > 0:
            batch = self.take_batch()
            if batch is None:
                break
            batches.append(batch)
            room -= 1
        if batches:
            self.enqueue(batches)

    def enqueue(self, batches: list[TaskBatch]) -> None:
        spec = self.spec
        assert spec.target is not None
        datas = []
        for tasks in batches:
            self.job_count += 1
            job_id = self.keys.job_id(self.job_count)
            args = JobArgs.of(self.keys.run_id, spec.target, spec.star, spec.timeout, tasks)
            datas.append(
                Queue.prepare_data(
                    RUN_BATCH,
                    args=tuple(args),
                    job_id=job_id,
                    timeout=-1,  # per-task timeouts are fanout's, not RQ's job timeout
                    ttl=RUN_TTL,  # a job nobody took within that is not run any more
                    result_ttl=0,  # results travel on the run's list; keep nothing
                    failure_ttl=FAILURE_TTL,
                    description=f"fanout {spec.target} tasks {args.indices[0]}..{args.indices[-1]}",
                )
            )
            self.jobs[job_id] = RQJob(job_id, tasks)
            for index in tasks.indices:
                self.owner[index] = job_id
        pipe = self.connection.pipeline()
        self.queue.enqueue_many(datas, pipeline=pipe)
        pipe.execute()

    # -- results ----------------------------------------------------------------------

    def step(self) -> None:
        """One round; a lost Redis is waited for (``redis_wait``), reconnecting."""
        try:
            with translate(self.rq.url):
                self.round()
        except RedisLost as exc:
            self.outage.hit(exc)
            return
        if self.outage.over():
            self.watch.check()  # jobs a restarted Redis forgot are enqueued again

    def round(self) -> None:
        self.dispatch()
        if self.ready or self.done():
            return
        popped: Any = self.connection.blpop([self.keys.results], timeout=WAIT_SECONDS)
        messages: list[bytes] = [popped[1]] if popped else []
        if popped:
            messages += self.lpop()
        for data in messages:
            self.handle(data)
        self.watch.after_round(bool(messages))

    def drain(self) -> None:
        """Take every result already pushed (before judging a failed or lost job)."""
        while messages := self.lpop():
            for data in messages:
                self.handle(data)

    def lpop(self) -> list[bytes]:
        messages: Any = self.connection.lpop(self.keys.results, POP_MESSAGES)
        return list(messages or [])

    def handle(self, data: bytes) -> None:
        keyring = self.rq.keyring
        try:
            identity, records = unpack_results(data, self.keys, keyring)
        except Exception as exc:
            if keyring is None:
                raise
            # Never unpickled unless signed for this run. Its tasks' real results
            # still count; a job that finishes without them is run again.
            self.refused += 1
            if self.refused == 1:
                log.warning("refused a result on %s: %s", self.keys.results, exc)
            return
        info = WorkerInfo(*identity, self.rq.name)
        mine, where, retried = [], [], False
        for record in records:
            job_id = self.owner.pop(record[INDEX], None)
            if job_id is None:
                continue  # a late duplicate of a task already settled
            job = self.jobs[job_id]
            job.identity = identity
            where.append((job.tasks, job.remaining.pop(record[INDEX])))
            if not job.remaining:
                del self.jobs[job_id]
            retried |= job.tasks.attempts is not None
            mine.append(record)
        if not mine:
            return
        attempts = None
        if retried:
            attempts = [0 if t.attempts is None else t.attempts[p] for t, p in where]
        self.measure_records(mine)
        self.measure_bytes(len(data), len(records), inputs=False)
        self.settle(mine, info, attempts, lambda i: where[i][0].task(where[i][1]))

    def forget_job(self, job: RQJob) -> list[int]:
        """Stop waiting for ``job``; the positions of its tasks that had no result."""
        self.jobs.pop(job.id, None)
        for index in job.remaining:
            if self.owner.get(index) == job.id:
                del self.owner[index]
        return job.unreported()

    # -- the end ----------------------------------------------------------------------

    def end(self) -> None:
        """However the run ends: cancel its jobs still queued, stop those running, and
        remove its keys (a worker finishing late then pushes nothing)."""
        if self.rq.detach and self.jobs:
            return  # the jobs run on; their results expire with the run's keys
        with contextlib.suppress(Exception):
            pipe = self.connection.pipeline(transaction=False)
            for job_id in self.jobs:
                pipe.lrem(self.queue.key, 0, job_id)
            removed = pipe.execute()
            pipe = self.connection.pipeline(transaction=False)
            taken = [job_id for job_id, count in zip(self.jobs, removed, strict=True) if not count]
            for job_id, count in zip(self.jobs, removed, strict=True):
                if count:  # never reached a worker: delete it outright
                    pipe.delete(Job.key_for(job_id))
            # A worker that still holds a job of the run (one taken, one given up for lost
            # whose worker may thaw) must not push once we are gone: the marker outlives
            # any late push. A run with neither leaves nothing behind.
            if taken or self.given_up:
                pipe.set(self.keys.ended, 1, ex=RUN_TTL)
            pipe.delete(self.keys.results, self.keys.caller)
            pipe.execute()
            running = set(StartedJobRegistry(queue=self.queue).get_job_ids()) & set(taken)
            for job_id in running:  # the worker ends it (RQ's stop-job command)
                with contextlib.suppress(Exception):
                    send_stop_job_command(self.connection, job_id)
