"""Watching what RQ did with a run's jobs: the caller knows what it submitted, so every
task gets one result, whatever happened to the job that carried it.

Every few seconds (and whenever a pop comes back empty) :meth:`JobWatch.check` looks at

- the workers serving the queue (none for a while: a warning, then maybe giving up);
- RQ's FailedJobRegistry: a job that failed as a whole (its work-horse killed, refused
  as unsigned, RQ failing around it) has its unreported tasks settled or run again;
- RQ's CanceledJobRegistry: cancelled outside fanout, its tasks fail with JobCanceled;
- lost jobs: a job whose hash is gone (Redis restarted empty) runs again; a job whose
  fanout worker stopped its heartbeat, or whose RQ registration expired, has the task
  it was running charged with WorkerLost and the rest run again.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from rq import Worker
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE
from rq.job import Job
from rq.registry import CanceledJobRegistry, FailedJobRegistry, StartedJobRegistry
from rq.utils import utcparse

from fanout.backends.rq.connection import mask_url
from fanout.backends.rq.protocol import (
    FORGET_JOB_SCRIPT,
    HORSE_PID,
    REQUEUE_VANISHED_SCRIPT,
    UNSTICK_SCRIPT,
    text,
)
from fanout.errors import BackendUnavailable, FanoutError, SignatureError, WorkerLost
from fanout.models import TaskError, TaskResult, WorkerInfo

if TYPE_CHECKING:
    from fanout.backends.rq.protocol import RQJob
    from fanout.backends.rq.run import RQRun

log = logging.getLogger("fanout")

CHECK_SECONDS = 2.0  # how often the caller looks at RQ's registries and workers
STUCK_SECONDS = 5.0  # a job taken from the queue but not started this long is put back


class JobWatch:
    """The checks of one run on RQ's registries and workers."""

    def __init__(self, run: RQRun) -> None:
        self.run = run
        self.scripts = _Scripts(run.connection)
        self.evicted = _evicted_keys(run.connection)  # before this run: evictions are fatal
        self.workers_seen = 0
        self.held: dict[str, float] = {}  # job id -> since when a worker holds it unstarted
        self.orphans: dict[str, int] = {}  # started job id -> checks its worker was not on it
        self.last_check = 0.0
        self.last_progress = time.monotonic()
        self.warned = False

    def after_round(self, progressed: bool) -> None:
        if progressed:
            self.last_progress = time.monotonic()
        if not progressed or time.monotonic() - self.last_check >= CHECK_SECONDS:
            self.check()

    def check(self) -> None:
        """Workers serving the queue, and jobs of this run that RQ failed as a whole."""
        run = self.run
        self.last_check = time.monotonic()
        self.check_memory()
        run.observe()
        if not run.lease.take():
            return  # another process drives the run: this one only reads
        run.refresh()
        # Worker.all, not Worker.count: it skips workers whose key has expired.
        self.workers_seen = len(Worker.all(connection=run.connection, queue=run.queue))
        failed = self.mine(FailedJobRegistry(queue=run.queue))
        canceled = self.mine(CanceledJobRegistry(queue=run.queue))
        if failed or canceled:
            run.drain()  # what a job pushed before it failed still counts
        for job_id in failed:
            if job_id in run.jobs:
                self.settle_failed_job(run.jobs[job_id])
        self.find_lost_jobs()
        for job_id in canceled:
            if job_id in run.jobs:
                error = TaskError("JobCanceled", f"job {job_id} was canceled in RQ before it ran")
                job = run.jobs[job_id]
                for pos in run.forget_job(job):
                    run.fail_in_caller(job.tasks.indices[pos], error)
        self.watch_for_workers()

    def mine(self, registry: Any) -> list[str]:
        """This run's jobs in an RQ registry (read only: RQ's cleanup is its workers')."""
        return [job_id for job_id in registry.get_job_ids(cleanup=False) if job_id in self.run.jobs]

    def find_lost_jobs(self) -> None:
        """Jobs that will never report: their worker died (its heartbeat stopped, or its
        RQ registration expired) or started afresh since it took them, Redis forgot
        them (restarted without persistence), or their queue lost them (put back)."""
        run = self.run
        if not run.jobs:
            return
        vanished, queued, running = self.states()
        if queued:
            self.requeue_vanished(queued)
        dead, idle = self.dead_workers(running)
        if not vanished and not dead and not idle:
            return
        run.drain()  # results pushed before the loss still count
        for job_id in vanished:
            if job_id in run.jobs:  # never ran, or Redis lost it: enqueue its tasks again
                job = run.jobs[job_id]
                run.requeue(job.tasks.task(pos) for pos in run.forget_job(job))
        registry = StartedJobRegistry(queue=run.queue).key
        for job_id in idle:
            if job_id in run.jobs:  # no task of it runs: its unreported tasks go again
                self.scripts.forget(keys=[registry, Job.key_for(job_id)],
                                    args=[job_id, run.rq.result_ttl])  # fmt: skip
                job = run.jobs[job_id]
                run.requeue(job.tasks.task(pos) for pos in run.forget_job(job))
        for job_id, why in dead.items():
            if job_id in run.jobs:
                message = f"worker {why} while running task {{task}}"
                self.lose(run.jobs[job_id], message, running[job_id][0])

    def states(self) -> tuple[list[str], list[str], dict[str, tuple[str, bytes | None]]]:
        """The run's jobs that Redis no longer has, those RQ has as queued, and those
        started (job id -> worker name, started at), in one round trip."""
        run = self.run
        ids = list(run.jobs)
        pipe = run.connection.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(Job.key_for(job_id), "status", "worker_name", "started_at")
        replies = pipe.execute()
        started = set(StartedJobRegistry(queue=run.queue).get_job_ids(cleanup=False))
        vanished, queued, running = [], [], {}
        for job_id, (status, worker, started_at) in zip(ids, replies, strict=True):
            if status is None:
                vanished.append(job_id)
            elif status == b"queued":
                queued.append(job_id)
            elif job_id in started and worker:
                running[job_id] = (worker.decode(), started_at)
        return vanished, queued, running

    def requeue_vanished(self, queued: list[str]) -> None:
        """Put back at the head of the queue the jobs it lost, and those a worker took
        into RQ's intermediate list but has not started for ``STUCK_SECONDS``."""
        run = self.run
        lists = [run.queue.key, run.queue.intermediate_queue_key]
        keys = lists + [Job.key_for(job_id) for job_id in queued]
        requeued, held = self.scripts.requeue(keys=keys, args=queued)
        now = time.monotonic()
        held = [text(job_id) for job_id in held]
        self.held = {job_id: self.held.get(job_id, now) for job_id in held}
        stuck = [job_id for job_id, since in self.held.items() if now - since >= STUCK_SECONDS]
        if stuck:
            keys = lists + [Job.key_for(job_id) for job_id in stuck]
            requeued += self.scripts.unstick(keys=keys, args=stuck)
        if requeued:
            log.warning("%d job(s) of run %s were missing from queue %r; enqueued again",
                        len(requeued), run.keys.run_id, run.queue.name)  # fmt: skip

    def dead_workers(
        self, running: dict[str, tuple[str, bytes | None]]
    ) -> tuple[dict[str, str], list[str]]:
        """Of the jobs ``running`` (job id -> worker name, started at): those whose worker
        died mid-job (job id -> why), and those no task of which runs although RQ has
        them as started. A fanout worker registers afresh (its Redis connection broke)
        only between jobs; and a worker idle, or busy with other jobs only, on two checks
        in a row, is done with this one. Both happen when Redis lost its last writes in
        a failover: the job's results and its end, but not its start."""
        if not running:
            self.orphans.clear()
            return {}, []
        pipe = self.run.connection.pipeline(transaction=False)
        for name, _ in running.values():
            pipe.hmget(Worker.redis_worker_namespace_prefix + name, "last_heartbeat",
                       "fanout_heartbeat", "birth", "fanout_since", "state")  # fmt: skip
            pipe.smembers(WORKER_EXECUTIONS_KEY_TEMPLATE.format(name))  # "job id:execution id"
        replies = pipe.execute()
        now = time.time()
        dead: dict[str, str] = {}
        idle: list[str] = []
        orphans: dict[str, int] = {}
        for (job_id, (name, started_at)), (beat, fanout_beat, birth, since, state), runs in zip(
            running.items(), replies[::2], replies[1::2], strict=True
        ):
            started = utcparse(started_at.decode()) if started_at else None
            if beat is None:
                dead[job_id] = f"{name} is gone (its RQ registration expired)"
            elif birth and started and utcparse(birth.decode()) > started:
                if since and utcparse(since.decode()) <= started:
                    idle.append(job_id)  # the same process, registered again
                else:
                    dead[job_id] = f"{name} started afresh (its Redis connection broke)"
            elif fanout_beat is not None:
                silent = now - utcparse(beat.decode()).timestamp()
                if silent > self.run.rq.dead_after:
                    dead[job_id] = f"{name} stopped its heartbeat {silent:.0f} s ago"
                elif state == b"idle" or not any(e.startswith(f"{job_id}:".encode()) for e in runs):
                    orphans[job_id] = self.orphans.get(job_id, 0) + 1
                    if orphans[job_id] >= 2:
                        idle.append(job_id)
        self.orphans = orphans
        return dead, idle

    def settle_failed_job(self, job: RQJob) -> None:
        run = self.run
        try:
            rq_job = Job.fetch(job.id, connection=run.connection, serializer=run.rq.serializer)
            result = rq_job.latest_result()
            exc = (result.exc_string if result else None) or rq_job.exc_info or ""
            worker = (result.worker_name if result else "") or rq_job.worker_name
            worker = worker or "an RQ worker"
        except Exception:
            exc, worker = "", "an RQ worker"
        if "stopped by user" in exc:
            error = TaskError("JobStopped", f"job {job.id} was stopped on {worker} (rq stop-job)",
                              exc)  # fmt: skip
            for pos in run.forget_job(job):
                run.fail_in_caller(job.tasks.indices[pos], error)
            return
        refused = _signature_failure(exc, run.rq.keyring is not None, worker)
        if refused is not None:
            # Every job of the run would fail the same way: fail the rest at once.
            run.break_target(refused)
            for pos in run.forget_job(job):
                run.fail_in_caller(job.tasks.indices[pos], refused)
            return
        if "terminated unexpectedly" in exc or not exc:
            # The process running the job died: the first unreported task was running.
            message = (
                f"the work-horse of {worker} died while running task {{task}} (job {job.id}):"
                f" {_last_line(exc) or 'no result'}"
            )
            self.lose(job, message, worker)
            return
        # run_batch turns every task's own failure into a result, so this is RQ or the
        # worker failing around the tasks (e.g. a Redis restart mid-job): run them
        # again, but not forever.
        kind, _, text = _last_line(exc).partition(": ")
        error = TaskError(kind or FanoutError.__name__, text or exc, exc)
        for pos in run.forget_job(job):
            task = job.tasks.task(pos)
            if run.suspect(task.index):
                run.fail_in_caller(task.index, error)
            else:
                run.retry.append(task)

    def lose(self, job: RQJob, message: str, worker: str) -> None:
        """``job``'s process died: its first unreported task was running (an attempt,
        retried while ``retries`` allow; ``{task}`` in ``message`` names it); the others
        run again for free. RQ's records of the job are left to expire."""
        run = self.run
        run.given_up = True
        registry = StartedJobRegistry(queue=run.queue).key
        self.scripts.forget(keys=[registry, Job.key_for(job.id)], args=[job.id, run.rq.result_ttl])
        positions = run.forget_job(job)
        if not positions:
            return
        first = job.tasks.task(positions[0])
        now = time.time()
        message = message.replace("{task}", str(first.index))
        info = self.last_known(job, worker)
        result = TaskResult(first.index, False, None, TaskError(WorkerLost.__name__, message),
                            info, first.attempts + 1, now, now, 0.0)  # fmt: skip
        run.requeue(job.tasks.task(pos) for pos in positions[1:])
        run.failed_attempt(first, result)

    def check_memory(self) -> None:
        """Redis must keep what fanout writes. A write of the caller's own (refreshing its
        key) fails when Redis is full (noeviction): translate() says so. A Redis that
        evicts keys to stay under its maxmemory may drop jobs and results: say so too."""
        run = self.run
        run.connection.set(run.keys.caller, 1, ex=60)
        evicted = _evicted_keys(run.connection)
        if self.evicted is not None and evicted is not None and evicted > self.evicted:
            raise BackendUnavailable(
                f"Redis at {mask_url(run.rq.url)} is full and evicts keys"
                f" ({evicted - self.evicted} since this run started), fanout's jobs and"
                " results among them; give it more maxmemory and set maxmemory-policy"
                " noeviction, then run again"
            )

    def last_known(self, job: RQJob, worker: str) -> WorkerInfo:
        """Who ran ``job``'s lost task, as far as anyone can tell: the process that sent
        its other results, else the work-horse a stock ``rq worker`` noted in the job
        (its pid: 0 where none was noted), the RQ worker's pid (its parent) and host."""
        backend = self.run.rq.name
        if job.identity is not None:
            return WorkerInfo(*job.identity, backend)
        try:
            pipe = self.run.connection.pipeline(transaction=False)
            pipe.hmget(Worker.redis_worker_namespace_prefix + worker, "pid", "hostname")
            pipe.hget(Job.key_for(job.id), HORSE_PID)
            (ppid, host), pid = pipe.execute()
        except Exception:
            pid = ppid = host = None
        host = host.decode() if isinstance(host, bytes) else ""
        return WorkerInfo(worker, int(pid or 0), int(ppid or 0), host, backend)

    def watch_for_workers(self) -> None:
        run = self.run
        if self.workers_seen or not run.jobs:
            self.last_progress = time.monotonic()
            return
        waited = time.monotonic() - self.last_progress
        give_up = run.rq.give_up_after
        where = f"queue {run.queue.name!r} on {mask_url(run.rq.url)}"
        if give_up is not None and waited >= give_up:
            raise BackendUnavailable(f"no worker has served {where} for {waited:.0f} s")
        if not self.warned and waited >= run.rq.warn_after:
            self.warned = True
            log.warning(
                "no worker is serving %s; waiting (start one with: fanout worker"
                " --redis-url URL --queue %s)",
                where,
                run.queue.name,
            )


class _Scripts:
    """The watch's Lua scripts (protocol.py), registered once per run."""

    def __init__(self, connection: Any) -> None:
        self.requeue = connection.register_script(REQUEUE_VANISHED_SCRIPT)
        self.unstick = connection.register_script(UNSTICK_SCRIPT)
        self.forget = connection.register_script(FORGET_JOB_SCRIPT)


def _evicted_keys(connection: Any) -> int | None:
    """How many keys Redis has evicted since it started (None if it will not say)."""
    try:
        return int(connection.info("stats").get("evicted_keys", 0))
    except Exception:
        return None


def _signature_failure(exc: str, signing: bool, worker: str) -> TaskError | None:
    """The SignatureError a worker failed a job with, or the one it should have."""
    for line in reversed(exc.splitlines()):
        kind, sep, text = line.strip().partition(": ")
        if sep and kind.rpartition(".")[2] == SignatureError.__name__:
            return TaskError(SignatureError.__name__, f"RQ worker {worker} refused the job: {text}",
                             exc)  # fmt: skip
    if signing and ("invalid load key" in exc or "DeserializationError" in exc):
        message = (
            f"RQ worker {worker} cannot read signed jobs: start it with the same"
            " FANOUT_SECRET (or --secret-file) as this client"
        )
        return TaskError(SignatureError.__name__, message, exc)
    return None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
