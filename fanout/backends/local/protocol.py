"""The wire between the caller and one local worker: framed pickles on a pipe pair, and
a small shared marker of what the worker is doing.

Each message is a pickled tuple behind an 8-byte little-endian length. The first
element names the message:

    caller -> worker   (FN, fn id, target pickle, star, seconds of work between result
                        messages (0: each result), file modules, bare, trace context
                        (fanout.tracing's carrier, or None))
                       (BATCH, batch id, indices, items, pickled positions)
    worker -> caller   (HELLO, name, pid, ppid, host, whether it gets barriers)
                       (RESULTS, batch id, [result record, ...])   (records: fanout._wire)
                       (COLUMNS, batch id, values, started, durations, outputs or None,
                        usage runs or None)
                       (VALUES, batch id, [value, ...], started, finished, output)
                       (GAVE_BACK, batch id, position): the batch's tasks from that
                        position on were not started and never will be (taken back)

Consecutive results that are all first-hand successes with a raw value (the common
case) go as COLUMNS: one tuple per field, not one tuple per task, cheaper to pickle on
one side and to turn into results on the other (``outputs`` None: nothing printed;
usage runs None: not measured, else ``(count, cpu, max_rss)`` for each run of
consecutive tasks alike, fanout._usage).
The worker's hot loop encodes them with msgpack (msgspec): the envelope and the two
columns of floats, the values still one pickle inside it (:func:`columns_frame`, less
than half pickle's cost per task); a body that does not start with pickle's PROTO
opcode is such a message (:func:`load`).

A run whose results need no record each (``MapSpec.bare``: the drop-ins' maps) gets its
batch's leading successes as one VALUES message: the values alone, the batch's timing
and what it printed; a failure and everything after it in that batch come as RESULTS.

The marker is eight int64 in memory shared across the fork:

- ``MARK_BATCH``, ``MARK_POS``, ``MARK_PHASE``: the batch id (or ``LOADING_TARGET``),
  the position in that batch of the task running now (-1: none), and the phase
  (``PHASES``). After a crash they tell the caller which task was running, even if
  the worker's last results were never sent.
- ``MARK_CLAIM``, ``MARK_CLAIM_AT``, ``MARK_STOP``: taking back tasks a worker holds but
  has not started. Tasks are named by a key, ``key(batch id, position)``, which orders
  them as the worker runs them (batch ids grow). A worker starts a task only under a
  claim: it stores the key of the last task of the stretch it is about to run in
  ``MARK_CLAIM`` (and the time, ``time.perf_counter_ns()``, in ``MARK_CLAIM_AT``), then
  loads ``MARK_STOP``, and runs no task whose key is at or past it; where it stops, it
  says so (``GAVE_BACK``). The caller takes work back by storing a stop point past the
  claim it read, making a memory barrier on every worker's CPU (``barrier.py``) and
  reading the claim again: unchanged, every task past it is the caller's at once. A
  stretch is one task, doubling while tasks are quick and a stretch short
  (``STRETCH_NS``), so that a quick task pays for the claim once in a while and a slow
  one strands little behind it.
- ``MARK_CPU``, ``MARK_PEAK``: the worker's CPU time (ns) and peak resident size at its
  last usage reading (fanout._usage): after a death, with the dead process's own CPU
  time, what the task it died running cost.
"""

from __future__ import annotations

import errno
import os
import pickle
import struct
from typing import Any

import msgspec

HEADER = struct.Struct("<Q")
PIPE_SIZE = 1 << 20

# Message kinds, caller -> worker.
FN, BATCH = 0, 1
# Message kinds, worker -> caller.
HELLO, RESULTS, VALUES, COLUMNS, GAVE_BACK = 0, 1, 2, 3, 4

# The marker: [batch id or LOADING_TARGET, position in the batch, phase, claim, claimed
# at, stop].
MARK_BATCH, MARK_POS, MARK_PHASE, MARK_CLAIM, MARK_CLAIM_AT, MARK_STOP = range(6)
# [the worker's CPU time at its last usage reading (ns), its peak resident bytes then]
MARK_CPU, MARK_PEAK = 6, 7
MARKER_SIZE = 8 * 8
IDLE = -1
LOADING_TARGET = -2
RUNNING, UNPICKLING = 0, 1
PHASES = {RUNNING: "running", UNPICKLING: "unpickling the input of"}

# Task keys: a batch's tasks are numbered below 2**POS_BITS (batches are far smaller).
POS_BITS = 24
NO_STOP = (1 << 63) - 1
# A claim covers one task, and twice as many as the last while the last stretch's tasks
# took less than QUICK_TASK_NS each and the stretch less than STRETCH_NS in all (up to
# MAX_CLAIM tasks); one that took longer per task starts over at one. Quick tasks then
# pay for a claim once per STRETCH_NS or so, and about that much work at most is
# stranded behind one that turns out slow.
QUICK_TASK_NS = 20_000
STRETCH_NS = 200_000
MAX_CLAIM = 4096


def key(batch_id: int, pos: int) -> int:
    """The key of task ``pos`` of batch ``batch_id``: keys order tasks as a worker runs them."""
    return (batch_id << POS_BITS) + pos


def split_key(task_key: int) -> tuple[int, int]:
    """(batch id, position) of a key."""
    return task_key >> POS_BITS, task_key & ((1 << POS_BITS) - 1)


def frame(message: tuple[Any, ...]) -> bytes:
    """One message, pickled behind its length."""
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


_PICKLE = pickle.PROTO[0]  # the first byte of every pickle fanout writes (protocol 2+)
_ENCODE = msgspec.msgpack.Encoder().encode
_DECODE = msgspec.msgpack.Decoder().decode


UsageRun = tuple[int, float, int]  # (tasks, cpu seconds of each, peak resident bytes)


def columns_frame(
    batch_id: int,
    values: list[Any],
    started: list[float],
    durations: list[float],
    usage: list[UsageRun] | None,
) -> bytes:
    """A COLUMNS message without outputs, as the worker's hot loop sends it: msgpack,
    the values one pickle inside it."""
    data = _ENCODE((COLUMNS, batch_id, pickle.dumps(values, pickle.HIGHEST_PROTOCOL),
                    started, durations, usage))  # fmt: skip
    return HEADER.pack(len(data)) + data


def load(data: bytes) -> tuple[Any, ...]:
    """A frame's body as the message tuple it carries (pickle, or a columns_frame)."""
    if data[0] == _PICKLE:
        message: tuple[Any, ...] = pickle.loads(data)
        return message
    kind, batch_id, values, started, durations, usage = _DECODE(data)
    return (kind, batch_id, pickle.loads(values), started, durations, None, usage)


def split_frames(buf: bytearray) -> list[bytes]:
    """Take every complete frame's body out of ``buf``, leaving a partial one in it.

    The frames leave the buffer before anyone handles them: handling may raise
    (Ctrl-C) and must never see a frame twice.
    """
    frames: list[bytes] = []
    start, size = 0, len(buf)
    with memoryview(buf) as view:  # a frame is copied once, not sliced and then copied
        while size - start >= HEADER.size:
            (n,) = HEADER.unpack_from(view, start)
            end = start + HEADER.size + n
            if end > size:
                break
            frames.append(bytes(view[start + HEADER.size : end]))
            start = end
    del buf[:start]
    return frames


_sched_yield = getattr(os, "sched_yield", lambda: None)


class Writer:
    """Framed, blocking writes to a pipe (the worker's side)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, message: tuple[Any, ...]) -> None:
        self.write(frame(message))

    def write(self, framed: bytes) -> None:
        """A whole frame (``frame``, ``columns_frame``), however many writes it takes."""
        view = memoryview(framed)
        while view:
            try:
                n = os.write(self.fd, view)
            except BrokenPipeError:
                os._exit(0)  # the caller is gone
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            view = view[n:]
        # The caller reads what was written: let it run now. With a worker per core it
        # has no core of its own, and every result it takes sooner is a batch it sends
        # sooner. Where a core is free this returns at once.
        _sched_yield()


class Reader:
    """Framed, blocking reads from a pipe (the worker's side)."""

    def __init__(self, fd: int) -> None:
        self.stream = open(fd, "rb", buffering=PIPE_SIZE)  # noqa: SIM115 - lives with us

    def receive(self) -> tuple[Any, ...] | None:
        """The next message, or None at end-of-file (the caller closed the pipe or died)."""
        header = self.stream.read(HEADER.size)
        if len(header) < HEADER.size:
            return None
        message: tuple[Any, ...] = pickle.loads(self.stream.read(HEADER.unpack(header)[0]))
        return message
