"""Collecting a run by its id (``fanout results RUN_ID``, ``fanout.attach``): read every
result from the run's stream, each index once, and — while no other process drives the
run — drive it: rebuild its jobs from Redis, watch them, run lost tasks again."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fanout._wire import TaskBatch
from fanout.backends.base import MapSpec
from fanout.backends.rq.allowlist import plain_loads
from fanout.backends.rq.connection import mask_url
from fanout.backends.rq.protocol import LIMITS, RQJob
from fanout.backends.rq.record import RunRecord
from fanout.backends.rq.run import RQRun
from fanout.errors import IncompleteRun, ResultsGone, UnknownRun, WorkerLost
from fanout.models import TaskError

if TYPE_CHECKING:
    from fanout.backends.rq.settings import RunSettings


def _never(*args: Any) -> None:
    raise AssertionError("a collector runs no task itself")


class CollectRun(RQRun):
    """A run collected by id: its inputs are in Redis already (or were lost with the
    caller that had them); its results come from the stream.

    It ends once it has a result for every input the run has, and the run has them all:
    its caller enqueued every input, or is gone before it did (the run is incomplete:
    IncompleteRun, once every result is given). It never ends a run whose caller still
    feeds it. Another collection may complete meanwhile: while this one reads (its
    token in the run's readers), that one leaves the run's data to it."""

    def __init__(
        self,
        settings: RunSettings,
        run_id: str,
        wait: bool,
        ordered: bool = False,
        inputs: dict[int, Any] | None = None,
    ) -> None:
        """``ordered``: yield in index order; ``inputs``: filled with the input of each
        task whose job is still in Redis (those of finished jobs are gone with them)."""
        record = RunRecord(settings, run_id).read()
        if record is None:
            raise UnknownRun(run_id, mask_url(settings.url))
        if "dropped" in record:
            raise ResultsGone(run_id, f"run {run_id} was cancelled by its caller, which had"
                              " not handed its id out, and its results were dropped; fanout"
                              f" status {run_id} shows its counts")  # fmt: skip
        # The run's limits, for the jobs this collector enqueues again.
        max_memory, max_tasks, max_held = (int(record[n]) if record.get(n) else None
                                           for n in LIMITS)  # fmt: skip
        spec = MapSpec(
            _never, record["target"], iter(()), star=record.get("star") == "1", ordered=ordered,
            timeout=float(record["timeout"]) if record.get("timeout") else None,
            retries=int(record.get("retries") or 0),
            max_memory=max_memory, max_tasks_per_worker=max_tasks, max_memory_per_worker=max_held,
        )  # fmt: skip
        # The run's own queue, whatever this collector's backend serves by default.
        settings = settings.on_queue(record["queue"])
        super().__init__(settings, spec, record=RunRecord(settings, run_id))
        self.exhausted = True  # no inputs of its own: only tasks run again
        self.feeds = False  # its caller (if alive) does, and says when all are enqueued
        self.wait = wait
        self.total = self.next_index = int(record["total"])  # its inputs: taken already
        self.enqueued_all = record["enqueued_all"] == "1"
        self.abandoned = False  # its caller is gone (or stopped) before it enqueued all
        self.known: set[str] = set()  # jobs of the run loaded so far
        self.missing: set[int] = set()  # indexes with neither a job nor a result, last check
        self.caught_up = False  # the stream has been read to its end once
        self.gone = False  # the run's data went while collecting it
        self.reader = uuid.uuid4().hex  # this collector, among the run's readers
        if wait:
            self.record.reading(self.reader)
        self.inputs = inputs
        if inputs is not None:
            self.note_inputs(self.record.job_ids())
        self.drain()
        self.caught_up = True
        if wait:
            self.check()

    def done(self) -> bool:
        if self.ready:
            return False
        if self.collected() and len(self.order):
            # Ordered, with gaps no result will fill (--no-wait; inputs lost with their
            # caller): what is held, in index order.
            for piece in self.order.rest():
                self.ready.extend(piece)
            return False
        return self.collected()

    def collected(self) -> bool:
        if not self.wait or self.gone:
            return self.caught_up
        inputs_done = self.enqueued_all or self.abandoned
        return inputs_done and self.seen_count >= self.total and not self.retry

    def note_inputs(self, ids: list[str]) -> None:
        """The inputs of jobs ``ids`` (those still in Redis), for whoever shows them;
        a pickled one only if it unpickles as plain data (a collector imports nothing
        for a display)."""
        assert self.inputs is not None
        for job_id in ids:
            args = self.record.job_args(job_id)
            if args is None:
                continue
            pickled = set(args.pickled)
            for pos, index in enumerate(args.indices):
                if self.is_seen(index):
                    continue
                item = args.items[pos]
                if pos in pickled:
                    try:
                        item = plain_loads(item)
                    except Exception:  # noqa: S112 - not plain data: not shown
                        continue
                self.inputs[index] = item

    def observe(self) -> None:
        """The run's record again (its caller may still be enqueueing), at each check:
        still reading it, this collector says so."""
        record = self.record.read()
        if record is None or "dropped" in record:
            # Another collection got every result (while this one was silent too long
            # to count as reading), or the run expired: what was read is all there is.
            self.gone = True
            self.input_error = ResultsGone(
                self.run_id, f"run {self.run_id}'s results left Redis while this collection"
                " read them (another collection completed it, or they expired): this one"
                f" read {self.seen_count} of {self.total}",
            )  # fmt: skip
            return
        self.record.reading(self.reader)
        self.total = self.next_index = int(record["total"])
        self.enqueued_all = record["enqueued_all"] == "1"
        if not self.enqueued_all and not self.abandoned:
            # Its caller is gone before it had enqueued every input: what is in Redis
            # is all the run will have. Cut short by a cancel (or max_failures), that is
            # what was asked for; else the rest is missing: IncompleteRun, at the end.
            self.abandoned = not self.record.feeding()
            if self.abandoned and record["state"] == "running":
                self.input_error = IncompleteRun(self.run_id, self.total)

    def refresh(self) -> None:
        """Driving the run (nobody else does): its jobs made since the last check, with
        their tasks that have no result yet."""
        if self.gone:
            return
        ids = [i for i in self.record.job_ids() if i not in self.known]
        if self.inputs is not None:
            self.note_inputs(ids)
        numbers = [int(n) for i in ids if (n := i.rpartition("-")[2]).isdigit()]
        self.jobs_made = max([self.jobs_made, *numbers])  # the jobs it makes come after
        for job_id, status in zip(ids, self.record.job_statuses(ids), strict=True):
            if status is None or job_id in self.jobs:
                continue
            args = self.record.job_args(job_id)
            if args is None:
                continue
            tasks = TaskBatch(args.indices, args.items, args.pickled, args.attempts)
            job = RQJob(job_id, tasks, self.elsewhere(job_id))
            if job.remaining:
                self.jobs[job_id] = job
                self.owner.update((index, job_id) for index in job.remaining)
        self.known.update(ids)
        self.settle_missing()

    def elsewhere(self, job_id: str) -> Callable[[int], bool]:
        """Whether a task of job ``job_id`` is not its to wait for: it has its result, or
        the job gave it back as another (split.py)."""
        return lambda index: self.is_seen(index) or self.moved_to.get(index, job_id) != job_id

    def settle_missing(self) -> None:
        """Tasks with neither a job nor a result on two checks in a row: their job went
        (its input with it): each gets its result, WorkerLost."""
        if not (self.enqueued_all or self.abandoned):
            return
        missing = {
            index for index in range(self.total)
            if index not in self.owner and not self.is_seen(index)
        }  # fmt: skip
        lost, self.missing = missing & self.missing, missing - (missing & self.missing)
        if lost:
            # A result pushed since the stream was last read is no loss: the done bitmap
            # has its bit (the job that carried it may be deleted already).
            order = sorted(lost)
            pipe = self.connection.pipeline(transaction=False)
            for index in order:
                pipe.getbit(self.keys.done, index)
            lost = {index for index, bit in zip(order, pipe.execute(), strict=True) if not bit}
        if lost:
            error = TaskError(WorkerLost.__name__, "the job that carried the task is gone"
                              " from Redis, with its input", cause="lost")  # fmt: skip
            self.fail_many_in_caller(sorted(lost), error)

    def end(self, detach: bool = False, collectable: bool = False) -> None:
        """A complete collection removes the run's data (unless ``keep``); one cut short
        leaves it, and stops reading."""
        try:
            if self.wait and self.collected() and not self.gone and not self.settings.keep:
                self.record.remove(self.reader)
            elif self.wait:
                self.record.stop_reading(self.reader)
        finally:
            self.lease.release()
