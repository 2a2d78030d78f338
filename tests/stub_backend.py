"""A stub backend, as Dramatiq's StubBroker is one: its workers are threads of the
caller's process, and it is written against fanout's backend contract alone
(fanout/backends/base.py and RunState's public methods): no process, no pipe, no Redis.

It passes the whole contract (``fanout.testing.contract``) and serves
``fanout.Executor``, ``fanout.Pool`` and ``fanout.AsyncFanout`` through the drive
interface (``start_run``, ``pump``, ``end_run``, ``wake``): the proof that the contract
says all a backend needs. Register it with :func:`registered`.

Threads share their process, which shapes the rest:

- a task's ``WorkerInfo`` is the caller's own (``runs_in_caller``); inputs and values
  still make the pickle round trip they would make to a process;
- what a task prints is captured for its thread alone (:class:`ThreadOutput` stands in
  for ``sys.stdout``/``sys.stderr`` while a stub backend is open);
- a thread cannot be killed: a task past its run's ``timeout`` is reported
  ``TaskTimeout`` and its thread left to finish alone, its late result dropped, and a
  new thread takes its place; so are the threads of a run ended early.

Data flow: ``pump`` (the driving thread) takes a batch of one task from a run for each
idle worker and puts it in that worker's inbox; the worker thread runs it and puts its
result record in the backend's outbox; ``pump`` settles records into their runs.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import pickle
import queue
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from fanout import _task
from fanout._wire import Record, TaskBatch, not_run_record
from fanout.backends import register_backend, unregister_backend
from fanout.backends.base import Backend, MapSpec
from fanout.backends.runstate import RunState
from fanout.errors import TaskTimeout
from fanout.models import TaskError, TaskResult, WorkerInfo

NAME = "stub"
STEP_SECONDS = 1.0  # the longest a map's step waits before it looks again


class ThreadOutput(io.TextIOBase):
    """``sys.stdout`` and ``sys.stderr`` while stub backends are open: what a worker
    thread writes goes to its task's capture, anything else where it went before."""

    _lock = threading.Lock()
    _users = 0
    _saved: tuple[Any, Any] | None = None
    _local = threading.local()

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, s: str) -> int:
        capture = getattr(self._local, "capture", None)
        return capture.write(s) if capture is not None else self.stream.write(s)

    def flush(self) -> None:
        if getattr(self._local, "capture", None) is None:
            self.stream.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return bool(self.stream.isatty())

    def fileno(self) -> int:
        return int(self.stream.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self.stream, "encoding", None) or "utf-8")

    @classmethod
    def capture_here(cls, capture: _task.Capture | None) -> None:
        """What this thread writes goes to ``capture`` (None: where it went before)."""
        cls._local.capture = capture

    @classmethod
    def install(cls) -> None:
        with cls._lock:
            if cls._users == 0:
                cls._saved = (sys.stdout, sys.stderr)
                sys.stdout, sys.stderr = cls(sys.stdout), cls(sys.stderr)
            cls._users += 1

    @classmethod
    def uninstall(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users == 0 and cls._saved is not None:
                if isinstance(sys.stdout, cls):  # not if someone replaced it since
                    sys.stdout, sys.stderr = cls._saved
                cls._saved = None


class Job:
    """One batch handed to one worker thread."""

    __slots__ = ("batch", "run", "started")

    def __init__(self, run: RunState, batch: TaskBatch) -> None:
        self.run = run
        self.batch = batch
        self.started: float | None = None  # set by the worker thread as the task starts


class Worker:
    """A thread that runs one job at a time from its inbox."""

    def __init__(self, name: str, outbox: queue.SimpleQueue[Any]) -> None:
        self.name = name
        self.inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.outbox = outbox
        self.job: Job | None = None  # the driving thread's view: what it gave it
        self.abandoned = False  # left to finish alone: what it sends is dropped
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def give(self, job: Job) -> None:
        self.job = job
        self.inbox.put(job)

    def _loop(self) -> None:
        capture = _task.Capture()
        while (job := self.inbox.get()) is not None:
            ThreadOutput.capture_here(capture)
            try:
                records = [self._attempt(job, pos, capture) for pos in range(len(job.batch))]
            finally:
                ThreadOutput.capture_here(None)
            self.outbox.put((self, job, records))
            if self.abandoned:
                return

    def _attempt(self, job: Job, pos: int, capture: _task.Capture) -> Record:
        index, item = job.batch.indices[pos], job.batch.items[pos]
        job.started = time.monotonic()
        if pos in job.batch.pickled:  # the round trip a worker process would make
            try:
                item = pickle.loads(item)
            except Exception as exc:
                return not_run_record(index, _task.input_error(index, exc, "unpickle"), time.time())
        return _task.run_one(job.run.spec.fn, index, item, job.run.spec.star, capture)


class StubBackend(Backend):
    """Tasks on ``workers`` threads of the caller's process (default 2)."""

    name = NAME
    runs_in_caller = True

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"the stub backend needs at least one worker, got {workers}")
        self.workers = workers or 2
        self.info = WorkerInfo.current(self.name)
        self.outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.threads: list[Worker] = []
        self.runs: list[RunState] = []
        self.counter = itertools.count(1)
        self.closed = False
        ThreadOutput.install()

    # -- map: the consumer's thread drives -------------------------------------------

    def map(self, spec: MapSpec) -> Iterator[TaskResult]:
        run = self.start_run(spec)
        return run.results(lambda: self.pump(STEP_SECONDS), lambda: self.end_run(run))

    # -- the drive interface ---------------------------------------------------------

    def start_run(self, spec: MapSpec) -> RunState:
        if self.closed:
            raise RuntimeError("the stub backend is closed")
        run = RunState(spec, self.name)
        self.runs.append(run)
        return run

    def pump(self, max_wait: float | None) -> None:
        if self.closed:
            return
        self._dispatch()
        if any(run.ready or run.ready_values or run.done() for run in self.runs):
            max_wait = 0.0  # results to hand on first
        deadline = self._next_deadline()
        if deadline is not None:
            max_wait = deadline if max_wait is None else min(max_wait, deadline)
        try:
            messages = [self.outbox.get(timeout=None if max_wait is None else max(max_wait, 0))]
        except queue.Empty:
            messages = []
        while not self.outbox.empty():
            messages.append(self.outbox.get_nowait())
        for message in messages:
            self._receive(message)
        self._enforce_timeouts()

    def end_run(self, run: RunState) -> None:
        if run in self.runs:
            self.runs.remove(run)
        for worker in list(self.threads):
            if worker.job is not None and worker.job.run is run:
                self._abandon(worker)

    def wake(self) -> None:
        self.outbox.put(None)

    def close(self, cancel: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for worker in self.threads:
            worker.abandoned = True
            worker.inbox.put(None)
        self.threads.clear()
        ThreadOutput.uninstall()

    # -- the loop's parts --------------------------------------------------------------

    def _dispatch(self) -> None:
        for run in self.runs:
            if run.halted is not None or run.broken is not None:
                run.settle_the_rest()  # whether or not a worker is free
        for worker in self._idle_workers():
            for run in self.runs:
                batch = run.take_batch()
                if batch is not None:
                    worker.give(Job(run, batch))
                    break
            else:
                return  # no run has a task to give now

    def _idle_workers(self) -> Iterator[Worker]:
        for worker in list(self.threads):
            if worker.job is None:
                yield worker
        while len(self.threads) < self.workers:  # started on demand
            worker = Worker(f"stub-{next(self.counter)}", self.outbox)
            self.threads.append(worker)
            yield worker

    def _receive(self, message: tuple[Worker, Job, list[Record]] | None) -> None:
        if message is None:
            return  # a wake-up
        worker, job, records = message
        if worker.abandoned:
            return  # its task was settled without it
        worker.job = None
        if job.run in self.runs and not job.run.finished:
            batch = job.batch
            job.run.settle(records, self.info, batch.attempts, batch.task)

    def _next_deadline(self) -> float | None:
        now, deadlines = time.monotonic(), []
        for worker in self.threads:
            job = worker.job
            if job is not None and job.started is not None and job.run.spec.timeout:
                deadlines.append(job.started + job.run.spec.timeout - now)
        return min(deadlines) if deadlines else None

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        for worker in list(self.threads):
            job = worker.job
            timeout = None if job is None else job.run.spec.timeout
            if job is None or job.started is None or timeout is None:
                continue
            if now - job.started < timeout:
                continue
            self._abandon(worker)
            task = job.batch.task(0)  # batches hold one task (RunState's default size)
            wall = time.time()
            ran = now - job.started
            error = TaskError(
                TaskTimeout.__name__,
                f"task {task.index} ran longer than its timeout of {timeout:g} s;"
                f" {worker.name} was left to finish it and replaced",
            )
            result = TaskResult(task.index, False, None, error, self.info, task.attempts + 1,
                                wall - ran, wall, ran)  # fmt: skip
            job.run.failed_attempt(task, result)

    def _abandon(self, worker: Worker) -> None:
        """A thread cannot be stopped: it finishes its task alone, its result dropped."""
        worker.abandoned = True
        worker.inbox.put(None)
        self.threads.remove(worker)


@contextlib.contextmanager
def registered(name: str = NAME) -> Iterator[str]:
    """The stub backend registered under ``name`` for as long as the block runs."""
    register_backend(name, StubBackend)
    try:
        yield name
    finally:
        unregister_backend(name)
