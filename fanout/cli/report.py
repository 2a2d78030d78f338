"""``fanout report SOURCE -o FILE.html``: a run as one self-contained HTML file, a lane
per process and a bar per task, from a journal, JSON lines of ``fanout run --json``
results, or a durable run's id (collected with ``keep``: its results stay in Redis)."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Annotated

import typer

from fanout.cli import rq_options as ropt
from fanout.cli.commands import app
from fanout.cli.exitcodes import EXIT_INTERRUPTED, EXIT_TERMINATED, errors_as_exit_codes
from fanout.cli.running import say_and_exit

Source = Annotated[
    str,
    typer.Argument(
        metavar="SOURCE",
        help="A journal (fanout run --journal), a file of fanout run --json lines ('-':"
        " stdin), or a run's id (rq).",
        show_default=False,
    ),
]
Output = Annotated[
    str,
    typer.Option("-o", "--output", metavar="FILE.html", help="Where to write the report.",
                 show_default=False),
]  # fmt: skip
Queue = Annotated[
    str | None,
    typer.Option("--queue", metavar="NAME", help="A run's id: the queue of its workers."),
]


class _Terminated(BaseException):
    """SIGTERM while a report is made: it ends as Ctrl-C does, nothing written."""


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


Title = Annotated[
    str | None,
    typer.Option("--title", metavar="TEXT", help="The heading [default: the target, or the run]."),
]


@app.command("report")
def report_command(
    source: Source,
    output: Output,
    redis_url: ropt.RedisUrl = None,
    queue: Queue = None,
    no_wait: ropt.NoWait = False,
    title: Title = None,
) -> None:
    """Draw run SOURCE as one HTML file: a lane per process, a bar per task from its
    start to its finish, coloured by how it ended. A run's id is read from Redis and
    left there (as with results --keep): the report takes nothing away."""
    from fanout.reporting import page, sources
    from fanout.reporting.pack import Packer

    packer = Packer()
    signal.signal(signal.SIGTERM, _terminated)
    try:
        with errors_as_exit_codes():
            path = page.writable(output)  # before a run is read, or anything written
            if sources.is_run_id(source):
                heading = sources.collect_run(packer, source, redis_url, queue, not no_wait)
                where = f"run {source}"
            else:
                heading = sources.read_file(packer, source)
                where = "standard input" if source == "-" else source
            page.write(page.render(packer.data(title or heading, where)), path)
    except KeyboardInterrupt:
        say_and_exit("fanout: interrupted; no report written", EXIT_INTERRUPTED)
    except _Terminated:
        say_and_exit("fanout: terminated; no report written", EXIT_TERMINATED)
    count = len(packer)
    typer.echo(f"fanout: report of {count} task{'s' if count != 1 else ''} written to"
               f" {path}", err=True)  # fmt: skip
