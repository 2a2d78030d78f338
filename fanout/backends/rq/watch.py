"""Watching what RQ did with a run's jobs. The watch reads Redis and decides; the run
acts: :meth:`JobWatch.check` returns a verdict per job that needs one, and the run
applies it (``RQRun.apply``), so that every task still gets one result, whatever
happened to the job that carried it.

At each check (every ``CHECK_SECONDS``, by whoever drives the run) the watch looks at

- the workers serving the queue (none for a while: a warning, then maybe giving up;
  paused for a while, ``fanout pause``: a warning, and the run waits);
- RQ's FailedJobRegistry: a job that failed as a whole — its work-horse killed
  (:class:`Lost`), stopped by ``rq stop-job`` (:class:`Stopped`), refused as unsigned
  (:class:`Refused`), RQ failing around it (:class:`FailedAround`);
- RQ's CanceledJobRegistry: cancelled outside fanout (:class:`Canceled`);
- the jobs themselves: a job whose hash is gone (Redis restarted empty) runs again
  (:class:`Vanished`); one whose fanout worker stopped its heartbeat, or whose RQ
  registration expired, has its running task charged (:class:`Lost`); one RQ has as
  started though no task of it runs (:class:`Orphaned`) runs again. A queued job its
  queue lost is put back (in Redis: no verdict needed).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from rq import Worker
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE
from rq.job import Job
from rq.registry import CanceledJobRegistry, FailedJobRegistry, StartedJobRegistry
from rq.suspension import WORKERS_SUSPENDED
from rq.utils import utcparse

from fanout._proc import describe_exit
from fanout.backends.rq.connection import mask_url
from fanout.backends.rq.fleet import TASK_PID_FIELD
from fanout.backends.rq.protocol import (
    CALLER_TTL,
    FORGET_JOB_SCRIPT,
    HORSE_PID,
    REQUEUE_VANISHED_SCRIPT,
    UNSTICK_SCRIPT,
    RQJob,
    RunKeys,
    text,
)
from fanout.errors import (
    BackendUnavailable,
    FanoutError,
    JobCanceled,
    JobStopped,
    SignatureError,
    WorkerLost,
)
from fanout.models import TaskError, WorkerInfo

if TYPE_CHECKING:
    from fanout.backends.rq.settings import RunSettings

log = logging.getLogger("fanout")

CHECK_SECONDS = 2.0  # how often the run's driver looks at RQ's registries and workers
STUCK_SECONDS = 5.0  # a job taken from the queue but not started this long is put back


# -- verdicts: what became of a job, for the run to act on ------------------------------


@dataclass(frozen=True)
class Verdict:
    """What became of job ``job_id``."""

    job_id: str


@dataclass(frozen=True)
class Vanished(Verdict):
    """Redis has no hash of the job (it restarted empty, or the job ended without a
    result for each task): its tasks without a result run again."""


@dataclass(frozen=True)
class Orphaned(Verdict):
    """RQ has the job as started, but no task of it runs (its worker registered again
    between jobs, or is idle on two checks in a row): its tasks without a result run
    again. (RQ's record of it is dropped already.)"""


@dataclass(frozen=True)
class Lost(Verdict):
    """The process running the job died: its first task without a result was running
    (``message``, whose ``{task}`` names it, and who ran it, as far as anyone can tell);
    the others run again. (RQ's record of it is dropped already.)"""

    message: str
    who: WorkerInfo
    # Why (models.CAUSES), and the raw facts where RQ said them (a work-horse's end).
    cause: str = "lost"
    signal: int | None = None
    exit_code: int | None = None

    def error(self, index: int) -> TaskError:
        """The error of task ``index``, the one that was running."""
        message = self.message.replace("{task}", str(index))
        return TaskError(WorkerLost.__name__, message, cause=self.cause, signal=self.signal,
                         exit_code=self.exit_code)  # fmt: skip


@dataclass(frozen=True)
class Stopped(Verdict):
    """Stopped with ``rq stop-job``: its tasks without a result fail with ``error``."""

    error: TaskError


@dataclass(frozen=True)
class Refused(Verdict):
    """A worker refused the job (unsigned, or it cannot read signed jobs): every job of
    the run would fare the same, so every task left fails with ``error``."""

    error: TaskError


@dataclass(frozen=True)
class FailedAround(Verdict):
    """RQ or the worker failed around the tasks (a Redis restart mid-job, say): they run
    again, a bounded number of times, then fail with ``error``."""

    error: TaskError


@dataclass(frozen=True)
class Canceled(Verdict):
    """Cancelled in RQ (outside fanout) before it ran: its tasks fail with ``error``."""

    error: TaskError


# -- the watch ----------------------------------------------------------------------------


class JobWatch:
    """The checks of one run on RQ's registries and workers (settings: the run's)."""

    def __init__(self, settings: RunSettings, keys: RunKeys) -> None:
        self.settings = settings
        self.keys = keys
        connection = settings.connection
        self.connection = connection
        self._requeue = connection.register_script(REQUEUE_VANISHED_SCRIPT)
        self._unstick = connection.register_script(UNSTICK_SCRIPT)
        self._forget = connection.register_script(FORGET_JOB_SCRIPT)
        self.evicted = _evicted_keys(connection)  # before this run: evictions are fatal
        self.workers_seen = 0
        self.held: dict[str, float] = {}  # job id -> since when a worker holds it unstarted
        self.orphans: dict[str, int] = {}  # started job id -> checks its worker was not on it
        self.last_check = 0.0
        self.last_progress = time.monotonic()
        self.warned = False
        self.paused_since: float | None = None  # the workers found paused since then
        self.said_paused = False

    def due(self) -> bool:
        """Is it time for a check (every ``CHECK_SECONDS``)?"""
        return time.monotonic() - self.last_check >= CHECK_SECONDS

    def wait_a_round(self) -> None:
        """No check now (another process drives the run): the next in ``CHECK_SECONDS``."""
        self.last_check = time.monotonic()

    def progressed(self) -> None:
        """A result came: the run's workers serve it."""
        self.last_progress = time.monotonic()

    def check(self, jobs: Mapping[str, RQJob]) -> list[Verdict]:
        """The verdicts on the run's ``jobs`` (those it waits for), and the workers
        serving its queue (none for a while: a warning, then BackendUnavailable if the
        run gives up). The caller drains the run's stream before acting on them: what a
        job pushed before its end still counts."""
        self.last_check = time.monotonic()
        queue = self.settings.queue
        # Worker.all, not Worker.count: it skips workers whose key has expired.
        self.workers_seen = len(Worker.all(connection=self.connection, queue=queue))
        verdicts: list[Verdict] = []
        failed = self._mine(FailedJobRegistry(queue=queue), jobs)
        verdicts += [self._failed(jobs[job_id]) for job_id in failed]
        verdicts += self._lost(jobs)
        for job_id in self._mine(CanceledJobRegistry(queue=queue), jobs):
            why = f"job {job_id} was canceled in RQ before it ran"
            verdicts.append(Canceled(job_id, TaskError(JobCanceled.__name__, why,
                                                       cause="cancelled")))  # fmt: skip
        self._watch_for_workers(bool(jobs))
        return verdicts

    def check_memory(self) -> None:
        """Redis must keep what fanout writes. A write of the driver's own (refreshing its
        key) fails when Redis is full (noeviction): translate() says so. A Redis that
        evicts keys to stay under its maxmemory may drop jobs and results: say so too."""
        self.connection.set(self.keys.caller, 1, ex=CALLER_TTL)
        evicted = _evicted_keys(self.connection)
        if self.evicted is not None and evicted is not None and evicted > self.evicted:
            raise BackendUnavailable(
                f"Redis at {mask_url(self.settings.url)} is full and evicts keys"
                f" ({evicted - self.evicted} since this run started), fanout's jobs and"
                " results among them; give it more maxmemory and set maxmemory-policy"
                " noeviction, then run again"
            )

    def _mine(self, registry: Any, jobs: Mapping[str, RQJob]) -> list[str]:
        """The run's jobs in an RQ registry (read only: RQ's cleanup is its workers')."""
        return [job_id for job_id in registry.get_job_ids(cleanup=False) if job_id in jobs]

    def _lost(self, jobs: Mapping[str, RQJob]) -> list[Verdict]:
        """Jobs that will never report: their worker died (its heartbeat stopped, or its
        RQ registration expired) or started afresh since it took them, Redis forgot
        them (restarted without persistence), or their queue lost them (put back)."""
        if not jobs:
            return []
        vanished, queued, running = self._states(list(jobs))
        if queued:
            self._requeue_vanished(queued)
        dead, idle = self._dead_workers(running)
        verdicts: list[Verdict] = [Vanished(job_id) for job_id in vanished]
        registry = StartedJobRegistry(queue=self.settings.queue).key
        for job_id in idle:
            self._forget(keys=[registry, Job.key_for(job_id)],
                         args=[job_id, self.settings.result_ttl])  # fmt: skip
            verdicts.append(Orphaned(job_id))
        for job_id, why in dead.items():
            worker = running[job_id][0]
            verdicts.append(self._lose(jobs[job_id], f"worker {why} while running task {{task}}",
                                       worker))  # fmt: skip
        return verdicts

    def _states(
        self, ids: list[str]
    ) -> tuple[list[str], list[str], dict[str, tuple[str, bytes | None]]]:
        """The jobs that Redis no longer has, those RQ has as queued, and those started
        (job id -> worker name, started at), in one round trip."""
        pipe = self.connection.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(Job.key_for(job_id), "status", "worker_name", "started_at")
        replies = pipe.execute()
        registry = StartedJobRegistry(queue=self.settings.queue)
        started = set(registry.get_job_ids(cleanup=False))
        vanished, queued, running = [], [], {}
        for job_id, (status, worker, started_at) in zip(ids, replies, strict=True):
            if status is None:
                vanished.append(job_id)
            elif status == b"queued":
                queued.append(job_id)
            elif job_id in started and worker:
                running[job_id] = (worker.decode(), started_at)
        return vanished, queued, running

    def _requeue_vanished(self, queued: list[str]) -> None:
        """Put back at the head of the queue the jobs it lost, and those a worker took
        into RQ's intermediate list but has not started for ``STUCK_SECONDS``."""
        queue = self.settings.queue
        lists = [queue.key, queue.intermediate_queue_key]
        keys = lists + [Job.key_for(job_id) for job_id in queued]
        requeued, held = self._requeue(keys=keys, args=queued)
        now = time.monotonic()
        held = [text(job_id) for job_id in held]
        self.held = {job_id: self.held.get(job_id, now) for job_id in held}
        stuck = [job_id for job_id, since in self.held.items() if now - since >= STUCK_SECONDS]
        if stuck:
            keys = lists + [Job.key_for(job_id) for job_id in stuck]
            requeued += self._unstick(keys=keys, args=stuck)
        if requeued:
            log.warning("%d job(s) of run %s were missing from queue %r; enqueued again",
                        len(requeued), self.keys.run_id, queue.name)  # fmt: skip

    def _dead_workers(
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
        pipe = self.connection.pipeline(transaction=False)
        for name, _ in running.values():
            pipe.hmget(Worker.redis_worker_namespace_prefix + name, "last_heartbeat",
                       "fanout_heartbeat", "birth", "fanout_since", "state")  # fmt: skip
            pipe.smembers(WORKER_EXECUTIONS_KEY_TEMPLATE.format(name))  # "job id:execution id"
        replies = pipe.execute()
        dead: dict[str, str] = {}
        idle: list[str] = []
        orphans: dict[str, int] = {}
        for (job_id, (name, started_at)), fields, runs in zip(
            running.items(), replies[::2], replies[1::2], strict=True
        ):
            why = self._verdict_on(job_id, name, started_at, fields, runs, orphans)
            if why == "idle":
                idle.append(job_id)
            elif why:
                dead[job_id] = why
        self.orphans = orphans
        return dead, idle

    def _verdict_on(
        self,
        job_id: str,
        name: str,
        started_at: bytes | None,
        fields: list[Any],
        runs: set[bytes],
        orphans: dict[str, int],
    ) -> str:
        """Why job ``job_id``'s worker ``name`` is done with it: "" (it is not), "idle",
        or how it died."""
        beat, fanout_beat, birth, since, state = fields
        started = utcparse(started_at.decode()) if started_at else None
        if beat is None:
            return f"{name} is gone (its RQ registration expired)"
        if birth and started and utcparse(birth.decode()) > started:
            if since and utcparse(since.decode()) <= started:
                return "idle"  # the same process, registered again
            return f"{name} started afresh (its Redis connection broke)"
        if fanout_beat is None:
            return ""
        silent = time.time() - utcparse(beat.decode()).timestamp()
        if silent > self.settings.dead_after:
            return f"{name} stopped its heartbeat {silent:.0f} s ago"
        if state == b"idle" or not any(e.startswith(f"{job_id}:".encode()) for e in runs):
            orphans[job_id] = self.orphans.get(job_id, 0) + 1
            if orphans[job_id] >= 2:
                return "idle"
        return ""

    def _failed(self, job: RQJob) -> Verdict:
        """What RQ's failure of ``job`` means."""
        try:
            rq_job = Job.fetch(job.id, connection=self.connection,
                               serializer=self.settings.serializer)  # fmt: skip
            result = rq_job.latest_result()
            exc = (result.exc_string if result else None) or rq_job.exc_info or ""
            worker = (result.worker_name if result else "") or rq_job.worker_name
            worker = worker or "an RQ worker"
        except Exception:
            exc, worker = "", "an RQ worker"
        if "stopped by user" in exc:
            why = f"job {job.id} was stopped on {worker} (rq stop-job)"
            return Stopped(job.id, TaskError(JobStopped.__name__, why, exc, cause="killed"))
        refused = _signature_failure(exc, self.settings.keyring is not None, worker)
        if refused is not None:
            return Refused(job.id, refused)
        if "terminated unexpectedly" in exc or not exc:
            # The process running the job died: the first unreported task was running.
            code = _horse_exit(exc)
            words = describe_exit(code) if code is not None else _last_line(exc) or "no result"
            message = (
                f"the work-horse of {worker} died while running task {{task}} (job {job.id}):"
                f" {words}"
            )
            lost = self._lose(job, message, worker)
            if code is None:
                return lost
            if code < 0:
                return replace(lost, cause="killed", signal=-code)
            return replace(lost, cause="exited", exit_code=code)
        # run_batch turns every task's own failure into a result, so this is RQ or the
        # worker failing around the tasks (e.g. a Redis restart mid-job; RQ's own job
        # time-out, which fanout's jobs do not set).
        kind, _, said = _last_line(exc).partition(": ")
        cause = "timeout" if kind.rpartition(".")[2] == "JobTimeoutException" else "lost"
        return FailedAround(job.id, TaskError(kind or FanoutError.__name__, said or exc, exc,
                                              cause=cause))  # fmt: skip

    def _lose(self, job: RQJob, message: str, worker: str) -> Lost:
        """``job``'s process died: RQ's records of it are left to expire."""
        registry = StartedJobRegistry(queue=self.settings.queue).key
        self._forget(keys=[registry, Job.key_for(job.id)],
                     args=[job.id, self.settings.result_ttl])  # fmt: skip
        return Lost(job.id, message, self._last_known(job, worker))

    def _last_known(self, job: RQJob, worker: str) -> WorkerInfo:
        """Who ran ``job``'s lost task, as far as anyone can tell: the process that sent
        its other results, else the work-horse a stock ``rq worker`` noted in the job or
        the task process a ``fanout worker`` last said it had (its pid: 0 where neither
        was said), the RQ worker's pid (its parent) and host."""
        backend = self.settings.backend
        if job.identity is not None:
            return WorkerInfo(*job.identity, backend)
        try:
            pipe = self.connection.pipeline(transaction=False)
            pipe.hmget(Worker.redis_worker_namespace_prefix + worker, "pid", "hostname",
                       TASK_PID_FIELD)  # fmt: skip
            pipe.hget(Job.key_for(job.id), HORSE_PID)
            (ppid, host, task_pid), horse = pipe.execute()
            pid = horse or task_pid
        except Exception:
            pid = ppid = host = None
        host = host.decode() if isinstance(host, bytes) else ""
        return WorkerInfo(worker, int(pid or 0), int(ppid or 0), host, backend)

    def _watch_for_workers(self, waiting: bool) -> None:
        if self.workers_seen and waiting:
            self._watch_for_pause()
        if self.workers_seen or not waiting:
            self.last_progress = time.monotonic()
            return
        settings = self.settings
        waited = time.monotonic() - self.last_progress
        where = f"queue {settings.queue.name!r} on {mask_url(settings.url)}"
        if settings.give_up_after is not None and waited >= settings.give_up_after:
            raise BackendUnavailable(f"no worker has served {where} for {waited:.0f} s")
        if not self.warned and waited >= settings.warn_after:
            self.warned = True
            log.warning(
                "no worker is serving %s; waiting (start one with: fanout worker"
                " --redis-url URL --queue %s)",
                where,
                settings.queue.name,
            )

    def _watch_for_pause(self) -> None:
        """Workers serve the queue, but they may be paused (``fanout pause``, ``rq
        suspend``): the run waits for them as long as it takes, and says why once."""
        if self.said_paused:
            return
        if not self.connection.exists(WORKERS_SUSPENDED):
            self.paused_since = None
            return
        now = time.monotonic()
        self.paused_since = self.paused_since or now
        if now - self.paused_since >= self.settings.warn_after:
            self.said_paused = True
            log.warning(
                "the workers serving queue %r on %s are paused (fanout pause or rq suspend);"
                " waiting (resume them with: fanout resume --redis-url URL)",
                self.settings.queue.name,
                mask_url(self.settings.url),
            )


def _evicted_keys(connection: Any) -> int | None:
    """How many keys Redis has evicted since it started (None if it will not say)."""
    try:
        return int(connection.info("stats").get("evicted_keys", 0))
    except Exception:
        return None


def _signature_failure(exc: str, signing: bool, worker: str) -> TaskError | None:
    """The SignatureError a worker failed a job with, or the one it should have."""
    for line in reversed(exc.splitlines()):
        kind, sep, said = line.strip().partition(": ")
        if sep and kind.rpartition(".")[2] == SignatureError.__name__:
            return TaskError(SignatureError.__name__, f"RQ worker {worker} refused the job: {said}",
                             exc, cause="not-run")  # fmt: skip
    if signing and ("invalid load key" in exc or "DeserializationError" in exc):
        message = (
            f"RQ worker {worker} cannot read signed jobs: start it with the same"
            " FANOUT_SECRET (or --secret-file) as this client"
        )
        return TaskError(SignatureError.__name__, message, exc, cause="not-run")
    return None


def _horse_exit(said: str) -> int | None:
    """How a stock worker's work-horse ended, from RQ's "Work-horse terminated
    unexpectedly; waitpid returned STATUS": its exit code, or minus the signal that
    killed it (None: RQ did not say)."""
    found = re.search(r"waitpid returned (\d+)", said)
    if found is None:
        return None
    status = int(found.group(1))
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else None


def _last_line(said: str) -> str:
    lines = [line for line in said.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
