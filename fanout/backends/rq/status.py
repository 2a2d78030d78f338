"""``fanout status``: what a Redis holds for RQ, in one plain dict (JSON-ready)."""

from __future__ import annotations

from typing import Any

from rq import Queue, Worker
from rq.suspension import is_suspended

from fanout.backends.rq.connection import (
    connect,
    mask_url,
    master_address,
    redis_url,
    translate,
)


def queue_status(url: str | None = None, queue: str | None = None) -> dict[str, Any]:
    """Queues with their lengths and workers with name, pid, host, state, current job;
    for a Sentinel URL, the master the Sentinels named (``master``, else None); whether
    the workers are paused (``paused``)."""
    url = redis_url(url)
    connection = connect(url)
    with translate(url):
        queues = [Queue(queue, connection=connection)] if queue else Queue.all(connection)
        workers = Worker.all(connection=connection, queue=queues[0] if queue else None)
        return {
            "redis": mask_url(url),
            "master": master_address(connection),
            "paused": bool(is_suspended(connection)),  # fanout pause, rq suspend
            "queues": [{"name": q.name, "length": q.count} for q in queues],
            "workers": [
                {
                    "name": w.name,
                    "pid": w.pid,
                    "host": w.hostname,
                    "state": str(w.get_state()),
                    "current_job": w.get_current_job_id(),
                    "queues": w.queue_names(),
                }
                for w in sorted(workers, key=lambda w: w.name)
            ],
        }
