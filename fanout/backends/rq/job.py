"""The worker's side of one fanout job: check the target, run the batch, push records.

RQ calls ``fanout.rq.run_batch(*JobArgs)``. On a ``fanout worker`` the job runs
with the worker's :class:`WorkerContext` (its task process, heartbeat, allowlist, stop
flag), handed over by :class:`FanoutJob`; on a stock ``rq worker`` it makes a context
of its own and runs the tasks in the worker's process.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import redis
from msgspec.structs import replace
from rq import get_current_job
from rq.job import Job

from fanout import _task
from fanout._wire import FAILED, NOT_RUN, OK_PICKLED, OK_RAW, Record, Task, not_run_record
from fanout.backends.base import Backend, MapSpec
from fanout.backends.inline import InlineBackend
from fanout.backends.rq.allowlist import (
    allowlist_from_env,
    check_callable,
    check_name,
    is_module_path,
    restricted_loads,
    target_module,
)
from fanout.backends.rq.context import WorkerContext
from fanout.backends.rq.protocol import HORSE_PID, RUN_BATCH_NAMES, JobArgs, RunKeys
from fanout.backends.rq.pusher import PUSH_SECONDS, Pusher
from fanout.backends.rq.signing import keyring_of
from fanout.backends.rq.split import PACE_CHECK_SECONDS, Split, give_back_unloadable
from fanout.backends.runstate import RunState
from fanout.calls import TARGETS as CALLS_TARGETS
from fanout.errors import JobStopped, TargetError, TargetNotAllowed
from fanout.models import NOT_RUN as NOT_RUN_NAME
from fanout.models import TaskError, TaskResult, cancelled
from fanout.targets import resolve_target

log = logging.getLogger("fanout.worker")

# As fanout.tracing's (imported only where this is loaded): a process that traces has it.
TRACE_MODULE = "opentelemetry.trace"

CANCELLED_WHILE_RUNNING = "the run was cancelled while its job ran"


def run_batch(*args: Any) -> int:
    """RQ job function (``fanout.rq.run_batch``) for a stock ``rq worker``."""
    job = get_current_job()
    assert job is not None, "run_batch runs as an RQ job"
    with contextlib.suppress(Exception):  # a name for the horse if it dies (watch.py)
        job.connection.hset(job.key, HORSE_PID, os.getpid())
    job_args = JobArgs(*args)
    ctx = WorkerContext.of_stock_worker(job, limited=job_args.limits is not None)
    try:
        return execute_batch(job, ctx, job_args)
    finally:
        ctx.close()


def execute_batch(job: Job, ctx: WorkerContext, args: JobArgs) -> int:
    """Run one batch of tasks and push their results; returns the number of tasks."""
    # Results are sealed with the keyring the job was opened with, if it was signed.
    pusher = Pusher(job, RunKeys(args.run_id), ctx, keyring_of(job.serializer))
    state = pusher.begin()
    if state is None:
        return 0  # the run is gone (collected, expired): nobody would read a result
    if state != "running":  # cancelled, or halted by max_failures: none of these run
        pusher.cancel(args.indices, _STOPPED.get(state, f"the run was {state} before the"
                                                        " task started"))  # fmt: skip
        return len(args.indices)
    try:
        fn = _load_target(args.target, ctx.allow)
    except TargetError as exc:
        if give_back_unloadable(job, args, pusher, ctx.name, ctx.pause):
            return len(args.indices)  # for a worker that can load it
        # No worker can: say so in every task's result; the caller then fails the run
        # at once instead of finding failed jobs one by one.
        where = ", ".join(dict.fromkeys((*args.refused, ctx.name)))
        error = TaskError(type(exc).__name__, f"on RQ worker {where}: {exc}", cause="not-run")
        for index in args.indices:
            pusher.add(not_run_record(index, error, time.time()), None)
        pusher.flush()
        return len(args.indices)
    inputs, todo, keep = _unpickle_inputs(args, ctx.allow, pusher)
    prior = None if args.attempts is None else [args.attempts[pos] for pos in keep]
    max_memory, max_tasks, max_held = args.limits or (None, None, None)
    # Numbered as the run numbers them: results and fanout's own messages name the run's
    # task, not a position in this job.
    spec = MapSpec(fn, args.target, iter(inputs), star=args.star, ordered=False,
                   timeout=args.timeout, retries=args.retries, attempts=prior,
                   indices=todo, trace=_trace(args), max_memory=max_memory,
                   max_tasks_per_worker=max_tasks, max_memory_per_worker=max_held)  # fmt: skip
    pusher.check_stop(todo)  # the stop came while the inputs were being unpickled
    _Tasks(job, ctx, args, pusher, todo, keep).run_all(spec)
    return len(args.indices)


class _Tasks:
    """The job's tasks through the worker's task process (or this process, on a stock
    ``rq worker``), each result pushed; and those that leave the job before they start:
    given back as new jobs when the job runs late (split.py) or its worker is drained
    (fleet.py), cancelled once a push has
    found its run halted (max_failures) or cancelled — those running finish — and, when
    the run's caller stops the job (Ctrl-C, cancel), cancelled before the one running is
    stopped."""

    def __init__(self, job: Job, ctx: WorkerContext, args: JobArgs, pusher: Pusher,
                 todo: list[int], keep: list[int]) -> None:  # fmt: skip
        """``todo``: the run's index of each task the job runs; ``keep``: its position
        in ``args``."""
        self.job = job
        self.ctx = ctx
        self.pusher = pusher
        self.todo = todo
        self.split = Split(job, args, keep, pusher)
        self.executor: Backend = ctx.executor or InlineBackend()
        self.stopped = False  # by the run's caller: the one running was stopped
        self.handed = 0  # tasks handed over so far, moved or cancelled
        self.run: RunState | None = None

    def run_all(self, spec: MapSpec) -> None:
        results: Iterator[TaskResult]
        if self.ctx.executor is not None:
            every = PUSH_SECONDS if self.split.deadline is None else PACE_CHECK_SECONDS
            self.run, results = self.ctx.executor.stream(spec, self.idle, every)
        else:
            self.run, results = _in_this_process(self.ctx.name, spec)
        pusher, run = self.pusher, self.run
        pusher.pending = set(self.todo)
        try:
            for result in results:
                self.split.progress()
                if self.ctx.stop_requested and result.error is not None:
                    result = _stopped(result)  # killed because its run was cancelled
                pusher.add(_record(result), result)
                self.stop_if_asked()
                if pusher.gone:
                    break  # the caller's run is over: nobody reads what is left
                self.hand_if_due()
            pusher.flush()
            if run.handed is not None and len(run.handed) > self.handed:
                self.hand(run.handed[self.handed :])  # came back after (barrier.py)
        finally:
            if isinstance(results, Generator):
                results.close()
        if self.stopped:
            raise JobStopped(f"job {self.job.id} was cancelled by the caller")

    def idle(self) -> None:
        self.stop_if_asked()
        self.pusher.idle()
        self.hand_if_due()

    def hand_if_due(self) -> None:
        run = self.run
        assert run is not None
        stopped = self.pusher.state in _STOPPED and run.handed is None
        # Drained (fanout drain): the task running finishes here, the rest goes back.
        drained = self.ctx.drain_requested and run.handed is None
        if stopped or drained or self.split.due():
            self.hand(self.executor.give_back(run))

    def hand(self, tasks: list[Task]) -> None:
        self.handed += len(tasks)
        pusher = self.pusher
        if pusher.state in _STOPPED:
            pusher.cancel([task.index for task in tasks], _STOPPED[pusher.state])
        else:
            assert self.run is not None
            try:
                self.split.give_back(tasks, self.run.per_task)
                if self.ctx.drain_requested:
                    self.ctx.gave_back += len(tasks)
            except (redis.RedisError, OSError) as exc:
                # Not run here either way: the transaction that enqueues them went
                # through (the run's stream says where they went) or it did not (the
                # caller runs them again once this job is gone without their results).
                log.warning("job %s: could not give %d tasks back (%s); the caller runs"
                            " them again", self.job.id, len(tasks), exc)  # fmt: skip
        pusher.pending.difference_update(task.index for task in tasks)

    def stop_if_asked(self) -> None:
        """The worker was asked to stop this job (``kill_horse``). By the run's caller
        (Ctrl-C, cancel): the tasks not started are cancelled, each with its result, and
        then the one running is stopped, so that its worker reports it (Cancelled, its
        attempt). By someone's ``rq stop-job``: stopped at once."""
        if not self.ctx.stop_requested or self.stopped:
            return
        if not self.pusher.stopped_by_caller():
            self.kill_running()
            raise JobStopped(f"job {self.job.id} was stopped (rq stop-job)")
        assert self.run is not None
        self.stopped = True
        self.hand(self.executor.give_back(self.run))  # first: nothing new may start
        self.run.break_target(cancelled(CANCELLED_WHILE_RUNNING))  # no retry
        self.kill_running()

    def kill_running(self) -> None:
        if self.ctx.executor is not None:  # else RQ stops the job's work-horse itself
            self.ctx.executor.kill_running()


# A run in one of these states runs no task of a job that has not started yet.
_STOPPED = {
    "halted": "the run stopped (max_failures) before the task started",
    "cancelled": "the run was cancelled before the task started",
}


def _trace(args: JobArgs) -> dict[str, str] | None:
    """The job's trace context for its tasks (``fanout.tracing``), named by the run's
    id: the caller's, or none where this worker traces on its own (its tracer provider
    set up); None where neither."""
    if args.trace is None and TRACE_MODULE not in sys.modules:
        return None  # the common case, at once
    from fanout import tracing

    if args.trace is None and not tracing.provider_set():
        return None
    return {**(args.trace or {}), tracing.RUN_ID: args.run_id}


def _load_target(target: str, allow: tuple[str, ...]) -> Callable[..., Any]:
    if not is_module_path(target_module(target)):
        # Never a path: a worker imports targets by module name, nothing else.
        raise TargetError(f"target {target!r} is not a 'package.module:function' name")
    calls = target in CALLS_TARGETS  # the drop-ins' calls (also as earlier releases named
    if not calls:  # them): the allowlist checks each one's function as it is unpickled
        check_name(target, "target", allow)
    fn, _ = resolve_target(target)
    if not calls:
        check_callable(fn, target, "target", allow)
    return fn


def _unpickle_inputs(
    args: JobArgs, allow: tuple[str, ...], pusher: Pusher
) -> tuple[list[Any], list[int], list[int]]:
    """The inputs that could be read, the run's index of each and its position in
    ``args``; the others' failures are pushed at once."""
    items = list(args.items)
    failed: set[int] = set()
    for pos in args.pickled:
        index = args.indices[pos]
        try:
            items[pos] = restricted_loads(items[pos], allow)
        except Exception as exc:
            if isinstance(exc, TargetNotAllowed):
                error = TaskError(TargetNotAllowed.__name__, f"input of task {index}: {exc}",
                                  cause="not-run")  # fmt: skip
            else:
                error = _task.input_error(index, exc, "unpickle")
            pusher.add(not_run_record(index, error, time.time()), None)
            failed.add(pos)
    keep = [pos for pos in range(len(items)) if pos not in failed]
    return [items[pos] for pos in keep], [args.indices[pos] for pos in keep], keep


def _in_this_process(name: str, spec: MapSpec) -> tuple[RunState, Generator[TaskResult]]:
    """A stock ``rq worker``: run the tasks right here, under the RQ worker's name."""
    run, results = InlineBackend().stream(spec)

    def renamed() -> Generator[TaskResult]:
        me = multiprocessing.current_process()
        previous, me.name = me.name, name
        try:
            yield from results
        finally:
            me.name = previous

    return run, renamed()


def _stopped(result: TaskResult) -> TaskResult:
    """The result of a task stopped mid-run at its caller's request: Cancelled."""
    error = cancelled("the task was stopped: its run was cancelled while it ran")
    return replace(result, error=error)


def _record(result: TaskResult) -> Record:
    """The wire record of a result of the job's inner run (numbered as the run's)."""
    index = result.index
    if result.ok:
        value = result.value
        status, payload = OK_RAW, value
        if type(value) not in _task.RAW_TYPES:
            try:
                status, payload = OK_PICKLED, _task.dumps(value)
            except Exception as exc:
                status, payload = FAILED, _task.value_error(index, value, exc)
    else:
        assert result.error is not None
        ran = result.worker.name != NOT_RUN_NAME
        status, payload = (FAILED if ran else NOT_RUN), result.error
    usage = result.usage
    return (index, status, payload, result.started_at, result.finished_at, result.duration,
            result.output, None if usage is None else (usage.cpu, usage.max_rss))  # fmt: skip


class FanoutJob(Job):
    """An RQ Job that asks the allowlist before it imports any function, and runs fanout
    jobs with the context of the worker that took them.

    A job names its function and its callbacks by dotted path, and RQ imports them
    when they are first used; this class checks each name first, and the callable it
    resolves to. Callbacks and webhooks are not covered by a job's signature (they live
    beside the signed data in the job's hash), so a worker that checks signatures
    refuses them; elsewhere callbacks must pass the allowlist.
    """

    #: Set by the ``fanout worker`` that runs the job (None on a stock ``rq worker``).
    context: WorkerContext | None = None

    def allowlist(self) -> tuple[str, ...]:
        return self.context.allow if self.context is not None else allowlist_from_env()

    @property
    def func(self) -> Any:
        name = self.func_name
        if name is None or name in RUN_BATCH_NAMES:
            return super().func
        allow = self.allowlist()
        check_name(name, "RQ job function", allow)
        fn = super().func
        check_callable(fn, name, "RQ job function", allow)
        return fn

    def _execute(self) -> Any:
        metrics = self.context.metrics if self.context is not None else None
        # --metrics-port: busy meanwhile, and the job counted by how it ended.
        with contextlib.nullcontext() if metrics is None else metrics.job(JobStopped):
            if self.func_name in RUN_BATCH_NAMES and self.context is not None:
                return execute_batch(self, self.context, JobArgs(*self.args))
            return super()._execute()

    def _callback(self, kind: str) -> Any:
        """RQ's ``kind`` callback, or None when it may not run here."""
        name = getattr(self, f"_{kind}_callback_name")
        if not name:
            return None
        if keyring_of(self.serializer) is not None:
            # The hash field naming it is outside the signed data: anyone who can
            # write to Redis could set it, on any job. fanout never does.
            log.warning("job %s: callback %s refused (not covered by the signature)",
                        self.id, name)  # fmt: skip
            return None
        allow = self.allowlist()
        try:
            check_name(name, "RQ callback", allow)
            fn = getattr(Job, f"{kind}_callback").fget(self)  # RQ's own loading
            check_callable(fn, name, "RQ callback", allow)
        except TargetNotAllowed as exc:
            log.warning("job %s: %s", self.id, exc)
            return None
        return fn

    @property
    def success_callback(self) -> Any:
        return self._callback("success")

    @property
    def failure_callback(self) -> Any:
        return self._callback("failure")

    @property
    def stopped_callback(self) -> Any:
        return self._callback("stopped")

    def send_webhooks(self, status: Any, *, exc_string: str | None = None) -> None:
        if self.webhooks and keyring_of(self.serializer) is not None:
            # Like callbacks, webhooks live outside the signed data.
            log.warning("job %s: webhooks refused (not covered by the signature)", self.id)
            return
        super().send_webhooks(status, exc_string=exc_string)
