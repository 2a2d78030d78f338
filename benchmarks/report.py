"""The run as a picture, at scale: ``python benchmarks/report.py [--quick] [--tasks N]``.

A synthetic run of ``--tasks`` results (default 100,000; ``--quick``: 10,000) on 16
worker processes over 4 hosts, uneven durations (lognormal, median 20 ms), and a few
failures of each kind: raised, timeout, killed, exited, lost, cancelled and not run
(0.1 % each). Inputs and values are short strings (``photos/000123.jpg`` ->
``thumbs/000123.jpg``), as a real run's would be. For each repeat (full: 3, medians;
quick: 1) it measures:

- **write**: ``fanout.report(results, path, inputs=...)``, the results already in memory
  (what ``fanout run --report`` adds at the end of a run), and the file's **size**;
- **ready**: headless Chromium (``--dump-dom``) opens the file; the page writes
  ``performance.now()`` into its ``<body data-ready-ms>`` once its figures are in the page
  and the chart is drawn: the time from navigation start (reading the file included);
- **chromium wall**: the whole Chromium process, start to exit (its start-up, the page,
  and writing the DOM out), beside the same for an empty page.

Targets (issue 27): a 100,000-task file of at most 20 MB, ready in at most 5 s. Chromium
comes from the PATH (Debian's ``chromium``); without it the browser figures are skipped
(and the run fails when ``CI`` is set). The figures go to stdout as a Markdown table
(docs/benchmarks.md, "The run as a picture", holds a full run's).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fanout
from fanout.models import TaskError, TaskResult, WorkerInfo

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
)  # fmt: skip
FAILURES = {  # every 1,000 tasks, one of each
    101: TaskError("ValueError", "photo 101 has no pixels"),
    202: TaskError("TaskTimeout", "task ran longer than its timeout of 2 s"),
    303: TaskError("WorkerLost", "worker-3 (pid 103) died in its task: killed by signal 9"),
    404: TaskError("WorkerLost", "worker-4 (pid 104) died in its task: exited with code 7"),
    505: TaskError("WorkerLost", "the job's worker stopped answering"),
    606: TaskError("Cancelled", "the run was cancelled"),
    707: TaskError("SerializationError", "input cannot be pickled"),
}
NOT_RUN = (606, 707)
T0 = 1_800_000_000.0


def synthetic(count: int, workers: int = 16, hosts: int = 4) -> list[TaskResult]:
    """``count`` results of an uneven run, each task on the first worker free."""
    rng = random.Random(27)
    free = [0.0] * workers
    made = []
    for index in range(count):
        error = FAILURES.get(index % 1000)
        if error is not None and index % 1000 in NOT_RUN:
            at = min(free)
            info = WorkerInfo("(not run)", 0, 0, "box-0", "local")
            made.append(TaskResult(index, False, None, error, info, 0, T0 + at, T0 + at, 0.0))
            continue
        worker = min(range(workers), key=free.__getitem__)
        seconds = rng.lognormvariate(-3.9, 0.8)  # median 20 ms
        start = free[worker] + rng.uniform(0, 0.0005)
        free[worker] = start + seconds
        info = WorkerInfo(f"worker-{worker + 1}", 100 + worker, 99, f"box-{worker % hosts}",
                          "local")  # fmt: skip
        value = None if error else f"thumbs/{index:06d}.jpg"
        made.append(TaskResult(index, error is None, value, error, info, 1, T0 + start,
                               T0 + start + seconds, seconds))  # fmt: skip
    return made


def chromium_run(page: Path, chromium: str) -> tuple[float, float | None]:
    """(the Chromium process's wall seconds, the page's ready ms or None)."""
    with tempfile.TemporaryDirectory(prefix="fanout-bench-chromium-") as profile:
        started = time.perf_counter()
        done = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                               page.as_uri()], capture_output=True, text=True, timeout=300,
                              check=True)  # fmt: skip
        wall = time.perf_counter() - started
    found = re.search(r'data-ready-ms="([\d.]+)"', done.stdout)
    return wall, float(found.group(1)) if found else None


def measure(count: int, repeats: int, chromium: str | None) -> dict[str, float]:
    results = synthetic(count)
    inputs = [f"photos/{i:06d}.jpg" for i in range(count)]
    figures: dict[str, list[float]] = {"write": [], "size": [], "ready": [], "wall": [],
                                       "empty": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fanout-bench-report-") as folder:
        page, empty = Path(folder) / "run.html", Path(folder) / "empty.html"
        empty.write_text("<!DOCTYPE html><title>empty</title><body></body>")
        for _ in range(repeats):
            started = time.perf_counter()
            fanout.report(results, page, inputs=inputs, title="bench:thumbnail")
            figures["write"].append(time.perf_counter() - started)
            figures["size"].append(page.stat().st_size)
            if chromium is None:
                continue
            wall, ready = chromium_run(page, chromium)
            if ready is None:
                raise SystemExit("the page never said it was ready (data-ready-ms)")
            figures["wall"].append(wall)
            figures["ready"].append(ready / 1000)
            figures["empty"].append(chromium_run(empty, chromium)[0])
    return {name: statistics.median(values) for name, values in figures.items() if values}


def table(count: int, repeats: int, got: dict[str, float]) -> str:
    size_mb = got["size"] / 1e6
    rows = [
        "| tasks | file | write | ready in Chromium | Chromium wall | Chromium wall, empty page |",
        "|---|---|---|---|---|---|",
        f"| {count:,} | {size_mb:.1f} MB ({got['size'] / count:.0f} B/task) |"
        f" {got['write']:.2f} s | " + (f"{got['ready']:.2f} s | {got['wall']:.2f} s |"
        f" {got['empty']:.2f} s |" if "ready" in got else "skipped | skipped | skipped |"),
    ]  # fmt: skip
    head = (f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {repeats} repeat(s),"
            f" medians; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f};"
            f" Python {platform.python_version()}")  # fmt: skip
    return head + "\n\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 tasks, 1 repeat")
    parser.add_argument("--tasks", type=int, help="how many tasks (default 100,000)")
    parser.add_argument("--repeats", type=int, help="how many repeats (default 3)")
    args = parser.parse_args(argv)
    count = args.tasks or (10_000 if args.quick else 100_000)
    repeats = args.repeats or (1 if args.quick else 3)
    chromium = shutil.which("chromium")
    if chromium is None:
        print("report: chromium is not installed (apt-get install chromium): browser figures"
              " skipped", file=sys.stderr)  # fmt: skip
    got = measure(count, repeats, chromium)
    print(table(count, repeats, got))
    if chromium is None and os.environ.get("CI"):
        return 1
    if count >= 100_000 and (got["size"] > 20e6 or got.get("ready", 0) > 5):
        print("report: over the issue's targets (20 MB, 5 s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
