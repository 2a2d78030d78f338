"""The worker's side of one fanout job: check the target, run the batch, push records.

RQ calls ``fanout.rqworker.run_batch(*JobArgs)``. On a ``fanout worker`` the job runs
with the worker's :class:`WorkerContext` (its task process, heartbeat, allowlist, stop
flag), handed over by :class:`FanoutJob`; on a stock ``rq worker`` it makes a context
of its own and runs the tasks in the worker's process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import socket
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

from rq import get_current_job
from rq.job import Job

from fanout import _task
from fanout._wire import FAILED, OK_PICKLED, OK_RAW, Record, not_run_record
from fanout.backends.base import MapSpec
from fanout.backends.inline import InlineBackend
from fanout.backends.local import LocalBackend
from fanout.backends.rq.allowlist import (
    allowlist_from_env,
    check_callable,
    check_name,
    is_module_path,
    restricted_loads,
    target_module,
)
from fanout.backends.rq.connection import Outage, RedisFull, RedisLost, translate
from fanout.backends.rq.protocol import (
    PUSH_SCRIPT,
    RUN_BATCH,
    RUN_TTL,
    Identity,
    JobArgs,
    RunKeys,
    pack_results,
)
from fanout.backends.rq.signing import Keyring, keyring_of
from fanout.errors import SerializationError, TargetError, TargetNotAllowed
from fanout.models import TaskError, TaskResult
from fanout.targets import resolve_target

log = logging.getLogger("fanout.worker")

PUSH_SECONDS = 0.05  # a worker pushes finished results at least this often
PUSH_RECORDS = 2000  # ... or once this many are waiting
REDIS_WAIT = 60.0  # how long a push keeps retrying a lost Redis, by default
# fanout's own errors name the task by its index in the batch: renumbered for the run.
_OWN_ERRORS = frozenset({"SerializationError", "WorkerLost", "TaskTimeout", "TargetError"})


class JobStopped(Exception):
    """The job was stopped by RQ's stop-job command (or a cold shutdown)."""


class WorkerContext:
    """What a job needs from the worker that runs it."""

    def __init__(
        self,
        name: str,
        url: str,
        allow: tuple[str, ...],
        executor: LocalBackend | None = None,
    ) -> None:
        self.name = name
        self.url = url  # for messages only
        self.allow = allow  # module prefixes whose code may run; () admits any
        self.executor = executor  # the task process; None: run tasks in this process
        self.heartbeat: Callable[[], None] | None = None  # set while a job runs
        # Redis's limit on one value (proto-max-bulk-len): a bigger push would fail.
        self.max_value_bytes = 512 * 2**20
        self.redis_wait = REDIS_WAIT  # how long a push waits for a lost Redis
        self.stop_requested = False  # set from RQ's command thread (stop-job)

    @classmethod
    def of_stock_worker(cls, job: Job) -> WorkerContext:
        """A stock ``rq worker``: its name, ``FANOUT_ALLOW``, tasks run in-process."""
        kwargs = job.connection.connection_pool.connection_kwargs
        url = f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
        name = job.worker_name or multiprocessing.current_process().name
        return cls(name, url, allowlist_from_env())


def run_batch(*args: Any) -> int:
    """RQ job function (``fanout.rqworker.run_batch``) for a stock ``rq worker``."""
    job = get_current_job()
    assert job is not None, "run_batch runs as an RQ job"
    return execute_batch(job, WorkerContext.of_stock_worker(job), JobArgs(*args))


def execute_batch(job: Job, ctx: WorkerContext, args: JobArgs) -> int:
    """Run one batch of tasks and push their results; returns the number of tasks."""
    # Results are sealed with the keyring the job was opened with, if it was signed.
    pusher = Pusher(job, RunKeys(args.run_id), ctx, keyring_of(job.serializer))
    try:
        fn = _load_target(args.target, ctx.allow)
    except TargetError as exc:
        # Say so in every task's result: the caller then fails the run at once
        # instead of finding failed jobs one by one.
        error = TaskError(type(exc).__name__, f"on RQ worker {ctx.name}: {exc}")
        for index in args.indices:
            pusher.add(not_run_record(index, error, time.time()), None)
        pusher.flush()
        return len(args.indices)
    inputs, todo = _unpickle_inputs(args, ctx.allow, pusher)
    spec = MapSpec(fn, args.target, iter(inputs), star=args.star, ordered=False,
                   timeout=args.timeout)  # fmt: skip
    pusher.check_stop(job.id)  # the stop came while the inputs were being unpickled
    if ctx.executor is not None:
        results: Iterator[TaskResult] = ctx.executor.stream(spec, pusher.idle, PUSH_SECONDS)
    else:
        results = _in_this_process(ctx.name, spec)
    try:
        for result in results:
            pusher.add(_record(result, todo[result.index]), result)
            pusher.check_stop(job.id)
            if pusher.gone:
                break  # the caller's run is over: nobody reads what is left
        pusher.flush()
    finally:
        if isinstance(results, Generator):
            results.close()
    return len(args.indices)


def _load_target(target: str, allow: tuple[str, ...]) -> Callable[..., Any]:
    if not is_module_path(target_module(target)):
        # Never a path: a worker imports targets by module name, nothing else.
        raise TargetError(f"target {target!r} is not a 'package.module:function' name")
    check_name(target, "target", allow)
    fn, _ = resolve_target(target)
    check_callable(fn, target, "target", allow)
    return fn


def _unpickle_inputs(
    args: JobArgs, allow: tuple[str, ...], pusher: Pusher
) -> tuple[list[Any], list[int]]:
    """The inputs that could be read, and the run's index of each; the others' failures
    are pushed at once."""
    items = list(args.items)
    failed: set[int] = set()
    for pos in args.pickled:
        index = args.indices[pos]
        try:
            items[pos] = restricted_loads(items[pos], allow)
        except Exception as exc:
            if isinstance(exc, TargetNotAllowed):
                error = TaskError(TargetNotAllowed.__name__, f"input of task {index}: {exc}")
            else:
                error = _task.input_error(index, exc, "unpickle")
            pusher.add(not_run_record(index, error, time.time()), None)
            failed.add(pos)
    keep = [pos for pos in range(len(items)) if pos not in failed]
    return [items[pos] for pos in keep], [args.indices[pos] for pos in keep]


def _in_this_process(name: str, spec: MapSpec) -> Iterator[TaskResult]:
    """A stock ``rq worker``: run the tasks right here, under the RQ worker's name."""
    me = multiprocessing.current_process()
    previous, me.name = me.name, name
    try:
        yield from InlineBackend().map(spec)
    finally:
        me.name = previous


def _record(result: TaskResult, index: int) -> Record:
    """The wire record of a result of the batch's inner run, under the run's ``index``."""
    if result.ok:
        value = result.value
        status, payload = OK_RAW, value
        if type(value) not in _task.RAW_TYPES:
            try:
                status, payload = OK_PICKLED, _task.dumps(value)
            except Exception as exc:
                status, payload = FAILED, _task.value_error(index, value, exc)
    else:
        error = result.error
        assert error is not None
        status, payload = FAILED, error
        if error.type in _OWN_ERRORS:
            message = re.sub(rf"\btask {result.index}\b", f"task {index}", error.message)
            payload = TaskError(error.type, message, error.traceback)
    return (index, status, payload, result.started_at, result.finished_at, result.duration,
            result.output)  # fmt: skip


class Pusher:
    """Collects result records and pushes them onto the run's list in bulk."""

    def __init__(
        self, job: Job, keys: RunKeys, ctx: WorkerContext, keyring: Keyring | None
    ) -> None:
        connection = job.connection
        self.job_id = job.id
        self.connection = connection
        self.keys = keys
        self.ctx = ctx
        self.keyring = keyring
        self.script = connection.register_script(PUSH_SCRIPT)
        self.gone = False  # the run has ended: nobody reads its results any more
        self.records: list[Record] = []
        self.identity: Identity | None = None
        self.last = time.monotonic()

    def add(self, record: Record, result: TaskResult | None) -> None:
        """One more record; ``result`` says who ran it (None: nobody, this worker decided)."""
        if result is not None:
            w = result.worker
            identity = (w.name, w.pid, w.ppid, w.host)
            if self.identity is not None and identity != self.identity:
                self.flush()  # one identity per message (a replaced task process)
            self.identity = identity
        elif self.identity is None:
            self.identity = (self.ctx.name, os.getpid(), os.getppid(), socket.gethostname())
        self.records.append(record)
        if len(self.records) >= PUSH_RECORDS or time.monotonic() - self.last >= PUSH_SECONDS:
            self.flush()

    def check_stop(self, job_id: str) -> None:
        """Raise JobStopped if the job was asked to stop: by its caller, which ended the
        run (Ctrl-C, cancel), or by someone's ``rq stop-job``."""
        if not self.ctx.stop_requested:
            return
        try:
            by_caller = bool(self.connection.exists(self.keys.ended))
        except Exception:
            by_caller = False
        if by_caller:
            raise JobStopped(f"job {job_id} was cancelled by the caller")
        raise JobStopped(f"job {job_id} was stopped (rq stop-job)")

    def idle(self) -> None:
        """Before waiting for the task process: push what is done, keep RQ informed."""
        self.check_stop(self.job_id)
        # Called every PUSH_SECONDS at least while tasks run: one push per interval, not
        # one per task (a round trip each), and none held back longer than that.
        if time.monotonic() - self.last >= PUSH_SECONDS:
            self.flush()
        if self.ctx.heartbeat is not None:
            self.ctx.heartbeat()

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.records:
            return
        records, self.records = self.records, []
        for data in self.messages(records):
            if not self.push(data):
                self.gone = True
                return

    def messages(self, records: list[Record]) -> Iterator[bytes]:
        """The records as result messages, each within Redis's size limit for a value:
        halved until they fit; a single result too big for it fails its task instead."""
        assert self.identity is not None
        data = pack_results(self.keys, self.identity, records, self.keyring)
        limit = self.ctx.max_value_bytes
        if len(data) <= limit:
            yield data
        elif len(records) > 1:
            half = len(records) // 2
            yield from self.messages(records[:half])
            yield from self.messages(records[half:])
        else:
            index, _, _, started, finished, duration, output = records[0]
            error = TaskError(
                SerializationError.__name__,
                f"the result of task {index} is {len(data) / 2**20:.0f} MiB, over the"
                f" {limit / 2**20:.0f} MiB that Redis takes in one value (its"
                " proto-max-bulk-len)",
            )
            small = (index, FAILED, error, started, finished, duration, output[:10_000])
            yield pack_results(self.keys, self.identity, [small], self.keyring)

    def push(self, data: bytes) -> bool:
        """Push one message; False if the run has ended (nobody reads it). A lost or full
        Redis is waited for (``ctx.redis_wait``), heartbeating all the while."""
        outage = Outage(self.ctx.url, self.ctx.redis_wait, f"worker {self.ctx.name}: ")
        keys = [self.keys.results, self.keys.ended]
        while True:
            try:
                with translate(self.ctx.url):
                    return bool(self.script(keys=keys, args=[data, RUN_TTL]))
            except (RedisLost, RedisFull) as exc:
                outage.hit(exc)  # keep the results, try again
                if self.ctx.heartbeat is not None:
                    self.ctx.heartbeat()


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
        if name is None or name == RUN_BATCH:
            return super().func
        allow = self.allowlist()
        check_name(name, "RQ job function", allow)
        fn = super().func
        check_callable(fn, name, "RQ job function", allow)
        return fn

    def _execute(self) -> Any:
        if self.func_name == RUN_BATCH and self.context is not None:
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
