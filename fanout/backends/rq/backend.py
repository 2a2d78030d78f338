"""The rq backend's client: a Redis connection, a queue, and optionally a few local
``fanout worker`` processes; each map() is an RQRun."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

from rq import Queue, Worker

from fanout._proc import spawn_fanout_worker
from fanout.backends.base import Backend, MapSpec
from fanout.backends.rq.connection import connect, translate
from fanout.backends.rq.connection import redis_url as resolve_url
from fanout.backends.rq.run import RQRun
from fanout.backends.rq.signing import load_keyring, secret_env, serializer_for
from fanout.errors import BackendUnavailable
from fanout.models import TaskResult

DEFAULT_QUEUE = "fanout"
WORKER_START_SECONDS = 30.0


class RQBackend(Backend):
    """Tasks as RQ jobs on ``queue`` at ``redis_url``; ``workers=N`` starts N local
    ``fanout worker`` processes for the Fanout's lifetime (default 0: use the workers
    already serving the queue).

    ``warn_after``: seconds without a serving worker before a warning; ``give_up_after``:
    before BackendUnavailable (None: wait). ``dead_after``: seconds of silence after
    which a fanout worker is taken for dead and its tasks run elsewhere.
    ``redis_wait``: how long to keep reconnecting to a lost Redis. ``detach``: leave the
    run's jobs queued and running when the map ends early (Ctrl-C), instead of
    cancelling them. ``secret`` or ``secret_file`` (default: ``$FANOUT_SECRET_FILE``,
    ``$FANOUT_SECRET``): sign every job and accept only results signed with it."""

    name = "rq"
    needs_importable_target = True

    def __init__(
        self,
        workers: int | None = None,
        redis_url: str | None = None,
        queue: str | None = None,
        warn_after: float = 10.0,
        give_up_after: float | None = None,
        dead_after: float = 30.0,
        redis_wait: float = 30.0,
        detach: bool = False,
        secret: str | None = None,
        secret_file: str | None = None,
    ) -> None:
        self.keyring = load_keyring(secret, secret_file)  # a bad secret fails before Redis
        self.secret_env = secret_env(secret, secret_file)
        self.serializer = serializer_for(self.keyring)
        self.url = resolve_url(redis_url)
        self.connection = connect(self.url)
        self.queue = Queue(
            queue or DEFAULT_QUEUE, connection=self.connection, serializer=self.serializer
        )
        self.workers = workers or 0
        self.warn_after = warn_after
        self.give_up_after = give_up_after
        self.dead_after = dead_after
        self.redis_wait = redis_wait
        self.detach = detach
        self.runs: list[RQRun] = []  # runs in progress
        self._local: list[subprocess.Popen[bytes]] = []
        self._local_names: set[str] = set()

    def map(self, spec: MapSpec) -> Iterator[TaskResult]:
        # Local workers start with the first map, once its target has been checked.
        if self.workers and not self._local_names:
            self._start_local_workers(self.workers)
        with translate(self.url):
            run = RQRun(self, spec)
        self.runs.append(run)

        def end() -> None:
            self.runs.remove(run)
            run.end()

        return run.results(run.step, end)

    def stop_note(self) -> str:
        note = "the run's queued jobs were removed and its running tasks stopped"
        return note + ("; local workers stopped" if self.workers else "")

    def close(self, cancel: bool = False) -> None:
        self._stop_local_workers()
        self.connection.close()

    def _start_local_workers(self, count: int) -> None:
        prefix = f"fanout-{socket.gethostname()}-{os.getpid()}"
        names = [f"{prefix}-{i}" for i in range(1, count + 1)]
        self._local_names = set(names)
        env = dict(os.environ, FANOUT_REDIS_URL=self.url, **self.secret_env)
        for name in names:
            self._local.append(
                spawn_fanout_worker(
                    self.queue.name,
                    name,
                    env,
                    stdout=sys.stderr.fileno(),
                    tied_to_parent=True,
                    quiet=True,
                )
            )
        deadline = time.monotonic() + WORKER_START_SECONDS
        while True:
            ready = {w.name for w in Worker.all(connection=self.connection, queue=self.queue)}
            if set(names) <= ready:
                return
            dead = [p for p in self._local if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                self._stop_local_workers()
                why = "exited" if dead else f"did not register within {WORKER_START_SECONDS} s"
                raise BackendUnavailable(f"a local fanout worker {why}; see its message above")
            time.sleep(0.05)

    def _stop_local_workers(self) -> None:
        """SIGTERM (RQ's warm shutdown), again (cold), then SIGKILL; a worker killed
        that way cannot unregister, so its RQ registration is removed here."""
        for signum, grace in ((signal.SIGTERM, 3.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            alive = [p for p in self._local if p.poll() is None]
            for process in alive:
                process.send_signal(signum)
            deadline = time.monotonic() + grace
            for process in alive:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(max(0.0, deadline - time.monotonic()))
            if signum == signal.SIGKILL and alive:
                with contextlib.suppress(Exception):
                    for worker in Worker.all(connection=self.connection, queue=self.queue):
                        if worker.name in self._local_names:
                            worker.register_death()  # type: ignore[no-untyped-call]
        self._local = []
