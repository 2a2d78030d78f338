"""Feed and StreamFeed (fanout/backends/feed.py): a run's live input, put in by other
threads and taken by the run without waiting. Threads only, no process."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from fanout.backends.feed import CANCELLED_ITEM, Feed, StreamFeed
from tests.helpers import wait_until


def test_items_get_consecutive_indices_and_are_taken_in_order() -> None:
    woken: list[bool] = []
    feed = Feed(lambda: woken.append(True))
    assert [feed.put(x) for x in "abc"] == [0, 1, 2]
    assert woken == [True] * 3  # each put tells whoever drives the run
    assert feed.take(2) == ["a", "b"]
    assert feed.put("d") == 3
    assert feed.take(10) == ["c", "d"]
    assert feed.take(10) == []  # nothing now: the run does not wait


def test_an_item_cancelled_before_it_is_taken_is_never_sent() -> None:
    feed = Feed()
    first, second = feed.put("a"), feed.put("b")
    assert feed.cancel(second)
    assert not feed.cancel(second)  # once
    assert feed.take(5) == ["a", CANCELLED_ITEM]  # its index gets a Cancelled result
    assert not feed.cancel(first)  # taken already: a worker may have it
    assert not feed.cancel(99)


def test_closing_ends_the_input_once_what_is_in_it_is_taken() -> None:
    woken: list[bool] = []
    feed = Feed(lambda: woken.append(True))
    feed.put(1)
    error = OSError("the input broke")
    feed.close(error)
    assert woken == [True, True]
    assert not feed.drained()
    assert feed.error is error
    with pytest.raises(RuntimeError, match="closed"):
        feed.put(2)
    assert list(feed) == [1]  # next() takes what is there, one at a time
    assert feed.drained()


def test_items_put_from_many_threads_are_each_taken_once() -> None:
    feed = Feed()
    start = threading.Barrier(4)

    def producer(name: str) -> None:
        start.wait()
        for i in range(500):
            feed.put((name, i))

    threads = [threading.Thread(target=producer, args=(n,)) for n in "abc"]
    for thread in threads:
        thread.start()
    start.wait()
    taken: list[tuple[str, int]] = []
    while any(t.is_alive() for t in threads) or not feed.drained():
        taken += feed.take(64)
        if not any(t.is_alive() for t in threads) and not feed.closed:
            feed.close()
    assert len(taken) == 1500
    for name in "abc":  # each producer's items in the order it put them
        assert [i for n, i in taken if n == name] == list(range(500))


def test_a_stream_feed_reads_in_a_thread_of_its_own_a_bounded_way_ahead() -> None:
    read: list[int] = []

    def source() -> Iterator[int]:
        for i in range(10):
            read.append(i)
            yield i
        raise ValueError("the stream broke")

    woken = threading.Event()
    feed = StreamFeed(source(), limit=3).start(woken.set)
    wait_until(lambda: len(feed.items) == 3, 10, "three items wait")
    assert len(read) <= 4  # it stops reading while three wait (the fourth in its hand)
    assert woken.is_set()
    taken: list[int] = []
    while not feed.drained():
        taken += feed.take(2)
        if not feed.items:
            wait_until(lambda: feed.items or feed.closed, 10, "more items, or the end")
    assert taken == list(range(10))
    assert isinstance(feed.error, ValueError)  # after the items before it
    feed.reader.join(10)
    assert not feed.reader.is_alive()
    assert not StreamFeed.prompt  # results go back in bunches, not one by one
