"""Operating the workers of a Redis from any machine that reaches it: drain some or all
of them, pause and resume them all.

**Drain** (``fanout drain``): a worker is told through RQ's command channel (the pub/sub
channel ``rq:pubsub:<worker>`` that RQ's own ``stop-job`` and ``shutdown`` use) with a
command of fanout's own, ``fanout-drain``. A ``fanout worker`` then finishes the task it
runs, gives the unstarted rest of its job back as new jobs at the front of the queue
(the scheduling's give-back, ``split.py``), takes no new job, notes in its registration
how many tasks it gave back, and exits 0 (``worker.py``, ``job.py``)::

    fanout drain --PUBLISH fanout-drain--> rq:pubsub:<worker> --> FanoutWorker.drain()
         |                                                           | the job's rest -> queue
         '<-- polls rq:worker:<name>: "death" (+ fanout_gave_back) <-'  exit 0

A stock ``rq worker`` ignores commands it does not know: it is asked for RQ's warm
shutdown instead (it finishes its whole job, then exits), and ``fanout drain`` says so.

**Pause** (``fanout pause``/``resume``): RQ's own suspend flag, ``rq:suspended``, which
every RQ worker of the Redis reads before it takes a job (``rq suspend``/``rq resume``
set and clear the same key). Running jobs go on; queued ones wait.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rq import Queue, Worker
from rq.command import PUBSUB_CHANNEL_TEMPLATE, send_shutdown_command
from rq.suspension import WORKERS_SUSPENDED, is_suspended, resume, suspend
from rq.utils import utcparse

from fanout.backends.rq.protocol import text

#: The command a ``fanout worker`` drains on (RQ routes the others to its own handlers).
DRAIN_COMMAND = "fanout-drain"
#: In a drained worker's registration: how many tasks it gave back.
GAVE_BACK_FIELD = "fanout_gave_back"
#: In a fanout worker's registration: how often it heartbeats (only fanout's have it).
FANOUT_FIELD = "fanout_heartbeat"
#: In a fanout worker's registration: its task process's pid, as of its last heartbeat
#: (who ran the task of a worker that died whole, where no result said: watch.py).
TASK_PID_FIELD = "fanout_task_pid"
SILENT_BEATS = 3  # a fanout worker silent for this many heartbeats has no process


def live_workers(connection: Any, queue: Queue) -> set[str]:
    """The names of the workers serving ``queue`` that may be alive: RQ's registrations,
    less those of fanout workers silent for ``SILENT_BEATS`` heartbeats (a killed
    worker's registration outlives it by up to a minute). A stock worker's heartbeat,
    minutes apart when idle, says nothing: it counts while registered."""
    names = [w.name for w in Worker.all(connection=connection, queue=queue)]
    pipe = connection.pipeline(transaction=False)
    for name in names:
        pipe.hmget(Worker.redis_worker_namespace_prefix + name, "last_heartbeat", FANOUT_FIELD)
    live = set()
    for name, (beat, every) in zip(names, pipe.execute(), strict=True):
        if beat and every:
            silent = time.time() - utcparse(text(beat)).timestamp()
            if silent > SILENT_BEATS * float(every):
                continue
        live.add(name)
    return live


POLL_SECONDS = 0.2  # how often ``fanout drain`` looks whether its workers have exited
RESEND_SECONDS = 2.0  # a drain nobody received (a worker reconnecting) is sent again


@dataclass
class Draining:
    """One worker being drained, and how it ended."""

    name: str
    fanout: bool  # a fanout worker (else a stock RQ one: warm shutdown instead)
    outcome: str | None = None  # "drained", or "gone" (no clean exit recorded)
    gave_back: int | None = None  # tasks it gave back (fanout workers)
    seconds: float = 0.0  # from the drain's start to its exit
    heard: bool = False  # some subscriber got the command


def serving(connection: Any, queue: str) -> list[str]:
    """The names of the workers registered as serving ``queue``."""
    return sorted(w.name for w in Worker.all(connection=connection, queue=Queue(queue,
                                             connection=connection)))  # fmt: skip


def serving_any(connection: Any) -> list[str]:
    """The names of every registered worker of this Redis."""
    return sorted(w.name for w in Worker.all(connection=connection))


def registered(connection: Any, names: Iterable[str]) -> dict[str, bool | None]:
    """For each name: whether it is a live registered fanout worker (True), a stock RQ
    worker (False), or not registered (None)."""
    pipe = connection.pipeline(transaction=False)
    for name in names:
        pipe.hmget(Worker.redis_worker_namespace_prefix + name, "birth", "death", FANOUT_FIELD)
    found: dict[str, bool | None] = {}
    for name, (birth, death, beat) in zip(names, pipe.execute(), strict=True):
        found[name] = None if birth is None or death is not None else beat is not None
    return found


def start_drain(connection: Any, names: dict[str, bool]) -> list[Draining]:
    """Tell each worker (name -> is a fanout worker) to drain; stock ones get RQ's
    warm shutdown."""
    draining = [Draining(name, fanout) for name, fanout in names.items()]
    for worker in draining:
        _send(connection, worker)
    return draining


def _send(connection: Any, worker: Draining) -> None:
    if worker.fanout:
        channel = PUBSUB_CHANNEL_TEMPLATE % worker.name
        # Counted, as RQ's send_command does not: nobody heard it (a worker whose command
        # listener is reconnecting) means say it again.
        message = json.dumps({"command": DRAIN_COMMAND})
        worker.heard = bool(connection.publish(channel, message))
    else:
        send_shutdown_command(connection, worker.name)
        worker.heard = True


def wait_drained(
    connection: Any,
    draining: list[Draining],
    timeout: float | None,
    on_exit: Callable[[Draining], None],
    on_poll: Callable[[list[Draining]], None] = lambda left: None,
) -> list[Draining]:
    """Wait until every worker in ``draining`` has exited (``on_exit`` for each as it
    does, ``on_poll`` with those left at each look) or ``timeout`` seconds passed;
    those still running."""
    began = time.monotonic()
    sent = began
    left = list(draining)
    prefix = Worker.redis_worker_namespace_prefix
    while left:
        pipe = connection.pipeline(transaction=False)
        for worker in left:
            pipe.hmget(prefix + worker.name, "birth", "death", GAVE_BACK_FIELD)
        now = time.monotonic()
        for worker, (birth, death, gave) in zip(list(left), pipe.execute(), strict=True):
            if birth is not None and death is None:
                continue
            worker.outcome = "drained" if death is not None else "gone"
            worker.gave_back = int(text(gave)) if gave is not None else None
            worker.seconds = now - began
            left.remove(worker)
            on_exit(worker)
        if not left or (timeout is not None and now - began >= timeout):
            break
        on_poll(left)
        if now - sent >= RESEND_SECONDS:
            sent = now
            for worker in left:
                if worker.fanout and not worker.heard:
                    _send(connection, worker)
        time.sleep(POLL_SECONDS)
    return left


def pause(connection: Any, duration: int | None = None) -> None:
    """Every RQ worker of this Redis takes no new job (for ``duration`` seconds, or
    until :func:`unpause`): RQ's own suspend flag, as ``rq suspend`` sets it."""
    suspend(connection, duration)


def unpause(connection: Any) -> bool:
    """Let the workers take jobs again; False if they were not paused."""
    return bool(resume(connection))


def paused(connection: Any) -> bool:
    """Are this Redis's RQ workers paused (``fanout pause``, ``rq suspend``)?"""
    return bool(is_suspended(connection))


def paused_for(connection: Any) -> int | None:
    """Seconds until a pause with a duration ends by itself (None: none set, or no pause)."""
    ttl = int(connection.ttl(WORKERS_SUSPENDED))
    return ttl if ttl >= 0 else None
