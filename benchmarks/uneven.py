"""Uneven work: tasks of unequal durations, against the ideal in-order schedule:
``python benchmarks/uneven.py [--quick] [--out FILE.md] [--plot FILE.png] [--only ...]``.

Every task sleeps (``bench_tasks.nap``), so two cores are never the bottleneck and the
ideal is exact: **ideal in-order** runs each task, in input order, on the first worker to
become free (ties: the lowest-numbered worker), with zero overhead (:func:`ideal`). A mix
is a list of durations in input order (:data:`MIXES`: uniform, ramps, quick-then-slow and
back, sorted mixes, a heavy tail, one long task among thousands of quick ones, ...), each
about 1.5-3 s ideal on 2 workers.

- **local** (``--only local``): ``fanout.Fanout(workers=2).map`` beside the stdlib's
  ``multiprocessing.Pool(2).map(chunksize=1)`` and ``ProcessPoolExecutor(2).map``;
  **dropin**: ``fanout.Pool(2).map(chunksize=1)`` and ``fanout.Executor(2).map``. Each
  pool is started and warmed (4 quick tasks) once per repeat, then every mix is timed on
  it. ``Pool(chunksize=1)`` always runs with the fanout rows: the targets refer to it.
- **rq**: ``fanout.run("bench_tasks:nap", mix, backend="rq")`` on a ``redis-server`` of
  our own (a free port, nothing on disk) served by 2 ``fanout worker`` processes, started
  and warmed before the timing (``benchmarks/`` on their ``PYTHONPATH``).
- **slowhost**: the same with 3 workers, one of them started with
  ``FANOUT_BENCH_SLOWDOWN=3`` (a host 3x slower: ``bench_tasks.nap_on_host`` sleeps 3x
  as long there), against the ideal in-order schedule for speeds (1, 1, 3).
- **latency**: a pool of 2 workers (warm) is given one 2 s task; once it has started (it
  creates a marker file first), ten 10 ms tasks are submitted (``Executor.submit`` or
  ``Pool.apply_async``) and timed until all ten are done.

Every method runs once per repeat, in an order that rotates from one repeat to the next
(a noisy machine's drift falls on all alike); the tables show medians. Every result is
checked (count, values and order) before its time counts. Ratios: **wall ÷ ideal**
(1.00 is the ideal schedule; sleeps overshoot a little, so even a perfect scheduler
sits slightly above it on the many-tiny-tasks mix) and, for fanout's local rows,
**fanout ÷ ``Pool(chunksize=1)``** of the same repeat's medians (above 1: fanout slower).

Targets (medians, 2 workers): local, each fanout row: wall ≤ 1.08 x ideal + 0.15 s and
≤ 1.05 x ``Pool(chunksize=1)``; rq: ≤ 1.15 x ideal + 0.5 s; slow host: ≤ 1.2 x its
ideal + 0.5 s; latency: fanout ≤ 2.5 x ``ProcessPoolExecutor``'s, or ≤ 0.5 s.

A full run of every case writes its tables into ``docs/benchmarks.md`` (between the
uneven markers) and its plot to ``docs/uneven.png``; ``--quick`` only prints (or writes
to ``--out``). matplotlib is optional (the plot is skipped without it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import heapq
import multiprocessing
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_tasks import mark_and_nap, nap
from compare import BENCH_DIR, ROOT, processes, redis_server, wait_until

import fanout

PLOT = ROOT / "docs" / "uneven.png"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- uneven: begin -->", "<!-- uneven: end -->"
WORKERS = 2
SLOW_SPEEDS = (1.0, 1.0, 3.0)  # the slow-host case: three workers, the last 3x slower
WARMUP = [0.01] * (2 * WORKERS)
LONG_TASK, QUICK_TASK, QUICK_TASKS = 2.0, 0.01, 10  # the latency case

# --------------------------------------------------------------------------- the mixes


def heavy_tail() -> list[float]:
    """60 Pareto durations (alpha 1.1, from 10 ms, capped at 1.5 s), seed 3: most short,
    two long: 1.40 s at index 10, 0.72 s at index 53."""
    rng = random.Random(3)
    return [round(min(0.01 * rng.paretovariate(1.1), 1.5), 4) for _ in range(60)]


def sorted_random() -> list[float]:
    """50 durations uniform in [0, 0.2 s], seed 2, sorted ascending."""
    rng = random.Random(2)
    return sorted(round(rng.uniform(0, 0.2), 3) for _ in range(50))


# name -> (durations in input order, how they were made)
MIXES: dict[str, tuple[list[float], str]] = {
    "uniform": ([0.1] * 40, "40 x 0.1 s"),
    "ascending ramp": ([0.005 * i for i in range(40)], "0.005 s x i, i < 40"),
    "range(6) x 0.3 s": ([0.3 * i for i in range(6)], "0, 0.3, ..., 1.5 s"),
    "quick then slow": ([0.001] * 20 + [0.5] * 12, "20 x 1 ms, then 12 x 0.5 s"),
    "slow then quick": ([0.5] * 12 + [0.001] * 20, "12 x 0.5 s, then 20 x 1 ms"),
    "sorted mixed": (sorted([0.001] * 20 + [0.4] * 10), "sorted(20 x 1 ms + 10 x 0.4 s)"),
    "sorted random": (sorted_random(), "50 x U(0, 0.2 s), seed 2, sorted"),
    "heavy tail": (heavy_tail(), "60 x Pareto(1.1) x 10 ms <= 1.5 s, seed 3"),
    "one long": (
        [0.0005] * 10 + [1.5] + [0.0005] * 2989,
        "3,000 x 0.5 ms, one 1.5 s at index 10",
    ),
}
QUICK_MIXES = ("quick then slow", "sorted mixed", "heavy tail", "one long")


def ideal(durations: Sequence[float], speeds: Sequence[float] = (1.0,) * WORKERS) -> float:
    """The ideal in-order schedule's wall time: each task, in input order, starts on the
    first worker to become free (ties: the lowest), taking ``duration x speeds[worker]``,
    with zero overhead."""
    free = [(0.0, worker) for worker in range(len(speeds))]  # (free at, worker): a heap
    end = 0.0
    for duration in durations:
        at, worker = heapq.heappop(free)
        at += duration * speeds[worker]
        end = max(end, at)
        heapq.heappush(free, (at, worker))
    return end


def check_ideal() -> None:
    """A few schedules worked out by hand."""
    cases = [
        (range(6), (1.0, 1.0), 9.0),  # 0 1 | 2 | 3 4 | 5 : w0 0,1,3,5 = 9; w1 2,4 = 6
        ([1.0] * 4, (1.0, 1.0), 2.0),
        ([3.0, 1.0, 1.0, 1.0], (1.0, 1.0), 3.0),
        ([1.0, 1.0, 1.0], (1.0, 1.0, 3.0), 3.0),  # the slow worker takes the third task
        ([1.0] * 4, (1.0, 1.0, 3.0), 3.0),  # ... and the fourth goes to a fast one
        ([], (1.0, 1.0), 0.0),
    ]
    for durations, speeds, expected in cases:
        got = ideal(list(durations), speeds)
        assert abs(got - expected) < 1e-9, (list(durations), speeds, got, expected)


# --------------------------------------------------------------------------- measuring

Samples = dict[str, dict[str, list[float]]]  # method -> mix -> seconds, one per repeat


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


class Overdue(Exception):
    """A timed call ran far past its ideal: a hang, not a slow run."""


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`Overdue` in this (the main) thread after ``seconds``."""

    def overdue(*_: object) -> None:
        raise Overdue(f"{what}: still running after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, overdue)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def allowed(durations: Sequence[float]) -> float:
    return 60 + 10 * ideal(durations)


def values_of(results: Sequence[Any]) -> list[Any]:
    """Bare values; fanout's ``TaskResult``s must all be ok."""
    failed = [r for r in results if getattr(r, "ok", True) is False]
    if failed:
        raise RuntimeError(f"{len(failed)} task(s) failed, the first: {failed[0]}")
    return [getattr(r, "value", r) for r in results]


def check(what: str, results: Sequence[Any], durations: Sequence[float]) -> None:
    """Every task came back, ok, with its own value, in input order."""
    got = values_of(results)
    if got != list(durations):
        wrong = next(
            (i for i, (a, b) in enumerate(zip(got, durations, strict=False)) if a != b), None
        )
        raise RuntimeError(
            f"{what}: {len(got)} results for {len(durations)} tasks; first wrong index {wrong}"
        )


def time_mix(what: str, run: Callable[[list[float]], Sequence[Any]], mix: str) -> float:
    durations = MIXES[mix][0]
    with deadline(allowed(durations), f"{what} on {mix}"):
        start = time.perf_counter()
        results = run(durations)
        seconds = time.perf_counter() - start
    check(f"{what} on {mix}", results, durations)
    return seconds


# --------------------------------------------------------------------------- local methods

Runner = Callable[[list[float]], Sequence[Any]]  # durations -> results in input order

FANOUT_MAP = "fanout `Fanout.map`"
FANOUT_POOL = "fanout `Pool.map(chunksize=1)`"
FANOUT_EXECUTOR = "fanout `Executor.map`"
MP_POOL = "`Pool.map(chunksize=1)`"
PPE = "`ProcessPoolExecutor.map`"
FANOUT_LOCAL = (FANOUT_MAP, FANOUT_POOL, FANOUT_EXECUTOR)


@contextlib.contextmanager
def open_fanout() -> Iterator[Runner]:
    with fanout.Fanout(workers=WORKERS) as fo:
        yield lambda items: list(fo.map(nap, items))


@contextlib.contextmanager
def open_fanout_pool() -> Iterator[Runner]:
    with fanout.Pool(WORKERS) as pool:
        yield lambda items: pool.map(nap, items, chunksize=1)


@contextlib.contextmanager
def open_fanout_executor() -> Iterator[Runner]:
    with fanout.Executor(WORKERS) as executor:
        yield lambda items: list(executor.map(nap, items))


@contextlib.contextmanager
def open_mp_pool() -> Iterator[Runner]:
    with multiprocessing.Pool(WORKERS) as pool:
        yield lambda items: pool.map(nap, items, chunksize=1)


@contextlib.contextmanager
def open_executor() -> Iterator[Runner]:
    with ProcessPoolExecutor(WORKERS) as executor:
        yield lambda items: list(executor.map(nap, items))


LOCAL_METHODS: dict[str, Callable[[], contextlib.AbstractContextManager[Runner]]] = {
    FANOUT_MAP: open_fanout,
    FANOUT_POOL: open_fanout_pool,
    FANOUT_EXECUTOR: open_fanout_executor,
    MP_POOL: open_mp_pool,
    PPE: open_executor,
}
GROUPS = {"local": (FANOUT_MAP, MP_POOL, PPE), "dropin": (FANOUT_POOL, FANOUT_EXECUTOR, MP_POOL)}


def on_warm_pool(name: str, mixes: Sequence[str]) -> dict[str, float]:
    """Start one pool of ``name``, warm it up, time every mix on it; seconds per mix."""
    with LOCAL_METHODS[name]() as run:
        check(f"{name} warm-up", run(WARMUP), WARMUP)
        return {mix: time_mix(name, run, mix) for mix in mixes}


def rotated(names: Sequence[str], repeat: int) -> list[str]:
    shift = repeat % len(names)
    return [*names[shift:], *names[:shift]]


def measure_local(methods: Sequence[str], mixes: Sequence[str], repeats: int) -> Samples:
    samples: Samples = {name: {mix: [] for mix in mixes} for name in methods}
    for repeat in range(repeats):
        for name in rotated(methods, repeat):
            progress(f"local: repeat {repeat + 1}/{repeats}, {name}")
            for mix, seconds in on_warm_pool(name, mixes).items():
                samples[name][mix].append(seconds)
    return samples


# --------------------------------------------------------------------------- rq


def worker_env(url: str, **extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, FANOUT_REDIS_URL=url, PYTHONPATH=path, **extra)


@contextlib.contextmanager
def rq_workers(url: str, tmp: Path, slowdowns: Sequence[float]) -> Iterator[dict[str, Any]]:
    """One ``fanout worker`` per slowdown on a queue of their own, each started with
    ``FANOUT_BENCH_SLOWDOWN`` set to it, ready and warm; yields ``fanout.run``'s options."""
    queue = f"uneven-{uuid.uuid4().hex[:8]}"
    log = tmp / f"{queue}.log"
    options = {"backend": "rq", "redis_url": url, "queue": queue}
    with contextlib.ExitStack() as stack:
        for n, slowdown in enumerate(slowdowns, 1):
            command = [sys.executable, "-m", "fanout", "worker", "--queue", queue]
            command += ["--name", f"{queue}-{n}", "--quiet"]
            env = worker_env(url, FANOUT_BENCH_SLOWDOWN=f"{slowdown:g}")
            stack.enter_context(processes([command], log, cwd=BENCH_DIR, env=env))

        def all_serving() -> bool:
            from redis import Redis
            from rq import Queue, Worker

            with Redis.from_url(url) as connection:
                return len(Worker.all(queue=Queue(queue, connection=connection))) >= len(slowdowns)

        wait_until(all_serving, f"{len(slowdowns)} fanout workers", log)
        # Warm-up: enough quick tasks that every worker has imported and run one.
        warm = [0.01] * (4 * len(slowdowns))
        with deadline(60, "rq warm-up"):
            check("rq warm-up", fanout.run("bench_tasks:nap", warm, **options), warm)
        yield options


def measure_rq(
    url: str, tmp: Path, slowdowns: Sequence[float], mixes: Sequence[str], repeats: int
) -> dict[str, list[float]]:
    """Seconds per mix of ``fanout.run(..., backend="rq")``, one sample per repeat."""
    samples: dict[str, list[float]] = {mix: [] for mix in mixes}
    slow = any(s != 1 for s in slowdowns)
    target, case = ("bench_tasks:nap_on_host", "slowhost") if slow else ("bench_tasks:nap", "rq")
    with rq_workers(url, tmp, slowdowns) as options:

        def run(items: list[float]) -> list[Any]:
            return fanout.run(target, items, **options)

        for repeat in range(repeats):
            progress(f"{case}: repeat {repeat + 1}/{repeats}")
            for mix in rotated(mixes, repeat):
                samples[mix].append(time_mix(case, run, mix))
    return samples


# --------------------------------------------------------------------------- latency

FO_SUBMIT, FO_APPLY = "fanout `Executor.submit`", "fanout `Pool.apply_async`"
PPE_SUBMIT, MP_APPLY = "`ProcessPoolExecutor.submit`", "`multiprocessing.Pool.apply_async`"


def behind_busy_worker(submit: Callable[..., Callable[[], Any]], tmp: Path) -> float:
    """Seconds until ten 10 ms tasks are done, submitted once a 2 s task has started.
    ``submit(fn, *args)`` returns a function that waits for that task's value."""
    marker = tmp / f"started-{uuid.uuid4().hex[:8]}"
    with deadline(60, "latency"):
        long_task = submit(mark_and_nap, LONG_TASK, str(marker))
        while not marker.exists():
            time.sleep(0.001)
        start = time.perf_counter()
        waits = [submit(nap, QUICK_TASK) for _ in range(QUICK_TASKS)]
        values = [wait() for wait in waits]
        seconds = time.perf_counter() - start
        if values != [QUICK_TASK] * QUICK_TASKS or long_task() != LONG_TASK:
            raise RuntimeError(f"latency: wrong values {values}")
    return seconds


def executor_latency(make: Callable[[int], Any], tmp: Path) -> float:
    with make(WORKERS) as executor:
        check("warm-up", list(executor.map(nap, WARMUP)), WARMUP)
        return behind_busy_worker(lambda fn, *args: executor.submit(fn, *args).result, tmp)


def pool_latency(make: Callable[[int], Any], tmp: Path) -> float:
    with make(WORKERS) as pool:
        check("warm-up", pool.map(nap, WARMUP), WARMUP)
        return behind_busy_worker(lambda fn, *args: pool.apply_async(fn, args).get, tmp)


LATENCY_METHODS: dict[str, Callable[[Path], float]] = {
    FO_SUBMIT: lambda tmp: executor_latency(fanout.Executor, tmp),
    FO_APPLY: lambda tmp: pool_latency(fanout.Pool, tmp),
    PPE_SUBMIT: lambda tmp: executor_latency(ProcessPoolExecutor, tmp),
    MP_APPLY: lambda tmp: pool_latency(multiprocessing.Pool, tmp),
}


def measure_latency(repeats: int, tmp: Path) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in LATENCY_METHODS}
    for repeat in range(repeats):
        progress(f"latency: repeat {repeat + 1}/{repeats}")
        for name in rotated(list(LATENCY_METHODS), repeat):
            samples[name].append(LATENCY_METHODS[name](tmp))
    return {name: statistics.median(s) for name, s in samples.items()}


# --------------------------------------------------------------------------- targets


def local_limit(ideal_s: float) -> float:
    return 1.08 * ideal_s + 0.15


def rq_limit(ideal_s: float) -> float:
    return 1.15 * ideal_s + 0.5


def slow_limit(ideal_s: float) -> float:
    return 1.2 * ideal_s + 0.5


POOL_FACTOR, LATENCY_FACTOR, LATENCY_FLOOR = 1.05, 2.5, 0.5


def mark(met: bool) -> str:
    return "✓" if met else "✗"


# --------------------------------------------------------------------------- tables


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {mix: statistics.median(s) for mix, s in samples.items() if s}


def row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def header(cells: Sequence[str], text: int = 1) -> list[str]:
    """A header row; the first ``text`` columns left-aligned, the others (figures) right."""
    return [row(cells), "|---" * text + "|---:" * (len(cells) - text) + "|"]


def mixes_table(mixes: Sequence[str]) -> list[str]:
    lines = [
        "### The mixes (durations in input order)",
        "",
        *header(
            ["mix", "made as", "tasks", "work", "ideal, 2 workers", "ideal, speeds 1, 1, 3"], 2
        ),
    ]
    for mix in mixes:
        durations, made = MIXES[mix]
        lines.append(
            row(
                [
                    mix,
                    made,
                    f"{len(durations):,}",
                    f"{sum(durations):.2f} s",
                    f"{ideal(durations):.2f} s",
                    f"{ideal(durations, SLOW_SPEEDS):.2f} s",
                ]
            )
        )
    return [*lines, ""]


def local_tables(found: dict[str, dict[str, float]], mixes: Sequence[str]) -> list[str]:
    """Wall ÷ ideal per method and mix (fanout's rows marked against the ideal target),
    then fanout ÷ ``Pool(chunksize=1)`` marked against its target."""
    methods = list(found)
    lines = [
        f"### Local, {WORKERS} workers: wall ÷ ideal in-order (wall in seconds)",
        "",
        *header(["mix", "ideal", *methods]),
    ]
    for mix in mixes:
        best = ideal(MIXES[mix][0])
        cells = [mix, f"{best:.2f} s"]
        for name in methods:
            wall = found[name][mix]
            cell = f"{wall / best:.2f} ({wall:.2f} s)"
            if name in FANOUT_LOCAL:
                cell += f" {mark(wall <= local_limit(best))}"
            cells.append(cell)
        lines.append(row(cells))
    lines += [
        "",
        "✓/✗: wall ≤ 1.08 x ideal + 0.15 s (fanout's rows only).",
        "",
    ]
    ours = [name for name in methods if name in FANOUT_LOCAL]
    if ours and MP_POOL in found:
        lines += [f"### Local: fanout ÷ {MP_POOL}, same run (target ≤ {POOL_FACTOR})", ""]
        lines += header(["mix", *ours])
        for mix in mixes:
            theirs = found[MP_POOL][mix]
            cells = [mix]
            for name in ours:
                r = found[name][mix] / theirs
                cells.append(f"{r:.2f} {mark(r <= POOL_FACTOR)}")
            lines.append(row(cells))
        lines.append("")
    return lines


def rq_table(
    rq: dict[str, float] | None, slow: dict[str, float] | None, mixes: Sequence[str]
) -> list[str]:
    cols = ["mix"]
    if rq is not None:
        cols += ["ideal, 2 workers", "rq, 2 `fanout worker`", "÷ ideal", "≤ 1.15 x ideal + 0.5 s"]
    if slow is not None:
        cols += ["ideal, speeds 1, 1, 3", "rq, 3 workers, one 3x slower", "÷ ideal"]
        cols += ["≤ 1.2 x ideal + 0.5 s"]
    lines = ["### RQ: `fanout.run(..., backend='rq')`, wall (seconds) ÷ ideal", "", *header(cols)]
    for mix in mixes:
        cells = [mix]
        for found, speeds, limit in ((rq, None, rq_limit), (slow, SLOW_SPEEDS, slow_limit)):
            if found is None:
                continue
            best = ideal(MIXES[mix][0], speeds or (1.0,) * WORKERS)
            wall = found[mix]
            cells += [f"{best:.2f} s", f"{wall:.2f} s", f"{wall / best:.2f}"]
            cells.append(f"{limit(best):.2f} s {mark(wall <= limit(best))}")
        lines.append(row(cells))
    return [*lines, ""]


def latency_table(found: dict[str, float]) -> list[str]:
    theirs = found[PPE_SUBMIT]
    limit = max(LATENCY_FACTOR * theirs, LATENCY_FLOOR)
    lines = [
        f"### Latency behind one busy worker: {QUICK_TASKS} x {QUICK_TASK * 1e3:g} ms tasks "
        f"submitted while a {LONG_TASK:g} s task runs, {WORKERS} workers",
        "",
        *header(["method", "until all ten done", f"÷ {PPE_SUBMIT}", "target"]),
    ]
    for name, seconds in found.items():
        target = mark(seconds <= limit) if name in (FO_SUBMIT, FO_APPLY) else ""
        lines.append(row([name, f"{seconds:.3f} s", f"{seconds / theirs:.2f}", target]))
    ideal_s = QUICK_TASKS * QUICK_TASK
    lines += [
        "",
        f"Target: ≤ {LATENCY_FACTOR} x {PPE_SUBMIT} or ≤ {LATENCY_FLOOR} s (here "
        f"{limit:.2f} s). Ideal: {ideal_s:.2f} s (all ten on the free worker).",
        "",
    ]
    return lines


# --------------------------------------------------------------------------- plot


def plot(
    local: dict[str, dict[str, float]],
    rq: dict[str, float] | None,
    slow: dict[str, float] | None,
    latency: dict[str, float] | None,
    mixes: Sequence[str],
    path: Path,
) -> str:
    """Bars of wall ÷ ideal, one group per mix (with each group's target limits), and the
    latency case beside; what was done, for the report."""
    try:
        import matplotlib
    except ImportError:
        return "plot skipped: pip install matplotlib"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Limit = Callable[[float], float] | None
    series: dict[str, tuple[dict[str, float], tuple[float, ...], Limit]] = {
        name: (walls, (1.0,) * WORKERS, local_limit if name in FANOUT_LOCAL else None)
        for name, walls in local.items()
    }
    if rq is not None:
        series["fanout on rq, 2 workers"] = (rq, (1.0,) * WORKERS, rq_limit)
    if slow is not None:
        series["fanout on rq, 3 workers, one 3x slower"] = (slow, SLOW_SPEEDS, slow_limit)
    wide = latency is not None
    fig, axes = plt.subplots(
        1, 2 if wide else 1, figsize=(15 if wide else 12, 5.5), squeeze=False,
        gridspec_kw={"width_ratios": [4, 1]} if wide else None,
    )  # fmt: skip
    ax = axes[0][0]
    width = 0.8 / max(1, len(series))
    top = 1.0
    for k, (name, (walls, speeds, limit)) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(mixes))]
        bests = [ideal(MIXES[m][0], speeds) for m in mixes]
        ys = [walls[m] / b for m, b in zip(mixes, bests, strict=True)]
        top = max(top, *ys)
        ax.bar(xs, ys, width, label=name.replace("`", ""))
        if limit is not None:  # the target, a tick across the bar
            for x, best in zip(xs, bests, strict=True):
                ax.plot([x - width / 2, x + width / 2], [limit(best) / best] * 2, "k-", lw=1.5)
    ax.plot([], [], "k-", lw=1.5, label="target: a bar must stay below its tick")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set(
        xticks=range(len(mixes)),
        ylabel="wall ÷ ideal in-order schedule (lower is better; 1 = ideal)",
        title=f"Uneven sleep tasks, {WORKERS} workers (median)",
    )
    ax.set_xticklabels(mixes, rotation=20, ha="right")
    ax.set_ylim(0, 1.35 * top)  # room for the legend above the bars
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    if latency is not None:
        lat = axes[0][1]
        names = list(latency)
        colors = ["tab:blue" if n in (FO_SUBMIT, FO_APPLY) else "tab:grey" for n in names]
        lat.bar(range(len(names)), [latency[n] for n in names], color=colors)
        limit = max(LATENCY_FACTOR * latency[PPE_SUBMIT], LATENCY_FLOOR)
        lat.axhline(limit, color="black", ls="--", lw=1, label="target for fanout")
        lat.axhline(QUICK_TASKS * QUICK_TASK, color="black", lw=0.8, label="ideal")
        lat.set(
            xticks=range(len(names)),
            ylabel="seconds until all ten done",
            title=f"{QUICK_TASKS} x {QUICK_TASK * 1e3:g} ms behind a busy worker",
        )
        lat.set_xticklabels([n.replace("`", "") for n in names], rotation=30, ha="right",
                            fontsize=7)  # fmt: skip
        lat.legend(fontsize=7)
        lat.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return f"plot: {shown}"


# --------------------------------------------------------------------------- main


@dataclass(frozen=True)
class Config:
    quick: bool
    repeats: int
    latency_repeats: int
    mixes: tuple[str, ...]


FULL = Config(quick=False, repeats=3, latency_repeats=5, mixes=tuple(MIXES))
QUICK = Config(quick=True, repeats=1, latency_repeats=1, mixes=QUICK_MIXES)
CASES = ("local", "dropin", "rq", "slowhost", "latency")


def source() -> str:
    """Which fanout runs: this checkout's commit (and whether fanout/ has changes on top),
    or the directory it was imported from when that is not this checkout."""
    where = Path(fanout.__file__).resolve().parent
    if where != ROOT / "fanout":
        return f"imported from {where}"
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "fanout"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return f"{git or '?'}{' + uncommitted changes in fanout/' if dirty else ''}"


def about(cfg: Config, cases: Sequence[str]) -> list[str]:
    return [
        "## Uneven work",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; mode: "
        f"{'--quick' if cfg.quick else 'full'}; {cfg.repeats} repeat(s) "
        f"(latency: {cfg.latency_repeats}), medians; cases: {', '.join(cases)}",
        f"- machine: {os.cpu_count()} CPUs, load average at start "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; Python {platform.python_version()}; "
        f"fanout {fanout.__version__} ({source()})",
        "",
    ]


def run_cases(cfg: Config, cases: Sequence[str], tmp: Path) -> tuple[list[str], dict[str, Any]]:
    mixes = list(cfg.mixes)
    found: dict[str, Any] = {"local": {}, "rq": None, "slow": None, "latency": None}
    lines = mixes_table(mixes) if set(cases) - {"latency"} else []
    print("\n".join(lines), flush=True)
    methods = [m for m in LOCAL_METHODS if any(m in GROUPS[g] for g in cases if g in GROUPS)]
    if methods:
        samples = measure_local(methods, mixes, cfg.repeats)
        found["local"] = {name: medians(per_mix) for name, per_mix in samples.items()}
        more = local_tables(found["local"], mixes)
        print("\n".join(more), flush=True)
        lines += more
    if "rq" in cases or "slowhost" in cases:
        if shutil.which("redis-server") is None:
            more = ["### RQ", "", "skipped: no redis-server on PATH", ""]
        else:
            with redis_server(tmp) as url:
                if "rq" in cases:
                    found["rq"] = medians(measure_rq(url, tmp, [1, 1], mixes, cfg.repeats))
                if "slowhost" in cases:
                    slowdowns = [1, 1, 3]
                    found["slow"] = medians(measure_rq(url, tmp, slowdowns, mixes, cfg.repeats))
            more = rq_table(found["rq"], found["slow"], mixes)
        print("\n".join(more), flush=True)
        lines += more
    if "latency" in cases:
        found["latency"] = measure_latency(cfg.latency_repeats, tmp)
        more = latency_table(found["latency"])
        print("\n".join(more), flush=True)
        lines += more
    return lines, found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{len(QUICK_MIXES)} mixes, 1 repeat (~2 min)"
    )
    parser.add_argument("--repeats", type=int, help="override the repeats (full: 3)")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument(
        "--plot",
        type=Path,
        help=f"write the plot here (default: a full run writes {PLOT.relative_to(ROOT)}, "
        "--quick none)",
    )
    parser.add_argument(
        "--only", default=",".join(CASES), help=f"comma-separated cases: {','.join(CASES)}"
    )
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.only.split(",") if c.strip()]
    if unknown := sorted(set(cases) - set(CASES)):
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    cfg = QUICK if args.quick else FULL
    if args.repeats:
        cfg = Config(cfg.quick, args.repeats, args.repeats, cfg.mixes)
    check_ideal()
    # SIGTERM unwinds like Ctrl-C, so every `finally` stops what it started; forked pool
    # workers must not inherit that.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    started = time.monotonic()
    body = about(cfg, cases)
    print("\n".join(body), flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="fanout-uneven-") as tmp:
            lines, found = run_cases(cfg, cases, Path(tmp))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    body += lines
    path = args.plot or (None if cfg.quick else PLOT)
    note = "plot: none (--plot FILE.png)"
    if path is not None:
        note = plot(found["local"], found["rq"], found["slow"], found["latency"], cfg.mixes, path)
    tail = [f"Whole run: {time.monotonic() - started:.0f} s; {note}.", ""]
    print("\n".join(tail), flush=True)
    body += tail
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(body))
        print(f"written: {args.out}", flush=True)
    elif not cfg.quick and set(cases) == set(CASES):
        write_doc(body[1:])  # the doc has a heading of its own
    return 0


def write_doc(lines: list[str]) -> None:
    """A full run's tables go into docs/benchmarks.md, between the uneven markers."""
    text = DOC.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{BEGIN}\n" + "\n".join(lines).strip() + f"\n{END}{tail}")
    print(f"written: {DOC.relative_to(ROOT)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
