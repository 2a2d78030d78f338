"""``fanout worker``: an RQ worker for fanout jobs, faster and safer than a stock one::

    RQ worker process (FanoutWorker: dequeues, heartbeats, pushes results)
        |  batch of tasks          ^ result records
        v                          |
    task process, named after the RQ worker (a one-process local pool)

No fork per job: the task process lives across jobs. When a task kills its process,
the worker reports that task as ``WorkerLost`` and carries on with a new task process,
as the local backend does. The worker's state lives in one :class:`WorkerContext`,
which the jobs it runs are handed (see ``job.py``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import redis
from rq import Queue, Worker
from rq.command import parse_payload
from rq.exceptions import StopRequested
from rq.utils import utcparse
from rq.worker import SimpleWorker, WorkerStatus

from fanout._proc import spawn_fanout_worker
from fanout.backends.rq import fleet
from fanout.backends.rq.connection import (
    SentinelURL,
    connect,
    is_sentinel,
    mask_url,
    redis_url,
    scrub,
    url_passwords,
)
from fanout.backends.rq.context import REDIS_WAIT, TaskProcess, WorkerContext
from fanout.backends.rq.job import FanoutJob
from fanout.backends.rq.metrics_http import PoolMetrics, worker_endpoint
from fanout.backends.rq.protocol import text
from fanout.backends.rq.signing import Keyring, load_keyring, secret_env, serializer_for
from fanout.backends.spec import worker_limits
from fanout.errors import JobStopped, SignatureError, TargetNotAllowed

HEARTBEAT_SECONDS = 2.0  # a fanout worker's heartbeat, idle or busy
# A fanout worker's registration (its name) lives this long after its last heartbeat,
# idle or busy (RQ's own is minutes: 7 for a job without a timeout). More than a
# caller's dead_after (30 s by default): the heartbeat's silence says first.
REGISTRATION_TTL = 60
# A registration silent this long has no process (fleet.live_workers' rule too).
TAKE_OVER_AFTER = fleet.SILENT_BEATS * HEARTBEAT_SECONDS
# RQ beats three times between two jobs, three commands each: a beat this soon after
# the last adds nothing (callers read beats against HEARTBEAT_SECONDS).
BEAT_AGAIN_SECONDS = 0.5
# How long a stopping worker waits for RQ's command listener (a thread reading the
# worker's pubsub channel) to end; past it the process exits without it (a daemon).
LISTENER_STOP_SECONDS = 2.0


class FanoutWorker(SimpleWorker):
    """An RQ worker that runs jobs in-process, tasks in a long-lived task process."""

    job_class = FanoutJob
    # An idle worker that lost its Redis tries again after a pause that doubles: RQ lets
    # it reach 60 s, so after an outage of 16 s a worker looked again only 15 s after
    # Redis was back. Capped, it serves again within 5 s.
    max_connection_wait_time = 5.0

    def __init__(self, *args: Any, context: WorkerContext | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # RQ makes instances of its own too (Worker.all); those run no jobs.
        self.context = context or WorkerContext(self.name, "", ())
        self._beat_at = -BEAT_AGAIN_SECONDS  # time.monotonic() of the last heartbeat
        self.stop_asked = False  # a SIGTERM or SIGINT came (see request_stop)
        self.draining = False  # fanout drain came (see drain)
        self._task_pid: int | None = None  # as the registration says it

    def note_stop(self, signum: int, frame: Any) -> None:
        """The SIGTERM and Ctrl-C handler until RQ installs its own. RQ registers the
        worker and subscribes first: a stop in between ended the process with its name
        still registered (a restart under it refused). Noted, it ends RQ's loop at its
        first turn, and the worker unregisters."""
        self.stop_asked = True
        self._stop_requested = True

    def request_stop(self, signum: int, frame: Any) -> None:
        # With no job running RQ's handler raises StopRequested and work() ends on it, but
        # with Redis gone its teardown then fails: to _serve that looks like an outage to
        # wait out, for ever. The flag tells the two apart.
        self.stop_asked = True
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if self.context.heartbeat is None and self.context.executor is not None:
            # No job runs (RQ's idle loop beats every 2 s): a task process killed
            # meanwhile is reaped now, not left a zombie until the next job.
            self.context.executor.reap()
        now = time.monotonic()
        if pipeline is None and timeout is None and now - self._beat_at < BEAT_AGAIN_SECONDS:
            return
        self._beat_at = now
        super().heartbeat(min(timeout or REGISTRATION_TTL, REGISTRATION_TTL), pipeline)
        self._note_task_process(pipeline)

    def _note_task_process(self, pipeline: Any) -> None:
        """Say in the registration which process runs this worker's tasks, when that
        changed: if the worker dies whole, its lost task is charged to that pid."""
        executor = self.context.executor
        pid = next(iter(executor.pids()), None) if executor is not None else None
        if pid is not None and pid != self._task_pid:
            self._task_pid = pid
            (pipeline or self.connection).hset(self.key, fleet.TASK_PID_FIELD, pid)

    def get_heartbeat_ttl(self, job: Any, working_time: float = 0.0) -> int:
        # RQ's is 7 minutes for a job without a timeout (fanout's: tasks time out in the
        # task process): a killed worker's name, and its job, would stay that long.
        return REGISTRATION_TTL

    def handle_payload(self, message: Any) -> None:
        """RQ's command listener, which also hears fanout's own ``fanout-drain``."""
        if parse_payload(message).get("command") == fleet.DRAIN_COMMAND:
            self.drain()
        else:
            super().handle_payload(message)  # type: ignore[no-untyped-call]

    def drain(self) -> None:
        """``fanout drain`` (from RQ's command thread; fleet.py): the job running gives
        back what it has not started and finishes the task it runs; then the worker
        exits, taking no new job. An idle one exits within a round of its wait for jobs,
        a paused one at once."""
        if self.draining:
            return
        self.log.warning("Worker %s: draining (fanout drain): the running task finishes,"
                         " the rest of its job goes back to the queue", self.name)  # fmt: skip
        self.draining = True
        ctx = self.context
        ctx.drain_requested = True
        # RQ's loop then ends after the job running, or at once where it waits, paused.
        self._stop_requested = True
        if ctx.executor is not None:
            ctx.executor.wake()  # the job gives its rest back now, not at its next look

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Any, Any] | None:
        """RQ's wait for a job, which a drain ends and a pause holds: RQ waits in rounds
        of ``timeout`` seconds for as long as no job comes, and looks whether it is
        paused (``rq suspend``) only before it waits, so an idle worker took one more job
        after a pause. Here, one round at a time, with that look between them."""
        if timeout is None or max_idle_time is not None:
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        while not self.draining:
            result = super().dequeue_job_and_maintain_ttl(timeout, timeout)
            if result is not None:
                return result
            # Returns on resume, or on a drain. Redis lost meanwhile: RQ's wait above
            # waits it out, as it did before this look.
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                self.check_for_suspension(burst=False)
        return None

    def execute_job(self, job: Any, queue: Any) -> None:
        if self.draining:
            # Taken as the drain came: not started, so it goes back whole, at the front.
            _put_back(self.connection, queue, job.id)
            return
        ctx = self.context
        ctx.stop_requested = False
        job.context = ctx
        execution = self.prepare_execution(job)
        last = time.monotonic()

        def heartbeat() -> None:
            nonlocal last
            if time.monotonic() - last >= HEARTBEAT_SECONDS:
                last = time.monotonic()
                # Redis lost or full: the results wait and are pushed later, and the
                # heartbeat follows them (a failed one must not fail the job).
                with contextlib.suppress(redis.RedisError, OSError):
                    self.maintain_heartbeats(job, execution)

        ctx.heartbeat = heartbeat
        try:
            self.perform_job(job, queue, execution)
        finally:
            ctx.heartbeat = None
        self.set_state(WorkerStatus.IDLE)

    def register_birth(self) -> None:
        super().register_birth()  # type: ignore[no-untyped-call]
        # Tells callers this worker heartbeats every HEARTBEAT_SECONDS, so that a
        # silence of a few heartbeats means it died (RQ alone waits for minutes).
        # And since when this process serves: a registration newer than a job's start
        # but not the process means the worker registered again between jobs (its
        # connection broke), so that job is not running, rather than died with it.
        self.connection.hset(self.key, mapping={fleet.FANOUT_FIELD: HEARTBEAT_SECONDS,
                                                "fanout_since": self.context.since})  # fmt: skip
        self._task_pid = None  # a new registration: said again at the next heartbeat

    def register_death(self) -> None:
        if self.draining:  # for fanout drain's summary (the registration lives 60 s more)
            with contextlib.suppress(redis.RedisError, OSError):
                self.connection.hset(self.key, fleet.GAVE_BACK_FIELD, self.context.gave_back)
        super().register_death()  # type: ignore[no-untyped-call]

    def set_shutdown_requested_date(self) -> None:
        # Called from RQ's SIGTERM handler, wherever the signal landed: a Redis that is
        # full or gone (a worker waiting for it, say) must not turn the stop into an
        # exception there. The stop itself is already noted on the worker.
        with contextlib.suppress(redis.RedisError, OSError):
            super().set_shutdown_requested_date()  # type: ignore[no-untyped-call]

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

    def unsubscribe(self) -> None:
        """RQ's, without its wait of up to a minute. RQ unsubscribes, then stops its
        command listener, which waits for messages 60 s at a time. When the listener
        handled the reply before the stop landed, it waited for a subscription that never
        came, and redis-py 8.2's ``stop()`` waits for it: a SIGTERM took ~60 s in most
        tries on a loaded machine. Told to stop first, the listener ends on the reply; a
        Redis that does not answer costs LISTENER_STOP_SECONDS at most."""
        # Any: RQ types the thread as always None, and redis-py's unsubscribe() is
        # untyped in some releases and typed in others.
        thread: Any = self.pubsub_thread
        pubsub: Any = self.pubsub
        if thread is None or pubsub is None:
            return
        self.pubsub_thread = None
        _flag_stop(thread)
        with contextlib.suppress(redis.RedisError, OSError):
            pubsub.unsubscribe()
        thread.join(LISTENER_STOP_SECONDS)
        with contextlib.suppress(redis.RedisError, OSError):
            pubsub.close()

    def kill_horse(self, sig: Any = None) -> None:
        """RQ's stop-job (from its command thread): the job, woken, stops the task
        running in the task process (there is no work-horse) in its own thread, after
        it has taken back the tasks not started (see ``job.py``)."""
        self.context.stop_requested = True
        if self.context.executor is not None:
            self.context.executor.wake()


def _put_back(connection: Any, queue: Queue, job_id: str) -> None:
    """A job taken from ``queue`` (into RQ's intermediate list) but not started, back at
    the front of the queue."""
    pipe = connection.pipeline(transaction=True)
    pipe.lrem(queue.intermediate_queue_key, 1, job_id)
    pipe.lpush(queue.key, job_id)
    pipe.execute()


def _flag_stop(thread: Any) -> None:
    """Tell redis-py's pubsub thread to stop, without waiting for it: redis-py 8.2's
    ``stop()`` waits for it (for ever unless given a time-out), older ones never do."""
    stop: Callable[..., None] = thread.stop
    if "timeout" in inspect.signature(stop).parameters:
        stop(timeout=0)
    else:
        stop()


def _refusal(exc_info: tuple[Any, ...]) -> BaseException | None:
    """The SignatureError or TargetNotAllowed behind a failed job, if that is why."""
    exc = exc_info[1] if len(exc_info) > 1 else None
    while exc is not None:
        if isinstance(exc, SignatureError | TargetNotAllowed):
            return exc
        exc = exc.__cause__
    return None


def default_worker_name() -> str:
    return f"fanout-{socket.gethostname()}-{os.getpid()}"


def run_worker(
    url: str | None = None,
    queue: str = "fanout",
    name: str | None = None,
    burst: bool = False,
    processes: int = 1,
    allow: tuple[str, ...] = (),
    secret_file: str | None = None,
    quiet: bool = False,
    redis_wait: float = REDIS_WAIT,
    metrics_port: int | None = None,
    *,
    max_tasks_per_worker: int | None = None,
    max_memory_per_worker: int | str | None = None,
) -> int:
    """Serve ``queue`` until stopped (SIGTERM/SIGINT: warm shutdown); returns an exit code.

    ``allow``: module prefixes whose targets may run (empty: any). ``secret_file``, else
    ``FANOUT_SECRET_FILE`` or ``FANOUT_SECRET``: only signed jobs run, results are signed.
    ``quiet``: no banner and no warnings (workers a client starts for its own run).
    ``redis_wait``: how long a job's results wait for a lost or full Redis before the
    job fails (the worker itself waits for its Redis as long as it takes).
    ``metrics_port``: serve Prometheus metrics there (metrics.py), for all processes.
    ``max_tasks_per_worker``, ``max_memory_per_worker`` (bytes or a size such as
    ``"2G"``): the task process is replaced after that many tasks, or once it holds more
    than that after one (a run's own limits can only be tighter).
    ``FANOUT_OTEL_SETUP=package.module:function``: called once first, to set up
    OpenTelemetry's tracer provider (``fanout.tracing``).
    """
    url = redis_url(url)
    keyring = load_keyring(secret_file=secret_file)  # a bad secret fails before Redis
    limits = worker_limits(max_tasks_per_worker, max_memory_per_worker)
    if processes > 1:
        return _run_pool(url, queue, name, burst, processes, allow, secret_file, quiet, redis_wait,
                         metrics_port, _limit_options(*limits))  # fmt: skip
    _tracing_from_env()  # before the task process forks: it inherits it
    connection = connect(url, socket_timeout=None)
    name = name or default_worker_name()
    _refuse_a_taken_name(connection, name, url)
    endpoint = worker_endpoint(queue, name, metrics_port)
    executor = TaskProcess(1, False, process_name=name, max_tasks_per_worker=limits[0],
                           max_memory_per_worker=limits[1])  # fmt: skip
    context = WorkerContext(
        name, url, allow, executor, max_value_bytes=_max_value_bytes(connection),
        redis_wait=redis_wait, metrics=endpoint.metrics if endpoint is not None else None,
    )  # fmt: skip
    worker = _worker(connection, queue, serializer_for(keyring, allow), context)
    if not quiet:
        _banner(name, queue, url, keyring, allow)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, worker.note_stop)
    try:
        _serve(worker, burst, quiet)
    finally:
        executor.close(cancel=True)
        if endpoint is not None:
            endpoint.close()
    return 0


def _worker(connection: Any, queue: str, serializer: Any, context: WorkerContext) -> FanoutWorker:
    """The RQ worker of ``context``, serving ``queue``."""
    # RQ's idle loop heartbeats every worker_ttl - 15 seconds.
    return FanoutWorker([queue], connection=connection, name=context.name,
                        worker_ttl=15 + int(HEARTBEAT_SECONDS), serializer=serializer,
                        context=context)  # fmt: skip


def _limit_options(max_tasks: int | None, max_held: int | None) -> list[str]:
    """The command-line options of a worker of ``--processes N`` for these limits."""
    return [*(["--max-tasks-per-worker", str(max_tasks)] if max_tasks else []),
            *(["--max-memory-per-worker", str(max_held)] if max_held else [])]  # fmt: skip


def _tracing_from_env() -> None:
    """``FANOUT_OTEL_SETUP=module:function``: OpenTelemetry's setup, called once."""
    if os.environ.get("FANOUT_OTEL_SETUP"):
        from fanout import tracing

        tracing.setup_from_env()


def _banner(name: str, queue: str, url: str, keyring: Any, allow: tuple[str, ...]) -> None:
    say = functools.partial(print, file=sys.stderr, flush=True)
    say(f"fanout worker {name} (pid {os.getpid()}) serving queue {queue!r} on {mask_url(url)}")
    for warning in safety_warnings(url, keyring, allow):
        say(f"fanout worker {name}: warning: {warning}")


def _serve(worker: FanoutWorker, burst: bool, quiet: bool) -> None:
    """Run the worker, and run it again when RQ gave up on a Redis error (a partition, a
    Redis full or restarting): said in one line, served again once Redis answers."""
    quits = _QuitRecords(quiet)
    worker.log.addFilter(quits)
    say = functools.partial(print, file=sys.stderr, flush=True)
    pause = 0.0  # between restarts, while they keep failing
    while True:
        began = time.monotonic()
        try:
            if not _work_until_lost(worker, burst, quits):
                return
            ctx = worker.context
            if pause == 0.0:  # one line per outage, not one per attempt
                say(f"fanout worker {ctx.name}: {scrub(quits.reason or '', ctx.url)}; serving"
                    f" again once Redis at {mask_url(ctx.url)} answers")  # fmt: skip
            pause = 0.0 if time.monotonic() - began > 30 else min(5.0, max(0.5, pause * 2))
            if not _wait_for_redis(worker, pause):
                return
            worker = _born_again(worker)
        except StopRequested:
            # RQ's handler raises where the signal lands when no job runs; out of work()
            # (waiting for Redis, or a new worker starting) nothing of RQ's catches it.
            with contextlib.suppress(redis.RedisError, OSError):
                worker.register_death()
            return


def _work_until_lost(worker: FanoutWorker, burst: bool, quits: _QuitRecords) -> bool:
    """Run RQ's loop: True if it ended on a lost or full Redis, to wait out and serve
    again; False if the worker is done (stopped, or a burst ended)."""
    quits.reason = None
    try:
        worker.work(burst=burst, logging_level="WARNING", with_scheduler=False)
    except (redis.RedisError, OSError) as exc:  # RQ's bootstrap or teardown failed
        quits.reason = quits.reason or f"{type(exc).__name__}: {exc}"
    return not (quits.reason is None or burst or worker._stop_requested or worker.stop_asked)


def _wait_for_redis(worker: FanoutWorker, pause: float) -> bool:
    """After ``pause`` s, wait until Redis answers (True), or until the worker is asked to
    stop (False)."""
    time.sleep(pause)
    pause = 0.1
    while not worker._stop_requested:
        with contextlib.suppress(redis.RedisError, OSError):
            worker.connection.ping()
            return True
        time.sleep(pause)
        pause = min(2.0, pause * 2)
    return False


def _born_again(old: FanoutWorker) -> FanoutWorker:
    """The same worker, registered afresh: its last registration may never have seen
    its death. Its old job, if one was cut short, callers see as lost (its birth is
    after the job started) and run again."""
    with contextlib.suppress(redis.RedisError, OSError):
        # Its own registration, dropped outright: a full Redis refuses RQ's record of a
        # death (a write) but not a delete, and RQ refuses a name still registered. (Its
        # entry in RQ's set of workers RQ drops by itself once the key is gone.)
        old.connection.delete(old.key)
    worker = FanoutWorker(
        [q.name for q in old.queues],
        connection=old.connection,
        name=old.name,
        worker_ttl=old.worker_ttl,
        serializer=old.serializer,
        context=old.context,
    )
    worker.log.filters = old.log.filters
    return worker


class _QuitRecords(logging.Filter):
    """Catches RQ's 'quitting' records (an unhandled exception, a Redis timeout) so the
    worker says them in one line and serves on; ``quiet`` drops every traceback (the
    workers a client starts write to its terminal)."""

    def __init__(self, quiet: bool) -> None:
        super().__init__()
        self.quiet = quiet
        self.reason: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "quitting" in message and record.levelno >= logging.ERROR:
            exc = record.exc_info[1] if record.exc_info else None
            self.reason = f"{type(exc).__name__}: {exc}" if exc else message
            return False
        if self.quiet:
            # The client stops its own workers (RQ's warm then cold shutdown): RQ's
            # warnings about that are noise on the client's terminal.
            record.exc_info = record.exc_text = None
            return record.levelno >= logging.ERROR
        return True


def _max_value_bytes(connection: Any) -> int:
    """Redis's limit on one value (proto-max-bulk-len), or its default if it will not say."""
    try:
        return int(connection.config_get("proto-max-bulk-len")["proto-max-bulk-len"])
    except Exception:
        return 512 * 2**20


def _refuse_a_taken_name(connection: Any, name: str, url: str) -> None:
    """RQ refuses a name that a live worker holds; say so before saying anything else.
    A registration left by a worker of this host whose process is gone (killed, its
    machine restarted) is taken over once its heartbeats have stopped: a worker started
    again under its fixed name (systemd, a container restarted) serves at once."""
    key = Worker.redis_worker_namespace_prefix + name
    if not connection.exists(key) or connection.hexists(key, "death"):
        return
    host, pid, beat = (text(v) if v else "" for v in connection.hmget(key, "hostname", "pid",
                                                                   "last_heartbeat"))  # fmt: skip
    silent = time.time() - utcparse(beat).timestamp() if beat else 0.0
    if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
        time.sleep(max(0.0, TAKE_OVER_AFTER - silent))  # a live one would beat meanwhile
        if connection.hget(key, "last_heartbeat") in (None, beat.encode()):
            connection.delete(key)  # callers take the job it had for lost (see watch.py)
            return
    raise ValueError(
        f"a worker named {name!r} is already registered on {mask_url(url)} (its last"
        f" heartbeat {silent:.0f} s ago); give this one another --name, or wait: the name"
        f" of a fanout worker that was killed is free {REGISTRATION_TTL} s after its last"
        " heartbeat (at once on its own host)"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's: alive
    return True


def safety_warnings(url: str, keyring: Keyring | None, allow: tuple[str, ...]) -> list[str]:
    """What makes this worker easy to abuse, one line each (docs/security.md)."""
    warnings = []
    if keyring is None:
        warnings.append(
            "jobs are not signed: anyone who can write to this Redis can run code on this"
            " worker; set FANOUT_SECRET or --secret-file on workers and clients"
        )
    parts = urlsplit(url)
    if is_sentinel(url):
        hosts = [host for host, _ in SentinelURL.parse(url).sentinels]
    else:
        hosts = [] if parts.scheme == "unix" else [parts.hostname or "localhost"]
    remote = [host for host in hosts if not _is_loopback(host)]
    if remote and not url_passwords(url):
        warnings.append(
            f"Redis at {remote[0]} is not on this machine and fanout connects"
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
    quiet: bool,
    redis_wait: float,
    metrics_port: int | None = None,
    options: list[str] | None = None,
) -> int:
    """``--processes N``: N single-process workers, stopped together (a SIGKILLed
    parent's workers get the SIGTERM it would have forwarded). With ``metrics_port``,
    this process serves the metrics of them all (metrics_http.py). ``options``: more
    of each worker's command line."""
    base = name or default_worker_name()
    env = dict(os.environ, FANOUT_REDIS_URL=url, FANOUT_ALLOW=",".join(allow))
    env.update(secret_env(None, secret_file))
    children: list[Any] = []
    metrics = None
    if metrics_port is not None:
        metrics = PoolMetrics(metrics_port, lambda: {c.pid for c in children if c.poll() is None})
        env.update(metrics.env())
    spawn = functools.partial(spawn_fanout_worker, queue, env=env, burst=burst, quiet=quiet,
                              redis_wait=redis_wait, tied_to_parent=True,
                              options=options or [])  # fmt: skip
    children += [spawn(f"{base}-{i}") for i in range(1, processes + 1)]

    def forward(signum: int, frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    if metrics is not None:
        metrics.close()
    return max(codes, default=0)
