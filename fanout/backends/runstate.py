"""The run logic every backend shares, written once: one :class:`RunState` per map() call.

A backend makes a ``RunState`` (or a subclass adding its own dispatch state) for each
run and drives it; everything about *what* to run and *what counts* lives here:

- input taken lazily, with a bound (``window``) on how far an ordered run may read ahead;
- batches: tasks waiting for a retry first, then fresh items, each input that is not a
  plain value pickled here in the caller (one that cannot be fails its own task);
- sizing from measurements: seconds and pickled bytes per task;
- outcomes: worker records become results; a failed attempt is retried while
  ``retries`` allow (the attempt counts), tasks a lost worker never started go back to
  the front of the line (no attempt counted, bounded by ``MAX_FREE_REQUEUES``), and a
  target no worker can load fails every task left at once instead of looping;
- exactly one result per index taken, in input order when asked (the reorder buffer);
- the input's own exception raised after the results of the tasks taken before it.

Runs are independent of one another: a backend may drive several at once over one set
of workers (each batch knows its run), which the drop-in executors rely on.
"""

from __future__ import annotations

import itertools
import operator
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from itertools import chain, repeat, starmap
from typing import Any

from fanout._task import load_value
from fanout._wire import NOT_RUN, OK_RAW, STATUS, Record, Task, TaskBatch, UsageFacts
from fanout.backends.feed import Feed
from fanout.backends.inorder import InOrder
from fanout.backends.intake import batch_of
from fanout.backends.resultstream import ResultStream
from fanout.backends.sizing import Sizing
from fanout.backends.spec import MapSpec
from fanout.errors import Cancelled, SerializationError, TargetError
from fanout.models import (
    TaskError,
    TaskResult,
    Usage,
    WorkerInfo,
    cancelled,
    decided_now,
)

# How far past the oldest unyielded result an ordered run may take input, at least.
ORDER_WINDOW = 10_000
# A task requeued for free (its worker died outside any task) this often is charged.
MAX_FREE_REQUEUES = 3

# Failures that would only repeat: a value that cannot be pickled, a target that cannot load.
_NOT_RETRIED = frozenset({SerializationError.__name__, TargetError.__name__})
_CANCELLED = Cancelled.__name__  # not a failure: max_failures does not count it


class RunState(Sizing):
    """Input, retries, measurements and ready results of one map() call.

    A driver (``fanout.driving``) reads ``ready``, ``ready_values``, ``done()``,
    ``input_error``, ``exceptions`` and ``spec`` after each pump, and nothing else: the
    drive contract in :mod:`fanout.backends.base` says how.
    """

    def __init__(self, spec: MapSpec, backend: str) -> None:
        super().__init__()
        self.spec = spec
        self.backend = backend
        self.source = spec.items
        self.exhausted = False
        self.input_error: BaseException | None = None
        self.finished = False
        self.outstanding = 0  # tasks taken from the input without a final result yet
        self.next_index = 0  # index of the next item to take
        self.ready: deque[TaskResult] = deque()
        # Bare runs (MapSpec.bare): successes as (indices, values, output) chunks.
        self.ready_values: deque[tuple[Sequence[int], list[Any], str]] = deque()
        # Ordered runs: results held until those before them are in (pieces: runs of
        # consecutive results).
        self.order: InOrder[list[TaskResult]] = InOrder()
        self.retry: deque[Task] = deque()  # tasks to send again, first in line first
        self.broken: TaskError | None = None  # set when no task can run any more
        self.free_requeues: dict[int, int] = {}  # index -> requeues its worker's death cost
        self.not_run_info: WorkerInfo | None = None  # made once: it looks up the host
        self.failures = 0  # failed results, counted when spec.max_failures is set
        # max_failures reached: nothing new dispatched, every task left is cancelled.
        self.halted: TaskError | None = None
        # Handing back (hand_back): the tasks given up for another worker to run.
        self.handed: list[Task] | None = None
        self.exceptions: dict[int, BaseException] = {}  # index -> why its input could not go
        if spec.bare and spec.ordered:
            raise ValueError("a bare run hands its values on as they come: ordered=False")
        if spec.indices is not None and spec.ordered:
            raise ValueError("a run numbered by MapSpec.indices is unordered")

    def numbers(self, start: int, count: int) -> Sequence[int]:
        """The indices of ``count`` items from position ``start`` (``MapSpec.indices``)."""
        if self.spec.indices is None:
            return range(start, start + count)
        return self.spec.indices[start : start + count]

    def done(self) -> bool:
        return self.exhausted and self.outstanding == 0 and not self.ready and not self.ready_values

    def batch_size(self) -> int:
        """How many tasks the next batch holds; backends size by their own costs."""
        return 1

    def window(self) -> int:
        """How far past the oldest unyielded result an ordered run may take input."""
        return ORDER_WINDOW

    # -- taking input -----------------------------------------------------------------

    def take_fresh(self, room: int) -> tuple[int, list[Any]]:
        """Up to ``room`` new items and the index of the first; fewer when far ahead."""
        start = self.next_index
        if self.spec.room is not None:
            room = min(room, self.spec.room(start))
        if self.exhausted or room <= 0:
            return start, []
        if self.spec.ordered:
            room = min(room, self.window() - (self.next_index - self.order.next))
            if room <= 0:
                return start, []
        if isinstance(self.source, Feed):
            taken = self.source.take(room)
            self.exhausted = self.source.drained()
            if self.exhausted and self.source.error is not None:
                self.input_error = self.source.error
            self.next_index += len(taken)
            self.outstanding += len(taken)
            return start, taken
        fresh: list[Any] = []
        try:
            fresh.extend(itertools.islice(self.source, room))  # keeps what came before an error
        except (Exception, SystemExit) as exc:
            # Stop reading input; tasks already taken still finish and are yielded, then
            # it is raised. SystemExit too (sys.exit() in a generator): in-flight results
            # are not dropped. Ctrl-C still cancels the run where it lands.
            self.exhausted = True
            self.input_error = exc
        else:
            if len(fresh) < room:
                self.exhausted = True
        self.next_index += len(fresh)
        self.outstanding += len(fresh)
        return start, fresh

    def take_batch(self, limit: int | None = None) -> TaskBatch | None:
        """The next batch to send (at most ``limit`` tasks): retries first, then fresh
        items; None if nothing now."""
        if self.broken is not None or self.halted is not None:
            self.settle_the_rest()
            return None
        if self.handed is not None:
            return None
        size = self.batch_size() if limit is None else min(limit, self.batch_size())
        if self.spec.chunksize is not None:
            size = min(size, self.spec.chunksize)
        retried = self.take_retries(size)
        start, fresh = self.take_fresh(size - len(retried))
        batch = self.pickle_fresh(start, fresh)
        if not retried:
            return batch
        indices = [t.index for t in retried]
        items = [t.item for t in retried]
        pickled = [pos for pos, t in enumerate(retried) if t.pickled]
        attempts = [t.attempts for t in retried]
        if batch is not None:
            pickled += [len(indices) + pos for pos in batch.pickled]
            indices += batch.indices
            items += batch.items
            attempts += [0] * len(batch) if batch.attempts is None else batch.attempts
        return TaskBatch(indices, items, pickled, attempts)

    def take_retries(self, size: int) -> list[Task]:
        retry = self.retry
        return [retry.popleft() for _ in range(min(size, len(retry)))]

    def pickle_fresh(self, start: int, fresh: list[Any]) -> TaskBatch | None:
        """Fresh items as a batch (``intake.batch_of``); an input that cannot go fails
        its own task here."""
        return batch_of(start, fresh, self.spec.attempts, self._refuse_input, self.spec.indices)

    def _refuse_input(self, index: int, error: TaskError, exc: BaseException | None) -> None:
        if exc is not None:
            self.exceptions[index] = exc  # the drop-ins raise it as it is
        self.fail_in_caller(index, error)

    # -- outcomes ---------------------------------------------------------------------

    def settle(
        self,
        records: Sequence[Record],
        info: WorkerInfo,
        prior: Sequence[int] | None,
        task_of: Callable[[int], Task] | None = None,
    ) -> None:
        """The one way a worker's results enter the run: its records (``_wire``) become
        results. ``prior[i]``: the attempts made before ``records[i]``'s (None: none, all
        first tries). ``task_of(i)``: the task, sent again here when its attempt failed
        and ``retries`` allow; None when the records are final (the worker applied
        ``retries`` itself: a fanout job on rq)."""
        if prior is None and not any(record[STATUS] for record in records):
            self.finish_many(_first_try_results(records, info))  # the common case
            return
        done: list[TaskResult] = []
        for i, (index, status, payload, started, finished, duration, output, usage) in enumerate(
            records
        ):
            before = 0 if prior is None else prior[i]
            if status == NOT_RUN:  # never started: no attempt made, nobody ran it
                who = WorkerInfo.not_run(info.backend, info.host)
                done.append(TaskResult(index, False, None, payload, who, before,
                                       started, finished, 0.0, ""))  # fmt: skip
                if payload.type == TargetError.__name__:
                    self.break_target(payload)
                continue
            ok, value = (True, payload) if status == OK_RAW else load_value(index, status, payload)
            result = TaskResult(index, ok, value if ok else None, None if ok else value, info,
                                before + 1, started, finished, duration, output,
                                usage_of(usage))  # fmt: skip
            if ok or task_of is None:
                done.append(result)
            else:
                self.failed_attempt(task_of(i), result, value.type not in _NOT_RETRIED)
            if not ok and value.type == TargetError.__name__:
                self.break_target(value)  # no worker can load it: every task would fail
        self.finish_many(done)

    def failed_attempt(
        self, task: Task, result: TaskResult, retryable: bool = True, decided: bool = False
    ) -> None:
        """A task's attempt failed: send it again while ``retries`` allow, else report
        ``result`` (``decided``: here, no worker reported it: see :meth:`decided`)."""
        if (
            retryable
            and self.broken is None
            and self.halted is None
            and task.attempts + 1 <= self.spec.retries
        ):
            if self.handed is not None:  # the next attempt is someone else's
                self.handed.append(task.tried_again())
                self.outstanding -= 1
            else:
                self.retry.append(task.tried_again())
        elif decided:
            self.decided([result])
        else:
            self.finish_many([result])

    def requeue(self, tasks: Iterable[Task]) -> None:
        """Tasks a worker held but never started (it was lost, or they were taken back
        from it): first in line, in their order, with no attempt counted. A halted run
        cancels them instead."""
        back = list(tasks)
        if self.handed is not None:
            self.handed += back
            self.outstanding -= len(back)
            return
        if self.halted is not None:
            for task in back:
                self.fail_in_caller(task.index, self.halted, task.attempts)
            return
        # In input order among the others waiting: tasks come back from several workers
        # one after another, and the lowest index is the one the ideal schedule runs next.
        line = sorted([*back, *self.retry], key=_index)
        self.retry.clear()
        self.retry.extend(line)

    def hand_back(self) -> list[Task]:
        """Give up every task no worker holds — those waiting to go again and the rest
        of the input, read to its end — for another worker to run (a ``fanout worker``
        splitting a job that turned out slow): from now on the run takes no input and
        sends nothing, and it ends once what its workers hold is done. Tasks taken back
        from a worker later are handed back too (``handed``). Items are as the input
        gave them; attempts are those made so far."""
        if self.handed is None:
            self.handed = []
        given = list(self.retry)
        self.retry.clear()
        self.outstanding -= len(given)
        if not self.exhausted:
            start, rest = self.next_index, list(self.source)
            prior = self.spec.attempts
            given += [
                Task(index, item, False, 0 if prior is None else prior[start + i])
                for i, (index, item) in enumerate(zip(self.numbers(start, len(rest)), rest,
                                                      strict=True))
            ]  # fmt: skip
            self.next_index += len(rest)
            self.exhausted = True
        self.handed += given
        return given

    def suspect(self, index: int) -> bool:
        """Count a free requeue against ``index``; True once it has had too many (then
        charge it an attempt, so that nothing loops forever)."""
        count = self.free_requeues.get(index, 0) + 1
        self.free_requeues[index] = count
        return count >= MAX_FREE_REQUEUES

    def break_target(self, error: TaskError) -> None:
        """No task can run any more (the target cannot be loaded, jobs are refused):
        every task left fails with ``error`` instead of being tried."""
        self.broken = error

    def fail_in_caller(self, index: int, error: TaskError, attempts: int = 0) -> None:
        """A task that no process ran (its input could not be sent, the run could not go
        on, it was cancelled), decided here: worker ``(not run)``, no attempt added."""
        self.decided([self.not_run(index, error, attempts)])

    def fail_many_in_caller(self, indices: Iterable[int], error: TaskError) -> None:
        """``fail_in_caller`` for many tasks at once, none of them attempted."""
        self.decided([self.not_run(index, error) for index in indices])

    def not_run(self, index: int, error: TaskError, attempts: int = 0) -> TaskResult:
        """The result of a task that no process ran (a ``Cancelled`` one, say): worker
        ``(not run)`` on this host, ``attempts`` those made before."""
        info = self.not_run_info or WorkerInfo.not_run(self.backend)
        self.not_run_info = info
        return decided_now(index, error, info, attempts)

    def decided(self, results: list[TaskResult]) -> None:
        """Results decided in the caller, no worker's report (a task that could not be
        sent, a cancelled one, one lost with its worker): final here; a backend whose
        results travel elsewhere first (rq: the run's stream, read by every collector)
        sends them there instead."""
        self.finish_many(results)

    def fail_the_rest(self, error: TaskError, limit: int = 1024) -> None:
        """Fail the tasks waiting for a retry and up to ``limit`` items of the input."""
        while self.retry:
            task = self.retry.popleft()
            self.fail_in_caller(task.index, error, task.attempts)
        start, fresh = self.take_fresh(limit)
        if fresh:
            self.fail_many_in_caller(self.numbers(start, len(fresh)), error)

    def settle_the_rest(self) -> None:
        """A run that can send nothing more (halted, or its target broken): the tasks
        waiting and the next part of the input get their result now. The input is read
        to its end this way, a part per call, so that every input has its result."""
        error = self.broken or self.halted
        if error is not None:
            self.fail_the_rest(error)

    def halt(self) -> None:
        """Send nothing more: the tasks not yet handed to a worker, and every input not
        yet taken, are cancelled (each its result); those a worker holds finish.
        Backends cancel the tasks they hold unstarted too (``requeue`` cancels them)."""
        self.halted = cancelled(
            f"the run stopped after {self.failures} failed task{'s' if self.failures != 1 else ''}"
            f" (max_failures={self.spec.max_failures}) before this task started"
        )
        self.fail_the_rest(self.halted, limit=0)

    def settle_columns(
        self,
        indices: Sequence[int],
        values: Sequence[Any],
        started: Sequence[float],
        durations: Sequence[float],
        outputs: Sequence[str] | None,
        info: WorkerInfo,
        attempts: Sequence[int] | None,
        usage: Sequence[Sequence[Any]] | None = None,
    ) -> None:
        """Successes with raw values, a column per field (the local wire's COLUMNS):
        ``attempts[i]`` were made before the one that succeeded (None: first tries);
        ``usage``: runs of ``(count, cpu, max_rss)``, one Usage shared by each run's
        tasks (None: not measured)."""
        tries: Iterable[int] = repeat(1) if attempts is None else [a + 1 for a in attempts]
        columns = (indices, repeat(True), values, repeat(None), repeat(info), tries, started,
                   map(operator.add, started, durations), durations,
                   repeat("") if outputs is None else outputs,
                   repeat(None) if usage is None else _usages(usage))  # fmt: skip
        # starmap over zip, not map over eleven columns: map copies each call's
        # arguments into memory of its own, zip's tuple is reused.
        results = list(starmap(TaskResult, zip(*columns, strict=False)))
        if self.spec.ordered and isinstance(indices, range) and indices.step == 1:
            # A fresh batch's indices are a range: one piece, without looking at each.
            self.outstanding -= len(results)
            for piece in self.order.add(indices.start, len(results), results):
                self.ready.extend(piece)
            return
        self.finish_many(results)

    def settle_values(self, indices: Sequence[int], values: list[Any], output: str) -> None:
        """Successes of a bare run, as they came: no TaskResult each (see MapSpec.bare)."""
        self.outstanding -= len(values)
        self.ready_values.append((indices, values, output))

    def finish_many(self, results: list[TaskResult]) -> None:
        """Final results: ready to yield now, or once the results before them are."""
        self.outstanding -= len(results)
        if self.spec.max_failures is not None and self.halted is None:
            self.failures += sum(
                1
                for r in results
                if not r.ok and r.error is not None and r.error.type != _CANCELLED
            )
            if self.failures >= self.spec.max_failures:
                self.halt()
        if not self.spec.ordered:
            self.ready.extend(results)
            return
        order, ready, start = self.order, self.ready, 0
        for end in range(1, len(results) + 1):  # a piece per run of consecutive indices
            if end == len(results) or results[end].index != results[end - 1].index + 1:
                first = results[start].index
                for piece in order.add(first, end - start, results[start:end]):
                    ready.extend(piece)
                start = end

    # -- the results generator --------------------------------------------------------

    def results(self, step: Callable[[], object], end: Callable[[], None]) -> ResultStream:
        """The results one by one (``result_lists``, handed on by a ResultStream)."""
        return ResultStream(self.result_lists(step, end))

    def result_lists(
        self, step: Callable[[], object], end: Callable[[], None]
    ) -> Generator[list[TaskResult], None, None]:
        """The results, a list of those ready at a time, calling ``step`` to make
        progress while none are; ``end`` runs however it ends. Closed early, it empties
        the list it handed on last: its results are not yielded."""
        ready = self.ready  # never replaced: drivers and backends hold it
        handed: list[TaskResult] = []
        try:
            while True:
                if ready:
                    handed = list(ready)
                    ready.clear()
                    yield handed
                    continue
                if self.done():
                    break
                if not ready:  # done() may have released what it held
                    step()
        finally:
            handed.clear()  # ended early: they were not yielded (else: all were)
            self.finished = True
            try:
                end()  # which may send, or cancel, the tasks waiting to go again
            finally:
                self.retry.clear()
        if self.input_error is not None:
            raise self.input_error


def _index(task: Task) -> int:
    return task.index


def _first_try_results(records: Sequence[Record], info: WorkerInfo) -> list[TaskResult]:
    """The results of records that are all first-try successes with a raw value."""
    indices, _, values, started, finished, durations, outputs, usages = zip(*records, strict=True)
    columns = zip(indices, repeat(True), values, repeat(None), repeat(info), repeat(1), started,
                  finished, durations, outputs, map(usage_of, usages), strict=False)  # fmt: skip
    return list(starmap(TaskResult, columns))  # not map(): see settle_columns


def _usages(runs: Sequence[Sequence[Any]]) -> Iterator[Usage]:
    """A Usage per task from runs of ``(count, cpu, max_rss)``: one object per run."""
    return chain.from_iterable(repeat(Usage(cpu, peak), count) for count, cpu, peak in runs)


def usage_of(facts: UsageFacts | None) -> Usage | None:
    """A record's usage (``_wire``) as the result's."""
    return None if facts is None else Usage(*facts)
