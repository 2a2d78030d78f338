"""Plain result records: no connection or backend object lives inside them.

They are C-built records (``msgspec.Struct``, frozen, not tracked by the cyclic garbage
collector): a run keeps one per task, and a ten-field result built in C costs a fraction
of a Python object's ``__init__``, and nothing at collection time. They compare with
``==``, print with ``repr``, pickle (also as pickled by earlier fanout releases, when
they were dataclasses: :mod:`fanout._records` restores those), and are immutable.
``msgspec.structs.asdict``/``replace`` work on them; ``dataclasses.fields``/``asdict``/
``replace`` no longer do.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

from msgspec import Struct

from fanout import _records
from fanout.errors import Cancelled, TaskFailed

NOT_RUN = "(not run)"  # the worker name of a result that no process ran


class WorkerInfo(Struct, frozen=True, gc=False):
    """Identity of the process that ran a task.

    Inside the task, ``os.getpid() == pid``, ``os.getppid() == ppid``,
    ``socket.gethostname() == host`` and ``current_process().name == name``.
    """

    name: str
    pid: int
    ppid: int
    host: str
    backend: str

    @classmethod
    def not_run(cls, backend: str, host: str | None = None) -> WorkerInfo:
        """The identity of a result that no process ran: decided on ``host`` (default:
        this one), by no process (``pid == ppid == 0``)."""
        if host is None:
            import socket

            host = socket.gethostname()
        return cls(NOT_RUN, 0, 0, host, backend)

    @classmethod
    def current(cls, backend: str) -> WorkerInfo:
        """The identity of the calling process."""
        # Imported here: multiprocessing alone would double the time `import fanout` takes.
        import multiprocessing
        import socket

        return cls(
            multiprocessing.current_process().name,
            os.getpid(),
            os.getppid(),
            socket.gethostname(),
            backend,
        )

    __setstate__ = _records.setstate


# Why a task failed (TaskError.cause): the task raised; it ran past its time-out; it grew
# past fanout's memory limit; the kernel's OOM killer ended its process; a signal from
# outside fanout did; its process exited inside it; its worker or host stopped
# answering; its run was cancelled (or halted); it never started (its target or input
# could not be loaded).
CAUSES = ("raised", "timeout", "memory-limit", "oom-killed", "killed", "exited", "lost",
          "cancelled", "not-run")  # fmt: skip


class Usage(Struct, frozen=True, gc=False):
    """What a task cost the process that ran it: ``cpu``, the CPU seconds (user and
    system) the process spent on it; ``max_rss``, the process's peak resident memory in
    bytes while it ran. Measured by the process itself (``getrusage``), a stretch of
    quick tasks at a time: docs/reliability.md says how exact each is."""

    cpu: float
    max_rss: int


class TaskError(Struct, frozen=True, gc=False):
    """Why a task failed: exception class name, message and the remote traceback text;
    ``cause`` (one of :data:`CAUSES`), and the raw facts of a process that ended:
    ``signal`` (the signal that ended it) or ``exit_code`` (its exit status).

    ``pickled`` holds the exception itself, pickled where it was raised (None when it
    could not be): the drop-in executors raise it again as its own type. It is left
    out of ``==``, ``hash`` and ``repr``.
    """

    type: str
    message: str
    traceback: str = ""
    pickled: bytes | None = None
    cause: str | None = None
    signal: int | None = None
    exit_code: int | None = None

    def exception(self) -> BaseException | None:
        """The exception itself, if it travelled and can be unpickled here."""
        if self.pickled is None:
            return None
        try:
            exc: BaseException = pickle.loads(self.pickled)
        except Exception:
            return None
        return exc

    @classmethod
    def from_exception(cls, exc: BaseException, traceback: str = "") -> TaskError:
        return cls(type(exc).__name__, str(exc), traceback, cause="raised")

    def _key(self) -> tuple[Any, ...]:
        return (self.type, self.message, self.traceback, self.cause, self.signal,
                self.exit_code)  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if type(other) is not TaskError:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"TaskError(type={self.type!r}, message={self.message!r}, traceback={self.traceback!r}"
            f", cause={self.cause!r}, signal={self.signal!r}, exit_code={self.exit_code!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the error in ``fanout run --json``."""
        return {
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
            "cause": self.cause,
            "signal": self.signal,
            "exit_code": self.exit_code,
        }

    __setstate__ = _records.setstate


def cancelled(why: str) -> TaskError:
    """The error of a task its run cancelled (before it ran, or while it ran): the type
    ``Cancelled``, ``why`` its message. Every backend makes it here."""
    return TaskError(Cancelled.__name__, why, cause="cancelled")


class TaskResult(Struct, frozen=True, gc=False):
    """The outcome of one task: its value or error, and who ran it, when, and what it printed."""

    index: int
    ok: bool
    value: Any
    error: TaskError | None
    worker: WorkerInfo
    attempts: int
    started_at: float
    finished_at: float
    duration: float
    output: str = ""
    usage: Usage | None = None

    def unwrap(self) -> Any:
        """Return ``value``, or raise :class:`~fanout.TaskFailed` with the remote traceback."""
        if self.ok:
            return self.value
        assert self.error is not None
        raise TaskFailed(self.index, self.error)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``fanout run --json`` (the value is left as is)."""
        w = self.worker
        return {
            "index": self.index,
            "ok": self.ok,
            "value": self.value,
            "error": None if self.error is None else self.error.to_dict(),
            "worker": {
                "name": w.name,
                "pid": w.pid,
                "ppid": w.ppid,
                "host": w.host,
                "backend": w.backend,
            },
            "attempts": self.attempts,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration": self.duration,
            "output": self.output,
            "usage": None
            if self.usage is None
            else {"cpu": self.usage.cpu, "max_rss": self.usage.max_rss},
        }

    __setstate__ = _records.setstate


def decided_now(
    index: int, error: TaskError, worker: WorkerInfo, attempts: int, now: float | None = None
) -> TaskResult:
    """The failure of a task decided now, not by the task (cancelled, lost, not run): no
    time of its own, started and finished ``now`` (default: the clock's)."""
    if now is None:
        import time

        now = time.time()
    return TaskResult(index, False, None, error, worker, attempts, now, now, 0.0)


FIELDS: tuple[str, ...] = TaskResult.__struct_fields__

_records.restore_earlier_pickles(WorkerInfo, TaskError, TaskResult)
