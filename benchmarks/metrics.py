"""What metrics cost: ``python benchmarks/metrics.py [--quick] [--out FILE]``.

On a redis-server of our own (a free port, nothing on disk):

- **Throughput, metrics off and on, side by side.** Two pairs of ``fanout worker``s, one
  pair started with ``--metrics-port``, each pair on a queue of its own, each fed by a
  caller of its own (``fanout.run`` of trivial tasks, ``f(x) = x + 1``, 5,000 at a
  time, again and again). Both callers run at once for a window of seconds, so that
  whatever else the machine does falls on both sides alike (run one after the other, a
  machine shared with other work moved throughput by more than metrics do, from one run
  to the next); the figure is the median over the windows of on ÷ off. Beside it, the
  RQ worker processes' CPU time per task (where the counting happens).
- **A scrape, to the worker.** A worker whose metrics hold counts is scraped over HTTP
  many times; its process's CPU time (user + system) over those scrapes, per scrape, is
  what one costs the worker; the wall time of each, as the scraper sees it.
- **``fanout metrics``, per scrape.** A queue holding many fanout jobs (written directly:
  ids, their runs' jobs hashes and ``enqueued_at``, as fanout writes them) is read by
  ``read_snapshot``, the reading one scrape of ``fanout metrics`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psutil
from bench_tasks import inc
from compare import BENCH_DIR, free_port, processes, redis_server, wait_until

import fanout

RUN_TASKS = 5_000  # tasks of one fanout.run of a caller
SIDES = ("off", "on")


def thread_cpu_seconds(pid: int) -> float:
    """CPU time of the live threads of process ``pid``, to the nanosecond (Linux's
    schedstat; user + system times come in 10 ms ticks)."""
    return (
        sum(
            int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            for tid in os.listdir(f"/proc/{pid}/task")
        )
        / 1e9
    )


def process_cpu_seconds(pid: int) -> float:
    """CPU time of process ``pid``, its threads that have ended included."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def caller(url: str, queue: str, seconds: float) -> None:
    """One side's caller: runs of trivial tasks until ``seconds`` have passed; prints
    the tasks done and the seconds they took."""
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        results = fanout.run(inc, range(RUN_TASKS), backend="rq", redis_url=url, queue=queue)
        assert len(results) == RUN_TASKS
        assert all(r.ok for r in results)
        done += RUN_TASKS
    print(done, time.perf_counter() - started)


def side_by_side(url: str, seconds: float, pids: dict[str, list[int]]) -> dict[str, Any]:
    """Both sides' callers at once for ``seconds``: each side's (tasks/s, CPU µs per task
    of its RQ worker processes)."""
    env = dict(os.environ, PYTHONPATH=str(BENCH_DIR))
    cpu = {side: sum(thread_cpu_seconds(p) for p in pids[side]) for side in SIDES}
    callers = {
        side: subprocess.Popen([sys.executable, __file__, "--caller", url, side, str(seconds)],
                               env=env, stdout=subprocess.PIPE, text=True)
        for side in SIDES
    }  # fmt: skip
    found: dict[str, Any] = {}
    for side, process in callers.items():
        out, _ = process.communicate(timeout=seconds + 120)
        tasks, elapsed = out.split()
        used = sum(thread_cpu_seconds(p) for p in pids[side]) - cpu[side]
        found[side] = (int(tasks) / float(elapsed), used / int(tasks) * 1e6)
    return found


def scrape_costs(port: int, pid: int, scrapes: int) -> tuple[float, float, int]:
    """(worker CPU ms per scrape, median wall ms per scrape, bytes of one scrape)."""
    address = f"http://127.0.0.1:{port}/metrics"
    walls = []
    size = 0
    before = process_cpu_seconds(pid)
    for _ in range(scrapes):
        t0 = time.perf_counter()
        with urllib.request.urlopen(address, timeout=10) as response:
            size = len(response.read())
        walls.append(time.perf_counter() - t0)
    cpu = (process_cpu_seconds(pid) - before) / scrapes
    return cpu * 1000, statistics.median(walls) * 1000, size


def queue_read_ms(connection: Any, jobs: int, runs: int, repeats: int) -> tuple[float, float]:
    """Median ms of one ``read_snapshot`` of a queue of ``jobs`` fanout jobs of ``runs``
    runs, and the tasks it found (for a check)."""
    from rq.utils import now, utcformat

    from fanout.backends.rq.protocol import RunKeys
    from fanout.backends.rq.queue_metrics import read_snapshot

    queue = f"bench-{uuid.uuid4().hex[:8]}"
    run_ids = [uuid.uuid4().hex for _ in range(runs)]
    at = utcformat(now())
    pipe = connection.pipeline(transaction=False)
    for n in range(jobs):
        run = run_ids[n % runs]
        pipe.rpush(f"rq:queue:{queue}", f"fanout-{run}-{n}")
        pipe.hset(RunKeys(run).jobs, str(n), 3)
        pipe.hset(f"rq:job:fanout-{run}-{n}", "enqueued_at", at)
        if len(pipe) >= 3000:
            pipe.execute()
    pipe.execute()
    timings = []
    found = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        snapshot = read_snapshot(connection, [queue])
        timings.append(time.perf_counter() - t0)
        found = snapshot.queues[0].tasks
    connection.flushdb()
    return statistics.median(timings) * 1000, found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short window")
    parser.add_argument("--out", type=Path, help="also write the tables here")
    parser.add_argument("--caller", nargs=3, metavar=("URL", "QUEUE", "SECONDS"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args(argv)
    if args.caller:
        caller(args.caller[0], args.caller[1], float(args.caller[2]))
        return 0
    windows, seconds = (1, 3.0) if args.quick else (9, 10.0)
    scrapes = 50 if args.quick else 1000
    from redis import Redis

    with (
        tempfile.TemporaryDirectory(prefix="fanout-metrics-bench-") as tmp,
        redis_server(Path(tmp)) as url,
    ):
        env = dict(os.environ, PYTHONPATH=str(BENCH_DIR), FANOUT_REDIS_URL=url)
        ports = [free_port(), free_port()]
        base = [sys.executable, "-m", "fanout", "worker", "--quiet"]
        commands = [[*base, "--name", f"off-{i}", "--queue", "off"] for i in (1, 2)]
        commands += [[*base, "--name", f"on-{i}", "--queue", "on", "--metrics-port", str(port)]
                     for i, port in zip((1, 2), ports, strict=True)]  # fmt: skip
        with processes(commands, Path(tmp) / "workers.log", env=env) as started:
            connection = Redis.from_url(url)
            names = ["off-1", "off-2", "on-1", "on-2"]
            wait_until(lambda: all(connection.exists(f"rq:worker:{n}") for n in names),
                       "the workers", Path(tmp))  # fmt: skip
            pids = {"off": [p.pid for p in started[:2]], "on": [p.pid for p in started[2:]]}
            for side in SIDES:  # warm: imports, the task processes
                fanout.run(inc, range(200), backend="rq", redis_url=url, queue=side)
            found = []
            for window in range(windows):
                found.append(side_by_side(url, seconds, pids))
                off, on = found[-1]["off"][0], found[-1]["on"][0]
                print(f"  .. window {window + 1}: off {off:,.0f}, on {on:,.0f} tasks/s"
                      f" ({on / off:.3f})", file=sys.stderr, flush=True)  # fmt: skip
            # The worker that served: its pid is its command's (it runs in that process).
            cpu_ms, wall_ms, size = scrape_costs(ports[0], started[2].pid, scrapes)
        reads = [(jobs, runs, *queue_read_ms(connection, jobs, runs, 3 if args.quick else 7))
                 for jobs, runs in ((1_000, 1), (10_000, 10), (100_000, 100))]  # fmt: skip
    ratio = statistics.median(w["on"][0] / w["off"][0] for w in found)
    rate = {side: statistics.median(w[side][0] for w in found) for side in SIDES}
    cpu = {side: statistics.median(w[side][1] for w in found) for side in SIDES}
    cpu_ratio = statistics.median(w["on"][1] / w["off"][1] for w in found)
    lines = [
        f"Python {sys.version.split()[0]}, {os.cpu_count()} cores; two `fanout worker`s and"
        f" a caller per side, both sides at once; {windows} window(s) of {seconds:g} s;"
        " medians.",
        "",
        "| `fanout worker` | trivial tasks/s | RQ worker CPU per task |",
        "|---|---:|---:|",
        f"| without `--metrics-port` | {rate['off']:,.0f} | {cpu['off']:.2f} µs |",
        f"| with `--metrics-port` | {rate['on']:,.0f} | {cpu['on']:.2f} µs |",
        f"| with ÷ without (median of the windows' ratios) | {ratio:.3f} | {cpu_ratio:.3f} |",
        "",
        f"A scrape of a worker's `/metrics` ({size:,} bytes), over {scrapes:,} scrapes: the"
        f" worker's CPU {cpu_ms:.2f} ms per scrape; {wall_ms:.2f} ms each as the scraper"
        " waits (median).",
        "",
        "| `fanout metrics`: one scrape's reading of a queue of | runs | tasks found | ms |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {jobs:,} jobs | {runs} | {tasks_found:,.0f} | {ms:.1f} |"
              for jobs, runs, ms, tasks_found in reads]  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
