"""Why each task ended, caused for real on the local backend (issue 25, point 5).

Each test makes one ending happen — a SIGKILL from outside, ``os._exit``, a time-out,
fanout's own memory limit, the kernel's OOM killer in a memory cgroup made for the test,
an exception, a halted run, an input that cannot load — and checks what the result
says: ``TaskError.cause``, ``signal``, ``exit_code``, and that ``worker.pid`` is the
process that died (each task notes its pid in a log first) on this host. Recycling
(``max_tasks_per_worker``, ``max_memory_per_worker``) loses no task and names the right
pid. Nothing waits on a sleep: a task that is to be killed from outside writes its pid
to a FIFO, which the killing thread waits on.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

import fanout
from fanout import TaskResult
from fanout._memory import format_size, resident
from fanout.backends.local.handles import WorkerHandle
from fanout.backends.local.pool import Pool
from tests import tasks
from tests.cgroups import OOM_LIMIT, memory_cgroup, v1_limits, v1_parent, v2_limits, v2_parent
from tests.helpers import finish, gone, start_python, wait_until

HOST = socket.gethostname()
MB = 2**20


# --------------------------------------------------------------------------- helpers


def ran_by(log: Path) -> dict[int, int]:
    """Task index -> pid of the process that ran it last, from ``meet_its_end``'s log (a
    task that finished just before its worker died, its result unsent, runs again)."""
    pids: dict[int, int] = {}
    for line in log.read_text().splitlines():
        index, pid = map(int, line.split())
        pids[index] = pid
    return pids


def ending(result: TaskResult, cause: str, signal: int | None = None,
           exit_code: int | None = None) -> str:  # fmt: skip
    """The error type of ``result``, once it is checked to have failed of ``cause``."""
    error = result.error
    assert error is not None, result
    assert (error.cause, error.signal, error.exit_code) == (cause, signal, exit_code), error
    assert result.worker.host == HOST
    return error.type


def died_running(result: TaskResult, log: Path) -> int:
    """The pid of the process that died running ``result``'s task: the one its result
    names, the one the task noted, and gone now."""
    pid = ran_by(log)[result.index]
    assert result.worker.pid == pid, (result.worker, pid)
    assert gone(pid), f"pid {pid} is still running"
    assert result.error is not None
    assert f"(pid {pid})" in result.error.message
    return pid


def items(log: Path, *kinds: tuple[str, Any]) -> list[tuple[str, Any, str, int]]:
    """``meet_its_end`` arguments: each (how, param) with the log and its index."""
    return [(how, param, str(log), i) for i, (how, param) in enumerate(kinds)]


OK = ("ok", None)


def with_usage(results: list[TaskResult]) -> None:
    """Every result a process ran says what it cost it."""
    for r in results:
        if r.worker.pid != 0:
            assert r.usage is not None, r
            assert r.usage.cpu >= 0, r
            assert r.usage.max_rss > 0, r


def test_a_busy_task_among_quick_ones_is_charged_its_cpu_and_they_little() -> None:
    """Quick tasks share usage readings a millisecond of them at a time; one that took
    longer among them gets its share by duration (fanout._usage.runs)."""
    results = fanout.run(tasks.square_or_spin, range(3000), workers=2)
    assert [r.value for r in results] == [x * x for x in range(3000)]
    with_usage(results)
    busy = results[50].usage
    assert busy is not None
    total = sum(r.usage.cpu for r in results if r.usage is not None)
    assert 0.04 <= busy.cpu <= total
    assert busy.cpu > 0.6 * total, (busy.cpu, total)


def above_the_caller(megabytes: int) -> int:
    """A memory limit ``megabytes`` above what the caller holds now, in bytes: a worker
    forked from the caller starts about as big."""
    return (resident(os.getpid()) or 0) + megabytes * MB


class OutsideKiller:
    """A thread of the test that SIGKILLs each process writing its pid to a FIFO (the
    task says it runs, and waits): what a user's ``kill -9`` does."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "pids.fifo"
        os.mkfifo(self.path)
        self.read_fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self.keep_fd = os.open(self.path, os.O_WRONLY)  # a writer stays: no end-of-file
        self.stop_r, self.stop_w = os.pipe()
        self.killed: list[int] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self) -> None:
        pending = b""
        while True:
            ready, _, _ = select.select([self.read_fd, self.stop_r], [], [])
            if self.stop_r in ready:
                return
            with contextlib.suppress(BlockingIOError):
                pending += os.read(self.read_fd, 4096)
            *lines, pending = pending.split(b"\n")
            for line in lines:
                os.kill(int(line), signal.SIGKILL)
                self.killed.append(int(line))

    def __enter__(self) -> OutsideKiller:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        os.write(self.stop_w, b"!")
        self.thread.join()
        for fd in (self.read_fd, self.keep_fd, self.stop_r, self.stop_w):
            os.close(fd)


# --------------------------------------------------------------------------- endings


def test_a_sigkill_from_outside_is_killed_with_signal_9(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with OutsideKiller(tmp_path) as killer:
        args = items(log, OK, ("wait-kill", str(killer.path)), OK)
        results = fanout.run(tasks.meet_its_end, args, star=True, workers=2)
    assert ending(results[1], "killed", signal=9) == "WorkerLost"
    assert killer.killed == [died_running(results[1], log)]
    assert "killed by signal SIGKILL" in results[1].error.message  # type: ignore[union-attr]
    assert [r.ok for r in results] == [True, False, True]
    with_usage(results)


def test_os_exit_in_a_task_is_exited_with_its_exit_code(tmp_path: Path) -> None:
    log = tmp_path / "log"
    results = fanout.run(tasks.meet_its_end, items(log, OK, ("exit", 3), OK), star=True,
                         workers=2)  # fmt: skip
    assert ending(results[1], "exited", exit_code=3) == "WorkerLost"
    died_running(results[1], log)
    assert "exited with code 3" in results[1].error.message  # type: ignore[union-attr]
    assert [r.ok for r in results] == [True, False, True]
    with_usage(results)


def test_a_task_past_its_timeout_is_timeout_killed_by_sigkill(tmp_path: Path) -> None:
    log = tmp_path / "log"
    results = fanout.run(tasks.meet_its_end, items(log, OK, ("hang", 60), OK), star=True,
                         workers=2, timeout=0.5)  # fmt: skip
    assert ending(results[1], "timeout", signal=9) == "TaskTimeout"
    died_running(results[1], log)
    assert "ran longer than its timeout of 0.5 s" in results[1].error.message  # type: ignore[union-attr]
    assert [r.ok for r in results] == [True, False, True]
    with_usage(results)


def test_a_task_past_max_memory_is_memory_limit_and_the_others_go_on(tmp_path: Path) -> None:
    log = tmp_path / "log"
    limit = above_the_caller(50)
    grow = ("grow", limit // MB + 100)
    results = fanout.run(tasks.meet_its_end, items(log, OK, grow, OK, OK), star=True,
                         workers=1, max_memory=limit)  # fmt: skip
    assert ending(results[1], "memory-limit", signal=9) == "MemoryLimitExceeded"
    dead = died_running(results[1], log)
    message = results[1].error.message  # type: ignore[union-attr]
    assert f"grew past the memory limit of {format_size(limit)}" in message
    reached = re.search(r"\((\d+) MB reached\)", message)
    assert reached is not None, message
    assert int(reached[1]) >= limit // MB, message  # what tripped it: past the limit
    assert [r.ok for r in results] == [True, False, True, True]
    assert results[0].worker.pid == dead  # the first worker ran the task before it
    assert {r.worker.pid for r in results[2:]} == {r.value for r in results[2:]} != {dead}
    with_usage(results)


def test_a_task_that_raises_is_raised_and_its_worker_goes_on(tmp_path: Path) -> None:
    log = tmp_path / "log"
    results = fanout.run(tasks.meet_its_end, items(log, OK, ("raise", None), OK), star=True,
                         workers=1)  # fmt: skip
    assert ending(results[1], "raised") == "ValueError"
    assert results[1].error.message == "task 1 raised"  # type: ignore[union-attr]
    pids = ran_by(log)
    assert [r.worker.pid for r in results] == [pids[0], pids[1], pids[2]] == [pids[0]] * 3
    with_usage(results)


def test_tasks_a_halted_run_never_started_are_cancelled(tmp_path: Path) -> None:
    log = tmp_path / "log"
    args = items(log, ("raise", None), *[("hang", 0.01)] * 30)
    results = fanout.run(tasks.meet_its_end, args, star=True, workers=1, max_failures=1)
    assert [r.index for r in results] == list(range(31))
    assert ending(results[0], "raised") == "ValueError"
    cancelled = [r for r in results if not r.ok and r.index > 0]
    assert cancelled, "the run did not stop"
    for r in cancelled:
        assert ending(r, "cancelled") == "Cancelled"
        assert (r.worker.pid, r.attempts, r.usage) == (0, 0, None)
    assert len(ran_by(log)) == len(results) - len(cancelled)  # cancelled: never ran


def test_an_input_that_cannot_load_is_not_run() -> None:
    results = fanout.run(tasks.identity, [1, tasks.FailsToUnpickle(), 3], workers=1)
    assert ending(results[1], "not-run") == "SerializationError"
    assert "cannot unpickle the input of task 1" in results[1].error.message  # type: ignore[union-attr]
    assert [r.value for r in results if r.ok] == [1, 3]


# --------------------------------------------------------------------------- recycling


def test_max_tasks_per_worker_replaces_workers_and_each_result_names_its_own() -> None:
    results = fanout.run(tasks.pid_of, range(7), workers=2, max_tasks_per_worker=2)
    assert [r.index for r in results] == list(range(7))
    assert all(r.ok and r.worker.pid == r.value for r in results), results
    ran = [r.value for r in results]
    assert all(ran.count(pid) <= 2 for pid in ran), ran
    assert len(set(ran)) >= 4, ran
    with_usage(results)


def test_max_memory_per_worker_replaces_a_worker_past_it_before_its_next_task() -> None:
    limit = above_the_caller(45)
    results = fanout.run(tasks.keep_megabytes, [30] * 12, workers=1,
                         max_memory_per_worker=limit)  # fmt: skip
    assert [r.index for r in results] == list(range(12))
    assert all(r.ok and r.worker.pid == r.value[0] for r in results), results
    by_worker: dict[int, list[int]] = {}
    for r in results:
        by_worker.setdefault(r.value[0], []).append(r.value[1])
    assert len(by_worker) >= 2, by_worker
    for sizes in by_worker.values():  # it ran on while under the limit, and no longer
        assert all(size <= limit for size in sizes[:-1]), (sizes, limit)
    for sizes in list(by_worker.values())[:-1]:
        assert sizes[-1] > limit, (sizes, limit)
    with_usage(results)


# --------------------------------------------------------------------------- OOM killer

OOM_CALLER = textwrap.dedent(
    """
    import json, os, sys
    cgroup, log, megabytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as fh:
        fh.write(str(os.getpid()))  # its workers are forked into the cgroup
    import fanout
    from tests import tasks
    args = [(how, megabytes, log, i) for i, how in enumerate(["ok", "grow", "ok"])]
    results = fanout.run(tasks.meet_its_end, args, star=True, workers=1)
    print(json.dumps([r.to_dict() for r in results]))
    """
)


def oom_killed_in(cgroup: Path, log: Path) -> None:
    """Run a task past the cgroup's limit from a caller inside it; the OOM killer ends it."""
    caller = start_python("-c", OOM_CALLER, str(cgroup), str(log), str(4 * OOM_LIMIT // MB))
    out, err = finish(caller, 60)
    assert caller.returncode == 0, err
    records = json.loads(out)
    error = records[1]["error"]
    assert (error["cause"], error["signal"], error["exit_code"]) == ("oom-killed", 9, None), error
    assert error["type"] == "WorkerLost"
    pid = ran_by(log)[1]
    assert (records[1]["worker"]["pid"], records[1]["worker"]["host"]) == (pid, HOST)
    assert f"(pid {pid}) on {HOST}" in error["message"], error
    assert "killed by the kernel's OOM killer" in error["message"], error
    assert [r["ok"] for r in records] == [True, False, True]
    assert records[2]["worker"]["pid"] != pid  # a new worker took over
    assert all(r["usage"] is not None and r["usage"]["max_rss"] > 0 for r in records)


def test_the_kernels_oom_killer_in_a_cgroup_v1_is_oom_killed(tmp_path: Path) -> None:
    parent = v1_parent()
    with memory_cgroup(parent, v1_limits()) as cgroup:
        oom_killed_in(cgroup, tmp_path / "log")


def test_the_kernels_oom_killer_in_a_cgroup_v2_is_oom_killed(tmp_path: Path) -> None:
    parent = v2_parent()
    with memory_cgroup(parent, v2_limits()) as cgroup:
        oom_killed_in(cgroup, tmp_path / "log")


# --------------------------------------------------------------------------- chaos


@pytest.mark.slow
def test_mixed_deaths_in_one_map_are_each_put_down_to_their_own_task(tmp_path: Path) -> None:
    log = tmp_path / "log"
    limit = above_the_caller(50)
    with OutsideKiller(tmp_path) as killer:
        deaths = {"wait-kill": str(killer.path), "grow": limit // MB + 100, "hang": 60,
                  "exit": 3, "raise": None}  # fmt: skip
        kinds = [OK, *[(how, param) for how, param in deaths.items()]] * 2 + [OK] * 4
        results = fanout.run(tasks.meet_its_end, items(log, *kinds), star=True, workers=2,
                             timeout=2.0, max_memory=limit)  # fmt: skip
    assert [r.index for r in results] == list(range(len(kinds)))
    expected = {"wait-kill": ("killed", 9, None, "WorkerLost"),
                "grow": ("memory-limit", 9, None, "MemoryLimitExceeded"),
                "hang": ("timeout", 9, None, "TaskTimeout"),
                "exit": ("exited", None, 3, "WorkerLost"),
                "raise": ("raised", None, None, "ValueError")}  # fmt: skip
    pids = ran_by(log)
    for r, (how, _) in zip(results, kinds, strict=True):
        assert (r.worker.pid, r.worker.host) == (pids[r.index], HOST), r
        if how == "ok":
            assert (r.ok, r.value) == (True, r.worker.pid), r
            continue
        cause, sig, code, kind = expected[how]
        assert ending(r, cause, sig, code) == kind, r
        if how != "raise":
            died_running(r, log)
    assert sorted(killer.killed) == sorted(pids[i] for i, k in enumerate(kinds)
                                           if k[0] == "wait-kill")  # fmt: skip
    assert all(r.error is not None and r.error.cause for r in results if not r.ok)
    with_usage(results)


def test_a_worker_dying_while_another_is_buried_keeps_its_usage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker B dies while the pool buries worker A, and the pool starts A's replacement
    before it sees B's death: starting a process reaped B (multiprocessing's start reaps
    dead children), and B's task had no usage, its CPU time gone with /proc/PID."""
    log = tmp_path / "log"
    bury = Pool.bury
    victims: list[int] = []

    def bury_then_kill_another(self: Pool, worker: WorkerHandle) -> None:
        bury(self, worker)
        if victims:
            return
        wait_until(lambda: 0 in ran_by(log), 30, "the hanging task started")
        victims.append(ran_by(log)[0])
        os.kill(victims[0], signal.SIGKILL)
        os.waitid(os.P_PID, victims[0], os.WEXITED | os.WNOWAIT)  # dead, not reaped

    monkeypatch.setattr(Pool, "bury", bury_then_kill_another)
    args = items(log, ("hang", 60), ("exit", 3), *[OK] * 50)
    results = fanout.run(tasks.meet_its_end, args, star=True, workers=2)
    assert ending(results[0], "killed", signal=9) == "WorkerLost"
    assert died_running(results[0], log) == victims[0]
    assert ending(results[1], "exited", exit_code=3) == "WorkerLost"
    with_usage(results)
