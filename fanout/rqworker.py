"""The worker side of the rq backend: the job function and ``fanout worker``.

A fanout job is a plain RQ job whose function is :func:`run_batch`: it carries a
batch of tasks (indices and inputs) and the target's ``module:function`` name, and
pushes each task's result record onto the run's Redis list, which the caller waits on
with BLPOP. Any RQ worker can run it (``rq worker`` imports fanout); ``fanout worker``
runs it faster and safer::

    RQ worker process (FanoutWorker: dequeues, heartbeats, pushes results)
        |  batch of tasks          ^ result records
        v                          |
    task process, named after the RQ worker (a one-process local pool)

No fork per job: the task process lives across jobs. When a task kills its process,
the worker reports that task as ``WorkerLost`` (or retries it) and carries on with a
new task process, as the local backend does.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import multiprocessing
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any
from urllib.parse import urlsplit

from fanout import _task
from fanout.allowlist import (
    check_callable,
    check_name,
    is_module_path,
    parse_allow,
    restricted_loads,
    target_module,
)
from fanout.backends.base import MapSpec
from fanout.backends.inline import InlineBackend
from fanout.backends.local import LocalBackend
from fanout.errors import SignatureError, TargetError, TargetNotAllowed
from fanout.models import TaskResult
from fanout.redisconn import connect, mask_url, redis_url, url_passwords
from fanout.signing import Keyring, keyring_of, load_keyring, secret_env, serializer_for
from fanout.targets import resolve_target

log = logging.getLogger("fanout.worker")

RESULT_TTL = 3600  # seconds a run's result list outlives its last push
PUSH_SECONDS = 0.05  # a worker pushes finished results at least this often
PUSH_RECORDS = 2000  # ... or once this many are waiting
HEARTBEAT_SECONDS = 2.0  # a fanout worker's heartbeat, idle or busy
REDIS_WAIT = 60.0  # how long a push keeps retrying a lost Redis

RUN_BATCH = "fanout.rqworker.run_batch"  # the RQ function name of every fanout job

# Set in a `fanout worker` process: the task process pool and the job being run.
_executor: LocalBackend | None = None
_heartbeat: Callable[[], None] | None = None
_stop_requested = False
# The worker's allowlist of module prefixes: None when not set by `fanout worker`
# (a stock `rq worker`), where FANOUT_ALLOW is read instead; () admits everything.
_allow: tuple[str, ...] | None = None


def current_allowlist() -> tuple[str, ...]:
    if _allow is not None:
        return _allow
    return parse_allow([os.environ.get("FANOUT_ALLOW", "")])


def run_batch(
    results_key: str,
    target: str,
    star: bool,
    timeout: float | None,
    retries: int,
    indices: list[int],
    items: list[Any],
    pickled: list[int],
) -> int:
    """RQ job function: run one batch of tasks and push their results; returns the count."""
    from rq import get_current_job

    job = get_current_job()
    assert job is not None, "run_batch runs as an RQ job"
    name = job.worker_name or multiprocessing.current_process().name
    # Results are sealed with the keyring the job was opened with, if it was signed.
    pusher = _Pusher(job.connection, results_key, name, keyring_of(job.serializer))
    allow = current_allowlist()
    try:
        if not is_module_path(target_module(target)):
            # Never a path: a worker imports targets by module name, nothing else.
            raise TargetError(f"target {target!r} is not a 'package.module:function' name")
        check_name(target, "target", allow)
        fn, _ = resolve_target(target)
        check_callable(fn, target, "target", allow)
    except TargetError as exc:
        # Say so in every task's result: the caller then fails the run at once
        # instead of finding failed jobs one by one.
        now = time.time()
        error = (type(exc).__name__, f"on RQ worker {name}: {exc}", "")
        for index in indices:
            pusher.add(_failed_record(index, error, now), None)
        pusher.flush()
        return len(indices)
    failed: dict[int, tuple[str, str, str]] = {}
    for pos in pickled:
        try:
            items[pos] = restricted_loads(items[pos], allow)
        except TargetNotAllowed as exc:
            failed[pos] = (TargetNotAllowed.__name__, f"input of task {indices[pos]}: {exc}", "")
        except Exception as exc:
            failed[pos] = _task.input_error(indices[pos], exc, "unpickle")
    for pos, error in failed.items():
        now = time.time()
        pusher.add(_failed_record(indices[pos], error, now), None)
    todo = [pos for pos in range(len(indices)) if pos not in failed]
    spec = MapSpec(
        fn,
        target,
        iter([items[pos] for pos in todo]),
        star=star,
        ordered=False,
        timeout=timeout,
        retries=retries,
    )
    if _stop_requested:  # the stop came while the inputs were being unpickled
        raise JobStopped(f"job {job.id} was stopped (rq stop-job)")
    if _executor is not None:
        results: Iterator[TaskResult] = _executor.stream(spec, pusher.idle, PUSH_SECONDS)
    else:
        results = _in_this_process(name, spec)
    try:
        for result in results:
            pusher.add(_record(result, indices[todo[result.index]]), result)
            if _stop_requested:
                raise JobStopped(f"job {job.id} was stopped (rq stop-job)")
            if pusher.gone:
                break  # the caller's run is over: nobody reads what is left
        pusher.flush()
    finally:
        if isinstance(results, Generator):
            results.close()
    return len(indices)


def _in_this_process(name: str, spec: MapSpec) -> Iterator[TaskResult]:
    """A stock ``rq worker``: run the tasks right here, under the RQ worker's name."""
    me = multiprocessing.current_process()
    previous, me.name = me.name, name
    try:
        yield from _InProcess().map(spec)
    finally:
        me.name = previous


class _InProcess(InlineBackend):
    name = "rq"


class _TaskProcess(LocalBackend):
    name = "rq"


def _record(result: TaskResult, index: int) -> tuple[Any, ...]:
    """The wire record of a result: (index, status, payload, attempts, timing..., output)."""
    if result.ok:
        value = result.value
        if type(value) in _task.RAW_TYPES:
            status, payload = _task.OK_RAW, value
        else:
            try:
                status, payload = _task.OK_PICKLED, _task.dumps(value)
            except Exception as exc:
                status = _task.FAILED
                payload = (
                    "SerializationError",
                    f"cannot pickle the return value of task {index}"
                    f" ({type(value).__name__}): {_task.describe(exc)}",
                    "",
                )
    else:
        error = result.error
        assert error is not None
        status = _task.FAILED
        message = error.message
        if error.type in _OWN_ERRORS:
            # The task process numbered this batch's tasks from 0; name the run's index.
            message = re.sub(rf"\btask {result.index}\b", f"task {index}", message)
        payload = (error.type, message, error.traceback)
    return (
        index,
        status,
        payload,
        result.attempts,
        result.started_at,
        result.finished_at,
        result.duration,
        result.output,
    )


_OWN_ERRORS = frozenset({"SerializationError", "WorkerLost", "TaskTimeout", "TargetError"})


def _failed_record(index: int, error: tuple[str, str, str], now: float) -> tuple[Any, ...]:
    return (index, _task.FAILED, error, 0, now, now, 0.0, "")


class JobStopped(Exception):
    """The job was stopped by RQ's stop-job command (or a cold shutdown)."""


# Push a message unless the run has ended: a job that finishes after its caller is
# gone must not re-create the result list. (A marker of the end, not of life: after a
# Redis restart the run goes on and its pushes must too.)
_PUSH_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


class _Pusher:
    """Collects result records and pushes them to the run's list in bulk."""

    def __init__(self, connection: Any, key: str, name: str, keyring: Keyring | None) -> None:
        self.connection = connection
        self.keyring = keyring
        self.key = key
        self.ended = key.rsplit(":", 1)[0] + ":ended"
        self.script = connection.register_script(_PUSH_SCRIPT)
        self.gone = False
        self.name = name
        self.records: list[tuple[Any, ...]] = []
        self.info: tuple[str, int, int, str] | None = None
        self.last = time.monotonic()

    def add(self, record: tuple[Any, ...], result: TaskResult | None) -> None:
        if result is not None:
            w = result.worker
            info = (w.name, w.pid, w.ppid, w.host)
            if self.info is not None and info != self.info:
                self.flush()  # one identity per message (a replaced task process)
            self.info = info
        elif self.info is None:
            self.info = (self.name, os.getpid(), os.getppid(), socket.gethostname())
        self.records.append(record)
        if len(self.records) >= PUSH_RECORDS or time.monotonic() - self.last >= PUSH_SECONDS:
            self.flush()

    def idle(self) -> None:
        """Before waiting for the task process: push what is done, keep RQ informed."""
        if _stop_requested:
            raise JobStopped("stopped (rq stop-job)")
        # Called every PUSH_SECONDS at least while tasks run: one push per interval, not
        # one per task (a round trip each), and none held back longer than that.
        if time.monotonic() - self.last >= PUSH_SECONDS:
            self.flush()
        if _heartbeat is not None:
            _heartbeat()

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.records:
            return
        import redis

        data = pickle.dumps((self.info, self.records), pickle.HIGHEST_PROTOCOL)
        if self.keyring is not None:
            # Bound to this run: a sealed message replayed onto another run's list is
            # refused there.
            data = self.keyring.seal(self.key.encode() + b"\n" + data)
        self.records = []
        deadline, pause = time.monotonic() + REDIS_WAIT, 0.1
        while True:
            try:
                pushed = self.script(keys=[self.key, self.ended], args=[data, RESULT_TTL])
                break
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(pause)  # Redis restarting: keep the results, try again
                pause = min(2.0, pause * 2)
        if not pushed:
            self.gone = True


# -- fanout worker ----------------------------------------------------------------------


def default_worker_name() -> str:
    return f"fanout-{socket.gethostname()}-{os.getpid()}"


_job_class: type | None = None


def make_job_class() -> type:
    """FanoutJob: an RQ Job that asks the allowlist before it imports any function.

    A job names its function and its callbacks by dotted path, and RQ imports them
    when they are first used; this class checks each name first, and the callable it
    resolves to. Callbacks and webhooks are not covered by a job's signature (they live
    beside the signed data in the job's hash), so a worker that checks signatures
    refuses them; elsewhere callbacks must pass the allowlist.
    """
    global _job_class
    if _job_class is not None:
        return _job_class
    from rq.job import Job

    class FanoutJob(Job):
        @property
        def func(self) -> Any:
            name = self.func_name
            if name is None or name == RUN_BATCH:
                return super().func
            allow = current_allowlist()
            check_name(name, "RQ job function", allow)
            fn = super().func
            check_callable(fn, name, "RQ job function", allow)
            return fn

        def _callback(self, name: str | None, load: Callable[[], Any]) -> Any:
            """RQ's callback ``name``, or None when it may not run here."""
            if not name:
                return None
            if keyring_of(self.serializer) is not None:
                # The hash field naming it is outside the signed data: anyone who can
                # write to Redis could set it, on any job. fanout never does.
                log.warning("job %s: callback %s refused (not covered by the signature)",
                            self.id, name)  # fmt: skip
                return None
            allow = current_allowlist()
            try:
                check_name(name, "RQ callback", allow)
                fn = load()
                check_callable(fn, name, "RQ callback", allow)
            except TargetNotAllowed as exc:
                log.warning("job %s: %s", self.id, exc)
                return None
            return fn

        @property
        def success_callback(self) -> Any:
            return self._callback(self._success_callback_name, lambda: super(
                FanoutJob, self).success_callback)  # fmt: skip

        @property
        def failure_callback(self) -> Any:
            return self._callback(self._failure_callback_name, lambda: super(
                FanoutJob, self).failure_callback)  # fmt: skip

        @property
        def stopped_callback(self) -> Any:
            return self._callback(self._stopped_callback_name, lambda: super(
                FanoutJob, self).stopped_callback)  # fmt: skip

        def send_webhooks(self, status: Any, *, exc_string: str | None = None) -> None:
            if self.webhooks and keyring_of(self.serializer) is not None:
                # Like callbacks, webhooks live outside the signed data.
                log.warning("job %s: webhooks refused (not covered by the signature)", self.id)
                return
            super().send_webhooks(status, exc_string=exc_string)

    _job_class = FanoutJob
    return FanoutJob


def __getattr__(name: str) -> Any:
    # `rq worker --job-class fanout.rqworker.FanoutJob` without importing rq at import.
    if name == "FanoutJob":
        return make_job_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _refusal(exc_info: tuple[Any, ...]) -> BaseException | None:
    """The SignatureError or TargetNotAllowed behind a failed job, if that is why."""
    exc = exc_info[1] if len(exc_info) > 1 else None
    while exc is not None:
        if isinstance(exc, SignatureError | TargetNotAllowed):
            return exc
        exc = exc.__cause__
    return None


def make_worker_class() -> type:
    """FanoutWorker, built on first use so that importing fanout never imports rq."""
    from rq.worker import SimpleWorker, WorkerStatus

    class FanoutWorker(SimpleWorker):
        """An RQ worker that runs jobs in-process, tasks in a long-lived task process."""

        job_class = make_job_class()  # type: ignore[assignment]

        def execute_job(self, job: Any, queue: Any) -> None:
            global _heartbeat, _stop_requested
            _stop_requested = False
            execution = self.prepare_execution(job)
            last = [time.monotonic()]

            def heartbeat() -> None:
                if time.monotonic() - last[0] >= HEARTBEAT_SECONDS:
                    last[0] = time.monotonic()
                    self.maintain_heartbeats(job, execution)

            _heartbeat = heartbeat
            try:
                self.perform_job(job, queue, execution)
            finally:
                _heartbeat = None
            self.set_state(WorkerStatus.IDLE)

        def register_birth(self) -> None:
            super().register_birth()  # type: ignore[no-untyped-call]
            # Tells callers this worker heartbeats every HEARTBEAT_SECONDS, so that a
            # silence of a few heartbeats means it died (RQ alone waits for minutes).
            self.connection.hset(self.key, "fanout_heartbeat", HEARTBEAT_SECONDS)

        def handle_exception(self, job: Any, *exc_info: Any) -> None:
            if exc_info and exc_info[0] is JobStopped:
                # Asked for (stop-job, Ctrl-C on the caller): one line, no traceback.
                self.log.warning("Worker %s: job %s stopped", self.name, job.id)
                return
            refused = _refusal(exc_info)
            if refused is not None:
                # Not run, by design: one line, and the job goes to the failed registry.
                self.log.warning("Worker %s: job %s refused: %s: %s", self.name, job.id,
                                 type(refused).__name__, refused)  # fmt: skip
                return
            super().handle_exception(job, *exc_info)

        def kill_horse(self, sig: Any = None) -> None:
            """RQ's stop-job and cold shutdown: end the task running in the task process
            (there is no work-horse); run_batch then stops the job."""
            global _stop_requested
            _stop_requested = True
            if _executor is not None:
                _executor.kill_running()

    return FanoutWorker


def run_worker(
    url: str | None = None,
    queue: str = "fanout",
    name: str | None = None,
    burst: bool = False,
    processes: int = 1,
    allow: tuple[str, ...] = (),
    secret_file: str | None = None,
) -> int:
    """Serve ``queue`` until stopped (SIGTERM/SIGINT: warm shutdown); returns an exit code.

    ``allow``: module prefixes whose targets may run (empty: any). ``secret_file``, else
    ``FANOUT_SECRET_FILE`` or ``FANOUT_SECRET``: only signed jobs run, results are signed.
    """
    global _executor, _allow
    url = redis_url(url)
    keyring = load_keyring(secret_file=secret_file)  # a bad secret fails before Redis
    if processes > 1:
        return _run_pool(url, queue, name, burst, processes, allow, secret_file)
    connection = connect(url, socket_timeout=None)
    worker_class = make_worker_class()
    name = name or default_worker_name()
    _allow = allow
    # RQ's idle loop heartbeats every worker_ttl - 15 seconds.
    worker = worker_class(
        [queue],
        connection=connection,
        name=name,
        worker_ttl=15 + int(HEARTBEAT_SECONDS),
        serializer=serializer_for(keyring, allow),
    )
    _executor = _TaskProcess(workers=1, daemon=False, process_name=name)
    say = functools.partial(print, file=sys.stderr, flush=True)
    say(f"fanout worker {name} (pid {os.getpid()}) serving queue {queue!r} on {mask_url(url)}")
    for warning in safety_warnings(url, keyring, allow):
        say(f"fanout worker {name}: warning: {warning}")
    try:
        worker.work(burst=burst, logging_level="WARNING", with_scheduler=False)
    finally:
        _executor.close(cancel=True)
        _executor = None
    return 0


def safety_warnings(url: str, keyring: Keyring | None, allow: tuple[str, ...]) -> list[str]:
    """What makes this worker easy to abuse, one line each (docs/security.md)."""
    warnings = []
    if keyring is None:
        warnings.append(
            "jobs are not signed: anyone who can write to this Redis can run code on this"
            " worker; set FANOUT_SECRET or --secret-file on workers and clients"
        )
    parts = urlsplit(url)
    no_password = not url_passwords(url)
    if parts.scheme != "unix" and no_password and not _is_loopback(parts.hostname or "localhost"):
        warnings.append(
            f"Redis at {parts.hostname} is not on this machine and fanout connects"
            " without a password: require one (requirepass or an ACL user) and use it"
            " in the URL"
        )
    return warnings


def _is_loopback(host: str) -> bool:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def _run_pool(
    url: str,
    queue: str,
    name: str | None,
    burst: bool,
    processes: int,
    allow: tuple[str, ...],
    secret_file: str | None,
) -> int:
    """``--processes N``: N single-process workers, stopped together."""
    base = name or default_worker_name()
    # Never on a command line: ps shows those.
    env = dict(os.environ, FANOUT_REDIS_URL=url, FANOUT_ALLOW=",".join(allow))
    env.update(secret_env(None, secret_file))
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "fanout", "worker", "--queue", queue, "--name", f"{base}-{i}"]
            + (["--burst"] if burst else []),
            env=env,
        )
        for i in range(1, processes + 1)
    ]

    def forward(signum: int, frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)
