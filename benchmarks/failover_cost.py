"""What making the writes that matter wait for a replica would cost: ``python
benchmarks/failover_cost.py``.

A master and a replica (redis-server processes on free ports, loopback). fanout's
design for a failover that loses the master's last writes is to *detect* what the
new master does not know (jobs gone, jobs started that no worker runs) and run those
tasks again. The alternative is ``WAIT 1 <ms>`` after each write that matters: every
push of results by a worker, every enqueue by a caller. This measures

- the round trip of one result push (fanout's push script, 100 results of a trivial
  task) alone, and followed by ``WAIT 1 1000``;
- how many pushes and transactions (enqueues, RQ's job bookkeeping) a real run makes per
  task (2 ``fanout worker``s, ``fanout.run`` over 20,000 trivial and 2,000 10 ms tasks;
  ``INFO commandstats``);

and so what WAIT would add per task. Medians of 2,000 round trips; Python and Redis
versions are printed with the table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fanout  # noqa: E402
from fanout.backends.rq.protocol import PUSH_SCRIPT, RunKeys  # noqa: E402
from fanout.testing.tasks import square  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"failover_cost: {what} did not happen within {timeout:.0f} s")
        time.sleep(0.05)


@contextlib.contextmanager
def master_and_replica() -> Iterator[tuple[int, int]]:
    ports = free_port(), free_port()
    base = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    procs = [subprocess.Popen([*base, "--port", str(ports[0])], stdout=subprocess.DEVNULL)]
    procs.append(subprocess.Popen([*base, "--port", str(ports[1]), "--replicaof", "127.0.0.1",
                                   str(ports[0])], stdout=subprocess.DEVNULL))  # fmt: skip
    try:

        def in_sync() -> bool:
            with contextlib.suppress(Exception), Redis(port=ports[1]) as replica:
                return replica.info("replication").get("master_link_status") == "up"
            return False

        wait_for(in_sync, "the replica's sync")
        yield ports
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def push_round_trips(port: int, repeats: int) -> tuple[float, float]:
    """Median seconds of one push, and of one push followed by WAIT 1 1000."""
    connection = Redis(port=port)
    keys = RunKeys("bench")
    connection.hset(keys.meta, mapping={"total": 1, "result_ttl": 60})
    script = connection.register_script(PUSH_SCRIPT)
    message = os.urandom(100 * 40)  # about 100 trivial results
    args: list[object] = [message]
    for index in range(100):
        args += (index, 0)
    alone, waited = [], []
    for _ in range(repeats):
        began = time.perf_counter()
        script(keys=[keys.results, keys.done, keys.meta, keys.jobs], args=args)
        alone.append(time.perf_counter() - began)
        began = time.perf_counter()
        script(keys=[keys.results, keys.done, keys.meta, keys.jobs], args=args)
        connection.execute_command("WAIT", 1, 1000)
        waited.append(time.perf_counter() - began)
        connection.delete(keys.results, keys.done)
    connection.delete(keys.meta)
    return statistics.median(alone), statistics.median(waited)


def writes_per_task(port: int, count: int, seconds: float) -> tuple[float, float, float]:
    """(pushes, transactions, elapsed s) per task of one run with 2 workers. The
    transactions (MULTI/EXEC) are the caller's enqueues and RQ's own job bookkeeping:
    an upper bound on the other writes that would WAIT."""
    url = f"redis://127.0.0.1:{port}/0"
    env = dict(os.environ, FANOUT_REDIS_URL=url)
    command = [sys.executable, "-m", "fanout", "worker", "--name"]
    workers = [
        subprocess.Popen([*command, f"cost-{i}"], env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
        for i in (1, 2)
    ]
    try:
        connection = Redis(port=port)
        wait_for(lambda: len(connection.smembers("rq:workers")) >= 2, "two workers register")
        fanout.run(square, range(200), backend="rq", redis_url=url)  # warm up
        connection.config_resetstat()
        began = time.perf_counter()
        if seconds:
            fanout.run("fanout.testing.tasks:sleep_for", [seconds] * count, backend="rq",
                       redis_url=url)  # fmt: skip
        else:
            fanout.run(square, range(count), backend="rq", redis_url=url)
        elapsed = time.perf_counter() - began
        stats = connection.info("commandstats")
        pushes = stats.get("cmdstat_evalsha", {}).get("calls", 0)
        enqueues = stats.get("cmdstat_exec", {}).get("calls", 0)
        return pushes / count, enqueues / count, elapsed
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    with master_and_replica() as (master, _):
        alone, waited = push_round_trips(master, args.repeats)
        rows = []
        for label, count, seconds in (("20,000 trivial", 20_000, 0.0),
                                      ("2,000 x 10 ms", 2_000, 0.01)):  # fmt: skip
            pushes, enqueues, elapsed = writes_per_task(master, count, seconds)
            added = (pushes + enqueues) * (waited - alone)
            share = added / (elapsed / count) * 100
            rows.append(f"| {label} | {pushes:.4f} | {enqueues:.4f} | {count / elapsed:,.0f} |"
                        f" {added * 1e6:.2f} µs | {share:.1f}% |")  # fmt: skip
        with Redis(port=master) as connection:
            redis_version = connection.info("server")["redis_version"]
    print(f"Python {platform.python_version()}, Redis {redis_version}, loopback, 2 cores\n")
    print(f"One push: {alone * 1e6:.0f} µs; with WAIT 1: {waited * 1e6:.0f} µs"
          f" (+{(waited - alone) * 1e6:.0f} µs)\n")  # fmt: skip
    print("| run (2 workers) | pushes per task | transactions per task | tasks/s |"
          " WAIT would add per task | of a task's time |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
