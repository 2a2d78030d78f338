"""The local backend's adapter: a LocalBackend owns one Pool and turns each map() into a
LocalRun that the pool serves."""

from __future__ import annotations

import os
import pickle
import weakref
from collections.abc import Callable, Iterator

from fanout._wire import Task
from fanout.backends.base import Backend, MapSpec
from fanout.backends.local.pool import Pool
from fanout.backends.local.run import FLUSH_WORK_SECONDS, TARGET_BATCH_SECONDS, LocalRun
from fanout.backends.runstate import RunState
from fanout.backends.spec import worker_limits
from fanout.errors import TargetError
from fanout.models import TaskResult


class LocalBackend(Backend):
    """Worker processes on this machine, named ``worker-1``, ``worker-2``, ...

    ``daemon=True`` (default): workers never outlive the caller. ``daemon=False``:
    ordinary processes, whose tasks may start processes of their own.
    ``max_tasks_per_worker``: a worker exits after that many tasks and a fresh one takes
    its place (``multiprocessing.Pool``'s ``maxtasksperchild``).
    ``max_memory_per_worker`` (bytes, or a size such as ``"2G"``): a worker holding more
    than that after a task is replaced before its next one.
    """

    name = "local"
    workers_are_children = True
    #: Work per batch, and per result message from a worker (run.py says why).
    batch_seconds = TARGET_BATCH_SECONDS
    flush_seconds = FLUSH_WORK_SECONDS

    def __init__(
        self,
        workers: int | None = None,
        daemon: bool = True,
        *,
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | str | None = None,
        process_name: str | None = None,
    ) -> None:
        """``process_name`` names every worker process alike (``fanout worker`` names
        its task process after the RQ worker); by default they are ``worker-N``."""
        if workers is None:
            workers = os.cpu_count() or 1
        if workers < 1:
            raise ValueError(f"the local backend needs at least one worker, got {workers}")
        max_tasks, memory = worker_limits(max_tasks_per_worker, max_memory_per_worker)
        self.workers = workers
        self.daemon = daemon
        self._pool = Pool(workers, daemon, process_name, self.name, max_tasks, memory)
        # Workers are stopped when the backend is garbage-collected or at interpreter exit
        # (non-daemon workers would otherwise keep the interpreter waiting for them).
        self._finalizer = weakref.finalize(self, self._pool.shutdown, True)

    def map(self, spec: MapSpec) -> Iterator[TaskResult]:
        return self.stream(spec)[1]

    def stream(
        self, spec: MapSpec, idle: Callable[[], None] | None = None, max_wait: float | None = None
    ) -> tuple[LocalRun, Iterator[TaskResult]]:
        """``map`` with a hook, and its run: ``idle()`` runs before each wait for
        workers, at least every ``max_wait`` seconds while tasks run (``fanout worker``
        pushes results and heartbeats there, and may give the run's rest back)."""
        run = self.start_run(spec)
        pool = self._pool
        return run, run.results(lambda: pool.step(run, idle, max_wait), lambda: pool.abandon(run))

    # The driving interface of the drop-ins (backends/base.py): one thread drives runs.

    def start_run(self, spec: MapSpec) -> LocalRun:
        import cloudpickle

        try:
            fn_bytes = cloudpickle.dumps(spec.fn, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise TargetError(f"cannot send the target to worker processes: {exc}") from exc
        run = LocalRun(spec, fn_bytes, self.workers, self.name, self.batch_seconds,
                       self.flush_seconds)  # fmt: skip
        self._pool.runs.append(run)
        return run

    def pump(self, max_wait: float | None) -> None:
        self._pool.pump(max_wait)

    def end_run(self, run: RunState) -> None:
        assert isinstance(run, LocalRun)
        self._pool.abandon(run)

    def wake(self) -> None:
        self._pool.wake()

    def give_back(self, run: RunState) -> list[Task]:
        assert isinstance(run, LocalRun)
        return self._pool.give_back(run)

    def reap(self) -> None:
        """Between runs: reap the workers that died idle (``fanout worker`` does, while
        it waits for jobs)."""
        self._pool.reap()

    def pids(self) -> list[int]:
        """The pids of the worker processes this backend holds now."""
        return [worker.pid for worker in self._pool.workers]

    def kill_running(self) -> None:
        """SIGKILL every worker that holds tasks (safe from another thread)."""
        self._pool.kill_running()

    def close(self, cancel: bool = False) -> None:
        self._finalizer.detach()
        self._pool.shutdown(cancel)
