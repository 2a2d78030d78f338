"""Celery and Dask distributed beside fanout on rq, for ``benchmarks/compare.py``.

Each is started and warmed up outside the timing, with two worker processes, and timed
twice: as a user calls it by default, and tuned the way its docs suggest for many tiny
tasks.

- Celery 5 (Redis broker and result backend, one ``celery worker --concurrency 2``):
  ``group(inc.s(x) for x in items).apply_async().get()``; tuned:
  ``inc.chunks(items, n).group().apply_async().get()``, ``n`` = items / 16 (eight
  chunk messages per worker: few messages, and a balanced end).
- Dask distributed (``LocalCluster(n_workers=2, threads_per_worker=1)``):
  ``client.gather(client.map(inc, items))``; tuned: the same with
  ``distributed.scheduler.worker-saturation: inf`` set before the cluster starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
CHUNKS_PER_WORKER = 8  # Celery's tuned rows: the items in this many chunks per worker


def available() -> str | None:
    """Why the peer rows cannot run (a missing package), or None."""
    import importlib.util

    missing = [m for m in ("celery", "distributed") if importlib.util.find_spec(m) is None]
    return f"pip install {' '.join(missing)}" if missing else None


Runner = Callable[[str, list[Any]], None]  # (task name: inc or nap, items)


@contextlib.contextmanager
def celery(url: str, processes: Callable[..., Any], log: Path, wait_until: Callable[..., None]
           ) -> Iterator[tuple[Runner, Runner]]:  # fmt: skip
    """Celery's default and tuned runners, a worker of two processes serving them."""
    os.environ["BENCH_REDIS_URL"] = url
    sys.path.insert(0, str(BENCH_DIR))
    import celery_app
    from celery import group

    command = [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--concurrency",
               "2", "--pool", "prefork", "--loglevel", "WARNING", "--without-gossip",
               "--without-mingle", "--without-heartbeat"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(BENCH_DIR))
    with processes([command], log, cwd=BENCH_DIR, env=env):
        app = celery_app.app
        wait_until(lambda: bool(app.control.ping(timeout=0.5)), "celery worker", log, 60)

        def default(task: str, items: list[Any]) -> None:
            fn = getattr(celery_app, task)
            got = group(fn.s(x) for x in items).apply_async().get(timeout=600)
            assert len(got) == len(items)

        def tuned(task: str, items: list[Any]) -> None:
            fn = getattr(celery_app, task)
            size = -(-len(items) // (2 * CHUNKS_PER_WORKER))
            got = fn.chunks(((x,) for x in items), size).group().apply_async().get(timeout=600)
            assert sum(len(part) for part in got) == len(items)

        default("inc", list(range(20)))  # warm up
        tuned("inc", list(range(20)))
        yield default, tuned


@contextlib.contextmanager
def dask(tuned: bool) -> Iterator[Runner]:
    """Dask's runner on a LocalCluster of two single-threaded worker processes."""
    import dask as dask_config
    from distributed import Client, LocalCluster

    sys.path.insert(0, str(BENCH_DIR))
    import bench_tasks

    # Its workers' heartbeats complain, with tracebacks, when the cluster closes under them.
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    settings = {"distributed.scheduler.worker-saturation": "inf"} if tuned else {}
    with dask_config.config.set(settings), LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, Client(cluster) as client:  # fmt: skip

        def run(task: str, items: list[Any]) -> None:
            fn = getattr(bench_tasks, task)
            got = client.gather(client.map(fn, items, pure=False))
            assert len(got) == len(items)

        run("inc", list(range(20)))  # warm up
        yield run
