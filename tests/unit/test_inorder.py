"""The one reorder buffer: pieces of consecutive indices released in input order."""

from __future__ import annotations

from fanout.backends.inorder import InOrder


def test_a_piece_next_in_line_goes_at_once_and_releases_what_waited_behind_it() -> None:
    order: InOrder[str] = InOrder()
    assert order.add(3, 2, "3-4") == []
    assert order.add(5, 1, "5") == []
    assert len(order) == 2
    assert order.add(0, 3, "0-2") == ["0-2", "3-4", "5"]
    assert (order.next, len(order)) == (6, 0)
    assert order.add(6, 1, "6") == ["6"]


def test_pieces_of_any_size_in_any_order_come_out_in_index_order() -> None:
    import random

    sizes = [random.randint(1, 5) for _ in range(200)]
    firsts = [sum(sizes[:k]) for k in range(len(sizes))]
    pieces = list(zip(firsts, sizes, strict=True))
    random.shuffle(pieces)
    order: InOrder[int] = InOrder()
    out = [first for first, size in pieces for first in order.add(first, size, first)]
    assert out == firsts
    assert len(order) == 0


def test_rest_hands_over_what_waits_behind_a_gap_in_index_order() -> None:
    order: InOrder[str] = InOrder()
    order.add(7, 1, "7")
    order.add(2, 3, "2-4")
    assert order.rest() == ["2-4", "7"]
    assert (order.next, len(order)) == (8, 0)
    assert order.add(8, 1, "8") == ["8"]
