"""joblib on fanout against joblib on loky: ``python benchmarks/joblib_backend.py [--quick]``.

``Parallel(n_jobs=2)`` over N trivial calls (``delayed(inc)(i)``), once with
``backend="fanout"`` (``import fanout.joblib``) and once with joblib's default, loky;
"warm": each backend's workers run a first call before the timed ones (a ``Parallel``
kept open as a context manager, whose workers joblib reuses). Each backend runs once per
repeat, in an order that rotates; medians of tasks/s and their ratio.

``--cpu`` says where the time goes instead: for the same timed call, the CPU each of the
caller's threads and the workers spent, in ns per call, and how busy the caller was
(its CPU over the wall time). Linux only (it reads ``/proc``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import joblib
from bench_tasks import inc

import fanout.joblib  # noqa: F401 - registers the backend "fanout"

WORKERS = 2
BACKENDS = ("fanout", "loky")
T = TypeVar("T")


def rate(backend: str, n: int, made: bool) -> float:
    """Calls per second through ``Parallel``; ``made``: the calls made before the timer
    (what the backend costs), else by the idiom's generator (``delayed(f)(x)`` copies
    ``f``'s metadata each time: a cost of the caller's, the same on every backend)."""
    return n / timed_call(backend, n, made, lambda: None)[0]


def timed_call(backend: str, n: int, made: bool, mark: Callable[[], T]) -> tuple[float, T, T]:
    """The seconds of one warm ``Parallel`` call, and what ``mark()`` said before it and
    after it."""
    call = joblib.delayed(inc)
    calls = [call(i) for i in range(n)] if made else None
    with joblib.Parallel(n_jobs=WORKERS, backend=backend) as parallel:
        parallel(joblib.delayed(inc)(i) for i in range(1000))  # warm: workers up
        before = mark()
        began = time.perf_counter()
        out = parallel(calls if calls is not None else (joblib.delayed(inc)(i) for i in range(n)))
        seconds = time.perf_counter() - began
        after = mark()
    assert out[-1] == n, out[-1]
    return seconds, before, after


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 calls, one repeat")
    parser.add_argument("--cpu", action="store_true", help="where the time goes (CPU per call)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    sizes = [20_000] if args.quick else [20_000, 200_000]
    repeats = 1 if args.quick else 5
    text = cpu_table(sizes[-1], repeats) if args.cpu else rates_table(sizes, repeats)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


def rates_table(sizes: list[int], repeats: int) -> str:
    lines = [
        f"Python {sys.version.split()[0]}, joblib {joblib.__version__}, n_jobs={WORKERS},"
        f" trivial calls, warm; medians of {repeats}.",
        "",
        '| calls | made | `backend="fanout"` tasks/s | loky tasks/s | fanout ÷ loky |',
        "|---:|---|---:|---:|---:|",
    ]
    for n, made in [(n, made) for n in sizes for made in (True, False)]:
        found: dict[str, list[float]] = {name: [] for name in BACKENDS}
        for repeat in range(repeats):
            for name in BACKENDS[repeat % 2 :] + BACKENDS[: repeat % 2]:
                found[name].append(rate(name, n, made))
                print(f"  .. {n:,} {name}: {found[name][-1]:,.0f}/s", file=sys.stderr, flush=True)
        ours, theirs = statistics.median(found["fanout"]), statistics.median(found["loky"])
        how = "before the timer" if made else "by the generator"
        lines.append(f"| {n:,} | {how} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f} |")
    return "\n".join(lines)


# -- where the time goes (--cpu) --------------------------------------------------------


def _schedstat(task: str) -> tuple[float, float]:
    """Seconds a process or thread (``/proc/<task>``) has run on a CPU, and has waited
    for one while runnable (its ``schedstat``, in ns; zeros for one already gone)."""
    try:
        with open(f"/proc/{task}/schedstat") as f:
            ran, waited, _ = f.read().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(ran) / 1e9, int(waited) / 1e9


def cpu_now() -> dict[str, float]:
    """CPU seconds so far of each of the caller's threads (by name) and of its workers
    (every child process, summed), and what the caller's threads waited for a CPU."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    seen: dict[str, float] = {"caller waited for a CPU (all threads)": 0.0}
    children: list[str] = []
    for tid in os.listdir("/proc/self/task"):
        ran, waited = _schedstat(f"self/task/{tid}")
        seen[f"caller: {names.get(int(tid), 'thread ' + tid)}"] = ran
        seen["caller waited for a CPU (all threads)"] += waited
        with open(f"/proc/self/task/{tid}/children") as f:
            children += f.read().split()
    seen["workers (all child processes)"] = sum(_schedstat(pid)[0] for pid in children)
    return seen


def cpu_table(n: int, repeats: int) -> str:
    """Per backend, medians over the repeats of the timed call's wall time and of the CPU
    each part of it took, in ns per call."""
    lines = [
        f"Python {sys.version.split()[0]}, joblib {joblib.__version__}, n_jobs={WORKERS},"
        f" {n:,} trivial calls made before the timer, warm; CPU in ns per call (schedstat),"
        f" medians of {repeats}.",
        "",
        "| backend | where | ns per call |",
        "|---|---|---:|",
    ]
    for name in BACKENDS:
        walls: list[float] = []
        caller: list[float] = []
        parts: dict[str, list[float]] = {}
        for _ in range(repeats):
            seconds, before, after = timed_call(name, n, True, cpu_now)
            spent = {k: (v - before.get(k, 0.0)) / n * 1e9 for k, v in after.items()}
            for key, ns in spent.items():
                parts.setdefault(key, []).append(ns)
            walls.append(seconds)
            caller.append(sum(ns for key, ns in spent.items() if key.startswith("caller:")))
        wall = statistics.median(walls)
        for key, values in sorted(parts.items()):
            if statistics.median(values) > 0:
                lines.append(f"| {name} | {key} | {statistics.median(values):,.0f} |")
        lines.append(f"| {name} | caller, all threads | {statistics.median(caller):,.0f} |")
        lines.append(f"| {name} | wall | {wall / n * 1e9:,.0f} ({n / wall:,.0f} calls/s) |")
        busy = statistics.median(caller) / (wall / n * 1e9)
        lines.append(f"| {name} | caller busy (CPU ÷ wall) | {busy:.0%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
