"""Shared fixtures.

- ``backend`` runs the contract tests on every backend; for ``rq`` it brings a real
  ``redis-server`` on a free port and two real ``fanout worker`` processes.
- Redis-backed tests skip when ``redis-server`` is missing, but fail when ``CI`` is set.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import fanout

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ["local", "inline", "rq"]
RQ_WORKERS = ["test-worker-1", "test-worker-2"]


# Processes that live for the whole session (redis-server, shared workers).
SESSION_PIDS: set[int] = set()


def _of_the_session(process: psutil.Process) -> bool:
    try:
        return process.pid in SESSION_PIDS or any(
            parent.pid in SESSION_PIDS for parent in process.parents()
        )
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Every test must leave no child process of its own running."""
    me = psutil.Process(os.getpid())
    before = {p.pid for p in me.children(recursive=True)}
    yield
    new = [p for p in me.children(recursive=True) if p.pid not in before]
    _gone, alive = psutil.wait_procs([p for p in new if not _of_the_session(p)], timeout=5)
    assert not alive, f"processes left behind: {alive}"


# Every password and secret the tests use. None may appear in anything the tests'
# processes print (fanout's CLI, its workers, its log): checked on every test's
# captured output, by the hook below.
SECRETS_IN_TESTS = (
    "rightpass", "wrongpass", "alicepw", "wrongpw", "s3cret",  # test_rq.py
    "s3cr3t-for-tests", "pw-for-tests-7f3a9c", "wrong-pw-for-tests",  # test_security.py
    "local-demo-only",  # the compose demo's password and secret
)  # fmt: skip


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    if report.passed:
        texts = [text for name, text in report.sections if name.endswith(report.when)]
        leaked = sorted({s for s in SECRETS_IN_TESTS for text in texts if s in text})
        if leaked:
            report.outcome = "failed"
            report.longrepr = f"a password or secret of the tests was printed: {leaked}"


# Settings a test must not inherit: a stray URL or backend would be used, and rich
# would colour or resize what the tests read.
SCRUBBED_ENV = (
    "FORCE_COLOR",
    "NO_COLOR",
    "TTY_COMPATIBLE",
    "TTY_INTERACTIVE",
    "COLUMNS",
    "LINES",
)


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The inherited environment without fanout or rich settings, plus ``extra``."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("FANOUT_") and k not in SCRUBBED_ENV
    }
    env["COLUMNS"] = "200"  # wide enough that rich never wraps a table row
    env.update(extra or {})
    return env


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``python -m fanout ARGS`` from the repo root, with pipes for stdout and stderr."""
    return start_python("-m", "fanout", *args, env=env)


def start_python(
    *args: str, env: dict[str, str] | None = None, new_session: bool = False
) -> subprocess.Popen[str]:
    """``python ARGS`` from the repo root, with pipes for stdout and stderr;
    ``new_session``: in a process group of its own, as a terminal's foreground job."""
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=cli_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)


def finish(proc: subprocess.Popen[Any], timeout: float = 60, input: Any = None) -> tuple[Any, Any]:
    """``proc.communicate`` within ``timeout`` s; on a time-out, kill and reap it first."""
    try:
        return proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise


def run_fanout(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m fanout ARGS`` to completion, from the repo root."""
    proc = start_cli(*args, env=env)
    stdout, stderr = finish(proc, timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of the test session's own, on a free port, keeping nothing on disk."""

    def __init__(self, *args: str) -> None:
        server = shutil.which("redis-server")
        if server is None:
            message = "redis-server is not installed (apt-get install redis-server)"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        self.port = free_port()
        self.process = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", *args],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    SESSION_PIDS.add(server.process.pid)
    yield server
    server.stop()


def start_worker(url: str, name: str, *args: str) -> subprocess.Popen[bytes]:
    """A real ``fanout worker`` process, run from the repo root so tests.tasks imports."""
    env = dict(os.environ, FANOUT_REDIS_URL=url)
    return subprocess.Popen(
        [sys.executable, "-m", "fanout", "worker", "--name", name, *args], cwd=ROOT, env=env
    )


def wait_for_workers(url: str, names: list[str], timeout: float = 20.0) -> None:
    from redis import Redis
    from rq import Worker

    connection = Redis.from_url(url)
    deadline = time.monotonic() + timeout
    while not set(names) <= {w.name for w in Worker.all(connection=connection)}:
        assert time.monotonic() < deadline, f"workers {names} did not register"
        time.sleep(0.05)
    connection.close()


def stop_workers(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def rq_workers(redis_server: RedisServer) -> Iterator[list[str]]:
    """Two named fanout workers serving the default queue for the whole session."""
    processes = [start_worker(redis_server.url, name) for name in RQ_WORKERS]
    SESSION_PIDS.update(p.pid for p in processes)
    wait_for_workers(redis_server.url, RQ_WORKERS)
    yield RQ_WORKERS
    stop_workers(processes)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if name == "rq":
        request.getfixturevalue("rq_workers")
    return name


@pytest.fixture
def options(backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Keyword arguments that give ``backend`` two workers."""
    if backend == "rq":
        url = request.getfixturevalue("redis_server").url
        return {"backend": "rq", "redis_url": url}  # the session's two workers
    return {"backend": backend, "workers": 2}


@pytest.fixture
def run(options: dict[str, Any]) -> Callable[..., list[fanout.TaskResult]]:
    """``fanout.run`` on the backend under test."""

    def run(target: Any, items: Any = None, **kwargs: Any) -> list[fanout.TaskResult]:
        return fanout.run(target, items, **{**options, **kwargs})

    return run


@pytest.fixture
def make_fanout(options: dict[str, Any]) -> Callable[[], fanout.Fanout]:
    return lambda: fanout.Fanout(**options)
