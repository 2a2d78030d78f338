"""Plain result records: no connection or backend object lives inside them."""

from __future__ import annotations

import os
import pickle
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from fanout.errors import Cancelled, TaskFailed

NOT_RUN = "(not run)"  # the worker name of a result that no process ran


@dataclass(frozen=True, slots=True)
class WorkerInfo:
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


@dataclass(frozen=True, slots=True)
class TaskError:
    """Why a task failed: exception class name, message and the remote traceback text.

    ``pickled`` holds the exception itself, pickled where it was raised (None when it
    could not be): the drop-in executors raise it again as its own type.
    """

    type: str
    message: str
    traceback: str = ""
    pickled: bytes | None = field(default=None, repr=False, compare=False, kw_only=True)

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


def cancelled(why: str) -> TaskError:
    """The error of a task its run cancelled (before it ran, or while it ran): the type
    ``Cancelled``, ``why`` its message. Every backend makes it here."""
    return TaskError(Cancelled.__name__, why)


@dataclass(frozen=True, slots=True)
class TaskResult:
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


def decided_now(
    index: int, error: TaskError, worker: WorkerInfo, attempts: int, now: float | None = None
) -> TaskResult:
    """The failure of a task decided now, not by the task (cancelled, lost, not run): no
    time of its own, started and finished ``now`` (default: the clock's)."""
    if now is None:
        import time

        now = time.time()
    return TaskResult(index, False, None, error, worker, attempts, now, now, 0.0)


FIELDS = (
    "index", "ok", "value", "error", "worker", "attempts",
    "started_at", "finished_at", "duration", "output",
)  # fmt: skip
# Each field's slot descriptor: its __set__ fills the slot of a frozen instance directly,
# at C speed when mapped over a batch (see results_of).
_SETTERS = tuple(getattr(TaskResult, name).__set__ for name in FIELDS)
_new = object.__new__


def _setstate(self: TaskResult, state: Any) -> None:
    """Unpickling: a tuple of the fields, or the ``__dict__`` that results pickled by a
    fanout before slots carry (the dataclass's own would read a dict's keys as values)."""
    if isinstance(state, dict):
        state = [state.get(name, "") for name in FIELDS]
    for setter, value in zip(_SETTERS, state, strict=True):
        setter(self, value)


# Set after the class is made: Python 3.10's dataclass replaces one defined in the class.
TaskResult.__setstate__ = _setstate  # type: ignore[attr-defined]


def make_result(
    index: int,
    ok: bool,
    value: Any,
    error: TaskError | None,
    worker: WorkerInfo,
    attempts: int,
    started_at: float,
    finished_at: float,
    duration: float,
    output: str,
) -> TaskResult:
    """Build a TaskResult at a fraction of the cost of the frozen dataclass ``__init__``;
    the object is the same."""
    result = _new(TaskResult)
    s = _SETTERS
    s[0](result, index)
    s[1](result, ok)
    s[2](result, value)
    s[3](result, error)
    s[4](result, worker)
    s[5](result, attempts)
    s[6](result, started_at)
    s[7](result, finished_at)
    s[8](result, duration)
    s[9](result, output)
    return result


def results_of(count: int, columns: Iterable[Iterable[Any]]) -> list[TaskResult]:
    """``count`` TaskResults from one iterable per field (in ``FIELDS`` order), filled a
    field at a time with C-level loops: the caller makes one per task."""
    results = list(map(_new, repeat(TaskResult, count)))
    for setter, column in zip(_SETTERS, columns, strict=True):
        deque(map(setter, results, column), maxlen=0)
    return results
