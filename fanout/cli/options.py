"""The options of the commands, declared once (typer reads them from the annotations)."""

from __future__ import annotations

from typing import Annotated

import typer

Target = Annotated[
    str,
    typer.Argument(help="package.module:function, or path/to/file.py:function (local backend)."),
]
Items = Annotated[
    list[str] | None,
    typer.Argument(help="Inputs, one task each; parsed as JSON when they parse, else strings."),
]
Range = Annotated[int | None, typer.Option("--range", help="Inputs 0..N-1.", min=0)]
Repeat = Annotated[int | None, typer.Option("--repeat", help="Call TARGET() N times.", min=0)]
Input = Annotated[
    str | None,
    typer.Option("--input", help="Read one JSON value per line from FILE ('-' for stdin)."),
]
Star = Annotated[bool, typer.Option("--star", help="Unpack each input as positional args.")]
BackendName = Annotated[
    str | None,
    typer.Option("--backend", envvar="FANOUT_BACKEND", help="local (default), inline, ..."),
]
Workers = Annotated[
    int | None,
    typer.Option(
        "--workers",
        envvar="FANOUT_WORKERS",
        min=0,
        help="Worker processes (rq: local fanout workers to start for the run).",
    ),
]
Timeout = Annotated[
    float | None,
    typer.Option("--timeout", min=0.0, help="End a task running longer (seconds)."),
]
Retries = Annotated[int, typer.Option("--retries", min=0, help="Retry a failed task N times.")]
Ordered = Annotated[
    bool,
    typer.Option("--ordered/--unordered", help="Results in input order, or as they finish."),
]
Json = Annotated[bool, typer.Option("--json", help="One JSON object per task on stdout.")]
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
    typer.Option("--redis-url", help="rq: the Redis server (else $FANOUT_REDIS_URL)."),
]
RunQueue = Annotated[
    str | None, typer.Option("--queue", help="rq: the queue name (default fanout).")
]
RunSecretFile = Annotated[
    str | None,
    typer.Option(
        "--secret-file",
        help="rq: sign jobs and results with the secrets in this file"
        " (else $FANOUT_SECRET_FILE, $FANOUT_SECRET).",
    ),
]
BACKEND_FLAGS = {
    "daemon": "--daemon/--no-daemon",
    "redis_url": "--redis-url",
    "queue": "--queue",
    "secret_file": "--secret-file",
}

# `fanout worker` and `fanout status`.
RedisUrl = Annotated[
    str | None,
    typer.Option("--redis-url", envvar="FANOUT_REDIS_URL", help="The Redis server.",
                 show_default=False),
]  # fmt: skip
WorkerQueue = Annotated[str, typer.Option("--queue", help="The queue to serve.")]
WorkerName = Annotated[str | None, typer.Option("--name", help="Register with RQ under this name.")]
Burst = Annotated[bool, typer.Option("--burst", help="Exit once the queue is empty.")]
Processes = Annotated[int, typer.Option("--processes", min=1, help="Worker processes to run.")]
Allow = Annotated[
    list[str] | None,
    typer.Option(
        "--allow",
        envvar="FANOUT_ALLOW",
        help="Run only targets in this module or below (repeatable; FANOUT_ALLOW: a,b).",
        show_default=False,
    ),
]
SecretFile = Annotated[
    str | None,
    typer.Option(
        "--secret-file",
        envvar="FANOUT_SECRET_FILE",
        show_default=False,
        help="Sign jobs and results with the secrets in this file (else $FANOUT_SECRET).",
    ),
]
StatusQueue = Annotated[str | None, typer.Option("--queue", help="Only this queue (default: all).")]
StatusJson = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
