"""fanout against its peers, side by side in one run: ``python benchmarks/compare.py [--quick]``.

Every case runs each method once per repeat, in an order that rotates from one repeat
to the next (so slow drift of a noisy machine spreads over all methods), and reports
medians. Ratios are always **fanout ÷ peer** of the figure in that column: above 1
means fanout's figure is the larger one (better for tasks/s, worse for seconds or MB).

- Local throughput, "warm": pools are started and warmed up (a few tasks of the same
  function) before the timed map, so pool start is left out. "cold" (trivial tasks): the
  pool's whole life (start, map, stop) in a fresh interpreter, modules imported first.
- RQ: a ``redis-server`` of our own on a free port; for each method two workers are
  started as subprocesses, warmed up, timed, and stopped again.
- The full run writes its tables to ``docs/benchmarks.md`` (between the result
  markers) and the plot to ``docs/benchmarks.png``; ``--quick`` only prints (or writes
  to ``--out``), with its plot in a temporary directory.

joblib, mpire, Celery, Dask distributed and matplotlib are optional: ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import socket
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

import peers
from bench_tasks import inc, nap, spin

import fanout

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DOC = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "benchmarks.png"
BEGIN, END = "<!-- results: begin -->", "<!-- results: end -->"

WORKERS = 2
WARMUP_TASKS = 2 * WORKERS
CHUNKSIZE = 256
OPTIONAL = "pip install joblib mpire"
# Row names that targets and ratios refer to (FANOUT: the reference of the local tables).
FANOUT, IMAP = "fanout `Fanout.map`", "`Pool.imap_unordered(256)`"
JOBLIB, MPIRE = "joblib `Parallel(n_jobs=2)`", "mpire `WorkerPool.map`"
FANOUT_LATENCY, POOL_LATENCY = "fanout `fanout.run(f, [1])`", "`Pool(2).map(f, [1])`"
FANOUT_STREAM = "fanout `Fanout.map(ordered=False)` over a generator"
RQ_FANOUT, RQ_STOCK = "fanout (2 x `fanout worker`)", "stock `rq worker` (fork per job)"

Metrics = dict[str, float]  # metric -> value, or its median over the repeats


@dataclass(frozen=True)
class Config:
    quick: bool
    repeats: int
    trivial_sizes: tuple[int, ...]
    durations: tuple[float, ...]  # CPU-bound task durations of the sweep (includes CPU_TASK)
    cpu_tasks: int
    latency_repeats: int
    import_repeats: int
    stream_items: int
    rq_fanout_tasks: int
    rq_stock_tasks: int
    rq_sleep_tasks: int
    peer_tasks: int  # trivial tasks for the Celery and Dask rows


FULL = Config(
    quick=False,
    repeats=5,
    trivial_sizes=(20_000, 200_000),
    durations=(0.001, 0.01, 0.02, 0.05),
    cpu_tasks=40,
    latency_repeats=15,
    import_repeats=10,
    stream_items=1_000_000,
    rq_fanout_tasks=20_000,
    rq_stock_tasks=2_000,
    rq_sleep_tasks=400,
    peer_tasks=5_000,
)
QUICK = Config(
    quick=True,
    repeats=1,
    trivial_sizes=(2_000,),
    durations=(0.001, 0.02),
    cpu_tasks=20,
    latency_repeats=5,
    import_repeats=5,
    stream_items=100_000,
    rq_fanout_tasks=2_000,
    rq_stock_tasks=300,
    rq_sleep_tasks=100,
    peer_tasks=500,
)
CPU_TASK = 0.02  # the "CPU-bound 20 ms tasks" case
RQ_SLEEP = 0.01  # the RQ "10 ms tasks" case (sleeping: remote workers have cores of their own)


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- measuring


def measure(
    case: str, methods: dict[str, Callable[[], Metrics]], repeats: int
) -> dict[str, Metrics]:
    """Run every method once per repeat, rotating the order; the median of each metric."""
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in methods}
    names = list(methods)
    for repeat in range(repeats):
        shift = repeat % len(names)
        progress(f"{case}: repeat {repeat + 1}/{repeats}")
        for name in names[shift:] + names[:shift]:
            for metric, value in methods[name]().items():
                samples[name].setdefault(metric, []).append(value)
    return {
        name: {metric: statistics.median(values) for metric, values in metrics.items()}
        for name, metrics in samples.items()
    }


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = action()
    return time.perf_counter() - start, value


def check(results: Sequence[Any], expected: int) -> None:
    """Every task came back, and none failed (fanout reports failures as results)."""
    failed = [r for r in results if getattr(r, "ok", True) is False]
    if len(results) != expected or failed:
        raise RuntimeError(f"{len(results)} results for {expected} tasks; failed: {failed[:1]}")


# --------------------------------------------------------------------------- local methods

Runner = Callable[[Callable[[Any], Any], list[Any]], Sequence[Any]]


@contextlib.contextmanager
def open_fanout(ordered: bool = True) -> Iterator[Runner]:
    with fanout.Fanout(workers=WORKERS) as fo:
        yield lambda fn, items: list(fo.map(fn, items, ordered=ordered))


@contextlib.contextmanager
def open_pool_map() -> Iterator[Runner]:
    with multiprocessing.Pool(WORKERS) as pool:
        yield pool.map


@contextlib.contextmanager
def open_imap_unordered() -> Iterator[Runner]:
    with multiprocessing.Pool(WORKERS) as pool:
        yield lambda fn, items: list(pool.imap_unordered(fn, items, chunksize=CHUNKSIZE))


@contextlib.contextmanager
def open_executor(chunksize: int) -> Iterator[Runner]:
    with ProcessPoolExecutor(WORKERS) as executor:
        yield lambda fn, items: list(executor.map(fn, items, chunksize=chunksize))


@contextlib.contextmanager
def open_joblib() -> Iterator[Runner]:
    from joblib import Parallel, delayed  # loky workers are reused from one call to the next

    yield lambda fn, items: Parallel(n_jobs=WORKERS)(delayed(fn)(x) for x in items)


@contextlib.contextmanager
def open_mpire() -> Iterator[Runner]:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=WORKERS, keep_alive=True) as pool:
        yield pool.map


@contextlib.contextmanager
def open_serial() -> Iterator[Runner]:
    yield lambda fn, items: [fn(x) for x in items]


@dataclass(frozen=True)
class LocalMethod:
    name: str
    open: Callable[[], contextlib.AbstractContextManager[Runner]]
    needs: str | None = None  # an optional module
    max_tasks: int | None = None  # larger workloads are not run (too slow to repeat)

    @property
    def available(self) -> bool:
        return self.needs is None or importlib.util.find_spec(self.needs) is not None


LOCAL_METHODS = [
    LocalMethod(FANOUT, open_fanout),
    LocalMethod("fanout `Fanout.map(ordered=False)`", lambda: open_fanout(ordered=False)),
    LocalMethod("`Pool.map`", open_pool_map),
    LocalMethod(IMAP, open_imap_unordered),
    LocalMethod("`ProcessPoolExecutor.map(chunksize=1)`", lambda: open_executor(1), None, 20_000),
    LocalMethod("`ProcessPoolExecutor.map(chunksize=256)`", lambda: open_executor(CHUNKSIZE)),
    LocalMethod(JOBLIB, open_joblib, "joblib"),
    LocalMethod(MPIRE, open_mpire, "mpire"),
]
SERIAL = LocalMethod("serial (a loop in the caller)", open_serial)

Workloads = dict[str, tuple[Callable[[Any], Any], list[Any]]]  # metric -> (task, items)


def fits(method: LocalMethod, items: list[Any]) -> bool:
    return method.max_tasks is None or len(items) <= method.max_tasks


def local_rates(method: LocalMethod, workloads: Workloads) -> Metrics:
    """Tasks/s of each workload on one warm pool of ``method``."""
    rates = {}
    with method.open() as run:
        for metric, (fn, items) in workloads.items():
            if not fits(method, items):
                continue
            run(fn, items[:WARMUP_TASKS])
            seconds, results = timed(lambda fn=fn, items=items: run(fn, items))
            check(results, len(items))
            rates[metric] = len(items) / seconds
    return rates


def cold_run(name: str, n: int) -> float:
    """Seconds of a pool's whole life (start, map ``n`` trivial tasks, stop). Run by
    :func:`cold_rate` in a fresh interpreter (``--cold-run``), with modules imported."""
    method = next(m for m in LOCAL_METHODS if m.name == name)
    if method.needs:
        importlib.import_module(method.needs)
    items = list(range(n))

    def whole_life() -> Sequence[Any]:
        with method.open() as run:
            return run(inc, items)

    seconds, results = timed(whole_life)
    check(results, n)
    return seconds


def cold_rate(method: LocalMethod, n: int) -> float:
    command = [sys.executable, __file__, "--cold-run", method.name, str(n)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return n / float(out)


def measure_local(
    case: str, methods: list[LocalMethod], workloads: Workloads, repeats: int
) -> dict[str, Metrics]:
    runnable = {m.name: (lambda m=m: local_rates(m, workloads)) for m in methods if m.available}
    return measure(case, runnable, repeats)


# --------------------------------------------------------------------------- report tables


@dataclass(frozen=True)
class Column:
    metric: str
    header: str
    fmt: Callable[[float], str]
    ratio: bool = True  # followed by a "fanout ÷ peer" column


def rate(v: float) -> str:
    return f"{v:,.0f}"


def ms(v: float) -> str:
    return f"{v * 1e3:.1f} ms"


def ratio(reference: float | None, value: float | None) -> str:
    return f"{reference / value:.2f}" if reference and value else ""


def table(
    title: str,
    medians: dict[str, Metrics],
    columns: list[Column],
    reference: str = FANOUT,
    skipped: Sequence[str] = (),
    note: str = "",
) -> list[str]:
    """A markdown table: one row per method, each column's median then fanout ÷ peer."""
    headers = ["method"]
    for column in columns:
        headers += [column.header, "fanout ÷ peer"] if column.ratio else [column.header]
    lines = [f"### {title}", "", "| " + " | ".join(headers) + " |", "|---" * len(headers) + "|"]
    ref = medians.get(reference, {})
    for name, metrics in medians.items():
        cells = [name]
        for column in columns:
            value = metrics.get(column.metric)
            cells.append("not run" if value is None else column.fmt(value))
            if column.ratio:
                cells.append(ratio(ref.get(column.metric), value))
        lines.append("| " + " | ".join(cells) + " |")
    for name in skipped:
        cells = [name, f"skipped: {OPTIONAL}"] + [""] * (len(headers) - 2)
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, *([f"\n{note}"] if note else []), ""]


def skipped_names(methods: list[LocalMethod]) -> list[str]:
    return [m.name for m in methods if not m.available]


# --------------------------------------------------------------------------- local cases


def trivial_rates(method: LocalMethod, workloads: Workloads) -> Metrics:
    rates = local_rates(method, workloads)
    for metric, (_, items) in workloads.items():
        if fits(method, items):
            rates[f"{metric} cold"] = cold_rate(method, len(items))
    return rates


def case_trivial(cfg: Config, found: dict[str, Any]) -> list[str]:
    workloads: Workloads = {f"{n:,}": (inc, list(range(n))) for n in cfg.trivial_sizes}
    methods = {
        m.name: (lambda m=m: trivial_rates(m, workloads)) for m in LOCAL_METHODS if m.available
    }
    medians = measure("trivial tasks", methods, cfg.repeats)
    found["trivial"] = medians
    columns = []
    for metric in workloads:
        columns += [Column(metric, f"{metric} warm", rate), Column(f"{metric} cold", "cold", rate)]
    return table(
        f"Local, trivial `f(x) = x + 1`, {WORKERS} workers: tasks/s (higher is better)",
        medians,
        columns,
        skipped=skipped_names(LOCAL_METHODS),
        note="warm: pools started and warmed up before the timed map; cold: start, map and "
        "stop of a pool in a fresh interpreter (imports done). fanout returns a full "
        "`TaskResult` per task; the peers return bare values. "
        "`ProcessPoolExecutor.map(chunksize=1)` is not run above 20,000 tasks (too slow).",
    )


def sweep_metric(duration: float) -> str:
    return f"{duration * 1e3:g} ms"


def case_sweep(cfg: Config, found: dict[str, Any]) -> list[str]:
    """CPU-bound tasks of several durations: tasks/s, and speed-up over a serial loop."""
    workloads: Workloads = {
        sweep_metric(d): (spin, [d] * (cfg.cpu_tasks if d == CPU_TASK else max(40, int(0.5 / d))))
        for d in cfg.durations
    }
    medians = measure_local("CPU-bound tasks", [*LOCAL_METHODS, SERIAL], workloads, cfg.repeats)
    found["sweep"] = medians
    cpu = sweep_metric(CPU_TASK)
    serial = medians[SERIAL.name][cpu]
    speedups = {name: {"speed-up": m[cpu] / serial} for name, m in medians.items() if cpu in m}
    found["speedup"] = speedups
    return [
        *table(
            f"Local, CPU-bound {cpu} tasks ({cfg.cpu_tasks} tasks), {WORKERS} workers: "
            "speed-up over serial (higher is better; ideal 2.00)",
            speedups,
            [Column("speed-up", "speed-up", lambda v: f"{v:.2f}x")],
            skipped=skipped_names(LOCAL_METHODS),
        ),
        *table(
            f"Local, CPU-bound tasks by duration, {WORKERS} workers: tasks/s "
            f"(higher is better; ideal {WORKERS} / duration)",
            medians,
            [Column(metric, metric, rate) for metric in workloads],
            skipped=skipped_names(LOCAL_METHODS),
            note="Tasks keep one core busy for the given time (`bench_tasks.spin`); each "
            "duration runs max(40, 0.5 s / duration) tasks.",
        ),
    ]


def latency_fanout() -> Metrics:
    seconds, results = timed(lambda: fanout.run(inc, [1], workers=WORKERS))
    check(results, 1)
    return {"seconds": seconds}


def latency_pool() -> Metrics:
    def one() -> list[int]:
        with multiprocessing.Pool(WORKERS) as pool:
            return pool.map(inc, [1])

    return {"seconds": timed(one)[0]}


def latency_executor() -> Metrics:
    def one() -> list[int]:
        with ProcessPoolExecutor(WORKERS) as executor:
            return list(executor.map(inc, [1]))

    return {"seconds": timed(one)[0]}


def case_latency(cfg: Config, found: dict[str, Any]) -> list[str]:
    methods = {
        FANOUT_LATENCY: latency_fanout,
        POOL_LATENCY: latency_pool,
        "`ProcessPoolExecutor(2).map(f, [1])`": latency_executor,
    }
    for method in methods.values():  # a warm interpreter: imports done, caches filled
        method()
    medians = measure("one-task latency", methods, cfg.latency_repeats)
    found["latency"] = medians
    return table(
        "Local, one task end to end, pool start and stop included: seconds (lower is better)",
        medians,
        [Column("seconds", "median", ms)],
        reference=FANOUT_LATENCY,
        note=f"Median of {cfg.latency_repeats}, from a warm interpreter.",
    )


def python_seconds(code: str) -> Metrics:
    seconds, _ = timed(lambda: subprocess.run([sys.executable, "-c", code], check=True))
    return {"seconds": seconds}


def import_breakdown(module: str, top: int = 6) -> str:
    """What ``import module`` spends its time on (``python -X importtime``): the slowest
    modules it imports from outside its own package, cumulative."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    # importtime lists a module's imports before it, each level indented two more spaces.
    children: dict[str, list[tuple[int, str]]] = {}
    pending: dict[int, list[tuple[int, str]]] = {}
    total = 0
    for us, indent, name in re.findall(r"import time:\s+\d+ \|\s+(\d+) \|( +)(\S+)", err):
        children[name] = pending.pop(len(indent) + 2, [])
        pending.setdefault(len(indent), []).append((int(us), name))
        total = int(us) if name == module else total
    outside, todo = [], [module]
    while todo:
        for us, name in children.get(todo.pop(), []):
            if name.split(".")[0] == module.split(".")[0]:
                todo.append(name)
            else:
                outside.append((us, name))
    parts = ", ".join(f"{name} {us / 1e3:.1f}" for us, name in sorted(outside, reverse=True)[:top])
    return (
        f"`-X importtime`: `import {module}` {total / 1e3:.1f} ms; slowest imports (ms): {parts}."
    )


def case_import(cfg: Config, found: dict[str, Any]) -> list[str]:
    modules = ["fanout", "multiprocessing.pool", "concurrent.futures", "joblib", "mpire"]
    present = [m for m in modules if importlib.util.find_spec(m.split(".")[0])]
    methods = {f"`import {m}`": (lambda m=m: python_seconds(f"import {m}")) for m in present}
    methods["`python -c pass`"] = lambda: python_seconds("pass")
    medians = measure("import time", methods, cfg.import_repeats)
    base = medians.pop("`python -c pass`")["seconds"]
    net = {name: {"seconds": m["seconds"] - base} for name, m in medians.items()}
    found["import"] = net
    return table(
        "`import` time in a fresh interpreter, minus `python -c pass`: seconds (lower is better)",
        net,
        [Column("seconds", "median", ms)],
        reference="`import fanout`",
        skipped=[f"`import {m}`" for m in modules if m not in present],
        note=f"Median of {cfg.import_repeats}; `python -c pass` took {ms(base)}. "
        + import_breakdown("fanout"),
    )


def stream(method: str, items: int) -> Metrics:
    out = subprocess.run(
        [sys.executable, "stream_rss.py", method, str(items)],
        cwd=BENCH_DIR,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    figures = json.loads(out)
    return {
        "peak": figures["peak_mb"],
        "base": figures["base_mb"],
        "rate": items / figures["seconds"],
    }


def case_stream(cfg: Config, found: dict[str, Any]) -> list[str]:
    n = cfg.stream_items
    methods = {
        FANOUT_STREAM: lambda: stream("fanout", n),
        "`Pool.imap_unordered(256)` over a generator": lambda: stream("imap_unordered", n),
        "`ProcessPoolExecutor.map(chunksize=256)`": lambda: stream("executor", n),
    }
    medians = measure("stream peak RSS", methods, cfg.repeats)
    found["stream"] = medians
    mb = Column("peak", "caller peak RSS", lambda v: f"{v:.0f} MB")
    return table(
        f"Local, a {n:,}-item stream of trivial tasks: the caller's peak RSS (lower is better)",
        medians,
        [
            mb,
            Column("base", "before streaming", lambda v: f"{v:.0f} MB", False),
            Column("rate", "tasks/s (incl. start)", rate),
        ],
        reference=FANOUT_STREAM,
        note="Each run in a fresh process (`benchmarks/stream_rss.py`); the caller's own "
        "peak RSS (`VmHWM`), workers not counted.",
    )


# --------------------------------------------------------------------------- RQ cases


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def processes(commands: list[list[str]], log: Path, **popen: Any) -> Iterator[list[Any]]:
    """Start ``commands`` (each in a session of its own, output to ``log``); on leaving,
    SIGTERM each process group, then SIGKILL what is left after 10 s."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        with log.open("ab") as out:
            for command in commands:
                started.append(
                    subprocess.Popen(
                        command,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        **popen,
                    )
                )
        yield started
    finally:
        signal_groups(started, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
        signal_groups(started, signal.SIGKILL)  # stragglers: work-horses, pool children
        for process in started:
            process.wait()


def signal_groups(started: list[subprocess.Popen[bytes]], sig: int) -> None:
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)


def wait_until(ready: Callable[[], bool], what: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s; log {log}:\n{tail}")
        time.sleep(0.05)


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--appendonly", "no"]
    command += ["--save", ""]  # nothing on disk
    log = tmp / "redis.log"
    with processes([command], log, cwd=tmp):

        def accepting() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                return True
            return False

        wait_until(accepting, "redis-server", log)
        yield f"redis://127.0.0.1:{port}/0"


def run_fanout_rq(url: str, queue: str, fn: Callable[[Any], Any], items: list[Any]) -> None:
    check(fanout.run(fn, items, backend="rq", redis_url=url, queue=queue), len(items))


def run_stock_rq(url: str, queue: str, fn: Callable[[Any], Any], items: list[Any]) -> None:
    """Enqueue one RQ job per item (pipelined) and poll until all have finished."""
    from redis import Redis
    from rq import Queue

    with Redis.from_url(url) as connection:
        q = Queue(queue, connection=connection)
        finished, failed = q.finished_job_registry, q.failed_job_registry
        goal = finished.get_job_count(cleanup=False) + len(items)
        q.enqueue_many([Queue.prepare_data(fn, (x,)) for x in items])
        deadline = time.monotonic() + 600
        while finished.get_job_count(cleanup=False) < goal:
            if failed.get_job_count(cleanup=False) or time.monotonic() > deadline:
                raise RuntimeError(f"RQ jobs on {queue} failed or did not finish")
            time.sleep(0.05)


RQ_CLI = [sys.executable, "-m", "rq.cli"]
SIMPLE = ["-w", "rq.worker.SimpleWorker"]


@dataclass(frozen=True)
class RQMethod:
    name: str
    workers: Callable[[str, str], list[list[str]]]  # (url, queue) -> worker commands
    run: Callable[[str, str, Callable[[Any], Any], list[Any]], None]
    stock: bool = True  # slow: runs the smaller trivial workload


RQ_METHODS = [
    RQMethod(
        RQ_FANOUT,
        lambda url, q: [
            [sys.executable, "-m", "fanout", "worker", "--name", f"{q}-{i}", "--queue", q]
            for i in (1, 2)
        ],
        run_fanout_rq,
        stock=False,
    ),
    RQMethod(RQ_STOCK, lambda url, q: [[*RQ_CLI, "worker", "-u", url, q]] * 2, run_stock_rq),
    RQMethod(
        "`rq worker -w SimpleWorker`",
        lambda url, q: [[*RQ_CLI, "worker", *SIMPLE, "-u", url, q]] * 2,
        run_stock_rq,
    ),
    RQMethod(
        "`rq worker-pool -n 2 -w SimpleWorker`",
        lambda url, q: [[*RQ_CLI, "worker-pool", "-n", "2", *SIMPLE, "-u", url, q]],
        run_stock_rq,
    ),
]


def rq_rates(
    cfg: Config, method: RQMethod, url: str, tmp: Path, trivial: int | None = None
) -> Metrics:
    """Start two workers for ``method`` on a queue of their own, time both workloads, stop."""
    from redis import Redis
    from rq import Queue, Worker

    queue = f"bench-{uuid.uuid4().hex[:8]}"
    trivial = trivial or (cfg.rq_stock_tasks if method.stock else cfg.rq_fanout_tasks)
    workloads: Workloads = {
        "trivial": (inc, list(range(trivial))),
        "sleep": (nap, [RQ_SLEEP] * cfg.rq_sleep_tasks),
    }
    env = dict(
        os.environ,
        FANOUT_REDIS_URL=url,
        PYTHONPATH=os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")])),
    )
    log = tmp / f"{queue}.log"
    with (
        processes(method.workers(url, queue), log, cwd=BENCH_DIR, env=env),
        Redis.from_url(url) as connection,
    ):
        q = Queue(queue, connection=connection)
        wait_until(lambda: len(Worker.all(queue=q)) >= WORKERS, f"{method.name} workers", log)
        method.run(url, queue, inc, list(range(WARMUP_TASKS)))
        rates = {}
        for metric, (fn, items) in workloads.items():
            seconds, _ = timed(lambda fn=fn, items=items: method.run(url, queue, fn, items))
            rates[metric] = len(items) / seconds
        return rates


def with_ideal(medians: dict[str, Metrics]) -> float:
    """Add each method's 10 ms rate as a share of the ideal WORKERS / RQ_SLEEP; the ideal."""
    ideal = WORKERS / RQ_SLEEP
    for metrics in medians.values():
        metrics["ideal"] = metrics["sleep"] / ideal
    return ideal


def case_rq(cfg: Config, found: dict[str, Any]) -> list[str]:
    title = f"### RQ, {WORKERS} workers"
    missing = [m for m in ("rq", "redis") if importlib.util.find_spec(m) is None]
    if missing or shutil.which("redis-server") is None:
        why = f"pip install {' '.join(missing)}" if missing else "no redis-server on PATH"
        return [title, "", f"skipped: {why}", ""]
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as tmp, redis_server(Path(tmp)) as url:
        methods = {m.name: (lambda m=m: rq_rates(cfg, m, url, Path(tmp))) for m in RQ_METHODS}
        medians = measure("rq", methods, cfg.repeats)
    ideal = with_ideal(medians)
    found["rq"] = medians
    return table(
        f"RQ, {WORKERS} workers on one Redis: tasks/s (higher is better)",
        medians,
        [
            Column("trivial", "trivial `x + 1`", rate),
            Column("sleep", f"{sweep_metric(RQ_SLEEP)} sleep", rate),
            Column("ideal", f"of ideal {ideal:.0f}/s", lambda v: f"{v:.0%}", False),
        ],
        reference=RQ_FANOUT,
        note=f"Trivial tasks: fanout {cfg.rq_fanout_tasks:,}, stock RQ workers "
        f"{cfg.rq_stock_tasks:,} (one RQ job each); {cfg.rq_sleep_tasks} tasks of "
        f"{sweep_metric(RQ_SLEEP)} `time.sleep` for each. Timed from the first enqueue to "
        "the last result (fanout: `fanout.run(..., backend='rq')`; stock workers: "
        "`Queue.enqueue_many`, then the finished registry polled every 50 ms). Worker "
        "start and a warm-up of 4 tasks are not timed.",
    )


PEER_CELERY = "Celery `group(...).apply_async().get()`"
PEER_CELERY_TUNED = f"Celery `task.chunks(items, n / {2 * peers.CHUNKS_PER_WORKER})`"
PEER_DASK = "Dask `client.gather(client.map(...))`"
PEER_DASK_TUNED = "Dask, `worker-saturation: inf`"


def peer_rates(cfg: Config, run: Callable[[str, list[Any]], None]) -> Metrics:
    workloads = {"trivial": ("inc", list(range(cfg.peer_tasks))),
                 "sleep": ("nap", [RQ_SLEEP] * cfg.rq_sleep_tasks)}  # fmt: skip
    rates = {}
    for metric, (task, items) in workloads.items():
        seconds, _ = timed(lambda task=task, items=items: run(task, items))
        rates[metric] = len(items) / seconds
    return rates


def case_peers(cfg: Config, found: dict[str, Any]) -> list[str]:
    """fanout on rq beside Celery and Dask distributed, each with two worker processes."""
    title = f"### Celery and Dask, {WORKERS} workers"
    why = peers.available() or (None if shutil.which("redis-server") else "no redis-server")
    if why:
        return [title, "", f"skipped: {why}", ""]
    medians: dict[str, Metrics] = {}
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as tmp, redis_server(Path(tmp)) as url:
        log = Path(tmp) / "peers.log"
        with contextlib.ExitStack() as stack:
            default, tuned = stack.enter_context(peers.celery(url, processes, log, wait_until))
            dask_default = stack.enter_context(peers.dask(tuned=False))
            runners = {PEER_CELERY: default, PEER_CELERY_TUNED: tuned, PEER_DASK: dask_default}
            ours = next(m for m in RQ_METHODS if m.name == RQ_FANOUT)
            methods = {name: (lambda r=run: peer_rates(cfg, r)) for name, run in runners.items()}
            methods[RQ_FANOUT] = lambda: rq_rates(cfg, ours, url, Path(tmp), cfg.peer_tasks)
            medians = measure("peers", methods, cfg.repeats)
        # Dask's tuning is a setting read when the cluster starts: a cluster of its own.
        with peers.dask(tuned=True) as dask_tuned:
            medians |= measure("peers", {PEER_DASK_TUNED: lambda: peer_rates(cfg, dask_tuned)},
                               cfg.repeats)  # fmt: skip
    ideal = with_ideal(medians)
    found["peers"] = medians
    return table(
        f"Celery and Dask beside fanout on rq, {WORKERS} workers: tasks/s (higher is better)",
        medians,
        [
            Column("trivial", f"{cfg.peer_tasks:,} trivial `x + 1`", rate),
            Column("sleep", f"{cfg.rq_sleep_tasks} x {sweep_metric(RQ_SLEEP)} sleep", rate),
            Column("ideal", f"of ideal {ideal:.0f}/s", lambda v: f"{v:.0%}", False),
        ],
        reference=RQ_FANOUT,
        note="Each started with two worker processes and warmed up outside the timing; "
        "Celery 5 with a Redis broker and result backend (one `celery worker --concurrency "
        "2`, prefork), Dask distributed on a `LocalCluster(n_workers=2, threads_per_worker=1)`, "
        "fanout with two `fanout worker`s on the same Redis. Each peer is timed as called "
        "by default and tuned as its docs suggest for many tiny tasks.",
    )


# --------------------------------------------------------------------------- targets, plot


def per(found: dict[str, Any], case: str, method: str, metric: str) -> float | None:
    return found.get(case, {}).get(method, {}).get(metric)


def fanout_over(
    found: dict[str, Any], case: str, peer: str, metric: str, ref: str = FANOUT
) -> float | None:
    mine, theirs = per(found, case, ref, metric), per(found, case, peer, metric)
    return mine / theirs if mine and theirs else None


Goal = tuple[str, float | None, str, Callable[[float], bool]]  # target, figure, format, met


def targets(cfg: Config, found: dict[str, Any]) -> list[str]:
    """Issue 5's targets against this run's figures."""
    goals: list[Goal] = []
    trivial = [(f"{n:,}{cold}", f"{n:,} {mode}") for n in cfg.trivial_sizes
               for cold, mode in (("", "warm"), (" cold", "cold"))]  # fmt: skip
    for metric, label in trivial:
        goals.append(
            (
                f"trivial {label}: fanout ≥ {IMAP}",
                fanout_over(found, "trivial", IMAP, metric),
                "{:.2f}x",
                lambda r: r >= 1,
            )
        )
        goals += [(f"trivial {label}: fanout ≥ 5x {peer}",
                   fanout_over(found, "trivial", peer, metric), "{:.1f}x", lambda r: r >= 5)
                  for peer in (JOBLIB, MPIRE)]  # fmt: skip
    one_task = fanout_over(found, "latency", POOL_LATENCY, "seconds", FANOUT_LATENCY)
    rq_ratio = fanout_over(found, "rq", RQ_STOCK, "trivial", RQ_FANOUT)
    goals += [
        ("CPU-bound 20 ms: fanout ≥ 1.9x serial",
         per(found, "speedup", FANOUT, "speed-up"), "{:.2f}x", lambda r: r >= 1.9),
        ("one task: `fanout.run` ≤ 1.5x `Pool(2).map`", one_task, "{:.2f}x", lambda r: r <= 1.5),
        ("`import fanout` ≤ 60 ms",
         per(found, "import", "`import fanout`", "seconds"), "{:.3f} s", lambda s: s <= 0.06),
        (f"{cfg.stream_items:,}-item stream: caller peak RSS < 100 MB (target: at 1,000,000)",
         per(found, "stream", FANOUT_STREAM, "peak"), "{:.0f} MB", lambda v: v < 100),
        ("RQ trivial: fanout ≥ 100x stock `rq worker`", rq_ratio, "{:.0f}x", lambda r: r >= 100),
        ("RQ trivial: fanout ≥ 7,000 tasks/s",
         per(found, "rq", RQ_FANOUT, "trivial"), "{:,.0f}/s", lambda v: v >= 7000),
        ("RQ 10 ms tasks: fanout ≥ 90% of ideal",
         per(found, "rq", RQ_FANOUT, "ideal"), "{:.0%}", lambda v: v >= 0.9),
    ]  # fmt: skip
    lines = ["### Issue 5 targets", "", "| target | measured | met |", "|---|---|---|"]
    for goal, value, fmt, met in goals:
        if value is not None:
            lines.append(f"| {goal} | {fmt.format(value)} | {'yes' if met(value) else '**no**'} |")
    return [*lines, ""]


def plot(cfg: Config, found: dict[str, Any], path: Path) -> bool:
    """Throughput against task duration, local and RQ methods side by side; False when
    matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (local, remote) = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    trivial = f"{cfg.trivial_sizes[0]:,}"  # plotted at duration 0
    labels = [f"0 (x + 1, {trivial})", *map(sweep_metric, cfg.durations)]
    for name, metrics in found["sweep"].items():
        ys = [found["trivial"].get(name, {}).get(trivial)]
        ys += [metrics.get(sweep_metric(d)) for d in cfg.durations]
        local.plot(range(len(ys)), [y or float("nan") for y in ys], marker="o", label=name)
    ideal = [WORKERS / d for d in cfg.durations]
    local.plot(range(1, len(labels)), ideal, "k--", label=f"ideal: {WORKERS} / duration")
    local.set(
        xticks=range(len(labels)),
        xticklabels=labels,
        yscale="log",
        ylabel="tasks/s",
        xlabel="task duration (CPU-bound)",
        title=f"local, {WORKERS} workers",
    )
    if "rq" in found:
        for name, metrics in found["rq"].items():
            remote.plot([0, 1], [metrics["trivial"], metrics["sleep"]], marker="o", label=name)
        remote.plot([1], [WORKERS / RQ_SLEEP], "k*", markersize=12, label="ideal")
        remote.set(
            xticks=[0, 1],
            xticklabels=["0 (x + 1)", sweep_metric(RQ_SLEEP) + " sleep"],
            xlabel="task duration",
            title=f"RQ, {WORKERS} workers",
        )
        remote.legend(fontsize=8)
    local.legend(fontsize=7)
    for ax in (local, remote):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def machine_info(cfg: Config) -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    server = shutil.which("redis-server")
    banner = (
        subprocess.run([server, "--version"], capture_output=True, text=True).stdout
        if server
        else ""
    )
    redis_v = re.search(r"v=(\S+)", banner)
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"mode: {'--quick' if cfg.quick else 'full'}, {cfg.repeats} repeat(s), medians",
        f"- machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}; "
        f"{platform.system()} {platform.release()}; load average at start "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- Python {platform.python_version()}; fanout {fanout.__version__} ({git or '?'}); "
        f"rq {version('rq')}, redis-py {version('redis')}, "
        f"redis-server {redis_v.group(1) if redis_v else 'absent'}; "
        f"joblib {version('joblib')}, mpire {version('mpire')}",
        "",
    ]


def write_doc(path: Path, body: list[str]) -> None:
    """Put ``body`` between the result markers of ``path`` (created if missing)."""
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + BEGIN + "\n" + "\n".join(body) + "\n" + END + tail)


CASES = [case_trivial, case_sweep, case_latency, case_import, case_stream, case_rq, case_peers]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat (< 60 s)")
    parser.add_argument(
        "--out",
        type=Path,
        help="write the markdown here (with --quick, the plot too, beside it); by default "
        "a full run writes docs/benchmarks.md and .png, --quick only prints",
    )
    parser.add_argument("--cold-run", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--case", action="append", help="only this case (trivial, sweep, ..., rq, peers); prints"
    )
    args = parser.parse_args(argv)
    if args.cold_run:
        print(cold_run(args.cold_run[0], int(args.cold_run[1])))
        return 0
    cfg = QUICK if args.quick else FULL
    if args.case:
        for case in CASES:
            if case.__name__.removeprefix("case_") in args.case:
                print("\n".join(case(cfg, {})), flush=True)
        return 0
    out = args.out or (None if cfg.quick else DOC)
    # SIGTERM unwinds like Ctrl-C, so every `finally` stops what it started; forked pool
    # workers must not inherit that (Pool.terminate() could then hang on them).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    started = time.monotonic()
    found: dict[str, Any] = {}
    body = ["## Results", "", *machine_info(cfg)]
    print("\n".join(body), flush=True)
    try:
        for case in CASES:
            lines = case(cfg, found)
            print("\n".join(lines), flush=True)
            body += lines
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    with tempfile.TemporaryDirectory() as tmp:
        path = PLOT if not cfg.quick else out.with_suffix(".png") if out else Path(tmp) / "q.png"
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        note = (
            f"plot: {shown}" if plot(cfg, found, path) else "plot skipped: pip install matplotlib"
        )
        if path.parent == Path(tmp) and note.startswith("plot:"):
            note += " (a temporary file: use --out to keep it)"
    summary = [*targets(cfg, found), f"Whole run: {time.monotonic() - started:.0f} s; {note}.", ""]
    print("\n".join(summary), flush=True)
    body += summary
    if out:
        write_doc(out, body)
        print(f"written: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
