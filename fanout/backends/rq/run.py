"""One run on RQ, the side that drives it: jobs enqueued ahead of the workers, results
read from the run's stream, and the run completed, cancelled or left going however its
caller ends. What to run and what counts is the shared RunState; what RQ did with the
jobs is watched in ``watch.py``; what lives in Redis is in ``protocol.py``.

Every result, also one the caller decides (an input that cannot be sent, a task lost
with its worker, a cancelled one), goes through the run's stream, so that whoever
collects the run later — the caller again, or ``fanout results`` on another machine —
sees exactly what the caller saw.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import signal
import time
import uuid
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import redis
from rq import Queue
from rq.job import Job

from fanout._proc import signals_deferred
from fanout._wire import INDEX, Task, TaskBatch
from fanout.backends.base import MapSpec
from fanout.backends.rq import control
from fanout.backends.rq.connection import Outage, RedisLost, mask_url, translate
from fanout.backends.rq.protocol import (
    CANCELLED,
    CANCELLED_TTL,
    ENDED_TTL,
    FAILURE_TTL,
    RECORD_SCRIPT,
    RUN_BATCH,
    JobArgs,
    Moves,
    RQJob,
    RunKeys,
    unpack_results,
)
from fanout.backends.rq.watch import JobWatch
from fanout.backends.runstate import ORDER_WINDOW, RunState
from fanout.backends.sizing import guided
from fanout.errors import BackendUnavailable, RunRemoved
from fanout.models import TaskError, TaskResult, WorkerInfo

if TYPE_CHECKING:
    from fanout.backends.rq.backend import RQBackend

log = logging.getLogger("fanout")

# About this much work per job: RQ's own bookkeeping costs a worker milliseconds per job,
# and a job is the unit a worker's end of the run waits for (benchmarks/scale.py).
TARGET_JOB_SECONDS = 1.0
MAX_JOB_TASKS = 5000
TAIL_SHRINK = 8  # a tail job holds at least 1/this of a full job's work (see guided())
MAX_JOB_BYTES = 1 << 20
WAIT_SECONDS = 1.0  # longest single blocking read; checks run between reads
READ_MESSAGES = 1000  # result messages taken in one round trip
MEASURING_SECONDS = 1.0  # how long a run waits for a measurement before it enqueues ahead
ENQUEUE_ROUND = 500  # jobs enqueued in one round at most (rounds stay short)


class RQRun(RunState):
    """One run on RQ: its jobs in flight, its keys, what the workers sent."""

    def __init__(
        self,
        backend: RQBackend,
        spec: MapSpec,
        run_id: str | None = None,
        ahead: float = 0,
        queue: Queue | None = None,
    ) -> None:
        """A new run on ``backend``'s queue, or (``run_id``) one that exists on ``queue``,
        the queue its record names."""
        super().__init__(spec, backend.name)
        assert spec.target is not None
        self.rq = backend
        self.connection = backend.connection
        self.queue = queue or backend.queue
        self.keys = RunKeys(run_id or uuid.uuid4().hex)
        self.ahead = ahead or backend.enqueue_ahead  # tasks enqueued ahead of the workers
        self.jobs: dict[str, RQJob] = {}
        self.owner: dict[int, str] = {}  # index -> id of the job that carries it
        self.seen = bytearray()  # bitmap of the indexes with a result
        self.cursor = "0-0"  # the last stream entry read
        self.refused = 0  # result messages whose signature did not hold
        self.given_up = False  # a job was taken for lost: its worker may yet push
        self.enqueued_all = False  # every input taken is in Redis
        self.jobs_made = 0  # the highest job number this run has used
        self.unsent: list[TaskBatch] = []  # batches taken from the input, not yet enqueued
        self.started = time.monotonic()
        self.outage = Outage(backend.url, backend.redis_wait)
        self.lease = control.Lease(self.connection, self.keys)
        self.seen_count = 0
        self.moved_to: dict[int, str] = {}  # index -> the job it was given back as (split.py)
        self.feeds = True  # this process enqueues the run's inputs (its caller)
        self.server: str | None = None  # the Redis process the run was made in
        self.watch = JobWatch(self)
        self.record_script = self.connection.register_script(RECORD_SCRIPT)

    def begin(self) -> None:
        """Make the run in Redis: its record, its lease, a first look at the workers.
        Apart from ``__init__``, so that whoever made the run holds it (and ends it)
        before anything in Redis can be left behind by a signal."""
        self.server = control.server_id(self.connection)
        control.create(self.connection, self.keys, self.spec, self.rq)
        self.rq.feeder.add(self.keys.feeder)  # until every input is enqueued
        self.lease.take()
        self.watch.check()

    @property
    def run_id(self) -> str:
        return self.keys.run_id

    # -- dispatch -------------------------------------------------------------------

    def batch_size(self) -> int:
        size = self.sized(TARGET_JOB_SECONDS, MAX_JOB_TASKS, MAX_JOB_BYTES)
        if self.per_task is None:
            return size
        # Near the end of an input of known length, jobs shrink so that the workers
        # finish together rather than some idle while others run a whole job.
        least = self.sized(TARGET_JOB_SECONDS / TAIL_SHRINK, MAX_JOB_TASKS, MAX_JOB_BYTES)
        left = operator.length_hint(self.source) + len(self.retry)
        return guided(size, least, left, self.watch.workers_seen)

    def window(self) -> int:
        return max(ORDER_WINDOW, int(min(self.ahead, 1e9)))

    def dispatch(self) -> None:
        """Until tasks are measured (at most ``MEASURING_SECONDS``), about two one-task
        jobs per serving worker; then jobs of measured size, up to ``ahead`` tasks
        enqueued and not yet reported, so that a run of that many inputs is wholly in
        Redis soon after it starts."""
        # SIGHUP leaves the run going (the CLI's handler raises wherever it lands): an
        # input taken from the iterator but not yet noted on the run would be lost.
        # Ctrl-C and SIGTERM cancel the run instead, and must reach a slow input's read.
        with signals_deferred({signal.SIGHUP}):
            self._dispatch()

    def _dispatch(self) -> None:
        measuring = self.per_task is None and time.monotonic() - self.started < MEASURING_SECONDS
        # Taken but not yet in Redis: kept on the run, so that a signal between taking and
        # enqueueing loses no task (the end sends or cancels them).
        batches = self.unsent
        if measuring:
            for _ in range(max(2, 2 * self.watch.workers_seen) - len(self.jobs) - len(batches)):
                if (batch := self.take_batch()) is None:
                    break
                batches.append(batch)
        else:
            room = self.ahead - len(self.owner) - sum(len(b) for b in batches)
            while room > 0 and len(batches) < ENQUEUE_ROUND:
                if (batch := self.take_batch()) is None:
                    break
                batches.append(batch)
                room -= len(batch)
        # The input's end is said with its last jobs, in the same transaction: a caller
        # that dies (or loses Redis) right after leaves no doubt that the run is whole.
        last = self.feeds and self.exhausted and not self.retry and not self.enqueued_all
        if batches:
            self.enqueue(batches, last)
            self.unsent = []
        elif last:
            # The total too: a halted run's inputs never enqueued have their results.
            record = {"enqueued_all": 1, "total": self.next_index}
            if not control.update(self.connection, self.keys, record):
                self.record_lost()  # made again with enqueued_all, or RunRemoved
            self.all_in()

    def all_in(self) -> None:
        """Every input is in Redis: this caller feeds the run no more."""
        self.enqueued_all = True
        self.rq.feeder.discard(self.keys.feeder)

    def enqueue(self, batches: list[TaskBatch], last: bool = False) -> None:
        """Enqueue ``batches`` as jobs; ``last``: the input has no more after them."""
        # Whole or not at all: jobs in Redis that this run does not know of (or the
        # other way round) would be cancelled, or waited for, by nobody.
        with signals_deferred():
            self._enqueue(batches, last)
        if last:
            self.all_in()

    def _enqueue(self, batches: list[TaskBatch], last: bool) -> None:
        spec = self.spec
        assert spec.target is not None
        made = control.count_jobs(self.connection, self.keys, len(batches))
        if made is None:  # the run is gone from Redis: never enqueue for a run not there
            self.record_lost()
            made = control.count_jobs(self.connection, self.keys, len(batches)) or 0
        if made - len(batches) < self.jobs_made:
            # A failover lost the counter's last steps: a job number is never used twice.
            made = self.jobs_made + len(batches)
            control.update(self.connection, self.keys, {"jobs": made})
        self.jobs_made = made
        datas: list[Any] = []
        sizes: dict[Any, Any] = {}  # job number -> task count
        for number, tasks in enumerate(batches, made - len(batches) + 1):
            job_id = self.keys.job_id(number)
            budget = None if self.per_task is None else self.per_task * len(tasks)
            args = JobArgs.of(self.run_id, spec.target, spec.star, spec.timeout, spec.retries,
                              tasks, budget)  # fmt: skip
            datas.append(
                Queue.prepare_data(
                    RUN_BATCH,
                    args=args.wire(),
                    job_id=job_id,
                    timeout=-1,  # per-task timeouts are fanout's, not RQ's job timeout
                    ttl=self.rq.result_ttl,  # a job nobody took by then is not run
                    result_ttl=0,  # results travel on the run's stream; keep nothing
                    failure_ttl=FAILURE_TTL,
                    description=f"fanout run {self.run_id} job {number} ({len(tasks)} tasks)",
                )
            )
            sizes[str(number)] = len(tasks)
            self.jobs[job_id] = RQJob(job_id, tasks)
            for index in tasks.indices:
                self.owner[index] = job_id
        pipe = self.connection.pipeline()
        self.queue.enqueue_many(datas, pipeline=pipe)
        pipe.hset(self.keys.jobs, mapping=sizes)
        record: list[Any] = ["total", self.next_index, *(["enqueued_all", 1] if last else [])]
        self.record_script(keys=[self.keys.meta], args=["set", *record], client=pipe)
        for key in (self.keys.jobs, self.keys.meta):  # the run lives result_ttl from now
            pipe.expire(key, self.rq.result_ttl)
        pipe.execute()

    def all_enqueued(self) -> bool:
        """Every input taken is in Redis (the run survives its caller whole)."""
        return self.exhausted and not self.retry and not self.unsent and self.enqueued_all

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

    def round(self, block: float = WAIT_SECONDS) -> None:
        self.dispatch()
        if self.ready or self.done():
            return
        read = self.read(block=block)
        self.watch.after_round(read)

    def pump(self, block: float) -> None:
        """``step`` for a driver thread, waiting at most ``block`` s for results."""
        try:
            with translate(self.rq.url):
                self.round(block)
        except RedisLost as exc:
            self.outage.hit(exc)
            return
        if self.outage.over():
            self.watch.check()

    def read(self, block: float | bool) -> bool:
        """Take the result messages pushed since the last read (waiting up to ``block``
        seconds for one; True: ``WAIT_SECONDS``); True if there were any."""
        seconds = WAIT_SECONDS if block is True else float(block)
        reply: Any = self.connection.xread(
            {self.keys.results: self.cursor},
            count=READ_MESSAGES,
            block=max(1, int(seconds * 1000)) if seconds > 0 else None,
        )
        if not reply:
            return False
        for entry_id, fields in reply[0][1]:
            self.cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            self.handle(fields[b"m"])
        return True

    def drain(self) -> None:
        """Take every result already pushed (before judging a failed or lost job)."""
        while self.read(block=False):
            pass

    def is_seen(self, index: int) -> bool:
        byte = index >> 3
        return byte < len(self.seen) and bool(self.seen[byte] & (1 << (index & 7)))

    def mark_seen(self, index: int) -> None:
        byte = index >> 3
        if byte >= len(self.seen):
            self.seen.extend(bytes(byte - len(self.seen) + 1024))
        self.seen[byte] |= 1 << (index & 7)
        self.seen_count += 1

    def observe(self) -> None:
        """At each check, whoever drives the run: what others changed of it (the
        caller changes it itself)."""

    def refresh(self) -> None:
        """Before each check of the run's jobs, by the process that drives it."""
        if not self.connection.exists(self.keys.meta):
            self.record_lost()

    def record_lost(self) -> None:
        """The run's record is gone while its caller runs it. Redis restarted (or failed
        over) without it: it is made again — or no worker would run a job of it, nor
        push a result. Else the run was removed (by a collector that took this caller
        for dead, an expiry, a hand): RunRemoved, rather than a run made again by halves
        (no state: every job dropped) and fed for ever."""
        server = control.server_id(self.connection)
        if server is None or server == self.server:
            raise RunRemoved(
                f"run {self.run_id} was removed from Redis at {mask_url(self.rq.url)} while"
                " this caller still ran it (a collector took it for dead, it expired, or it"
                " was deleted); its results so far were shown: run the rest again"
            )
        self.server = server
        control.create(self.connection, self.keys, self.spec, self.rq)
        record = {"total": self.next_index, "jobs": self.jobs_made,
                  "enqueued_all": int(self.enqueued_all)}  # fmt: skip
        control.update(self.connection, self.keys, record)
        log.warning("run %s: Redis had lost the run's record (it restarted); made again",
                    self.run_id)  # fmt: skip

    def handle(self, data: bytes) -> None:
        keyring = self.rq.keyring
        try:
            identity, records, attempts, moves = unpack_results(data, self.keys, keyring)
        except Exception as exc:
            if keyring is None:
                raise
            # Never unpickled unless signed for this run. Its tasks' real results
            # still count; a job that finishes without them is run again.
            self.refused += 1
            if self.refused == 1:
                log.warning("refused a result on %s: %s", self.keys.results, exc)
            return
        if moves:
            self.moved(moves)
        fresh, tries = [], []
        for i, record in enumerate(records):
            index = record[INDEX]
            if self.is_seen(index):
                continue  # each index once: a late duplicate of a settled task
            self.mark_seen(index)
            job_id = self.owner.pop(index, None)
            if job_id is not None:
                job = self.jobs[job_id]
                job.identity = identity
                job.remaining.pop(index, None)
                if not job.remaining:
                    del self.jobs[job_id]
            fresh.append(record)
            tries.append(1 if attempts is None else attempts[i])
        if not fresh:
            return
        self.measure_records(fresh)
        self.measure_bytes(len(data), len(records), inputs=False)
        info = WorkerInfo(*identity, self.rq.name)
        self.finish_records(fresh, info, None if attempts is None else tries)

    def moved(self, moves: Moves) -> None:
        """Tasks a job gave back as new jobs (split.py): they are waited for there."""
        for job_id, (indices, attempts) in moves.items():
            known = self.jobs.get(job_id)  # a collector may have read it from Redis
            tasks: list[Task] = []
            for index, tries in zip(indices, attempts, strict=True):
                self.moved_to[index] = job_id
                if self.is_seen(index) or self.owner.get(index) == job_id:
                    continue
                if known is not None and index not in known.remaining:
                    continue  # it moved on again since: keep it where it is
                old = self.jobs.get(self.owner.get(index, ""))
                if old is not None and index in old.remaining:
                    task = old.tasks.task(old.remaining.pop(index))
                    if not old.remaining:
                        del self.jobs[old.id]
                    tasks.append(Task(index, task.item, task.pickled, tries))
                if known is not None:
                    self.owner[index] = job_id
            if tasks and known is None:
                pickled = [n for n, task in enumerate(tasks) if task.pickled]
                batch = TaskBatch([t.index for t in tasks], [t.item for t in tasks], pickled,
                                  [t.attempts for t in tasks])  # fmt: skip
                self.jobs[job_id] = RQJob(job_id, batch)
                self.owner.update((task.index, job_id) for task in tasks)

    def forget_job(self, job: RQJob) -> list[int]:
        """Stop waiting for ``job``; the positions of its tasks that had no result (and
        that it did not give back as another job)."""
        self.jobs.pop(job.id, None)
        for index in job.remaining:
            if self.owner.get(index) == job.id:
                del self.owner[index]
        return [
            pos
            for index, pos in sorted(job.remaining.items(), key=lambda item: item[1])
            if self.moved_to.get(index, job.id) == job.id
        ]

    def cancel_tasks(self, indices: list[int]) -> set[int]:
        """Cancel those of ``indices`` whose job is still queued (no worker took it): the
        job leaves the queue, its other tasks go again in a new one."""
        wanted = set(indices)
        cancelled = {task.index for task in self.retry if task.index in wanted}
        if cancelled:  # back from a job cancelled before: not queued again yet
            self.retry = deque(task for task in self.retry if task.index not in cancelled)
        jobs = {self.owner[i] for i in wanted if i in self.owner} & set(self.jobs)
        order = sorted(jobs)
        pipe = self.connection.pipeline(transaction=False)
        for job_id in order:
            pipe.lrem(self.queue.key, 0, job_id)
        for job_id, removed in zip(order, pipe.execute(), strict=True):
            if not removed:
                continue  # a worker has dequeued it: its tasks count as running
            self.connection.delete(Job.key_for(job_id))
            job = self.jobs[job_id]
            tasks = [job.tasks.task(pos) for pos in self.forget_job(job)]
            cancelled.update(task.index for task in tasks if task.index in wanted)
            self.requeue(task for task in tasks if task.index not in wanted)
        error = TaskError(CANCELLED, "cancelled before a worker took it")
        for index in sorted(cancelled):
            self.fail_in_caller(index, error)
        return cancelled

    def halt(self) -> None:
        """max_failures reached: as RunState halts, and the jobs still queued are
        cancelled; workers cancel a job of the run they take after this."""
        super().halt()
        control.cancel_queued(self.rq, self.keys, self, state="halted")

    # -- results the caller decides: through the stream like any other ----------------

    def finish(self, result: TaskResult) -> None:
        """A result decided here (a task lost with its worker, a cancelled one): pushed
        onto the run's stream, where every collector reads it, this one included."""
        self.publish([result])

    def fail_in_caller(self, index: int, error: Any, attempts: int = 0) -> None:
        now = time.time()
        info = self.not_run_info or WorkerInfo.not_run(self.backend)
        self.not_run_info = info
        self.publish([TaskResult(index, False, None, error, info, attempts, now, now, 0.0)])

    def fail_many_in_caller(self, indices: Iterable[int], error: TaskError) -> None:
        now = time.time()
        info = self.not_run_info or WorkerInfo.not_run(self.backend)
        self.not_run_info = info
        results = [TaskResult(i, False, None, error, info, 0, now, now, 0.0) for i in indices]
        for start in range(0, len(results), 1000):
            self.publish(results[start : start + 1000])

    def publish(self, results: list[TaskResult]) -> None:
        control.publish(self.connection, self.keys, self.rq.keyring, results)

    # -- the end ----------------------------------------------------------------------

    def enqueue_the_rest(self) -> None:
        """Leaving the run to go on without us (SIGHUP, detach): enqueue the inputs still
        to come, up to ``ahead``, so that what goes on is as much of the run as can."""
        self.started -= MEASURING_SECONDS  # no more waiting for a measurement
        while not self.all_enqueued() and len(self.owner) < self.ahead:
            jobs = len(self.jobs)
            self.dispatch()
            if len(self.jobs) == jobs:
                break

    def expire_jobs(self, ttl: int) -> None:
        """Jobs a worker took have no expiry in RQ while they run: give them ``ttl``, so
        that one whose worker dies (or cannot finish it: Redis full) does not stay."""
        if self.jobs:
            pipe = self.connection.pipeline(transaction=False)
            for job_id in self.jobs:
                pipe.expire(Job.key_for(job_id), ttl)
            pipe.execute()

    def end(self) -> None:
        """However the map ends: a complete run's data is removed (a completed
        collection), an unfinished one is cancelled (Ctrl-C) or, with ``detach``, left
        going, collectable by its id. A cancelled run's results are kept for collection
        (an hour) only if its id was handed out (``Fanout.run_id``, which ``fanout run``
        prints): nobody else can collect them, so they are dropped at once."""
        try:
            if self.done():
                self.expire_jobs(self.rq.result_ttl)
                if not self.rq.keep:
                    control.remove(self.connection, self.keys)
            elif self.rq.detach_runs:
                self.expire_jobs(self.rq.result_ttl)
                self.enqueue_the_rest()
            else:
                keep = CANCELLED_TTL if self.rq.handed_out(self.run_id) else 0
                self.expire_jobs(keep or ENDED_TTL)
                control.cancel(self.rq, self.keys, self, keep=keep)
        except (BackendUnavailable, redis.RedisError, OSError):
            pass  # Redis lost or full: the error that ended the run says so already
        except Exception as exc:  # the run's end must not hide why it ended
            log.warning("run %s: could not finish it in Redis: %s", self.run_id, exc)
        finally:
            self.rq.feeder.discard(self.keys.feeder)
            with contextlib.suppress(Exception):  # no more inputs from this caller
                self.connection.delete(self.keys.feeder)
            self.lease.release()
