"""The worker process's side of the local backend: read batches, run them, send records.

:func:`main` runs in the forked child. It ties the process to the caller, closes the
caller's ends of every pipe, says hello, then serves messages until end-of-file.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import multiprocessing
import os
import pickle
import socket
import sys
import time
from collections.abc import Callable
from itertools import repeat
from typing import TYPE_CHECKING, Any

from fanout import _task, _usage
from fanout._proc import become_subreaper, die_with_parent, kill_tree
from fanout._task import RAW_TYPES
from fanout._wire import (
    DURATION,
    FAILED,
    FINISHED,
    OK_RAW,
    OUTPUT,
    STARTED,
    USAGE,
    Record,
    not_run_record,
)
from fanout.backends.local import barrier
from fanout.backends.local.claim import Claim
from fanout.backends.local.protocol import (
    COLUMNS,
    FN,
    GAVE_BACK,
    HELLO,
    IDLE,
    LOADING_TARGET,
    MARK_BATCH,
    MARK_CPU,
    MARK_PEAK,
    MARK_PHASE,
    MARK_POS,
    RESULTS,
    RUNNING,
    UNPICKLING,
    VALUES,
    Reader,
    UsageRun,
    Writer,
    columns_frame,
)
from fanout.errors import SerializationError, TargetError
from fanout.models import TaskError
from fanout.targets import load_file_modules

if TYPE_CHECKING:
    from fanout.tracing import TaskSpans

# Quick tasks (claimed many at a time) share a usage reading at most this often: a
# reading is a system call that costs 3 µs on a quiet machine and 20-40 µs on busy cores.
MEASURE_SECONDS = 0.001
# A worker sends results mid-batch at least this often (and once they stand for the
# run's flush_seconds of work).
FLUSH_SECONDS = 0.1


def main(
    task_r: int,
    result_w: int,
    marker: mmap.mmap,
    inherited: list[int],
    parent: int,
    main_thread: bool,
) -> None:
    """Body of a worker process: read batches, run them, write result records."""
    global _forked
    # Forked from a worker (a task that runs fanout itself), this process inherits the
    # flag that ends a task's forked copy after its task: it is a worker, not a copy.
    _forked = False
    # PR_SET_PDEATHSIG fires when the *thread* that forked us exits, so it is only safe
    # for workers started from the main thread; others notice end-of-file instead.
    if main_thread and not die_with_parent(parent=parent):
        os._exit(0)  # the caller died before the request took effect
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    become_subreaper()  # what a task starts and leaves behind stays in our tree
    # Close the caller's ends of every pipe: only then does end-of-file on the task
    # pipe mean the caller is gone.
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    # Whatever escapes the capture (C code, processes a task starts) goes to stderr, so
    # the caller's stdout carries only what the caller writes (--json stays clean).
    with contextlib.suppress(OSError):
        os.dup2(2, 1)
    loop = WorkerLoop(Writer(result_w), memoryview(marker).cast("q"))
    # A process that a task starts writes to the real streams, not to a copy of our
    # capture that would vanish with it.
    os.register_at_fork(after_in_child=_restore_streams)
    reader = Reader(task_r)
    me = multiprocessing.current_process()
    # Taking tasks back at once needs the caller's barriers to reach us (barrier.py).
    registered = barrier.register()
    loop.out.send((HELLO, me.name, os.getpid(), os.getppid(), socket.gethostname(), registered))
    while (message := reader.receive()) is not None:
        if message[0] == FN:
            loop.load(*message[2:])
        else:
            loop.run_batch(*message[1:])
    # End-of-file: the pool is closing (or the caller is gone). Nothing a task started
    # outlives us.
    kill_tree(os.getpid(), include_self=False)
    _exit()


def _exit() -> None:
    """Exit now, as multiprocessing's children do, minus ``threading._shutdown()``: a
    worker forked from a thread of the caller (a drop-in's driver) inherits the caller's
    other non-daemon threads as stopped-but-unjoined and would wait for them forever."""
    from multiprocessing import util

    util._exit_function()  # type: ignore[attr-defined]
    if "fanout.tracing" in sys.modules:  # spans a batching exporter still holds
        with contextlib.suppress(Exception):
            sys.modules["fanout.tracing"].flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


class WorkerLoop:
    """A worker's state: the current target, the output capture, the progress marker."""

    def __init__(self, out: Writer, marker: memoryview) -> None:
        self.out = out
        self.marker = marker  # shared with the caller: see protocol.py
        self.capture = _task.install_capture()
        self.printed = self.capture.parts  # non-empty: the running task printed something
        self.claim = Claim(marker)
        self.fn: Callable[..., Any] | None = None
        self.fn_error = TaskError(TargetError.__name__, "no target was sent", cause="not-run")
        self.star = self.bare = False
        self.flush_seconds = 0.0
        self.spans: TaskSpans | None = None  # the run's tracing (fanout.tracing)
        # The batch being run: its indices, its inputs, and the positions of those still
        # pickled (unpickle_claimed), highest first.
        self.indices: list[int] = []
        self.items: list[Any] = []
        self.pickled: list[int] = []
        self.unloadable = False  # an input of the batch could not be unpickled
        # What tasks cost this process (None: not measured, FANOUT_USAGE=0).
        self.meter = _usage.Meter() if _usage.enabled() else None
        self.read_at = 0.0  # time.perf_counter() at the last reading
        self.ended = 0.0  # time.perf_counter() when the last task run here ended

    def load(
        self,
        fn_bytes: bytes,
        star: bool,
        flush_seconds: float,
        modules: dict[str, str],
        bare: bool,
        trace: dict[str, str] | None = None,
    ) -> None:
        self.star, self.flush_seconds, self.bare = star, flush_seconds, bare
        self.spans = None
        self.claim.restart()  # a new target: its tasks are claimed one at a time at first
        if trace is not None:  # the caller traces (fanout.tracing)
            from fanout import tracing

            self.spans = tracing.task_spans(trace)
        self.marker[MARK_BATCH] = LOADING_TARGET
        try:
            load_file_modules(modules)
            self.fn = pickle.loads(fn_bytes)
        except BaseException as exc:
            self.fn = None
            self.fn_error = TaskError(
                TargetError.__name__,
                f"the worker cannot load the target: {_task.describe(exc)}",
                cause="not-run",
            )
        finally:
            self.marker[MARK_BATCH] = IDLE

    def read_usage(self) -> tuple[float, int] | None:
        """What this process spent since the last reading (``_usage.Meter.read``), noted
        in the marker too, for the caller should it die (protocol.py); None: not
        measured."""
        meter = self.meter
        if meter is None:
            return None
        spent, peak = meter.read()
        self.read_at = time.perf_counter()
        self.marker[MARK_CPU], self.marker[MARK_PEAK] = int(meter.cpu * 1e9), peak
        return spent, peak

    def claim_next(self, pos: int, ended: float) -> int:
        """Claim the tasks from ``pos`` on (``Claim.next``) and unpickle their inputs;
        the last position claimed (below ``pos``: taken back from there)."""
        claimed = self.claim.next(pos, ended)
        if claimed >= pos and self.pickled:
            self.unpickle_claimed(claimed)
        return claimed

    def unpickle_claimed(self, upto: int) -> None:
        """The claimed inputs (positions up to ``upto``) that travel as their own pickle,
        unpickled in place: as their tasks are claimed, so that an input taken back
        before it is never unpickled here. A crash here is blamed on that input (the
        marker's phase says so)."""
        marker, indices, items, pickled = self.marker, self.indices, self.items, self.pickled
        marker[MARK_PHASE] = UNPICKLING
        while pickled and pickled[-1] <= upto:
            pos = pickled.pop()
            marker[MARK_POS] = pos
            try:
                items[pos] = pickle.loads(items[pos])
            except BaseException as exc:
                items[pos] = _Unloadable(_task.input_error(indices[pos], exc, "unpickle"))
                self.unloadable = True
        marker[MARK_POS] = IDLE
        marker[MARK_PHASE] = RUNNING

    def run_batch(
        self, batch_id: int, indices: list[int], items: list[Any], pickled: list[int]
    ) -> None:
        claim = self.claim
        claim.begin(batch_id, len(indices))
        self.marker[MARK_BATCH] = batch_id
        # Unpickled as claimed (unpickle_claimed), the last position first off the end.
        self.indices, self.items, self.pickled = indices, items, sorted(pickled, reverse=True)
        self.unloadable = False
        start = 0
        if self.bare and self.fn is not None and self.spans is None:
            self.read_usage()  # no usage for values alone; a death's is counted from here
            start = self.run_bare(batch_id, indices, items)
        end = self.run_records(batch_id, indices, items, start)
        if end < len(indices):  # the caller took the rest back: say where we stopped
            self.out.send((GAVE_BACK, batch_id, end))

    def run_records(self, batch_id: int, indices: list[int], items: list[Any], start: int) -> int:
        """Run the batch's tasks from ``start`` on, a result each; the position where it
        stopped (the length of the batch when none was taken back).

        Tasks run a claimed stretch at a time (:class:`Claim`): the common case, a stretch
        of tasks that return raw values and print nothing, in :meth:`run_quick`; anything
        else through :meth:`run_one`. Results go once ``flush_seconds`` have passed since
        the last ones went (at least every ``FLUSH_SECONDS``; a task's own time counts:
        a crash costs little to redo), looked at after each stretch; with no time to
        wait (``flush_seconds`` 0), after each task."""
        claim = self.claim
        if claim.stopped:
            return start  # run_bare stopped there
        perf = time.perf_counter
        # One wall-clock read per batch: a task's start is wall + its perf_counter().
        box = Outbox(self, batch_id, indices, start, time.time() - perf())
        every = min(self.flush_seconds, FLUSH_SECONDS)
        general = self.fn is None or self.spans is not None  # a span per task: each alone
        pos, end, t1 = start, len(indices), perf()
        deadline = t1 + every
        ended = self.ended  # when the last task ended: what the last claim's stretch took
        while pos < end:
            if pos > claim.last:
                # What the tasks since the last reading cost: after a slow task (a
                # stretch of one), or once MEASURE_SECONDS of quick ones have run.
                if claim.chunk == 1 or t1 - self.read_at >= MEASURE_SECONDS:
                    box.measure()
                if self.claim_next(pos, ended) < pos:
                    end = pos  # taken back from here on
                    break
            stop = claim.last + 1 if every else pos + 1
            if general or box.records or self.unloadable:
                while pos < stop:
                    t1 = self.run_one(box, indices[pos], pos, items[pos])[FINISHED] - box.wall
                    pos += 1
            else:
                pos, t1 = self.run_quick(box, items, pos, stop)
            ended = t1
            if t1 >= deadline:
                box.flush()
                deadline = t1 + every
        self.ended = ended
        box.flush()
        return end

    def run_quick(self, box: Outbox, items: list[Any], pos: int, stop: int) -> tuple[int, float]:
        """Run tasks ``pos`` to ``stop`` (claimed, their inputs loaded) while each returns
        a raw value and prints nothing: two clock reads, the call, a marker store and
        three appends each, its result joining the outbox's columns. The first that does
        otherwise ends the stretch, its result a record. Where it stopped, and the
        perf_counter() there.

        Between two tasks of a stretch the marker still names the one that ended (it goes
        back to IDLE when the stretch does): a death in that gap, a few hundred
        nanoseconds, is put on that task, and the tasks after it run again."""
        fn, star, marker, printed = self.fn, self.star, self.marker, self.printed
        perf = time.perf_counter
        assert fn is not None
        wall, values, starts, durations = box.wall, box.values, box.started, box.durations
        t1 = t0 = perf()
        try:
            for pos in range(pos, stop):  # noqa: B020 - where it stopped is the answer
                item = items[pos]
                marker[MARK_POS] = pos
                t0 = perf()
                value = (fn(**item) if type(item) is dict else fn(*item)) if star else fn(item)
                t1 = perf()
                if _forked:
                    os._exit(0)  # the task forked and returned in the child: we answer
                if printed or type(value) not in RAW_TYPES:
                    break
                values.append(value)
                starts.append(wall + t0)
                durations.append(t1 - t0)
            else:
                marker[MARK_POS] = IDLE
                return stop, t1
        except BaseException as exc:
            t1 = perf()
            box.add(self.failed(box.indices[pos], exc, wall + t0, t1 - t0))
            return pos + 1, t1
        marker[MARK_POS] = IDLE
        output = self.capture.take()
        box.add(_task.ok_record(box.indices[pos], value, wall + t0, t1 - t0, output))
        return pos + 1, t1

    def run_one(self, box: Outbox, index: int, pos: int, item: Any) -> Record:
        """One task the general way; its record joins the outbox's records."""
        if self.fn is None or type(item) is _Unloadable:
            error = item.error if type(item) is _Unloadable else self.fn_error
            record = not_run_record(index, error, time.time())
        else:
            self.marker[MARK_POS] = pos
            if self.spans is None:
                record = _task.run_one(self.fn, index, item, self.star, self.capture,
                                       wall=box.wall)  # fmt: skip
            else:
                task = functools.partial(_task.run_one, self.fn, index, item, self.star,
                                         self.capture, wall=box.wall)  # fmt: skip
                record = self.spans.run(index, item, task)
            if _forked:
                os._exit(0)  # the task forked and returned in the child: see run_records
            self.marker[MARK_POS] = IDLE
        box.add(record)
        return record

    def failed(self, index: int, exc: BaseException, started: float, took: float) -> Record:
        """The record of a task that raised ``exc`` after ``took`` seconds."""
        if _forked:
            os._exit(0)  # the task forked and raised in the child: see run_records
        self.marker[MARK_POS] = IDLE
        return _task.failure_record(index, exc, started, took, self.capture.take())

    def run_bare(self, batch_id: int, indices: list[int], items: list[Any]) -> int:
        """Run the batch's tasks in a tight loop and send their values alone, up to the
        first that fails (its record is sent; the rest of the batch takes the usual
        path) or the first taken back. How many tasks it handled."""
        fn, marker, star, claim = self.fn, self.marker, self.star, self.claim
        assert fn is not None
        values: list[Any] = []
        append = values.append
        started = time.time()
        perf = time.perf_counter
        t0 = perf()
        pos = 0
        failure: Record | None = None
        try:
            for pos in range(len(items)):
                # Values go at the end: a stretch runs from one claim to the next.
                if pos > claim.last and self.claim_next(pos, perf() if pos else self.ended) < pos:
                    break  # taken back from here on: run_records says so
                item = items[pos]
                if type(item) is _Unloadable:
                    break  # its error goes as a record
                marker[MARK_POS] = pos
                append((fn(**item) if type(item) is dict else fn(*item)) if star else fn(item))
                if _forked:
                    os._exit(0)  # the task forked and returned in the child: see run_batch
            else:
                pos = len(items)
        except BaseException as exc:
            if _forked:
                os._exit(0)
            duration = time.perf_counter() - t0
            failure = _task.failure_record(indices[pos], exc, started, duration, "")
        marker[MARK_POS] = IDLE
        self.ended = perf()
        finished = started + (self.ended - t0)
        output = self.capture.take()
        if values:
            try:
                self.out.send((VALUES, batch_id, values, started, finished, output))
                output = ""
            except Exception:  # a value that will not pickle fails its own task alone
                span = (finished - started) / len(values)
                records = [
                    _task.ok_record(indices[n], value, started + n * span, span, "")
                    for n, value in enumerate(values)
                ]
                self.send_one_by_one(batch_id, records)
        if failure is not None:
            self.send_results(batch_id, [(*failure[:OUTPUT], output, None)])
            return pos + 1
        if output:  # printed by tasks whose values could not go together
            self.out.send((VALUES, batch_id, [], finished, finished, output))
        return pos

    def send_results(self, batch_id: int, records: list[Record]) -> None:
        _, statuses, values, started, _, durations, outputs, usages = zip(*records, strict=True)
        if not any(statuses):  # all OK_RAW: the protocol's COLUMNS
            with contextlib.suppress(Exception):  # a value too big, say: records one by one
                shown = outputs if any(outputs) else None
                runs = [(1, *u) for u in usages] if all(usages) else None
                self.out.send((COLUMNS, batch_id, values, started, durations, shown, runs))
                return
        try:
            self.out.send((RESULTS, batch_id, records))
        except Exception:  # e.g. MemoryError: find the record that cannot go
            self.send_one_by_one(batch_id, records)

    def send_one_by_one(self, batch_id: int, records: list[Record]) -> None:
        for record in records:
            try:
                self.out.send((RESULTS, batch_id, [record]))
            except Exception as exc:
                index = record[0]
                error = TaskError(
                    SerializationError.__name__,
                    f"cannot send the result of task {index}: {_task.describe(exc)}",
                    cause="raised",
                )
                self.out.send((RESULTS, batch_id, [(index, FAILED, error, *record[STARTED:])]))


class Outbox:
    """A batch's results not yet sent, kept in the order the tasks ran: successes with a
    raw value and no output as columns (COLUMNS), anything else as records (RESULTS). A
    record sends the columns before it first; after a record, the batch's next results
    are records too until the next flush, so that a mixed batch is a few messages.

    :meth:`measure` gives the results since the last reading their usage (``_usage``):
    the loop calls it at a claim after a slow task, or once ``MEASURE_SECONDS`` of quick
    ones have run, and nothing leaves unmeasured. The columns' usage goes as runs,
    ``(count, cpu each, peak)``: tasks of like durations measured together are one run
    (one Usage for them all, in the caller), uneven ones a run each, the reading's CPU
    shared by their durations."""

    __slots__ = ("batch_id", "covered", "durations", "indices", "loop", "measured",
                 "records", "sent", "started", "usage", "values", "wall")  # fmt: skip

    def __init__(
        self, loop: WorkerLoop, batch_id: int, indices: list[int], start: int, wall: float
    ) -> None:
        self.loop, self.batch_id, self.indices, self.wall = loop, batch_id, indices, wall
        self.sent = start  # the batch's positions before this one have their results sent
        self.values: list[Any] = []
        self.started: list[float] = []
        self.durations: list[float] = []
        self.usage: list[UsageRun] = []  # the columns' usage, as far as measured
        self.covered = 0  # the columns before this one have their usage
        self.records: list[Record] = []
        self.measured = 0  # the records before this one have their usage

    def add(self, record: Record) -> None:
        self.records.append(record)
        if self.values:  # they ran first: they go first
            self.send_columns()

    def measure(self) -> None:
        """The tasks run since the last reading share what it says they cost."""
        reading = self.loop.read_usage()
        if reading is None:
            return
        spent, peak = reading
        records, mark = self.records, self.measured
        fresh = self.durations[self.covered :]
        self.covered = len(self.durations)
        if mark < len(records):  # records too: each its share, the columns theirs
            taken = [r[DURATION] for r in records[mark:]]
            cpu = _usage.share(spent, [sum(fresh), *taken])
            for k, each in enumerate(cpu[1:], mark):
                records[k] = (*records[k][:USAGE], (each, peak))
            self.measured = len(records)
            spent = cpu[0]
        self.usage += [(n, each, peak) for n, each in _usage.runs(spent, fresh)]

    def flush(self) -> None:
        """Send what waits."""
        if self.values:
            self.send_columns()
        if self.records:
            if self.measured < len(self.records):
                self.measure()
            self.loop.send_results(self.batch_id, self.records)
            self.sent += len(self.records)
            self.records.clear()
            self.measured = 0

    def send_columns(self) -> None:
        values, started, durations = self.values, self.started, self.durations
        if self.covered < len(values):
            self.measure()
        usage = self.usage if self.loop.meter is not None else None
        try:
            self.loop.out.write(columns_frame(self.batch_id, values, started, durations, usage))
        except Exception:  # a value too big, say: records one by one find the one
            at = self.indices[self.sent : self.sent + len(values)]
            each = repeat(None) if usage is None else usage_pairs(usage)
            rows = zip(at, values, started, durations, each, strict=False)
            records = [(i, OK_RAW, v, s, s + d, d, "", u) for i, v, s, d, u in rows]
            self.loop.send_one_by_one(self.batch_id, records)
        self.sent += len(values)
        for column in (values, started, durations, self.usage):
            column.clear()
        self.covered = 0


def usage_pairs(runs: list[UsageRun]) -> list[tuple[float, int]]:
    """Usage runs as a (cpu, peak) pair per task."""
    return [(cpu, peak) for count, cpu, peak in runs for _ in range(count)]


class _Unloadable:
    """Stands in for an input the worker could not unpickle."""

    __slots__ = ("error",)

    def __init__(self, error: TaskError) -> None:
        self.error = error


_forked = False  # set in a process a task forked from a worker


def _restore_streams() -> None:
    global _forked
    _forked = True
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
