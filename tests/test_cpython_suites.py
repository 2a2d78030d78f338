"""CPython 3.13's own tests of ``ProcessPoolExecutor`` and ``multiprocessing.Pool`` pass
against ``fanout.Executor`` and ``fanout.Pool``, on the local and the rq backend.

The suites need Python 3.13's test package, so ``tests/cpython_suites.py`` runs in a
Python 3.13 interpreter with fanout installed: ``$FANOUT_PY313``, else ``.venv313``
(``.ci/run`` makes it). Both backends run at once (their tests mostly wait); on rq, two
``fanout worker`` processes of that interpreter serve the suite's queue.
"""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers import ROOT, RedisServer, start_worker, stop_workers, wait_for_workers

SUITES = "tests/cpython_suites.py"
# What tests/cpython_suites.py leaves out on purpose (its EXCLUDED, with the reasons).
EXCLUDED = {"test_make_pool"}


def python313() -> str:
    """The Python 3.13 to run the suites with; skip without one, fail in CI."""
    python = os.environ.get("FANOUT_PY313") or str(ROOT / ".venv313" / "bin" / "python")
    probe = (
        "import sys, fanout, test.test_concurrent_futures; assert sys.version_info[:2] == (3, 13)"
    )
    ok = (
        Path(python).exists() and subprocess.run([python, "-c", probe], check=False).returncode == 0
    )
    if not ok:
        message = (
            f"no Python 3.13 with fanout and its test package at {python}: make one with"
            " `PYENV_VERSION=3.13.0 python3.13 -m venv .venv313 && .venv313/bin/pip install"
            " -e . pytest pytest-timeout` (or set FANOUT_PY313)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


def start_suites(
    python: str, backend: str, report: Path, env: dict[str, str]
) -> subprocess.Popen[str]:
    command = [
        python, "-m", "pytest", SUITES, "-q", "-p", "no:cacheprovider", "--noconftest",
        "-W", "ignore::DeprecationWarning", "--timeout", "120", f"--junitxml={report}",
    ]  # fmt: skip
    env = dict(os.environ, FANOUT_SUITE_BACKEND=backend, **env)
    env.pop("FANOUT_BACKEND", None)
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def outcomes(report: Path) -> dict[str, str]:
    """Test name -> passed, failed, skipped (from the JUnit report)."""
    found = {}
    for case in ET.parse(report).iter("testcase"):  # noqa: S314 - our own report
        name = f"{case.get('classname', '').rpartition('.')[2]}.{case.get('name')}"
        kinds = {child.tag for child in case} & {"failure", "error", "skipped"}
        found[name] = kinds.pop() if kinds else "passed"
    return found


@pytest.mark.slow
def test_cpython_suites_pass_on_local_and_rq(tmp_path: Path) -> None:
    python = python313()
    server = RedisServer()
    workers = [
        start_worker(server.url, f"suite-worker-{n}", "--queue", "suite", python=python)
        for n in (1, 2)
    ]
    try:
        wait_for_workers(server.url, ["suite-worker-1", "suite-worker-2"])
        rq_env = {"FANOUT_SUITE_REDIS_URL": server.url, "FANOUT_SUITE_QUEUE": "suite"}
        runs = {
            "local": start_suites(python, "local", tmp_path / "local.xml", {}),
            "rq": start_suites(python, "rq", tmp_path / "rq.xml", rq_env),
        }
        logs = {backend: proc.communicate(timeout=400)[0] for backend, proc in runs.items()}
    finally:
        stop_workers(workers)
        server.stop()
    for backend in runs:
        found = outcomes(tmp_path / f"{backend}.xml")
        failed = sorted(name for name, kind in found.items() if kind in ("failure", "error"))
        skipped = {name.rpartition(".")[2] for name, kind in found.items() if kind == "skipped"}
        assert not failed, f"{backend}: {failed}\n{logs[backend][-6000:]}"
        assert skipped == EXCLUDED, f"{backend}: skipped {skipped}"
        # Every class was bound and ran: ExecutorTest, WaitTests, AsCompletedTests,
        # ShutdownTest and PoolTest hold 54 tests in 3.13.0.
        classes = {name.partition(".")[0] for name in found}
        assert classes == {
            "ExecutorTest",
            "WaitTests",
            "AsCompletedTests",
            "ShutdownTest",
            "PoolTest",
        }
        assert len(found) >= 50, f"{backend}: only {len(found)} tests ran"
