"""The caller's event loop: worker processes fed from any number of runs.

``step()`` dispatches what can be dispatched, then waits for one round of events:
results to read, deaths to settle (what a death means is decided in :mod:`.deaths`,
and acted on here), pipes that became writable.
Every batch knows its run, so one pool serves several runs at once; each run's
results generator drives the loop while it waits, and each result reaches its own run.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import multiprocessing
import os
import selectors
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from fanout._memory import OomKills, cpu_seconds, resident
from fanout._wire import FINISHED, Task
from fanout.backends.local import deaths
from fanout.backends.local.handles import WorkerHandle, forget_selector, start_worker
from fanout.backends.local.protocol import (
    BATCH,
    COLUMNS,
    FN,
    GAVE_BACK,
    HELLO,
    PIPE_SIZE,
    VALUES,
    frame,
    load,
    split_frames,
)
from fanout.backends.local.run import Batch, LocalRun
from fanout.models import WorkerInfo
from fanout.targets import file_modules

STOP_GRACE_SECONDS = 2.0
# How often the resident size of each busy worker is read: often under a run's
# max_memory (a task that grows fast is caught within a few of these), seldom otherwise
# (what a death's message says its task was seen to hold).
MEMORY_SAMPLE_SECONDS = 0.02
SEEN_SAMPLE_SECONDS = 0.5
# A worker holding at least this much quick work unstarted at the end of a run's input
# shares half of it with an idle one.
SHARE_SECONDS = 0.004


class Pool:
    """Worker processes and the loop that feeds them; owned by one LocalBackend."""

    def __init__(
        self,
        size: int,
        daemon: bool,
        process_name: str | None,
        backend: str,
        max_tasks: int | None = None,
        max_memory: int | None = None,
    ) -> None:
        self.process_name = process_name
        self.max_tasks = max_tasks  # a worker retires after that many tasks
        self.max_memory = max_memory  # ... or once it holds more than that after a task
        self.next_sample = 0.0  # time.monotonic() of the next reading of workers' memory
        self.backend = backend
        self.size = size
        self.daemon = daemon
        self.ctx = multiprocessing.get_context("fork" if sys.platform != "win32" else None)
        self.workers: list[WorkerHandle] = []
        self.runs: list[LocalRun] = []  # runs with tasks to dispatch or results to come
        self.selector = selectors.DefaultSelector()
        # A pipe that wakes the loop from another thread (a drop-in's new input).
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, (None, "wake"))
        self.counter = itertools.count(1)
        self.closed = False
        self.owner = os.getpid()  # a process forked from the caller owns none of it
        self.look_again: float | None = None  # seconds until work may be due to take back
        self.oom_kills = OomKills()
        # Result pipes are read into this, one buffer for the pool's life: a fresh buffer
        # per read (os.read) costs a page fault for each page the read fills. Mapped,
        # not allocated: only the pages reads have filled are ever touched.
        self.scratch = memoryview(mmap.mmap(-1, PIPE_SIZE))

    def selector_fd(self) -> int:
        fileno: Callable[[], int] | None = getattr(self.selector, "fileno", None)
        return fileno() if fileno else -1

    # -- the loop -----------------------------------------------------------------------

    def step(
        self,
        waiting: LocalRun,
        idle: Callable[[], None] | None = None,
        max_wait: float | None = None,
    ) -> None:
        """Dispatch, then, unless ``waiting`` has results now, wait for one round of
        events (at most ``max_wait`` seconds; ``idle()`` runs before the wait)."""
        if self.closed:
            raise RuntimeError("the Fanout was closed while this map() was still running")
        self.dispatch()
        if waiting.ready or waiting.done():
            return
        if idle is not None:
            idle()
        self.wait(max_wait)

    def pump(self, max_wait: float | None) -> None:
        """One round for every run (a driver thread's loop): dispatch, then wait for
        events at most ``max_wait`` seconds, or until :meth:`wake`."""
        if self.closed:
            return
        self.dispatch()
        if any(run.ready or run.done() for run in self.runs):
            max_wait = 0.0  # results to hand on first
        self.wait(max_wait)

    def wake(self) -> None:
        """From any thread: end the wait of :meth:`pump` now (there is input to take)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.wake_w, b"!")

    def wait(self, max_wait: float | None) -> None:
        """Wait for one round of events and handle them."""
        timeout = deaths.next_deadline(self.workers)
        sample = self.next_sample - time.monotonic() if self.busy() else None
        for limit in (max_wait, self.look_again, sample):
            if limit is not None:
                timeout = limit if timeout is None else min(timeout, limit)
        events = self.selector.select(None if timeout is None else max(timeout, 0.0))
        for key, mask in events:
            worker, kind = key.data
            if kind == "wake":
                with contextlib.suppress(BlockingIOError, OSError):
                    os.read(self.wake_r, 4096)
                continue
            if worker not in self.workers:
                continue  # already buried in this round
            if kind == "result":
                self.read(worker)
            elif kind == "death":
                self.bury(worker)
            elif mask & selectors.EVENT_WRITE:
                self.flush(worker)
        self.enforce_timeouts()
        self.enforce_memory()

    def enforce_timeouts(self) -> None:
        """Kill every worker whose running task has over-run its run's ``timeout``."""
        now = time.time()
        for worker in deaths.overrunning(self.workers, now):
            self.read(worker)  # a result that just arrived is not a time-out
            if deaths.overrunning([worker], now):
                worker.kill_for("timeout")

    def busy(self) -> bool:
        return any(worker.inflight for worker in self.workers)

    def enforce_memory(self) -> None:
        """Read each busy worker's resident size when a reading is due; kill every one
        whose task has grown past its run's ``max_memory``."""
        now = time.monotonic()
        if now < self.next_sample:
            return
        limited = False
        for worker in self.workers:
            if not worker.inflight or worker.kill_reason is not None:
                continue
            head = worker.inflight[0]
            limit = head.run.spec.max_memory
            limited |= limit is not None
            size = resident(worker.pid)
            if size is None:
                continue
            worker.resident = max(worker.resident, size)
            if limit is not None and size > limit and head.done < head.end:
                worker.kill_for("memory-limit")
        self.next_sample = now + (MEMORY_SAMPLE_SECONDS if limited else SEEN_SAMPLE_SECONDS)

    def bury(self, worker: WorkerHandle) -> None:
        """A worker died: read what it sent, free it, and settle every task it held
        as :func:`.deaths.autopsy` decides."""
        self.read(worker)
        cpu = cpu_seconds(worker.pid)  # its own, read before it is reaped
        worker.process.join(1.0)
        code = worker.process.exitcode
        oom = code == -signal.SIGKILL and self.oom_kills.took(worker.pid)
        settlement = deaths.autopsy(worker, code, self.backend, oom, cpu)
        self.forget(worker)  # its marker is released: the autopsy has read it
        if settlement.broken is not None:
            run, error = settlement.broken
            run.break_target(error)
        if settlement.failed is not None:
            run, task, result = settlement.failed
            run.failed_attempt(task, result)
        for run, tasks in settlement.rerun.items():  # their own run, first in line
            run.requeue(tasks)

    def dispatch(self) -> None:
        """Hand out batches, one run after another, while workers have room; then, if a
        worker is left idle, take back work that others hold unstarted, and hand it out."""
        for run in self.runs:
            if run.halted is not None:
                self.recall(run)
        while not self.closed:
            sent = False
            for run in list(self.runs):
                sent |= self.dispatch_one(run)
            if not sent and not self.rebalance():
                return

    def rebalance(self) -> bool:
        """No run has a batch for a worker with room: take back the tasks that busy
        workers hold but have not started — from a worker whose task runs longer than its
        run assumed, all of it, always (it would wait behind that task while another
        worker frees up); from one holding a lot of quick work while a worker is idle at
        the end of the run's input, half (so that the workers finish together). They go
        back to the front of their run's line, in order, for whoever is free next. True
        if any came back; where none is due yet, ``look_again`` says when one may be."""
        self.look_again = None
        idle = self.idle_room()
        now = time.perf_counter_ns()
        taken = False
        for worker in self.workers:
            if worker.stopping or worker.kill_reason is not None or not worker.inflight:
                continue
            unstarted = worker.unstarted()
            if not unstarted:
                continue
            run = worker.inflight[0].run
            age, overdue = worker.claim_age(now), run.overdue_after()
            keep = 0
            if age >= overdue:
                run.measure(age, 1)  # it runs longer than measured: batches shrink
            elif idle and run.exhausted and unstarted * (run.per_task or 0) >= SHARE_SECONDS:
                keep = unstarted // 2  # the end of the input: share the rest
            else:
                wait = overdue - age
                self.look_again = wait if self.look_again is None else min(self.look_again, wait)
                continue
            for owner, tasks in worker.take_back(keep).items():
                if tasks and not owner.finished:
                    owner.requeue(tasks)
                    taken = True
        return taken

    def recall(self, run: LocalRun) -> None:
        """``run`` halted (max_failures): take back what workers hold of it unstarted, so
        that those tasks are cancelled rather than run, and settle what is left of its
        input, a part per round, whether or not a worker is free."""
        for worker in self.workers:
            if worker.stopping or worker.kill_reason is not None or not worker.unstarted():
                continue
            if any(batch.run is run for batch in worker.inflight):
                for owner, tasks in worker.take_back().items():
                    if tasks and not owner.finished:
                        owner.requeue(tasks)
        run.settle_the_rest()

    def give_back(self, run: LocalRun) -> list[Task]:
        """Take back what workers hold of ``run`` unstarted, and hand back every task of
        it not running (``RunState.hand_back``)."""
        for worker in self.workers:
            if worker.stopping or worker.kill_reason is not None:
                continue
            if any(batch.run is run for batch in worker.inflight):
                for owner, tasks in worker.take_back().items():
                    if tasks and not owner.finished:
                        owner.requeue(tasks)
        return run.hand_back()

    def idle_room(self) -> bool:
        """Could a worker take a batch now: one idle, or room for one more?"""
        if len(self.workers) < self.size:
            return True
        limit = self.max_tasks
        return any(
            not w.inflight
            and w.kill_reason is None
            and not w.stopping
            and (limit is None or w.tasks_given < limit)
            for w in self.workers
        )

    def task_limit(self, run: LocalRun) -> int | None:
        """The most tasks a worker runs before it is replaced, for ``run``'s tasks."""
        limits = [n for n in (self.max_tasks, run.spec.max_tasks_per_worker) if n is not None]
        return min(limits) if limits else None

    def dispatch_one(self, run: LocalRun) -> bool:
        # Under a per-worker memory limit a worker holds no batch ahead: its size after
        # each is read (progress) before it is sent the next.
        depth = 1 if self.memory_limit(run) is not None else run.depth()
        worker = self.free_worker(depth, self.task_limit(run))
        # Start workers on demand, only once there is a batch for them.
        grow = (worker is None or bool(worker.inflight)) and len(self.workers) < self.size
        if worker is None and not grow:
            return False
        allowance = self.task_limit(run)
        if allowance is not None and not grow:
            assert worker is not None
            allowance -= worker.tasks_given
        batch = run.next_batch(allowance)
        if batch is None:
            return False
        if grow:
            worker = self.start_worker()
        assert worker is not None
        self.send_batch(worker, batch)
        return True

    def free_worker(self, depth: int, limit: int | None) -> WorkerHandle | None:
        best = None
        now = 0
        for worker in self.workers:
            if worker.kill_reason is not None or worker.stopping or len(worker.inflight) >= depth:
                continue
            if worker.worn:
                continue
            if limit is not None and worker.tasks_given >= limit:
                continue
            if worker.inflight:
                # Not behind a task that runs longer than its run assumed.
                now = now or time.perf_counter_ns()
                if worker.claim_age(now) >= worker.inflight[0].run.overdue_after():
                    continue
            if best is None or len(worker.inflight) < len(best.inflight):
                best = worker
                if not worker.inflight:
                    break
        return best

    # -- writing ------------------------------------------------------------------------

    def send_batch(self, worker: WorkerHandle, batch: Batch) -> None:
        run = batch.run
        if worker.fn_id != run.fn_id:
            spec = run.spec
            message = (
                FN,
                run.fn_id,
                run.fn_bytes,
                spec.star,
                run.flush_seconds,
                file_modules(),
                spec.bare,
                None if spec.trace is None else dict(spec.trace),
            )
            self.send(worker, message)
            worker.fn_id = run.fn_id
        batch.sent_at = time.time()
        if not worker.inflight:
            worker.task_started = batch.sent_at
            worker.progress_ns = time.perf_counter_ns()
        worker.inflight.append(batch)
        worker.tasks_given += len(batch)
        tasks = batch.tasks
        size = self.send(worker, (BATCH, batch.id, tasks.indices, tasks.items, tasks.pickled))
        run.measure_bytes(size, len(tasks), inputs=True)

    def send(self, worker: WorkerHandle, message: tuple[Any, ...]) -> int:
        data = frame(message)
        worker.out_buf += data
        self.flush(worker)
        return len(data)

    def flush(self, worker: WorkerHandle) -> None:
        """Write as much of the worker's buffer as its pipe takes, never blocking."""
        buf = worker.out_buf
        try:
            while buf:
                n = os.write(worker.task_w, buf)
                del buf[:n]
        except BlockingIOError:
            pass
        except OSError:
            buf.clear()  # the worker is dead; its pidfd reports it
        want_write = bool(buf)
        if want_write != worker.writing:
            worker.writing = want_write
            if want_write:
                self.selector.register(worker.task_w, selectors.EVENT_WRITE, (worker, "task"))
            else:
                self.selector.unregister(worker.task_w)

    # -- reading ------------------------------------------------------------------------

    def read(self, worker: WorkerHandle) -> None:
        """Take every complete message waiting on the worker's result pipe."""
        buf, scratch = worker.in_buf, self.scratch
        while True:
            try:
                size = os.readv(worker.result_r, [scratch])
            except BlockingIOError:
                break
            except OSError:
                size = 0
            if not size:
                break
            buf += scratch[:size]
            if size < PIPE_SIZE:
                break
        for data in split_frames(buf):
            if worker.kill_reason == "garbled":
                break
            try:
                message = load(data)
            except Exception:
                self.distrust(worker)
                break
            self.handle(worker, message, len(data))

    def distrust(self, worker: WorkerHandle) -> None:
        """Something other than the worker itself wrote to its pipe (a process its task
        forked): what comes from it cannot be trusted. It dies; its tasks run elsewhere."""
        worker.kill_reason = worker.kill_reason or "garbled"
        worker.kill()

    def handle(self, worker: WorkerHandle, message: tuple[Any, ...], size: int) -> None:
        if message[0] == HELLO:
            _, name, pid, ppid, host, worker.barrier = message
            worker.info = WorkerInfo(name, pid, ppid, host, self.backend)
            return
        batch_id = message[1]
        if not worker.inflight or worker.inflight[0].id != batch_id:
            self.distrust(worker)  # results come in the order batches were sent, or not at all
            return
        batch = worker.inflight[0]
        run = batch.run
        assert worker.info is not None
        if message[0] == GAVE_BACK:
            if message[2] != batch.done:
                self.distrust(worker)  # it says it stopped where it has not
                return
            owner, back = worker.gave_back(message[2])
            if back and not owner.finished:
                owner.requeue(back)
            self.after_batch(worker)
            return
        if message[0] == VALUES:
            _, _, values, started, finished, output = message
            if not run.finished:
                base = batch.done
                run.settle_values(batch.tasks.indices[base : base + len(values)], values, output)
                run.measure(finished - started, len(values))
                run.measure_bytes(size, len(values), inputs=False)
            self.progress(worker, batch, len(values), finished)
            return
        if message[0] == COLUMNS:
            _, _, values, started, durations, outputs, usage = message
            count, finished = len(values), started[-1] + durations[-1]
            if not run.finished:
                run.measure(finished - started[0], count)
                run.measure_bytes(size, count, inputs=False)
                tasks, base = batch.tasks, batch.done
                attempts = None if tasks.attempts is None else tasks.attempts[base : base + count]
                run.settle_columns(tasks.indices[base : base + count], values, started,
                                   durations, outputs, worker.info, attempts, usage)  # fmt: skip
            self.progress(worker, batch, count, finished)
            return
        records = message[2]
        if not run.finished:
            run.measure_records(records)
            run.measure_bytes(size, len(records), inputs=False)
            tasks, base = batch.tasks, batch.done
            attempts = None
            if tasks.attempts is not None:
                attempts = tasks.attempts[base : base + len(records)]
            run.settle(records, worker.info, attempts, lambda i: tasks.task(base + i))
        self.progress(worker, batch, len(records), records[-1][FINISHED])

    def progress(self, worker: WorkerHandle, batch: Batch, done: int, finished: float) -> None:
        """``done`` more results of ``batch`` are in, the last one finished at ``finished``."""
        batch.done += done
        worker.task_started = finished
        worker.progress_ns = time.perf_counter_ns()
        worker.resident = 0  # a new task: what it holds is seen afresh
        limit = self.memory_limit(batch.run)
        if limit is not None and not worker.worn and (resident(worker.pid) or 0) > limit:
            self.wear_out(worker)  # its next task runs on a fresh worker
        if batch.done == len(batch):
            worker.inflight.popleft()
            worker.settled()
            self.after_batch(worker, batch.run)

    def memory_limit(self, run: LocalRun) -> int | None:
        """The most a worker may hold after one of ``run``'s tasks and run another."""
        limits = [n for n in (self.max_memory, run.spec.max_memory_per_worker) if n is not None]
        return min(limits) if limits else None

    def wear_out(self, worker: WorkerHandle) -> None:
        """Past a per-worker memory limit: it runs nothing more; what it holds unstarted
        goes back to its runs, and it retires once the task running now is done."""
        worker.worn = True
        for owner, tasks in worker.take_back().items():
            if tasks and not owner.finished:
                owner.requeue(tasks)

    def after_batch(self, worker: WorkerHandle, run: LocalRun | None = None) -> None:
        limit = self.max_tasks if run is None else self.task_limit(run)
        if worker.worn or (limit is not None and worker.tasks_given >= limit):
            self.retire(worker)

    def retire(self, worker: WorkerHandle) -> None:
        """``max_tasks`` reached: once its last result is in, the worker exits as an idle
        one does (end-of-file); a new one starts when there is work."""
        if not worker.inflight and not worker.writing and worker.kill_reason is None:
            worker.kill_reason = "recycled" if worker.worn else "retired"
            worker.close_task_pipe()

    # -- worker lifecycle ---------------------------------------------------------------

    def start_worker(self) -> WorkerHandle:
        name = self.process_name or f"worker-{next(self.counter)}"
        worker = start_worker(
            self.ctx, name, self.daemon, (self.selector_fd(), self.wake_r, self.wake_w)
        )
        self.selector.register(worker.result_r, selectors.EVENT_READ, (worker, "result"))
        self.selector.register(worker.death_fd(), selectors.EVENT_READ, (worker, "death"))
        self.workers.append(worker)
        self.oom_kills.watch(worker.pid)
        return worker

    def forget(self, worker: WorkerHandle) -> None:
        """Out of the selector and the pool, its descriptors closed."""
        if worker in self.workers:
            self.workers.remove(worker)
        for fd in (worker.result_r, worker.death_fd()):
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(fd)
        if worker.writing:
            self.selector.unregister(worker.task_w)
            worker.writing = False
        worker.end_leftovers()
        worker.release()

    def reap(self) -> None:
        """Between runs: settle the workers that died idle (killed from outside), so
        that none stays a zombie until the next run starts (replacements start on demand)."""
        if self.closed or self.runs:
            return  # a run's loop settles its deaths itself
        for worker in list(self.workers):
            if not worker.process.is_alive():
                self.bury(worker)

    def abandon(self, run: LocalRun) -> None:
        """A run ended: drop it, end workers still busy with its tasks.

        Killing is the only way to stop a running task, and the next run must not
        wait behind tasks whose results nobody will read; replacements start on demand.
        """
        if run in self.runs:
            self.runs.remove(run)
        for worker in self.workers:
            if worker.kill_reason is None and any(b.run is run for b in worker.inflight):
                worker.kill_reason = "abandoned"
                worker.kill()

    def kill_running(self) -> None:
        """SIGKILL every worker that holds tasks (safe from another thread)."""
        for worker in list(self.workers):
            if worker.inflight:
                worker.kill()

    def shutdown(self, cancel: bool = False) -> None:
        """Stop every worker: idle ones by end-of-file, busy or stuck ones by SIGKILL."""
        if self.closed:
            return
        self.closed = True
        if os.getpid() != self.owner:
            return  # a copy in a process forked from the caller: the workers are not ours
        workers = list(self.workers)
        for worker in workers:
            if cancel or worker.inflight:
                worker.kill()
            worker.close_task_pipe()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                worker.kill()
                worker.process.join(1.0)
        for worker in workers:
            worker.writing = False
            self.forget(worker)
        forget_selector(self.selector_fd(), self.wake_r, self.wake_w)
        self.selector.close()
        for fd in (self.wake_r, self.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
