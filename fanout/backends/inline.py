"""Inline backend: every task runs in the calling process, one after another.

For debugging (a breakpoint in a task just works) and for users' own tests. It keeps
the contract of the other backends: inputs and return values make the same pickle
round trip they would make to a worker, output is captured, errors become results.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

from fanout import _task
from fanout.backends.base import Backend, MapSpec
from fanout.errors import TaskTimeout
from fanout.models import TaskError, TaskResult, WorkerInfo


class InlineBackend(Backend):
    """Runs tasks one by one in the caller; ``WorkerInfo`` is the caller's own identity."""

    name = "inline"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = 1

    def map(self, spec: MapSpec) -> Iterator[TaskResult]:
        info = WorkerInfo.current(self.name)
        capture = _task.Capture()
        for index, item in enumerate(spec.items):
            attempts = 0
            while True:
                attempts += 1
                record = self._attempt(spec, index, item, capture)
                ok, payload = _task.load_value(index, record[1], record[2])
                if ok or attempts > spec.retries or payload[0] == "SerializationError":
                    break
            _, _, _, started, finished, duration, output = record
            error = None if ok else TaskError(*payload)
            value = payload if ok else None
            yield TaskResult(
                index, ok, value, error, info, attempts, started, finished, duration, output
            )

    def _attempt(self, spec: MapSpec, index: int, item: Any, capture: _task.Capture) -> Any:
        # The same round trip a worker would make, so a test on this backend catches
        # an argument that could not travel.
        try:
            arg = pickle.loads(_task.dumps(item))
        except Exception as exc:
            now = time.time()
            return (index, _task.FAILED, _task.input_error(index, exc), now, now, 0.0, "")
        with (
            contextlib.redirect_stdout(capture),
            contextlib.redirect_stderr(capture),
            _alarm(spec.timeout, index),
        ):
            record = _task.run_one(spec.fn, index, arg, spec.star, capture)
        return record


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
