"""What a job needs from the worker that runs it: its name, its Redis, its allowlist,
its task process, its heartbeat, its stop and drain flags, in one object that ``fanout
worker`` makes once (``worker.py``) and hands to every job it runs (``job.py``)."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rq.job import Job
from rq.utils import now, utcformat

from fanout.backends.local import LocalBackend
from fanout.backends.rq.allowlist import allowlist_from_env

if TYPE_CHECKING:
    from fanout.backends.rq.metrics import WorkerMetrics

REDIS_WAIT = 60.0  # how long a push keeps retrying a lost Redis, by default


class TaskProcess(LocalBackend):
    """The task process of a ``fanout worker``: its results are the rq backend's."""

    name = "rq"
    # One task process, whose results go to Redis every PUSH_SECONDS anyway: batches
    # and result messages far bigger than a local pool's cost less per task, and
    # spread nothing unevenly (benchmarks/scale.py: the worker's CPU per task).
    batch_seconds = 0.1
    flush_seconds = 0.05


class WorkerContext:
    """What a job needs from the worker that runs it."""

    def __init__(
        self,
        name: str,
        url: str,
        allow: tuple[str, ...],
        executor: LocalBackend | None = None,
        *,
        max_value_bytes: int = 512 * 2**20,
        redis_wait: float = REDIS_WAIT,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        """``max_value_bytes``: Redis's limit on one value (``proto-max-bulk-len``: a
        bigger push would fail); ``redis_wait``: how long a push waits for a lost Redis;
        ``metrics``: what ``--metrics-port`` counts (None: nothing)."""
        self.name = name
        self.url = url  # for messages only
        self.allow = allow  # module prefixes whose code may run; () admits any
        self.executor = executor  # the task process; None: run tasks in this process
        self.heartbeat: Callable[[], None] | None = None  # set while a job runs
        self.max_value_bytes = max_value_bytes
        self.redis_wait = redis_wait
        self.stop_requested = False  # set from RQ's command thread (stop-job)
        # Set from RQ's command thread (fanout drain): the job running gives back what it
        # has not started, and the worker takes no new job.
        self.drain_requested = False
        self.gave_back = 0  # tasks its jobs gave back on a drain
        self.since = utcformat(now())  # when this process began to serve (RQ's time format)
        self.metrics = metrics

    def pause(self, seconds: float) -> None:
        """Wait ``seconds`` in a job, heartbeating (a worker that refused a job before)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 1.0))
            if self.heartbeat is not None:
                self.heartbeat()

    @classmethod
    def of_stock_worker(cls, job: Job, limited: bool = False) -> WorkerContext:
        """A stock ``rq worker``: its name, ``FANOUT_ALLOW``; tasks run in the job's
        work-horse, or, for a ``limited`` run (max_memory, recycling: a process is ended
        or replaced from outside), in a task process of the job's own, as on a ``fanout
        worker``. Close it after the job (:meth:`close`)."""
        kwargs = job.connection.connection_pool.connection_kwargs
        url = f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
        name = job.worker_name or multiprocessing.current_process().name
        executor = TaskProcess(workers=1, daemon=False, process_name=name) if limited else None
        return cls(name, url, allowlist_from_env(), executor)

    def close(self) -> None:
        """End the task process, if there is one."""
        if self.executor is not None:
            self.executor.close(cancel=True)
