"""The caller's handle on one worker process: its pipes, its pidfd, its shared marker,
and their lifecycle (made at start, closed exactly once when the worker is forgotten)."""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing.process
import os
import signal
import socket
from array import array
from collections import deque
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess

from fanout._proc import kill_tree, on_main_thread
from fanout._wire import Task
from fanout.backends.local import barrier
from fanout.backends.local.protocol import (
    IDLE,
    MARK_CLAIM,
    MARK_CLAIM_AT,
    MARK_POS,
    MARK_STOP,
    MARKER_SIZE,
    NO_STOP,
    PIPE_SIZE,
    RUNNING,
    key,
)
from fanout.backends.local.run import Batch, LocalRun
from fanout.backends.local.warden import warden
from fanout.backends.local.worker import main as worker_main
from fanout.models import WorkerInfo

# File descriptors that only the caller may hold, across every pool in this process: a
# worker of another pool holding our task pipe open would keep our workers from ever
# seeing end-of-file, so every worker closes all of them at start.
_caller_fds: set[int] = set()
# A forked child (a worker whose task runs fanout itself) is no caller of these pools:
# it closes them or never uses them, and their numbers come back for its own files,
# which its workers must keep.
os.register_at_fork(after_in_child=_caller_fds.clear)


def _no_inherited_children() -> None:
    """In a child forked from a caller (``os.fork``): the caller's worker processes are
    not its children. multiprocessing would still list them as such, and terminate them
    as the child exits (``util._exit_function``): its own children start with an empty
    list, a raw fork's inherit the parent's."""
    children = getattr(multiprocessing.process, "_children", None)
    if isinstance(children, set):
        children.clear()


os.register_at_fork(after_in_child=_no_inherited_children)


class WorkerHandle:
    """One worker process as the caller sees it."""

    __slots__ = (
        "barrier",
        "fn_id",
        "in_buf",
        "inflight",
        "info",
        "kill_reason",
        "killed_for",
        "marker",
        "marker_map",
        "out_buf",
        "pid",
        "pidfd",
        "process",
        "progress_ns",
        "resident",
        "result_r",
        "stopping",
        "task_started",
        "task_w",
        "tasks_given",
        "worn",
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
        self.writing = False  # the task pipe is in the selector, waiting to be writable
        self.inflight: deque[Batch] = deque()
        self.fn_id = 0  # the run whose target this worker has loaded
        self.info: WorkerInfo | None = None  # from its hello
        # Why it ends, if the pool ends it: "timeout", "memory-limit" (it was killed for
        # task ``killed_for``), "abandoned", "retired", "recycled", "garbled".
        self.kill_reason: str | None = None
        self.killed_for = -1
        self.resident = 0  # the most memory it was seen to hold in its task (bytes)
        self.worn = False  # past a per-worker limit: it retires once its batches are done
        self.task_started = 0.0  # when the task now running (head batch) began
        self.tasks_given = 0  # for max_tasks_per_worker
        self.barrier = False  # it gets the caller's barriers: tasks are taken back at once
        self.stopping = False  # a stop point is set: no new batch until it has given back
        self.progress_ns = 0  # time.perf_counter_ns() of its last result, or batch when idle

    def describe(self) -> str:
        name = self.info.name if self.info else self.process.name
        return f"{name} (pid {self.pid})"

    def fallback_info(self, backend: str) -> WorkerInfo:
        """Its identity, also when it died before its hello arrived."""
        return self.info or WorkerInfo(
            self.process.name, self.pid, os.getpid(), socket.gethostname(), backend
        )

    # -- taking back tasks it has not started (protocol.py, barrier.py) -----------------

    def claim_age(self, now_ns: int) -> float:
        """Seconds since it last showed progress — claimed tasks, sent results, or was
        handed a batch while idle — if it is running a task now, else 0: how long the
        task it runs has run, at most."""
        if self.marker[MARK_POS] == IDLE:
            return 0.0  # between tasks: reading a batch, sending results
        return (now_ns - max(self.marker[MARK_CLAIM_AT], self.progress_ns)) / 1e9

    def unstarted(self) -> int:
        """How many tasks it holds past its claim (none of them started)."""
        claim = self.marker[MARK_CLAIM]
        return sum(
            max(0, key(b.id, b.end) - max(key(b.id, b.done), claim + 1)) for b in self.inflight
        )

    def take_back(self, keep: int = 0) -> dict[LocalRun, list[Task]]:
        """Take back the tasks it has not claimed, but for the first ``keep`` of them;
        those taken, by run, in order. A
        worker that gets barriers can start none of them once this returns; one that
        does not gives them back itself when it next claims (``GAVE_BACK``), and
        nothing is taken here."""
        assert not self.stopping, "one stop point at a time"
        marker = self.marker
        claim = marker[MARK_CLAIM]
        while True:
            stop = self._stop_point(claim, keep)
            if stop is None:
                return {}  # nothing left past its claim
            marker[MARK_STOP] = stop
            self.stopping = True
            if not (self.barrier and barrier.everywhere()):
                return {}
            # The claim it had stored before our stop point reached it: if it claimed
            # more meanwhile, move the stop point past that claim and look again.
            again = marker[MARK_CLAIM]
            if again == claim:
                return self._cut(stop)
            claim = again

    def _stop_point(self, claim: int, keep: int) -> int | None:
        """The key of the first task to take: past ``claim``, after ``keep`` more (None:
        it holds no such task)."""
        for batch in self.inflight:
            first = max(key(batch.id, batch.done), claim + 1)
            left = key(batch.id, batch.end) - first
            if left <= 0:
                continue
            if keep < left:
                return first + keep
            keep -= left
        return None

    def _cut(self, stop: int) -> dict[LocalRun, list[Task]]:
        """Its batches end before ``stop``: what lay past it, by run."""
        taken: dict[LocalRun, list[Task]] = {}
        for batch in self.inflight:
            end = min(batch.end, max(0, stop - key(batch.id, 0)))
            if end < batch.end:
                taken.setdefault(batch.run, []).extend(batch.tasks.tasks(end, batch.end))
                self.tasks_given -= batch.end - end
                batch.end = end
        return taken

    def gave_back(self, pos: int) -> tuple[LocalRun, list[Task]]:
        """It stopped at ``pos`` of its head batch (GAVE_BACK): the batch leaves it, and
        the tasks from there to where we thought it would stop come back."""
        batch = self.inflight.popleft()
        tasks = batch.tasks.tasks(pos, batch.end)
        self.tasks_given -= len(tasks)
        self.settled()
        return batch.run, tasks

    def settled(self) -> None:
        """A batch left it: once it holds none, the stop point goes (before any new batch
        is written to its pipe, so it reads the batch after the change)."""
        if self.stopping and not self.inflight:
            self.marker[MARK_STOP] = NO_STOP
            self.stopping = False

    def death_fd(self) -> int:
        """What becomes readable when it dies: its pidfd, else the process sentinel."""
        return self.pidfd if self.pidfd is not None else self.process.sentinel

    def kill_for(self, reason: str) -> None:
        """Its running task over-ran a limit of its run (``reason``: "timeout",
        "memory-limit"): SIGKILL it, noting which task it was killed for (the autopsy
        charges that one)."""
        head = self.inflight[0]
        self.kill_reason = reason
        self.killed_for = head.tasks.indices[head.done]
        self.kill()

    def kill(self) -> None:
        """SIGKILL the worker with everything its tasks started (its tree and group)."""
        kill_tree(self.pid)

    def end_leftovers(self) -> None:
        """After it has exited: SIGKILL what is left in its process group (what its
        tasks started, orphaned when it died), and stop the warden watching it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        warden().forget(self.pid)

    def close_task_pipe(self) -> None:
        """End-of-file for the worker: an idle one exits."""
        if self.task_w >= 0:
            _caller_fds.discard(self.task_w)
            with contextlib.suppress(OSError):
                os.close(self.task_w)
            self.task_w = -1

    def release(self) -> None:
        """Close everything of the caller's side (the process has been reaped)."""
        self.close_task_pipe()
        for fd in (self.result_r, self.pidfd):
            if fd is not None and fd >= 0:
                _caller_fds.discard(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)
        with contextlib.suppress(ValueError):
            self.process.close()
        self.marker.release()
        self.marker_map.close()


def start_worker(
    ctx: BaseContext, name: str, daemon: bool, pool_fds: tuple[int, ...]
) -> WorkerHandle:
    """Fork a worker with its own pipe pair and marker; it runs ``worker.main``."""
    task_r, task_w = os.pipe()
    result_r, result_w = os.pipe()
    for fd in (task_w, result_w):
        with contextlib.suppress(OSError, AttributeError):
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    _caller_fds.update((task_w, result_r))
    _caller_fds.update(fd for fd in pool_fds if fd >= 0)
    marker = mmap.mmap(-1, MARKER_SIZE)  # shared with the worker across fork
    memoryview(marker).cast("q")[:] = array("q", [IDLE, IDLE, RUNNING, IDLE, 0, NO_STOP, 0, 0])
    process = ctx.Process(  # type: ignore[attr-defined]
        name=name,
        target=worker_main,
        args=(task_r, result_w, marker, sorted(_caller_fds), os.getpid(), on_main_thread()),
        daemon=daemon,
    )
    _start_reaping_none(process)
    os.close(task_r)
    os.close(result_w)
    # Set the group from both sides: whichever runs first wins the race with a kill.
    with contextlib.suppress(OSError):
        os.setpgid(process.pid or 0, process.pid or 0)
    warden().watch(process.pid or 0)
    os.set_blocking(task_w, False)
    os.set_blocking(result_r, False)
    handle = WorkerHandle(process, task_w, result_r, marker)
    with contextlib.suppress(AttributeError, OSError):
        handle.pidfd = os.pidfd_open(handle.pid)
        _caller_fds.add(handle.pidfd)
    return handle


def _start_reaping_none(process: BaseProcess) -> None:
    """Start ``process`` without reaping the caller's other children: ``start`` first
    reaps every dead child multiprocessing knows of (``process._cleanup``), and a worker
    reaped before its pool buries it leaves no CPU time to read (``/proc/PID/stat`` goes
    with it), so the task it died running would have no usage. The others are reaped as
    before, by their next ``join``, ``is_alive`` or ``active_children``."""
    children = getattr(multiprocessing.process, "_children", None)
    if not isinstance(children, set):
        process.start()
        return
    known = set(children)
    children.clear()
    try:
        process.start()
    finally:
        children.update(known)


def forget_selector(*fds: int) -> None:
    _caller_fds.difference_update(fds)
