"""The seed tutorial's scenarios as fanout task functions.

Each one is run through fanout in docs/seed/, e.g.::

    fanout run fanout.examples:worker --repeat 5
    fanout run fanout.examples:numbered --range 5
    fanout run fanout.examples:role my_service worker worker
    fanout run fanout.examples:start_child --repeat 2 --no-daemon
    fanout run fanout.examples:make_object --repeat 1 --json
    fanout run fanout.examples:f bob bob bob

and ``hello`` is the multi-worker demo's task (``docker-compose.yml``); ``chore`` is the
uneven run drawn in docs/report.md::

    fanout run fanout.examples:chore --range 40 --workers 4 --timeout 2 --report run.html
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import time
from typing import Any


def worker() -> None:
    """Seed: five ``Process(target=worker)`` printing 'worker'."""
    print("worker")


def numbered(num: int) -> None:
    """Seed: each worker is given a number to print (arguments must be picklable)."""
    print("worker", num)


def role(kind: str = "worker", seconds: float | None = None) -> str:
    """Seed: a named service (3 s) and workers (2 s), each printing its process name."""
    name = multiprocessing.current_process().name
    print(name, "starting", "as", kind)
    time.sleep(seconds if seconds is not None else (3.0 if kind == "my_service" else 2.0))
    print(name, "exiting")
    return name


def _child(parent: str) -> None:
    p = multiprocessing.current_process()
    print("child of", parent, "running:", p.name, p.pid)
    sys.stdout.flush()


def start_child() -> int:
    """Seed: daemon vs non-daemon. Start a process of our own, which only works in a
    non-daemon worker (``--no-daemon``): daemonic processes may not have children."""
    me = multiprocessing.current_process()
    print("starting:", me.name, me.pid)
    child = multiprocessing.Process(name=f"{me.name}-child", target=_child, args=(me.name,))
    child.start()
    child.join()
    print("exiting:", me.name, me.pid)
    return child.pid or 0


def make_object() -> list[Any]:
    """Seed: an object passed back through a queue (here, as the task's value)."""
    return [55, None, "hello", "world"]


def info(title: str) -> dict[str, Any]:
    """Seed: print the module name, parent process id and process id."""
    print(title)
    print("module name:", __name__)
    print("parent process:", os.getppid())
    print("process id:", os.getpid())
    return {"module": __name__, "ppid": os.getppid(), "pid": os.getpid()}


def f(name: str) -> dict[str, Any]:
    """Seed: ``f('bob')`` in several processes, each reporting who it is."""
    ids = info("function f")
    print(name)
    return ids


def hello(n: int, seconds: float = 0.5) -> int:
    """The multi-worker demo's task: half a second of work, so tasks spread over workers."""
    print("hello", n, "from", socket.gethostname(), "pid", os.getpid())
    time.sleep(seconds)
    return n * n


def chore(n: int) -> float:
    """Uneven work with every way a task ends, for the report's picture: most tasks sleep
    0.1 to 0.6 s, task 30 is a straggler (1.6 s); after a while task 7 raises, task 21
    kills its own process (SIGKILL), and task 13 sleeps 30 s (past a --timeout)."""
    seconds = 1.6 if n == 30 else round(0.1 + (n * 37 % 11) / 20, 2)
    time.sleep(seconds)
    if n == 7:
        raise ValueError(f"chore {n}: the input was not what it should be")
    if n == 13:
        time.sleep(30)
    if n == 21:
        os.kill(os.getpid(), signal.SIGKILL)
    return seconds


def count_primes(limit: int) -> int:
    """How many primes are below ``limit`` (a CPU-bound task for the drop-in examples)."""
    sieve = bytearray([1]) * max(limit, 2)
    sieve[0] = sieve[1] = 0
    for n in range(2, int(limit**0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, limit, n)))
    return sum(sieve)
