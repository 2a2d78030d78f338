"""Processes fanout starts: tying them to their parent, describing how they ended,
and starting ``fanout worker`` processes (for ``--workers N`` and ``--processes N``)."""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies.

    The request follows the *thread* that forked us, so it is only safe for processes
    started from the main thread. Returns False when the parent (``parent``, if given)
    is already gone; elsewhere than Linux it does nothing and returns True.
    """
    if not sys.platform.startswith("linux"):
        return True
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, sig, 0, 0, 0)
    except (OSError, AttributeError):
        return True
    return parent is None or os.getppid() == parent


def become_subreaper() -> None:
    """Adopt this process's orphaned descendants (Linux): what a task starts and leaves
    behind stays in this process's tree, where :func:`kill_tree` finds it."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            pr_set_child_subreaper = 36
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux's /proc; none elsewhere)."""
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                found.extend(int(child) for child in fh.read().split())
        except OSError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, children first."""
    found: list[int] = []
    todo = children(pid)
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children(child))
    return found


def kill_tree(pid: int, include_self: bool = True) -> None:
    """SIGKILL ``pid``, its process group and every process below it.

    The tree is read before anything is killed: once a process dies, its children are
    handed to another parent and no longer show where they came from.
    """
    below = descendants(pid)
    if include_self:
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, signal.SIGKILL)
                break
    for child in below:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)


def stop_processes(
    processes: Sequence[subprocess.Popen[Any]], steps: Sequence[tuple[int, float]]
) -> list[subprocess.Popen[Any]]:
    """For each (signal, grace) step: send the signal to those still running, and give
    them ``grace`` seconds in all to exit. Returns those the last step was sent to."""
    alive: list[subprocess.Popen[Any]] = []
    for signum, grace in steps:
        alive = [p for p in processes if p.poll() is None]
        for process in alive:
            process.send_signal(signum)
        deadline = time.monotonic() + grace
        for process in alive:
            _wait(process, deadline)
    return alive


def _wait(process: subprocess.Popen[Any], deadline: float) -> None:
    """Wait for ``process`` to exit, until ``deadline`` (time.monotonic()). Woken by its
    exit (a pidfd, on Linux): ``Popen.wait`` polls, by then every 50 ms, and a worker
    exits in about that long."""
    remaining = max(0.0, deadline - time.monotonic())
    pidfd = None
    if process.poll() is None:  # not reaped: its pid is still its own
        with contextlib.suppress(AttributeError, OSError):
            pidfd = os.pidfd_open(process.pid)
    if pidfd is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(remaining)
        return
    try:
        select.select([pidfd], [], [], remaining)
    finally:
        os.close(pidfd)
    process.poll()


def describe_exit(code: int | None) -> str:
    """How a process ended, from its exit code (negative: the signal that killed it)."""
    if code is None:
        return "it stopped responding"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


@contextlib.contextmanager
def signals_deferred(held: set[signal.Signals] | None = None) -> Iterator[None]:
    """Hold ``held`` (default: Ctrl-C, SIGTERM and SIGHUP) until the block ends (main
    thread): a step that must happen whole (jobs written to Redis and noted here) is not
    cut; a signal that came meanwhile is handled as the block ends. Handlers that note
    it, not a signal mask: a mask is one thread's, and the kernel gives a process's
    signal to any thread that does not block it (rich's progress bar, a driver thread),
    whose Python handler then still runs in the main thread, in the middle of the block."""
    if not on_main_thread():
        yield
        return
    came: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, frame: came.append(signum))
        for sig in held or {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(came):
            handler = previous[signal.Signals(signum)]
            if callable(handler):
                handler(signum, None)  # Ctrl-C's KeyboardInterrupt, the CLI's own
            elif handler in (signal.SIG_DFL, None):
                os.kill(os.getpid(), signum)  # its default action, now


def on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _terminate_with_parent(parent: int) -> None:
    # A local `fanout worker` gets RQ's warm shutdown (SIGTERM) when its caller dies;
    # one whose caller died before the request took effect never starts.
    with contextlib.suppress(OSError):
        if not die_with_parent(signal.SIGTERM, parent):
            os._exit(0)


def spawn_fanout_worker(
    queue: str,
    name: str,
    env: dict[str, str],
    *,
    burst: bool = False,
    stdout: int | None = None,
    tied_to_parent: bool = False,
    quiet: bool = False,
    redis_wait: float | None = None,
    options: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """A ``fanout worker`` process serving ``queue`` under ``name``, with more
    ``options``. Secrets and URLs go in ``env``, never on the command line, where ``ps``
    would show them."""
    args = [sys.executable, "-m", "fanout", "worker", "--queue", queue, "--name", name, *options]
    args += ["--quiet"] if quiet else []
    args += ["--redis-wait", repr(redis_wait)] if redis_wait is not None else []
    preexec: Callable[[], None] | None = None
    if tied_to_parent:
        preexec = functools.partial(_terminate_with_parent, os.getpid())
    return subprocess.Popen(
        args + (["--burst"] if burst else []),
        env=env,
        stdout=stdout,
        stdin=subprocess.DEVNULL,
        preexec_fn=preexec,
    )
