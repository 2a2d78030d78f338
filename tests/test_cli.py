"""End-to-end tests of ``fanout run``, each one a real ``python -m fanout`` subprocess.

Every command runs with the repo root as its working directory (so ``tests.tasks:...``
targets import) and with an explicit environment: the inherited one minus any setting
that would change what fanout or rich does, plus what the test sets.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import ROOT, cli_env, finish, start_cli, wait_until

COMMAND = [sys.executable, "-m", "fanout", "run"]
RECORD_KEYS = {
    "index",
    "ok",
    "value",
    "error",
    "worker",
    "attempts",
    "started_at",
    "finished_at",
    "duration",
    "output",
    "usage",
}
WORKER_KEYS = {"name", "pid", "ppid", "host", "backend"}
ERROR_KEYS = {"type", "message", "traceback", "cause", "signal", "exit_code"}
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SUMMARY = re.compile(
    r"^(?P<count>\d+) tasks?: (?P<ok>\d+) ok, (?P<failed>\d+) failed(?: \((?P<causes>[^)]*)\))?"
    r" in \d+\.\d+ s on (?P<workers>\d+) (?P<backend>\w+) workers?$"
)


# --------------------------------------------------------------------------- helpers


def run_cli(
    *args: str, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``fanout run ARGS`` to completion; the result also carries the process ``pid``."""
    cmd = [*COMMAND, *args]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=cli_env(env),
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = finish(proc, 60, input)
    result = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    result.pid = proc.pid  # type: ignore[attr-defined]
    return result


def run_cli_tty_stderr(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``fanout run ARGS`` with stderr on a pseudo-terminal and stdout on a pipe.

    Returns (exit code, stdout, everything written to the terminal, escapes removed).
    """
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*COMMAND, *args],
            cwd=ROOT,
            env=cli_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
        )
    finally:
        os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every holder of the slave end has closed it
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        stdout, _ = finish(proc, 60)
    finally:
        reader.join(10)
        os.close(master)
    tty = b"".join(chunks).decode("utf-8", errors="replace")
    return proc.returncode, stdout.decode(), ANSI_ESCAPE.sub("", tty)


def json_records(stdout: str) -> list[dict[str, Any]]:
    """Parse --json stdout, requiring that every line (and nothing else) is one object."""
    assert stdout == "" or stdout.endswith("\n"), f"stdout does not end a line: {stdout!r}"
    records = []
    for line in stdout.splitlines():
        record = json.loads(line)  # any non-JSON line on stdout fails here
        assert isinstance(record, dict), line
        records.append(record)
    return records


def values_by_index(records: list[dict[str, Any]]) -> dict[int, Any]:
    return {r["index"]: r["value"] for r in records}


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 2, nothing on stdout, one ``fanout: error:`` line on stderr naming ``fragments``."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == "", result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fanout: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def write_target_file(directory: Path, body: str, name: str = "fanout_cli_target.py") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(body))
    return path


def table_rows(stdout: str) -> dict[int, list[str]]:
    """The human table's rows (whitespace-split), by index; the header must be there."""
    lines = stdout.splitlines()
    headers = [i for i, line in enumerate(lines) if line.split()[:2] == ["#", "input"]]
    assert len(headers) == 1, stdout
    header = lines[headers[0]].split()
    assert header == ["#", "input", "value", "/", "error", "worker", "pid", "ppid", "host", "s",
                      "cpu", "mem"]  # fmt: skip
    rows = {}
    for line in lines[headers[0] + 1 :]:
        words = line.split()
        if words and words[0].isdigit() and not SUMMARY.match(line):
            rows[int(words[0])] = words
    return rows


def summary_line(stdout: str) -> re.Match[str]:
    last = stdout.splitlines()[-1]
    match = SUMMARY.match(last)
    assert match, f"no summary line at the end of stdout: {last!r}"
    return match


# --------------------------------------------------------------------------- exit codes


def test_exit_code_0_when_every_task_succeeds() -> None:
    result = run_cli("tests.tasks:square", "--range", "5")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_exit_code_1_when_a_task_fails() -> None:
    result = run_cli("tests.tasks:divide", "1", "0")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr


BAD_JSON_FIRST_LINE = "oops\n1\n"


def usage_case(
    args: list[str],
    fragments: tuple[str, ...],
    *,
    id: str,
    input_file: str | None = None,
    env: dict[str, str] | None = None,
) -> Any:
    """One exit-2 case; ``{bad}``, ``{missing}`` and ``{dir}`` in args become tmp paths."""
    return pytest.param(args, input_file, env, fragments, id=id)


USAGE_ERRORS = [
    usage_case(["no_such_module_xyz:f", "1"], ("no_such_module_xyz",), id="unknown-module"),
    usage_case(["tests.tasks:no_such_fn", "1"], ("no_such_fn",), id="missing-attribute"),
    usage_case(["fanout:__version__", "1"], ("not a callable",), id="non-callable"),
    usage_case(["tests.tasks", "1"], ("not of the form",), id="target-without-colon"),
    usage_case(["tests.tasks:square"], ("nothing to run",), id="no-input-source"),
    usage_case(
        ["tests.tasks:square", "--range", "3", "--repeat", "2"],
        ("--range", "--repeat"),
        id="two-input-sources",
    ),
    usage_case(["tests.tasks:square", "1", "--input", "-"], ("ITEM", "--input"), id="items+input"),
    usage_case(
        ["tests.tasks:square", "--input", "{bad}", "--json"],
        ("line 1", "JSON"),
        input_file=BAD_JSON_FIRST_LINE,
        id="input-invalid-json-line",
    ),
    usage_case(
        ["tests.tasks:square", "--input", "{bad}"],
        ("line 1", "JSON"),
        input_file=BAD_JSON_FIRST_LINE,
        id="input-invalid-json-line-human-view",
    ),
    usage_case(
        ["tests.tasks:square", "--input", "{missing}"],
        ("no_such_input.jsonl",),
        id="input-file-missing",
    ),
    usage_case(
        ["tests.tasks:square", "--input", "{dir}", "--json"],
        ("Is a directory",),
        id="input-is-a-directory",
    ),
    usage_case(
        ["tests.tasks:square", "--range", "2", "--backend", "nope"],
        ("'nope'", "inline", "local"),
        id="unknown-backend",
    ),
    usage_case(
        ["tests.tasks:square", "--range", "2"],
        ("'nope'", "inline", "local"),
        env={"FANOUT_BACKEND": "nope"},
        id="unknown-backend-from-env",
    ),
    usage_case(["tests.tasks:square", "1", "--timeout", "0"], ("timeout",), id="zero-timeout"),
]


@pytest.mark.parametrize(("args", "input_file", "env", "fragments"), USAGE_ERRORS)
def test_exit_code_2_with_one_line_error(
    tmp_path: Path,
    args: list[str],
    input_file: str | None,
    env: dict[str, str] | None,
    fragments: tuple[str, ...],
) -> None:
    bad = tmp_path / "bad.jsonl"
    if input_file is not None:
        bad.write_text(input_file)
    paths = {"bad": bad, "missing": tmp_path / "no_such_input.jsonl", "dir": tmp_path}
    args = [arg.format(**paths) if arg.startswith("{") else arg for arg in args]
    result = run_cli(*args, env=env)
    assert_one_line_error(result, *fragments)


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        pytest.param(["tests.tasks:square", "--range", "-1"], None, "--range", id="negative-range"),
        pytest.param(
            ["tests.tasks:square", "1", "--workers", "x"], None, "--workers", id="workers"
        ),
        pytest.param(
            ["tests.tasks:square", "1"], {"FANOUT_WORKERS": "abc"}, "FANOUT_WORKERS", id="env"
        ),
        pytest.param(["tests.tasks:square", "1", "--bogus"], None, "--bogus", id="unknown-option"),
    ],
)
def test_exit_code_2_for_click_usage_errors_without_traceback(
    args: list[str], env: dict[str, str] | None, fragment: str
) -> None:
    result = run_cli(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert fragment in result.stderr


def test_daemon_option_with_inline_backend_is_one_line_and_exit_2() -> None:
    result = run_cli("tests.tasks:square", "1", "--backend", "inline", "--no-daemon")
    assert "Traceback" not in result.stderr, result.stderr
    assert_one_line_error(result, "--daemon", "inline")


# --------------------------------------------------------------------------- --json


def test_json_records_have_exactly_the_contract_fields() -> None:
    result = run_cli("tests.tasks:divide", "1", "0", "--json")
    assert result.returncode == 1, result.stderr
    records = json_records(result.stdout)
    assert len(records) == 2
    host = socket.gethostname()
    for record in records:
        assert set(record) == RECORD_KEYS
        assert set(record["worker"]) == WORKER_KEYS
        worker = record["worker"]
        assert re.fullmatch(r"worker-\d+", worker["name"]), worker
        assert isinstance(worker["pid"], int)
        assert worker["pid"] != result.pid
        assert worker["ppid"] == result.pid  # workers are children of the fanout process
        assert worker["host"] == host
        assert worker["backend"] == "local"
        assert record["attempts"] == 1
        assert isinstance(record["started_at"], float)
        assert record["started_at"] <= record["finished_at"]
        assert record["duration"] >= 0
        assert record["output"] == ""
        assert set(record["usage"]) == {"cpu", "max_rss"}
        assert record["usage"]["cpu"] >= 0
        assert record["usage"]["max_rss"] > 1_000_000  # a Python process: megabytes
    ok, failed = sorted(records, key=lambda r: r["index"])
    assert (ok["index"], ok["ok"], ok["value"], ok["error"]) == (0, True, 1.0, None)
    assert (failed["index"], failed["ok"], failed["value"]) == (1, False, None)
    error = failed["error"]
    assert set(error) == ERROR_KEYS
    assert error["type"] == "ZeroDivisionError"
    assert error["message"] == "division by zero"
    assert (error["cause"], error["signal"], error["exit_code"]) == ("raised", None, None)
    # The remote traceback starts in the user's code and names its file and line.
    assert re.search(r'tasks\.py", line \d+, in divide', error["traceback"]), error["traceback"]
    assert "1 / x" in error["traceback"]
    assert "_task.py" not in error["traceback"]


def test_json_worker_identity_matches_what_the_task_saw() -> None:
    result = run_cli("tests.tasks:whoami", "--range", "4", "--json")
    assert result.returncode == 0, result.stderr
    records = json_records(result.stdout)
    assert len(records) == 4
    for record in records:
        seen, worker = record["value"], record["worker"]
        assert seen == {k: worker[k] for k in ("name", "pid", "ppid", "host")}
        assert worker["ppid"] == result.pid


def test_json_captures_task_output_and_keeps_it_off_stdout() -> None:
    result = run_cli("tests.tasks:chatty", "--range", "2", "--json")
    assert result.returncode == 0, result.stderr
    records = json_records(result.stdout)
    assert {r["index"]: r["output"] for r in records} == {0: "out 0\nerr 0\n", 1: "out 1\nerr 1\n"}
    assert result.stderr == ""


def test_json_value_that_is_not_json_serialisable_is_its_repr(tmp_path: Path) -> None:
    path = write_target_file(
        tmp_path,
        """
        def as_set(_):
            return {1, 2}

        def as_bytes(_):
            return b"raw"
        """,
    )
    result = run_cli(f"{path}:as_set", "0", "--json")
    assert result.returncode == 0, result.stderr
    (record,) = json_records(result.stdout)
    assert record["ok"] is True
    assert record["value"] == "{1, 2}"
    result = run_cli(f"{path}:as_bytes", "0", "--json")
    (record,) = json_records(result.stdout)
    assert record["value"] == "b'raw'"


# --------------------------------------------------------------------------- items


def test_items_are_json_when_they_parse_else_strings() -> None:
    items = ["1", "[1, 2]", '{"a": 1}', "bob", "1.5", "null", "true", '"quoted"', "not json]"]
    result = run_cli("tests.tasks:identity", *items, "--json")
    assert result.returncode == 0, result.stderr
    assert values_by_index(json_records(result.stdout)) == {
        0: 1,
        1: [1, 2],
        2: {"a": 1},
        3: "bob",
        4: 1.5,
        5: None,
        6: True,
        7: "quoted",
        8: "not json]",
    }


def test_negative_number_item_after_double_dash() -> None:
    result = run_cli("tests.tasks:square", "--json", "--", "-3")
    assert result.returncode == 0, result.stderr
    assert values_by_index(json_records(result.stdout)) == {0: 9}


def test_range_gives_0_to_n_minus_1() -> None:
    result = run_cli("tests.tasks:identity", "--range", "5", "--json")
    assert result.returncode == 0, result.stderr
    assert values_by_index(json_records(result.stdout)) == {i: i for i in range(5)}


def test_range_zero_runs_nothing_and_succeeds() -> None:
    result = run_cli("tests.tasks:identity", "--range", "0", "--json")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_repeat_calls_target_with_no_arguments() -> None:
    result = run_cli("tests.tasks:noop", "--repeat", "3", "--json")
    assert result.returncode == 0, result.stderr
    records = json_records(result.stdout)
    assert sorted(r["index"] for r in records) == [0, 1, 2]
    assert all(r["ok"] and r["value"] is None for r in records)


def test_input_file_one_json_value_per_line_blank_lines_skipped(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    data.write_text('1\n\n"two"\n   \n[3, 4]\n{"five": 5}\n\n')
    result = run_cli("tests.tasks:identity", "--input", str(data), "--json")
    assert result.returncode == 0, result.stderr
    assert values_by_index(json_records(result.stdout)) == {
        0: 1,
        1: "two",
        2: [3, 4],
        3: {"five": 5},
    }


def test_input_dash_reads_stdin() -> None:
    result = run_cli("tests.tasks:square", "--input", "-", "--json", input="1\n\n2\n  \n3\n")
    assert result.returncode == 0, result.stderr
    assert values_by_index(json_records(result.stdout)) == {0: 1, 1: 4, 2: 9}


def trickle(*args: str) -> None:
    """Feed ``fanout run ... --input -`` one line at a time, each only once the result of
    the one before it is out, stdin left open all along: a run that waits to fill a
    batch from its input shows nothing (issue 22, defect 29: 0-1 of 300 after 9 s)."""
    proc = subprocess.Popen(
        [*COMMAND, "tests.tasks:square", "--input", "-", "--json", *args], cwd=ROOT,
        env=cli_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        for n in range(6):  # past the first measurements, which make batches grow
            proc.stdin.write(f"{n}\n")
            proc.stdin.flush()
            wait_until(lambda n=n: len(seen) > n, 20, f"the result of line {n + 1}")
        proc.stdin.close()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    assert proc.returncode == 0, stderr
    assert [json.loads(line)["value"] for line in seen] == [n * n for n in range(6)]


@pytest.mark.parametrize("backend", ["local", "inline"])
def test_input_dash_streams_results_while_the_input_trickles(backend: str) -> None:
    trickle("--backend", backend, *(["--workers", "2"] if backend == "local" else []))


@pytest.mark.slow
def test_input_dash_streams_results_while_the_input_trickles_on_rq(
    redis_server: Any, rq_workers: list[str]
) -> None:
    trickle("--backend", "rq", "--redis-url", redis_server.url)


def test_star_unpacks_each_item_as_positional_args() -> None:
    result = run_cli("tests.tasks:add", "--star", "[1, 2]", "[3, 4]", "--json")
    assert result.returncode == 0, result.stderr
    assert values_by_index(json_records(result.stdout)) == {0: 3, 1: 7}


def test_star_with_input_file(tmp_path: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text("[10, 1]\n[20, 2]\n")
    result = run_cli("tests.tasks:add", "--star", "--input", str(data), "--json")
    assert result.returncode == 0, result.stderr
    assert values_by_index(json_records(result.stdout)) == {0: 11, 1: 22}


# --------------------------------------------------------------------------- ordering

# Task 0 is slow, the rest are instant: as they finish, task 0 comes last.
SLOW_FIRST = ["tests.tasks:sleep_for", "0.4", "0", "0", "0", "0", "0", "--workers", "2", "--json"]


def test_ordered_is_the_default_and_gives_input_order() -> None:
    result = run_cli(*SLOW_FIRST)
    assert result.returncode == 0, result.stderr
    records = json_records(result.stdout)
    assert [r["index"] for r in records] == list(range(6))
    assert records[0]["value"] == 0.4


def test_explicit_ordered_flag_gives_input_order() -> None:
    result = run_cli(*SLOW_FIRST, "--ordered")
    assert [r["index"] for r in json_records(result.stdout)] == list(range(6))


def test_unordered_gives_each_index_once_as_they_finish() -> None:
    result = run_cli(*SLOW_FIRST, "--unordered")
    assert result.returncode == 0, result.stderr
    indices = [r["index"] for r in json_records(result.stdout)]
    assert sorted(indices) == list(range(6))
    assert indices[0] != 0, f"the slow task 0 came first: {indices}"


# --------------------------------------------------------------------------- file targets


def test_file_path_target(tmp_path: Path) -> None:
    path = write_target_file(
        tmp_path,
        """
        import os

        def triple(x):
            return [x * 3, os.getpid()]
        """,
    )
    result = run_cli(f"{path}:triple", "--range", "4", "--workers", "2", "--json")
    assert result.returncode == 0, result.stderr
    records = json_records(result.stdout)
    assert {r["index"]: r["value"][0] for r in records} == {0: 0, 1: 3, 2: 6, 3: 9}
    assert all(r["value"][1] == r["worker"]["pid"] for r in records)


def test_file_path_target_does_not_run_its_main_block(tmp_path: Path) -> None:
    marker = tmp_path / "main-block-ran"
    path = write_target_file(
        tmp_path,
        f"""
        import sys

        def double(x):
            return x * 2

        if __name__ == "__main__":
            open({str(marker)!r}, "w").close()
            print("MAIN BLOCK RAN")
            sys.exit(99)
        """,
    )
    result = run_cli(f"{path}:double", "1", "bob", "--json")
    assert result.returncode == 0, result.stderr
    assert values_by_index(json_records(result.stdout)) == {0: 2, 1: "bobbob"}
    assert "MAIN BLOCK RAN" not in result.stdout + result.stderr
    assert not marker.exists()


def test_file_path_target_that_does_not_exist(tmp_path: Path) -> None:
    result = run_cli(f"{tmp_path / 'nope.py'}:f", "1")
    assert_one_line_error(result, "nope.py")


# --------------------------------------------------------------------------- environment


def test_fanout_backend_env_selects_inline_in_the_fanout_process() -> None:
    result = run_cli(
        "tests.tasks:whoami", "--range", "3", "--json", env={"FANOUT_BACKEND": "inline"}
    )
    assert result.returncode == 0, result.stderr
    records = json_records(result.stdout)
    assert len(records) == 3
    for record in records:
        assert record["worker"]["backend"] == "inline"
        assert record["worker"]["pid"] == result.pid
        assert record["value"]["pid"] == result.pid


def test_backend_option_overrides_fanout_backend_env() -> None:
    result = run_cli(
        "tests.tasks:whoami", "1", "--backend", "local", "--json", env={"FANOUT_BACKEND": "inline"}
    )
    assert result.returncode == 0, result.stderr
    (record,) = json_records(result.stdout)
    assert record["worker"]["backend"] == "local"
    assert record["worker"]["ppid"] == result.pid


def test_fanout_workers_env_1_runs_everything_on_one_process() -> None:
    result = run_cli("tests.tasks:whoami", "--range", "6", "--json", env={"FANOUT_WORKERS": "1"})
    assert result.returncode == 0, result.stderr
    records = json_records(result.stdout)
    assert len(records) == 6
    assert len({r["worker"]["pid"] for r in records}) == 1
    assert len({r["value"]["pid"] for r in records}) == 1


def test_workers_2_spreads_slow_tasks_over_two_processes() -> None:
    result = run_cli(
        "tests.tasks:sleep_for", "0.3", "0.3", "0.3", "0.3", "--workers", "2", "--json"
    )
    assert result.returncode == 0, result.stderr
    records = json_records(result.stdout)
    assert len(records) == 4
    assert len({r["worker"]["pid"] for r in records}) == 2
    assert all(r["worker"]["ppid"] == result.pid for r in records)


# --------------------------------------------------------------------------- human view


def test_human_view_prefixes_task_output_then_table_and_summary() -> None:
    result = run_cli("tests.tasks:chatty", "--range", "2")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = table_rows(result.stdout)
    assert sorted(rows) == [0, 1]
    prefixed = re.findall(r"^(worker-\d+)\[(\d+)\]: (out|err) (\d)$", result.stdout, re.M)
    assert len(prefixed) == 4, result.stdout
    for name, pid, _, index in prefixed:
        # columns: #, input, value, worker, pid, ppid, host, s
        row = rows[int(index)]
        assert (row[3], row[4]) == (name, pid)
        assert row[5] == str(result.pid)
        assert row[6] == socket.gethostname()
    # Task output comes before the table.
    lines = result.stdout.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.split()[:1] == ["#"])
    assert all(re.match(r"worker-\d+\[\d+\]: ", line) for line in lines[:header_at])
    assert header_at == 4
    summary = summary_line(result.stdout)
    assert summary["count"] == "2"
    assert (summary["ok"], summary["failed"]) == ("2", "0")
    assert summary["backend"] == "local"
    assert summary["workers"] in ("1", "2")


def test_human_view_shows_a_failed_tasks_error_type() -> None:
    result = run_cli("tests.tasks:divide", "1", "0")
    assert result.returncode == 1
    rows = table_rows(result.stdout)
    assert "ZeroDivisionError:" in rows[1]
    assert "ZeroDivisionError:" not in rows[0]
    summary = summary_line(result.stdout)
    assert (summary["count"], summary["ok"], summary["failed"]) == ("2", "1", "1")


def test_human_view_summary_names_inline_backend() -> None:
    result = run_cli("tests.tasks:square", "--range", "3", "--backend", "inline")
    assert result.returncode == 0, result.stderr
    summary = summary_line(result.stdout)
    assert (summary["count"], summary["workers"], summary["backend"]) == ("3", "1", "inline")
    assert all(row[4] == str(result.pid) for row in table_rows(result.stdout).values())


# --------------------------------------------------------------------------- bad input mid-stream


def test_bad_input_line_mid_stream_keeps_earlier_json_results(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    data.write_text("1\n2\noops\n3\n")
    result = run_cli("tests.tasks:square", "--input", str(data), "--json")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fanout: error: ")
    assert "line 3" in lines[0]
    assert values_by_index(json_records(result.stdout)) == {0: 1, 1: 4}


def test_bad_input_line_mid_stream_keeps_earlier_rows_in_table(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    data.write_text("1\n2\noops\n3\n")
    result = run_cli("tests.tasks:square", "--input", str(data))
    assert result.returncode == 2
    assert "line 3" in result.stderr
    assert "Traceback" not in result.stderr
    rows = table_rows(result.stdout)
    assert sorted(rows) == [0, 1]
    assert summary_line(result.stdout)["ok"] == "2"


# --------------------------------------------------------------------------- --no-daemon


def test_no_daemon_lets_tasks_start_children() -> None:
    result = run_cli("fanout.examples:start_child", "--repeat", "2", "--no-daemon", "--json")
    assert result.returncode == 0, result.stderr
    # Only the JSON lines: see test_no_daemon_childrens_output_stays_off_json_stdout.
    json_lines = "".join(line + "\n" for line in result.stdout.splitlines() if line[:1] == "{")
    records = json_records(json_lines)
    assert len(records) == 2
    worker_pids = {r["worker"]["pid"] for r in records}
    for record in records:
        assert record["ok"] is True
        assert isinstance(record["value"], int)
        assert record["value"] > 0
        assert record["value"] not in worker_pids | {result.pid}
        assert "starting:" in record["output"]


def test_no_daemon_childrens_output_stays_off_json_stdout() -> None:
    result = run_cli("fanout.examples:start_child", "--repeat", "2", "--no-daemon", "--json")
    assert result.returncode == 0, result.stderr
    assert len(json_records(result.stdout)) == 2


def test_daemon_workers_by_default_cannot_start_children() -> None:
    result = run_cli("fanout.examples:start_child", "--repeat", "2", "--json")
    assert result.returncode == 1
    records = json_records(result.stdout)
    assert len(records) == 2
    for record in records:
        assert record["ok"] is False
        assert "daemonic" in record["error"]["message"]


# --------------------------------------------------------------------------- progress bar

PROGRESS_RUN = ["tests.tasks:sleep_for", "0.2", "0.2", "0.2", "--workers", "2", "--json"]


def test_progress_bar_on_stderr_when_it_is_a_terminal() -> None:
    code, _, tty = run_cli_tty_stderr(*PROGRESS_RUN)
    assert code == 0, tty
    assert re.search(r"\btasks\b.*\b[0-3]/3\b", tty), tty


def test_progress_bar_leaves_json_on_stdout() -> None:
    code, stdout, tty = run_cli_tty_stderr(*PROGRESS_RUN)
    assert code == 0, tty
    assert len(json_records(stdout)) == 3
    assert '"index"' not in tty


def test_progress_bar_leaves_task_output_on_stdout() -> None:
    code, stdout, tty = run_cli_tty_stderr("tests.tasks:chatty", "--range", "2")
    assert code == 0, tty
    assert len(re.findall(r"^worker-\d+\[\d+\]: (out|err) \d$", stdout, re.M)) == 4
    assert "out 0" not in tty


def test_no_progress_on_a_terminal_shows_no_bar() -> None:
    code, stdout, tty = run_cli_tty_stderr(*PROGRESS_RUN, "--no-progress")
    assert code == 0, tty
    assert tty.strip() == ""
    assert len(json_records(stdout)) == 3


def test_no_progress_bar_when_stderr_is_a_pipe() -> None:
    result = run_cli(*PROGRESS_RUN)
    assert result.returncode == 0
    assert result.stderr == ""
    assert len(json_records(result.stdout)) == 3


# --------------------------------------------------------------------------- signals


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["SIGINT", "SIGTERM"],
)
def test_signal_stops_the_run_and_its_workers(sig: int, code: int, word: str) -> None:
    proc = start_cli("run", "tests.tasks:sleep_for", "30", "30", "--workers", "2")
    try:
        me = psutil.Process(proc.pid)

        def two_workers() -> bool:
            assert proc.poll() is None, proc.communicate()
            return len(me.children()) >= 2

        wait_until(two_workers, 10, "the two workers start")
        workers = me.children(recursive=True)
        started = time.monotonic()
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=10)
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, stderr
    assert word in stderr
    assert "Traceback" not in stderr
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, f"workers left behind: {alive}"


# --------------------------------------------------------------------------- limits


def test_a_size_that_is_not_one_is_a_one_line_usage_error() -> None:
    result = run_cli("tests.tasks:square", "--range", "3", "--max-memory", "12Q")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "'12Q' is not a size" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_max_memory_ends_the_task_that_grows_past_it_and_the_summary_says_why() -> None:
    result = run_cli("tests.tasks:hold_megabytes", "10", "400", "20", "--workers", "1",
                     "--max-memory", "200M")  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "task 1, input 400, memory-limit: MemoryLimitExceeded: task 1 grew past the" in (
        result.stdout
    )
    summary = summary_line(result.stdout)
    assert (summary["ok"], summary["failed"], summary["causes"]) == ("2", "1", "1 memory-limit")


def test_max_tasks_per_worker_replaces_each_worker_after_n_tasks() -> None:
    result = run_cli("tests.tasks:pid_of", "--range", "6", "--workers", "1",
                     "--max-tasks-per-worker", "2", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = json_records(result.stdout)
    pids = [r["value"] for r in sorted(records, key=lambda r: r["index"])]
    assert len(set(pids)) == 3, pids
    assert all(pids.count(pid) == 2 for pid in pids), pids
