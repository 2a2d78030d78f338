"""The rq backend's client: a Redis connection, a queue, and optionally a few local
``fanout worker`` processes; each map() is an RQRun."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

from rq import Queue, Worker

from fanout._proc import spawn_fanout_worker, stop_processes
from fanout.backends.base import Backend, MapSpec
from fanout.backends.rq.connection import Outage, RedisLost, connect, mask_url, translate
from fanout.backends.rq.connection import redis_url as resolve_url
from fanout.backends.rq.feeder import Feeder
from fanout.backends.rq.protocol import (
    CANCELLED_TTL,
    DEFAULT_QUEUE,
    RESULT_TTL,
    WAKE_MAXLEN,
    WAKE_TTL,
    in_words,
    text,
    wake_key,
)
from fanout.backends.rq.record import RunRecord
from fanout.backends.rq.run import READ_MESSAGES, WAIT_SECONDS, RQRun
from fanout.backends.rq.settings import RunSettings
from fanout.backends.rq.signing import load_keyring, secret_env, serializer_for
from fanout.backends.runstate import RunState
from fanout.backends.spec import worker_limits
from fanout.errors import BackendUnavailable, UnknownRun
from fanout.models import TaskResult

WORKER_START_SECONDS = 30.0
STOP_WAIT = 5.0  # how long a cancel waits for the tasks it stopped to report
# How often a caller looks for the registration of the workers it started: each look
# is one cheap read, and a run waits for them all before it enqueues.
REGISTRATION_POLL_SECONDS = 0.01


class RQBackend(Backend):
    """Tasks as RQ jobs on ``queue`` at ``redis_url``; ``workers=N`` starts N local
    ``fanout worker`` processes for the Fanout's lifetime (default 0: use the workers
    already serving the queue).

    ``warn_after``: seconds without a serving worker before a warning; ``give_up_after``:
    before BackendUnavailable (None: wait). ``dead_after``: seconds of silence after
    which a fanout worker is taken for dead and its tasks run elsewhere.
    ``redis_wait``: how long to keep reconnecting to a lost Redis. ``detach``: leave the
    run going when the map ends early (instead of cancelling it), collectable by its id.
    ``secret`` or ``secret_file`` (default: ``$FANOUT_SECRET_FILE``, ``$FANOUT_SECRET``):
    sign every job and accept only results signed with it. ``enqueue_ahead``: tasks
    enqueued ahead of the workers (a run of that many inputs survives its caller whole).
    ``result_ttl``: seconds a run's results are kept after its last activity, when
    nobody collects them. ``keep``: a completed collection leaves the run's data.
    ``max_tasks_per_worker`` and ``max_memory_per_worker`` (bytes, or a size such as
    ``"2G"``): the process that runs the tasks (a ``fanout worker``'s task process) is
    replaced after that many of the run's tasks, or once it holds more than that after
    one, as on the local backend."""

    name = "rq"
    needs_importable_target = True
    durable_runs = True

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
        enqueue_ahead: int = 10_000,
        result_ttl: int = RESULT_TTL,
        keep: bool = False,
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | str | None = None,
    ) -> None:
        self.worker_limits = worker_limits(max_tasks_per_worker, max_memory_per_worker)
        self.keyring = load_keyring(secret, secret_file)  # a bad secret fails before Redis
        self.secret_env = secret_env(secret, secret_file)
        self.serializer = serializer_for(self.keyring)
        self.url = resolve_url(redis_url)
        self.connection = connect(self.url)
        self.queue = Queue(
            queue or DEFAULT_QUEUE, connection=self.connection, serializer=self.serializer
        )
        self.workers = workers or 0
        self.warn_after = warn_after
        self.give_up_after = give_up_after
        self.dead_after = dead_after
        self.redis_wait = redis_wait
        self.detach_runs = detach
        self.enqueue_ahead = enqueue_ahead
        self.result_ttl = result_ttl
        self.keep = keep
        self.runs: list[RQRun] = []  # runs in progress
        self.feeder = Feeder(self.connection)  # says in Redis that this caller lives
        self.settings = RunSettings(
            self.name, self.url, self.connection, self.queue, self.serializer, self.keyring,
            self.feeder, result_ttl, enqueue_ahead, redis_wait, dead_after, warn_after,
            give_up_after, keep,
        )  # fmt: skip
        # A driver thread waits on its runs' streams and this one: wake() writes to it.
        self.wakes = wake_key(uuid.uuid4().hex)
        self.wake_cursor = "0-0"
        self.waiting = False  # a driver thread is in (or about to be in) a blocking read
        self.woken = False  # wake() was called since the round began
        self.outage = Outage(self.url, redis_wait)  # the driver thread's
        self._last_run: str | None = None
        self._handed_out: set[str] = set()  # ids of runs someone may collect by id
        self._local: list[subprocess.Popen[bytes]] = []
        self._local_names: set[str] = set()

    def map(self, spec: MapSpec) -> Iterator[TaskResult]:
        # Local workers start with the first map, once its target has been checked.
        if self.workers and not self._local_names:
            self._start_local_workers(self.workers)
        run = self._begin(RQRun(self.settings, spec.with_worker_limits(*self.worker_limits)))

        def end() -> None:
            if run in self.runs:  # else close() ended it already
                self.end_run(run)

        return run.results(run.advance, end)

    def last_run_id(self) -> str | None:
        """The last run's id, now handed out: cut short, that run's results are then
        kept (an hour) for ``fanout results``, as nobody else could collect them."""
        if self._last_run is not None:
            self._handed_out.add(self._last_run)
        return self._last_run

    def handed_out(self, run_id: str) -> bool:
        """Was run ``run_id``'s id handed out (so that someone may collect it by id)?"""
        return run_id in self._handed_out

    # The driving interface of the drop-ins (backends/base.py).

    def start_run(self, spec: MapSpec) -> RunState:
        if self.workers and not self._local_names:
            self._start_local_workers(self.workers)
        return self._begin(RQRun(self.settings, spec.with_worker_limits(*self.worker_limits)))

    def _begin(self, run: RQRun) -> RQRun:
        """Make ``run`` in Redis, held by this backend first: a Ctrl-C from here on
        cancels it (``end_run``), whatever step it cuts."""
        self.runs.append(run)
        self._last_run = run.run_id
        try:
            with translate(self.url):
                run.begin()
        except BackendUnavailable:
            self.runs.remove(run)  # nothing of it could be written, nor can be ended
            raise
        except BaseException:
            self.end_run(run)
            raise
        return run

    def pump(self, max_wait: float | None) -> None:
        """One round of every run (``RQRun.prepare``, ``RQRun.take``) around one read
        that waits for a result of any of them, at most ``max_wait`` seconds, or until
        :meth:`wake`. A lost Redis is waited for as a run waits for it."""
        try:
            with translate(self.url):
                self._round(WAIT_SECONDS if max_wait is None else max_wait)
                if self.outage.over():
                    for run in list(self.runs):
                        run.check()  # jobs a restarted Redis forgot are enqueued again
        except RedisLost as exc:
            self.outage.hit(exc)

    def _round(self, block: float) -> None:
        self.woken = False
        waiting = [run for run in list(self.runs) if run.prepare()]
        if len(waiting) < len(self.runs):
            block = 0.0  # results to hand on first
        streams: dict[Any, Any] = {run.keys.results: run.cursor for run in waiting}
        streams[self.wakes] = self.wake_cursor
        # Said before the read, and the wake looked at after: a wake() either finds this
        # thread waiting (and writes to the stream it waits on) or is seen here.
        self.waiting = True
        if self.woken:
            block = 0.0
        try:
            reply: Any = self.connection.xread(
                streams, count=READ_MESSAGES, block=max(1, int(block * 1000)) if block else None
            )
        finally:
            self.waiting = False
        read = {text(key): entries for key, entries in reply or []}
        if self.wakes in read:
            self.wake_cursor = text(read[self.wakes][-1][0])
        for run in waiting:
            run.take(read.get(run.keys.results, []))

    def wake(self) -> None:
        """From any thread: end the driver's wait now (a new input, say): one write to
        the stream it waits on, if it waits."""
        self.woken = True
        if self.waiting:
            with contextlib.suppress(Exception):  # a lost Redis: the round ends by itself
                pipe = self.connection.pipeline(transaction=False)
                pipe.xadd(self.wakes, {"w": 1}, maxlen=WAKE_MAXLEN, approximate=True)
                pipe.expire(self.wakes, WAKE_TTL)
                pipe.execute()

    def cancel_tasks(self, run: RunState, indices: list[int]) -> set[int]:
        assert isinstance(run, RQRun)
        return run.cancel_tasks(indices)

    def end_run(self, run: RunState) -> None:
        assert isinstance(run, RQRun)
        if run in self.runs:
            self.runs.remove(run)
            run.end(self.detach_runs, self.handed_out(run.run_id))

    def submit(self, spec: MapSpec) -> str:
        """Enqueue every input of ``spec`` as a run that goes on without its caller;
        returns the run's id."""
        if self.workers and not self._local_names:
            self._start_local_workers(self.workers)
        run = self._begin(RQRun(self.settings, spec, ahead=float("inf")))
        try:
            while not run.all_enqueued():
                # The first results size the jobs; the rest are collected later, by
                # whoever asks for them.
                run.advance(WAIT_SECONDS if run.per_task is None else 0.0)
                run.ready.clear()
        except BaseException:
            # Cut short before every input was in Redis (Ctrl-C, SIGTERM, Redis lost):
            # cancelled as an attached run is, or left going if detached (SIGHUP).
            self.end_run(run)
            raise
        self.runs.remove(run)
        run.lease.release()
        self._handed_out.add(run.run_id)
        return run.run_id

    def attach(
        self,
        run_id: str,
        wait: bool = True,
        ordered: bool = False,
        inputs: dict[int, Any] | None = None,
    ) -> Iterator[TaskResult]:
        """The results of run ``run_id``, each index once: those finished at once, the
        rest as they finish (``wait``); the collector drives the run while nobody else
        does. A complete collection removes the run's data unless ``keep``."""
        from fanout.backends.rq.collect import CollectRun

        with translate(self.url):
            run = CollectRun(self.settings, run_id, wait, ordered, inputs)
        return run.results(run.advance, run.end)

    def run_status(self, run_id: str) -> dict[str, Any]:
        with translate(self.url):
            found = RunRecord(self.settings, run_id).status()
        if found is None:
            raise UnknownRun(run_id, mask_url(self.url))
        return found

    def cancel_run(self, run_id: str) -> None:
        """Cancel run ``run_id``: its queued tasks at once, and its running ones stopped;
        returns once they have reported so (or after ``STOP_WAIT`` seconds: a stock RQ
        worker's stopped job reports nothing, its driver settles it)."""
        record = RunRecord(self.settings, run_id)
        with translate(self.url):
            if not record.exists():
                raise UnknownRun(run_id, mask_url(self.url))
            stopped = record.cancel()
            deadline = time.monotonic() + STOP_WAIT
            while stopped and time.monotonic() < deadline:
                status = record.status()
                if status is None or status["running"] == 0:
                    return
                time.sleep(0.05)

    def stop_note(self) -> str:
        run_id = self._last_run
        if run_id is None:
            return "nothing had started"
        note = f"run {run_id} cancelled: its queued jobs were removed and its running tasks stopped"
        if self.workers:
            note += ", local workers stopped"
        if not self.handed_out(run_id):  # nobody had its id: its results were dropped
            return f"{note}; its results were not kept"
        within = f"within {in_words(CANCELLED_TTL)}"
        return f"{note}; collect what finished {within} with: fanout results {run_id}"

    def detach(self) -> None:
        self.detach_runs = True

    def close(self, cancel: bool = False) -> None:
        # A map whose results were never asked for never ran its generator, so never
        # its end: end it here (cancelled, or left going when detached), not silently.
        for run in list(self.runs):
            self.end_run(run)
        self.feeder.close()
        self._stop_local_workers()
        self.connection.close()

    def _start_local_workers(self, count: int) -> None:
        prefix = f"fanout-{socket.gethostname()}-{os.getpid()}"
        names = [f"{prefix}-{i}" for i in range(1, count + 1)]
        self._local_names = set(names)
        env = dict(os.environ, FANOUT_REDIS_URL=self.url, **self.secret_env)
        for name in names:
            self._local.append(
                spawn_fanout_worker(
                    self.queue.name,
                    name,
                    env,
                    stdout=sys.stderr.fileno(),
                    tied_to_parent=True,
                    quiet=True,
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
            time.sleep(REGISTRATION_POLL_SECONDS)

    def _stop_local_workers(self) -> None:
        """SIGTERM (RQ's warm shutdown), again (cold), then SIGKILL; a worker killed
        that way cannot unregister, so its RQ registration is removed here."""
        steps = ((signal.SIGTERM, 3.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0))
        if stop_processes(self._local, steps):  # some had to be killed
            with contextlib.suppress(Exception):
                for worker in Worker.all(connection=self.connection, queue=self.queue):
                    if worker.name in self._local_names:
                        worker.register_death()  # type: ignore[no-untyped-call]
        self._local = []
