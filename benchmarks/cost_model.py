"""Where the rq backend's time and Redis traffic go: `python benchmarks/cost_model.py`.

Starts its own redis-server and `fanout worker`s, runs trivial and 10 ms tasks, and
prints, from Redis's own counters (INFO commandstats / stats): commands and bytes per
task and per job, throughput for 1..3 workers, and a profile of the caller.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

import redis

import fanout

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from bench_tasks import inc, nap  # noqa: E402

from tests.conftest import RedisServer, wait_for_workers  # noqa: E402


def workers(url: str, count: int) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, FANOUT_REDIS_URL=url)
    names = [f"cost-{i}" for i in range(count)]
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "fanout", "worker", "--name", name],
            cwd=ROOT / "benchmarks", env=env, stderr=subprocess.DEVNULL,
        )
        for name in names
    ]  # fmt: skip
    wait_for_workers(url, names)
    return started


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for p in processes:
        p.terminate()
    for p in processes:
        p.wait(10)


def counters(conn: redis.Redis) -> tuple[int, int, int]:
    stats = conn.info("stats")
    commands = sum(v["calls"] for v in conn.info("commandstats").values())
    return commands, stats["total_net_input_bytes"], stats["total_net_output_bytes"]


def traffic(url: str, target, items: list, label: str) -> None:
    conn = redis.Redis.from_url(url)
    time.sleep(1.0)
    idle0, _, _ = counters(conn)
    time.sleep(2.0)
    idle = (counters(conn)[0] - idle0) / 2.0  # heartbeats and idle polls per second
    c0, in0, out0 = counters(conn)
    t = time.perf_counter()
    results = fanout.run(target, items, backend="rq", redis_url=url, ordered=False)
    elapsed = time.perf_counter() - t
    c1, in1, out1 = counters(conn)
    n = len(results)
    commands = c1 - c0 - idle * elapsed
    print(
        f"{label}: {n} tasks in {elapsed:.2f} s ({n / elapsed:,.0f}/s); Redis commands"
        f" {commands:,.0f} ({commands / n:.3f}/task); bytes in {(in1 - in0) / n:.0f}/task,"
        f" out {(out1 - out0) / n:.0f}/task; idle polling {idle:.1f} commands/s"
    )


def main() -> None:
    server = RedisServer()
    try:
        for count in (1, 2, 3):
            started = workers(server.url, count)
            try:
                rates = []
                for _ in range(3):
                    t = time.perf_counter()
                    n = len(fanout.run(inc, range(20_000), backend="rq", redis_url=server.url))
                    rates.append(n / (time.perf_counter() - t))
                print(f"{count} worker(s): trivial {sorted(rates)[1]:,.0f} tasks/s (median of 3)")
                if count == 2:
                    traffic(server.url, inc, list(range(20_000)), "trivial, 2 workers")
                    traffic(server.url, nap, [0.01] * 400, "10 ms, 2 workers")
                    profile = cProfile.Profile()
                    profile.enable()
                    fanout.run(inc, range(50_000), backend="rq", redis_url=server.url)
                    profile.disable()
                    out = io.StringIO()
                    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(8)
                    print("caller profile, 50,000 trivial tasks, 2 workers:")
                    print("\n".join(out.getvalue().splitlines()[4:20]))
            finally:
                stop(started)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
