"""fanout from an event loop: ``AsyncFanout`` and ``arun``, on every backend.

The loop never waits on fanout. A thread drives the runs (``fanout.driving.Driver``, on
the backend's drive interface: ``start_run``, ``pump``, ``end_run``), and results cross
to the loop a chunk at a time: the thread appends to the run's queue and schedules at
most one wake-up of the loop until the loop has taken what is there, so a run of
100,000 trivial tasks costs the loop a few hundred callbacks, not one per result. On rq
the thread waits on Redis with blocking reads, as a synchronous caller does; nothing
polls.

Cancelling the task that consumes a map (or leaving it early) ends the run as Ctrl-C
does: queued tasks are dropped (rq: its jobs removed), workers still busy with its tasks
are stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from fanout.api import Fanout
from fanout.backends.runstate import RunState
from fanout.driving import Budget, Driver, Values
from fanout.models import TaskResult

if TYPE_CHECKING:
    from fanout.tracing import RunTrace

# Results taken from the input but not yet by the consumer, at most: a slow consumer
# holds the run back instead of piling results up in memory.
AHEAD = 1 << 16


class AsyncFanout:
    """``fanout.Fanout`` for asyncio: ``async with AsyncFanout(...) as fo:`` then
    ``async for r in fo.map(target, items)``. One map at a time, as on a Fanout."""

    def __init__(
        self, backend: str | None = None, workers: int | None = None, **backend_options: Any
    ) -> None:
        self._args = (backend, workers, backend_options)
        self._fanout: Fanout | None = None
        self._driver: Driver | None = None

    async def __aenter__(self) -> AsyncFanout:
        backend, workers, options = self._args
        # Starting a backend may connect to Redis or start processes: not on the loop.
        self._fanout = await asyncio.to_thread(Fanout, backend, workers, **options)
        self._driver = Driver(self._fanout.backend, "fanout-async", echo_output=False)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose(cancel=kind is not None)

    async def aclose(self, cancel: bool = False) -> None:
        """End the workers (``cancel``: without waiting for running tasks)."""
        fanout, driver = self._fanout, self._driver
        if fanout is None or driver is None:
            return

        def close() -> None:
            driver.stop(abandon=RuntimeError("the AsyncFanout was closed") if cancel else None)
            fanout.close(cancel=cancel)

        await asyncio.shield(asyncio.to_thread(close))

    def map(
        self,
        target: Callable[..., Any] | str,
        items: Iterable[Any] | None = None,
        *,
        ordered: bool = True,
        timeout: float | None = None,
        retries: int = 0,
        star: bool = False,
        repeat: int | None = None,
        max_failures: int | None = None,
    ) -> AsyncIterator[TaskResult]:
        """One :class:`~fanout.TaskResult` per item, as ``Fanout.map`` yields them; the
        target and options are checked now, before any task runs."""
        chunks = self._chunks(target, items, ordered=ordered, timeout=timeout,
                              retries=retries, star=star, repeat=repeat,
                              max_failures=max_failures)  # fmt: skip
        return _flat(chunks)

    async def _collect(self, target: Callable[..., Any] | str, items: Any, **options: Any
                       ) -> list[TaskResult]:  # fmt: skip
        results: list[TaskResult] = []
        async for chunk in self._chunks(target, items, **options):
            results += chunk
        return results

    def _chunks(self, target: Callable[..., Any] | str, items: Any, **options: Any
                ) -> AsyncIterator[list[TaskResult]]:  # fmt: skip
        fanout, driver = self._fanout, self._driver
        if fanout is None or driver is None:
            raise RuntimeError("use AsyncFanout in 'async with' (or after 'await __aenter__()')")
        budget = Budget(AHEAD, driver.wake)
        spec = fanout.spec(target, items, room=budget.room, **options)  # raises now
        spec, trace = fanout.traced(spec)  # in the consuming task's trace context
        return _run_chunks(driver, spec, budget, trace)


async def arun(
    target: Callable[..., Any] | str,
    items: Iterable[Any] | None = None,
    *,
    repeat: int | None = None,
    star: bool = False,
    backend: str | None = None,
    workers: int | None = None,
    timeout: float | None = None,
    retries: int = 0,
    ordered: bool = True,
    max_failures: int | None = None,
    **backend_options: Any,
) -> list[TaskResult]:
    """``fanout.run`` for asyncio: every result, awaited without blocking the loop."""
    options = dict(repeat=repeat, star=star, timeout=timeout, retries=retries,
                   ordered=ordered, max_failures=max_failures)  # fmt: skip
    async with AsyncFanout(backend, workers, **backend_options) as fo:
        return await fo._collect(target, items, **options)


async def _flat(chunks: AsyncIterator[list[TaskResult]]) -> AsyncIterator[TaskResult]:
    try:
        async for chunk in chunks:
            chunk.reverse()
            while chunk:
                yield chunk.pop()  # nothing here keeps a result the consumer dropped
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def _run_chunks(
    driver: Driver, spec: Any, budget: Budget, trace: RunTrace | None = None
) -> AsyncIterator[list[TaskResult]]:
    sink = LoopSink(asyncio.get_running_loop())
    starting = asyncio.ensure_future(asyncio.to_thread(driver.start, spec, sink))
    try:
        run = await asyncio.shield(starting)
    except asyncio.CancelledError:  # while it started: it is ended once it has
        with contextlib.suppress(Exception):
            await asyncio.shield(asyncio.to_thread(driver.end, await starting))
        raise
    try:
        while (chunk := await sink.get()) is not None:
            budget.took(len(chunk))
            if trace is not None:
                for result in chunk:
                    trace.count(result)
            yield chunk
    finally:
        if not sink.ended:
            # Cancelled, or left early: the run ends as on Ctrl-C. Shielded, so that a
            # second cancellation cannot leave it going.
            await asyncio.shield(asyncio.to_thread(driver.end, run))
        if trace is not None:
            trace.end(driver.backend.last_run_id())


class _End:
    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class LoopSink:
    """A run's results on their way from the driver's thread to one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: deque[list[TaskResult] | _End] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.scheduled = False  # a wake-up of the loop is on its way
        self.ended = False

    # -- the driver's thread ------------------------------------------------------------

    def deliver(self, run: RunState, results: list[TaskResult]) -> None:
        self._put(results)

    def deliver_values(self, run: RunState, chunks: Values) -> None:  # pragma: no cover
        raise AssertionError("an async map is not a bare run")

    def finished(self, run: RunState, error: BaseException | None) -> None:
        self._put(_End(error))

    def _put(self, item: list[TaskResult] | _End) -> None:
        self.pending.append(item)
        if not self.scheduled:
            self.scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self.loop.call_soon_threadsafe(self._wake)

    # -- the loop -----------------------------------------------------------------------

    def _wake(self) -> None:
        self.scheduled = False  # before the consumer looks: a later put wakes it again
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> list[TaskResult] | None:
        """The next chunk of results; None once the run is over (its input's own error
        raised then, as ``Fanout.map`` raises it)."""
        while not self.pending:
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        item = self.pending.popleft()
        if isinstance(item, _End):
            self.ended = True
            if item.error is not None:
                raise item.error
            return None
        return item
