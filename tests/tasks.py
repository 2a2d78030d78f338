"""Task functions for the tests, at module level so that any worker can import them."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

# The contract suite's tasks, shipped with fanout; the tests use them from here too.
from fanout.testing import tasks as shipped
from fanout.testing.tasks import (  # noqa: F401 - re-exported for the tests
    add,
    chatty,
    divide,
    fail_until,
    return_lock,
    sleep_for,
)

# Defined here, not imported: the allowlist tests run them on workers that admit
# tests.tasks only, and an allowlist checks the module a function is defined in.


def square(x: int) -> int:
    return x * x


def square_or_spin(x: int, spin_at: int = 50, cpu_seconds: float = 0.05) -> int:
    """``x * x``; task ``spin_at`` first spends ``cpu_seconds`` of this thread's CPU."""
    if x == spin_at:
        end = time.thread_time() + cpu_seconds
        while time.thread_time() < end:
            pass
    return x * x


def identity(x: Any) -> Any:
    return x


def whoami(_: Any = None) -> dict[str, Any]:
    """The identity of the process running the task, as seen from inside it."""
    return shipped.whoami(_)


def fail(x: Any) -> None:
    raise ValueError(f"bad input {x!r}")


def noop() -> None:
    return None


def kill_self(sig: int = signal.SIGKILL) -> None:
    os.kill(os.getpid(), sig)


def crash_quietly(sig: int = signal.SIGSEGV) -> None:
    """Die of ``sig`` without the traceback dump of the faulthandler the worker inherited
    from pytest: a crash on purpose should not fill the test output."""
    import faulthandler

    faulthandler.disable()
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


def fork_and_return(x: int) -> int:
    """Fork, and return in both processes (a user's mistake the worker must survive)."""
    os.fork()
    return x


def out_of_memory(_: Any = None) -> None:
    raise MemoryError()


def long_failure(x: int) -> int:
    """Fail for x == 1234 with a message far longer than a table cell."""
    if x == 1234:
        raise ValueError("this message is long: " + " ".join(f"word{i}" for i in range(30)))
    return x


def say_then_sleep(seconds: float) -> float:
    print(f"slept {seconds}")
    time.sleep(seconds)
    return seconds


def start_sleeper(pidfile: str, new_session: bool = False) -> int:
    """Start ``sleep 300`` and return without waiting for it; its pid goes to ``pidfile``."""
    import subprocess

    child = subprocess.Popen(["sleep", "300"], start_new_session=new_session)
    with open(pidfile, "a") as fh:
        fh.write(f"{child.pid}\n")
    return child.pid


def leave_pool_open(pidfile: str) -> list[int]:
    """Open a multiprocessing.Pool and return without closing it."""
    import multiprocessing

    pool = multiprocessing.get_context("fork").Pool(2)
    pids = [p.pid for p in pool._pool]
    with open(pidfile, "a") as fh:
        fh.write("".join(f"{pid}\n" for pid in pids))
    _kept.append(pool)  # never closed
    return pids


_kept: list[Any] = []


def start_sleeper_then_hang(pidfile: str) -> None:
    start_sleeper(pidfile)
    time.sleep(300)


def nested_run_that_hangs(pidfile: str) -> None:
    """A task that runs fanout itself: its worker starts a sleeper, then hangs."""
    import fanout

    fanout.run(start_sleeper_then_hang, [pidfile], workers=1, daemon=False)


def record_run(log: str, x: Any) -> Any:
    """Append ``x`` to the file ``log`` (each execution leaves a line), then return it;
    fail for an input that is the string "fail"."""
    with open(log, "a") as fh:
        fh.write(f"{x}\n")
    if x == "fail":
        raise ValueError("asked to fail")
    return x


# The drop-ins' Pool initializer: the value it set, and the file each run appends to.
_initialized_with: Any = None


def remember(path: str, value: Any) -> None:
    """A Pool initializer: note this process in ``path``, keep ``value`` for its tasks."""
    global _initialized_with
    _initialized_with = value
    with open(path, "a") as fh:
        fh.write(f"{os.getpid()}\n")


def initialized_with(_: Any = None) -> tuple[int, Any]:
    """(this process's pid, what the Pool's initializer set in it)."""
    return os.getpid(), _initialized_with


def pid_of(_: Any = None) -> int:
    return os.getpid()


def wait_for_file(path: str, seconds: float = 30.0) -> str:
    """Return once ``path`` exists (a test lets the task finish by creating it)."""
    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return path


def start_then_wait(started: str, release: str) -> str:
    """Create ``started``, then return once ``release`` exists."""
    with open(started, "w"):
        pass
    return wait_for_file(release)


def note_pid_then_wait(folder: str, seconds: float = 60.0) -> int:
    """Write this process's pid as a file in ``folder``, then wait ``seconds`` (a test
    cancels the run meanwhile)."""
    with open(os.path.join(folder, str(os.getpid())), "w"):
        pass
    time.sleep(seconds)
    return os.getpid()


def pace(arg: Any) -> int:
    """``(seconds, folder, index)``: sleep, then note the run as a file of its own in
    ``folder``, named after the index (a test counts the runs of each). A folder alone:
    write this process's pid to ``<folder>/started`` and return once
    ``<folder>/release`` exists (the one task a test holds up). ``{"die_once": path}``:
    ``die_once(path)``. Returns the pid of the process that ran it."""
    if isinstance(arg, dict):
        die_once(arg["die_once"])
    elif isinstance(arg, str):
        with open(os.path.join(arg, "started.tmp"), "w") as fh:
            fh.write(str(os.getpid()))
        os.replace(os.path.join(arg, "started.tmp"), os.path.join(arg, "started"))
        wait_for_file(os.path.join(arg, "release"), 120.0)
    else:
        seconds, folder, index = arg
        time.sleep(seconds)
        with open(os.path.join(folder, f"{index}-{os.getpid()}-{time.perf_counter_ns()}"), "w"):
            pass
    return os.getpid()


def square_if_open(fd: int, x: int) -> int:
    """``x * x``, once ``fd`` is found open in this process (OSError if not)."""
    os.fstat(fd)
    return x * x


def nested_run(n: int) -> dict[str, Any]:
    """A task that runs fanout itself (local, two workers) with a file of its own open,
    which its inner tasks check: this process's pid, and for each inner task its value
    and its worker's parent pid, or its error in words."""
    import fanout

    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        inner = fanout.run(square_if_open, [(fd, x) for x in range(n)], star=True, workers=2)
    finally:
        os.close(fd)
    return {
        "pid": os.getpid(),
        "inner": [
            [r.value, r.worker.ppid] if r.error is None else f"{r.error.type}: {r.error.message}"
            for r in inner
        ],
    }


def raise_interrupt(_: Any = None) -> None:
    """A task whose exception has no message: ``KeyboardInterrupt()``."""
    raise KeyboardInterrupt()


def note_pid_or_die(folder: str, x: int) -> int:
    """Write this process's pid to ``folder/<x>``; for a negative ``x`` then die of SIGKILL
    (the pid a lost task's result should name)."""
    with open(os.path.join(folder, str(x)), "w") as fh:
        fh.write(str(os.getpid()))
    if x < 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def record_then_sleep(log: str, x: Any, seconds: float) -> Any:
    """Append ``x`` to the file ``log`` (each execution leaves a line), sleep, return it."""
    with open(log, "a") as fh:
        fh.write(f"{x}\n")
    time.sleep(seconds)
    return x


def trace_id(_: Any = None) -> str:
    """The trace id of the current span inside the task (OpenTelemetry), as hex."""
    from opentelemetry import trace

    return trace.format_trace_id(trace.get_current_span().get_span_context().trace_id)


def otel_setup() -> None:
    """``FANOUT_OTEL_SETUP``'s hook for tests: a tracer provider that appends each span,
    as it ends, to the JSON-lines file ``$FANOUT_TEST_SPANS`` (tests/spans.py)."""
    from tests.spans import use_file_exporter

    use_file_exporter(os.environ["FANOUT_TEST_SPANS"])


def hold_megabytes(megabytes: int) -> int:
    """Hold ``megabytes`` of touched memory for a moment (a task growing past a limit
    is seen growing), then give it back."""
    held = []
    for _ in range(megabytes // 10):
        block = bytearray(10 * 2**20)
        block[::4096] = b"x" * (len(block) // 4096)
        held.append(block)
        time.sleep(0.005)
    return len(held) * 10


def sleep_then_index(item: Any) -> int:
    """A task on an input with an ``n``: input 1000 sleeps 0.5 s (the inputs its worker
    holds behind it are taken back), the others return at once."""
    if item.n == 1000:
        time.sleep(0.5)
    return int(item.n)


def end_as(folder: str, how: str, x: int) -> int:
    """Write this process's pid to ``folder/<x>``, then end as ``how`` says: "ok" (return
    the pid), "raise", "exit" (``os._exit(3)``), "sleep" (a minute: for a time-out),
    "wait" (a minute, for the test to kill it from outside), "grow" (hold 400 MB)."""
    pid = os.getpid()
    with open(os.path.join(folder, f"{x}.tmp"), "w") as fh:
        fh.write(str(pid))
    os.rename(os.path.join(folder, f"{x}.tmp"), os.path.join(folder, str(x)))
    if how == "raise":
        raise ValueError(f"task {x} raised")
    if how == "exit":
        os._exit(3)
    if how in ("sleep", "wait"):
        time.sleep(60)
    if how == "grow":
        hold_megabytes(400)
    return pid


def meet_its_end(how: str, param: Any, log: str, index: int) -> int:
    """A task that ends as ``how`` says, having first appended ``"index pid"`` to the
    file ``log`` (which process ran which task): "ok" returns this process's pid;
    "raise" raises ValueError; "exit" calls ``os._exit(param)``; "grow" grows by ``param``
    megabytes, 10 at a time, and holds them while it waits to be killed; "hang" sleeps
    ``param`` seconds; "wait-kill" writes its pid to the FIFO ``param`` (the test kills
    it from outside) and waits."""
    with open(log, "a") as fh:
        fh.write(f"{index} {os.getpid()}\n")
    if how == "raise":
        raise ValueError(f"task {index} raised")
    if how == "exit":
        os._exit(param)
    if how == "grow":
        held = [_touched(10) for _ in range(param // 10)]  # noqa: F841 - held till killed
        time.sleep(60)
    elif how == "hang":
        time.sleep(param)
    elif how == "wait-kill":
        with open(param, "w") as fifo:
            fifo.write(f"{os.getpid()}\n")
        time.sleep(60)
    return os.getpid()


def _touched(megabytes: int) -> bytearray:
    """``megabytes`` of memory, every page written (resident)."""
    block = bytearray(megabytes * 2**20)
    block[::4096] = b"x" * (len(block) // 4096)
    return block


_kept_megabytes: list[bytearray] = []


def keep_megabytes(megabytes: int) -> tuple[int, int]:
    """Grow this process by ``megabytes`` of touched memory and keep it (the process
    stays that big after the task): (its pid, its resident size now, in bytes)."""
    from fanout._memory import resident

    _kept_megabytes.append(_touched(megabytes))
    return os.getpid(), resident(os.getpid()) or 0


def _unloadable(why: str) -> Any:
    raise ValueError(why)


class FailsToUnpickle:
    """Pickles fine; unpickling it raises ValueError (an input the worker cannot load)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unloadable, ("this input cannot be unpickled",))
