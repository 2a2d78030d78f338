"""What a run on RQ needs from the backend that made it, handed over once: its Redis,
its queue, its signing, its limits. Runs, their records and their watches take these
settings, never the backend (which holds the runs)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis import Redis
    from rq import Queue

    from fanout.backends.rq.feeder import Feeder
    from fanout.backends.rq.signing import Keyring


@dataclass(frozen=True)
class RunSettings:
    """The backend's options as one run sees them (``RQBackend.__init__`` says what each
    option means)."""

    backend: str  # the backend's name: results say it
    url: str  # for messages, masked where shown
    connection: Redis
    queue: Queue  # where the run's jobs go (a collected run: the queue its record names)
    serializer: Any  # RQ's job serializer: signing, where there is a keyring
    keyring: Keyring | None  # seals and opens result messages
    feeder: Feeder  # says in Redis that this caller lives and feeds its runs
    result_ttl: int
    enqueue_ahead: int
    redis_wait: float
    dead_after: float
    warn_after: float
    give_up_after: float | None
    keep: bool

    def on_queue(self, name: str) -> RunSettings:
        """The same settings for a run on queue ``name``."""
        from rq import Queue

        return replace(self, queue=Queue(name, connection=self.connection,
                                         serializer=self.serializer))  # fmt: skip
