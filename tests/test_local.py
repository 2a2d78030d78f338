"""Local backend specifics: parallelism, faults, streaming, process lifecycle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import psutil
import pytest

import fanout
from fanout import Fanout
from tests import tasks
from tests.helpers import gone, wait_until


def test_four_half_second_tasks_on_two_workers_run_in_parallel() -> None:
    start = time.perf_counter()
    results = fanout.run(tasks.sleep_for, [0.5] * 4, workers=2)
    elapsed = time.perf_counter() - start
    assert all(r.ok for r in results)
    assert len({r.worker.pid for r in results}) == 2
    assert elapsed < 1.6, f"4 x 0.5 s on 2 workers took {elapsed:.2f} s"


def test_workers_are_named_daemons_by_default_and_started_once() -> None:
    with Fanout("local", workers=2) as fo:
        names = {r.worker.name for r in fo.map(tasks.whoami, range(200))}
        again = {r.worker.name for r in fo.map(tasks.whoami, range(200))}
    assert names <= {"worker-1", "worker-2"}
    assert again <= {"worker-1", "worker-2"}


def test_no_daemon_workers_may_start_processes_of_their_own() -> None:
    daemonic = fanout.run("fanout.examples:start_child", repeat=1)
    assert daemonic[0].error is not None
    assert "daemonic" in daemonic[0].error.message
    ordinary = fanout.run("fanout.examples:start_child", repeat=1, daemon=False)
    assert ordinary[0].ok
    assert isinstance(ordinary[0].value, int)


@pytest.mark.parametrize(
    ("target", "arg", "expect"),
    [
        (tasks.kill_self, signal.SIGKILL, "killed by signal SIGKILL"),
        (tasks.exit_hard, 7, "exited with code 7"),
        (tasks.crash_quietly, signal.SIGSEGV, "killed by signal SIGSEGV"),
    ],
)
def test_worker_dying_mid_task_gives_worker_lost_and_the_pool_carries_on(
    target, arg, expect
) -> None:
    results = fanout.run(target, [arg], workers=2)
    error = results[0].error
    assert error is not None
    assert error.type == "WorkerLost"
    assert expect in error.message
    assert results[0].worker.name in error.message
    assert str(results[0].worker.pid) in error.message


def test_tasks_queued_behind_a_dying_task_still_run_once() -> None:
    items = [0.001] * 50 + [None] + [0.001] * 50

    def maybe_die(x):
        if x is None:
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    results = fanout.run(maybe_die, items, workers=2)
    assert [r.index for r in results] == list(range(101))
    lost = [r.index for r in results if not r.ok]
    assert lost == [50]
    assert results[50].error is not None
    assert results[50].error.type == "WorkerLost"
    assert all(r.attempts == 1 for r in results)


def test_a_worker_killed_mid_task_is_retried_when_retries_allow(tmp_path) -> None:
    (r,) = fanout.run(tasks.die_once, [str(tmp_path / "m")], retries=1, workers=2)
    assert r.ok
    assert r.value == "survived"
    assert r.attempts == 2


def test_many_deaths_in_a_row_each_give_one_result() -> None:
    results = fanout.run(tasks.kill_self, [signal.SIGKILL] * 20, workers=2)
    assert [r.index for r in results] == list(range(20))
    assert {r.error.type for r in results if r.error} == {"WorkerLost"}


def test_an_idle_worker_killed_from_outside_does_not_stall_the_others() -> None:
    with Fanout("local", workers=2) as fo:
        pids = {r.worker.pid for r in fo.map(tasks.sleep_for, [0.2, 0.2])}
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        psutil.Process(victim).wait(5) if psutil.pid_exists(victim) else None
        results = list(fo.map(tasks.whoami, range(100)))
    assert len(results) == 100
    assert all(r.ok for r in results)
    assert victim not in {r.worker.pid for r in results}


def test_timeout_kills_the_task_and_its_children(tmp_path) -> None:
    pidfile = tmp_path / "grandchild"
    results = fanout.run(tasks.spawn_sleeper, [str(pidfile)], timeout=1.0, workers=1, daemon=False)
    assert results[0].error is not None
    assert results[0].error.type == "TaskTimeout"
    grandchild = int(pidfile.read_text())
    wait_until(lambda: gone(grandchild), 5, "the task's child ends with its timeout")


def test_timeout_with_retries_counts_attempts() -> None:
    (r,) = fanout.run(tasks.sleep_for, [10], timeout=0.3, retries=1, workers=1)
    assert r.error is not None
    assert r.error.type == "TaskTimeout"
    assert r.attempts == 2


def test_closing_a_fanout_with_running_tasks_ends_every_worker_quickly() -> None:
    me = psutil.Process()
    before = set(me.children())
    fo = Fanout("local", workers=2)
    results = fo.map(tasks.sleep_for, [0, 30, 30], ordered=False)
    first = next(results)  # both workers exist now; one runs a 30 s task
    assert first.index == 0
    workers = [p for p in me.children() if p not in before]
    assert len(workers) == 2
    start = time.monotonic()
    fo.close(cancel=True)
    assert time.monotonic() - start < 3
    _gone, alive = psutil.wait_procs(workers, timeout=3)
    assert not alive


STREAM_SCRIPT = textwrap.dedent(
    """
    import itertools, resource, sys
    import fanout

    def endless():
        for i in itertools.count():
            yield i

    n = 0
    with fanout.Fanout(workers=2) as fo:
        for r in fo.map(abs, endless(), ordered=True):
            n += 1
            if n == {count}:
                break
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(n, peak_kb)
    """
)


def test_endless_generator_streams_with_flat_memory() -> None:
    out = subprocess.run(
        [sys.executable, "-c", STREAM_SCRIPT.format(count=20_000)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    count, peak_kb = map(int, out.stdout.split())
    assert count == 20_000
    assert peak_kb < 300 * 1024, f"caller peak RSS {peak_kb / 1024:.0f} MB"


CALLER_SCRIPT = textwrap.dedent(
    """
    import fanout, sys
    from tests import tasks
    with fanout.Fanout(workers=2, daemon={daemon}) as fo:
        for r in fo.map(tasks.sleep_for, [60, 60]):
            pass
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("daemon", [True, False])
def test_workers_exit_when_the_caller_is_sigkilled(daemon: bool) -> None:
    caller = subprocess.Popen(
        [sys.executable, "-c", CALLER_SCRIPT.format(daemon=daemon)], cwd=os.getcwd()
    )
    proc = psutil.Process(caller.pid)

    def workers() -> list[psutil.Process]:
        # The caller's children but its warden, which leads a session of its own.
        return [p for p in proc.children() if os.getsid(p.pid) != p.pid]

    family = wait_until(lambda: len(workers()) >= 2 and proc.children(), 20, "two workers")
    assert len(workers()) == 2
    caller.kill()
    caller.wait(5)
    _gone, alive = psutil.wait_procs(family, timeout=5)
    assert not alive, f"left behind: {alive}"


def test_the_next_map_does_not_wait_behind_an_abandoned_one() -> None:
    with Fanout("local", workers=2) as fo:
        for _ in fo.map(tasks.sleep_for, [0, 30, 30, 30]):
            break
        start = time.monotonic()
        results = list(fo.map(tasks.square, range(100)))
        assert time.monotonic() - start < 5
    assert [r.value for r in results] == [x * x for x in range(100)]


@pytest.mark.parametrize("journaled", [False, True])
def test_one_unfinished_map_at_a_time_and_the_next_once_it_is_closed(
    journaled: bool, tmp_path: Any
) -> None:
    journal = {"journal": tmp_path / "j.jsonl"} if journaled else {}
    with Fanout("local", workers=2) as fo:
        first = fo.map(tasks.square, range(1000), **journal)
        assert next(first).value == 0
        with pytest.raises(RuntimeError, match="another map"):
            fo.map(tasks.square, range(3))
        first.close()  # type: ignore[attr-defined]
        assert list(first) == []  # closed: nothing more, even what had come in
        assert [r.value for r in fo.map(tasks.square, range(3))] == [0, 1, 4]
        assert [r.value for r in fo.map(tasks.square, range(3))] == [0, 1, 4]  # consumed


def test_an_input_whose_unpickling_kills_the_worker_fails_only_its_task() -> None:
    results = fanout.run(tasks.identity, [1, tasks.ExitOnUnpickle(), 2], workers=2)
    assert [r.ok for r in results] == [True, False, True]
    error = results[1].error
    assert error is not None
    assert error.type == "WorkerLost"
    assert "unpickling the input of task 1" in error.message


def test_a_target_whose_unpickling_kills_workers_fails_every_task_without_looping() -> None:
    started = time.monotonic()
    results = fanout.run(tasks.CallableExitOnUnpickle(), range(50), workers=2)
    assert time.monotonic() - started < 10
    assert len(results) == 50
    assert all(r.error is not None and "loading the target" in r.error.message for r in results)


def test_an_exception_whose_str_raises_is_still_a_result() -> None:
    (r,) = fanout.run(tasks.raise_bad_str, [0])
    assert r.error is not None
    assert r.error.type == "BadStr"
    assert "str() of the exception failed" in r.error.message


def test_closing_one_idle_pool_is_quick_while_another_pool_lives() -> None:
    with Fanout("local", workers=2) as other:
        list(other.map(tasks.square, range(4)))
        first = Fanout("local", workers=2)
        list(first.map(tasks.square, range(4)))
        list(other.map(tasks.square, range(4)))  # its workers now fork after first's
        start = time.monotonic()
        first.close()
        assert time.monotonic() - start < 1.0


def test_workers_started_from_a_thread_survive_the_thread() -> None:
    import threading

    with Fanout("local", workers=2) as fo:
        results = fo.map(tasks.sleep_for, [0.2, 0.2, 0.2, 0.2])
        box: list[Any] = []
        thread = threading.Thread(target=lambda: box.append(next(results)))
        thread.start()
        thread.join()
        rest = list(results)
    assert all(r.ok for r in box + rest), [r.error for r in box + rest]


def test_a_task_that_forks_and_returns_twice_still_gives_one_result_each() -> None:
    for _ in range(3):
        results = fanout.run(tasks.fork_and_return, range(20), workers=2)
        assert [r.index for r in results] == list(range(20))
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]


def test_a_bare_memory_error_says_out_of_memory() -> None:
    (r,) = fanout.run(tasks.out_of_memory, [0], workers=1)
    assert r.error is not None
    assert (r.error.type, r.error.message) == ("MemoryError", "out of memory")


def test_an_input_that_cannot_be_sent_is_not_run_by_anyone() -> None:
    import threading

    results = fanout.run(tasks.identity, [1, threading.Lock()], workers=1)
    bad = results[1]
    assert bad.attempts == 0
    assert (bad.worker.name, bad.worker.pid, bad.worker.ppid) == ("(not run)", 0, 0)
    assert bad.worker.host == __import__("socket").gethostname()
    assert bad.worker.backend == "local"


def test_a_task_of_a_no_daemon_worker_runs_fanout_itself() -> None:
    """Its inner workers are forked from a worker: each used to exit after its first task
    (the flag that ends a task's forked copy was inherited), failing every inner task
    with ``WorkerLost: exited with code 0``. And they closed the files of the task that
    started them, where the numbers of the outer pool's pipes had come back. Twice on
    one worker: the second inner run starts where the first one's descriptors were."""
    results = fanout.run(tasks.nested_run, [4, 4], workers=1, daemon=False)
    for r in results:
        assert r.ok, r.error
        assert r.value["inner"] == [[x * x, r.value["pid"]] for x in range(4)]


FORKED_CHILD_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import fanout
    from tests import tasks

    fo = fanout.Fanout(workers=2)
    before = {r.worker.pid for r in fo.map(tasks.pid_of, range(8))}
    child = os.fork()
    if child == 0:
        sys.exit(0)  # a normal exit: atexit and finalizers run in the child
    os.waitpid(child, 0)
    after = [r for r in fo.map(tasks.square, range(8))]
    print(json.dumps([sorted(before), all(r.ok for r in after),
                      sorted({r.worker.pid for r in after})]))
    fo.close()
    """
)


def test_a_process_forked_from_the_caller_leaves_its_workers_alone() -> None:
    """A child forked with os.fork from a caller with an open Fanout inherits a copy of
    its pool; when the child exits normally, that copy's finalizer must not end the
    caller's workers (it did: the caller's next map lost them)."""
    result = subprocess.run([sys.executable, "-c", FORKED_CHILD_SCRIPT], capture_output=True,
                            text=True, timeout=60, cwd=os.getcwd())  # fmt: skip
    assert result.returncode == 0, result.stderr
    before, all_ok, after = json.loads(result.stdout)
    assert all_ok, result.stdout
    assert set(after) <= set(before), result.stdout  # the very same workers served it


class _Logged:
    """An input that notes each time it is unpickled (in the file it names)."""

    def __init__(self, path: str, n: int) -> None:
        self.path, self.n = path, n

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickled, (self.path, self.n))


def _unpickled(path: str, n: int) -> _Logged:
    with open(path, "a") as log:
        log.write(f"{n}\n")
    return _Logged(path, n)


def test_an_input_taken_back_is_unpickled_once(tmp_path: Any) -> None:
    """Inputs held behind a slow task are taken back and run elsewhere: each is
    unpickled only by the worker that runs it (every input once), not first by the one
    that held it."""
    log = str(tmp_path / "unpickled")
    items = [_Logged(log, n) for n in range(4000)]  # quick ones first: batches grow
    with Fanout(workers=2) as fo:
        results = list(fo.map(tasks.sleep_then_index, items))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    counts: dict[str, int] = {}
    with open(log) as file:
        lines = file.read().split()
    for line in lines:
        counts[line] = counts.get(line, 0) + 1
    assert sorted(int(n) for n in counts) == list(range(4000))
    assert set(counts.values()) == {1}, {n: c for n, c in counts.items() if c > 1}
