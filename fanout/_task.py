"""Running one task and carrying it across a process boundary.

Shared by every backend, so that a task behaves the same wherever it runs: the same
output capture, the same error records, the same pickling rules.

Values of a few builtin types travel as they are inside one pickle per batch; anything
else is pickled on its own, so that one object that cannot be (un)pickled fails only its
own task. The record layouts are in :mod:`fanout._wire`.
"""

from __future__ import annotations

import io
import pickle
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from fanout._wire import FAILED, OK_PICKLED, OK_RAW, Record
from fanout.errors import SerializationError, TaskTimeout
from fanout.models import TaskError

# Types whose instances always pickle and unpickle: they ride inside the batch pickle.
RAW_TYPES = frozenset({int, float, str, bytes, bool, type(None), complex})


def is_raw(obj: Any) -> bool:
    """True if ``obj`` can ride inside a batch pickle without a pickle of its own."""
    kind = type(obj)
    if kind in RAW_TYPES:
        return True
    if kind is tuple or kind is list:
        return len(obj) <= 16 and all(type(x) in RAW_TYPES for x in obj)
    return False


def dumps(obj: Any) -> bytes:
    """Pickle ``obj``; fall back to cloudpickle for lambdas, closures and the like."""
    try:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        first = exc
    try:
        import cloudpickle

        data: bytes = cloudpickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
        return data
    except Exception:
        raise first from None


def pickled_exception(exc: BaseException) -> bytes | None:
    """The exception's pickle without its traceback (None if it will not pickle)."""
    try:
        return pickle.dumps(exc.with_traceback(None), pickle.HIGHEST_PROTOCOL)
    except Exception:
        return None


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {message_of(exc)}"


def message_of(exc: BaseException) -> str:
    """``str(exc)``, which user code may have broken, or a word for a bare MemoryError."""
    try:
        text = str(exc)
    except Exception as broken:
        return f"<str() of the exception failed: {type(broken).__name__}>"
    if not text and isinstance(exc, MemoryError):
        return "out of memory"
    return text


def input_error(index: int, exc: BaseException, action: str = "pickle") -> TaskError:
    """The error of a task whose input cannot cross to the worker."""
    return TaskError(
        SerializationError.__name__,
        f"cannot {action} the input of task {index}: {describe(exc)}",
        cause="not-run",
    )


def value_error(index: int, value: Any, exc: BaseException) -> TaskError:
    """The error of a task whose return value cannot be pickled."""
    return TaskError(
        SerializationError.__name__,
        f"cannot pickle the return value of task {index} ({type(value).__name__}): {describe(exc)}",
        cause="raised",
    )


class Capture(io.TextIOBase):
    """A text stream that keeps what a task prints, stdout and stderr interleaved."""

    def __init__(self) -> None:
        # What was written since the last take(): the same list for the capture's life,
        # so a loop may hold it and test it (empty: nothing printed).
        self.parts: list[str] = []

    def write(self, s: str) -> int:
        self.parts.append(s)
        return len(s)

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def isatty(self) -> bool:
        return False

    def take(self) -> str:
        """Return and forget what was written since the last call."""
        if not self.parts:
            return ""
        text = "".join(self.parts)
        self.parts.clear()
        return text


def run_one(
    fn: Callable[..., Any],
    index: int,
    arg: Any,
    star: bool,
    capture: Capture,
    in_caller: bool = False,
    wall: float | None = None,
) -> Record:
    """Call ``fn`` on one input and return its result record (never raises, except
    KeyboardInterrupt when ``in_caller``: there Ctrl-C stops the run, not one task).

    ``capture`` must already be installed as ``sys.stdout``/``sys.stderr``. ``wall``:
    ``time.time() - time.perf_counter()`` taken once for a batch, so that a task costs
    two clock reads, not three (None: read the wall clock for this task).
    """
    t0 = time.perf_counter()
    started_at = time.time() if wall is None else wall + t0
    try:
        value = (fn(**arg) if type(arg) is dict else fn(*arg)) if star else fn(arg)
    except BaseException as exc:
        if in_caller and isinstance(exc, KeyboardInterrupt):
            raise
        duration = time.perf_counter() - t0
        return failure_record(index, exc, started_at, duration, capture.take())
    duration = time.perf_counter() - t0
    return ok_record(index, value, started_at, duration, capture.take())


def failure_record(
    index: int, exc: BaseException, started_at: float, duration: float, output: str
) -> Record:
    """The record of a task that raised ``exc``."""
    # Skip the caller's frame: the traceback starts in the user's code.
    frames = exc.__traceback__.tb_next if exc.__traceback__ else None
    tb = "".join(traceback.format_exception(type(exc), exc, frames))
    cause = "timeout" if isinstance(exc, TaskTimeout) else "raised"  # the inline backend's alarm
    error = TaskError(type(exc).__name__, message_of(exc), tb, pickled_exception(exc), cause)
    return (index, FAILED, error, started_at, started_at + duration, duration, output, None)


def ok_record(index: int, value: Any, started_at: float, duration: float, output: str) -> Record:
    """The record of a task that returned ``value`` (a failure if it cannot be pickled)."""
    finished = started_at + duration
    if type(value) in RAW_TYPES:
        return (index, OK_RAW, value, started_at, finished, duration, output, None)
    try:
        payload = dumps(value)
    except Exception as exc:
        error = value_error(index, value, exc)
        return (index, FAILED, error, started_at, finished, duration, output, None)
    return (index, OK_PICKLED, payload, started_at, finished, duration, output, None)


def load_value(index: int, status: int, payload: Any) -> tuple[bool, Any]:
    """Turn a record's payload back into ``(True, value)`` or ``(False, TaskError)``."""
    if status == OK_RAW:
        return True, payload
    if status == OK_PICKLED:
        try:
            return True, pickle.loads(payload)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            return False, TaskError(
                SerializationError.__name__,
                f"cannot unpickle the return value of task {index}: {describe(exc)}",
                cause="raised",
            )
    return False, payload


def install_capture() -> Capture:
    """Send this process's ``sys.stdout`` and ``sys.stderr`` into one capture for good."""
    capture = Capture()
    sys.stdout = sys.stderr = capture
    return capture
