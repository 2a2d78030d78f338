"""Local backend: a pool of named worker processes on this machine.

Data flow::

        caller thread: the map() generator drives one event loop
        |  pickles tasks in batches (a bad argument fails its own task, here)
        |
        +-- task pipe 1 --> worker-1 --+   each worker: read a batch, run its tasks
        +-- task pipe 2 --> worker-2 --+   with stdout/stderr captured, write the
        |       ...                    |   result records to its own result pipe
        +-- task pipe N --> worker-N --+
        ^                              |
        +-- result pipes, pidfds <-----+   selector: results, deaths, writable pipes

Why a pipe pair per worker and no shared queue: a worker killed while holding a
shared queue's lock (blocked in ``get()``, or half-way through a ``put()``) takes the
lock with it and starves every other worker; with private pipes a death only closes
that worker's own pipes. The caller writes to the task pipes without blocking (a
buffer per worker, flushed when the pipe is writable), so a worker that is blocked
writing results can never deadlock with a caller blocked writing tasks.

Batching: a run starts with one task per batch; once durations are measured, batches
grow so that each takes about ``TARGET_BATCH_SECONDS`` (as joblib's auto batching),
up to ``MAX_BATCH`` tasks. A worker is fed a second batch while it runs the first, so
it never waits for the caller, unless tasks are slow enough for that not to matter.

Deaths: every worker has a pidfd (or sentinel) in the selector. When one dies, the
task it was running fails with ``WorkerLost`` (or ``TaskTimeout`` when the pool killed
it for over-running; both are retried while ``retries`` allow), the tasks it had not
started are dispatched again without counting an attempt, and a fresh worker takes its
place on demand. Workers run in their own process group, so a kill takes the task's
own children too, and they die with the caller (``PR_SET_PDEATHSIG`` on Linux, and
end-of-file on the task pipe elsewhere).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import multiprocessing
import os
import pickle
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import weakref
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from itertools import repeat
from multiprocessing.process import BaseProcess
from typing import Any

from fanout import _task
from fanout._task import RAW_TYPES
from fanout.backends._runstate import RunState
from fanout.backends.base import Backend, MapSpec
from fanout.errors import SerializationError, TargetError, TaskTimeout, WorkerLost
from fanout.models import TaskError, TaskResult, WorkerInfo, make_result
from fanout.targets import file_modules, load_file_modules

TARGET_BATCH_SECONDS = 0.01
MAX_BATCH = 1024
# Batches of tasks slower than this go one at a time: no prefetch, so work spreads evenly.
SLOW_TASK_SECONDS = 0.05
# A worker sends results mid-batch once they stand for this much work, or this often.
FLUSH_WORK_SECONDS = 0.001
FLUSH_SECONDS = 0.1
# How far ahead of the oldest unfinished task an ordered run may dispatch.
MIN_ORDER_WINDOW = 10_000
STOP_GRACE_SECONDS = 2.0
PIPE_SIZE = 1 << 20

# A batch's pickled inputs are kept to about this size, and an ordered run's results
# waiting for an earlier one to about this much.
MAX_BATCH_BYTES = 4 << 20
MAX_WINDOW_BYTES = 128 << 20
# A task whose worker dies outside any task this often is charged a WorkerLost.
MAX_FREE_REQUEUES = 3

_HEADER = struct.Struct("<Q")
# The shared marker: [batch id or _LOADING_TARGET, position in the batch, phase].
_LOADING_TARGET = -2
_PHASES = {0: "running", 1: "unpickling the input of"}
# Caller -> worker messages.
_FN, _BATCH = 0, 1
# Worker -> caller messages.
_HELLO, _RESULTS = 0, 1


class LocalBackend(Backend):
    """Worker processes on this machine, named ``worker-1``, ``worker-2``, ...

    ``daemon=True`` (default): workers never outlive the caller. ``daemon=False``:
    ordinary processes, whose tasks may start processes of their own.
    """

    name = "local"

    def __init__(
        self,
        workers: int | None = None,
        daemon: bool = True,
        *,
        process_name: str | None = None,
    ) -> None:
        """``process_name`` names every worker process alike (``fanout worker`` names
        its task process after the RQ worker); by default they are ``worker-N``."""
        if workers is None:
            workers = os.cpu_count() or 1
        if workers < 1:
            raise ValueError(f"the local backend needs at least one worker, got {workers}")
        self.workers = workers
        self.daemon = daemon
        self._pool = _Pool(workers, daemon, process_name, self.name)
        self._active: _Run | None = None
        # Workers are stopped when the backend is garbage-collected or at interpreter exit
        # (non-daemon workers would otherwise keep the interpreter waiting for them).
        self._finalizer = weakref.finalize(self, self._pool.shutdown, True)

    def map(self, spec: MapSpec) -> Iterator[TaskResult]:
        return self.stream(spec)

    def stream(
        self, spec: MapSpec, idle: Callable[[], None] | None = None, max_wait: float | None = None
    ) -> Iterator[TaskResult]:
        """``map`` with a hook: ``idle()`` runs before each wait for workers, at least
        every ``max_wait`` seconds while tasks run (``fanout worker`` flushes and
        heartbeats there)."""
        if self._active is not None and not self._active.finished:
            raise RuntimeError(
                "another map() on this Fanout is still running: consume or close it first"
            )
        import cloudpickle

        try:
            fn_bytes = cloudpickle.dumps(spec.fn, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise TargetError(f"cannot send the target to worker processes: {exc}") from exc
        run = _Run(spec, fn_bytes, self.workers, self.name)
        self._active = run
        pool = self._pool
        return run.results(lambda: pool.step(run, idle, max_wait), lambda: pool.abandon(run))

    def kill_running(self) -> None:
        """SIGKILL every worker that holds tasks (safe from another thread)."""
        for worker in list(self._pool.workers):
            if worker.inflight:
                self._pool.kill(worker)

    def close(self, cancel: bool = False) -> None:
        self._finalizer.detach()
        self._pool.shutdown(cancel)


class _Batch:
    __slots__ = ("attempts", "done", "id", "indices", "items", "pickled", "run", "sent_at")

    def __init__(
        self,
        run: _Run,
        indices: list[int] | range,
        items: list[Any],
        pickled: list[int],
        attempts: list[int] | None,
    ) -> None:
        self.id = next(_batch_ids)
        self.run = run
        self.indices = indices
        self.items = items
        self.pickled = pickled  # positions whose item travels as its own pickle
        self.attempts = attempts  # attempts already made per task; None: all first tries
        self.done = 0  # results received, in order
        self.sent_at = 0.0

    def prior_attempts(self, pos: int) -> int:
        return 0 if self.attempts is None else self.attempts[pos]

    def task(self, pos: int) -> tuple[int, Any, bool, int]:
        return (self.indices[pos], self.items[pos], pos in self.pickled, self.prior_attempts(pos))


_batch_ids = itertools.count()
# File descriptors that only the caller may hold, across every pool in this process.
_caller_fds: set[int] = set()
_DROPPED = object()  # marks an input that failed to pickle in the caller
_fn_ids = itertools.count(1)


class _Run(RunState):
    """One map() call on the pool: its input, retries, measurements and results."""

    def __init__(self, spec: MapSpec, fn_bytes: bytes, workers: int, backend: str) -> None:
        super().__init__(spec, backend)
        self.fn_id = next(_fn_ids)
        self.fn_bytes = fn_bytes
        self.workers = workers
        self.retry: deque[tuple[int, Any, bool, int]] = deque()
        self.bytes_in: dict[bool, float] = {}  # pickled bytes per task, in and out
        self.suspects: dict[int, int] = {}  # index -> deaths outside any task
        self.broken: tuple[str, str, str] | None = None  # the target kills workers

    def window(self) -> int:
        window = max(MIN_ORDER_WINDOW, 4 * self.workers * self.batch_size())
        if self.bytes_per_task:
            window = min(window, max(4 * self.workers, int(MAX_WINDOW_BYTES / self.bytes_per_task)))
        return window

    def batch_size(self) -> int:
        return self.sized(TARGET_BATCH_SECONDS, MAX_BATCH, MAX_BATCH_BYTES)

    def measure_bytes(self, nbytes: int, tasks: int, inputs: bool) -> None:
        per = nbytes / max(tasks, 1)
        old = self.bytes_in.get(inputs)
        self.bytes_in[inputs] = per if old is None else 0.5 * (old + per)
        self.bytes_per_task = max(self.bytes_in.values())

    def suspect(self, index: int) -> bool:
        """Count a death outside any task against ``index``; True once it is too many."""
        self.suspects[index] = self.suspects.get(index, 0) + 1
        return self.suspects[index] >= MAX_FREE_REQUEUES

    def break_target(self, message: str) -> None:
        """Loading the target kills workers: every task left fails instead of looping."""
        self.broken = (WorkerLost.__name__, message, "")

    def depth(self) -> int:
        """How many batches a worker may hold: 2 hides the round trip for quick tasks."""
        if self.per_task is None or self.per_task * self.batch_size() >= SLOW_TASK_SECONDS:
            return 1
        return 2

    def measure_records(self, records: list[_task.Record]) -> None:
        self.measure(records[-1][4] - records[0][3], len(records))

    def take_batch(self) -> _Batch | None:
        """The next batch to send: retries first, then fresh items; None if nothing now."""
        if self.broken is not None:
            self.fail_the_rest(self.broken)
            return None
        size = self.batch_size()
        indices: list[int] = []
        items: list[Any] = []
        pickled: list[int] = []
        attempts: list[int] | None = None
        while self.retry and len(indices) < size:
            index, item, was_pickled, tried = self.retry.popleft()
            if was_pickled:
                pickled.append(len(indices))
            if attempts is None:
                attempts = [0] * len(indices)
            attempts.append(tried)
            indices.append(index)
            items.append(item)
        start, fresh = self.take_fresh(size - len(indices))
        if fresh:
            base = len(indices)
            fresh_pickled: list[int] = []
            failed = False
            for pos, item in enumerate(fresh):
                if type(item) in RAW_TYPES or _task.is_raw(item):
                    continue
                try:
                    fresh[pos] = _task.dumps(item)
                    fresh_pickled.append(pos)
                except Exception as exc:
                    self.fail_in_caller(start + pos, _task.input_error(start + pos, exc))
                    fresh[pos] = _DROPPED
                    failed = True
            new_indices: range | list[int] = range(start, start + len(fresh))
            if failed:  # rare: leave out the items that could not be pickled
                keep = [pos for pos, item in enumerate(fresh) if item is not _DROPPED]
                renumber = {pos: i for i, pos in enumerate(keep)}
                fresh_pickled = [renumber[pos] for pos in fresh_pickled]
                new_indices = [start + pos for pos in keep]
                fresh = [fresh[pos] for pos in keep]
            pickled.extend(base + pos for pos in fresh_pickled)
            if attempts is not None:
                attempts.extend([0] * len(fresh))
            if indices:
                indices.extend(new_indices)
                items.extend(fresh)
            else:
                indices, items = new_indices, fresh  # type: ignore[assignment]
        if not indices:
            return None
        return _Batch(self, indices, items, pickled, attempts)

    def fail_the_rest(self, error: tuple[str, str, str], limit: int = MAX_BATCH) -> None:
        while self.retry:
            self.fail_in_caller(self.retry.popleft()[0], error)
        super().fail_the_rest(error, limit)

    def failed_attempt(
        self, task: tuple[int, Any, bool, int], result: TaskResult, retryable: bool = True
    ) -> None:
        """A task's attempt failed: retry it while ``retries`` allow, else report it."""
        if retryable and task[3] + 1 <= self.spec.retries:
            self.retry.append((task[0], task[1], task[2], task[3] + 1))
        else:
            self.finish(result)


class _Worker:
    __slots__ = (
        "fn_id",
        "in_buf",
        "inflight",
        "info",
        "kill_reason",
        "marker",
        "marker_map",
        "out_buf",
        "pid",
        "pidfd",
        "process",
        "result_r",
        "task_started",
        "task_w",
        "timeout_index",
        "writing",
    )

    def __init__(
        self, process: BaseProcess, task_w: int, result_r: int, marker_map: mmap.mmap
    ) -> None:
        self.process = process
        self.marker_map = marker_map
        self.marker = memoryview(marker_map).cast("q")
        self.pid: int = process.pid or 0
        self.task_w = task_w
        self.result_r = result_r
        self.pidfd: int | None = None
        self.in_buf = bytearray()
        self.out_buf = bytearray()
        self.writing = False
        self.inflight: deque[_Batch] = deque()
        self.fn_id = 0
        self.info: WorkerInfo | None = None
        self.kill_reason: str | None = None
        self.timeout_index = -1  # the task the pool killed this worker for over-running
        self.task_started = 0.0  # when the task now running (head batch) began


class _Pool:
    """Worker processes and the event loop that feeds them; owned by one LocalBackend."""

    def __init__(self, size: int, daemon: bool, process_name: str | None, backend: str) -> None:
        self.process_name = process_name
        self.backend = backend
        self.size = size
        self.daemon = daemon
        self.ctx = multiprocessing.get_context("fork" if sys.platform != "win32" else None)
        self.workers: list[_Worker] = []
        self.selector = selectors.DefaultSelector()
        _caller_fds.add(self.selector_fd())
        self.counter = itertools.count(1)
        self.closed = False

    # -- the event loop -----------------------------------------------------------------

    def step(
        self,
        run: _Run,
        idle: Callable[[], None] | None = None,
        max_wait: float | None = None,
    ) -> None:
        """Dispatch what can be dispatched, then wait for one round of events."""
        if self.closed:
            raise RuntimeError("the Fanout was closed while this map() was still running")
        self.dispatch(run)
        if run.ready or run.done():
            return
        timeout = self.next_deadline(run)
        if max_wait is not None:
            timeout = max_wait if timeout is None else min(timeout, max_wait)
        if idle is not None:
            idle()
        events = self.selector.select(None if timeout is None else max(timeout, 0.0))
        for key, mask in events:
            worker, kind = key.data
            if worker not in self.workers:
                continue  # already buried in this round
            if kind == "result":
                self.read(worker)
            elif kind == "death":
                self.bury(worker)
            elif mask & selectors.EVENT_WRITE:
                self.flush(worker)
        if run.spec.timeout is not None:
            self.enforce_timeout(run)

    def dispatch(self, run: _Run) -> None:
        while not self.closed:
            worker = self.free_worker(run)
            # Start workers on demand, only once there is a batch for them.
            grow = (worker is None or bool(worker.inflight)) and len(self.workers) < self.size
            if worker is None and not grow:
                return
            batch = run.take_batch()
            if batch is None:
                return
            self.send_batch(self.start_worker() if grow else worker, batch)  # type: ignore[arg-type]

    def free_worker(self, run: _Run) -> _Worker | None:
        depth = run.depth()
        best = None
        for worker in self.workers:
            if worker.kill_reason is not None or len(worker.inflight) >= depth:
                continue
            if best is None or len(worker.inflight) < len(best.inflight):
                best = worker
                if not worker.inflight:
                    break
        return best

    def send_batch(self, worker: _Worker, batch: _Batch) -> None:
        run = batch.run
        if worker.fn_id != run.fn_id:
            flush_each = run.spec.timeout is not None
            message = (_FN, run.fn_id, run.fn_bytes, run.spec.star, flush_each, file_modules())
            self.send(worker, message)
            worker.fn_id = run.fn_id
        batch.sent_at = time.time()
        if not worker.inflight:
            worker.task_started = batch.sent_at
        worker.inflight.append(batch)
        size = self.send(worker, (_BATCH, batch.id, batch.indices, batch.items, batch.pickled))
        run.measure_bytes(size, len(batch.indices), inputs=True)

    def send(self, worker: _Worker, message: tuple[Any, ...]) -> int:
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        worker.out_buf += _HEADER.pack(len(data))
        worker.out_buf += data
        self.flush(worker)
        return len(data)

    def flush(self, worker: _Worker) -> None:
        """Write as much of the worker's buffer as its pipe takes, never blocking."""
        buf = worker.out_buf
        try:
            while buf:
                n = os.write(worker.task_w, buf)
                del buf[:n]
        except BlockingIOError:
            pass
        except (BrokenPipeError, OSError):
            buf.clear()  # the worker is dead; its pidfd reports it
        want_write = bool(buf)
        if want_write != worker.writing:
            worker.writing = want_write
            if want_write:
                self.selector.register(worker.task_w, selectors.EVENT_WRITE, (worker, "task"))
            else:
                self.selector.unregister(worker.task_w)

    def read(self, worker: _Worker) -> None:
        """Take every complete message waiting on the worker's result pipe."""
        buf = worker.in_buf
        while True:
            try:
                chunk = os.read(worker.result_r, PIPE_SIZE)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            if len(chunk) < PIPE_SIZE:
                break
        frames: list[bytes] = []
        start, size = 0, len(buf)
        while size - start >= _HEADER.size:
            (n,) = _HEADER.unpack_from(buf, start)
            end = start + _HEADER.size + n
            if end > size:
                break
            frames.append(bytes(buf[start + _HEADER.size : end]))
            start = end
        # Take the frames out of the buffer before handling them: handling may raise
        # (Ctrl-C) and must never see a frame twice.
        del buf[:start]
        for frame in frames:
            self.handle(worker, pickle.loads(frame), len(frame))

    def handle(self, worker: _Worker, message: tuple[Any, ...], size: int) -> None:
        if message[0] == _HELLO:
            _, name, pid, ppid, host = message
            worker.info = WorkerInfo(name, pid, ppid, host, self.backend)
            return
        _, batch_id, records = message
        batch = worker.inflight[0]
        assert batch.id == batch_id, "results arrive in the order batches were sent"
        run = batch.run
        info = worker.info
        assert info is not None
        if not run.finished:
            run.measure_records(records)
            run.measure_bytes(size, len(records), inputs=False)
            attempts, base = batch.attempts, batch.done
            if attempts is None and not any(record[1] for record in records):
                run.finish_many(_first_try_values(records, info))  # the common case
                records_left: list[_task.Record] = []
            else:
                records_left = records
            done: list[TaskResult] = []
            for offset, record in enumerate(records_left):
                index, status, payload, started, finished, duration, output = record
                tries = 1 if attempts is None else attempts[base + offset] + 1
                if status == _task.OK_RAW:
                    done.append(
                        make_result(
                            index, True, payload, None, info, tries,
                            started, finished, duration, output,
                        )
                    )  # fmt: skip
                    continue
                ok, value = _task.load_value(index, status, payload)
                result = make_result(
                    index, ok, value if ok else None, None if ok else TaskError(*value), info,
                    tries, started, finished, duration, output,
                )  # fmt: skip
                if ok:
                    done.append(result)
                else:
                    retryable = value[0] != SerializationError.__name__
                    run.failed_attempt(batch.task(base + offset), result, retryable)
            run.finish_many(done)
        batch.done += len(records)
        worker.task_started = records[-1][4]
        if batch.done == len(batch.indices):
            worker.inflight.popleft()

    # -- timeouts and deaths ------------------------------------------------------------

    def next_deadline(self, run: _Run) -> float | None:
        if run.spec.timeout is None:
            return None
        busy = [
            w.task_started
            for w in self.workers
            if w.inflight and w.inflight[0].run is run and w.kill_reason is None
        ]
        if not busy:
            return None
        return min(busy) + run.spec.timeout - time.time()

    def enforce_timeout(self, run: _Run) -> None:
        assert run.spec.timeout is not None
        now = time.time()
        for worker in self.workers:
            if worker.kill_reason is not None or not worker.inflight:
                continue
            if worker.inflight[0].run is run and now - worker.task_started >= run.spec.timeout:
                self.read(worker)  # a result that just arrived is not a time-out
                if worker.inflight and now - worker.task_started >= run.spec.timeout:
                    head = worker.inflight[0]
                    worker.kill_reason = "timeout"
                    worker.timeout_index = head.indices[head.done]
                    self.kill(worker)

    def bury(self, worker: _Worker) -> None:
        """A worker died: settle its tasks, free its resources.

        The task it was running (known from the shared marker) fails with WorkerLost or
        TaskTimeout, or is retried. Every other task it held without a result is run
        again elsewhere, without counting an attempt: those not started, and those that
        finished in the last instant before the crash but whose results were not sent.
        """
        self.read(worker)
        worker.process.join(1.0)
        code = worker.process.exitcode
        batch_id, pos, phase = worker.marker[0], worker.marker[1], worker.marker[2]
        self.workers.remove(worker)
        self.forget(worker)
        live = [b for b in worker.inflight if not b.run.finished]
        if batch_id == _LOADING_TARGET and live:
            live[0].run.break_target(
                f"{self.describe(worker)} died while loading the target: {_describe_exit(code)}"
            )
        culprit: tuple[_Batch, int] | None = None
        for batch in live:
            if batch.id == batch_id and batch.done <= pos < len(batch.indices):
                culprit = (batch, pos)
        if culprit is None and live and batch_id != _LOADING_TARGET:
            # It died outside any task (while reading or sending): run its tasks again,
            # but charge the first one if that keeps happening, so it cannot loop forever.
            first = (live[0], live[0].done)
            if live[0].run.suspect(first[0].indices[first[1]]):
                culprit = first
        timed_out = worker.kill_reason == "timeout"
        if culprit and timed_out and culprit[0].indices[culprit[1]] != worker.timeout_index:
            culprit = None  # the timed-out task finished just before the kill
        rest: list[tuple[_Run, tuple[int, Any, bool, int]]] = []
        for batch in live:
            for p in range(batch.done, len(batch.indices)):
                if culprit == (batch, p):
                    self.fail_running(worker, batch, p, code, _PHASES.get(phase, "running"))
                else:
                    rest.append((batch.run, batch.task(p)))
        # Give each task back to its own run, first in line and in its order.
        for run, task in reversed(rest):
            run.retry.appendleft(task)

    def describe(self, worker: _Worker) -> str:
        info = worker.info
        name = info.name if info else worker.process.name
        return f"{name} (pid {worker.pid})"

    def fail_running(
        self, worker: _Worker, batch: _Batch, pos: int, code: int | None, doing: str
    ) -> None:
        run = batch.run
        task = batch.task(pos)
        index = task[0]
        info = worker.info or WorkerInfo(
            worker.process.name, worker.pid, os.getpid(), socket.gethostname(), self.backend
        )
        timeout = run.spec.timeout
        if worker.kill_reason == "timeout" and timeout is not None:
            error = TaskError(
                TaskTimeout.__name__,
                f"task {index} ran longer than its timeout of {timeout:g} s; "
                f"{info.name} (pid {info.pid}) was killed and replaced",
            )
        else:
            error = TaskError(
                WorkerLost.__name__,
                f"{info.name} (pid {info.pid}) died while {doing} task {index}: "
                f"{_describe_exit(code)}",
            )
        now = time.time()
        started = worker.task_started
        result = TaskResult(
            index, False, None, error, info, task[3] + 1, started, now, now - started
        )
        run.failed_attempt(task, result)

    def kill(self, worker: _Worker) -> None:
        """SIGKILL the worker's process group: the worker and any children of its task."""
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(worker.pid, signal.SIGKILL)
                return

    def abandon(self, run: _Run) -> None:
        """A run ended: drop its queued tasks, end workers still busy with its tasks.

        Killing is the only way to stop a running task, and the next map() must not
        wait behind tasks whose results nobody will read; replacements start on demand.
        """
        run.retry.clear()
        for worker in self.workers:
            if worker.kill_reason is None and any(b.run is run for b in worker.inflight):
                worker.kill_reason = "abandoned"
                self.kill(worker)

    # -- worker lifecycle ---------------------------------------------------------------

    def start_worker(self) -> _Worker:
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        for fd in (task_w, result_w):
            with contextlib.suppress(OSError, AttributeError):
                import fcntl

                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        _caller_fds.update((task_w, result_r))
        # Every pool's caller-side fds, not just ours: a worker of another pool holding
        # our task pipe open would keep our workers from ever seeing end-of-file.
        inherited = sorted(_caller_fds)
        name = self.process_name or f"worker-{next(self.counter)}"
        marker = mmap.mmap(-1, 24)  # shared with the worker across fork
        memoryview(marker).cast("q")[:] = array("q", [-1, -1, 0])
        process = self.ctx.Process(
            name=name,
            target=_worker_main,
            args=(task_r, result_w, marker, inherited, os.getpid(), _on_main_thread()),
            daemon=self.daemon,
        )
        process.start()
        os.close(task_r)
        os.close(result_w)
        # Set the group from both sides: whichever runs first wins the race with a kill.
        with contextlib.suppress(OSError):
            os.setpgid(process.pid or 0, process.pid or 0)
        os.set_blocking(task_w, False)
        os.set_blocking(result_r, False)
        worker = _Worker(process, task_w, result_r, marker)
        try:
            worker.pidfd = os.pidfd_open(worker.pid)
            death_fd = worker.pidfd
            _caller_fds.add(death_fd)
        except (AttributeError, OSError):
            death_fd = process.sentinel
        self.selector.register(result_r, selectors.EVENT_READ, (worker, "result"))
        self.selector.register(death_fd, selectors.EVENT_READ, (worker, "death"))
        self.workers.append(worker)
        return worker

    def selector_fd(self) -> int:
        fileno: Callable[[], int] | None = getattr(self.selector, "fileno", None)
        return fileno() if fileno else -1

    def forget(self, worker: _Worker) -> None:
        for fd in (worker.result_r, worker.pidfd, worker.process.sentinel):
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(fd)  # type: ignore[arg-type]
        if worker.writing:
            self.selector.unregister(worker.task_w)
            worker.writing = False
        for fd in (worker.task_w, worker.result_r, worker.pidfd):
            if fd is not None and fd >= 0:
                _caller_fds.discard(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)
        with contextlib.suppress(ValueError):
            worker.process.close()
        worker.marker.release()
        worker.marker_map.close()

    def shutdown(self, cancel: bool = False) -> None:
        """Stop every worker: idle ones by end-of-file, busy or stuck ones by SIGKILL."""
        if self.closed:
            return
        self.closed = True
        workers, self.workers = self.workers, []
        for worker in workers:
            if cancel or worker.inflight:
                self.kill(worker)
            _caller_fds.discard(worker.task_w)
            with contextlib.suppress(OSError):
                os.close(worker.task_w)  # end-of-file: an idle worker exits
            worker.task_w = -1
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                self.kill(worker)
                worker.process.join(1.0)
        for worker in workers:
            worker.writing = False
            self.forget(worker)
        _caller_fds.discard(self.selector_fd())
        self.selector.close()


_new = object.__new__
_set = object.__setattr__


def _first_try_values(records: list[_task.Record], info: WorkerInfo) -> list[TaskResult]:
    """The results of records that are all first-try successes with a raw value.

    The same objects as ``make_result`` builds, made with C-level loops: building one
    result per task is most of what the caller spends per task.
    """
    results = list(map(_new, repeat(TaskResult, len(records))))
    states = [
        {
            "index": index,
            "ok": True,
            "value": value,
            "error": None,
            "worker": info,
            "attempts": 1,
            "started_at": started,
            "finished_at": finished,
            "duration": duration,
            "output": output,
        }
        for index, _, value, started, finished, duration, output in records
    ]
    deque(map(_set, results, repeat("__dict__"), states), maxlen=0)
    return results


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "it stopped responding"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


# -- the worker process -----------------------------------------------------------------


def _worker_main(
    task_r: int,
    result_w: int,
    marker: mmap.mmap,
    inherited: list[int],
    parent: int,
    main_thread: bool,
) -> None:
    """Body of a worker process: read batches, run them, write result records."""
    # PR_SET_PDEATHSIG fires when the *thread* that forked us exits, so it is only safe
    # for workers started from the main thread; others notice end-of-file instead.
    if main_thread:
        _die_with_parent(parent)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    # Close the caller's ends of every pipe: only then does end-of-file on the task
    # pipe mean the caller is gone.
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    # Whatever escapes the capture (C code, processes a task starts) goes to stderr, so
    # the caller's stdout carries only what the caller writes (--json stays clean).
    with contextlib.suppress(OSError):
        os.dup2(2, 1)
    _task.mark_worker_process()
    loop = _WorkerLoop(_Writer(result_w), memoryview(marker).cast("q"))
    # A process that a task starts writes to the real streams, not to a copy of our
    # capture that would vanish with it.
    os.register_at_fork(after_in_child=_restore_streams)
    reader = open(task_r, "rb", buffering=PIPE_SIZE)  # noqa: SIM115 - lives as long as we do
    me = multiprocessing.current_process()
    loop.out.send((_HELLO, me.name, os.getpid(), os.getppid(), socket.gethostname()))
    while True:
        header = reader.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return  # the caller closed the pipe (or died): nothing more to do
        message = pickle.loads(reader.read(_HEADER.unpack(header)[0]))
        if message[0] == _FN:
            loop.load(*message[2:])
        else:
            loop.run_batch(*message[1:])


class _WorkerLoop:
    """A worker's state: the current target, the output capture, the progress marker."""

    def __init__(self, out: _Writer, marker: memoryview) -> None:
        self.out = out
        # marker[0]: batch id, marker[1]: position of the task running now (-1: none).
        # It lives in memory shared with the caller, so after a crash the caller knows
        # which task was running even if its last results were never sent.
        self.marker = marker
        self.capture = _task.install_capture()
        self.fn: Callable[..., Any] | None = None
        self.fn_error: tuple[str, str, str] = ("TargetError", "no target was sent", "")
        self.star = self.flush_each = False

    def load(self, fn_bytes: bytes, star: bool, flush_each: bool, modules: dict[str, str]) -> None:
        self.star, self.flush_each = star, flush_each
        self.marker[0] = _LOADING_TARGET
        try:
            load_file_modules(modules)
            self.fn = pickle.loads(fn_bytes)
        except BaseException as exc:
            self.fn = None
            self.fn_error = (
                TargetError.__name__,
                f"the worker cannot load the target: {_task.describe(exc)}",
                "",
            )
        finally:
            self.marker[0] = -1

    def run_batch(
        self, batch_id: int, indices: list[int], items: list[Any], pickled: list[int]
    ) -> None:
        fn, marker, capture, star = self.fn, self.marker, self.capture, self.star
        records: list[_task.Record] = []
        last_flush = time.monotonic()
        unsent_work = 0.0
        marker[0] = batch_id
        marker[2] = 1  # unpickling: a crash here is blamed on this input
        for pos in pickled:
            marker[1] = pos
            try:
                items[pos] = pickle.loads(items[pos])
            except BaseException as exc:
                items[pos] = _Unloadable(_task.input_error(indices[pos], exc, "unpickle"))
        marker[1] = -1
        marker[2] = 0
        for pos, (index, item) in enumerate(zip(indices, items, strict=True)):
            if fn is None or type(item) is _Unloadable:
                now = time.time()
                error = item.error if type(item) is _Unloadable else self.fn_error
                record: _task.Record = (index, _task.FAILED, error, now, now, 0.0, "")
            else:
                marker[1] = pos
                record = _task.run_one(fn, index, item, star, capture)
                marker[1] = -1
            records.append(record)
            # Send finished results as soon as they represent real work, so a crash
            # later in the batch costs little to redo; tiny tasks go in bulk.
            unsent_work += record[5]
            if (
                self.flush_each
                or unsent_work >= FLUSH_WORK_SECONDS
                or time.monotonic() - last_flush >= FLUSH_SECONDS
            ):
                self.send_results(batch_id, records)
                records = []
                unsent_work = 0.0
                last_flush = time.monotonic()
        if records:
            self.send_results(batch_id, records)

    def send_results(self, batch_id: int, records: list[_task.Record]) -> None:
        try:
            self.out.send((_RESULTS, batch_id, records))
            return
        except Exception:
            pass  # e.g. MemoryError: find the record that cannot go, send the others
        for record in records:
            try:
                self.out.send((_RESULTS, batch_id, [record]))
            except Exception as exc:
                index = record[0]
                error = (
                    SerializationError.__name__,
                    f"cannot send the result of task {index}: {_task.describe(exc)}",
                    "",
                )
                self.out.send((_RESULTS, batch_id, [(index, _task.FAILED, error, *record[3:])]))


class _Unloadable:
    """Stands in for an input the worker could not unpickle."""

    __slots__ = ("error",)

    def __init__(self, error: tuple[str, str, str]) -> None:
        self.error = error


class _Writer:
    """Framed, blocking writes to the result pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, message: tuple[Any, ...]) -> None:
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        view = memoryview(_HEADER.pack(len(data)) + data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BrokenPipeError:
                os._exit(0)  # the caller is gone
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            view = view[n:]


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _restore_streams() -> None:
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this worker when the caller dies, so no worker is orphaned."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the caller died before the request took effect
        os._exit(0)
