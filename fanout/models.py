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


class TaskError(Struct, frozen=True, gc=False):
    """Why a task failed: exception class name, message and the remote traceback text.

    ``pickled`` holds the exception itself, pickled where it was raised (None when it
    could not be): the drop-in executors raise it again as its own type. It is left
    out of ``==``, ``hash`` and ``repr``.
    """

    type: str
    message: str
    traceback: str = ""
    pickled: bytes | None = None

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
        return cls(type(exc).__name__, str(exc), traceback)

    def __eq__(self, other: object) -> bool:
        if type(other) is not TaskError:
            return NotImplemented
        return (self.type, self.message, self.traceback) == (
            other.type,
            other.message,
            other.traceback,
        )

    def __hash__(self) -> int:
        return hash((self.type, self.message, self.traceback))

    def __repr__(self) -> str:
        return (
            f"TaskError(type={self.type!r}, message={self.message!r}, traceback={self.traceback!r})"
        )

    __setstate__ = _records.setstate


def cancelled(why: str) -> TaskError:
    """The error of a task its run cancelled (before it ran, or while it ran): the type
    ``Cancelled``, ``why`` its message. Every backend makes it here."""
    return TaskError(Cancelled.__name__, why)


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
            "error": None
            if self.error is None
            else {
                "type": self.error.type,
                "message": self.error.message,
                "traceback": self.error.traceback,
            },
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
