"""What a caller costs Redis while it waits: ``python benchmarks/waiting.py [--quick]``.

One ``fanout worker`` on a ``redis-server`` of our own (a free port, nothing on disk)
runs one 5 s task; meanwhile the caller waits for its result, as ``fanout.run``, as
``fanout.Executor().submit(...).result()``, as ``fanout.Pool().apply_async(...).get()``
and as ``AsyncFanout.map``. Redis's ``INFO commandstats`` is read before and after a
window in the middle of the task (the first and last second are left out), and the
commands per second are given for the window, worker and caller together, beside the
worker alone (no caller). Each way runs once per repeat, in rotating order; medians.

A drop-in's run stays open to more inputs, which costs one key refresh every 2 s
beside the drive loop (the run's feeder key, what tells a collector that its caller
still feeds it): that is the drop-ins' 0.3 commands/s over ``fanout.run``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compare import BENCH_DIR, processes, redis_server, wait_until

import fanout

TASK_SECONDS = 5.0
WINDOW = (1.0, 4.0)  # seconds into the task: the window whose commands are counted


def commands(connection: Any) -> int:
    stats = connection.info("commandstats")
    return sum(int(entry["calls"]) for entry in stats.values())


def window_rate(connection: Any, started: float) -> float:
    """Commands per second in ``WINDOW`` after ``started`` (monotonic)."""
    time.sleep(max(0.0, started + WINDOW[0] - time.monotonic()))
    before, t0 = commands(connection), time.monotonic()
    time.sleep(WINDOW[1] - WINDOW[0])
    return (commands(connection) - before - 1) / (time.monotonic() - t0)


def run_way(way: Callable[[dict[str, Any]], None], options: dict[str, Any]) -> None:
    way(options)


def by_run(options: dict[str, Any]) -> None:
    fanout.run("bench_tasks:nap", [TASK_SECONDS], backend="rq", **options)


def by_submit(options: dict[str, Any]) -> None:
    from bench_tasks import nap

    with fanout.Executor(backend="rq", **options) as ex:
        ex.submit(nap, TASK_SECONDS).result()


def by_apply_async(options: dict[str, Any]) -> None:
    from bench_tasks import nap

    with fanout.Pool(backend="rq", **options) as pool:
        pool.apply_async(nap, (TASK_SECONDS,)).get()


def by_asyncio(options: dict[str, Any]) -> None:
    async def main() -> None:
        async with fanout.AsyncFanout(backend="rq", **options) as fo:
            async for _ in fo.map("bench_tasks:nap", [TASK_SECONDS]):
                pass

    asyncio.run(main())


def idle(options: dict[str, Any]) -> None:
    time.sleep(TASK_SECONDS)


WAYS: dict[str, Callable[[dict[str, Any]], None]] = {
    "the worker alone, no caller": idle,
    "`fanout.run`": by_run,
    "`Executor.submit().result()`": by_submit,
    "`Pool.apply_async().get()`": by_apply_async,
    "`AsyncFanout.map`": by_asyncio,
}


def measure(connection: Any, options: dict[str, Any], name: str) -> float:
    rate: list[float] = []
    started = time.monotonic()
    counter = threading.Thread(target=lambda: rate.append(window_rate(connection, started)))
    counter.start()
    WAYS[name](options)
    counter.join()
    return rate[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else 3
    from redis import Redis

    with (
        tempfile.TemporaryDirectory(prefix="fanout-waiting-") as tmp,
        redis_server(Path(tmp)) as url,
    ):
        env = dict(os.environ, PYTHONPATH=str(BENCH_DIR), FANOUT_REDIS_URL=url)
        command = [sys.executable, "-m", "fanout", "worker", "--name", "w", "--quiet"]
        with processes([command], Path(tmp) / "worker.log", env=env):
            connection = Redis.from_url(url)
            wait_until(lambda: connection.exists("rq:worker:w"), "the worker", Path(tmp))
            names = list(WAYS)
            found: dict[str, list[float]] = {name: [] for name in names}
            for repeat in range(repeats):
                for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                    found[name].append(measure(connection, {"redis_url": url}, name))
                    print(f"  .. {name}: {found[name][-1]:.1f}/s", file=sys.stderr, flush=True)
    lines = [
        f"Python {sys.version.split()[0]}, one `fanout worker`, one {TASK_SECONDS:g} s task;"
        f" commands/s in seconds {WINDOW[0]:g}-{WINDOW[1]:g} of it, median of {repeats}.",
        "",
        "| the caller waits with | Redis commands/s (worker and caller) |",
        "|---|---:|",
    ]
    for name in names:
        lines.append(f"| {name} | {statistics.median(found[name]):.1f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
