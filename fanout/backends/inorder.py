"""Outcomes back in input order: the one reorder buffer of every run.

A run's outcomes arrive as workers finish them; an ordered run hands them on in input
order. They arrive in *pieces*, each covering consecutive indices (a batch's results,
a drop-in's chunk of values, one result), and :class:`InOrder` holds a piece until
every index before it has been released: ``RunState`` puts its TaskResults back in
order with it, the drop-ins their chunks of values.
"""

from __future__ import annotations

from typing import Generic, TypeVar

P = TypeVar("P")


class InOrder(Generic[P]):
    """Pieces released in index order (a piece covers ``size`` indices from ``first``)."""

    __slots__ = ("next", "pending")

    def __init__(self, start: int = 0) -> None:
        self.next = start  # the first index not released yet
        self.pending: dict[int, tuple[int, P]] = {}  # first index -> (size, piece)

    def __len__(self) -> int:
        """How many pieces wait for an earlier one."""
        return len(self.pending)

    def add(self, first: int, size: int, piece: P) -> list[P]:
        """Take ``piece``; the pieces it releases, in order (none while one before it
        is missing)."""
        if first != self.next:
            self.pending[first] = (size, piece)
            return []
        released = [piece]
        self.next = first + size
        pending = self.pending
        while self.next in pending:
            size, piece = pending.pop(self.next)
            released.append(piece)
            self.next += size
        return released

    def rest(self) -> list[P]:
        """Every piece still held, in index order, over the gaps (a collection whose
        missing indices will never come); afterwards nothing is held."""
        pieces = [self.pending[first][1] for first in sorted(self.pending)]
        if self.pending:
            last = max(self.pending)
            self.next = last + self.pending[last][0]
            self.pending.clear()
        return pieces
