"""How a fanout worker's serving loop ends when RQ's stop lands outside RQ's own loop."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from rq import Worker
from rq.exceptions import StopRequested

from fanout.backends.rq import worker as worker_module
from fanout.backends.rq.worker import FanoutWorker
from tests.helpers import RedisServer


def test_a_stop_raised_as_a_worker_starts_ends_serving_and_unregisters_it(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Served again after an outage, a new worker registers before RQ installs its own
    signal handlers: a SIGTERM then reaches the old worker's, which raises StopRequested
    where nothing of RQ's catches it. It used to end the process with a traceback and
    leave the name registered (a restart under it refused)."""
    connection = redis.Redis(port=redis_server.port)

    def work(self: FanoutWorker, **_: Any) -> bool:
        self.register_birth()
        raise StopRequested  # where the signal landed

    monkeypatch.setattr(FanoutWorker, "work", work)
    worker = FanoutWorker(["serve-test"], connection=connection, name="stops-at-start")
    worker_module._serve(worker, burst=False, quiet=True)
    assert "stops-at-start" not in {w.name for w in Worker.all(connection=connection)}
