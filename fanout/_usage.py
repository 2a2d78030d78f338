"""What tasks cost the process that runs them: CPU seconds and peak resident memory.

A :class:`Meter` reads ``getrusage(RUSAGE_SELF)`` — one system call that gives both the
process's CPU time and its resident high-water mark — and says what was spent since its
last reading. The call costs about 3 µs on a quiet machine and 20 to 40 µs while every core
is busy, so workers read it after each task of 20 µs or more (a stretch of one task,
local/protocol.py) and otherwise once per millisecond of quick tasks, and when results
go: measuring costs a trivial task a few nanoseconds. The tasks measured together share
the reading's CPU by their durations.

The high-water mark only ever grows, so after a reading that saw it grow the meter
resets it (``/proc/self/clear_refs``, "5": Linux's reset of the peak resident size, which
``getrusage`` reads): the next reading's peak is then the most the process held since,
and at least what it held at the reset. Where the reset is refused (not Linux, a
hardened ``/proc``) the peak is the process's since it started.

``FANOUT_USAGE=0`` in a worker's environment switches measuring off (results then carry
``usage=None``): benchmarks/profile_local.py compares the two.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys

# Tasks measured together share the reading's CPU equally unless one took more than
# UNEVEN times their mean: such a task gets its share by its duration (runs).
UNEVEN = 4

_SELF = resource.RUSAGE_SELF
_getrusage = resource.getrusage
# ru_maxrss is in KiB on Linux (and most systems), in bytes on macOS.
_RSS_UNIT = 1 if sys.platform == "darwin" else 1024


def enabled() -> bool:
    """Whether this process measures what its tasks cost (``FANOUT_USAGE``)."""
    return os.environ.get("FANOUT_USAGE", "1") != "0"


class Meter:
    """Readings of this process's usage: each says what was spent since the last.

    ``thread``: count the CPU of the calling thread alone (the inline backend, whose
    tasks run in a thread of a caller that may run others); the peak is the process's
    either way."""

    __slots__ = ("cpu", "peak", "reset_fd", "who")

    def __init__(self, thread: bool = False) -> None:
        self.who = resource.RUSAGE_THREAD if thread else _SELF
        self.reset_fd: int | None = None
        with contextlib.suppress(OSError):
            self.reset_fd = os.open("/proc/self/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
        usage = _getrusage(self.who)
        self.cpu = usage.ru_utime + usage.ru_stime
        self.peak = usage.ru_maxrss  # the high-water mark at the last reset (KiB)

    def read(self) -> tuple[float, int]:
        """(CPU seconds spent since the last reading, the peak resident bytes since)."""
        usage = _getrusage(self.who)
        cpu = usage.ru_utime + usage.ru_stime
        spent, self.cpu = cpu - self.cpu, cpu
        peak = usage.ru_maxrss
        if peak > self.peak:
            self.reset()
            return spent, peak * _RSS_UNIT
        return spent, self.peak * _RSS_UNIT

    def reset(self) -> None:
        """Start the high-water mark again from the resident size now."""
        if self.reset_fd is not None:
            try:
                os.write(self.reset_fd, b"5")
            except OSError:
                os.close(self.reset_fd)
                self.reset_fd = None
        self.peak = _getrusage(_SELF).ru_maxrss

    def close(self) -> None:
        if self.reset_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.reset_fd)
            self.reset_fd = None


def share(spent: float, durations: list[float]) -> list[float]:
    """``spent`` CPU seconds shared among tasks by their durations (equally if those
    are all zero)."""
    total = sum(durations)
    if total > 0:
        part = spent / total
        return [part * d for d in durations]
    return [spent / len(durations)] * len(durations) if durations else []


def runs(spent: float, durations: list[float]) -> list[tuple[int, float]]:
    """``spent`` CPU seconds shared among tasks by their ``durations``, as runs of
    ``(tasks, cpu each)`` in their order: tasks of like durations (none over ``UNEVEN``
    times the mean) alike, a run for each stretch of them between the others, which get
    a run of one each. One run when all are alike, however many there are."""
    count, total = len(durations), sum(durations)
    if not count:
        return []
    limit = UNEVEN * total / count
    if total <= 0 or max(durations) <= limit:
        return [(count, spent / count)]
    part, found, start = spent / total, [], 0
    for k in [k for k, d in enumerate(durations) if d > limit]:
        if k > start:  # the like tasks before it: their stretch's share, equally
            found.append((k - start, part * sum(durations[start:k]) / (k - start)))
        found.append((1, part * durations[k]))
        start = k + 1
    if start < count:
        found.append((count - start, part * sum(durations[start:]) / (count - start)))
    return found
