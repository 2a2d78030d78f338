"""The run, as a picture (issue 27): ``fanout.report``, ``fanout report SOURCE`` and
``fanout run --report``; what the file holds (columns, texts once and cut short, a
lane per process, how each task ended) and how bad input is refused. The page itself,
in a real browser, is tested in ``test_report_browser.py``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import fanout
from fanout.models import TaskError, TaskResult, WorkerInfo
from fanout.reporting import page
from fanout.reporting.pack import SPENT, TEXT_CHARS, Packer, cause_of
from tests.helpers import (
    ROOT,
    RedisServer,
    cli_env,
    finish,
    free_port,
    run_fanout,
    start_cli,
    wait_until,
)

T0 = 1_800_000_000.0
RUN_LINE = re.compile(r"^run ([0-9a-f]{32})$", re.M)


def result(
    index: int,
    worker: str = "worker-1",
    pid: int = 100,
    host: str = "box-a",
    start: float = 0.0,
    seconds: float = 0.5,
    error: TaskError | None = None,
    attempts: int = 1,
    value: Any = None,
) -> TaskResult:
    info = WorkerInfo(worker, pid, 1, host, "local")
    return TaskResult(index, error is None, value if error is None else None, error, info,
                      attempts, T0 + start, T0 + start + seconds, seconds)  # fmt: skip


def data_of(path: Path) -> dict[str, Any]:
    """The data a report file carries (its JSON script element)."""
    text = path.read_text()
    found = re.search(r'<script id="fanout-data" type="application/json">(.*?)</script>', text,
                      re.S)  # fmt: skip
    assert found, "no data in the page"
    data: dict[str, Any] = json.loads(found.group(1))
    return data


def column(data: dict[str, Any], name: str) -> list[Any]:
    values: list[Any] = data["cols"][name]
    return values


def causes(data: dict[str, Any]) -> dict[int, str]:
    """Each task's index, and how it ended."""
    indexes = data["cols"]["index"] or range(data["n"])
    return {i: data["kinds"][k] for i, k in zip(indexes, column(data, "kind"), strict=True)}


def texts(data: dict[str, Any], name: str) -> list[str | None]:
    return [None if sid < 0 else data["strings"][sid] for sid in column(data, name)]


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("fanout: error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


# ---- what the file holds ------------------------------------------------------------


@pytest.mark.parametrize(
    ("error_type", "message", "attempts", "worker", "expected"),
    [
        ("ValueError", "bad", 1, "worker-1", "raised"),
        ("TaskTimeout", "task 3 ran longer than its timeout of 2 s", 1, "worker-1", "timeout"),
        (
            "WorkerLost",
            "worker-2 (pid 7) died while running task 3: killed by signal SIGKILL",
            1,
            "worker-2",
            "killed",
        ),
        (
            "WorkerLost",
            "worker-2 (pid 7) died while running task 3: exited with code 7",
            1,
            "worker-2",
            "exited",
        ),
        ("WorkerLost", "the worker's host stopped answering", 1, "box-a", "lost"),
        ("Cancelled", "the run stopped after 2 failed tasks", 0, "(not run)", "cancelled"),
        ("JobCanceled", "cancelled in RQ", 1, "worker-1", "cancelled"),
        ("SerializationError", "input 3 cannot be pickled", 0, "(not run)", "not-run"),
        ("TargetError", "worker box-a cannot import app", 0, "(not run)", "not-run"),
    ],
)
def test_how_a_task_ended_is_derived_from_its_error_when_the_record_has_no_cause(
    error_type: str, message: str, attempts: int, worker: str, expected: str
) -> None:
    assert cause_of(False, error_type, message, None, attempts, worker) == expected


def test_a_records_own_cause_and_usage_are_what_the_page_shows() -> None:
    """Records that carry ``error.cause`` and ``usage`` (the forensics issue's fields; in
    ``--json`` and journals, and as attributes of the records) light the page up."""
    packer = Packer()
    record = result(0, error=TaskError("MemoryError", "too big")).to_dict()
    record["error"]["cause"] = "oom-killed"
    record["usage"] = {"cpu": 1.5, "max_rss": 3 << 20}
    packer.add(record)
    later = SimpleNamespace(**{f: getattr(result(1), f) for f in ("index", "value",
                            "worker", "attempts", "started_at", "finished_at")}, ok=False,
                            error=SimpleNamespace(type="WorkerLost", message="gone",
                                                  cause="memory-limit"),
                            usage=SimpleNamespace(cpu=0.25, max_rss=1 << 20))  # fmt: skip
    packer.add(later)  # type: ignore[arg-type]
    packer.add(result(2))  # no usage: shown as not known
    data = packer.data()
    assert causes(data) == {0: "oom-killed", 1: "memory-limit", 2: "ok"}
    assert column(data, "cpu") == [1_500_000, 250_000, -1]
    assert column(data, "rss") == [3 << 20, 1 << 20, -1]


def test_without_usage_the_page_carries_no_usage_columns() -> None:
    packer = Packer()
    packer.add(result(0))
    assert "cpu" not in packer.data()["cols"]


def test_texts_are_kept_once_each_and_cut_short() -> None:
    packer = Packer()
    for i in range(50):
        packer.add(result(i, error=TaskError("ValueError", "the same message")), "x" * 1000)
    packer.add(result(50, value="v" * 5000), {"deep": [[[[1]]]]})
    data = packer.data()
    assert len(data["strings"]) == 4  # the error, the long input, the long value, the dict
    assert all(len(s) <= TEXT_CHARS for s in data["strings"])
    assert texts(data, "text")[0] == "ValueError: the same message"
    long_input = texts(data, "input")[0]
    assert long_input is not None
    assert long_input.startswith("'xxx")
    assert "..." in long_input  # reprlib's cut: the start and the end are shown


def test_texts_are_cut_shorter_to_keep_a_page_within_its_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("fanout.reporting.pack.TEXT_BUDGET", 20_000)
    packer = Packer()
    for i in range(400):  # 400 distinct values of 200 characters: 80 kB of text
        packer.add(result(i, value=f"{i:05d}" + "v" * 300))
    data = packer.data()
    assert sum(len(s.encode()) for s in data["strings"]) <= 20_000
    shown = texts(data, "text")
    assert len(set(shown)) == 400  # still one text per task, each told apart
    assert all(s is not None and s.startswith(f"'{i:05d}v") for i, s in enumerate(shown))


def test_a_lane_per_process_by_host_then_name_then_start_and_not_run_last() -> None:
    results = [
        result(0, "worker-10", 10, "box-a", start=0.0),
        result(1, "worker-2", 2, "box-a", start=0.1),
        result(2, "worker-2", 22, "box-a", start=2.0),  # worker-2 replaced: a new pid
        result(3, "worker-1", 1, "box-b", start=0.0),
        result(
            4,
            "(not run)",
            0,
            "box-a",
            start=3.0,
            seconds=0.0,
            attempts=0,
            error=TaskError("Cancelled", "the run was cancelled"),
        ),
        result(5, "worker-2", 2, "box-a", start=0.7),
    ]
    data = Packer()
    for r in results:
        data.add(r)
    packed = data.data()
    assert packed["lanes"] == [
        ["box-a", "worker-2", 2], ["box-a", "worker-2", 22], ["box-a", "worker-10", 10],
        ["box-b", "worker-1", 1], ["box-a", "(not run)", 0],
    ]  # fmt: skip
    assert column(packed, "lane") == [2, 0, 1, 3, 4, 0]
    assert column(packed, "start")[:3] == [0, 100_000, 2_000_000]  # µs from the first start
    assert packed["t0"] == T0
    assert packed["cols"]["index"] is None  # 0..n-1: the position is the index


def test_each_index_is_drawn_once_its_last_result_winning() -> None:
    """A journal resumed with --resume-failed holds a failed and a later result of one
    index; the later one is the task's result."""
    packer = Packer()
    packer.add(result(3, error=TaskError("ValueError", "first try")))
    packer.add(result(1))
    packer.add(result(3, value="second try"))
    data = packer.data()
    assert column(data, "index") == [1, 3]
    assert causes(data) == {1: "ok", 3: "ok"}
    assert texts(data, "text")[1] == "'second try'"


def test_no_text_of_a_task_can_end_the_pages_script(tmp_path: Path) -> None:
    evil = "</script><script>document.title='owned'</script><!--"
    path = fanout.report([result(0, value=evil)], tmp_path / "r.html", inputs=[evil])
    text = path.read_text()
    assert "<script>document.title" not in text
    assert texts(data_of(path), "text") == [repr(evil)]
    assert texts(data_of(path), "input") == [repr(evil)]


def test_inputs_are_shown_from_a_list_or_a_mapping(tmp_path: Path) -> None:
    results = [result(0, value=1), result(1, value=4)]
    as_list = data_of(fanout.report(results, tmp_path / "a.html", inputs=[1, 2]))
    as_map = data_of(fanout.report(results, tmp_path / "b.html", inputs={1: "two"}))
    assert texts(as_list, "input") == ["1", "2"]
    assert texts(as_map, "input") == [None, "'two'"]


def test_a_path_that_cannot_be_written_is_refused_before_any_result_is_read(
    tmp_path: Path,
) -> None:
    def never() -> Any:
        raise AssertionError("results read for a report that cannot be written")
        yield

    for bad, why in ((tmp_path / "no" / "r.html", "no directory"), (tmp_path, "directory")):
        with pytest.raises(fanout.InputError, match=why):
            fanout.report(never(), bad)
    assert list(tmp_path.iterdir()) == []


def test_a_report_is_written_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "r.html"
    target.write_text("the last report")

    def full(src: str, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(page.os, "replace", full)
    with pytest.raises(fanout.InputError, match="No space left on device"):
        fanout.report([result(0)], target)
    assert target.read_text() == "the last report"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporary file left


def test_a_report_of_nothing_is_a_page_that_says_so(tmp_path: Path) -> None:
    data = data_of(fanout.report([], tmp_path / "r.html"))
    assert data["n"] == 0
    assert data["lanes"] == []


def test_fanout_report_is_the_function_even_after_its_package_is_imported() -> None:
    code = ("import sys, fanout; light = 'fanout.reporting' not in sys.modules; "
            "import fanout.reporting.pack; print(light, fanout.report.__name__)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)  # fmt: skip
    assert done.stdout.split() == ["True", "report"]


@pytest.mark.slow
def test_a_100k_task_page_stays_under_20_mb(tmp_path: Path) -> None:
    results = [result(i, f"worker-{i % 16}", 100 + i % 16, f"box-{i % 4}", start=i * 0.001,
                      seconds=0.01, value=i * i) for i in range(100_000)]  # fmt: skip
    path = fanout.report(results, tmp_path / "r.html", inputs=range(100_000))
    assert path.stat().st_size <= 20 << 20
    assert data_of(path)["n"] == 100_000


# ---- fanout report SOURCE -----------------------------------------------------------


def test_fanout_report_draws_a_journal(tmp_path: Path) -> None:
    journal = tmp_path / "run.jsonl"
    ran = run_fanout("run", "tests.tasks:fail", "1", "2", "--json", "--workers", "2",
                     "--journal", str(journal))  # fmt: skip
    assert ran.returncode == 1, ran.stderr
    out = tmp_path / "r.html"
    done = run_fanout("report", str(journal), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"fanout: report of 2 tasks written to {out}\n"
    data = data_of(out)
    assert data["title"] == "tests.tasks:fail"  # the journal's target
    assert causes(data) == {0: "raised", 1: "raised"}
    assert texts(data, "text") == ["ValueError: bad input 1", "ValueError: bad input 2"]


def test_fanout_report_reads_json_lines_from_a_file_or_stdin(tmp_path: Path) -> None:
    ran = run_fanout("run", "tests.tasks:square", "--range", "5", "--json", "--workers", "2")
    lines = tmp_path / "results.jsonl"
    lines.write_text(ran.stdout)
    from_file = run_fanout("report", str(lines), "-o", str(tmp_path / "a.html"))
    assert from_file.returncode == 0, from_file.stderr
    done = subprocess.run([sys.executable, "-m", "fanout", "report", "-", "-o",
                           str(tmp_path / "b.html")], input=ran.stdout, capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=cli_env())  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name in ("a.html", "b.html"):
        data = data_of(tmp_path / name)
        assert causes(data) == dict.fromkeys(range(5), "ok")
        assert texts(data, "text") == ["0", "1", "4", "9", "16"]
    assert data_of(tmp_path / "b.html")["source"] == "standard input"


JOURNAL_HEAD = '{"fanout_journal": 1, "target": "app:f"}\n'
GOOD = json.dumps(result(0).to_dict()) + "\n"


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("hello\nworld\n", "holds no fanout results"),
        ("", "is empty"),
        ("\n\n", "is empty"),
        (JOURNAL_HEAD, "holds no results yet"),
        (GOOD + "{not json\n" + GOOD, "line 2 of"),
        (GOOD + '{"index": 1}\n', "line 2 of"),
        ('{"fanout_journal": 9, "target": "app:f"}\n' + GOOD, "format 9"),
        ("[1, 2, 3]\n", "holds no fanout results"),
        ("\x89PNG\r\n\x1a\n\x00\x00binary", "holds no fanout results"),
    ],
    ids=[
        "text",
        "empty",
        "blank",
        "header-only",
        "bad-line",
        "not-a-result",
        "format",
        "json-not-results",
        "binary",
    ],
)
def test_what_is_not_results_is_one_line_exit_2_and_nothing_written(
    tmp_path: Path, content: str, said: str
) -> None:
    source = tmp_path / "source.jsonl"
    source.write_text(content)
    out = tmp_path / "out" / "r.html"
    out.parent.mkdir()
    done = run_fanout("report", str(source), "-o", str(out))
    assert done.returncode == 2, done.stderr
    assert said in one_error_line(done)
    assert list(out.parent.iterdir()) == []  # nothing written, no temporary file


def test_a_journal_line_cut_short_by_a_crash_is_left_out(tmp_path: Path) -> None:
    source = tmp_path / "j.jsonl"
    source.write_text(JOURNAL_HEAD + GOOD + GOOD.replace('"index": 0', '"index": 1')[:40])
    done = run_fanout("report", str(source), "-o", str(tmp_path / "r.html"))
    assert done.returncode == 0, done.stderr
    assert data_of(tmp_path / "r.html")["n"] == 1


@pytest.mark.parametrize("case", ["missing-file", "a-directory", "no-output-dir", "output-dir"])
def test_a_bad_source_or_output_path_is_one_line_exit_2(tmp_path: Path, case: str) -> None:
    source, out = tmp_path / "results.jsonl", tmp_path / "r.html"
    source.write_text(GOOD)
    if case == "missing-file":
        source = tmp_path / "nope.jsonl"
    elif case == "a-directory":
        source = tmp_path
    elif case == "no-output-dir":
        out = tmp_path / "missing" / "r.html"
    else:
        out = tmp_path
    done = run_fanout("report", str(source), "-o", str(out))
    assert done.returncode == 2, done.stderr
    line = one_error_line(done)
    assert {
        "missing-file": "no file",
        "a-directory": "is a directory",
        "no-output-dir": "no directory",
        "output-dir": "it is a directory",
    }[case] in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]


@pytest.mark.parametrize(
    ("signum", "code", "said"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_a_report_stopped_by_a_signal_writes_nothing(
    tmp_path: Path, signum: int, code: int, said: str
) -> None:
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    out.mkdir()
    proc = start_cli("report", str(fifo), "-o", str(out / "r.html"))
    with fifo.open("w") as writer:  # opens once the report has opened it: it is reading
        writer.write(GOOD)
        writer.flush()
        proc.send_signal(signum)
        _, stderr = finish(proc)
    assert proc.returncode == code, stderr
    assert stderr == f"fanout: {said}; no report written\n"
    assert list(out.iterdir()) == []


def test_fanout_report_needs_an_output_path(tmp_path: Path) -> None:
    done = run_fanout("report", str(tmp_path / "x.jsonl"))
    assert done.returncode == 2
    assert "--output" in one_error_line(done)


# ---- fanout run --report ------------------------------------------------------------


def test_run_report_draws_every_result_with_its_input(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    done = run_fanout("run", "tests.tasks:square_or_die", "--json", "--workers", "2",
                      "--report", str(out), "--", "3", "-1", "4")  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert len(done.stdout.splitlines()) == 3  # stdout is still only the JSON lines
    assert done.stderr.endswith(f"fanout: report of 3 tasks written to {out}\n")
    data = data_of(out)
    assert causes(data) == {0: "ok", 1: "killed", 2: "ok"}
    assert texts(data, "input") == ["3", "-1", "4"]
    assert data["title"] == "tests.tasks:square_or_die"
    workers = {tuple(lane[:2]) for lane in data["lanes"]}
    assert len(workers) >= 2  # a lane per process: the killed one was replaced


def test_run_report_after_ctrl_c_holds_what_finished(tmp_path: Path) -> None:
    inputs = tmp_path / "in.jsonl"
    started = tmp_path / "slow-started"
    inputs.write_text(f'["{tmp_path / "quick"}", 0]\n["{started}", 60]\n')
    out = tmp_path / "r.html"
    proc = start_cli("run", "tests.tasks:touch_then_sleep", "--star", "--input", str(inputs),
                     "--workers", "2", "--json", "--unordered", "--report", str(out))  # fmt: skip
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the quick task's result
    wait_until(started.exists, 30, "the slow task starts")
    proc.send_signal(signal.SIGINT)
    _, stderr = finish(proc)
    assert proc.returncode == 130, stderr
    assert json.loads(first)["index"] == 0
    assert f"fanout: report of 1 task written to {out}" in stderr
    assert causes(data_of(out)) == {0: "ok"}


def test_run_report_to_a_path_that_cannot_be_written_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    done = run_fanout("run", "tests.tasks:touch", str(marker), "--report",
                      str(tmp_path / "missing" / "r.html"))  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "no directory" in one_error_line(done)
    assert not marker.exists()


def test_run_report_with_detach_is_refused(tmp_path: Path) -> None:
    done = run_fanout("run", "tests.tasks:square", "1", "--backend", "rq", "--detach",
                      "--report", str(tmp_path / "r.html"))  # fmt: skip
    assert done.returncode == 2
    assert "fanout report RUN_ID" in one_error_line(done)
    assert list(tmp_path.iterdir()) == []


# ---- a durable run, by its id -------------------------------------------------------


def test_a_durable_runs_report_leaves_its_results_to_collect(
    tmp_path: Path, redis_server: RedisServer, rq_workers: list[str]
) -> None:
    url = redis_server.url
    detached = run_fanout("run", "tests.tasks:square", "--range", "6", "--backend", "rq",
                          "--redis-url", url, "--detach")  # fmt: skip
    assert detached.returncode == 0, detached.stderr
    found = RUN_LINE.search(detached.stderr)
    assert found, detached.stderr
    run_id = found.group(1)
    out = tmp_path / "r.html"
    done = run_fanout("report", run_id, "--redis-url", url, "-o", str(out))
    assert done.returncode == 0, done.stderr
    data = data_of(out)
    assert causes(data) == dict.fromkeys(range(6), "ok")
    assert {lane[1] for lane in data["lanes"]} <= set(rq_workers)
    assert data["title"] == f"run {run_id}: tests.tasks:square"
    collected = run_fanout("results", run_id, "--json", "--redis-url", url)
    assert collected.returncode == 0, collected.stderr
    assert sorted(json.loads(line)["index"] for line in collected.stdout.splitlines()) == list(
        range(6)
    )


def test_an_unknown_run_id_is_exit_2_and_nothing_written(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    done = run_fanout("report", "0" * 32, "--redis-url", redis_server.url, "-o",
                      str(tmp_path / "r.html"))  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "no run '00000000000000000000000000000000'" in one_error_line(done)
    assert list(tmp_path.iterdir()) == []


def test_a_run_id_with_redis_unavailable_is_exit_3_and_no_password_shown(
    tmp_path: Path,
) -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    done = run_fanout("report", "a" * 32, "--redis-url", url, "-o", str(tmp_path / "r.html"),
                      env={"FANOUT_REDIS_URL": url})  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "s3cret" not in one_error_line(done)
    assert list(tmp_path.iterdir()) == []


def test_the_report_command_says_what_it_takes() -> None:
    done = run_fanout("report", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for said in ("SOURCE", "--output", "--redis-url", "--queue", "--no-wait", "--title"):
        assert said in text
    assert "journal" in text


def test_a_long_runs_texts_stay_bounded_while_it_is_packed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("fanout.reporting.pack.TEXT_KEPT", 1000)
    packer = Packer()
    for i in range(100):
        packer.add(result(i, value=f"value {i} " + "v" * 90), f"input {i}")
    assert packer.kept <= 1000 + 2 * TEXT_CHARS
    shown = texts(packer.data(), "text")
    assert shown[0] == repr("value 0 " + "v" * 90)
    assert shown[-1] == SPENT  # later texts say they were not kept
