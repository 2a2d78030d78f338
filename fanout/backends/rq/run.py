"""One run on RQ, the side that drives it: jobs enqueued ahead of the workers, results
read from the run's stream, what RQ did with the jobs acted on, and the run completed,
cancelled or left going however its caller ends.

One loop drives a run, whoever drives it — a map, a drop-in's driver thread, a
``submit``, a collector: :meth:`RQRun.advance` (or, for several runs sharing one
blocking read, its two halves :meth:`RQRun.prepare` and :meth:`RQRun.take`). What to
run and what counts is the shared RunState; what became of each job the watch decides
(``watch.py``) and the run acts on (:meth:`RQRun.apply`); what lives in Redis its
record owns (``record.py``). A run gets its settings (``settings.py``), never the
backend.

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
from typing import Any

import redis
from rq import Queue

from fanout._proc import signals_deferred
from fanout._wire import INDEX, Task, TaskBatch
from fanout.backends.base import MapSpec
from fanout.backends.rq.connection import Outage, RedisLost, mask_url, translate
from fanout.backends.rq.protocol import (
    CANCELLED_TTL,
    ENDED_TTL,
    FAILURE_TTL,
    RUN_BATCH,
    TARGET_JOB_SECONDS,
    JobArgs,
    Moves,
    RQJob,
    limits_of,
    unpack_results,
)
from fanout.backends.rq.record import PUBLISH_PART, RunRecord, server_id
from fanout.backends.rq.settings import RunSettings
from fanout.backends.rq.watch import (
    Canceled,
    FailedAround,
    JobWatch,
    Lost,
    Refused,
    Stopped,
    Verdict,
)
from fanout.backends.runstate import ORDER_WINDOW, RunState
from fanout.backends.sizing import guided
from fanout.errors import BackendUnavailable, RunRemoved
from fanout.models import TaskResult, WorkerInfo, cancelled, decided_now

log = logging.getLogger("fanout")

# About this much work per job: RQ's own bookkeeping costs a worker milliseconds per job,
# and a job is the unit a worker's end of the run waits for (benchmarks/scale.py).
MAX_JOB_TASKS = 5000
TAIL_SHRINK = 8  # a tail job holds at least 1/this of a full job's work (see guided())
MAX_JOB_BYTES = 1 << 20
WAIT_SECONDS = 1.0  # longest single blocking read of a map: checks run between reads
READ_MESSAGES = 1000  # result messages taken in one round trip
MEASURING_SECONDS = 1.0  # how long a run waits for a measurement before it enqueues ahead
ENQUEUE_ROUND = 500  # jobs enqueued in one round at most (rounds stay short)

Entries = list[tuple[Any, dict[bytes, bytes]]]  # a stream's (entry id, fields), as read


class RQRun(RunState):
    """One run on RQ: its jobs in flight, its record, what the workers sent."""

    def __init__(
        self,
        settings: RunSettings,
        spec: MapSpec,
        record: RunRecord | None = None,
        ahead: float = 0,
    ) -> None:
        """A new run, or (``record``) one that exists in Redis; ``ahead``: tasks enqueued
        ahead of the workers (default ``settings.enqueue_ahead``)."""
        super().__init__(spec, settings.backend)
        assert spec.target is not None
        self.settings = settings
        self.connection = settings.connection
        self.queue = settings.queue
        self.record = record or RunRecord(settings, uuid.uuid4().hex)
        self.keys = self.record.keys
        self.ahead = ahead or settings.enqueue_ahead
        self.jobs: dict[str, RQJob] = {}
        self.owner: dict[int, str] = {}  # index -> id of the job that carries it
        self.seen = bytearray()  # bitmap of the indexes with a result
        self.seen_count = 0
        self.cursor = "0-0"  # the last stream entry read
        self.refused_messages = 0  # result messages whose signature did not hold
        self.enqueued_all = False  # every input taken is in Redis
        self.jobs_made = 0  # the highest job number this run has used
        self.unsent: list[TaskBatch] = []  # batches taken from the input, not yet enqueued
        self.started = time.monotonic()
        self.outage = Outage(settings.url, settings.redis_wait)
        self.lease = self.record.lease()
        self.moved_to: dict[int, str] = {}  # index -> the job it was given back as (split.py)
        self.feeds = True  # this process enqueues the run's inputs (its caller)
        self.server: str | None = None  # the Redis process the run was made in
        self.watch = JobWatch(settings, self.keys)

    def begin(self) -> None:
        """Make the run in Redis: its record, its lease, a first look at the workers.
        Apart from ``__init__``, so that whoever made the run holds it (and ends it)
        before anything in Redis can be left behind by a signal."""
        self.server = server_id(self.connection)
        self.record.create(self.spec)
        self.settings.feeder.add(self.keys.feeder)  # until every input is enqueued
        self.lease.take()
        self.check()

    @property
    def run_id(self) -> str:
        return self.keys.run_id

    # -- the loop -----------------------------------------------------------------------

    def advance(self, block: float = WAIT_SECONDS) -> None:
        """One round of the run: send what can go, take the results that came (waiting
        up to ``block`` seconds for one), and every ``CHECK_SECONDS`` look at what RQ did
        with the jobs. A lost Redis is waited for (``redis_wait``), reconnecting; once it
        is back, the jobs are checked at once (a restarted Redis may have forgotten
        them)."""
        try:
            with translate(self.settings.url):
                if self.prepare():
                    self.take(self.read(block))
                if self.outage.over():
                    self.check()
        except RedisLost as exc:
            self.outage.hit(exc)

    def prepare(self) -> bool:
        """The first half of a round: send what can go, check if it is time; True if the
        run waits for results (nothing is ready to hand on yet)."""
        self.dispatch()
        if self.watch.due():
            self.check()
        return not (self.ready or self.done())

    def read(self, block: float) -> Entries:
        """The result messages pushed since the last read, waiting up to ``block``
        seconds for one (0: not at all)."""
        reply: Any = self.connection.xread(
            {self.keys.results: self.cursor},
            count=READ_MESSAGES,
            block=max(1, int(block * 1000)) if block > 0 else None,
        )
        entries: Entries = reply[0][1] if reply else []
        return entries

    def take(self, entries: Entries) -> None:
        """The second half of a round: the result messages read from the run's stream."""
        for entry_id, fields in entries:
            self.cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            self.handle(fields[b"m"])
        if entries:
            self.watch.progressed()

    def drain(self) -> None:
        """Take every result already pushed (before acting on what became of a job)."""
        while entries := self.read(0):
            self.take(entries)

    def check(self) -> None:
        """What RQ did with the run's jobs, as whoever drives the run sees it (the lease
        says who): the watch decides, this run acts."""
        self.watch.check_memory()
        self.observe()
        if not self.lease.take():
            self.watch.wait_a_round()
            return  # another process drives the run: this one only reads
        self.refresh()
        verdicts = self.watch.check(self.jobs)
        if verdicts:
            self.drain()  # what a job pushed before its end still counts
            for verdict in verdicts:
                self.apply(verdict)

    def observe(self) -> None:
        """At each check, whoever drives the run: what others changed of it (the
        caller changes it itself)."""

    def refresh(self) -> None:
        """Before each check of the run's jobs, by the process that drives it."""
        if not self.record.exists():
            self.record_lost()

    # -- dispatch -----------------------------------------------------------------------

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
            if not self.record.update({"enqueued_all": 1, "total": self.next_index}):
                self.record_lost()  # made again with enqueued_all, or RunRemoved
            self.all_in()

    def all_in(self) -> None:
        """Every input is in Redis: this caller feeds the run no more."""
        self.enqueued_all = True
        self.settings.feeder.discard(self.keys.feeder)

    def enqueue(self, batches: list[TaskBatch], last: bool = False) -> None:
        """Enqueue ``batches`` as jobs; ``last``: the input has no more after them."""
        # Whole or not at all: jobs in Redis that this run does not know of (or the
        # other way round) would be cancelled, or waited for, by nobody.
        with signals_deferred():
            self._enqueue(batches, last)
        if last:
            self.all_in()

    def _enqueue(self, batches: list[TaskBatch], last: bool) -> None:
        made = self._number(len(batches))
        datas: list[Any] = []
        sizes: dict[Any, Any] = {}  # job number -> task count
        for number, tasks in enumerate(batches, made - len(batches) + 1):
            job_id = self.keys.job_id(number)
            datas.append(self._job_data(job_id, number, tasks))
            sizes[str(number)] = len(tasks)
            self.jobs[job_id] = RQJob(job_id, tasks)
            for index in tasks.indices:
                self.owner[index] = job_id
        pipe = self.connection.pipeline()
        self.queue.enqueue_many(datas, pipeline=pipe)
        pipe.hset(self.keys.jobs, mapping=sizes)
        record: dict[str, Any] = {"total": self.next_index, **({"enqueued_all": 1} if last else {})}
        self.record.update(record, client=pipe)
        for key in (self.keys.jobs, self.keys.meta):  # the run lives result_ttl from now
            pipe.expire(key, self.settings.result_ttl)
        pipe.execute()

    def _number(self, count: int) -> int:
        """Count ``count`` more jobs of the run: the number of the last."""
        made = self.record.count_jobs(count)
        if made is None:  # the run is gone from Redis: never enqueue for a run not there
            self.record_lost()
            made = self.record.count_jobs(count) or 0
        if made - count < self.jobs_made:
            # A failover lost the counter's last steps: a job number is never used twice.
            made = self.jobs_made + count
            self.record.update({"jobs": made})
        self.jobs_made = made
        return made

    def _job_data(self, job_id: str, number: int, tasks: TaskBatch) -> Any:
        spec = self.spec
        assert spec.target is not None
        budget = None if self.per_task is None else self.per_task * len(tasks)
        trace = None if spec.trace is None else dict(spec.trace)
        args = JobArgs.of(self.run_id, spec.target, spec.star, spec.timeout, spec.retries,
                          tasks, budget, trace, limits_of(spec))  # fmt: skip
        return Queue.prepare_data(
            RUN_BATCH,
            args=args.wire(),
            job_id=job_id,
            timeout=-1,  # per-task timeouts are fanout's, not RQ's job timeout
            ttl=self.settings.result_ttl,  # a job nobody took by then is not run
            result_ttl=0,  # results travel on the run's stream; keep nothing
            failure_ttl=FAILURE_TTL,
            description=f"fanout run {self.run_id} job {number} ({len(tasks)} tasks)",
        )

    def all_enqueued(self) -> bool:
        """Every input taken is in Redis (the run survives its caller whole)."""
        return self.exhausted and not self.retry and not self.unsent and self.enqueued_all

    def record_lost(self) -> None:
        """The run's record is gone while its caller runs it. Redis restarted (or failed
        over) without it: it is made again — or no worker would run a job of it, nor
        push a result. Else the run was removed (by a collector that took this caller
        for dead, an expiry, a hand): RunRemoved, rather than a run made again by halves
        (no state: every job dropped) and fed for ever."""
        server = server_id(self.connection)
        if server is None or server == self.server:
            raise RunRemoved(
                f"run {self.run_id} was removed from Redis at {mask_url(self.settings.url)}"
                " while this caller still ran it (a collector took it for dead, it expired,"
                " or it was deleted); its results so far were shown: run the rest again"
            )
        self.server = server
        self.record.create(self.spec)
        self.record.update({"total": self.next_index, "jobs": self.jobs_made,
                            "enqueued_all": int(self.enqueued_all)})  # fmt: skip
        log.warning("run %s: Redis had lost the run's record (it restarted); made again",
                    self.run_id)  # fmt: skip

    # -- results ------------------------------------------------------------------------

    def is_seen(self, index: int) -> bool:
        byte = index >> 3
        return byte < len(self.seen) and bool(self.seen[byte] & (1 << (index & 7)))

    def mark_seen(self, index: int) -> None:
        byte = index >> 3
        if byte >= len(self.seen):
            self.seen.extend(bytes(byte - len(self.seen) + 1024))
        self.seen[byte] |= 1 << (index & 7)
        self.seen_count += 1

    def handle(self, data: bytes) -> None:
        """One result message of the run's stream: each index's first result counts."""
        keyring = self.settings.keyring
        try:
            identity, records, prior, moves = unpack_results(data, self.keys, keyring)
        except Exception as exc:
            if keyring is None:
                raise
            # Never unpickled unless signed for this run. Its tasks' real results
            # still count; a job that finishes without them is run again.
            self.refused_messages += 1
            if self.refused_messages == 1:
                log.warning("refused a result on %s: %s", self.keys.results, exc)
            return
        if moves:
            self.moved(moves)
        fresh, before = [], []
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
            before.append(0 if prior is None else prior[i])
        if not fresh:
            return
        self.measure_records(fresh)
        self.measure_bytes(len(data), len(records), inputs=False)
        info = WorkerInfo(*identity, self.settings.backend)
        self.settle(fresh, info, None if prior is None else before)  # final: no task_of

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

    def forget_job(self, job: RQJob) -> list[Task]:
        """Stop waiting for ``job``; its tasks that had no result (and that it did not
        give back as another job), in order."""
        self.jobs.pop(job.id, None)
        for index in job.remaining:
            if self.owner.get(index) == job.id:
                del self.owner[index]
        return [
            job.tasks.task(pos)
            for index, pos in sorted(job.remaining.items(), key=lambda item: item[1])
            if self.moved_to.get(index, job.id) == job.id
        ]

    # -- what became of a job: the watch's verdicts, acted on -------------------------

    def apply(self, verdict: Verdict) -> None:
        """Act on what became of a job (a job whose results have all come meanwhile
        needs nothing)."""
        job = self.jobs.get(verdict.job_id)
        if job is None:
            return
        tasks = self.forget_job(job)
        if isinstance(verdict, Lost):
            self.lose(tasks, verdict)
        elif isinstance(verdict, Stopped | Canceled | Refused):
            if isinstance(verdict, Refused):
                self.break_target(verdict.error)  # every job of the run would be refused
            for task in tasks:
                self.fail_in_caller(task.index, verdict.error, task.attempts)
        elif isinstance(verdict, FailedAround):
            # Again, but not for ever: a task that keeps failing this way is charged.
            again = []
            for task in tasks:
                if self.suspect(task.index):
                    self.fail_in_caller(task.index, verdict.error, task.attempts)
                else:
                    again.append(task)
            self.requeue(again)
        else:  # Vanished, Orphaned: no task of it runs, none was charged
            self.requeue(tasks)

    def lose(self, tasks: list[Task], verdict: Lost) -> None:
        """A job's process died: its first task without a result was running (an
        attempt, retried while ``retries`` allow); the others run again for free."""
        if not tasks:
            return
        first = tasks[0]
        result = decided_now(first.index, verdict.error(first.index), verdict.who,
                             first.attempts + 1)  # fmt: skip
        self.requeue(tasks[1:])
        self.failed_attempt(first, result, decided=True)

    def cancel_tasks(self, indices: list[int]) -> set[int]:
        """Cancel those of ``indices`` whose job is still queued (no worker took it): the
        job leaves the queue, its other tasks go again in a new one."""
        wanted = set(indices)
        gone = {task.index for task in self.retry if task.index in wanted}
        if gone:  # back from a job cancelled before: not queued again yet
            kept = [task for task in self.retry if task.index not in gone]
            self.retry.clear()
            self.retry.extend(kept)
        jobs = sorted({self.owner[i] for i in wanted if i in self.owner} & set(self.jobs))
        removed = self.record.dequeue(jobs, self.queue.key)
        self.record.drop_jobs(removed)
        for job_id in removed:
            tasks = self.forget_job(self.jobs[job_id])
            gone.update(task.index for task in tasks if task.index in wanted)
            self.requeue(task for task in tasks if task.index not in wanted)
        error = cancelled("cancelled before a worker took it")
        for index in sorted(gone):
            self.fail_in_caller(index, error)
        return gone

    def halt(self) -> None:
        """max_failures reached: as RunState halts, and the jobs still queued are
        cancelled; workers cancel a job of the run they take after this."""
        super().halt()
        self.cancel_queued("halted")

    def cancel_queued(self, state: str) -> None:
        """Set the run's state, take its jobs out of the queue, and cancel their tasks
        and those the caller had yet to send (each its result: Cancelled)."""
        self.record.update({"state": state, "total": self.next_index})
        tasks: list[Task] = []
        removed = self.record.dequeue(list(self.jobs), self.queue.key)
        self.record.drop_jobs(removed)
        for job_id in removed:
            tasks += self.forget_job(self.jobs[job_id])
        indices = [task.index for task in tasks] + [task.index for task in self.retry]
        indices += [index for batch in self.unsent for index in batch.indices]
        self.retry.clear()
        self.unsent = []
        why = "the run was cancelled" if state == "cancelled" else "the run stopped (max_failures)"
        self.record.publish_cancelled(indices, f"{why} before a worker took the task")

    # -- results the caller decides: through the stream like any other ----------------

    def decided(self, results: list[TaskResult]) -> None:
        """Results decided here (a task lost with its worker, a cancelled one): pushed
        onto the run's stream, where every collector reads them, this one included."""
        for start in range(0, len(results), PUBLISH_PART):
            self.record.publish(results[start : start + PUBLISH_PART])

    # -- the end ------------------------------------------------------------------------

    def enqueue_the_rest(self) -> None:
        """Leaving the run to go on without us (SIGHUP, detach): enqueue the inputs still
        to come, up to ``ahead``, so that what goes on is as much of the run as can."""
        self.started -= MEASURING_SECONDS  # no more waiting for a measurement
        while not self.all_enqueued() and len(self.owner) < self.ahead:
            jobs = len(self.jobs)
            self.dispatch()
            if len(self.jobs) == jobs:
                break

    def end(self, detach: bool = False, collectable: bool = False) -> None:
        """However the map ends: a complete run's data is removed (a completed
        collection), an unfinished one is cancelled (Ctrl-C) or, with ``detach``, left
        going, collectable by its id. A cancelled run's results are kept for collection
        (an hour) only if its id was handed out (``collectable``: ``Fanout.run_id``,
        which ``fanout run`` prints): nobody else can collect them, so they are dropped
        at once."""
        record, ttl = self.record, self.settings.result_ttl
        try:
            if self.done():
                record.expire_jobs(self.jobs, ttl)
                if not self.settings.keep:
                    record.remove()
            elif detach:
                record.expire_jobs(self.jobs, ttl)
                self.enqueue_the_rest()
            else:
                keep = CANCELLED_TTL if collectable else 0
                record.expire_jobs(self.jobs, keep or ENDED_TTL)
                self.cancel_queued("cancelled")
                record.stop_running()
                record.shorten(keep)
        except (BackendUnavailable, redis.RedisError, OSError):
            pass  # Redis lost or full: the error that ended the run says so already
        except Exception as exc:  # the run's end must not hide why it ended
            log.warning("run %s: could not finish it in Redis: %s", self.run_id, exc)
        finally:
            self.settings.feeder.discard(self.keys.feeder)
            with contextlib.suppress(Exception):  # no more inputs from this caller
                self.connection.delete(self.keys.feeder)
            self.lease.release()
