"""Runs that outlive their caller: :func:`submit` one, :func:`attach` to one by its id from
any process or machine, and see its status, cancel it or collect its results.

Only a backend whose runs are kept in a service has them (``durable_runs``: rq)::

    run = fanout.submit("app.tasks:resize", paths, backend="rq")   # every input enqueued
    print(run.id)                                                  # ... later, anywhere:
    for r in fanout.attach(run.id, backend="rq").results():        # each index once
        print(r.index, r.ok, r.worker.name)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from fanout.api import Fanout
from fanout.models import TaskResult


class Run:
    """A run known by its id. Holds a connection to its backend until :meth:`close`."""

    def __init__(self, run_id: str, backend: str = "rq", **options: Any) -> None:
        self.id = run_id
        self._fanout = Fanout(backend, **options)

    def __repr__(self) -> str:
        return f"Run({self.id!r}, backend={self._fanout.backend_name!r})"

    def results(self, wait: bool = True, ordered: bool = False) -> Iterator[TaskResult]:
        """Every task's result, each index once: those finished now at once, the rest as
        they finish (``wait=False``: only those finished now). Collecting is repeatable
        until a collection completes; that one removes the run's data (unless the
        backend was given ``keep=True``).

        Order: by default, the order in which they were reported (workers push results
        as they finish; a task lost, cancelled or retried reports later), not input
        order. ``ordered=True``: in index order, each result held back until every
        earlier index has its own (a slow first task holds back all the others).

        It waits while the run's caller still enqueues inputs. A run whose caller died
        before it had enqueued them all raises :class:`~fanout.IncompleteRun` after its
        last result; one whose results left Redis while they were read (collected by
        another, expired) raises :class:`~fanout.ResultsGone` after those read."""
        return self._fanout.attach(self.id, wait, ordered)

    def status(self) -> dict[str, Any]:
        """The run's counts (total, ok, failed, cancelled, queued, running) and the
        workers running its tasks now (name, host); its ``state`` (running, finished:
        every task has its result, cancelled, halted), whether every input is enqueued
        (``enqueued_all``) or its caller still enqueues them (``feeding``), and whether
        its results were dropped (``dropped``: cut short, nobody had its id)."""
        return self._fanout.backend.run_status(self.id)

    def cancel(self) -> None:
        """Queued tasks are cancelled (each gets its result, ``Cancelled``), running ones
        stopped; nothing of the run stays queued. Returns once the stopped tasks have
        reported (5 s at most); the results stay collectable for an hour."""
        self._fanout.backend.cancel_run(self.id)

    def close(self) -> None:
        self._fanout.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def submit(
    target: Callable[..., Any] | str,
    items: Iterable[Any] | None = None,
    *,
    repeat: int | None = None,
    star: bool = False,
    backend: str = "rq",
    timeout: float | None = None,
    retries: int = 0,
    **backend_options: Any,
) -> Run:
    """Enqueue every item as one run that goes on without this process; the :class:`Run`.

    Workers must serve the queue (``fanout worker``): the run waits for them in Redis.
    """
    if backend_options.get("workers"):
        raise ValueError("submit leaves the run to the queue's workers: it starts none (workers=0)")
    backend_options.pop("workers", None)
    with Fanout(backend, **backend_options) as fo:
        run_id = fo.submit(
            target, items, repeat=repeat, star=star, timeout=timeout, retries=retries
        )
    return Run(run_id, backend, **backend_options)


def attach(run_id: str, backend: str = "rq", **backend_options: Any) -> Run:
    """The run ``run_id``, from any process or machine that reaches its backend."""
    return Run(run_id, backend, **backend_options)
