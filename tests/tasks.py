"""Task functions for the tests, at module level so that any worker can import them."""

from __future__ import annotations

import multiprocessing
import os
import signal
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


def noop() -> None:
    return None


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


def kill_self(sig: int = signal.SIGKILL) -> None:
    os.kill(os.getpid(), sig)


def exit_hard(code: int = 7) -> None:
    os._exit(code)


def die_once(marker: str) -> str:
    """Kill the worker on the first attempt (marker file absent), succeed on the retry."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


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


def spawn_sleeper(pidfile: str) -> None:
    """Start a grandchild that sleeps, record its pid, then hang (for timeout tests)."""
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with open(pidfile, "w") as fh:
        fh.write(str(child.pid))
    time.sleep(60)


class ExitOnUnpickle:
    """Pickles fine; unpickling it ends the process (as a broken C extension might)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os._exit, (3,))


class CallableExitOnUnpickle(ExitOnUnpickle):
    def __call__(self, x: Any) -> Any:
        return x


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no string for you")


def raise_bad_str(_: Any = None) -> None:
    raise BadStr()


def square_or_die(x: int) -> int:
    """Square ``x``; a negative ``x`` kills the process running the task instead."""
    if x < 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def touch_then_sleep(marker: str, seconds: float) -> float:
    """Create ``marker`` (the task has started), then sleep ``seconds``."""
    with open(marker, "w"):
        pass
    time.sleep(seconds)
    return seconds


def _made_slowly(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


class SlowToUnpickle:
    """Pickles at once; unpickling takes ``seconds`` and gives ``value`` (a task input
    that keeps a worker busy before its task starts)."""

    def __init__(self, seconds: float, value: Any) -> None:
        self.seconds = seconds
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (_made_slowly, (self.seconds, self.value))


def touch(path: str) -> str:
    """Create the file ``path`` (the task ran) and return it."""
    with open(path, "w"):
        pass
    return path
