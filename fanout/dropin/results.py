"""The results of ``fanout.Pool``'s calls: ``ApplyResult`` (``apply_async``),
``MapResult`` (``map_async``, ``starmap_async``) and ``IMapIterator`` (``imap``,
``imap_unordered``), as ``multiprocessing.pool`` names them. The driver thread hands
each its results; the caller waits on them."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing import TimeoutError as PoolTimeout
from typing import Any

from fanout.backends.inorder import InOrder
from fanout.backends.runstate import RunState
from fanout.driving import Budget, Values
from fanout.dropin.common import exception_of, pool_traceback
from fanout.dropin.outcomes import Chunk, chunks_of, spans, value_chunks
from fanout.models import TaskResult

Callback = Callable[[Any], object] | None


class ApplyResult:
    """What ``apply_async`` returns: ``get``, ``wait``, ``ready``, ``successful``; and
    ``task_result``, the task's full ``TaskResult``, once ready."""

    def __init__(self, callback: Callback = None, error_callback: Callback = None) -> None:
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._success = False
        self._value: Any = None
        self.task_result: TaskResult | None = None

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        self.wait(timeout)
        if not self.ready():
            raise PoolTimeout
        if self._success:
            return self._value
        raise self._value

    def _set(self, success: bool, value: Any) -> None:
        self._success, self._value = success, value
        callback = self._callback if success else self._error_callback
        if callback is not None:
            callback(value)
        self._event.set()

    # The driver's side (fanout.driving.Waiter).
    def settle(self, result: TaskResult, run: RunState) -> None:
        self.task_result = result
        if result.ok:
            self._set(True, result.value)
        else:
            self._set(False, exception_of(result, run, pool_traceback))

    def abandon(self, error: BaseException) -> None:
        if not self.ready():
            self._set(False, error)


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """What ``map_async`` returns: every value in order once all tasks are done, or the
    first exception (it is ready only once every task is done, as in the stdlib)."""

    def __init__(self, size: int, callback: Callback, error_callback: Callback) -> None:
        super().__init__(callback, error_callback)
        self._values: list[Any] = [None] * size
        self._error: BaseException | None = None

    def deliver(self, run: RunState, results: list[TaskResult]) -> None:
        for result in results:
            if result.ok:
                self._values[result.index] = result.value
            elif self._error is None:
                self._error = exception_of(result, run, pool_traceback)

    def deliver_values(self, run: RunState, chunks: Values) -> None:
        for indices, values, _ in chunks:
            for first, part in spans(indices, values):
                self._values[first : first + len(part)] = part

    def finished(self, run: RunState, error: BaseException | None) -> None:
        error = self._error or error
        if error is not None:
            self._values = []
            self._set(False, error)
        else:
            self._set(True, self._values)


class IMapIterator(Iterator[Any]):
    """What ``imap`` and ``imap_unordered`` return: values as they come (in input order
    for ``imap``), ``next(timeout)``.

    The values of the chunk being handed out sit reversed in ``_current``, which
    ``next()`` pops without a lock (``list.pop`` is atomic: concurrent consumers each
    get their own value); the lock guards the queue of chunks behind it.
    """

    def __init__(self, ordered: bool, budget: Budget | None = None) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._chunks: deque[list[Any]] = deque()  # each reversed, failures as _Failed
        self._current: list[Any] = []
        self._order: InOrder[Chunk] | None = InOrder() if ordered else None
        self._budget = budget
        self._ended = False
        self._error: BaseException | None = None

    def __iter__(self) -> IMapIterator:
        return self

    def next(self, timeout: float | None = None) -> Any:
        try:
            value = self._current.pop()  # held nowhere else once handed out
        except IndexError:
            value = self._next_chunk(timeout)
        if type(value) is _Failed:
            raise value.error
        return value

    __next__ = next

    def _next_chunk(self, timeout: float | None) -> Any:
        with self._lock:
            if self._current:  # another consumer refilled it meanwhile
                return self._current.pop()
            chunks = self._chunks
            if not chunks:
                if not self._cond.wait_for(self._has_next, timeout):
                    raise PoolTimeout
                if not chunks:
                    error, self._error = self._error, None
                    if error is not None:
                        raise error
                    raise StopIteration
            values = chunks.popleft()
            if self._budget is not None:
                self._budget.took(len(values))
            value = values.pop()
            self._current = values
            return value

    def _has_next(self) -> bool:
        return bool(self._chunks) or self._ended

    def _add(self, pieces: list[tuple[int, Chunk]]) -> None:
        released: list[Chunk] = []
        for first, chunk in pieces:
            if self._order is None:
                released.append(chunk)
            else:
                released.extend(self._order.add(first, len(chunk[1]), chunk))
        ready = []
        for ok, values in released:
            values = values if ok else [_Failed(error) for error in values]
            values.reverse()
            ready.append(values)
        with self._lock:
            self._chunks.extend(ready)
            self._cond.notify_all()

    def deliver(self, run: RunState, results: list[TaskResult]) -> None:
        self._add(chunks_of(run, results, pool_traceback))

    def deliver_values(self, run: RunState, chunks: Values) -> None:
        self._add(value_chunks(chunks))

    def finished(self, run: RunState, error: BaseException | None) -> None:
        with self._lock:
            self._ended = True
            self._error = error
            self._cond.notify_all()


class _Failed:
    """A task's exception among the values of a chunk."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error
