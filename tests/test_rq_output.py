"""What the rq backend says (issue 12, items 8, 9, 10, 17): results no process ran, names
shown as given, a server that is not Redis, quiet local workers, a worker name already
taken, what Ctrl-C did. Real redis-servers and workers, as in test_rq.py."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

import fanout
from fanout.cli.views import HumanView
from fanout.models import TaskResult, WorkerInfo
from tests import tasks
from tests.helpers import (
    CuttableProxy,
    RedisServer,
    free_port,
    registered_workers,
    run_fanout,
    start_cli,
    start_worker,
    stop_workers,
    wait_for_workers,
    wait_until,
)


@pytest.fixture
def redis_url(redis_server: RedisServer, rq_workers: list[str]) -> str:
    return redis_server.url


def one_line(result: object, code: int, *fragments: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)  # type: ignore[attr-defined]
    lines = result.stderr.splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1, lines
    assert lines[0].startswith("fanout: error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# --------------------------------------------------------------------------- item 8


def test_a_target_no_worker_can_import_gives_results_no_process_ran(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker of its own on a queue of its own. With the session's two, a job one
    # refused waited for the other, which an earlier test's leftover job could keep
    # busy: the refusing worker then met the run's 20 jobs again and again, pausing up
    # to 5 s each time, past the 120 s time-out (once in a full plain-pytest run).
    url, queue = redis_server.url, "unloadable"
    workers = [start_worker(url, "unloadable-1", "--queue", queue)]
    try:
        wait_for_workers(url, ["unloadable-1"])
        (tmp_path / "only_here.py").write_text("def f(x):\n    return x\n")
        monkeypatch.syspath_prepend(str(tmp_path))  # the caller can import it; workers cannot
        results = fanout.run("only_here:f", range(20), backend="rq", redis_url=url, queue=queue)
    finally:
        stop_workers(workers)
    assert sorted(r.index for r in results) == list(range(20))
    for r in results:
        assert r.error is not None
        assert r.error.type == "TargetError"
        assert r.error.cause == "not-run"
        assert "on RQ worker unloadable-1" in r.error.message
        assert (r.worker.name, r.worker.pid, r.worker.ppid) == ("(not run)", 0, 0)
        assert r.worker.host == socket.gethostname()
        assert r.attempts == 0


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_killed_workers_registration_does_not_keep_an_unloadable_job_going(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A SIGKILLed worker's registration outlives it by up to a minute: taken for a worker
    # that might load the target, it kept the jobs going round the live one for minutes
    # (20 give-backs, pausing up to 5 s each), past this test's time-out.
    url, queue = redis_server.url, "phantom"
    phantom = start_worker(url, "phantom-dead", "--queue", queue)
    live = start_worker(url, "phantom-live", "--queue", queue)
    try:
        wait_for_workers(url, ["phantom-dead", "phantom-live"])
        phantom.kill()
        phantom.wait()
        assert "phantom-dead" in registered_workers(url)
        (tmp_path / "only_here2.py").write_text("def f(x):\n    return x\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        started = time.monotonic()
        results = fanout.run("only_here2:f", range(4), backend="rq", redis_url=url, queue=queue)
        assert time.monotonic() - started < 20
        assert {r.error.type for r in results if r.error} == {"TargetError"}
        assert len(results) == 4
    finally:
        stop_workers([phantom, live])


def test_the_summary_counts_only_processes_that_ran_tasks() -> None:
    def result(index: int, name: str, pid: int) -> TaskResult:
        info = WorkerInfo(name, pid, 1, "box", "rq")
        return TaskResult(index, True, None, None, info, 1, 0.0, 0.0, 0.0)

    view = HumanView("rq")
    results = [
        result(0, "stock-1", 100),  # a stock worker's work-horses: one per job
        result(1, "stock-1", 101),
        result(2, "stock-1", 102),
        result(3, "(not run)", 0),
    ]
    for r in results:
        view.show(r, r.index, lambda line: None)
    summary = view.summary()
    assert summary.startswith("4 tasks: 4 ok, 0 failed in ")
    assert summary.endswith(" on 1 rq worker")


# --------------------------------------------------------------------------- item 9


def test_status_shows_a_queue_name_as_given(redis_url: str) -> None:
    Redis.from_url(redis_url).sadd("rq:queues", "rq:queue:jobs[/x]")
    result = run_fanout("status", "--redis-url", redis_url, "--queue", "jobs[/x]")
    assert result.returncode == 0, result.stderr
    assert "jobs[/x]" in result.stdout
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- item 10


@pytest.fixture
def not_redis() -> Iterator[int]:
    """A port that answers as an HTTP server would, whatever it is sent."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", free_port()))
    listener.listen(16)
    connections: list[socket.socket] = []

    def answer() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            connections.append(conn)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()
    for conn in connections:
        conn.close()


@pytest.mark.parametrize(
    "command",
    [["run", "tests.tasks:square", "1", "--backend", "rq"], ["status"], ["worker"]],
    ids=["run", "status", "worker"],
)
def test_a_port_that_is_not_redis_is_one_line_and_exit_3(
    not_redis: int, command: list[str]
) -> None:
    result = run_fanout(*command, "--redis-url", f"redis://:pw-s3cret@127.0.0.1:{not_redis}/0")
    one_line(result, 3, f"127.0.0.1:{not_redis}")
    assert "pw-s3cret" not in result.stderr


# --------------------------------------------------------------------------- item 17


def test_local_workers_for_a_run_start_quietly(redis_server: RedisServer) -> None:
    result = run_fanout(
        "run", "tests.tasks:square", "--range", "4", "--backend", "rq", "--workers", "2",
        "--queue", "quiet", "--redis-url", redis_server.url, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"run [0-9a-f]{32}\n", result.stderr), result.stderr  # and nothing else


def test_a_lambda_is_refused_before_any_worker_starts(redis_server: RedisServer) -> None:
    with pytest.raises(fanout.TargetError, match="lambda"):
        fanout.run(lambda x: x, [1], backend="rq", redis_url=redis_server.url, workers=1,
                   queue="never")  # fmt: skip
    # Local workers are named after their caller's pid: none was ever registered.
    assert not Redis.from_url(redis_server.url).keys(f"rq:worker:fanout-*-{os.getpid()}-*")


def test_a_worker_name_already_taken_is_refused_before_the_banner(
    redis_server: RedisServer,
) -> None:
    holder = start_worker(redis_server.url, "box-a")
    try:
        wait_for_workers(redis_server.url, ["box-a"])
        result = run_fanout("worker", "--name", "box-a", "--redis-url", redis_server.url)
    finally:
        stop_workers([holder])
    one_line(result, 2, "box-a", "already registered")


def test_ctrl_c_says_what_it_did_and_the_stopped_jobs_say_who_stopped_them(
    redis_url: str,
) -> None:
    from rq.job import Job
    from rq.registry import FailedJobRegistry

    connection = Redis.from_url(redis_url)
    before = set(FailedJobRegistry("fanout", connection=connection).get_job_ids())
    proc = start_cli(
        "run", "tests.tasks:sleep_for", "30", "30", "--backend", "rq", "--redis-url", redis_url,
    )  # fmt: skip
    registry = "rq:wip:fanout"
    wait_until(lambda: connection.zcard(registry) == 2, 20, "both jobs run")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert "queued jobs were removed" in stderr
    assert "workers stopped" not in stderr  # it started none
    failed = FailedJobRegistry("fanout", connection=connection)
    stopped = wait_until(lambda: set(failed.get_job_ids()) - before, 20, "the jobs stop")
    for job_id in stopped:
        job = Job.fetch(job_id, connection=connection)
        result = job.latest_result()
        text = (result.exc_string if result else "") or job.exc_info or ""
        assert "cancelled by the caller" in text, text


# --------------------------------------------------------------------------- issue 22


@pytest.mark.slow
def test_redis_lost_for_good_shows_the_results_that_finished_before_exit_3() -> None:
    """Defect 15: when Redis went for good mid-run, human mode printed none of the results
    that had finished (--json did); defect 17: the "trying again" line had no prefix."""
    server = RedisServer()
    proxy = CuttableProxy(server.port)  # the caller's way to Redis; the worker's stays
    worker = start_worker(server.url, "lost-1")
    proc = None
    try:
        wait_for_workers(server.url, ["lost-1"])
        proc = start_cli("run", "tests.tasks:say_then_sleep", "0", "0", "6", "--backend", "rq",
                         "--redis-url", proxy.url, "--redis-wait", "1", "--unordered")  # fmt: skip
        assert proc.stdout is not None
        seen: list[str] = []
        reader = threading.Thread(target=lambda: seen.extend(proc.stdout), daemon=True)  # type: ignore[union-attr, arg-type]
        reader.start()
        wait_until(lambda: sum("slept 0" in line for line in seen) == 2, 30, "two tasks end")
        proxy.cut()
        reader.join(30)
        assert proc.stderr is not None
        stderr = proc.stderr.read()
        assert proc.wait(30) == 3, stderr
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        stop_workers([worker])
        server.stop()
    rows = sorted(line.split()[0] for line in seen if re.match(r"^[01] ", line))
    assert rows == ["0", "1"], seen
    assert seen[-1].startswith("2 tasks: 2 ok, 0 failed")
    lines = stderr.splitlines()
    assert lines[-1].startswith("fanout: error: lost Redis at"), stderr
    assert any(line.startswith("fanout: lost Redis at") and "trying again" in line
               for line in lines), stderr  # fmt: skip


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("garbage", "redis+sentinel://"),
        ("http://127.0.0.1:9/0", "redis+sentinel://"),
        ("redis://127.0.0.1:9/abc", "'abc'"),
        ("redis://127.0.0.1:9/0?db=two", "'two'"),
        ("redis+sentinel://127.0.0.1:9/service/abc", "'abc'"),
    ],
    ids=["no-scheme", "http", "db-path", "db-query", "sentinel-db"],
)
@pytest.mark.parametrize("command", ["run", "status", "worker"])
def test_a_bad_redis_url_is_a_usage_error(url: str, fragment: str, command: str) -> None:
    """Defect 14: a bad Redis URL was exit 3 (as if Redis were down), its scheme list
    left out redis+sentinel://, and `redis://host:port/abc` silently used database 0."""
    args = ["run", "tests.tasks:square", "1", "--backend", "rq"] if command == "run" else [command]
    result = run_fanout(*args, "--redis-url", url)
    one_line(result, 2, "bad Redis URL", fragment)


def test_a_bad_redis_url_raises_bad_redis_url_before_anything_runs() -> None:
    with pytest.raises(fanout.BadRedisURL, match="database must be a number") as caught:
        fanout.run(tasks.square, [1], backend="rq", redis_url="redis://:s3cret@127.0.0.1:9/x")
    assert isinstance(caught.value, ValueError)
    assert "s3cret" not in str(caught.value)


def test_a_workers_first_line_names_the_redis_it_serves(redis_server: RedisServer) -> None:
    """Defect 18: a worker without FANOUT_REDIS_URL joined whatever Redis was on
    localhost:6379; its first line says which one it serves."""
    result = run_fanout("worker", "--burst", "--queue", "first-line", "--redis-url",
                        redis_server.url)  # fmt: skip
    assert result.returncode == 0, result.stderr
    first = result.stderr.splitlines()[0]
    assert re.fullmatch(rf"fanout worker \S+ \(pid \d+\) serving queue 'first-line' on"
                        rf" {re.escape(redis_server.url)}", first), first  # fmt: skip
