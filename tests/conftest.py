"""Shared fixtures, and the test tiers.

- ``backend`` runs the contract tests on every backend; for ``rq`` it brings a real
  ``redis-server`` on a free port and two real ``fanout worker`` processes.
- Redis-backed tests skip when ``redis-server`` is missing, but fail when ``CI`` is set.
- Tiers: plain ``pytest`` runs the fast tier, every test but those marked ``slow`` (the
  fault drills that take seconds each); ``--tier all`` (or ``FANOUT_TEST_TIER=all``, which
  ``.ci/run`` sets) runs them too. A ``-m`` expression of your own picks tests itself.

Helpers the test modules import are in ``tests/helpers.py``.
"""

from __future__ import annotations

import compileall
import contextlib
import os
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from fanout.backends.local import warden
from tests.helpers import (
    ROOT,
    RQ_WORKERS,
    SECRETS_IN_TESTS,
    SESSION_PIDS,
    RedisServer,
    of_the_session,
    start_worker,
    stop_workers,
    wait_for_workers,
)

BACKENDS = ["local", "inline", "rq"]
TIERS = ("fast", "all")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--tier",
        choices=TIERS,
        default=None,
        help="fast: every test but the slow fault drills (the default); all: every test"
        " (.ci/run). Default: $FANOUT_TEST_TIER, else fast.",
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    """The suite starts hundreds of Python processes (CLIs, workers) that import fanout
    and the test tasks from this tree. Where ``PYTHONDONTWRITEBYTECODE`` is set, each of
    them compiles every module it imports (about 0.1 s), as nothing writes the bytecode:
    write it once here, as an install would (a changed source is compiled again)."""
    for folder in ("fanout", "tests"):
        compileall.compile_dir(ROOT / folder, quiet=1)


def tier(config: pytest.Config) -> str:
    chosen = config.getoption("--tier") or os.environ.get("FANOUT_TEST_TIER") or "fast"
    if chosen not in TIERS:
        raise pytest.UsageError(f"FANOUT_TEST_TIER={chosen!r}: use one of {', '.join(TIERS)}")
    return str(chosen)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if tier(config) == "all" or config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
        config.stash[_SLOW_LEFT] = len(slow)


_SLOW_LEFT = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    left = config.stash.get(_SLOW_LEFT, 0)
    if left:
        terminalreporter.write_line(
            f"fanout: fast tier: {left} slow fault drills left out"
            " (run every test with: pytest --tier all, as .ci/run does)"
        )


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Every test must leave no child process of its own running."""
    me = psutil.Process(os.getpid())
    before = {p.pid for p in me.children(recursive=True)}
    yield
    keeper = warden.running()  # the local pools' warden lives as long as this process
    if keeper is not None:
        SESSION_PIDS.add(keeper.pid)
    new = [p for p in me.children(recursive=True) if p.pid not in before]
    _gone, alive = psutil.wait_procs([p for p in new if not of_the_session(p)], timeout=5)
    assert not alive, f"processes left behind: {alive}"


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


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    SESSION_PIDS.add(server.process.pid)
    yield server
    server.stop()


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
    if backend == "inline":
        return {"backend": "inline"}  # every task in the caller: it takes no worker count
    return {"backend": backend, "workers": 2}


@pytest.fixture(scope="session")
def fanout_rq_url(fanout_rq_url: str) -> str:
    """fanout.testing's fakeredis URL (its workers belong to the session, not a test)."""
    from fanout.testing.plugin import WORKERS

    for child in psutil.Process(os.getpid()).children():
        with contextlib.suppress(psutil.Error):
            if any(name in child.cmdline() for name in WORKERS):
                SESSION_PIDS.add(child.pid)
    return fanout_rq_url
