"""Where a trivial task's time goes on the local backend: ``python benchmarks/profile_local.py``.

Five figures, each measured the same way for fanout and ``multiprocessing.Pool`` where both have it:

- **The caller, per task, by phase** (``Fanout.map`` over N trivial tasks, all kept as
  ``fanout.run`` keeps them, 2 workers, collection on and off): dispatch (taking a batch
  from the input, pickling it, writing it), reading the result pipes and splitting
  frames, unpickling the result messages, and building the results. Each phase is the
  wall time spent in its functions (wrapped with a timer; they run once per batch, so
  the timer costs a few ns per task).
- **A worker's CPU per task**: the user and system CPU of the worker processes over the
  whole run (``/proc``, read before the pool stops), divided by N, for fanout's workers
  and for ``Pool.imap_unordered(f, items, 256)``'s.
- **Bytes per kept TaskResult**: ``tracemalloc``'s count of what the list of N results
  holds after the run (value, times, usage and the object itself), divided by N.
- **What measuring usage costs**: ``Fanout.map`` over the N tasks, all kept, with each
  result's ``usage`` measured and with it switched off (``FANOUT_USAGE=0``), in turns:
  tasks per second and the workers' CPU per task, and their ratios.
- **The first map after a pool starts** (at most 20,000 tasks; compare.py's "warm"
  column times such a map): its time and the caller's minor page faults, beside a
  later map's, for fanout and for ``Pool.imap_unordered``, and what one page fault
  costs on this machine. After the fork, every page the caller writes costs a fault,
  and so does every fresh page it keeps results in.

``--root DIR`` profiles another checkout of fanout (an older commit, for a before/after).
Prints a markdown table; the Python that runs it is the one measured.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import mmap
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing import Pool
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_tasks import inc  # noqa: E402

WORKERS = 2
CHUNKSIZE = 256


def cpu_of(pids: list[int]) -> float:
    """CPU seconds of these processes' threads so far: the scheduler's own count, in
    nanoseconds (Linux ``/proc/PID/task/TID/schedstat``; ``stat``'s utime and stime
    tick at 10 ms, too coarse for a pool that spends 20 ms on 200,000 tasks)."""
    total = 0
    for pid in pids:
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in threads:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                    total += int(stat.read().split()[0])
            except OSError:
                continue
    return total / 1e9


class Phases:
    """Wall time spent in wrapped functions, by phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        inner = getattr(owner, name)
        seconds = self.seconds

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                seconds[phase] += time.perf_counter() - began

        setattr(owner, name, timed)


@contextmanager
def phases_of_fanout() -> Iterator[Phases]:
    """Time fanout's caller by phase; nested phases are taken out of their parents."""
    import pickle

    from fanout.backends.local import pool as pool_module
    from fanout.backends.runstate import RunState

    phases = Phases()
    # What the pool unpickles messages with: protocol.load (msgpack or pickle) since
    # issue 24, the pickle module before.
    decoder = "load" if hasattr(pool_module, "load") else "pickle"
    saved = (pool_module.Pool.dispatch, pool_module.Pool.read, RunState.settle,
             getattr(RunState, "settle_columns", None), getattr(pool_module, decoder))  # fmt: skip

    class TimedPickle:
        """The pool module's ``pickle``, its ``loads`` timed (unpickling results)."""

        def __getattr__(self, name: str) -> Any:
            return getattr(pickle, name)

        @staticmethod
        def loads(data: bytes) -> Any:
            began = time.perf_counter()
            try:
                return pickle.loads(data)
            finally:
                phases.seconds["unpickle"] += time.perf_counter() - began

    phases.wrap(pool_module.Pool, "dispatch", "dispatch")
    phases.wrap(pool_module.Pool, "read", "read")
    phases.wrap(RunState, "settle", "build")
    if hasattr(RunState, "settle_columns"):  # issue 16's columnar results
        phases.wrap(RunState, "settle_columns", "build")
    if decoder == "load":
        load = pool_module.load

        def timed_load(data: bytes) -> Any:
            began = time.perf_counter()
            try:
                return load(data)
            finally:
                phases.seconds["unpickle"] += time.perf_counter() - began

        pool_module.load = timed_load
    else:
        pool_module.pickle = TimedPickle()  # type: ignore[assignment]
    try:
        yield phases
    finally:
        dispatch, read, settle, columns, original = saved
        pool_module.Pool.dispatch, pool_module.Pool.read = dispatch, read  # type: ignore[method-assign]
        RunState.settle = settle  # type: ignore[method-assign]
        setattr(pool_module, decoder, original)
        if columns is not None:
            RunState.settle_columns = columns  # type: ignore[method-assign]
    # read() unpickles and settles inside it: what is left of it is reading and splitting.
    phases.seconds["read"] -= phases.seconds["unpickle"] + phases.seconds["build"]


def caller_profile(count: int, collect: bool) -> tuple[dict[str, float], float]:
    """(ns per task by phase, total ns per task) of one ``fanout.run``."""
    import fanout

    with fanout.Fanout(workers=WORKERS) as fo:
        list(fo.map(inc, range(1000)))  # workers started and warm
        was = gc.isenabled()
        if not collect:
            gc.disable()
        try:
            with phases_of_fanout() as phases:
                began = time.perf_counter()
                results = list(fo.map(inc, range(count)))
                total = time.perf_counter() - began
        finally:
            if was:
                gc.enable()
        assert len(results) == count
    per = {phase: 1e9 * s / count for phase, s in phases.seconds.items()}
    return per, 1e9 * total / count


def worker_cpu_fanout(count: int) -> float:
    import psutil

    import fanout

    with fanout.Fanout(workers=WORKERS) as fo:
        list(fo.map(inc, range(1000)))
        pids = [p.pid for p in psutil.Process().children()]
        before = cpu_of(pids)
        for _ in fo.map(inc, range(count), ordered=False):
            pass
        return 1e9 * (cpu_of(pids) - before) / count


def worker_cpu_pool(count: int) -> float:
    with Pool(WORKERS) as pool:
        list(pool.imap_unordered(inc, range(1000), CHUNKSIZE))
        pids = [p.pid for p in pool._pool]  # type: ignore[attr-defined]
        before = cpu_of(pids)
        for _ in pool.imap_unordered(inc, range(count), CHUNKSIZE):
            pass
        return 1e9 * (cpu_of(pids) - before) / count


def bytes_per_result(count: int) -> float:
    import fanout

    with fanout.Fanout(workers=WORKERS) as fo:
        list(fo.map(inc, range(1000)))
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            results = list(fo.map(inc, range(1000, 1000 + count)))  # values are not cached ints
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert len(results) == count
        return held / count


def one_usage_run(count: int, measured: bool) -> tuple[float, float]:
    """(tasks per second, workers' CPU ns per task) of one kept run, usage measured or
    not (the workers read FANOUT_USAGE as they start)."""
    import psutil

    import fanout

    os.environ["FANOUT_USAGE"] = "1" if measured else "0"
    try:
        with fanout.Fanout(workers=WORKERS) as fo:
            list(fo.map(inc, range(1000)))
            pids = [p.pid for p in psutil.Process().children()]
            before, began = cpu_of(pids), time.perf_counter()
            results = list(fo.map(inc, range(count)))
            seconds = time.perf_counter() - began
            cpu = cpu_of(pids) - before
    finally:
        del os.environ["FANOUT_USAGE"]
    assert (results[-1].usage is not None) == measured
    return count / seconds, 1e9 * cpu / count


def usage_cost(count: int, repeats: int) -> None:
    runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for n in range(repeats):
        for measured in (True, False) if n % 2 == 0 else (False, True):
            runs[measured].append(one_usage_run(count, measured))
    rate = {m: sorted(r for r, _ in runs[m])[repeats // 2] for m in runs}
    cpu = {m: sorted(c for _, c in runs[m])[repeats // 2] for m in runs}
    print("| usage | tasks/s (kept) | workers' CPU, ns per task |\n|---|---:|---:|")
    print(f"| measured | {rate[True]:,.0f} | {cpu[True]:,.0f} |")
    print(f"| off (`FANOUT_USAGE=0`) | {rate[False]:,.0f} | {cpu[False]:,.0f} |")
    print(f"| measured ÷ off | {rate[True] / rate[False]:.3f} | {cpu[True] / cpu[False]:.3f} |\n")


def faults() -> int:
    """This process's minor page faults so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def fault_cost(pages: int = 4096) -> float:
    """Seconds one page fault costs here: the first touch of each page of a fresh
    anonymous mapping (the kernel zeroes and maps a page each time)."""
    area = mmap.mmap(-1, pages * mmap.PAGESIZE)
    try:
        began = time.perf_counter()
        for offset in range(0, pages * mmap.PAGESIZE, mmap.PAGESIZE):
            area[offset] = 1
        return (time.perf_counter() - began) / pages
    finally:
        area.close()


def two_maps(count: int, use_fanout: bool) -> list[tuple[float, int]]:
    """(seconds, the caller's page faults) of the first map of ``count`` tasks on a
    pool just started (and warmed up with a few tasks, as compare.py does), then of a
    second map on it, results kept until the map is timed."""
    import fanout

    items = list(range(count))
    with contextlib.ExitStack() as stack:
        if use_fanout:
            fo = stack.enter_context(fanout.Fanout(workers=WORKERS))
            run: Callable[[list[int]], list[Any]] = lambda xs: list(fo.map(inc, xs))  # noqa: E731
        else:
            pool = stack.enter_context(Pool(WORKERS))
            run = lambda xs: list(pool.imap_unordered(inc, xs, CHUNKSIZE))  # noqa: E731
        run(items[: 2 * WORKERS])
        spans = []
        for _ in range(2):
            before, began = faults(), time.perf_counter()
            results = run(items)
            spans.append((time.perf_counter() - began, faults() - before))
            del results
    return spans


def first_maps(count: int, repeats: int) -> None:
    """The first map after a pool starts pays a page fault for each page it writes:
    pages shared with the workers since the fork, and fresh ones for what it keeps."""
    rows = {name: [two_maps(count, name == "fanout") for _ in range(repeats)]
            for name in ("fanout", "pool")}  # fmt: skip
    print(
        f"| {count:,} tasks, caller | first map: ms | page faults | a later map: ms |"
        " page faults |\n|---|---:|---:|---:|---:|"
    )
    for name, label in (("fanout", "fanout `Fanout.map`"), ("pool", "`Pool.imap_unordered(256)`")):
        runs = rows[name]
        cells = [statistics.median(run[k][i] for run in runs) for k in (0, 1) for i in (0, 1)]
        print(f"| {label} | {1e3 * cells[0]:.1f} | {cells[1]:,.0f} | {1e3 * cells[2]:.1f} |"
              f" {cells[3]:,.0f} |")  # fmt: skip
    cost = statistics.median(fault_cost() for _ in range(5))
    print(f"\nOne page fault here: {1e6 * cost:.2f} µs (first touch of a fresh page).\n")


def median_of(repeats: int, measure: Callable[[], float]) -> float:
    values = sorted(measure() for _ in range(repeats))
    return values[len(values) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--root", type=Path, help="profile the fanout in this checkout")
    parser.add_argument("--quick", action="store_true", help="20,000 tasks, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.repeats = 20_000, 1
    sys.path.insert(0, str((args.root or HERE.parent).resolve()))
    import fanout

    count, repeats = args.tasks, args.repeats
    where = Path(fanout.__file__).resolve().parent.parent
    print(f"Python {platform.python_version()}, {os.cpu_count()} cores, {WORKERS} workers,"
          f" {count:,} trivial tasks, medians of {repeats}; fanout from {where}\n")  # fmt: skip
    rows = []
    for collect in (True, False):
        runs = [caller_profile(count, collect) for _ in range(repeats)]
        runs.sort(key=lambda run: run[1])
        per, total = runs[len(runs) // 2]
        rows.append((collect, per, total))
    print("| caller, ns per task | GC on | GC off |\n|---|---:|---:|")
    for phase in ("dispatch", "read", "unpickle", "build"):
        cells = " | ".join(f"{per.get(phase, 0.0):,.0f}" for _, per, _ in rows)
        print(f"| {phase} | {cells} |")
    others = [total - sum(per.values()) for _, per, total in rows]
    print(f"| the rest (waiting, the loop) | {others[0]:,.0f} | {others[1]:,.0f} |")
    print(f"| **total** | **{rows[0][2]:,.0f}** | **{rows[1][2]:,.0f}** |\n")
    fanout_cpu = median_of(repeats, lambda: worker_cpu_fanout(count))
    pool_cpu = median_of(repeats, lambda: worker_cpu_pool(count))
    print("| workers' CPU, ns per task | fanout | `Pool.imap_unordered(256)` | difference |")
    print("|---|---:|---:|---:|")
    print(f"| both workers, user + system | {fanout_cpu:,.0f} | {pool_cpu:,.0f} |"
          f" {fanout_cpu - pool_cpu:+,.0f} |\n")  # fmt: skip
    print(f"Bytes per kept TaskResult (tracemalloc, {count:,} kept):"
          f" {bytes_per_result(count):,.0f}\n")  # fmt: skip
    usage_cost(count, repeats)
    first_maps(min(count, 20_000), max(repeats, 3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
