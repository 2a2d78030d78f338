"""The Celery app of the benchmark's peer rows (``benchmarks/peers.py``): a Redis broker
and result backend from ``BENCH_REDIS_URL``, and the benchmark's two tasks."""

from __future__ import annotations

import os

import bench_tasks
from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"], backend=os.environ["BENCH_REDIS_URL"])
# JSON, Celery's default: it refuses pickle as root (the benchmark's machine runs as root).
app.conf.update(worker_prefetch_multiplier=4, broker_connection_retry_on_startup=True)


@app.task
def inc(x: int) -> int:
    return bench_tasks.inc(x)


@app.task
def nap(seconds: float) -> float:
    return bench_tasks.nap(seconds)
