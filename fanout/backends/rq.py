"""RQ backend: the same task functions as plain RQ jobs on Redis, run by RQ workers.

Data flow::

    caller (map generator)                    Redis                     RQ workers
      | batches of tasks --enqueue_many--> rq:queue:<name> --dequeue--> run_batch(...)
      |                                                                    | runs tasks
      | <---------- BLPOP / LPOP ------- fanout:run:<id>:results <-- RPUSH records
      | every few seconds: FailedJobRegistry, worker count

One RQ job carries a batch of tasks: one task per job until durations are measured,
then batches of about ``TARGET_JOB_SECONDS`` of work, so trivial tasks do not pay RQ's
per-job cost each while slow ones still spread over every worker. Results come back on
a per-run list that the caller waits on with a blocking pop: no polling of jobs. A job
that fails as a whole (its work-horse killed, its target not importable on the worker)
is found in RQ's FailedJobRegistry; its tasks without a result are then reported or
enqueued again. The caller knows what it submitted, so every task gets one result.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterator
from typing import Any

from fanout import _task
from fanout.backends._runstate import RunState
from fanout.backends.base import Backend, MapSpec
from fanout.errors import (
    BackendUnavailable,
    FanoutError,
    SignatureError,
    TargetError,
    WorkerLost,
)
from fanout.models import TaskError, TaskResult, WorkerInfo, make_result
from fanout.redisconn import connect, mask_url, redis_url, scrub
from fanout.signing import load_keyring, secret_env, serializer_for

log = logging.getLogger("fanout")

DEFAULT_QUEUE = "fanout"
TARGET_JOB_SECONDS = 0.1
MAX_JOB_TASKS = 5000
MAX_JOB_BYTES = 1 << 20
WAIT_SECONDS = 1.0  # longest single blocking pop; checks run between pops
CHECK_SECONDS = 2.0  # how often the caller looks at RQ's registries and workers
FAILURE_TTL = 3600  # failed fanout jobs stay visible in RQ this long
RUN_TTL = 3600  # a run's keys outlive a caller that vanished this long
MAX_JOB_FAILURES = 3  # a task in this many jobs that failed as a whole fails too
WORKER_START_SECONDS = 30.0

Task = tuple[int, Any, bool]  # (index, input as sent, input is its own pickle)


class RQBackend(Backend):
    """Tasks as RQ jobs on ``queue`` at ``redis_url``; ``workers=N`` starts N local
    ``fanout worker`` processes for the Fanout's lifetime (default 0: use the workers
    already serving the queue).

    ``warn_after``: seconds without a serving worker before a warning; ``give_up_after``:
    before BackendUnavailable (None: wait). ``dead_after``: seconds of silence after
    which a fanout worker is taken for dead and its tasks run elsewhere.
    ``redis_wait``: how long to keep reconnecting to a lost Redis. ``detach``: leave the
    run's jobs queued and running when the map ends early (Ctrl-C), instead of
    cancelling them. ``secret`` or ``secret_file`` (default: ``$FANOUT_SECRET_FILE``,
    ``$FANOUT_SECRET``): sign every job and accept only results signed with it."""

    name = "rq"
    needs_importable_target = True

    def __init__(
        self,
        workers: int | None = None,
        redis_url: str | None = None,
        queue: str | None = None,
        warn_after: float = 10.0,
        give_up_after: float | None = None,
        dead_after: float = 30.0,
        redis_wait: float = 30.0,
        detach: bool = False,
        secret: str | None = None,
        secret_file: str | None = None,
    ) -> None:
        from rq import Queue

        self.keyring = load_keyring(secret, secret_file)  # a bad secret fails before Redis
        self.secret_env = secret_env(secret, secret_file)
        self.serializer = serializer_for(self.keyring)
        self.url = _resolve_url(redis_url)
        self.connection = connect(self.url)
        self.queue = Queue(
            queue or DEFAULT_QUEUE, connection=self.connection, serializer=self.serializer
        )
        self.workers = workers or 0
        self.warn_after = warn_after
        self.give_up_after = give_up_after
        self.dead_after = dead_after
        self.redis_wait = redis_wait
        self.detach = detach
        self._local: list[subprocess.Popen[bytes]] = []
        self._local_names: set[str] = set()
        self._active: _RQRun | None = None
        if self.workers:
            self._start_local_workers(self.workers)

    def map(self, spec: MapSpec) -> Iterator[TaskResult]:
        if self._active is not None and not self._active.finished:
            raise RuntimeError(
                "another map() on this Fanout is still running: consume or close it first"
            )
        with _translate(self.url):
            run = _RQRun(self, spec)
        self._active = run
        return run.results(run.step, run.end)

    def close(self, cancel: bool = False) -> None:
        self._stop_local_workers()
        self.connection.close()

    def _start_local_workers(self, count: int) -> None:
        from rq import Worker

        prefix = f"fanout-{socket.gethostname()}-{os.getpid()}"
        names = [f"{prefix}-{i}" for i in range(1, count + 1)]
        self._local_names = set(names)
        # Not argv: ps would show them.
        env = dict(os.environ, FANOUT_REDIS_URL=self.url, **self.secret_env)
        for name in names:
            self._local.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "fanout",
                        "worker",
                        "--queue",
                        self.queue.name,
                        "--name",
                        name,
                    ],
                    env=env,
                    stdout=sys.stderr.fileno(),
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_terminate_with_parent,
                )
            )
        deadline = time.monotonic() + WORKER_START_SECONDS
        while True:
            ready = {w.name for w in Worker.all(connection=self.connection, queue=self.queue)}
            if set(names) <= ready:
                return
            dead = [p for p in self._local if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                self._stop_local_workers()
                why = "exited" if dead else f"did not register within {WORKER_START_SECONDS} s"
                raise BackendUnavailable(f"a local fanout worker {why}; see its message above")
            time.sleep(0.05)

    def _stop_local_workers(self) -> None:
        """SIGTERM (RQ's warm shutdown), again (cold), then SIGKILL; a worker killed
        that way cannot unregister, so its RQ registration is removed here."""
        from rq import Worker

        for signum, grace in ((signal.SIGTERM, 3.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            alive = [p for p in self._local if p.poll() is None]
            for process in alive:
                process.send_signal(signum)
            deadline = time.monotonic() + grace
            for process in alive:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(max(0.0, deadline - time.monotonic()))
            if signum == signal.SIGKILL and alive:
                with contextlib.suppress(Exception):
                    for worker in Worker.all(connection=self.connection, queue=self.queue):
                        if worker.name in self._local_names:
                            worker.register_death()  # type: ignore[no-untyped-call]
        self._local = []


class _Job:
    __slots__ = ("id", "remaining", "tasks")

    def __init__(self, job_id: str, tasks: list[Task]) -> None:
        self.id = job_id
        self.tasks = tasks
        self.remaining = {task[0] for task in tasks}


class _RQRun(RunState):
    """One map() call on RQ: jobs in flight, results list, measurements."""

    def __init__(self, backend: RQBackend, spec: MapSpec) -> None:
        super().__init__(spec, RQBackend.name)
        assert spec.target is not None
        self.rq = backend
        self.connection = backend.connection
        self.queue = backend.queue
        self.run_id = uuid.uuid4().hex
        self.key = f"fanout:run:{self.run_id}:results"
        # Set when the run ends: workers finishing late then push nothing.
        self.ended = f"fanout:run:{self.run_id}:ended"
        self.jobs: dict[str, _Job] = {}
        self.owner: dict[int, str] = {}  # index -> id of the job that carries it
        self.retry: deque[Task] = deque()
        self.lost: dict[int, int] = {}  # index -> whole-job losses while it ran
        self.job_failures: dict[int, int] = {}  # index -> failed jobs that carried it
        self.job_count = 0
        self.workers_seen = 0
        self.last_check = 0.0
        self.last_progress = time.monotonic()
        self.warned = False
        self.broken: tuple[str, str, str] | None = None  # workers cannot import the target
        self.refused = 0  # result messages whose signature did not hold
        self.down_since: float | None = None  # Redis unreachable since
        self.backoff = 0.1
        self.check()

    # -- dispatch -------------------------------------------------------------------

    def batch_size(self) -> int:
        return self.sized(TARGET_JOB_SECONDS, MAX_JOB_TASKS, MAX_JOB_BYTES)

    def window(self) -> int:
        return max(10_000, 4 * max(1, self.workers_seen) * self.batch_size())

    def dispatch(self) -> None:
        """Keep about two jobs per serving worker queued or running."""
        room = max(2, 2 * self.workers_seen) - len(self.jobs)
        batches: list[list[Task]] = []
        while room > 0:
            batch = self.take_batch()
            if not batch:
                break
            batches.append(batch)
            room -= 1
        if batches:
            self.enqueue(batches)

    def take_batch(self) -> list[Task]:
        if self.broken is not None:
            while self.retry:
                self.fail_in_caller(self.retry.popleft()[0], self.broken)
            self.fail_the_rest(self.broken)
            return []
        size = self.batch_size()
        batch: list[Task] = []
        while self.retry and len(batch) < size:
            batch.append(self.retry.popleft())
        start, fresh = self.take_fresh(size - len(batch))
        for offset, item in enumerate(fresh):
            index = start + offset
            if _task.is_raw(item):
                batch.append((index, item, False))
                continue
            try:
                batch.append((index, _task.dumps(item), True))
            except Exception as exc:
                self.fail_in_caller(index, _task.input_error(index, exc))
        return batch

    def enqueue(self, batches: list[list[Task]]) -> None:
        from rq import Queue

        from fanout.rqworker import run_batch

        spec = self.spec
        datas = []
        for tasks in batches:
            self.job_count += 1
            job_id = f"fanout-{self.run_id}-{self.job_count}"
            indices = [t[0] for t in tasks]
            items = [t[1] for t in tasks]
            pickled = [pos for pos, t in enumerate(tasks) if t[2]]
            datas.append(
                Queue.prepare_data(
                    run_batch,
                    args=(
                        self.key,
                        spec.target,
                        spec.star,
                        spec.timeout,
                        spec.retries,
                        indices,
                        items,
                        pickled,
                    ),
                    job_id=job_id,
                    timeout=-1,  # per-task timeouts are fanout's, not RQ's job timeout
                    result_ttl=0,  # results travel on the run's list; keep nothing
                    failure_ttl=FAILURE_TTL,
                    description=f"fanout {spec.target} tasks {indices[0]}..{indices[-1]}",
                )
            )
            self.jobs[job_id] = _Job(job_id, tasks)
            for index in indices:
                self.owner[index] = job_id
        pipe = self.connection.pipeline()
        self.queue.enqueue_many(datas, pipeline=pipe)
        pipe.execute()

    # -- results ----------------------------------------------------------------------

    def step(self) -> None:
        """One round; Redis errors are retried with backoff for ``redis_wait`` seconds."""
        import redis

        try:
            self.round()
        except redis.exceptions.OutOfMemoryError as exc:
            raise _full(self.rq.url, exc) from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            now = time.monotonic()
            if self.down_since is None:
                self.down_since, self.backoff = now, 0.1
                log.warning("lost Redis at %s; reconnecting", mask_url(self.rq.url))
            if now - self.down_since >= self.rq.redis_wait:
                raise BackendUnavailable(
                    f"lost Redis at {mask_url(self.rq.url)} for {now - self.down_since:.0f} s:"
                    f" {scrub(str(exc), self.rq.url)}"
                ) from None
            time.sleep(self.backoff)
            self.backoff = min(2.0, self.backoff * 2)
            return
        if self.down_since is not None:
            self.down_since = None
            log.warning("reconnected to Redis at %s", mask_url(self.rq.url))
            self.check()  # jobs a restarted Redis forgot are enqueued again

    def round(self) -> None:
        self.dispatch()
        if self.ready or self.done():
            return
        popped: Any = self.connection.blpop([self.key], timeout=WAIT_SECONDS)
        messages: list[bytes] = [popped[1]] if popped else []
        if popped:
            messages += self.lpop()
        for data in messages:
            self.handle(data)
        if messages:
            self.last_progress = time.monotonic()
        if time.monotonic() - self.last_check >= CHECK_SECONDS or not messages:
            self.check()

    def drain(self) -> None:
        """Take every result already pushed (before judging a failed job)."""
        while messages := self.lpop():
            for data in messages:
                self.handle(data)

    def lpop(self) -> list[bytes]:
        """Up to 1000 waiting result messages, in one round trip."""
        messages: Any = self.connection.lpop(self.key, 1000)
        return list(messages or [])

    def handle(self, data: bytes) -> None:
        if self.rq.keyring is not None:
            try:
                body = self.rq.keyring.open(data, "result message")
                run, _, data = body.partition(b"\n")
                if run != self.key.encode():
                    raise SignatureError("the result message was signed for another run")
                (name, pid, ppid, host), records = pickle.loads(data)
            except Exception as exc:
                # Never unpickled unless signed for this run. Its tasks' real results
                # still count; a job that finishes without them is run again.
                self.refused += 1
                if self.refused == 1:
                    log.warning("refused a result on %s: %s", self.key, exc)
                return
        else:
            (name, pid, ppid, host), records = pickle.loads(data)
        info = WorkerInfo(name, pid, ppid, host, RQBackend.name)
        done: list[TaskResult] = []
        for index, status, payload, attempts, started, finished, duration, output in records:
            job_id = self.owner.pop(index, None)
            if job_id is None:
                continue  # a late duplicate of a task already settled
            job = self.jobs[job_id]
            job.remaining.discard(index)
            if not job.remaining:
                del self.jobs[job_id]
            ok, value = _task.load_value(index, status, payload)
            error = None if ok else TaskError(*value)
            # A target no worker can import fails every task: the rest fail at once. (Not
            # TargetNotAllowed: another worker's allowlist may admit it, or it is one input.)
            if error is not None and error.type == TargetError.__name__:
                self.broken = value
            attempts += self.lost.pop(index, 0)
            done.append(
                make_result(
                    index, ok, value if ok else None, error, info, attempts,
                    started, finished, duration, output,
                )
            )  # fmt: skip
        if records:
            self.measure(records[-1][5] - records[0][4], len(records))
            per_bytes = len(data) / len(records)
            old = self.bytes_per_task
            self.bytes_per_task = per_bytes if old is None else 0.5 * (old + per_bytes)
        self.finish_many(done)

    # -- checks -----------------------------------------------------------------------

    def check(self) -> None:
        """Workers serving the queue, and jobs of this run that RQ failed as a whole."""
        from rq import Worker
        from rq.registry import CanceledJobRegistry, FailedJobRegistry

        self.last_check = time.monotonic()
        # Worker.all, not Worker.count: it skips workers whose key has expired.
        self.workers_seen = len(Worker.all(connection=self.connection, queue=self.queue))
        failed = [
            job_id
            for job_id in FailedJobRegistry(queue=self.queue).get_job_ids()
            if job_id in self.jobs
        ]
        canceled = [
            job_id
            for job_id in CanceledJobRegistry(queue=self.queue).get_job_ids()
            if job_id in self.jobs
        ]
        if failed or canceled:
            self.drain()  # what a job pushed before it failed still counts
        for job_id in failed:
            if job_id in self.jobs:
                self.settle_failed_job(self.jobs.pop(job_id))
        self.find_lost_jobs()
        for job_id in canceled:
            if job_id in self.jobs:
                job = self.jobs.pop(job_id)
                error = ("JobCanceled", f"job {job_id} was canceled in RQ before it ran", "")
                for task in job.tasks:
                    if task[0] in job.remaining:
                        self.owner.pop(task[0], None)
                        self.fail_in_caller(task[0], error)
        self.watch_for_workers()

    def find_lost_jobs(self) -> None:
        """Jobs that will never report: their worker died (its heartbeat stopped, or its
        RQ registration expired), or Redis forgot them (restarted without persistence)."""
        from rq.registry import StartedJobRegistry
        from rq.utils import utcparse

        if not self.jobs:
            return
        ids = list(self.jobs)
        pipe = self.connection.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(f"rq:job:{job_id}", "status")
            pipe.hget(f"rq:job:{job_id}", "worker_name")
        replies = pipe.execute()
        started = set(StartedJobRegistry(queue=self.queue).get_job_ids())
        vanished, running = [], {}
        for i, job_id in enumerate(ids):
            status, worker = replies[2 * i], replies[2 * i + 1]
            if status is None:
                vanished.append(job_id)
            elif job_id in started and worker:
                running[job_id] = worker.decode()
        dead: dict[str, str] = {}
        if running:
            pipe = self.connection.pipeline(transaction=False)
            for name in running.values():
                pipe.hmget(f"rq:worker:{name}", "last_heartbeat", "fanout_heartbeat")
            now = time.time()
            for (job_id, name), (beat, fanout_beat) in zip(
                running.items(), pipe.execute(), strict=True
            ):
                if beat is None:
                    dead[job_id] = f"{name} is gone (its RQ registration expired)"
                elif fanout_beat is not None:
                    silent = now - utcparse(beat.decode()).timestamp()
                    if silent > self.rq.dead_after:
                        dead[job_id] = f"{name} stopped its heartbeat {silent:.0f} s ago"
        if not vanished and not dead:
            return
        self.drain()  # results pushed before the loss still count
        for job_id in vanished:
            job = self.jobs.pop(job_id, None)
            if job is not None:  # never ran, or Redis lost it: enqueue its tasks again
                self.forget_job(job)
                self.retry.extendleft(reversed([t for t in job.tasks if t[0] in job.remaining]))
        for job_id, why in dead.items():
            job = self.jobs.pop(job_id, None)
            if job is None:
                continue
            self.forget_job(job)
            self.connection.zrem(StartedJobRegistry(queue=self.queue).key, job_id)
            remaining = [t for t in job.tasks if t[0] in job.remaining]
            if remaining:
                first, rest = remaining[0], remaining[1:]
                name = running[job_id]
                self.lose(first, f"worker {why} while running task {first[0]}", name)
                self.retry.extendleft(reversed(rest))

    def forget_job(self, job: _Job) -> None:
        for task in job.tasks:
            if self.owner.get(task[0]) == job.id:
                del self.owner[task[0]]

    def settle_failed_job(self, job: _Job) -> None:
        from rq.job import Job

        try:
            rq_job = Job.fetch(job.id, connection=self.connection, serializer=self.rq.serializer)
            result = rq_job.latest_result()
            exc = (result.exc_string if result else None) or rq_job.exc_info or ""
            worker = (result.worker_name if result else "") or rq_job.worker_name
            worker = worker or "an RQ worker"
        except Exception:
            exc, worker = "", "an RQ worker"
        remaining = [task for task in job.tasks if task[0] in job.remaining]
        for task in remaining:
            self.owner.pop(task[0], None)
        if not remaining:
            return
        if "stopped by user" in exc:
            error = ("JobStopped", f"job {job.id} was stopped on {worker} (rq stop-job)", exc)
            for task in remaining:
                self.fail_in_caller(task[0], error)
            return
        refused = _signature_failure(exc, self.rq.keyring is not None, worker)
        if refused is not None:
            # Every job of the run would fail the same way: fail the rest at once.
            self.broken = refused
            for task in remaining:
                self.fail_in_caller(task[0], refused)
            return
        if "terminated unexpectedly" in exc or not exc:
            # The process running the job died: the first unreported task was running.
            first, rest = remaining[0], remaining[1:]
            message = (
                f"the work-horse of {worker} died while running task {first[0]}"
                f" (job {job.id}): {_last_line(exc) or 'no result'}"
            )
            self.lose(first, message, worker)
            self.retry.extendleft(reversed(rest))
            return
        # run_batch turns every task's own failure into a result, so this is RQ or the
        # worker failing around the tasks (e.g. a Redis restart mid-job): run them
        # again, but not forever.
        kind, _, text = _last_line(exc).partition(": ")
        error = (kind or FanoutError.__name__, text or exc, exc)
        for task in remaining:
            tries = self.job_failures.get(task[0], 0) + 1
            if tries < MAX_JOB_FAILURES:
                self.job_failures[task[0]] = tries
                self.retry.append(task)
            else:
                self.fail_in_caller(task[0], error)

    def lose(self, task: Task, message: str, worker: str) -> None:
        """A task whose process died: run it again while retries allow, else WorkerLost."""
        index = task[0]
        lost = self.lost.get(index, 0) + 1
        if lost <= self.spec.retries:
            self.lost[index] = lost
            self.retry.appendleft(task)
            return
        self.lost.pop(index, None)
        now = time.time()
        info = WorkerInfo(worker, 0, 0, "", RQBackend.name)  # its pids died with it
        error = TaskError(WorkerLost.__name__, message)
        self.finish(TaskResult(index, False, None, error, info, lost, now, now, 0.0))

    def watch_for_workers(self) -> None:
        if self.workers_seen or not self.jobs:
            self.last_progress = time.monotonic()
            return
        waited = time.monotonic() - self.last_progress
        give_up = self.rq.give_up_after
        where = f"queue {self.queue.name!r} on {mask_url(self.rq.url)}"
        if give_up is not None and waited >= give_up:
            raise BackendUnavailable(f"no worker has served {where} for {waited:.0f} s")
        if not self.warned and waited >= self.rq.warn_after:
            self.warned = True
            log.warning(
                "no worker is serving %s; waiting (start one with: fanout worker"
                " --redis-url URL --queue %s)",
                where,
                self.queue.name,
            )

    # -- the end ----------------------------------------------------------------------

    def end(self) -> None:
        """However the run ends: cancel its jobs still queued, stop those running, and
        remove its keys (a worker finishing late then pushes nothing)."""
        from rq.command import send_stop_job_command
        from rq.registry import StartedJobRegistry

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
                    pipe.delete(f"rq:job:{job_id}")
            if taken:  # a worker has them: it must not push once we are gone
                pipe.set(self.ended, 1, ex=RUN_TTL)
            pipe.delete(self.key)
            pipe.execute()
            running = set(StartedJobRegistry(queue=self.queue).get_job_ids()) & set(taken)
            for job_id in running:  # the worker ends it (RQ's stop-job command)
                with contextlib.suppress(Exception):
                    send_stop_job_command(self.connection, job_id)


def queue_status(url: str | None = None, queue: str | None = None) -> dict[str, Any]:
    """Queues with their lengths and workers with name, pid, host, state, current job."""
    from rq import Queue, Worker

    url = _resolve_url(url)
    connection = connect(url)
    with _translate(url):
        queues = [Queue(queue, connection=connection)] if queue else Queue.all(connection)
        workers = Worker.all(connection=connection, queue=queues[0] if queue else None)
        return {
            "redis": mask_url(url),
            "queues": [{"name": q.name, "length": q.count} for q in queues],
            "workers": [
                {
                    "name": w.name,
                    "pid": w.pid,
                    "host": w.hostname,
                    "state": str(w.get_state()),
                    "current_job": w.get_current_job_id(),
                    "queues": w.queue_names(),
                }
                for w in sorted(workers, key=lambda w: w.name)
            ],
        }


def _signature_failure(exc: str, signing: bool, worker: str) -> tuple[str, str, str] | None:
    """The SignatureError a worker failed a job with, or the one it should have."""
    for line in reversed(exc.splitlines()):
        kind, sep, text = line.strip().partition(": ")
        if sep and kind.rpartition(".")[2] == SignatureError.__name__:
            return (SignatureError.__name__, f"RQ worker {worker} refused the job: {text}", exc)
    if signing and ("invalid load key" in exc or "DeserializationError" in exc):
        message = (
            f"RQ worker {worker} cannot read signed jobs: start it with the same"
            " FANOUT_SECRET (or --secret-file) as this client"
        )
        return (SignatureError.__name__, message, exc)
    return None


def _resolve_url(url: str | None) -> str:
    return redis_url(url)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


@contextlib.contextmanager
def _translate(url: str) -> Iterator[None]:
    """Redis errors mid-run become BackendUnavailable, with the password masked."""
    import redis

    from fanout.redisconn import scrub

    try:
        yield
    except redis.exceptions.OutOfMemoryError as exc:
        raise _full(url, exc) from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BackendUnavailable(f"lost Redis at {mask_url(url)}: {scrub(str(exc), url)}") from None


def _full(url: str, exc: Exception) -> BackendUnavailable:
    """Redis at maxmemory with noeviction refuses writes: say so, and what to do."""
    return BackendUnavailable(
        f"Redis at {mask_url(url)} is full and refuses writes ({scrub(str(exc), url)});"
        " free memory or raise its maxmemory, then run again"
    )


def _terminate_with_parent() -> None:
    """In a local fanout worker: get SIGTERM (warm shutdown) if the caller dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)
