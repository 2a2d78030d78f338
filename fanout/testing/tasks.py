"""Task functions of the contract suite, at module level in an installed package so that
any backend's workers can import them by name."""

from __future__ import annotations

import multiprocessing
import os
import socket
import sys
import threading
import time
from typing import Any


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def identity(x: Any) -> Any:
    return x


def whoami(_: Any = None) -> dict[str, Any]:
    """The identity of the process running the task, as seen from inside it."""
    return {
        "name": multiprocessing.current_process().name,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "host": socket.gethostname(),
    }


def chatty(x: int) -> int:
    print(f"out {x}")
    print(f"err {x}", file=sys.stderr)
    return x


def fail(x: Any) -> None:
    raise ValueError(f"bad input {x!r}")


def divide(x: float) -> float:
    return 1 / x


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def return_lock(_: Any = None) -> Any:
    return threading.Lock()


def fail_until(marker: str, failures: int) -> int:
    """Raise until called ``failures`` times (counted in a file), then return the count."""
    count = 0
    if os.path.exists(marker):
        with open(marker) as fh:
            count = int(fh.read() or 0)
    with open(marker, "w") as fh:
        fh.write(str(count + 1))
    if count < failures:
        raise RuntimeError(f"attempt {count + 1} fails")
    return count + 1


def fail_slowly(x: Any, seconds: float = 0.1) -> None:
    """Fail after ``seconds``: slow enough that a run halting after a failure has many
    tasks left that never started."""
    time.sleep(seconds)
    raise ValueError(f"bad input {x!r}")


def note_then_sleep(path: str, seconds: float) -> float:
    """Write ``host pid`` of the process running the task to ``path``, then sleep: a
    test sees where a long task runs, and whether it was stopped."""
    with open(path + ".part", "w") as fh:
        fh.write(f"{socket.gethostname()} {os.getpid()}")
    os.replace(path + ".part", path)  # whole or not at all, for whoever reads it
    time.sleep(seconds)
    return seconds
