"""Nothing a task starts outlives its run (issue 12, item 4): not a process it leaves
running, not a ``multiprocessing.Pool`` left open, not after a time-out (nested runs
included), not after the caller is SIGKILLed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fanout
from tests import tasks
from tests.helpers import ROOT, gone, wait_until


def pids_in(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def all_gone(pids: list[int], timeout: float = 10) -> None:
    assert pids, "the task started nothing"
    wait_until(lambda: all(gone(pid) for pid in pids), timeout, f"{pids} end with the run")


@pytest.mark.parametrize("new_session", [False, True], ids=["same-group", "own-session"])
def test_a_process_a_task_left_running_ends_with_the_run(tmp_path: Path, new_session: bool) -> None:
    pidfile = tmp_path / "pids"
    results = fanout.run(tasks.start_sleeper, [(str(pidfile), new_session)] * 2, star=True,
                         workers=2, daemon=False)  # fmt: skip
    assert all(r.ok for r in results)
    all_gone(pids_in(pidfile))


def test_a_pool_a_task_left_open_ends_with_the_run(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    (r,) = fanout.run(tasks.leave_pool_open, [str(pidfile)], workers=1, daemon=False)
    assert r.ok, r.error
    all_gone(pids_in(pidfile))


@pytest.mark.slow
def test_a_timed_out_nested_run_takes_its_workers_and_their_processes_along(
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "pids"
    (r,) = fanout.run(tasks.nested_run_that_hangs, [str(pidfile)], workers=1, daemon=False,
                      timeout=3.0)  # fmt: skip
    assert r.error is not None
    assert r.error.type == "TaskTimeout"
    all_gone(pids_in(pidfile))


CALLER = textwrap.dedent(
    """
    import sys
    import fanout
    from tests import tasks
    fanout.run(tasks.start_sleeper_then_hang, [sys.argv[1]] * 2, workers=2, daemon=False)
    """
)


@pytest.mark.slow
def test_what_tasks_started_ends_when_the_caller_is_sigkilled(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    caller = subprocess.Popen([sys.executable, "-c", CALLER, str(pidfile)], cwd=ROOT)
    try:
        wait_until(lambda: len(pids_in(pidfile)) == 2, 20, "both tasks start their sleepers")
    finally:
        caller.kill()
        caller.wait()
    all_gone(pids_in(pidfile))
