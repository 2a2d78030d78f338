"""The options of the commands that work on Redis itself: ``worker``, ``status``,
``results``, ``cancel`` (``fanout run``'s are in ``options.py``)."""

from __future__ import annotations

from typing import Annotated

import typer

from fanout.cli.options import REDIS_DEFAULT, check_wait

# `fanout worker` and `fanout status`.
RedisUrl = Annotated[
    str | None,
    typer.Option("--redis-url", envvar="FANOUT_REDIS_URL", metavar="URL",
                 help=f"The Redis server [default: {REDIS_DEFAULT}].", show_default=False),
]  # fmt: skip
WorkerQueue = Annotated[str, typer.Option("--queue", metavar="NAME", help="The queue to serve.")]
WorkerName = Annotated[
    str | None, typer.Option("--name", metavar="NAME", help="Register with RQ under this name.")
]
Quiet = Annotated[
    bool, typer.Option("--quiet", help="No banner and no warnings (for workers a client starts).")
]
RedisWait = Annotated[
    float,
    typer.Option(
        "--redis-wait",
        metavar="SECONDS",
        callback=check_wait,
        help="How long a job's results wait for a lost or full Redis before the job fails.",
    ),
]
MetricsPort = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        metavar="PORT",
        min=1,
        max=65535,
        show_default=False,
        help="Serve Prometheus metrics at http://HOST:PORT/metrics (all --processes on one).",
    ),
]
Burst = Annotated[bool, typer.Option("--burst", help="Exit once the queue is empty.")]
Processes = Annotated[
    int, typer.Option("--processes", metavar="N", min=1, help="Worker processes to run.")
]
Allow = Annotated[
    list[str] | None,
    typer.Option(
        "--allow",
        envvar="FANOUT_ALLOW",
        metavar="MODULE",
        help="Run only targets in this module or below (repeatable; FANOUT_ALLOW: a,b).",
        show_default=False,
    ),
]
SecretFile = Annotated[
    str | None,
    typer.Option(
        "--secret-file",
        envvar="FANOUT_SECRET_FILE",
        metavar="PATH",
        show_default=False,
        help="Sign jobs and results with the secrets in this file (else $FANOUT_SECRET).",
    ),
]
StatusQueue = Annotated[
    str | None, typer.Option("--queue", metavar="NAME", help="Only this queue (default: all).")
]
StatusJson = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]

# `fanout results`, `status`, `cancel`: runs by their id.
RunId = Annotated[str, typer.Argument(metavar="RUN_ID", help="The run's id (`run <ID>`).")]
OptionalRunId = Annotated[
    str | None,
    typer.Argument(metavar="[RUN_ID]", help="A run's id: its counts instead.", show_default=False),
]
NoWait = Annotated[bool, typer.Option("--no-wait", help="Only the results finished now.")]
Keep = Annotated[bool, typer.Option("--keep", help="Leave the run's data after collecting it.")]
CollectOrdered = Annotated[
    bool,
    typer.Option(
        "--ordered/--unordered",
        help="Results in index order (each held until those before it are in), or as"
        " they were pushed [default: unordered].",
    ),
]
