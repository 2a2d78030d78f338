"""Task functions for the benchmarks, importable by name as ``bench_tasks``.

They live in a module of their own (not in ``compare.py``, which runs as
``__main__``) so that RQ workers started with ``benchmarks/`` on their path can
import them, as remote backends require.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def inc(x: int) -> int:
    """The trivial task: ``f(x) = x + 1``."""
    return x + 1


def spin(seconds: float) -> float:
    """A CPU-bound task: keep one core busy for ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def nap(seconds: float) -> float:
    """An I/O-bound task: sleep for ``seconds`` (RQ's usual kind of job)."""
    time.sleep(seconds)
    return seconds


def nap_on_host(seconds: float) -> float:
    """``nap`` on a host ``$FANOUT_BENCH_SLOWDOWN`` times slower (default 1): sleep for
    ``seconds`` times that factor and return ``seconds``. ``uneven.py`` starts one of
    its rq workers with ``FANOUT_BENCH_SLOWDOWN=3``."""
    time.sleep(seconds * float(os.environ.get("FANOUT_BENCH_SLOWDOWN", "1")))
    return seconds


def mark_and_nap(seconds: float, path: str) -> float:
    """Create the file ``path`` (so the caller sees this task has started), then sleep
    for ``seconds``."""
    Path(path).touch()
    time.sleep(seconds)
    return seconds


def nap_noted(seconds: float, folder: str, index: int) -> int:
    """``nap`` that leaves a file of its own in ``folder`` per execution, named after
    ``index`` (``drain.py`` counts how many times each task ran)."""
    time.sleep(seconds)
    (Path(folder) / f"{index}-{os.getpid()}-{time.perf_counter_ns()}").touch()
    return index
