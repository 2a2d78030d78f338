"""A caller's word that it lives and still feeds its runs: the ``feeder`` key of each
run it has inputs for, refreshed from a thread of its own.

A collector (``fanout results RUN_ID``) must never end a run whose caller will enqueue
more, and must know when the caller died before it had enqueued every input (its run is
then incomplete). The caller's own loop cannot say so: it blocks in the user's input
(``--input -`` from a pipe, a slow generator) for as long as that takes. A small thread
can, as long as the process lives; it holds Ctrl-C, SIGTERM and SIGHUP back, so that
they reach the main thread, in whatever it is blocked on.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from fanout.backends.rq.protocol import FEEDER_BEAT, FEEDER_MS


class Feeder:
    """Refreshes, every ``FEEDER_BEAT`` seconds, the feeder keys it is given."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.keys: set[str] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def add(self, key: str) -> None:
        """Keep ``key`` alive from now on (starting the thread the first time)."""
        with self.lock:
            self.keys.add(key)
            if self.thread is None:
                self.thread = threading.Thread(target=self._beat, name="fanout-feeder",
                                               daemon=True)  # fmt: skip
                self.thread.start()

    def discard(self, key: str) -> None:
        """No more inputs for that run (all enqueued, or it ended): let the key lapse.
        Once this returns, no refresh of it is under way (one could make it again just
        after its run deleted it)."""
        with self.lock:
            self.keys.discard(key)

    def close(self) -> None:
        self.stopped.set()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)

    def _beat(self) -> None:
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        while not self.stopped.wait(FEEDER_BEAT):
            with self.lock:  # held while it writes: see discard
                if not self.keys:
                    continue
                try:
                    pipe = self.connection.pipeline(transaction=False)
                    for key in self.keys:
                        pipe.set(key, 1, px=FEEDER_MS)
                    pipe.execute()
                except Exception:  # noqa: S112 - Redis lost or full: the run's loop says so
                    continue
