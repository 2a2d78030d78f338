"""A fanout worker's heartbeat: RQ's extra beats between jobs are dropped, none other."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from rq.worker import BaseWorker

from fanout.backends.rq import worker as worker_module
from fanout.backends.rq.worker import BEAT_AGAIN_SECONDS, REGISTRATION_TTL, FanoutWorker
from tests.helpers import RedisServer


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    server = RedisServer()  # RQ's worker asks its Redis for its version as it starts
    yield server
    server.stop()


@pytest.fixture
def worker(server: RedisServer) -> FanoutWorker:
    return FanoutWorker(["fanout"], connection=redis.Redis(port=server.port), name="beats")


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """The (timeout, pipeline) of each heartbeat RQ's own code was asked to send."""
    calls: list[tuple[Any, Any]] = []

    def record(self: BaseWorker, timeout: Any = None, pipeline: Any = None) -> None:
        calls.append((timeout, pipeline))

    monkeypatch.setattr(BaseWorker, "heartbeat", record)
    return calls


def test_a_beat_right_after_another_is_dropped(
    worker: FanoutWorker, sent: list[tuple[Any, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: clock[0])
    worker.heartbeat()
    worker.heartbeat()  # RQ beats again as it dequeues: nothing new to say
    assert sent == [(REGISTRATION_TTL, None)]
    clock[0] += BEAT_AGAIN_SECONDS
    worker.heartbeat()
    assert sent == [(REGISTRATION_TTL, None), (REGISTRATION_TTL, None)]


def test_beats_with_a_pipeline_or_a_timeout_always_go(
    worker: FanoutWorker, sent: list[tuple[Any, Any]]
) -> None:
    worker.heartbeat()
    pipe = worker.connection.pipeline()
    worker.heartbeat(pipeline=pipe)  # with the job's own heartbeat (RQ's job bookkeeping)
    worker.heartbeat(90)  # an expiry asked for: it goes, no longer than a registration's
    assert sent == [(REGISTRATION_TTL, None), (REGISTRATION_TTL, pipe), (REGISTRATION_TTL, None)]
