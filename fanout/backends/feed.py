"""A run's live input: items put in by other threads (``Executor.submit``,
``Pool.apply_async``) while the run is going."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

CANCELLED_ITEM = object()  # marks an item cancelled before the run took it


class Feed(Iterator[Any]):
    """A live input: other threads put items in, the run takes them without waiting; it
    ends once closed and empty. An item cancelled before the run took it is never sent:
    its index gets a ``Cancelled`` result instead."""

    def __init__(self, wake: Callable[[], None] = lambda: None) -> None:
        self.lock = threading.Lock()
        self.items: deque[Any] = deque()
        self.first = 0  # the index of items[0]
        self.closed = False
        self.wake = wake  # tells whoever drives the run that there is something to take

    def put(self, item: Any) -> int:
        """Add an item; its index."""
        with self.lock:
            if self.closed:
                raise RuntimeError("this feed is closed")
            self.items.append(item)
            index = self.first + len(self.items) - 1
        self.wake()
        return index

    def cancel(self, index: int) -> bool:
        """Keep item ``index`` from ever being sent; False if the run took it already."""
        with self.lock:
            pos = index - self.first
            if 0 <= pos < len(self.items) and self.items[pos] is not CANCELLED_ITEM:
                self.items[pos] = CANCELLED_ITEM
                return True
            return False

    def take(self, room: int) -> list[Any]:
        with self.lock:
            taken = [self.items.popleft() for _ in range(min(room, len(self.items)))]
            self.first += len(taken)
            return taken

    def close(self) -> None:
        with self.lock:
            self.closed = True
        self.wake()

    def drained(self) -> bool:
        with self.lock:
            return self.closed and not self.items

    def __next__(self) -> Any:
        """One item if there is one now (a run takes them with :meth:`take`)."""
        taken = self.take(1)
        if not taken:
            raise StopIteration
        return taken[0]
