"""The local wire's pieces that need no process: framing, and how a worker sizes its
claims (fanout.backends.local.protocol and .claim)."""

from __future__ import annotations

import mmap
import time

from fanout.backends.local.claim import Claim
from fanout.backends.local.protocol import (
    MARK_STOP,
    MARKER_SIZE,
    MAX_CLAIM,
    NO_STOP,
    QUICK_TASK_NS,
    STRETCH_NS,
    frame,
    split_frames,
)


def test_split_frames_takes_the_whole_frames_and_leaves_a_partial_one() -> None:
    messages = [(1, "a"), (2, b"b" * 5000), (3, None)]
    last = frame((4, "the fourth"))
    buf = bytearray(b"".join(frame(m) for m in messages) + last[:7])
    bodies = split_frames(buf)
    assert [b[-20:] for b in bodies] == [frame(m)[8:][-20:] for m in messages]
    assert all(type(body) is bytes for body in bodies)
    assert buf == last[:7]  # the partial frame waits for the rest
    buf += last[7:]
    assert split_frames(buf) == [last[8:]]
    assert buf == b""


def test_a_split_frame_keeps_its_bytes_when_the_buffer_changes() -> None:
    buf = bytearray(frame((1, "x" * 100)) + frame((2, "y")))
    first, second = split_frames(buf)
    buf += b"\0" * 64  # the buffer is written again, as the next read does
    assert first == frame((1, "x" * 100))[8:]
    assert second == frame((2, "y"))[8:]


def _claim(size: int) -> Claim:
    marker = memoryview(mmap.mmap(-1, MARKER_SIZE)).cast("q")
    marker[MARK_STOP] = NO_STOP
    claim = Claim(marker)
    claim.begin(batch_id=1, size=size)
    return claim


def _claims(claim: Claim, took: list[float]) -> list[int]:
    """The size of each claim when each stretch before it took ``took[i]`` seconds."""
    sizes, pos = [], 0
    for seconds in took:
        last = claim.next(pos, claim.began + seconds)
        sizes.append(last - pos + 1)
        pos = last + 1
    return sizes


def test_claims_double_while_stretches_are_quick_and_short() -> None:
    quick = 1e-9  # a stretch's tasks took next to nothing
    sizes = _claims(_claim(1 << 20), [quick] * 14)
    assert sizes[:4] == [1, 2, 4, 8]  # a worker's first claim is one task
    assert sizes[-1] == MAX_CLAIM


def test_a_stretch_past_stretch_ns_stops_the_doubling() -> None:
    long = 1.5 * STRETCH_NS / 1e9  # quick tasks, but many: the stretch took 0.3 ms
    claim = _claim(1 << 20)
    _claims(claim, [1e-9] * 5)  # up to 16
    assert _claims(claim, [long, long]) == [16, 16]


def test_a_slow_stretch_starts_over_at_one_task() -> None:
    claim = _claim(1 << 20)
    _claims(claim, [1e-9] * 5)  # 16 tasks claimed last
    slow = 16 * QUICK_TASK_NS / 1e9  # their average reached QUICK_TASK_NS
    assert _claims(claim, [slow, 1e-9]) == [1, 2]


def test_time_after_a_stretch_does_not_count_as_its_own() -> None:
    """Sending results or waiting for a batch between two claims says nothing of the
    tasks: a claim is sized by when the last stretch's last task ended."""
    claim = _claim(1 << 20)
    _claims(claim, [1e-9] * 3)  # 1 + 2 + 4: the last claim was 4 tasks, 3 to 6
    ended = claim.began + 1e-6  # its tasks took a microsecond
    time.sleep(0.002)  # then two milliseconds pass: far more than 4 slow tasks would take
    assert claim.next(7, ended) - 7 + 1 == 8


def test_a_new_target_starts_at_one_task() -> None:
    claim = _claim(1 << 20)
    _claims(claim, [1e-9] * 6)
    claim.restart()
    assert _claims(claim, [1e-9, 1e-9]) == [1, 2]


def test_a_claim_stops_at_the_callers_stop_point() -> None:
    claim = _claim(100)
    claim.marker[MARK_STOP] = claim.base + 3  # the caller took back positions 3 on
    assert claim.next(0, 0.0) == 0
    assert claim.next(1, claim.began) == 2  # two tasks, both before the stop point
    assert claim.next(3, claim.began) == 2  # nothing from 3 on
    assert claim.stopped
