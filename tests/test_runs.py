"""Runs that outlive their caller (issue 13): run ids, detach, collect from anywhere,
status, cancel; and, on every backend, fail fast, journal and resume. Real redis-servers
and real ``fanout worker`` processes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

import fanout
from tests import tasks
from tests.helpers import (
    RedisServer,
    finish,
    run_fanout,
    start_cli,
    start_worker,
    stop_workers,
    wait_for_workers,
    wait_until,
)

RUN_LINE = re.compile(r"^run ([0-9a-f]{32})$", re.M)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def workers(server: RedisServer) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    stop_workers(started)


def serve(server: RedisServer, workers: list[subprocess.Popen[bytes]], *names: str) -> None:
    workers.extend(start_worker(server.url, name) for name in names)
    wait_for_workers(server.url, list(names))


def run_keys(connection: Redis, run_id: str) -> list[bytes]:
    return [*connection.scan_iter(f"fanout:run:{run_id}*"),
            *connection.scan_iter(f"rq:job:fanout-{run_id}-*")]  # fmt: skip


def records(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def executions(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


# --------------------------------------------------------------------------- run ids, detach


@pytest.mark.slow
def test_detach_enqueues_every_input_then_results_collects_each_index_once(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    detached = run_fanout("run", "tests.tasks:square", "--range", "300", "--backend", "rq",
                          "--redis-url", server.url, "--detach")  # fmt: skip
    assert detached.returncode == 0, detached.stderr
    assert detached.stdout == ""
    run_id = RUN_LINE.search(detached.stderr).group(1)  # type: ignore[union-attr]
    connection = Redis.from_url(server.url)
    status = fanout.attach(run_id, redis_url=server.url).status()
    assert (status["total"], status["enqueued_all"], status["queued"]) == (300, True, 300)
    assert all(connection.ttl(key) > 0 for key in run_keys(connection, run_id))
    serve(server, workers, "d-1", "d-2")
    collected = run_fanout("results", run_id, "--json", "--redis-url", server.url)
    assert collected.returncode == 0, collected.stderr
    got = records(collected.stdout)
    assert sorted(r["index"] for r in got) == list(range(300))
    assert all(r["value"] == r["index"] ** 2 for r in got)
    assert {r["worker"]["name"] for r in got} <= {"d-1", "d-2"}
    assert run_keys(connection, run_id) == []  # a complete collection removes them
    again = run_fanout("results", run_id, "--redis-url", server.url)
    assert again.returncode == 2
    assert again.stderr.startswith(f"fanout: error: no run '{run_id}'")


@pytest.mark.slow
def test_submit_attach_status_and_results_in_the_library(
    server: RedisServer, workers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    run = fanout.submit(tasks.sleep_for, [0.2] * 12, redis_url=server.url)
    assert run.status()["queued"] == 12
    serve(server, workers, "l-1", "l-2")
    wait_until(lambda: run.status()["ok"] >= 2, 20, "some tasks finish")
    running = run.status()
    assert running["total"] == 12
    assert running["ok"] + running["queued"] + running["running"] == 12
    assert {w["name"] for w in running["workers"]} <= {"l-1", "l-2"}
    early = list(fanout.attach(run.id, redis_url=server.url).results(wait=False))
    assert 2 <= len(early) < 12
    results = list(run.results())
    assert sorted(r.index for r in results) == list(range(12))
    with pytest.raises(fanout.UnknownRun):
        run.status()  # collected in full: gone
    run.close()


@pytest.mark.slow
def test_results_shows_the_inputs_of_the_jobs_still_in_redis(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    """Issue 22, defect 20: `fanout results` showed `-` as every input; the inputs are in
    the run's jobs while they are in Redis (a finished job's go with it)."""
    detached = run_fanout("run", "tests.tasks:identity", '"a b"', '{"k": [1, 2]}', "7",
                          "--backend", "rq", "--redis-url", server.url, "--detach")  # fmt: skip
    assert detached.returncode == 0, detached.stderr
    run_id = RUN_LINE.search(detached.stderr).group(1)  # type: ignore[union-attr]
    collector = start_cli("results", run_id, "--redis-url", server.url)
    try:
        # The collector drives the run once it has read its jobs (and their inputs).
        connection = Redis.from_url(server.url)
        driver = f"fanout:run:{run_id}:driver"
        wait_until(lambda: connection.exists(driver), 20, "the collector reads the run")
        serve(server, workers, "in-1")
        stdout, stderr = finish(collector, 30)
    finally:
        if collector.poll() is None:
            collector.kill()
    assert collector.returncode == 0, stderr
    rows = {line.split()[0]: line for line in stdout.splitlines() if re.match(r"^[0-2] ", line)}
    assert rows["0"].split()[1:4] == ["'a", "b'", "'a"], rows["0"]
    assert "{'k': [1, 2]}" in rows["1"]
    assert rows["2"].split()[1:3] == ["7", "7"]


@pytest.mark.slow
def test_run_results_come_in_index_order_when_asked(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    """Issue 22, defect 20: Run.results() had no ordered option (its order, as the
    results were reported, is now documented)."""
    run = fanout.submit(tasks.sleep_for, [0.5, 0.0, 0.0, 0.0], redis_url=server.url)
    serve(server, workers, "o-1", "o-2")
    wait_until(lambda: run.status()["ok"] >= 3, 20, "the quick tasks finish")
    held = list(fanout.attach(run.id, redis_url=server.url).results(wait=False, ordered=True))
    assert [r.index for r in held] == [1, 2, 3]  # what is in, in index order: no wait
    results = list(run.results(ordered=True))
    assert [r.index for r in results] == [0, 1, 2, 3]
    run.close()


CALLER = """
import sys
import fanout
from tests import tasks
for r in fanout.Fanout("rq", redis_url=sys.argv[1]).map(tasks.sleep_for, [0.1] * 60):
    print(r.index, flush=True)
"""


@pytest.mark.slow
def test_a_sigkilled_callers_run_is_collected_whole(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    serve(server, workers, "k-1", "k-2")
    caller = subprocess.Popen([sys.executable, "-c", CALLER, server.url], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert caller.stdout is not None
    for _ in range(5):  # a few results in: the run is under way
        caller.stdout.readline()
    connection = Redis.from_url(server.url)
    (meta,) = [k for k in connection.scan_iter("fanout:run:*") if k.count(b":") == 2]
    run_id = meta.decode().rsplit(":", 1)[1]
    wait_until(lambda: fanout.attach(run_id, redis_url=server.url).status()["enqueued_all"],
               10, "every input is in Redis")  # fmt: skip
    caller.kill()
    caller.wait()
    results = list(fanout.attach(run_id, redis_url=server.url).results())
    assert sorted(r.index for r in results) == list(range(60))
    assert all(r.ok for r in results)


@pytest.mark.slow
def test_a_collector_killed_halfway_can_collect_again(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    run = fanout.submit(tasks.sleep_for, [0.1] * 40, redis_url=server.url)
    serve(server, workers, "c-1", "c-2")
    collector = start_cli("results", run.id, "--json", "--redis-url", server.url)
    assert collector.stdout is not None
    for _ in range(5):
        collector.stdout.readline()
    collector.kill()
    finish(collector)
    results = list(run.results())
    assert sorted(r.index for r in results) == list(range(40))
    run.close()


@pytest.mark.slow
def test_cancel_leaves_nothing_queued_and_gives_each_task_its_result(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    run = fanout.submit(tasks.sleep_for, [0.3] * 20, redis_url=server.url)
    serve(server, workers, "x-1")
    wait_until(lambda: run.status()["ok"] >= 1, 20, "a task finishes")
    cancelled = run_fanout("cancel", run.id, "--redis-url", server.url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"run {run.id} cancelled" in cancelled.stderr
    connection = Redis.from_url(server.url)
    assert connection.llen("rq:queue:fanout") == 0
    results = list(run.results())
    assert sorted(r.index for r in results) == list(range(20))
    dropped = [r for r in results if not r.ok]
    assert dropped
    others = [(r.index, r.error) for r in dropped if r.error and r.error.type != "Cancelled"]
    assert {r.error.type for r in dropped if r.error} == {"Cancelled"}, others
    never_started = [r for r in dropped if r.attempts == 0]
    assert never_started
    for r in never_started:
        assert (r.worker.name, r.worker.pid) == ("(not run)", 0)
    run.close()


def test_a_map_closed_before_its_first_result_is_left_going_whole_or_cancelled(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    # The CLI's SIGHUP can land between the run's id and the first result asked for: the
    # map's generator never ran, so closing the Fanout must end the run (it lost it).
    serve(server, workers, "g-1")
    ids = []
    for detach in (True, False):
        with fanout.Fanout("rq", redis_url=server.url) as fo:
            fo.map(tasks.square, range(12))
            ids.append(fo.run_id)
            if detach:
                fo.detach()
    kept, cancelled = (fanout.attach(run_id, redis_url=server.url) for run_id in ids)
    results = list(kept.results())
    assert sorted((r.index, r.value) for r in results) == [(i, i * i) for i in range(12)]
    assert cancelled.status()["state"] == "cancelled"


@pytest.mark.slow
def test_ctrl_c_says_how_to_collect_and_sighup_leaves_the_run_going(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    serve(server, workers, "h-1")
    proc = start_cli("run", "tests.tasks:sleep_for", *["0.2"] * 20, "--backend", "rq",
                     "--json", "--redis-url", server.url)  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline()
    run_id = RUN_LINE.match(line.strip()).group(1)  # type: ignore[union-attr]
    proc.send_signal(signal.SIGHUP)
    _, stderr = finish(proc, 30)
    assert proc.returncode == 129, stderr
    assert f"fanout results {run_id}" in stderr
    results = list(fanout.attach(run_id, redis_url=server.url).results())
    assert sorted(r.index for r in results) == list(range(20))
    assert all(r.ok for r in results), [(r.index, r.error) for r in results if not r.ok][:3]


def test_a_command_that_cannot_reach_redis_prints_no_run_id() -> None:
    result = run_fanout("run", "tests.tasks:square", "1", "--backend", "rq", "--json",
                        "--redis-url", "redis://127.0.0.1:9/0")  # fmt: skip
    assert result.returncode == 3
    assert len(result.stderr.splitlines()) == 1
    assert not RUN_LINE.search(result.stderr)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "tests.tasks:square", "1", "--detach"], "--backend rq"),
        (["run", "tests.tasks:square", "1", "--detach", "--backend", "inline"], "inline"),
        (["run", "tests.tasks:square", "1", "--resume"], "--resume needs --journal PATH"),
        (["run", "tests.tasks:square", "1", "--resume-failed"], "--resume-failed needs --journal"),
    ],
    ids=["detach-local", "detach-inline", "resume-without-journal", "resume-failed-alone"],
)
def test_durable_options_where_they_cannot_work_are_one_line_and_exit_2(
    args: list[str], fragment: str
) -> None:
    result = run_fanout(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]


def test_an_unknown_run_id_is_one_line_and_exit_2(server: RedisServer) -> None:
    for command in ("results", "status", "cancel"):
        result = run_fanout(command, "0" * 32, "--redis-url", server.url)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("fanout: error: no run '000")
        assert len(result.stderr.splitlines()) == 1


# --------------------------------------------------------------------------- fail fast


@pytest.mark.parametrize("backend", ["local", "rq"])
def test_max_failures_stops_the_run_and_cancels_what_had_not_started(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    log = tmp_path / "ran"
    options: dict[str, Any] = {"backend": backend, "workers": 1}
    if backend == "rq":
        options = {"backend": "rq", "redis_url": request.getfixturevalue("redis_server").url}
        request.getfixturevalue("rq_workers")
    items = [(str(log), "fail")] + [(str(log), 0.0)] * 30
    results = fanout.run(tasks.record_run, items, star=True, max_failures=1, **options)
    # Every input has its result, also those the run never took (DESIGN: Fail fast).
    assert [r.index for r in results] == list(range(31))
    assert len(executions(log)) < 31, "the run did not stop"
    assert results[0].error is not None
    assert results[0].error.type == "ValueError"
    cancelled = [r for r in results if r.error is not None and r.error.type == "Cancelled"]
    assert all((r.attempts, r.worker.name) == (0, "(not run)") for r in cancelled)
    assert len(executions(log)) == len(results) - len(cancelled)  # cancelled: never ran


def test_max_failures_cancels_what_a_running_rq_job_has_not_started(
    server: RedisServer, workers: list[subprocess.Popen[bytes]]
) -> None:
    """A job holds about a second of tasks: once a push finds its run halted, the
    worker cancels those it has not started instead of running them all."""
    serve(server, workers, "h-1")
    items = [0.05] * 5 + [-1.0] + [0.05] * 60  # sleep_for(-1) fails at once
    results = fanout.run(tasks.sleep_for, items, max_failures=1, backend="rq",
                         redis_url=server.url)  # fmt: skip
    assert [r.index for r in results] == list(range(len(items)))
    cancelled = [r for r in results if r.error is not None and r.error.type == "Cancelled"]
    by_the_worker = [r for r in cancelled if "before the task started" in r.error.message]  # type: ignore[union-attr]
    assert by_the_worker, [r.error.message for r in cancelled[:3]]  # type: ignore[union-attr]
    assert all((r.attempts, r.worker.name) == (0, "(not run)") for r in cancelled)


def test_max_failures_on_the_command_line_exits_1(tmp_path: Path) -> None:
    log = tmp_path / "ran"
    items = [json.dumps([str(log), "fail"])] + [json.dumps([str(log), 0])] * 20
    result = run_fanout("run", "tests.tasks:record_run", *items, "--star", "--workers", "1",
                        "--max-failures", "1", "--json")  # fmt: skip
    assert result.returncode == 1
    shown = records(result.stdout)
    assert sorted(r["index"] for r in shown) == list(range(21))
    assert len(executions(log)) < 21, "the run did not stop"


def test_max_failures_stops_a_long_local_run_and_cancels_the_rest() -> None:
    """Issue 22, defect 3: `--range 1000 --max-failures 2` ran all 1,000 tasks on local,
    and the inputs never taken had no result."""
    result = run_fanout("run", "fanout.testing.tasks:fail_slowly", "--range", "1000",
                        "--workers", "2", "--max-failures", "2", "--json")  # fmt: skip
    assert result.returncode == 1, result.stderr
    shown = records(result.stdout)
    assert [r["index"] for r in shown] == list(range(1000))
    ran = [r for r in shown if r["error"]["type"] == "ValueError"]
    cancelled = [r for r in shown if r["error"]["type"] == "Cancelled"]
    assert 2 <= len(ran) <= 4  # the two failures, and what the two workers were running
    assert len(ran) + len(cancelled) == 1000
    assert {(r["attempts"], r["worker"]["name"]) for r in cancelled} == {(0, "(not run)")}


@pytest.mark.parametrize("option", [["--max-failures", "1"], ["--journal", "J"]])
def test_detach_refuses_what_only_an_attached_caller_can_do(
    option: list[str], tmp_path: Path
) -> None:
    """--max-failures and --journal need this process to see every result; --detach
    leaves: one line, exit 2, before anything is enqueued (no Redis needed)."""
    option = [str(tmp_path / o) if o == "J" else o for o in option]
    result = run_fanout("run", "tests.tasks:square", "1", "--backend", "rq", "--detach",
                        "--redis-url", "redis://127.0.0.1:9/0", *option)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"fanout: error: {option[0]}")
    assert "--detach" in result.stderr


# --------------------------------------------------------------------------- journal, resume


@pytest.mark.parametrize("backend", ["local", "inline", "rq"])
def test_journal_then_resume_runs_only_what_the_journal_lacks(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    log, journal = tmp_path / "ran", tmp_path / "journal.jsonl"
    options: dict[str, Any] = {"backend": backend}
    if backend == "rq":
        options["redis_url"] = request.getfixturevalue("redis_server").url
        request.getfixturevalue("rq_workers")
    first = [(str(log), x) for x in ("a", "fail", "c")]
    fanout.run(tasks.record_run, first, star=True, journal=journal, **options)
    assert sorted(executions(log)) == ["a", "c", "fail"]
    log.unlink()
    items = [*first, (str(log), "d")]
    resumed = fanout.run(tasks.record_run, items, star=True, journal=journal, resume=True,
                         **options)  # fmt: skip
    assert executions(log) == ["d"]  # 0-2 came from the journal
    assert [(r.index, r.ok) for r in resumed] == [(0, True), (1, False), (2, True), (3, True)]
    log.unlink()
    again = fanout.run(tasks.record_run, items, star=True, journal=journal, resume="failed",
                       **options)  # fmt: skip
    assert executions(log) == ["fail"]  # only the failed one ran again
    assert [r.index for r in again] == [0, 1, 2, 3]


def test_a_journal_cut_mid_line_is_read_to_its_last_whole_line(tmp_path: Path) -> None:
    log, journal = tmp_path / "ran", tmp_path / "journal.jsonl"
    items = [(str(log), x) for x in ("a", "b")]
    fanout.run(tasks.record_run, items, star=True, journal=journal, workers=1)
    with journal.open("ab") as fh:
        fh.write(b'{"index": 2, "ok": tr')  # a crash mid-write
    log.unlink()
    resumed = fanout.run(tasks.record_run, [*items, (str(log), "c")], star=True,
                         journal=journal, resume=True, workers=1)  # fmt: skip
    assert executions(log) == ["c"]
    assert [r.index for r in resumed] == [0, 1, 2]
    assert all(json.loads(line) for line in journal.read_text().splitlines())


@pytest.mark.parametrize("resume", [["--resume"], []], ids=["resume", "fresh"])
@pytest.mark.parametrize(
    ("journal_text", "fragment"),
    [
        ('{"not": "a journal"}\n', "not a fanout journal"),
        ('{"fanout_journal": 1, "target": "other.module:f"}\n', "other.module:f"),
        ("import os\nos.remove('x')\n", "not a fanout journal"),
        ("print('no newline at the end')", "not a fanout journal"),
    ],
    ids=["not-fanout", "other-target", "python-file", "one-line"],
)
def test_a_journal_that_is_not_this_runs_is_one_line_and_exit_2(
    tmp_path: Path, journal_text: str, fragment: str, resume: list[str]
) -> None:
    """Issue 22, defect 4: without --resume, --journal appended to any file (a .py file,
    another target's journal). It is refused, and left as it was."""
    journal = tmp_path / "journal.jsonl"
    journal.write_text(journal_text)
    log = tmp_path / "ran"
    result = run_fanout("run", "tests.tasks:record_run", json.dumps([str(log), 1]), "--star",
                        "--journal", str(journal), *resume)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not log.exists()
    assert journal.read_text() == journal_text


def test_a_second_run_on_a_journal_without_resume_is_refused(tmp_path: Path) -> None:
    """Issue 22, defect 4: a second run without --resume appended a second line for
    every index. It is refused (resume from it, or give another path)."""
    log, journal = tmp_path / "ran", tmp_path / "journal.jsonl"
    items = [json.dumps([str(log), x]) for x in ("a", "b")]
    first = run_fanout("run", "tests.tasks:record_run", *items, "--star", "--journal",
                       str(journal))  # fmt: skip
    assert first.returncode == 0, first.stderr
    before = journal.read_text()
    assert len(before.splitlines()) == 3  # its first line, and one per index
    again = run_fanout("run", "tests.tasks:record_run", *items, "--star", "--journal",
                       str(journal))  # fmt: skip
    assert again.returncode == 2, again.stderr
    assert len(again.stderr.splitlines()) == 1
    assert "--resume" in again.stderr
    assert journal.read_text() == before
    assert sorted(executions(log)) == ["a", "b"]  # nothing ran the second time


def test_a_journal_with_no_results_yet_is_taken_as_it_is(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    journal.write_text('{"fanout_journal": 1, "target": "tests.tasks:square"}\n')
    result = run_fanout("run", "tests.tasks:square", "3", "--journal", str(journal))
    assert result.returncode == 0, result.stderr
    assert [json.loads(line).get("value") for line in journal.read_text().splitlines()] == [
        None,
        9,
    ]


def test_a_changed_input_stops_the_resumed_run_before_anything_runs(tmp_path: Path) -> None:
    log, journal = tmp_path / "ran", tmp_path / "journal.jsonl"
    items = [json.dumps([str(log), x]) for x in ("a", "b", "c")]
    run_fanout("run", "tests.tasks:record_run", *items, "--star", "--journal", str(journal))
    log.unlink()
    changed = [items[0], json.dumps([str(log), "B"]), items[2], json.dumps([str(log), "d"])]
    result = run_fanout("run", "tests.tasks:record_run", *changed, "--star",
                        "--journal", str(journal), "--resume")  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "input 1" in result.stderr
    assert not log.exists()
