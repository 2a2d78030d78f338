"""Task functions for the benchmarks, importable by name as ``bench_tasks``.

They live in a module of their own (not in ``compare.py``, which runs as
``__main__``) so that RQ workers started with ``benchmarks/`` on their path can
import them, as remote backends require.
"""

from __future__ import annotations

import time


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
