"""What awaiting a run from asyncio costs: ``python benchmarks/aio.py [--quick]``.

On the local backend and on rq (its own redis-server, two ``fanout worker``s), the same
run three ways in one process: ``Fanout.map`` (synchronous), ``AsyncFanout.map`` (a thread
drives the run, results cross to the loop in chunks) and, for the loop's side, how late a
10 ms ticker ran meanwhile. Also one task's round trip (``arun`` of one task against
``fanout.run``), which shows the bridge's latency. Medians of 5.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fanout  # noqa: E402

TARGET = "fanout.testing.tasks:square"


def median_of(repeats: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(repeats))


def sync_rate(options: dict[str, Any], count: int) -> float:
    with fanout.Fanout(**options) as fo:
        list(fo.map(TARGET, range(100)))
        began = time.perf_counter()
        for _ in fo.map(TARGET, range(count)):
            pass
        return count / (time.perf_counter() - began)


def async_rate(options: dict[str, Any], count: int) -> tuple[float, float]:
    """(tasks/s, the 99th percentile of a 10 ms ticker's lateness in ms)."""

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        late: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            due = loop.time() + 0.01
            while not done.is_set():
                await asyncio.sleep(max(0.0, due - loop.time()))
                late.append(loop.time() - due)
                due += 0.01

        async with fanout.AsyncFanout(**options) as fo:
            async for _ in fo.map(TARGET, range(100)):
                pass
            tick = asyncio.create_task(ticker())
            began = time.perf_counter()
            async for _ in fo.map(TARGET, range(count)):
                pass
            seconds = time.perf_counter() - began
            done.set()
            await tick
        late.sort()
        return count / seconds, 1000 * late[int(0.99 * (len(late) - 1))]

    return asyncio.run(main())


def one_task(options: dict[str, Any], asynchronous: bool) -> float:
    with fanout.Fanout(**options) as fo:
        list(fo.map(TARGET, [1]))
        times = []
        for _ in range(20):
            began = time.perf_counter()
            list(fo.map(TARGET, [1]))
            times.append(time.perf_counter() - began)
    sync = statistics.median(times)
    if not asynchronous:
        return sync

    async def main() -> float:
        async with fanout.AsyncFanout(**options) as fo:
            times = []
            for _ in range(21):
                began = time.perf_counter()
                async for _ in fo.map(TARGET, [1]):
                    pass
                times.append(time.perf_counter() - began)
            return statistics.median(times[1:])

    return asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tasks, 1 repeat")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else 5
    counts = {"local": 10_000 if args.quick else 100_000, "rq": 2_000 if args.quick else 10_000}
    with tempfile.TemporaryDirectory(prefix="fanout-aio-") as tmp:
        port = _free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no", "--dir", tmp],
                                 stdout=subprocess.DEVNULL)  # fmt: skip
        url = f"redis://127.0.0.1:{port}/0"
        env = dict(os.environ, FANOUT_REDIS_URL=url)
        workers = [subprocess.Popen([sys.executable, "-m", "fanout", "worker", "--quiet",
                                     "--name", f"aio-bench-{n}"], env=env, cwd=ROOT)
                   for n in (1, 2)]  # fmt: skip
        try:
            time.sleep(1.0)  # the workers register; the first run waits for them anyway
            rows = []
            for name, options in (("local", {"backend": "local", "workers": 2}),
                                  ("rq", {"backend": "rq", "redis_url": url})):  # fmt: skip
                count = counts[name]
                sync = median_of(repeats, lambda o=options, c=count: sync_rate(o, c))
                runs = [async_rate(options, count) for _ in range(repeats)]
                rate = statistics.median(r[0] for r in runs)
                late = statistics.median(r[1] for r in runs)
                one_sync = one_task(options, False)
                one_async = one_task(options, True)
                rows.append((name, count, sync, rate, late, one_sync, one_async))
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(20)
            redis.terminate()
            redis.wait(10)
    print(f"Python {platform.python_version()}, {os.cpu_count()} cores, 2 workers,"
          f" medians of {repeats}\n")  # fmt: skip
    print(
        "| backend | tasks | `Fanout.map` tasks/s | `AsyncFanout.map` tasks/s | async ÷ sync"
        " | ticker p99 late | one task, sync | one task, async |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, count, sync, rate, late, one_sync, one_async in rows:
        cells = [name, f"{count:,}", f"{sync:,.0f}", f"{rate:,.0f}", f"{rate / sync:.2f}",
                 f"{late:.1f} ms", f"{1000 * one_sync:.1f} ms",
                 f"{1000 * one_async:.1f} ms"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


if __name__ == "__main__":
    raise SystemExit(main())
