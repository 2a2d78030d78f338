"""Draining half of a busy fleet mid-run: ``python benchmarks/drain.py [--quick]``.

Eight ``fanout worker`` processes on a ``redis-server`` of our own (a free port, nothing
on disk) run one ``fanout.run`` of sleep tasks (this machine has 2 cores: sleeping
tasks let eight workers make sense). Once a fixed share of the work is done, four of
them are drained (``fanout.backends.rq.fleet``, what ``fanout drain`` does): each
finishes its running task, gives the rest of its job back and exits. The run goes on
on the other four.

Counted: results lost (an index without a result) and duplicated (a second result, or
a second execution: each task leaves a file per execution); the run's wall time beside
the capacity bound, what the remaining workers' capacity allows: the time of the drain
plus the work left then (measured durations, all tasks, less the work done before the
drain) shared by four. Each round starts eight fresh workers; medians of the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from compare import BENCH_DIR, processes, redis_server, wait_until

import fanout
from fanout.backends.rq import fleet

WORKERS, DRAINED = 8, 4
QUEUE = "drain-bench"


def work_before(results: list[fanout.TaskResult], t0: float, at: float) -> float:
    """Seconds of task work done between ``t0`` and ``at`` (epoch seconds)."""
    return sum(max(0.0, min(r.finished_at, at) - max(r.started_at, t0)) for r in results)


def one_round(url: str, tmp: Path, n: int, seconds: float, share: float, round_: int
              ) -> dict[str, Any]:  # fmt: skip
    from redis import Redis

    folder = tmp / f"runs-{round_}"
    folder.mkdir()
    names = [f"r{round_}-w{i}" for i in range(1, WORKERS + 1)]
    env = dict(os.environ, PYTHONPATH=str(BENCH_DIR), FANOUT_REDIS_URL=url)
    commands = [[sys.executable, "-m", "fanout", "worker", "--name", name, "--queue", QUEUE,
                 "--quiet"] for name in names]  # fmt: skip
    log = tmp / "workers.log"
    with processes(commands, log, env=env) as started:
        connection = Redis.from_url(url)
        wait_until(lambda: len(fleet.serving(connection, QUEUE)) == WORKERS, "workers", log)
        results: list[fanout.TaskResult] = []
        items = [(seconds, str(folder), i) for i in range(n)]
        t0 = time.time()

        def run() -> None:
            results.extend(fanout.run("bench_tasks:nap_noted", items, star=True, backend="rq",
                                      redis_url=url, queue=QUEUE, ordered=False))  # fmt: skip

        runner = threading.Thread(target=run)
        runner.start()
        done_at = share * n  # tasks finished when the drain comes
        wait_until(lambda: len(os.listdir(folder)) >= done_at, "the run's first share", log, 120)
        drained = dict.fromkeys(names[WORKERS - DRAINED :], True)
        at = time.time()
        draining = fleet.start_drain(connection, drained)
        left = fleet.wait_drained(connection, draining, 60, lambda worker: None)
        runner.join()
        wall = time.time() - t0
        codes = [p.wait(10) for p in started[WORKERS - DRAINED :]]
    total = sum(r.duration for r in results)
    bound = (at - t0) + (total - work_before(results, t0, at)) / (WORKERS - DRAINED)
    executions = Counter(int(name.split("-")[0]) for name in os.listdir(folder))
    indices = Counter(r.index for r in results)
    return {
        "lost": n - len(indices),
        "duplicated": len(results) - len(indices) + sum(c - 1 for c in executions.values()),
        "never ran": n - len(executions),
        "failed": sum(not r.ok for r in results),
        "wall": wall,
        "bound": bound,
        "drain at": at - t0,
        "given back": sum(w.gave_back or 0 for w in draining),
        "drain seconds": max(w.seconds for w in draining),
        "exit codes": codes,
        "still draining": len(left),
        "after drain": sorted({r.worker.name for r in results if r.started_at > at + 1}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run, one round")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    n, seconds, rounds = (320, 0.05, 1) if args.quick else (1600, 0.05, 3)
    share = 0.3
    found: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="fanout-drain-") as tmp,
        redis_server(Path(tmp)) as url,
    ):
        for round_ in range(rounds):
            found.append(one_round(url, Path(tmp), n, seconds, share, round_))
            row = found[-1]
            print(f"  .. round {round_ + 1}: wall {row['wall']:.2f} s, bound"
                  f" {row['bound']:.2f} s, lost {row['lost']}, duplicated {row['duplicated']},"
                  f" {row['given back']} tasks given back, exits {row['exit codes']}",
                  file=sys.stderr, flush=True)  # fmt: skip
    bad = [r for r in found if r["lost"] or r["duplicated"] or r["never ran"] or r["failed"]
           or r["still draining"] or any(r["exit codes"])]  # fmt: skip
    med = {key: statistics.median(r[key] for r in found)
           for key in ("wall", "bound", "drain at", "given back", "drain seconds")}  # fmt: skip
    ratio = statistics.median(r["wall"] / r["bound"] for r in found)
    lines = [
        f"Python {sys.version.split()[0]}, {WORKERS} `fanout worker`s on one redis-server,"
        f" 2 cores; {n} tasks of {seconds * 1000:g} ms ({n * seconds:g} s of work); {DRAINED}"
        f" workers drained once {share:.0%} of the tasks had finished; median of {len(found)}.",
        "",
        "| lost | duplicated | drained at | drain took | tasks given back | wall time |"
        " capacity bound | wall / bound |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {sum(r['lost'] for r in found)} | {sum(r['duplicated'] for r in found)} |"
        f" {med['drain at']:.2f} s | {med['drain seconds']:.2f} s | {med['given back']:g} |"
        f" {med['wall']:.2f} s | {med['bound']:.2f} s | {ratio:.3f} |",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
