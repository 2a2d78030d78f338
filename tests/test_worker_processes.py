"""The processes of a ``fanout worker``: tasks that run fanout themselves, how it stops
on SIGTERM, what it reaps, and what ``--workers N`` costs a run."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import pytest

import fanout
from tests import tasks
from tests.helpers import RedisServer, start_worker, stop_workers, wait_for_workers


@pytest.fixture
def own_workers() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``fanout worker`` processes of this test's own; stopped at teardown."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(url: str, name: str, *args: str) -> subprocess.Popen[bytes]:
        processes.append(start_worker(url, name, *args))
        return processes[-1]

    yield start
    stop_workers(processes)


def test_a_task_on_a_fanout_worker_runs_fanout_itself(
    redis_server: RedisServer, own_workers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """The inner workers are forked from the worker's task process: they used to fail
    every inner task with ``WorkerLost: exited with code 0`` (see test_local's twin)."""
    url = redis_server.url
    own_workers(url, "nesting-1", "--queue", "nesting", "--quiet")
    wait_for_workers(url, ["nesting-1"])
    results = fanout.run(tasks.nested_run, [3, 3], backend="rq", redis_url=url, queue="nesting")
    for r in results:
        assert r.ok, r.error
        assert r.worker.name == "nesting-1"
        assert r.value["inner"] == [[x * x, r.worker.pid] for x in range(3)]
