"""The processes of a ``fanout worker``: tasks that run fanout themselves, how it stops
on SIGTERM, what it reaps, and what ``--workers N`` costs a run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
import redis
from redis.client import PubSub

import fanout
from fanout.backends.rq.worker import FanoutWorker
from tests import tasks
from tests.helpers import (
    RedisServer,
    finish,
    gone,
    registered_workers,
    start_cli,
    start_python,
    start_worker,
    stop_workers,
    wait_for_workers,
    wait_until,
)


@pytest.fixture
def own_workers() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``fanout worker`` processes of this test's own; stopped at teardown."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(url: str, name: str, *args: str) -> subprocess.Popen[bytes]:
        processes.append(start_worker(url, name, *args))
        return processes[-1]

    yield start
    stop_workers(processes)


def ended(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` s for ``processes`` to end; those still running. A zombie
    has ended: an orphan's is reaped by init, which here takes up to 2 s."""
    deadline = time.monotonic() + timeout
    while (alive := [p for p in processes if not gone(p.pid)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return alive


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


def test_a_stopping_worker_ends_its_command_listener_even_when_it_took_the_reply_first(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RQ unsubscribes, then stops its command listener. A listener that handled the
    reply first waited 60 s for a subscription that never came, and the stop (redis-py
    8.2's, which joins it) with it: ``fanout worker`` took ~60 s to exit on SIGTERM in 5
    of 8 tries on a loaded machine. Here the listener always takes the reply first."""
    unsubscribe = PubSub.unsubscribe

    def unsubscribe_then_lose_the_race(self: PubSub, *args: Any) -> Any:
        sent = unsubscribe(self, *args)
        wait_until(lambda: not self.subscribed, 10, "the listener handled the reply")
        return sent

    connection = redis.Redis(port=redis_server.port)
    worker = FanoutWorker(["listener-test"], connection=connection, name="listener-test")
    worker.subscribe()
    listener = worker.pubsub_thread
    assert listener is not None
    wait_until(lambda: worker.pubsub is not None and worker.pubsub.subscribed, 10, "subscribed")
    monkeypatch.setattr(PubSub, "unsubscribe", unsubscribe_then_lose_the_race)
    stopping = threading.Thread(target=worker.unsubscribe, daemon=True)
    stopping.start()
    stopping.join(10)
    try:
        assert not stopping.is_alive(), "the worker still waits for its command listener"
        listener.join(5)
        assert not listener.is_alive()
    finally:
        connection.close()


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_a_worker_that_ran_jobs_exits_on_sigterm_within_seconds_every_time(
    redis_server: RedisServer, processes: int
) -> None:
    """The end-to-end twin of the test above, in a loop: the race is lost now and then."""
    url = redis_server.url
    for attempt in range(4):
        queue = f"sigterm-{processes}-{attempt}"
        names = [queue] if processes == 1 else [f"{queue}-{i}" for i in (1, 2)]
        worker = start_worker(url, queue, "--queue", queue, "--processes", str(processes),
                              "--quiet")  # fmt: skip
        try:
            wait_for_workers(url, names)
            results = fanout.run(tasks.square, range(20), backend="rq", redis_url=url, queue=queue)
            assert all(r.ok for r in results), [r.error for r in results if not r.ok]
            tree = psutil.Process(worker.pid).children(recursive=True)
            signalled = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(30)
            seconds = time.monotonic() - signalled
        finally:
            stop_workers([worker])
        assert seconds < 5, f"try {attempt + 1}: the worker took {seconds:.1f} s to exit"
        assert worker.returncode == 0
        assert ended(tree, 5) == [], "left behind"
        assert not set(names) & registered_workers(url)


CALLER_WITH_WORKERS = """
import signal
import sys
import fanout
from tests import tasks

with fanout.Fanout(backend="rq", workers=2, redis_url=sys.argv[1], queue=sys.argv[2]) as fo:
    assert all(r.ok for r in fo.map(tasks.square, range(20)))
    print("ran", flush=True)
    signal.pause()  # until the test kills it
"""


@pytest.mark.slow
def test_the_workers_of_a_sigkilled_caller_exit_within_seconds(redis_server: RedisServer) -> None:
    """Its ``--workers N`` get SIGTERM when it dies: they used to live ~60 s more."""
    url = redis_server.url
    caller = start_python("-c", CALLER_WITH_WORKERS, url, "orphaned")
    try:
        assert caller.stdout is not None
        assert caller.stdout.readline() == "ran\n"
        workers = psutil.Process(caller.pid).children()
        names = {
            w
            for w in registered_workers(url)
            if w.endswith(tuple(f"-{caller.pid}-{i}" for i in (1, 2)))
        }
        assert len(workers) == len(names) == 2, (workers, names)
        caller.kill()
        killed = time.monotonic()
        alive = ended(workers, 30)
        seconds = time.monotonic() - killed
    finally:
        caller.kill()
        finish(caller)
    assert not alive, f"left behind: {alive}"
    assert seconds < 5, f"its workers took {seconds:.1f} s to exit"
    assert not names & registered_workers(url)


STOPPED_AS_IT_REGISTERS = """
import os, signal, sys
from fanout.backends.rq import worker

register_birth = worker.FanoutWorker.register_birth

def register_then_stop(self):
    register_birth(self)
    os.kill(os.getpid(), signal.SIGTERM)  # before RQ installs its handlers

worker.FanoutWorker.register_birth = register_then_stop
sys.exit(worker.run_worker(sys.argv[1], "window", "window-1", quiet=True))
"""


def test_a_worker_stopped_as_it_registers_exits_and_unregisters(
    redis_server: RedisServer,
) -> None:
    """RQ registers a worker, subscribes, and only then installs its signal handlers: a
    SIGTERM in between killed it with its name still registered (refused to a restart)."""
    process = start_python("-c", STOPPED_AS_IT_REGISTERS, redis_server.url)
    _, stderr = finish(process, 30)
    assert process.returncode == 0, stderr
    assert "window-1" not in registered_workers(redis_server.url)


@pytest.mark.slow
def test_the_workers_of_a_sigkilled_processes_n_parent_exit(redis_server: RedisServer) -> None:
    """``fanout worker --processes 2`` forwards a SIGTERM to its workers; SIGKILLed, it
    forwards nothing: they get the SIGTERM from the kernel (they served on for ever)."""
    url = redis_server.url
    parent = start_worker(url, "pool", "--queue", "pool", "--processes", "2", "--quiet")
    workers: list[psutil.Process] = []
    alive: list[psutil.Process] = []
    try:
        wait_for_workers(url, ["pool-1", "pool-2"])
        workers = psutil.Process(parent.pid).children()
        parent.kill()
        alive = ended(workers, 10)
    finally:
        stop_workers([parent])
        for worker in alive:  # no longer our children: the leftover check cannot see them
            worker.kill()
    assert not alive, f"left behind: {alive}"
    assert not {"pool-1", "pool-2"} & registered_workers(url)


def zombie_or_alive(pid: int) -> bool:
    """True while ``pid`` exists at all, a zombie included (nobody reaped it yet)."""
    try:
        psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return False
    return True


@pytest.mark.slow
def test_a_task_process_killed_between_jobs_is_reaped_and_replaced(
    redis_server: RedisServer, own_workers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """It stayed a zombie until the worker's next job."""
    url = redis_server.url
    worker = own_workers(url, "reaper-1", "--queue", "reaper", "--quiet")
    wait_for_workers(url, ["reaper-1"])
    options: dict[str, Any] = {"backend": "rq", "redis_url": url, "queue": "reaper"}
    (first,) = fanout.run(tasks.pid_of, [0], **options)
    task_process = first.value
    assert psutil.Process(task_process).ppid() == worker.pid
    os.kill(task_process, signal.SIGKILL)
    wait_until(lambda: not zombie_or_alive(task_process), 10, "the task process reaped")
    (second,) = fanout.run(tasks.pid_of, [0], **options)
    assert second.ok, second.error
    assert second.value != task_process
    assert second.worker.ppid == worker.pid


@pytest.mark.slow
def test_cli_workers_n_stop_in_well_under_their_grace_after_the_last_result(
    redis_server: RedisServer,
) -> None:
    """``--workers N`` starts and stops N workers per run: the stop used to wait out its
    first 3 s grace in 7 of 8 runs (a worker's SIGTERM took ~60 s; see above)."""
    for attempt in range(3):
        cli = start_cli("run", "tests.tasks:square", "1", "2", "3", "--backend", "rq",
                        "--workers", "2", "--json", "--redis-url", redis_server.url)  # fmt: skip
        try:
            assert cli.stdout is not None
            lines = [cli.stdout.readline() for _ in range(3)]
            last_result = time.monotonic()
            _, stderr = finish(cli, 30)
            seconds = time.monotonic() - last_result
        finally:
            cli.kill()
            finish(cli)
        assert cli.returncode == 0, stderr
        assert sorted(json.loads(line)["value"] for line in lines) == [1, 4, 9]
        assert seconds < 2.5, f"try {attempt + 1}: {seconds:.1f} s from the last result to exit"
