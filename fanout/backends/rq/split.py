"""A job that turns out slower than its size assumed gives back the tasks it has not
started, as new jobs of the same run at the front of the queue, so that idle workers
take them: the rq side of "no task waits while a worker that could run it is idle".

The caller sizes a job for about a second of work at the speed its tasks have shown so
far and says so in the job (``JobArgs.budget``). A worker whose job runs
``SPLIT_FACTOR`` times that (plus ``SPLIT_SLACK``) — slower tasks than measured, or a
slower host — or one of whose tasks runs far longer than a task of the job was
expected to (``STALL_FACTOR`` times, and ``STALL_SECONDS`` at least), takes back from
its task process every task that has not started
(``barrier.py``), and in one transaction enqueues them as new jobs (signed as the worker
signs, sized for the workers serving the queue) and pushes a message onto the run's
stream that says which tasks moved to which job, so that whoever drives or collects the
run looks for them there. The job itself ends once its running task does. A worker
killed before the transaction has moved nothing; after it, its job is lost with only
the tasks it kept.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rq import Queue, Worker
from rq.job import Job

from fanout._wire import Task
from fanout.backends.rq.fleet import live_workers
from fanout.backends.rq.protocol import (
    FAILURE_TTL,
    RESULT_TTL,
    RUN_BATCH,
    TARGET_JOB_SECONDS,
    JobArgs,
    Moves,
    text,
)
from fanout.backends.sizing import guided

if TYPE_CHECKING:
    from fanout.backends.rq.pusher import Pusher

SPLIT_FACTOR = 1.5
SPLIT_SLACK = 0.2  # seconds
STALL_FACTOR = 4.0
STALL_SECONDS = 0.1
PACE_CHECK_SECONDS = 0.05  # how often a job that may split looks at its pace
MAX_REFUSALS = 20  # give-backs of a job whose target a worker could not load, at most
REFUSED_PAUSE = 0.5  # a worker meeting again a job it refused waits this, doubling
MAX_REFUSED_PAUSE = 5.0


class Split:
    """One job's watch on its own pace, and its giving back."""

    def __init__(self, job: Job, args: JobArgs, positions: Sequence[int], pusher: Pusher) -> None:
        """``positions``: the positions in ``args`` of the tasks the job runs (those
        whose input it could read)."""
        self.job = job
        self.args = args
        self.positions = {args.indices[pos]: pos for pos in positions}  # index -> position
        self.pusher = pusher
        self.started = self.progressed = time.monotonic()
        budget = args.budget
        self.deadline: float | None = None  # when the whole job has overrun its budget
        self.stall = 0.0  # how long no result may come before a task counts as stuck
        if budget is not None and len(positions) > 1:
            self.deadline = self.started + SPLIT_FACTOR * budget + SPLIT_SLACK
            self.stall = max(STALL_SECONDS, STALL_FACTOR * budget / len(args.indices))
        self.given = 0  # tasks given back so far

    def progress(self) -> None:
        """A result came in."""
        self.progressed = time.monotonic()

    def due(self) -> bool:
        """Has the job overrun its budget, or a task of it stalled the rest, so that
        its rest should go back for other workers?"""
        if self.deadline is None:
            return False
        now = time.monotonic()
        return now >= self.deadline or now - self.progressed >= self.stall

    def give_back(self, tasks: list[Task], per_task: float | None) -> None:
        """Enqueue ``tasks`` (of the inner run) as new jobs; ``per_task``: seconds a task
        has taken here (None: none finished yet)."""
        self.deadline = None  # once: what is left runs here
        self.given += len(tasks)
        if not tasks:
            return
        # What a task of the rest will take is a guess: what tasks took here, else what
        # the caller measured (the one running now may be the one slow task of many).
        budget = self.args.budget or 0.0
        per = per_task or budget / len(self.args.indices) or time.monotonic() - self.started
        parts = self._parts(tasks, per)
        enqueue_jobs(self.job, self.pusher, [self._args(part, per) for part in parts])

    def _parts(self, tasks: list[Task], per: float) -> list[list[Task]]:
        """``tasks`` cut into jobs of about ``TARGET_JOB_SECONDS``, fewer tasks each near
        the end so that the workers serving the queue share them out."""
        connection = self.job.connection
        workers = Worker.count(
            connection=connection, queue=Queue(self.job.origin, connection=connection)
        )
        parts: list[list[Task]] = []
        left = len(tasks)
        start = 0
        while left:
            size = guided(max(1, int(TARGET_JOB_SECONDS / max(per, 1e-6))), 1, left, workers)
            parts.append(tasks[start : start + size])
            start += size
            left -= size
        return parts

    def _args(self, part: list[Task], per: float) -> JobArgs:
        """The arguments of a job of ``part``, its inputs as the caller sent them."""
        args = self.args
        positions = [self.positions[task.index] for task in part]
        wire = set(args.pickled)
        return JobArgs(
            args.run_id, args.target, args.star, args.timeout, args.retries,
            [args.indices[pos] for pos in positions],
            [args.items[pos] for pos in positions],
            [n for n, pos in enumerate(positions) if pos in wire],
            [task.attempts for task in part],
            per * len(part),
            trace=args.trace,
            limits=args.limits,
        )  # fmt: skip


def give_back_unloadable(job: Job, args: JobArgs, pusher: Pusher, worker: str,
                         pause: Callable[[float], None]) -> bool:  # fmt: skip
    """``worker`` cannot load the job's target (its code is older or newer than the
    caller's, its allowlist is narrower): give the whole job back, at the front of the
    queue, for a worker that can. False (the job's tasks then fail) once every worker
    serving the queue has refused it, or after ``MAX_REFUSALS`` give-backs. A worker
    that meets again a job it refused waits a little (``pause``, a doubling time) first,
    so that the others, busy, get a chance at it."""
    refused = (*args.refused, worker)
    connection = job.connection
    queue = Queue(job.origin, connection=connection)
    serving = live_workers(connection, queue)
    if serving <= set(refused) or len(refused) > MAX_REFUSALS:
        return False
    again = args.refused.count(worker)
    if again:
        pause(min(REFUSED_PAUSE * 2 ** (again - 1), MAX_REFUSED_PAUSE))
    enqueue_jobs(job, pusher, [args._replace(refused=refused)])
    return True


def enqueue_jobs(job: Job, pusher: Pusher, parts: list[JobArgs]) -> None:
    """Enqueue ``parts`` (each a new job's arguments) as jobs of ``job``'s run at the front
    of its queue, the first part first; and push, in the same transaction, the message
    that says which tasks moved to which job (whoever drives or collects the run waits
    for them there)."""
    connection = job.connection
    ttl = int(text(connection.hget(pusher.keys.meta, "result_ttl") or RESULT_TTL))
    moves: Moves = {}
    datas = []
    sizes: dict[Any, Any] = {}  # job name -> task count
    for args in parts:
        # A name of its own, not the caller's job counter: a failover that lost the
        # counter's last steps must not make two jobs of one id.
        name = f"s{uuid.uuid4().hex[:16]}"
        job_id = pusher.keys.job_id(name)
        moves[job_id] = (args.indices, list(args.attempts or [0] * len(args.indices)))
        sizes[name] = len(args.indices)
        datas.append(_job_data(job, job_id, name, args, ttl))
    queue = Queue(job.origin, connection=connection, serializer=job.serializer)
    pipe = connection.pipeline(transaction=True)
    queue.enqueue_many(list(reversed(datas)), pipeline=pipe)  # the first part first
    pipe.hset(pusher.keys.jobs, mapping=sizes)
    pipe.expire(pusher.keys.jobs, ttl)
    pusher.push_moves(moves, pipe)
    pipe.execute()


def _job_data(job: Job, job_id: str, name: str, args: JobArgs, ttl: int) -> Any:
    return Queue.prepare_data(
        RUN_BATCH,
        args=args.wire(),
        job_id=job_id,
        timeout=-1,  # per-task timeouts are fanout's, not RQ's job timeout
        ttl=ttl,
        result_ttl=0,
        failure_ttl=FAILURE_TTL,
        description=f"fanout run {args.run_id} job {name} ({len(args.indices)} tasks,"
        f" given back by job {job.id})",
        at_front=True,
    )
