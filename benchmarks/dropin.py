"""fanout's drop-ins against the stdlib pools they replace, the same calls side by side in
one run: ``python benchmarks/dropin.py [--quick] [--out FILE]``.

Each row times one call with the pool's whole life included (made, used once, shut
down), 2 workers, in this interpreter (modules imported first). Every method runs once
per repeat, in an order that rotates between repeats; medians are reported, and the
ratio is fanout ÷ stdlib of tasks/s (above 1: fanout is faster).

- Local: ``fanout.Pool`` against ``multiprocessing.Pool`` (map, imap, imap_unordered,
  the same chunksize), ``fanout.Executor`` against ``ProcessPoolExecutor`` (map with
  the default chunksize, 1, which fanout takes as "size the batches yourself", and with
  256; a loop of 20,000 ``submit`` then every ``result()``), on trivial tasks
  (``x + 1``) and 1 ms CPU-bound ones.
- RQ (a ``redis-server`` of its own, two ``fanout worker`` processes): ``Executor.map``
  over 20,000 trivial tasks against ``fanout.run`` on the same workers, and a loop of
  10,000 ``submit`` calls.

The full run writes its tables to ``docs/benchmarks.md`` (between the drop-in markers).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench_tasks import inc, spin
from compare import BENCH_DIR, processes, redis_server, wait_until

import fanout

DOC = BENCH_DIR.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- dropin: begin -->", "<!-- dropin: end -->"
WORKERS = 2
CHUNK = 256
MS = 0.001

Call = Callable[[list[Any]], int]  # the items -> how many values came back


def mp_map(chunksize: int | None) -> Call:
    def call(items: list[Any]) -> int:
        with multiprocessing.Pool(WORKERS) as pool:
            return len(pool.map(fn_of(items), items, chunksize))

    return call


def fo_map(chunksize: int | None) -> Call:
    def call(items: list[Any]) -> int:
        with fanout.Pool(WORKERS) as pool:
            return len(pool.map(fn_of(items), items, chunksize))

    return call


def pool_iter(make: Callable[[int], Any], method: str) -> Call:
    def call(items: list[Any]) -> int:
        with make(WORKERS) as pool:
            return sum(1 for _ in getattr(pool, method)(fn_of(items), items, CHUNK))

    return call


def executor_map(make: Callable[[int], Any], chunksize: int | None) -> Call:
    """``Executor.map``, with ``chunksize`` (None: its default, 1 on both, which fanout
    reads as "size the batches yourself": a chunksize passed is the most a batch holds)."""

    def call(items: list[Any]) -> int:
        kwargs = {} if chunksize is None else {"chunksize": chunksize}
        with make(WORKERS) as ex:
            return sum(1 for _ in ex.map(fn_of(items), items, **kwargs))

    return call


def executor_submit(make: Callable[[int], Any]) -> Call:
    def call(items: list[Any]) -> int:
        fn = fn_of(items)
        with make(WORKERS) as ex:
            futures = [ex.submit(fn, x) for x in items]
            return sum(1 for f in futures if f.result() is not None)

    return call


def fn_of(items: list[Any]) -> Callable[[Any], Any]:
    return spin if items and isinstance(items[0], float) else inc


# (row, stdlib's call, fanout's call, [workloads])
TRIVIAL_20K, TRIVIAL_200K, MS_20K = "20k trivial", "200k trivial", "20k x 1 ms"
LOCAL_ROWS: list[tuple[str, Call, Call, list[str]]] = [
    ("`Pool.map`", mp_map(None), fo_map(None), [TRIVIAL_20K, TRIVIAL_200K, MS_20K]),
    (
        f"`Pool.imap(chunksize={CHUNK})`",
        pool_iter(multiprocessing.Pool, "imap"),
        pool_iter(fanout.Pool, "imap"),
        [TRIVIAL_20K, TRIVIAL_200K, MS_20K],
    ),
    (
        f"`Pool.imap_unordered(chunksize={CHUNK})`",
        pool_iter(multiprocessing.Pool, "imap_unordered"),
        pool_iter(fanout.Pool, "imap_unordered"),
        [TRIVIAL_20K, TRIVIAL_200K, MS_20K],
    ),
    (
        "`Executor.map` (default chunksize)",
        executor_map(ProcessPoolExecutor, None),
        executor_map(fanout.Executor, None),
        [TRIVIAL_20K, MS_20K],  # ProcessPoolExecutor takes ~30 s for 200k at chunksize 1
    ),
    (
        f"`Executor.map(chunksize={CHUNK})`",
        executor_map(ProcessPoolExecutor, CHUNK),
        executor_map(fanout.Executor, CHUNK),
        [TRIVIAL_20K, TRIVIAL_200K, MS_20K],
    ),
    (
        "20,000 x `Executor.submit`",
        executor_submit(ProcessPoolExecutor),
        executor_submit(fanout.Executor),
        [TRIVIAL_20K],
    ),
]


def workloads(quick: bool) -> dict[str, list[Any]]:
    scale = 10 if quick else 1
    return {
        TRIVIAL_20K: list(range(20_000 // scale)),
        TRIVIAL_200K: list(range(200_000 // scale)),
        MS_20K: [MS] * (20_000 // scale),
    }


def median_rates(calls: dict[str, Callable[[], int]], repeats: int) -> dict[str, float]:
    """name -> median tasks/s over ``repeats`` rounds in rotating order."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for round_ in range(repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            start = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in seconds.items()}


def local_table(quick: bool, repeats: int) -> list[str]:
    data = workloads(quick)
    lines = [
        "| call | items | stdlib tasks/s | fanout tasks/s | fanout ÷ stdlib |",
        "|---|---|---:|---:|---:|",
    ]
    for row, stdlib, ours, loads in LOCAL_ROWS:
        for load in loads:
            items = data[load]
            print(f"  {row} on {load} ...", file=sys.stderr, flush=True)
            times = median_rates(
                {"stdlib": lambda s=stdlib, i=items: s(i), "fanout": lambda o=ours, i=items: o(i)},
                repeats,
            )
            mine, theirs = len(items) / times["fanout"], len(items) / times["stdlib"]
            lines.append(f"| {row} | {load} | {theirs:,.0f} | {mine:,.0f} | {mine / theirs:.2f} |")
    return lines


def rq_table(quick: bool, repeats: int) -> list[str]:
    n_map, n_submit = (2_000, 1_000) if quick else (20_000, 10_000)
    with (
        tempfile.TemporaryDirectory(prefix="fanout-dropin-") as tmp,
        redis_server(Path(tmp)) as url,
    ):
        queue = f"dropin-{uuid.uuid4().hex[:8]}"
        env = dict(os.environ, FANOUT_REDIS_URL=url, PYTHONPATH=str(BENCH_DIR))
        command = [sys.executable, "-m", "fanout", "worker", "--queue", queue, "--quiet"]
        log = Path(tmp) / "workers.log"
        with processes([[*command, "--name", f"{queue}-{n}"] for n in (1, 2)], log, env=env):
            options = {"backend": "rq", "redis_url": url, "queue": queue}

            def ready() -> bool:
                with contextlib.suppress(Exception):
                    return len(list(fanout.run(inc, [1, 2, 3, 4], **options))) == 4
                return False

            wait_until(ready, "fanout workers", log)
            items, few = list(range(n_map)), list(range(n_submit))

            def run_rq() -> int:
                return sum(1 for _ in fanout.run(inc, items, **options))

            def executor_map_rq() -> int:
                with fanout.Executor(**options) as ex:
                    return sum(1 for _ in ex.map(inc, items))

            def submit_rq() -> int:
                with fanout.Executor(**options) as ex:
                    futures = [ex.submit(inc, x) for x in few]
                    return sum(1 for f in futures if f.result() is not None)

            print("  rq ...", file=sys.stderr, flush=True)
            times = median_rates(
                {"run": run_rq, "map": executor_map_rq, "submit": submit_rq}, repeats
            )
    run_rate, map_rate = n_map / times["run"], n_map / times["map"]
    submit_rate = n_submit / times["submit"]
    return [
        "| call | items | tasks/s | ratio |",
        "|---|---|---:|---:|",
        f"| `fanout.run(..., backend='rq')` | {n_map:,} trivial | {run_rate:,.0f} | 1.00 |",
        f"| `Executor(backend='rq').map` | {n_map:,} trivial | {map_rate:,.0f} "
        f"| {map_rate / run_rate:.2f} of `fanout.run` |",
        f"| {n_submit:,} x `Executor(backend='rq').submit` | {n_submit:,} trivial "
        f"| {submit_rate:,.0f} | |",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the items, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the tables here")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 5)
    body = [
        f"Python {platform.python_version()}, {os.cpu_count()} cores, {WORKERS} workers, "
        f"median of {repeats}; pool start and stop included on both sides.",
        "",
        "#### Local",
        "",
        *local_table(args.quick, repeats),
        "",
        "#### RQ (two `fanout worker` processes, one Redis)",
        "",
        *rq_table(args.quick, repeats),
    ]
    text = "\n".join(body) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    elif not args.quick:
        doc = DOC.read_text()
        if BEGIN in doc and END in doc:
            head, rest = doc.split(BEGIN, 1)
            doc = head + BEGIN + "\n" + text + END + rest.split(END, 1)[1]
            DOC.write_text(doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
