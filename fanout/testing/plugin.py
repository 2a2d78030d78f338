"""fanout's pytest plugin (entry point ``pytest11``): fixtures for testing code that uses
fanout, and backends written for it. Loaded wherever fanout is installed; it imports
fakeredis only when a test asks for ``fanout_rq_url``.

- ``fanout_rq_url``: a Redis URL served in this process by fakeredis over real TCP (Lua
  scripts by lupa), with two real ``fanout worker`` processes serving its ``fanout``
  queue: ``fanout.run(f, items, backend="rq", redis_url=fanout_rq_url)`` takes the real
  rq path (targets imported by name on the workers, inputs and results pickled, jobs
  signed if ``FANOUT_SECRET`` is set) with no redis-server installed. One per session.
- ``fanout_backend_contract``: runs the backend contract's tests
  (:mod:`fanout.testing.contract`) against a backend: ``fanout_backend_contract({"backend":
  "mine", "workers": 2}, imports=["my_package"])``; fails with pytest's report if any
  contract test fails.

What fakeredis does not model, so keep a real redis-server for it: a Redis restart or
crash, ``maxmemory`` and eviction, replication and Sentinel, network faults, and exact
timing of blocking commands under load.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fanout._proc import stop_processes

WORKERS = ("fanout-test-1", "fanout-test-2")
START_SECONDS = 30.0


class FakeRedisServer:
    """fakeredis over TCP on a free loopback port, served by a thread of this process."""

    def __init__(self) -> None:
        try:
            from fakeredis._clients._tcp_server import TCPFakeRequestHandler, TcpFakeServer
        except ImportError as exc:
            raise pytest.UsageError(
                "fanout_rq_url needs fakeredis with Lua: pip install 'fanout[testing]'"
            ) from exc

        class Handler(TCPFakeRequestHandler):
            def setup(self) -> None:
                super().setup()
                # fakeredis writes addresses as Python tuples in CLIENT INFO/LIST, which
                # redis-py cannot parse (RQ's workers ask): host:port, as Redis does.
                host, port = self.connection.getpeername()[:2]
                local, local_port = self.connection.getsockname()[:2]
                client = self.current_client
                for info in (client._client_info, client.get_socket()._client_info):
                    info["addr"], info["laddr"] = f"{host}:{port}", f"{local}:{local_port}"

        self.server = TcpFakeServer(("127.0.0.1", 0), server_type="redis")
        self.server.RequestHandlerClass = Handler
        self.port = self.server.server_address[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fakeredis",
                                       daemon=True)  # fmt: skip
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _worker_env(url: str) -> dict[str, str]:
    # The workers import targets by name: whatever this test process can import.
    paths = [p for p in sys.path if p] + [os.getcwd()]
    return dict(os.environ, FANOUT_REDIS_URL=url, PYTHONPATH=os.pathsep.join(paths))


def _wait_for_workers(url: str, workers: list[subprocess.Popen[bytes]]) -> None:
    from redis import Redis
    from rq import Worker

    deadline = time.monotonic() + START_SECONDS
    with Redis.from_url(url) as connection:
        while {w.name for w in Worker.all(connection=connection)} < set(WORKERS):
            dead = [w for w in workers if w.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = "exited" if dead else f"did not register within {START_SECONDS:.0f} s"
                raise RuntimeError(f"fanout_rq_url: a fanout worker {why}")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def fanout_rq_url() -> Iterator[str]:
    """A Redis URL (fakeredis, in this process) with two ``fanout worker``s serving it."""
    server = FakeRedisServer()
    env = _worker_env(server.url)
    command = [sys.executable, "-m", "fanout", "worker", "--quiet", "--name"]
    workers = [subprocess.Popen([*command, name], env=env, start_new_session=True)
               for name in WORKERS]  # fmt: skip
    try:
        _wait_for_workers(server.url, workers)
        yield server.url
    finally:
        stop_processes(workers, ((signal.SIGTERM, 20.0), (signal.SIGKILL, 20.0)))
        server.stop()


def run_contract(options: dict[str, Any], imports: list[str] | tuple[str, ...] = ()) -> None:
    """Run the backend contract's tests against the backend ``options`` select (the
    keywords of ``fanout.run``), in a pytest of its own; ``imports``: modules that
    register the backend. Fails with that pytest's report if a test fails."""
    env = dict(os.environ, FANOUT_CONTRACT_OPTIONS=json.dumps(options),
               FANOUT_CONTRACT_IMPORTS=",".join(imports))  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + [os.getcwd()])
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs",
         "fanout.testing.contract_run"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"the backend contract failed for {options}:\n{done.stdout[-5000:]}"
                    f"{done.stderr[-2000:]}", pytrace=False)  # fmt: skip


@pytest.fixture
def fanout_backend_contract() -> Callable[..., None]:
    """``fanout_backend_contract(options, imports=())``: the contract's tests, run."""
    return run_contract
