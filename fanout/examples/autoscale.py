"""A plain-script autoscaler for fanout workers, where there is no KEDA.

It reads ``fanout metrics`` (from its port, or by running ``fanout metrics --once``),
decides how many workers a queue wants, and runs a command of yours with that
number when it changes::

    python -m fanout.examples.autoscale --queue fanout --tasks-per-worker 300 \\
        --max 20 --every 15 --command 'docker compose up -d --scale worker={n}'

The arithmetic (:func:`workers_wanted`): every busy worker is kept, and one more is
wanted per ``tasks_per_worker`` tasks waiting — ``ceil(waiting / tasks_per_worker)`` —
within ``min_workers`` and ``max_workers``. ``tasks_per_worker`` is how many waiting
tasks one worker may be left with: the seconds you allow a backlog to drain, divided
by the seconds a task takes (300 for 0.2 s tasks drained within a minute). Scaling
down waits ``cooldown`` seconds of lower wants, so a short lull stops nobody.
"""

from __future__ import annotations

import argparse
import math
import shlex
import subprocess
import sys
import time
import urllib.request


def workers_wanted(
    metrics: str,
    queue: str,
    tasks_per_worker: float,
    min_workers: int = 0,
    max_workers: int = 100,
) -> int:
    """The workers ``queue`` wants, from the text of ``fanout metrics``."""
    waiting, busy = backlog(metrics, queue)
    wanted = busy + math.ceil(waiting / tasks_per_worker)
    return max(min_workers, min(max_workers, wanted))


def backlog(metrics: str, queue: str) -> tuple[float, int]:
    """(tasks waiting, workers busy) on ``queue``, from the text of ``fanout metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    waiting = busy = 0.0
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.labels.get("queue") != queue:
                continue
            if sample.name == "fanout_queue_tasks":
                waiting += sample.value
            elif sample.name == "fanout_workers" and sample.labels.get("state") == "busy":
                busy += sample.value
    return waiting, int(busy)


def read_metrics(url: str | None, queue: str) -> str:
    """The exported text: from ``url``, else from ``fanout metrics --once`` (which
    reads $FANOUT_REDIS_URL)."""
    if url:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - the user's URL
            return str(response.read().decode())
    command = [sys.executable, "-m", "fanout", "metrics", "--once", "--queue", queue]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", default="fanout")
    parser.add_argument("--metrics-url", help="fanout metrics --port's URL (else --once)")
    parser.add_argument("--tasks-per-worker", type=float, required=True)
    parser.add_argument("--min", type=int, default=0, dest="min_workers")
    parser.add_argument("--max", type=int, default=100, dest="max_workers")
    parser.add_argument("--every", type=float, default=15.0, help="seconds between looks")
    parser.add_argument("--cooldown", type=float, default=300.0, help="seconds before fewer")
    parser.add_argument("--command", required=True, help="run with {n}, the workers wanted")
    args = parser.parse_args(argv)
    current: int | None = None
    lower_since: float | None = None  # when the want first fell below the current count
    while True:
        try:
            text = read_metrics(args.metrics_url, args.queue)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"autoscale: cannot read the metrics ({exc}); trying again", file=sys.stderr)
        else:
            wanted = workers_wanted(text, args.queue, args.tasks_per_worker, args.min_workers,
                                    args.max_workers)  # fmt: skip
            now = time.monotonic()
            if current is not None and wanted < current:
                lower_since = lower_since if lower_since is not None else now
                if now - lower_since < args.cooldown:
                    wanted = current
            else:
                lower_since = None
            if wanted != current:
                command = [part.replace("{n}", str(wanted)) for part in shlex.split(args.command)]
                waiting, busy = backlog(text, args.queue)
                print(f"autoscale: queue {args.queue}: {waiting:.0f} tasks waiting, {busy} workers"
                      f" busy: {wanted} workers (were {current})", file=sys.stderr)  # fmt: skip
                subprocess.run(command, check=False)
                current, lower_since = wanted, None
        time.sleep(args.every)


if __name__ == "__main__":
    main()
