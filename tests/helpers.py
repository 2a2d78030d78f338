"""Helpers the test modules share: processes, Redis servers, workers, waiting.

Fixtures and hooks live in ``conftest.py``; everything a test imports lives here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from fanout._proc import stop_processes

ROOT = Path(__file__).resolve().parent.parent
RQ_WORKERS = ["test-worker-1", "test-worker-2"]

# Processes that live for the whole session (redis-server, shared workers): the
# leftover-process check in conftest leaves them and their children alone.
SESSION_PIDS: set[int] = set()

# Every password and secret the tests use. None may appear in anything the tests'
# processes print (fanout's CLI, its workers, its log): checked on every test's
# captured output by conftest.
SECRETS_IN_TESTS = (
    "rightpass", "wrongpass", "alicepw", "wrongpw", "s3cret",  # test_rq.py
    "s3cr3t-for-tests", "pw-for-tests-7f3a9c", "wrong-pw-for-tests",  # test_security.py
    "local-demo-only",  # the compose demo's password and secret
)  # fmt: skip

# Settings a test must not inherit: a stray URL or backend would be used, and rich
# would colour or resize what the tests read.
SCRUBBED_ENV = ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES")


def of_the_session(process: psutil.Process) -> bool:
    try:
        return process.pid in SESSION_PIDS or any(
            parent.pid in SESSION_PIDS for parent in process.parents()
        )
    except psutil.NoSuchProcess:
        return False


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


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie counts: it runs nothing)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def require(command: str, package: str) -> str:
    """The path of ``command``; skip the test without it, but fail when ``CI`` is set."""
    path = shutil.which(command)
    if path is None:
        message = f"{command} is not installed (apt-get install {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


class RedisServer:
    """A redis-server of the test session's own, on a free port, keeping nothing on disk."""

    def __init__(self, *args: str, port: int | None = None) -> None:
        server = require("redis-server", "redis-server")
        self.port = port or free_port()
        # Its own directory: a replica's full sync writes dump.rdb even with --save "".
        self.dir = tempfile.TemporaryDirectory(prefix="fanout-redis-")
        self.args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", self.dir.name, *args]  # fmt: skip
        self.process = subprocess.Popen([server, *self.args], stdout=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        wait_until(
            lambda: accepts_connections(self.port) or self.process.poll() is not None,
            10,
            "redis-server accepts connections",
        )
        if self.process.poll() is not None:
            raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.dir.cleanup()


def start_worker(
    url: str,
    name: str,
    *args: str,
    python: str = sys.executable,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """A real ``fanout worker`` process, run from the repo root so tests.tasks imports;
    ``env``: more of its environment."""
    env = dict(os.environ, FANOUT_REDIS_URL=url, **(env or {}))
    return subprocess.Popen(
        [python, "-m", "fanout", "worker", "--name", name, *args], cwd=ROOT, env=env
    )


def registered_workers(url: str) -> set[str]:
    from redis import Redis
    from rq import Worker

    with Redis.from_url(url) as connection:
        return {w.name for w in Worker.all(connection=connection)}


def wait_for_workers(url: str, names: list[str], timeout: float = 20.0) -> None:
    wait_until(lambda: set(names) <= registered_workers(url), timeout, f"workers {names} register")


def stop_workers(processes: list[subprocess.Popen[bytes]]) -> None:
    stop_processes(processes, ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)))


class CuttableProxy:
    """A TCP relay to ``port`` on 127.0.0.1 that a test can cut, as a network partition
    would: every connection through it is dropped and new ones are refused until
    :meth:`restore`. ``held``: a connection waits, accepted but not relayed, until
    :meth:`release` (``accepted`` is set once one came): a client started ahead, ready,
    whose first command reaches Redis at the moment the test chooses."""

    def __init__(self, port: int, held: bool = False) -> None:
        import threading

        self.target = port
        self.port = free_port()
        self.lock = threading.Lock()
        self.accepted = threading.Event()
        self.open = threading.Event()
        if not held:
            self.open.set()
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.restore()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def restore(self) -> None:
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def release(self) -> None:
        """Relay the connections held (``held``), and every one after them."""
        self.open.set()

    def cut(self) -> None:
        with self.lock:
            doomed, self.sockets = [*self.sockets, self.listener], []
            self.listener = None
        for sock in doomed:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.accepted.set()
            self.open.wait()
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                if self.listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
