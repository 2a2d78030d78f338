"""The options of the commands, declared once (typer reads them from the annotations)."""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

# Where rq commands connect without --redis-url, said in every --help (as
# backends/rq/connection.py's DEFAULT_REDIS_URL: importing it would import redis and rq).
REDIS_DEFAULT = "$FANOUT_REDIS_URL, else redis://localhost:6379/0"


class RunCommand(TyperCommand):
    """``fanout run``, with its usage line as docs/cli.md writes it."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return ["[OPTIONS]", "TARGET", "[ITEM]..."]


def _seconds(value: float | None) -> float | None:
    """A time limit: a number of seconds above 0 (inf and nan are none)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(
            f"{value} is not a number of seconds above 0 (leave the option out for no limit)"
        )
    return value


def check_size(value: str | None) -> int | None:
    """A memory size: ``512M``, ``2G``, a number of bytes."""
    if value is None:
        return None
    from fanout._memory import parse_size

    try:
        return parse_size(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def check_wait(value: float | None) -> float | None:
    """How long to wait: 0 or more seconds, inf for as long as it takes."""
    if value is not None and not value >= 0:  # nan and negatives
        raise typer.BadParameter(f"{value} is not a number of seconds (0 or more, or inf)")
    return value


RUN_EXAMPLES = """Examples:

\b
  fanout run fanout.examples:worker --repeat 5
  fanout run mymodule:resize a.png b.png --json > results.jsonl
  fanout run mymodule:fetch --input urls.txt --lines --workers 8
  fanout run mymodule:work --range 1000 --backend rq --redis-url redis://host:6379/0

Exit codes: 0 every task ok, 1 some task failed, 2 usage error or bad input,
3 backend unavailable, 130 Ctrl-C, 141 stdout closed, 143 SIGTERM.
"""

Target = Annotated[
    str,
    typer.Argument(
        metavar="TARGET",
        help="package.module:function, or path/to/file.py:function (local backend).",
        show_default=False,
    ),
]
Items = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="ITEM",
        help="Inputs, one task each; parsed as JSON when they parse, else strings.",
        show_default=False,
    ),
]
Range = Annotated[int | None, typer.Option("--range", metavar="N", help="Inputs 0..N-1.", min=0)]
Repeat = Annotated[
    int | None, typer.Option("--repeat", metavar="N", help="Call TARGET() N times.", min=0)
]
Input = Annotated[
    str | None,
    typer.Option(
        "--input", metavar="FILE", help="Read one JSON value per line from FILE ('-': stdin)."
    ),
]
Lines = Annotated[
    bool, typer.Option("--lines", help="With --input: each line is one input, as a string.")
]
Star = Annotated[
    bool,
    typer.Option(
        "--star", help="Unpack each input: a list as positional args, an object as keywords."
    ),
]
BackendName = Annotated[
    str | None,
    typer.Option(
        "--backend",
        envvar="FANOUT_BACKEND",
        metavar="NAME",
        help="local (default: processes here), rq (RQ workers on Redis), inline (one by one,"
        " in this process), or a registered third-party backend.",
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(
        "--workers",
        metavar="N",
        min=0,
        help="Worker processes (default $FANOUT_WORKERS, else one per CPU); rq: local fanout"
        " workers to start for the run (default 0: use the queue's workers).",
    ),
]
Timeout = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        callback=_seconds,
        help="End a task running longer than this.",
    ),
]
Retries = Annotated[
    int, typer.Option("--retries", metavar="N", min=0, help="Retry a failed task N times.")
]
Ordered = Annotated[
    bool,
    typer.Option("--ordered/--unordered", help="Results in input order, or as they finish."),
]
Json = Annotated[bool, typer.Option("--json", help="One JSON object per task on stdout.")]
Tracebacks = Annotated[
    bool, typer.Option("--tracebacks", help="Show the traceback of every failed task.")
]
ShowProgress = Annotated[
    bool | None,
    typer.Option("--progress/--no-progress", help="Progress bar on stderr (default: if a tty)."),
]

# Backend options of `fanout run`: given to the backend by name, only when given here
# (each backend reads its own environment variables itself).
Daemon = Annotated[
    bool | None,
    typer.Option("--daemon/--no-daemon", help="Local workers as daemons (default) or not."),
]
RunRedisUrl = Annotated[
    str | None,
    typer.Option(
        "--redis-url", metavar="URL", help=f"rq: the Redis server [default: {REDIS_DEFAULT}]."
    ),
]
RunRedisWait = Annotated[
    float | None,
    typer.Option(
        "--redis-wait",
        metavar="SECONDS",
        callback=check_wait,
        help="rq: how long to keep reconnecting to a lost Redis before the run gives up"
        " (exit 3) [default: 30].",
    ),
]
RunQueue = Annotated[
    str | None, typer.Option("--queue", metavar="NAME", help="rq: the queue name (default fanout).")
]
RunSecretFile = Annotated[
    str | None,
    typer.Option(
        "--secret-file",
        metavar="PATH",
        help="rq: sign jobs and results with the secrets in this file"
        " (else $FANOUT_SECRET_FILE, $FANOUT_SECRET).",
    ),
]

# Runs by id, failing fast, journals.
Detach = Annotated[
    bool,
    typer.Option("--detach", help="rq: enqueue every input, print the run's id and return."),
]
MaxFailures = Annotated[
    int | None,
    typer.Option(
        "--max-failures",
        metavar="N",
        min=1,
        help="Stop after N failed tasks: no new input, tasks not yet started cancelled.",
    ),
]
# Limits and recycling.
MaxMemory = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        metavar="SIZE",
        callback=check_size,
        help="End a task whose process grows past SIZE (e.g. 512M, 2G); its worker is replaced.",
    ),
]
MaxTasksPerWorker = Annotated[
    int | None,
    typer.Option(
        "--max-tasks-per-worker",
        metavar="N",
        min=1,
        help="Replace a worker process after N tasks.",
    ),
]
MaxMemoryPerWorker = Annotated[
    str | None,
    typer.Option(
        "--max-memory-per-worker",
        metavar="SIZE",
        callback=check_size,
        help="Replace a worker process that holds more than SIZE after a task.",
    ),
]
JournalPath = Annotated[
    str | None,
    typer.Option("--journal", metavar="PATH", help="Append every result to PATH (JSON lines)."),
]
ResumeFlag = Annotated[
    bool, typer.Option("--resume", help="With --journal: skip the indexes it already holds.")
]
ReportPath = Annotated[
    str | None,
    typer.Option(
        "--report",
        metavar="FILE.html",
        help="Draw the run into FILE.html when it ends (after Ctrl-C too: what finished).",
    ),
]
ResumeFailed = Annotated[
    bool,
    typer.Option("--resume-failed", help="Like --resume, but run its failed ones again too."),
]
