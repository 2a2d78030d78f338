"""A job's results on their way to the run's stream: collected, pushed in bulk (at least
every ``PUSH_SECONDS``), each message within Redis's size limit for a value, a lost or
full Redis waited for; and the job's way of learning that its run was cancelled."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from rq.job import Job

from fanout._wire import FAILED, NOT_RUN, STATUS, Record, not_run_record
from fanout.backends.rq.connection import Outage, RedisFull, RedisLost, translate
from fanout.backends.rq.protocol import (
    PUSH_SCRIPT,
    Identity,
    Moves,
    RunKeys,
    pack_results,
    push_args,
    push_keys,
    text,
)
from fanout.errors import JobStopped, SerializationError
from fanout.models import TaskError, TaskResult, cancelled

if TYPE_CHECKING:
    from fanout.backends.rq.context import WorkerContext
    from fanout.backends.rq.signing import Keyring

PUSH_SECONDS = 0.2  # a worker pushes finished results at least this often
PUSH_RECORDS = 2000  # ... or once this many are waiting


class Pusher:
    """Collects result records and pushes them onto the run's stream in bulk."""

    def __init__(
        self, job: Job, keys: RunKeys, ctx: WorkerContext, keyring: Keyring | None
    ) -> None:
        connection = job.connection
        self.job_id = job.id
        self.job_key = job.key
        self.connection = connection
        self.keys = keys
        self.ctx = ctx
        self.keyring = keyring
        self.script = connection.register_script(PUSH_SCRIPT)
        self.gone = False  # the run has ended: nobody reads its results any more
        # The run's state as the last push found it: "halted" (max_failures) or
        # "cancelled" means the job's tasks that have not started are not to run.
        self.state = "running"
        self.records: list[Record] = []
        self.attempts: list[int] = []  # attempts made before each record's (its prior)
        self.pending: set[int] = set()  # the job's tasks without a record yet
        self.identity: Identity | None = None
        self.last = time.monotonic()

    def add(self, record: Record, result: TaskResult | None) -> None:
        """One more record; ``result`` says who ran it (None: nobody, this worker decided)."""
        if result is not None:
            w = result.worker
            identity = (w.name, w.pid, w.ppid, w.host)
            if self.identity is not None and identity != self.identity:
                self.flush()  # one identity per message (a replaced task process)
            self.identity = identity
        elif self.identity is None:
            self.identity = (self.ctx.name, os.getpid(), os.getppid(), socket.gethostname())
        self.records.append(record)
        # Made before this record's: a record of a run attempt counts that attempt.
        ran = result is not None and record[STATUS] != NOT_RUN
        self.attempts.append(0 if result is None else result.attempts - ran)
        self.pending.discard(record[0])
        if len(self.records) >= PUSH_RECORDS or time.monotonic() - self.last >= PUSH_SECONDS:
            self.flush()

    def run_state(self) -> str | None:
        """The run's state in its record (running, cancelled, halted), None if it is gone."""
        state = self.connection.hget(self.keys.meta, "state")
        return None if state is None else text(state)

    def begin(self) -> str | None:
        """As the job starts: the run's state (``run_state``); and the job's hash, which
        RQ keeps without an expiry while it runs, is given the run's, so that it goes
        even if its worker and the run's caller both die (each push renews it)."""
        state, ttl = self.connection.hmget(self.keys.meta, "state", "result_ttl")
        if state is not None and ttl is not None:
            self.connection.expire(Job.key_for(self.job_id), int(ttl))
        return None if state is None else text(state)

    def cancel(self, indices: Iterable[int], why: str) -> None:
        """Each of ``indices`` gets its result: Cancelled, run by no one."""
        error = cancelled(why)
        now = time.time()
        for index in indices:
            self.add(not_run_record(index, error, now), None)
        self.flush()

    def stopped_by_caller(self) -> bool:
        """Was the stop asked for by the run's caller (Ctrl-C, cancel, max_failures:
        the run's state says so), rather than by someone's ``rq stop-job``?"""
        try:
            state = self.run_state()
        except Exception:
            return False
        self.state = state or "cancelled"  # gone: nothing of it is to run any more
        return self.state in ("cancelled", "halted")

    def check_stop(self, todo: list[int]) -> None:
        """Before any task of the job runs: raise JobStopped if the job was asked to stop,
        by its caller (then each of ``todo`` is cancelled, with its result) or by
        someone's ``rq stop-job``."""
        if not self.ctx.stop_requested:
            return
        if self.stopped_by_caller():
            with contextlib.suppress(Exception):
                self.cancel(todo, "the run was cancelled before its job ran")
            raise JobStopped(f"job {self.job_id} was cancelled by the caller")
        raise JobStopped(f"job {self.job_id} was stopped (rq stop-job)")

    def idle(self) -> None:
        """Before waiting for the task process: push what is done, keep RQ informed."""
        # Called every PUSH_SECONDS at least while tasks run: one push per interval, not
        # one per task (a round trip each), and none held back longer than that.
        if time.monotonic() - self.last >= PUSH_SECONDS:
            self.flush()
        if self.ctx.heartbeat is not None:
            self.ctx.heartbeat()

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.records:
            return
        records, self.records = self.records, []
        attempts, self.attempts = self.attempts, []
        if self.ctx.metrics is not None:
            self.ctx.metrics.count(records, self.identity_()[1])
        for part, tries in self.messages(records, attempts):
            if not self.push(pack_results(self.keys, self.identity_(), part,
                                          None if not any(tries) else tries,
                                          self.keyring), part):  # fmt: skip
                self.gone = True
                return

    def push_moves(self, moves: Moves, pipe: Any) -> None:
        """Queue on ``pipe`` the message that says which tasks left this job for which new
        job (split.py): pushed in the transaction that enqueues those jobs."""
        if self.identity is None:
            self.identity = (self.ctx.name, os.getpid(), os.getppid(), socket.gethostname())
        data = pack_results(self.keys, self.identity, [], None, self.keyring, moves)
        self.script(keys=push_keys(self.keys, self.job_key), args=push_args(data, []), client=pipe)

    def identity_(self) -> Identity:
        assert self.identity is not None
        return self.identity

    def messages(
        self, records: list[Record], attempts: list[int]
    ) -> Iterator[tuple[list[Record], list[int]]]:
        """The records in parts that each fit Redis's size limit for a value: halved until
        they fit; a single result too big for it fails its task instead."""
        limit = self.ctx.max_value_bytes
        size = len(pack_results(self.keys, self.identity_(), records, attempts, self.keyring))
        if size <= limit:
            yield records, attempts
        elif len(records) > 1:
            half = len(records) // 2
            yield from self.messages(records[:half], attempts[:half])
            yield from self.messages(records[half:], attempts[half:])
        else:
            index, _, _, started, finished, duration, output, usage = records[0]
            error = TaskError(
                SerializationError.__name__,
                f"the result of task {index} is {size / 2**20:.0f} MiB, over the"
                f" {limit / 2**20:.0f} MiB that Redis takes in one value (its"
                " proto-max-bulk-len)",
                cause="raised",
            )
            record = (index, FAILED, error, started, finished, duration, output[:10_000], usage)
            yield [record], attempts

    def push(self, data: bytes, records: list[Record]) -> bool:
        """Push one message; False if the run's data is gone (nobody reads it). A lost or
        full Redis is waited for (``ctx.redis_wait``), heartbeating all the while."""
        outage = Outage(self.ctx.url, self.ctx.redis_wait, f"worker {self.ctx.name}: ")
        keys, args = push_keys(self.keys, self.job_key), push_args(data, records)
        while True:
            try:
                with translate(self.ctx.url):
                    reply = self.script(keys=keys, args=args)
                if reply:
                    self.state = text(reply)
                return bool(reply)
            except (RedisLost, RedisFull) as exc:
                outage.hit(exc)  # keep the results, try again
                if self.ctx.heartbeat is not None:
                    self.ctx.heartbeat()
