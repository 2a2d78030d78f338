"""A worker's claims: how many of a batch's tasks it takes on at a time (the worker's
side of taking back; protocol.py has the agreement)."""

from __future__ import annotations

import time

from fanout.backends.local.protocol import (
    MARK_CLAIM,
    MARK_CLAIM_AT,
    MARK_STOP,
    MAX_CLAIM,
    QUICK_TASK_NS,
    STRETCH_NS,
    key,
)


class Claim:
    """The worker's side of taking back (protocol.py): a task starts only under a claim,
    and none at or past the caller's stop point. A claim covers one task, or twice as
    many as the last one while stretches are quick and short, so that quick tasks pay
    for it once in a while and a slow one strands little behind it."""

    __slots__ = ("base", "began", "chunk", "last", "marker", "size", "stopped")

    def __init__(self, marker: memoryview) -> None:
        self.marker = marker
        self.base = 0  # key(batch id, 0) of the batch being run
        self.size = 0  # its length
        self.last = -1  # the last position of it claimed so far
        self.stopped = False  # the caller took the rest of it back
        self.chunk = 0  # tasks in the last claim (0: none yet, the next claims one)
        self.began = 0.0  # time.perf_counter() at the last claim

    def restart(self) -> None:
        """Claim one task next: how long other tasks took says nothing of the next."""
        self.chunk = 0  # no stretch yet

    def begin(self, batch_id: int, size: int) -> None:
        self.base, self.size, self.last, self.stopped = key(batch_id, 0), size, -1, False

    def next(self, pos: int, ended: float) -> int:
        """Claim the tasks from ``pos`` on, the last stretch's last task having ended at
        ``ended`` (``time.perf_counter()``; what came after it, sending results or waiting
        for a batch, is not the stretch's time); the last position claimed (below
        ``pos``: the caller took the batch back from ``pos`` on, so stop there)."""
        took = (ended - self.began) * 1e9  # ns
        if not self.chunk or took >= QUICK_TASK_NS * self.chunk:
            self.chunk = 1
        elif took < STRETCH_NS:
            self.chunk = min(2 * self.chunk, MAX_CLAIM)
        now = time.perf_counter_ns()
        self.began = now / 1e9
        last = min(pos + self.chunk, self.size) - 1
        marker = self.marker
        marker[MARK_CLAIM_AT] = now
        marker[MARK_CLAIM] = self.base + last
        # Loaded after the claim is stored: the caller stores first and loads after
        # a barrier, so one of the two sees the other (barrier.py).
        stop = marker[MARK_STOP] - self.base
        self.last = min(last, stop - 1)
        self.stopped = self.last < pos
        return self.last
