"""``fanout metrics``: the queue side of a fleet for Prometheus (and autoscalers), served
on a port or printed once. The reading is ``backends/rq/queue_metrics.py``."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Annotated, Any

import typer

from fanout.cli import rq_options as ropt
from fanout.cli.commands import app
from fanout.cli.exitcodes import EXIT_USAGE, errors_as_exit_codes, fail

Queues = Annotated[
    list[str] | None,
    typer.Option("--queue", metavar="NAME", show_default=False,
                 help="A queue to export (repeatable) [default: every queue RQ knows]."),
]  # fmt: skip
Port = Annotated[
    int | None,
    typer.Option("--port", metavar="PORT", min=1, max=65535, show_default=False,
                 help="Serve the metrics at http://HOST:PORT/metrics until SIGTERM or Ctrl-C."),
]  # fmt: skip
Addr = Annotated[
    str, typer.Option("--addr", metavar="ADDRESS", help="The address to serve on, with --port.")
]
Once = Annotated[bool, typer.Option("--once", help="Print the metrics once and exit.")]


@app.command("metrics")
def metrics_command(
    redis_url: ropt.RedisUrl = None,
    queue: Queues = None,
    port: Port = None,
    addr: Addr = "0.0.0.0",  # noqa: S104 - Prometheus scrapes from another host
    once: Once = False,
) -> None:
    """Export queue depth (jobs, tasks), the oldest waiting job's age, workers by state
    and runs by state as Prometheus metrics: on --port PORT, or printed once (--once)."""
    if (port is None) != once:
        fail("give --port PORT to serve the metrics, or --once to print them once"
             if port is None else "--port and --once do not go together", EXIT_USAGE)  # fmt: skip
    from fanout.backends.rq.connection import connect, mask_url, translate
    from fanout.backends.rq.connection import redis_url as url_of
    from fanout.backends.rq.queue_metrics import QueueCollector, exposition, read_snapshot

    with errors_as_exit_codes():
        url = url_of(redis_url)
        connection = connect(url, socket_timeout=10.0)  # a scrape never hangs on Redis
        if once:
            with translate(url):
                snapshot = read_snapshot(connection, queue)
            sys.stdout.buffer.write(exposition(snapshot))
            sys.stdout.flush()
            return
        assert port is not None
        from fanout.backends.rq.metrics_http import Server

        server = Server(QueueCollector(connection, queue, url), port, addr)
    typer.echo(f"fanout metrics: serving the queues of {mask_url(url)} at"
               f" http://{addr}:{server.port}/metrics", err=True)  # fmt: skip
    _until_stopped()
    server.close()


def _until_stopped() -> None:
    """Wait for SIGTERM or Ctrl-C: a service asked to stop stops cleanly (exit 0), as
    ``fanout worker`` does."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    while not stop.wait(1.0):
        pass
