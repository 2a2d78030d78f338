"""The wire between the caller and one local worker: framed pickles on a pipe pair, and
a small shared marker of what the worker is doing.

Each message is a pickled tuple behind an 8-byte little-endian length. The first
element names the message:

    caller -> worker   (FN, fn id, target pickle, star, seconds of work between result
                        messages (0: each result), file modules, bare)
                       (BATCH, batch id, indices, items, pickled positions)
    worker -> caller   (HELLO, name, pid, ppid, host)
                       (RESULTS, batch id, [result record, ...])   (records: fanout._wire)
                       (COLUMNS, batch id, values, started, durations, outputs or None)
                       (VALUES, batch id, [value, ...], started, finished, output)

Consecutive results that are all first-hand successes with a raw value (the common
case) go as COLUMNS: one tuple per field, not one tuple per task, cheaper to pickle on
one side and to turn into results on the other (``outputs`` None: nothing printed).

A run whose results need no record each (``MapSpec.bare``: the drop-ins' maps) gets its
batch's leading successes as one VALUES message: the values alone, the batch's timing
and what it printed; a failure and everything after it in that batch come as RESULTS.

The marker is three int64 in memory shared across the fork: the batch id (or
``LOADING_TARGET``), the position in that batch of the task running now (-1: none),
and the phase (``PHASES``). After a crash it tells the caller which task was running,
even if the worker's last results were never sent.
"""

from __future__ import annotations

import errno
import os
import pickle
import struct
from typing import Any

HEADER = struct.Struct("<Q")
PIPE_SIZE = 1 << 20

# Message kinds, caller -> worker.
FN, BATCH = 0, 1
# Message kinds, worker -> caller.
HELLO, RESULTS, VALUES, COLUMNS = 0, 1, 2, 3

# The marker: [batch id or LOADING_TARGET, position in the batch, phase].
MARK_BATCH, MARK_POS, MARK_PHASE = 0, 1, 2
MARKER_SIZE = 3 * 8
IDLE = -1
LOADING_TARGET = -2
RUNNING, UNPICKLING = 0, 1
PHASES = {RUNNING: "running", UNPICKLING: "unpickling the input of"}


def frame(message: tuple[Any, ...]) -> bytes:
    """One message, pickled behind its length."""
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def split_frames(buf: bytearray) -> list[bytes]:
    """Take every complete frame's body out of ``buf``, leaving a partial one in it.

    The frames leave the buffer before anyone handles them: handling may raise
    (Ctrl-C) and must never see a frame twice.
    """
    frames: list[bytes] = []
    start, size = 0, len(buf)
    while size - start >= HEADER.size:
        (n,) = HEADER.unpack_from(buf, start)
        end = start + HEADER.size + n
        if end > size:
            break
        frames.append(bytes(buf[start + HEADER.size : end]))
        start = end
    del buf[:start]
    return frames


class Writer:
    """Framed, blocking writes to a pipe (the worker's side)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, message: tuple[Any, ...]) -> None:
        view = memoryview(frame(message))
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
