"""Running one task and carrying it across a process boundary.

Shared by every backend, so that a task behaves the same wherever it runs: the same
output capture, the same error records, the same pickling rules.

Wire records are plain tuples, cheap to pickle in bulk. Values of a few builtin types
travel as they are inside one pickle per batch; anything else is pickled on its own, so
that one object that cannot be (un)pickled fails only its own task.
"""

from __future__ import annotations

import io
import pickle
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from fanout.errors import SerializationError

# Types whose instances always pickle and unpickle: they ride inside the batch pickle.
RAW_TYPES = frozenset({int, float, str, bytes, bool, type(None), complex})

_worker_flag = False


def mark_worker_process() -> None:
    """Record that this process is a worker, where Ctrl-C is not the caller's to handle."""
    global _worker_flag
    _worker_flag = True


def is_raw(obj: Any) -> bool:
    """True if ``obj`` can ride inside a batch pickle without a pickle of its own."""
    kind = type(obj)
    if kind in RAW_TYPES:
        return True
    if kind is tuple or kind is list:
        return len(obj) <= 16 and all(type(x) in RAW_TYPES for x in obj)
    return False


# Status of a result record.
OK_RAW, OK_PICKLED, FAILED = 0, 1, 2

# A result record: (index, status, payload, started_at, finished_at, duration, output).
# payload: the value (OK_RAW), its pickle (OK_PICKLED), or (type, message, traceback).
Record = tuple[int, int, Any, float, float, float, str]


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


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {message_of(exc)}"


def message_of(exc: BaseException) -> str:
    """``str(exc)``, which user code may have broken."""
    try:
        return str(exc)
    except Exception as broken:
        return f"<str() of the exception failed: {type(broken).__name__}>"


def input_error(index: int, exc: BaseException, action: str = "pickle") -> tuple[str, str, str]:
    """The error triple of a task whose input cannot cross to the worker."""
    return (
        SerializationError.__name__,
        f"cannot {action} the input of task {index}: {describe(exc)}",
        "",
    )


class Capture(io.TextIOBase):
    """A text stream that keeps what a task prints, stdout and stderr interleaved."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def write(self, s: str) -> int:
        self._parts.append(s)
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
        if not self._parts:
            return ""
        text = "".join(self._parts)
        self._parts.clear()
        return text


def run_one(fn: Callable[..., Any], index: int, arg: Any, star: bool, capture: Capture) -> Record:
    """Call ``fn`` on one input and return its result record (never raises).

    ``capture`` must already be installed as ``sys.stdout``/``sys.stderr``.
    """
    started_at = time.time()
    t0 = time.perf_counter()
    try:
        value = fn(*arg) if star else fn(arg)
    except BaseException as exc:
        # Ctrl-C in the caller (inline backend) must stop the run, not fail one task.
        if isinstance(exc, KeyboardInterrupt) and not _worker_flag:
            raise
        duration = time.perf_counter() - t0
        # Skip this frame: the traceback starts in the user's code.
        frames = exc.__traceback__.tb_next if exc.__traceback__ else None
        tb = "".join(traceback.format_exception(type(exc), exc, frames))
        return (
            index,
            FAILED,
            (type(exc).__name__, message_of(exc), tb),
            started_at,
            started_at + duration,
            duration,
            capture.take(),
        )
    duration = time.perf_counter() - t0
    if type(value) in RAW_TYPES:
        return (index, OK_RAW, value, started_at, started_at + duration, duration, capture.take())
    try:
        payload = dumps(value)
    except Exception as exc:
        return (
            index,
            FAILED,
            (
                SerializationError.__name__,
                f"cannot pickle the return value of task {index}"
                f" ({type(value).__name__}): {describe(exc)}",
                "",
            ),
            started_at,
            started_at + duration,
            duration,
            capture.take(),
        )
    return (index, OK_PICKLED, payload, started_at, started_at + duration, duration, capture.take())


def load_value(index: int, status: int, payload: Any) -> tuple[bool, Any]:
    """Turn a record's payload back into ``(ok, value-or-error-triple)``."""
    if status == OK_RAW:
        return True, payload
    if status == OK_PICKLED:
        try:
            return True, pickle.loads(payload)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            return False, (
                SerializationError.__name__,
                f"cannot unpickle the return value of task {index}: {describe(exc)}",
                "",
            )
    return False, payload


def install_capture() -> Capture:
    """Send this process's ``sys.stdout`` and ``sys.stderr`` into one capture for good."""
    capture = Capture()
    sys.stdout = sys.stderr = capture
    return capture
