"""The iterator a map returns: its run's results, one by one, at C speed.

A run hands its results on a list at a time, as they become ready
(:meth:`RunState.result_lists <fanout.backends.runstate.RunState.result_lists>`): every
result that came in since the caller last looked. A generator yielding them one by one
would resume a Python frame per result (two, with the frame that keeps the map's
Fanout alive), about 100 ns each, a tenth of everything the caller spends on a trivial
task. :class:`ResultStream` is ``itertools.chain.from_iterable`` over those lists: the
interpreter steps through a list without running any Python code, and the run's own
generator runs once per list.

It keeps the generator's surface that callers use: ``close()`` ends the run now, as
leaving the loop and dropping the iterator does; ``running`` says whether the run has
not ended yet.
"""

from __future__ import annotations

import itertools
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # not at run time: `import fanout` does not load the records
    from fanout.models import TaskResult

    _Chain = itertools.chain[TaskResult]
else:
    _Chain = itertools.chain

ResultLists = Generator[list["TaskResult"], None, None]


class ResultStream(_Chain):
    """The results of one run, from the lists its run hands on (see the module)."""

    __slots__ = ("__weakref__", "_lists", "_owner")

    _lists: ResultLists
    _owner: Any

    def __new__(cls, lists: ResultLists) -> ResultStream:
        """``lists``: the run's generator of ready results (``RunState.result_lists``)."""
        # from_iterable, bound to this class, makes an object of this class.
        self = cast(ResultStream, super().from_iterable(lists))
        self._lists = lists
        self._owner = None
        return self

    def held_by(self, owner: object) -> ResultStream:
        """Keep ``owner`` (the map's Fanout, whose collection would end the workers)
        alive for as long as this iterator is."""
        self._owner = owner
        return self

    @property
    def running(self) -> bool:
        """Whether the run goes on: not yet ended, finished or closed."""
        return getattr(self._lists, "gi_frame", None) is not None

    def close(self) -> None:
        """End the run now: what it has not handed on is not run, or not yielded."""
        self._lists.close()

    def __del__(self) -> None:
        # Ended before what it holds is let go: the owner's collection ends the workers.
        self.close()
