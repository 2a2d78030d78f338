"""Inline backend: every task runs in the calling process, one after another.

For debugging (a breakpoint in a task just works) and for users' own tests. It keeps
the contract of the other backends: inputs and return values make the same pickle
round trip they would make to a worker, output is captured, errors become results.
"""

from __future__ import annotations

import contextlib
import functools
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING

from fanout import _task, _usage
from fanout._wire import USAGE, Record, TaskBatch, not_run_record
from fanout.backends.base import Backend, MapSpec
from fanout.backends.runstate import RunState
from fanout.errors import TaskTimeout
from fanout.models import TaskResult, WorkerInfo

if TYPE_CHECKING:
    from fanout.tracing import TaskSpans

WAIT_SECONDS = 1.0  # the longest wait for a live input's next item before looking again


class InlineBackend(Backend):
    """Runs tasks one by one in the caller; ``WorkerInfo`` is the caller's own identity."""

    name = "inline"
    runs_in_caller = True

    def __init__(self, workers: int | None = None) -> None:
        if workers not in (None, 1):
            raise ValueError(
                "the inline backend runs every task in the caller, one at a time: it takes"
                f" no worker count (got {workers})"
            )
        self.workers = 1
        self._runs: list[RunState] = []  # runs a driver thread drives (the drop-ins)
        self._woken = threading.Event()

    def stop_note(self) -> str:
        return "the task running in this process was stopped"

    def map(self, spec: MapSpec) -> Iterator[TaskResult]:
        return self.stream(spec)[1]

    def stream(self, spec: MapSpec) -> tuple[RunState, Iterator[TaskResult]]:
        """``map``, and its run (a stock ``rq worker`` may give the run's rest back)."""
        run = RunState(spec, self.name)

        def step() -> None:
            self._woken.clear()
            if not self._run_one_batch(run) and not run.ready and not run.done():
                self._woken.wait(WAIT_SECONDS)  # a live input with nothing in yet: wake()

        return run, run.results(step, lambda: None)

    def _run_one_batch(self, run: RunState) -> bool:
        """Run the next batch of ``run`` here; False if it had none to give now."""
        batch = run.take_batch()
        if batch is None:
            return False
        capture = _task.Capture()
        spans = _spans(run.spec)
        meter = _usage.Meter(thread=True) if _usage.enabled() else None
        try:
            records = [_attempt(run.spec, batch, pos, capture, spans, meter)
                       for pos in range(len(batch))]  # fmt: skip
        finally:
            if meter is not None:
                meter.close()
        run.settle(records, WorkerInfo.current(self.name), batch.attempts, batch.task)
        return True

    # The driving interface of the drop-ins (backends/base.py): the driver's thread
    # is the one that runs the tasks.

    def start_run(self, spec: MapSpec) -> RunState:
        run = RunState(spec, self.name)
        self._runs.append(run)
        return run

    def pump(self, max_wait: float | None) -> None:
        for run in list(self._runs):
            if self._run_one_batch(run):
                return
        if any(run.ready or run.done() for run in self._runs):
            return  # results to hand on first
        self._woken.wait(max_wait)
        self._woken.clear()

    def end_run(self, run: RunState) -> None:
        if run in self._runs:
            self._runs.remove(run)

    def wake(self) -> None:
        self._woken.set()


def _spans(spec: MapSpec) -> TaskSpans | None:
    """The run's tracing (``fanout.tracing``): None unless its caller traces (or, on a
    stock ``rq worker``, the worker does)."""
    if spec.trace is None:
        return None
    from fanout import tracing

    return tracing.task_spans(spec.trace)


def _attempt(
    spec: MapSpec,
    batch: TaskBatch,
    pos: int,
    capture: _task.Capture,
    spans: TaskSpans | None,
    meter: _usage.Meter | None,
) -> Record:
    """Task ``pos`` of ``batch``, here; its usage is this thread's CPU and this process's
    peak (``meter``: since the last task)."""
    index, item = batch.indices[pos], batch.items[pos]
    if pos in batch.pickled:
        # The same round trip a worker makes, so that a test on this backend catches
        # an argument that could not travel.
        try:
            item = pickle.loads(item)
        except Exception as exc:
            return not_run_record(index, _task.input_error(index, exc, "unpickle"), time.time())
    with (
        contextlib.redirect_stdout(capture),
        contextlib.redirect_stderr(capture),
        _alarm(spec.timeout, index),
    ):
        task = functools.partial(_task.run_one, spec.fn, index, item, spec.star, capture,
                                 in_caller=True)  # fmt: skip
        if meter is not None:
            meter.read()  # from here
        record = task() if spans is None else spans.run(index, item, task)
    return record if meter is None else (*record[:USAGE], meter.read())


@contextlib.contextmanager
def _alarm(timeout: float | None, index: int) -> Iterator[None]:
    """Raise TaskTimeout inside the task after ``timeout`` seconds (main thread only)."""
    if timeout is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TaskTimeout(f"task {index} ran longer than its timeout of {timeout} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
