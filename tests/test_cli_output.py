"""What ``fanout run`` shows and how it ends (issue 12): usage errors in one line, user
text never read as markup, every failure listed in full, JSON lines never wrapped,
a closed stdout, Ctrl-C showing what finished."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading

import psutil
import pytest

from fanout.cli.views import HumanView
from fanout.models import TaskError, TaskResult, WorkerInfo
from tests.helpers import ROOT, cli_env, finish, run_fanout, start_cli, wait_until

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fanout: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_version_is_printed_without_a_command() -> None:
    result = run_fanout("--version")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"fanout \d+\.\d+\.\d+\n", result.stdout)


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["run", "tests.tasks:square", "--range", "-5"], None, "--range"),
        (["run", "tests.tasks:square", "1", "--workers", "abc"], None, "--workers"),
        (["run", "tests.tasks:square", "1"], {"FANOUT_WORKERS": "abc"}, "FANOUT_WORKERS"),
        (["run", "tests.tasks:square", "1", "--timeout", "-1"], None, "timeout"),
        (["run", "tests.tasks:square", "1", "--retries", "-1"], None, "--retries"),
        (["run", "tests.tasks:square", "1", "--worker", "2"], None, "--worker"),
        (["worker", "--processes", "0"], None, "--processes"),
        (["nope"], None, "nope"),
    ],
    ids=["range", "workers", "env", "timeout", "retries", "typo", "processes", "command"],
)
def test_every_usage_error_is_one_line_and_exit_2(
    args: list[str], env: dict[str, str] | None, fragment: str
) -> None:
    line = one_line_error(run_fanout(*args, env=env), fragment)
    assert "╭" not in line


def test_help_shows_the_usage_examples_and_plain_flags() -> None:
    result = run_fanout("run", "--help")
    assert result.returncode == 0
    text = result.stdout
    assert "Usage: fanout run [OPTIONS] TARGET [ITEM]..." in text
    assert "Examples:" in text
    assert "fanout run fanout.examples:worker --repeat 5" in text
    backend_help = text[text.index("--backend") : text.index("--workers")]
    assert "rq" in backend_help
    assert "<bool>" not in text
    timeout_help = text[text.index("--timeout") : text.index("--retries")]
    assert "x>=" not in timeout_help  # 0 is refused: no bound that says it is fine


def test_inputs_and_values_are_shown_as_given_never_as_markup() -> None:
    texts = ["[a-z]+", "/tmp/[x]/file", "x[/tmp]", "[bold]b[/bold]"]
    result = run_fanout("run", "tests.tasks:identity", *texts)
    assert result.returncode == 0, result.stderr
    for text in texts:
        assert result.stdout.count(repr(text)) == 2, (text, result.stdout)  # input, value


def test_every_failed_task_is_listed_in_full_after_the_table() -> None:
    result = run_fanout("run", "tests.tasks:long_failure", "--range", "1500")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    message = "this message is long: " + " ".join(f"word{i}" for i in range(30))
    failure = [line for line in lines if line.startswith("  task 1234,")]
    assert failure == [f"  task 1234, input 1234, raised: ValueError: {message}"]
    assert "... 500 more rows (use --json for all)" in lines
    assert lines[-1].startswith("1500 tasks: 1499 ok, 1 failed")
    assert "Traceback" not in result.stdout


def test_tracebacks_option_shows_each_failed_tasks_traceback() -> None:
    result = run_fanout("run", "tests.tasks:divide", "1", "0", "--tracebacks")
    assert result.returncode == 1
    tail = result.stdout[result.stdout.index("  task 1, input 0, raised: ZeroDivisionError") :]
    assert "Traceback (most recent call last):" in tail
    assert "return 1 / x" in tail


def test_an_empty_run_says_so() -> None:
    result = run_fanout("run", "tests.tasks:square", "--range", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("0 tasks: 0 ok, 0 failed in ")


def test_lines_takes_each_input_line_as_a_string(tmp_path) -> None:
    """Blank lines too (issue 22, defect 21: they were skipped, so task i stopped being
    line i + 1)."""
    paths = tmp_path / "paths.txt"
    paths.write_text("/srv/a b.txt\n\n  \n[x]/y\n")
    result = run_fanout("run", "tests.tasks:identity", "--input", str(paths), "--lines", "--json")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["value"] for line in result.stdout.splitlines()] == [
        "/srv/a b.txt",
        "",
        "  ",
        "[x]/y",
    ]


def test_star_with_an_object_passes_it_as_keyword_arguments() -> None:
    result = run_fanout("run", "tests.tasks:add", '{"a": 1, "b": 2}', "[3, 4]", "--star", "--json")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["value"] for line in result.stdout.splitlines()] == [3, 7]


def test_workers_with_the_inline_backend_is_refused() -> None:
    result = run_fanout("run", "tests.tasks:square", "1", "--backend", "inline", "--workers", "3")
    one_line_error(result, "inline", "worker")


def test_a_closed_stdout_ends_the_run_quietly_with_141() -> None:
    proc = start_cli("run", "tests.tasks:square", "--range", "1000000", "--json", "--workers", "2")
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert json.loads(first)["index"] == 0
    workers = psutil.Process(proc.pid).children()
    proc.stdout.close()  # as `| head -1` does once it has its line
    _, stderr = finish(proc, 30)
    assert proc.returncode == 141, stderr
    assert stderr == ""
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive


def test_ctrl_c_shows_what_finished_before_it() -> None:
    proc = start_cli(
        "run", "tests.tasks:say_then_sleep", "0", "0", "30", "30", "--workers", "4", "--unordered"
    )
    assert proc.stdout is not None
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    wait_until(lambda: sum("slept 0" in line for line in seen) == 2, 20, "two tasks finish")
    proc.send_signal(signal.SIGINT)
    reader.join(30)  # stdout is read by the reader alone, to its end
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    assert proc.wait(30) == 130, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
    rows = [line.split() for line in seen if re.match(r"^[01] ", line)]
    assert sorted(row[0] for row in rows) == ["0", "1"]
    assert seen[-1].startswith("2 tasks: 2 ok, 0 failed")
    assert "(interrupted: these finished)" in seen[-1]


def test_json_lines_on_a_terminal_are_never_wrapped() -> None:
    """stdout and stderr on one narrow terminal: each JSON line must come out whole."""
    master, slave = pty.openpty()
    value = "v" * 300
    env = cli_env({"COLUMNS": "40"})
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fanout", "run", "tests.tasks:identity", f'"{value}"',
             "1", "2", "--json", "--progress"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
        )  # fmt: skip
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    proc.wait(30)
    assert proc.returncode == 0
    text = b"".join(chunks).decode()
    # Each object starts after the bar's line is cleared, and ends its line.
    lines = [ANSI_ESCAPE.sub("", line) for line in text.split("\n")]
    records = [json.loads(line[line.index('{"index"') :]) for line in lines if '{"index"' in line]
    assert sorted(r["index"] for r in records) == [0, 1, 2]
    assert value in [r["value"] for r in records]
    assert "[progress.description]" not in text


def test_a_target_that_is_not_callable_is_named_in_plain_words() -> None:
    result = run_fanout("run", "sys:maxsize", "1")
    assert "is an int, not a callable" in one_line_error(result)


# --------------------------------------------------------------------------- issue 22


def test_a_closed_stdout_in_human_mode_ends_quietly_with_141() -> None:
    """Defect 11: rich's own broken-pipe handler exited 1 (which says a task failed)."""
    # 3,000 failures listed in full: far more than a pipe holds, so the table is still
    # being written when the reader goes.
    proc = start_cli("run", "tests.tasks:fail", "--range", "3000", "--workers", "2")
    assert proc.stdout is not None
    head = [proc.stdout.readline() for _ in range(3)]
    assert head[0].split()[:2] == ["#", "input"]
    proc.stdout.close()  # as `| head -3` does
    _, stderr = finish(proc, 30)
    assert proc.returncode == 141, stderr
    assert stderr == ""


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "0"])
def test_a_timeout_that_is_no_number_of_seconds_is_one_line(value: str) -> None:
    """Defect 12: --timeout inf printed a traceback (OverflowError), nan a cryptic line."""
    line = one_line_error(run_fanout("run", "tests.tasks:square", "1", "--timeout", value),
                          "--timeout", "seconds above 0")  # fmt: skip
    assert "Traceback" not in line


def test_a_library_timeout_that_is_not_finite_is_refused_before_anything_runs() -> None:
    import fanout
    from tests import tasks

    for value in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="timeout must be a number of seconds above 0"):
            fanout.run(tasks.square, [1], backend="inline", timeout=value)


def test_an_exception_without_a_message_is_shown_without_a_colon() -> None:
    """Defect 17: `KeyboardInterrupt()` was shown as `KeyboardInterrupt: `."""
    result = run_fanout("run", "tests.tasks:raise_interrupt", "1", "--workers", "1")
    assert result.returncode == 1, result.stderr
    assert "KeyboardInterrupt" in result.stdout
    assert "KeyboardInterrupt:" not in result.stdout
    assert "task 0, input 1, raised: KeyboardInterrupt\n" in result.stdout


def test_a_summary_where_no_process_ran_a_task_says_so() -> None:
    """Defect 17: "on 0 rq workers" when every result was decided without a worker."""
    info = WorkerInfo.not_run("rq", "box")
    error = TaskError("TargetError", "on RQ worker w1: no module named 'x'", cause="not-run")
    view = HumanView("rq")
    for index in range(2):
        view.show(TaskResult(index, False, None, error, info, 0, 0.0, 0.0, 0.0), index, print)
    summary = view.summary()
    assert "on 0" not in summary
    assert summary.startswith("2 tasks: 0 ok, 2 failed (2 not-run) in ")
    assert summary.endswith("; no rq worker ran any")


def test_cancelled_tasks_are_counted_and_listed_by_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A run halted by --max-failures: its cancelled tasks in one line per reason (with
    their indexes), not a line each, and counted apart in the summary."""
    ran = WorkerInfo("worker-1", 10, 1, "box", "local")
    failed = TaskError("ValueError", "bad input 0", cause="raised")
    cancelled = TaskError(
        "Cancelled", "the run stopped after 1 failed task (max_failures=1)", cause="cancelled"
    )
    view = HumanView("local")
    view.show(TaskResult(0, False, None, failed, ran, 1, 0.0, 0.0, 0.0), 0, print)
    for index in [*range(1, 6), 8]:
        info = WorkerInfo.not_run("local", "box")
        view.show(TaskResult(index, False, None, cancelled, info, 0, 0.0, 0.0, 0.0), index, print)
    view.show(TaskResult(6, True, 6, None, ran, 1, 0.0, 0.0, 0.0), 6, print)
    view.finish(complete=True)
    out = capsys.readouterr().out
    assert "  task 0, input 0, raised: ValueError: bad input 0" in out
    assert f"cancelled, 6 tasks (1-5, 8): {cancelled.message}" in out
    assert "task 1, input" not in out
    assert out.splitlines()[-1].startswith("8 tasks: 1 ok, 1 failed (1 raised), 6 cancelled in ")


def test_warnings_of_the_library_carry_the_fanout_prefix_on_the_command_line() -> None:
    """Defect 17: "no worker is serving queue ..." and "lost Redis ... trying again" went
    out through logging's last resort, without `fanout: `."""
    code = (
        "import logging, sys; from fanout.cli import log_to_stderr; log_to_stderr();"
        " logging.getLogger('fanout.anything').warning('no worker is serving queue %r', 'q')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, env=cli_env(), timeout=30)  # fmt: skip
    assert result.stderr == "fanout: no worker is serving queue 'q'\n"


@pytest.mark.parametrize("command", ["run", "worker", "status", "results", "cancel"])
def test_help_shows_the_default_redis_url(command: str) -> None:
    """Defect 18: without FANOUT_REDIS_URL, rq commands joined whatever Redis was on
    localhost:6379, and no --help said so."""
    from fanout.backends.rq.connection import DEFAULT_REDIS_URL

    result = run_fanout(command, "--help", env={"COLUMNS": "300"})
    assert result.returncode == 0, result.stderr
    assert f"$FANOUT_REDIS_URL, else {DEFAULT_REDIS_URL}" in " ".join(result.stdout.split())


def test_progress_forced_where_stderr_is_no_terminal_prints_plain_lines() -> None:
    """Defect 19: --progress showed nothing when stderr was not a terminal (a CI log)."""
    result = run_fanout("run", "tests.tasks:square", "--range", "5", "--json", "--progress")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert re.fullmatch(r"fanout: 5/5 tasks done, 0 failed, \d+\.\d s", lines[-1]), lines
    assert "\x1b" not in result.stderr  # no escape codes in a log
    assert len(result.stdout.splitlines()) == 5
