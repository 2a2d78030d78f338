"""``fanout.Executor``: a ``concurrent.futures.Executor`` on any fanout backend.

Every ``submit`` goes into one long-lived run whose target is ``fanout.calls.call`` (each item
carries its own function): its Feed takes new calls at any time and the driver thread
hands each result to its future. ``map`` is a run of its own, ordered, its inputs read
lazily. Futures are ``TaskFuture``s: a ``concurrent.futures.Future`` with the task's
``TaskResult`` (who ran it, when, what it printed) once done.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor as _Executor
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from fanout.backends.inorder import InOrder
from fanout.backends.runstate import RunState
from fanout.calls import Call
from fanout.driving import Budget, Calls, Driver, Values
from fanout.dropin.common import (
    CHUNKSIZE_UNSET,
    check_picklable,
    chunk_limit,
    exception_of,
    futures_traceback,
    map_spec,
    open_fanout,
)
from fanout.dropin.outcomes import DEFAULT_BUFFER, Chunk, chunks_of, value_chunks
from fanout.errors import Cancelled, WorkerLost
from fanout.models import TaskResult

# Executors still open, for the interpreter's exit (see _at_exit).
_live: weakref.WeakSet[Executor] = weakref.WeakSet()
_exiting = False


class TaskFuture(Future[Any]):
    """A Future whose ``task_result`` is the task's full ``TaskResult`` once done."""

    def __init__(self, cancel: Callable[[], bool] | None = None) -> None:
        super().__init__()
        self.task_result: TaskResult | None = None
        self._cancel = cancel

    def cancel(self) -> bool:
        """Cancel the task if no worker has it yet (one that has counts as running)."""
        if self.done():
            return self.cancelled()
        if self._cancel is None or not self._cancel():
            return False
        return self._cancelled()

    def _cancelled(self) -> bool:
        """Cancelled, and wait() and as_completed() told (once, whichever thread first:
        the Cancelled result may overtake the caller's own cancel())."""
        with self._condition:  # an RLock: cancel() takes it again
            if not super().cancel():
                return False
            if self._state == "CANCELLED":
                self.set_running_or_notify_cancel()
            return True

    def settle(self, result: TaskResult, run: RunState) -> None:
        """(The driver's thread.) The task's outcome."""
        if result.error is not None and result.error.type == Cancelled.__name__:
            self._cancelled()  # by cancel(): it never ran
            return
        if self.done():
            return  # cancelled meanwhile
        self.task_result = result
        if result.ok:
            self.set_result(result.value)
        else:
            self.set_exception(exception_of(result, run, futures_traceback))

    def abandon(self, error: BaseException) -> None:
        if not self.done():
            self.set_exception(error)


class Executor(_Executor):
    """``concurrent.futures.ProcessPoolExecutor``'s interface on a fanout backend.

    ``max_workers`` means what ``workers`` means for ``fanout.run`` (on rq: local
    workers to start, default 0: the queue's own); ``backend`` and ``backend_options`` as
    for ``fanout.Fanout``.
    """

    def __init__(
        self, max_workers: int | None = None, *, backend: str | None = None, **options: Any
    ) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._fanout = open_fanout(backend, max_workers, options)
        self._driver = Driver(self._fanout.backend, "fanout-executor")
        self._calls = Calls(self._driver)
        self._lock = threading.Lock()
        self._shutdown = False
        self._closed = threading.Event()
        _live.add(self)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            try:
                check_picklable(self._fanout.backend, fn)
            except Exception as exc:  # the stdlib's future fails the same way
                future = TaskFuture()
                future.set_exception(exc)
                return future
            return self._calls.put(Call(fn, args, kwargs), TaskFuture)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = CHUNKSIZE_UNSET,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        """``fn`` over the iterables, results in order, the inputs read lazily, batched
        as ``fanout.Fanout.map`` batches (slow tasks one at a time, quick ones many):
        a ``chunksize`` passed is the most tasks a batch holds."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0.")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        budget = Budget(buffersize or DEFAULT_BUFFER, self._driver.wake)
        inputs = zip(*iterables, strict=False)
        spec = map_spec(self._fanout.backend, fn, inputs, star=True, room=budget.room,
                        chunksize=chunk_limit(chunksize))  # fmt: skip
        sink = MapSink()
        run = self._driver.start(spec, sink)
        return self._values(run, sink, budget, deadline)

    def _values(
        self, run: RunState, sink: MapSink, budget: Budget, deadline: float | None
    ) -> Iterator[Any]:
        try:
            for ok, values in sink.chunks(deadline):
                if not ok:
                    raise values[0]
                budget.took(len(values))
                values.reverse()
                while values:
                    # No local names the value: once the caller drops it, it is gone.
                    yield values.pop()
        finally:
            if not sink.ended:
                self._driver.end(run)  # left early: stop its tasks

    def busy(self) -> bool:
        """Whether a submitted call has yet to get its result."""
        return bool(self._calls.waiting)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            already = self._shutdown
            self._shutdown = True
        if cancel_futures:
            # Tasks a worker would take now go first, as the stdlib's call queue has
            # handed its first ones over by the time shutdown() is called.
            self._driver.dispatch_now()
            for waiter in self._calls.cancel_pending():
                assert isinstance(waiter, TaskFuture)
                waiter._cancelled()
        if not already:
            self._calls.close()
            if wait:
                self._close()
            else:
                threading.Thread(target=self._close, name="fanout-executor-close").start()
        elif wait:
            self._closed.wait()

    def terminate(self) -> None:
        """End now, as ``multiprocessing.Pool.terminate`` does (not in the stdlib's
        executor; ``fanout.joblib`` aborts with it): tasks not started are cancelled,
        running ones stopped, their futures fail with WorkerLost."""
        with self._lock:
            self._shutdown = True
        for waiter in self._calls.cancel_pending():
            assert isinstance(waiter, TaskFuture)
            waiter._cancelled()
        self._calls.close()
        try:
            self._driver.stop(abandon=WorkerLost("the executor was terminated before this task"
                                                 " finished"))  # fmt: skip
            self._fanout.close(cancel=True)
        finally:
            self._closed.set()

    def _close(self) -> None:
        try:
            self._driver.stop()  # after the last results are handed on
            self._fanout.close()
        finally:
            self._closed.set()

    def __repr__(self) -> str:
        return f"<fanout.Executor backend={self._fanout.backend_name!r} pid={os.getpid()}>"


def _at_exit() -> None:
    """As ``ProcessPoolExecutor`` does: an executor still open when the interpreter
    exits finishes what was submitted to it first; nothing new is accepted."""
    global _exiting
    _exiting = True
    for executor in list(_live):
        executor.shutdown(wait=True)


threading._register_atexit(_at_exit)  # type: ignore[attr-defined]  # before atexit hooks


class MapSink:
    """A map's outcomes, in input order, queued for the thread that iterates it."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[list[Chunk] | BaseException | None] = queue.SimpleQueue()
        self.order: InOrder[Chunk] = InOrder()
        self.ended = False

    def deliver(self, run: RunState, results: list[TaskResult]) -> None:
        self._add(chunks_of(run, results, futures_traceback))

    def deliver_values(self, run: RunState, chunks: Values) -> None:
        self._add(value_chunks(chunks))

    def _add(self, pieces: list[tuple[int, Chunk]]) -> None:
        released = [
            chunk
            for first, chunk in pieces
            for chunk in self.order.add(first, len(chunk[1]), chunk)
        ]
        if released:
            self.queue.put(released)

    def finished(self, run: RunState, error: BaseException | None) -> None:
        self.queue.put(error)

    def chunks(self, deadline: float | None) -> Iterator[Chunk]:
        """Every chunk in order, as they come; the input's own error after them;
        TimeoutError once ``deadline`` passes before the next one is in."""
        while True:
            try:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                got = self.queue.get(timeout=wait)
            except queue.Empty:
                raise FutureTimeout() from None
            if not isinstance(got, list):
                self.ended = True
                if got is not None:
                    raise got
                return
            while got:
                yield got.pop(0)
