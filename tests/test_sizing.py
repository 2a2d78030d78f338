"""Batch sizing: the guided tail that lets workers finish a known-length input together."""

from __future__ import annotations

from fanout.backends.sizing import guided


def test_a_full_batch_while_much_is_left() -> None:
    assert guided(size=100, least=12, left=10_000, workers=4) == 100


def test_the_tail_shrinks_to_a_worker_share_then_to_the_least() -> None:
    sizes, left = [], 1_000
    while left:
        size = min(left, guided(size=100, least=12, left=left, workers=4))
        sizes.append(size)
        left -= size
    # Full batches while each worker's share of what is left is bigger (ceil(left / 4)),
    # then that share, then the least, then what remains.
    assert sizes == [100] * 7 + [75, 57, 42, 32, 24, 18, 13, 12, 12, 12, 3]
    assert sum(sizes) == 1_000


def test_unknown_length_or_workers_leave_the_size_alone() -> None:
    assert guided(size=100, least=12, left=0, workers=4) == 100
    assert guided(size=100, least=12, left=30, workers=0) == 100


def test_never_below_one_task() -> None:
    assert guided(size=1, least=0, left=3, workers=8) == 1
    assert guided(size=5, least=0, left=1, workers=8) == 1
