"""A run's live input: items put in by other threads while the run is going
(``Executor.submit``, ``Pool.apply_async``; a stream read by a thread of its own,
``StreamFeed``). The run takes what is there and never waits for more: a backend waits
for its workers, and ``wake`` tells it when new input came."""

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

    #: Each item's caller waits for its own result: results go back one by one.
    prompt = True

    def __init__(self, wake: Callable[[], None] = lambda: None) -> None:
        self.lock = threading.Lock()
        self.items: deque[Any] = deque()
        self.first = 0  # the index of items[0]
        self.closed = False
        self.error: BaseException | None = None  # why the input ended early, if it did
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

    def close(self, error: BaseException | None = None) -> None:
        """No more items; ``error``: the input broke (raised after the items before it)."""
        with self.lock:
            self.closed = True
            self.error = error
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


class StreamFeed(Feed):
    """An input that may trickle (stdin, a pipe): a thread of its own reads ``source``
    and puts each item in, at most ``limit`` waiting, so that the run goes on with what
    has come (a run reading the stream itself would wait to fill a batch). What the
    source raises ends the input, after the items before it."""

    prompt = False  # many items, one consumer: results go back in the usual bunches

    def __init__(self, source: Iterator[Any], limit: int = 10_000) -> None:
        super().__init__()
        self.room = threading.Condition(self.lock)
        self.limit = limit
        self.reader = threading.Thread(
            target=self._read, args=(source,), name="fanout-input", daemon=True
        )

    def start(self, wake: Callable[[], None]) -> StreamFeed:
        self.wake = wake
        self.reader.start()
        return self

    def _read(self, source: Iterator[Any]) -> None:
        try:
            for item in source:
                with self.room:
                    while len(self.items) >= self.limit:
                        self.room.wait()
                self.put(item)
        except BaseException as exc:
            self.close(exc)
        else:
            self.close()

    def take(self, room: int) -> list[Any]:
        taken = super().take(room)
        if taken:
            with self.room:
                self.room.notify()
        return taken
