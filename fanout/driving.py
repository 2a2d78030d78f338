"""Runs driven by a thread of their own, on any backend with the drive interface
(``start_run``, ``pump``, ``end_run``, ``wake``, ``cancel_tasks``: the drive contract in
:mod:`fanout.backends.base`). ``fanout.Executor``, ``fanout.Pool`` and
``fanout.AsyncFanout`` are built on it.

- :class:`Driver`: one thread drives every run of one backend and hands each run's
  results to its :class:`Sink` (a future, a map's queue, an event loop). Callers never
  touch the backend: what they ask for (a run to start or end) is done in this thread,
  between two pumps; a new input in a run's Feed only wakes the pump.
- :class:`Calls`: the one long-lived run that serves every ``submit`` of an Executor
  (``apply_async`` of a Pool), each call to its :class:`Waiter`.
- :class:`Budget`: how far a driven run may read its input ahead of its consumer.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from fanout import calls, tracing
from fanout.backends.base import Backend, MapSpec
from fanout.backends.feed import Feed
from fanout.backends.runstate import RunState
from fanout.calls import Call
from fanout.errors import WorkerLost
from fanout.models import TaskResult

W = TypeVar("W", bound="Waiter")
Values = list[tuple[Sequence[int], list[Any], str]]  # RunState.ready_values

PUMP_SECONDS = 1.0  # the longest a pump waits while nothing happens (wake() ends it)


class Sink(Protocol):
    """Who gets a run's results."""

    def deliver(self, run: RunState, results: list[TaskResult]) -> None: ...

    def deliver_values(self, run: RunState, chunks: Values) -> None: ...

    def finished(self, run: RunState, error: BaseException | None) -> None: ...


class Driver:
    """One thread driving the runs of one backend."""

    def __init__(self, backend: Backend, name: str, echo_output: bool = True) -> None:
        """``echo_output``: write what tasks print to stdout, as the stdlib's pools do
        (``fanout.aio`` does not: like ``Fanout.map``, it leaves it in each result)."""
        self.backend = backend
        self.name = name
        self.echo_output = echo_output
        self.runs: dict[RunState, Sink] = {}  # the driver thread's alone
        self.requests: deque[_Request] = deque()
        self.lock = threading.Lock()
        self.idle = threading.Event()  # set to wake the thread while no run is open
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.failure: BaseException | None = None
        self.ended = False  # the thread is gone: requests run in the caller's thread

    def start(self, spec: MapSpec, sink: Sink) -> RunState:
        """A new run of ``spec``, whose results go to ``sink``."""

        def begin() -> RunState:
            run = self.backend.start_run(spec)
            self.runs[run] = sink
            return run

        run: RunState = self.ask(begin)
        return run

    def end(self, run: RunState) -> None:
        """End ``run`` now (its remaining tasks are dropped, running ones stopped)."""

        def stop() -> None:
            if self.runs.pop(run, None) is not None:
                self.backend.end_run(run)

        self.ask(stop)

    def dispatch_now(self) -> None:
        """Hand what workers can take now over to them (one pump, without waiting).
        Not where this thread is the worker: its pump runs tasks."""
        if self.backend.runs_in_caller:
            return
        if self.thread is not None and self.failure is None:
            self.ask(lambda: self.backend.pump(0.0))

    def cancel_tasks(self, run: RunState | None, indices: list[int]) -> set[int]:
        """Cancel those tasks its run has handed to the backend but no worker has yet."""
        if run is None or not indices or self.failure is not None:
            return set()
        if type(self.backend).cancel_tasks is Backend.cancel_tasks:
            return set()  # nothing is queued between the run and a worker there

        def cancel() -> set[int]:
            return self.backend.cancel_tasks(run, indices) if run in self.runs else set()

        cancelled: set[int] = self.ask(cancel)
        return cancelled

    def ask(self, request: Callable[[], Any]) -> Any:
        """Do ``request`` in the driver's thread; its value, or its exception raised here."""
        if self.thread is not None and threading.current_thread() is self.thread:
            return request()
        asked = _Request(request)
        with self.lock:
            if self.failure is not None:
                raise self.failure
            ended = self.ended
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self.thread.start()
            if not ended:
                self.requests.append(asked)
        if ended:  # nothing else runs in its place any more
            return request()
        self.wake()
        asked.done.wait()
        if asked.error is not None:
            raise asked.error
        return asked.value

    def wake(self) -> None:
        self.idle.set()
        self.backend.wake()

    def stop(self, abandon: BaseException | None = None) -> None:
        """End the thread once every run has handed on its last result; with
        ``abandon``, end every run now and tell its waiters that."""
        if abandon is not None and self.thread is not None:
            with contextlib.suppress(BaseException):  # a driver that failed told them
                self.ask(lambda: self._abandon(abandon))
        with self.lock:
            self.stopping = True
            thread = self.thread
        self.wake()
        if thread is not None and threading.current_thread() is not thread:
            thread.join()

    def _abandon(self, error: BaseException) -> None:
        runs, self.runs = self.runs, {}
        for run, sink in runs.items():
            self.backend.end_run(run)
            sink.finished(run, error)

    def _loop(self) -> None:
        try:
            while True:
                self._serve_requests()
                if self.stopping and not self.runs:
                    with self.lock:
                        if not self.requests:
                            self.ended = True
                            return
                if not self.runs:
                    self.idle.wait(PUMP_SECONDS)
                    self.idle.clear()
                    continue
                self.backend.pump(PUMP_SECONDS)
                self._hand_on()
        except BaseException as exc:  # a backend gone (Redis lost): every waiter hears it
            with self.lock:
                self.failure = exc
            for run, sink in list(self.runs.items()):
                sink.finished(run, exc)
            self.runs.clear()
            self._serve_requests()

    def _serve_requests(self) -> None:
        while True:
            with self.lock:
                if not self.requests:
                    return
                asked = self.requests.popleft()
            try:
                asked.value = asked.request()
            except BaseException as exc:
                asked.error = exc
            asked.done.set()

    def _hand_on(self) -> None:
        for run, sink in list(self.runs.items()):
            if run.ready_values:
                chunks = list(run.ready_values)
                run.ready_values.clear()
                for _, _, output in chunks:
                    write(output)
                sink.deliver_values(run, chunks)
                del chunks
            if run.ready:
                results = list(run.ready)
                run.ready.clear()
                if self.echo_output:
                    echo(results)
                sink.deliver(run, results)
                del results  # the caller may drop them now: this thread holds none
            if run.done():
                del self.runs[run]
                self.backend.end_run(run)
                sink.finished(run, run.input_error)


def echo(results: list[TaskResult]) -> None:
    """What the tasks printed, on the caller's stdout: code written for the stdlib's pools
    expects its workers' prints to show (they are also in each ``task_result.output``)."""
    for result in results:
        write(result.output)


def write(output: str) -> None:
    if output:
        sys.stdout.write(output)
        sys.stdout.flush()


class _Request:
    """Something a caller asks the driver's thread to do, and its outcome."""

    __slots__ = ("done", "error", "request", "value")

    def __init__(self, request: Callable[[], Any]) -> None:
        self.request = request
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class Waiter(Protocol):
    """A future or async result waiting for one call's result."""

    def settle(self, result: TaskResult, run: RunState) -> None: ...

    def abandon(self, error: BaseException) -> None: ...


class Calls:
    """The long-lived run that serves every ``submit`` (or ``apply_async``) of one
    Executor (or Pool): each call goes into its Feed, each result to its waiter."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.lock = threading.Lock()
        self.feed: Feed | None = None
        self.run: RunState | None = None
        self.trace: Mapping[str, str] | None = None  # the run's (tracing.run_carrier)
        self.waiting: dict[int, Waiter] = {}

    def put(self, call: Call, waiter: Callable[[Callable[[], bool]], W]) -> W:
        """Send ``call``; ``waiter(cancel)`` makes what hears its outcome, and ``cancel()``
        cancels it if no worker has it yet."""
        with self.lock:  # held until the waiter is known: its result cannot overtake it
            if self.feed is None:
                self.feed = Feed(self.driver.wake)
                # Unordered: each call's result goes to its own waiter as soon as it is in,
                # not once every call made before it has finished.
                spec = MapSpec(calls.call, calls.TARGET, self.feed, ordered=False,
                               trace=tracing.run_carrier())  # fmt: skip
                self.trace = spec.trace
                self.run = self.driver.start(spec, self)
            if call.trace is None:  # the submitter's trace context goes with its call
                call.trace = tracing.carrier(self.trace)
            feed, run, index = self.feed, self.run, self.feed.put(call)

            def cancel() -> bool:
                # Still in the feed; else queued on the backend (rq) and no worker has it.
                return feed.cancel(index) or bool(self.driver.cancel_tasks(run, [index]))

            made = waiter(cancel)
            self.waiting[index] = made
            return made

    def close(self) -> None:
        """No more calls: the run ends once those sent have their results."""
        with self.lock:
            if self.feed is not None:
                self.feed.close()

    def cancel_pending(self) -> list[Waiter]:
        """Cancel every call no worker has yet, at once; their waiters."""
        with self.lock:
            waiting, feed, run = dict(self.waiting), self.feed, self.run
        if feed is None:
            return []
        queued = [index for index in waiting if not feed.cancel(index)]
        cancelled = set(waiting) - set(queued)
        cancelled |= self.driver.cancel_tasks(run, queued)
        return [waiting[index] for index in sorted(cancelled)]

    def deliver_values(self, run: RunState, chunks: Values) -> None:
        raise AssertionError("the calls' run is not bare")

    def deliver(self, run: RunState, results: list[TaskResult]) -> None:
        with self.lock:
            waiters = [self.waiting.pop(r.index, None) for r in results]
        for waiter, result in zip(waiters, results, strict=True):
            if waiter is not None:
                waiter.settle(result, run)

    def finished(self, run: RunState, error: BaseException | None) -> None:
        with self.lock:
            left, self.waiting = list(self.waiting.values()), {}
        for waiter in left:
            waiter.abandon(error or WorkerLost("the run serving these calls ended"))


class Budget:
    """At most ``limit`` tasks taken from the input and not yet taken by the caller
    (Python 3.14's ``buffersize``): the run asks ``room()`` before it reads input."""

    def __init__(self, limit: int, wake: Callable[[], None]) -> None:
        self.limit = limit
        self.wake = wake
        self.taken = 0  # by the caller
        self.read = 0  # from the input, as the run last said
        self.starved = False
        self.lock = threading.Lock()

    def room(self, read: int) -> int:
        """(The driver's thread.) How many more inputs may be read, ``read`` read so far."""
        with self.lock:
            self.read = read
            room = self.limit - (read - self.taken)
            self.starved = room <= 0
            return room

    def took(self, n: int) -> None:
        """The caller took ``n`` more results: the run may read on if it was waiting."""
        with self.lock:
            self.taken += n
            # Waking once half the budget is free keeps the run's batches large.
            wake = self.starved and self.read - self.taken <= self.limit // 2
            if wake:
                self.starved = False
        if wake:
            self.wake()
