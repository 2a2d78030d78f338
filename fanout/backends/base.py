"""The backend contract, documented once.

A backend turns a :class:`MapSpec` into one :class:`~fanout.TaskResult` per input item.
Subclass :class:`Backend`, set ``name`` and the capability flags, implement :meth:`map`,
and register the class (``fanout.register_backend`` or the ``fanout.backends`` entry-point
group). :class:`fanout.backends.runstate.RunState` holds the run logic every built-in
backend shares (lazy input, batches, retries, ordering); use it and most rules below
come for free.

**Results.** Exactly one result per item taken from ``spec.items``, whatever happens to
workers. Task failures are failed results, never raised from ``map``. ``result.worker``
is the identity of the process that ran the task (inside it, ``os.getpid() == pid``,
``os.getppid() == ppid``, ``socket.gethostname() == host``,
``multiprocessing.current_process().name == name``).

**Halting.** With ``spec.max_failures`` set, the failed result that reaches it halts the
run: nothing new is sent; tasks not yet started are cancelled — those waiting, those a
worker holds unstarted where the backend can take them back (``RunState.requeue``
cancels what comes back), and every input not yet taken, read on to its end — each with
its one result (``Cancelled``, attempts 0, worker ``(not run)``); tasks running finish
and are reported. ``RunState`` does all of this once the backend calls ``take_batch``
(or ``settle_the_rest``) after the halt.

**Attempts.** ``attempts`` counts the times the target was started for the task: 1 for
a task that ran once; 1 + n after n retries (``spec.retries`` bounds n; a retry follows
a failed attempt: the task's own exception, ``WorkerLost``, ``TaskTimeout``); 0 for a
task that never reached a worker (its input could not be pickled, the run could not go
on). Tasks a lost worker held but had not started are run again elsewhere and do not
count an attempt. ``SerializationError`` and ``TargetError`` are never retried.

**``error.type``.** The task's own exception class name (``"ZeroDivisionError"``), or
the name of one of fanout's own classes, each for one reason: the vocabulary is listed
once, in :mod:`fanout.errors` (``WorkerLost``, ``TaskTimeout``, ``SerializationError``,
``Cancelled``, ...). A backend reports its failures with those names
(``fanout.errors.WorkerLost.__name__``), so that the drop-ins raise them as their class.

**Scheduling.** No task waits while a worker that could run it is idle: a batch holds
at most ``spec.chunksize`` tasks when that is set, and work handed to a worker but not
started is taken back for an idle one when it turns out slower than its batch assumed
(``RunState.requeue`` puts it back at the front of the line, no attempt counted).

**Input.** ``spec.items`` is consumed lazily, with a bounded number of tasks in flight
(an endless iterator works). When it raises (``SystemExit`` included), the results of
the tasks already taken are yielded first and the exception is raised afterwards.

**Options.** ``__init__(workers=None, **options)`` takes the worker count (None: the
backend's default) and the backend's own keyword options. ``Fanout`` checks the options
against the ``__init__`` signature first: an unknown one raises
:class:`~fanout.errors.UnknownOption` (a ``ValueError``) naming the backend and the
valid options, before the backend is made.

**Concurrency.** ``map`` may be called again once the previous iterator is exhausted or
closed; ``Fanout`` allows one unfinished ``map`` at a time. A backend whose runs are
independent of one another (each a ``RunState``, each batch knowing its run) can serve
several at once from one set of workers. ``close()`` is safe to call twice;
``close(cancel=True)`` ends running tasks now. Leaving a ``map`` early (closing its
iterator) ends what is still running for it; later maps are not held up behind it.

**Proving it.** The contract's tests ship with fanout: subclass
:class:`fanout.testing.contract.BackendContract` in a test module of your own and give it
a ``fanout_options`` fixture (the keyword arguments of ``fanout.run`` that select your
backend); ``tests/test_contract.py`` does exactly that for the built-in backends.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from fanout.backends.spec import MapSpec as MapSpec  # its home; imported from here too
from fanout.errors import UnknownOption
from fanout.models import TaskResult

if TYPE_CHECKING:
    from fanout._wire import Task
    from fanout.backends.runstate import RunState


class Backend(ABC):
    """Base class of backends; subclasses set ``name`` and implement :meth:`map`."""

    name: ClassVar[str]
    #: How many tasks can run at once (set by ``__init__``).
    workers: int

    # Capability flags: what the contract's tests (and users) may expect.
    #: Workers import the target by name: a lambda or closure cannot be sent.
    needs_importable_target: ClassVar[bool] = False
    #: Tasks run in the calling process itself (``pid == os.getpid()``).
    runs_in_caller: ClassVar[bool] = False
    #: Workers are child processes of the caller (``ppid == os.getpid()``).
    workers_are_children: ClassVar[bool] = False
    #: Runs outlive their caller and are known by id: ``submit``, ``attach``,
    #: ``run_status``, ``cancel_run`` and ``last_run_id`` work.
    durable_runs: ClassVar[bool] = False

    def __init__(self, workers: int | None = None, **options: Any) -> None:  # noqa: B027
        """Take the worker count (None: the backend's default) and backend options."""

    @classmethod
    def option_names(cls) -> list[str] | None:
        """The keyword options ``__init__`` takes besides ``workers`` (None: any)."""
        params = inspect.signature(cls.__init__).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params) and cls.__init__ is not Backend.__init__:
            return None
        return sorted(
            p.name
            for p in params
            if p.name not in ("self", "workers")
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and not p.name.startswith("_")
        )

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Raise :class:`UnknownOption` for an option this backend does not take."""
        valid = cls.option_names()
        if valid is None:
            return
        for option in sorted(options):
            if option not in valid:
                raise UnknownOption(cls.name, option, valid)

    @abstractmethod
    def map(self, spec: MapSpec) -> Iterator[TaskResult]:
        """Run ``spec.fn`` on every item; yield results in input order if ``spec.ordered``."""

    def close(self, cancel: bool = False) -> None:  # noqa: B027 - optional hook
        """Release workers and connections; ``cancel`` ends running tasks at once."""

    def stop_note(self) -> str:
        """What ``close(cancel=True)`` did, in a few words (said after a Ctrl-C)."""
        return "workers stopped"

    # Driving runs from one thread (the drop-in Executor and Pool): ``start_run`` makes
    # a run without driving it; ``pump`` makes one round of progress on every run started
    # (waiting at most ``max_wait`` s, or until ``wake``, for something to happen); the
    # driver hands each run's ready results on and calls ``end_run`` when it is done.

    def start_run(self, spec: MapSpec) -> RunState:
        raise NotImplementedError(f"the {self.name} backend cannot serve fanout.Executor/Pool")

    def pump(self, max_wait: float | None) -> None:
        raise NotImplementedError

    def end_run(self, run: RunState) -> None:
        raise NotImplementedError

    def wake(self) -> None:  # noqa: B027 - optional hook
        """From any thread: make a ``pump`` that waits return now."""

    def give_back(self, run: RunState) -> list[Task]:
        """Stop ``run`` from sending more and give back every task of it that no worker
        has started — taken back from workers where this backend can — for someone else
        to run (``RunState.hand_back``); the run ends once its running tasks are done."""
        return run.hand_back()

    def cancel_tasks(self, run: RunState, indices: list[int]) -> set[int]:
        """Cancel the tasks of ``run`` among ``indices`` that have left the run's input
        but that no worker has yet (queued on the backend); the ones cancelled. Where
        handing a task over means a worker has it, nothing is left to cancel."""
        return set()

    # Durable runs (``durable_runs``): a backend without them says so.

    def last_run_id(self) -> str | None:
        """The id of the run the last ``map`` made, if runs have ids here."""
        return None

    def submit(self, spec: MapSpec) -> str:
        """Enqueue every input of ``spec`` as a run that goes on without the caller."""
        raise self._no_durable_runs()

    def attach(
        self,
        run_id: str,
        wait: bool = True,
        ordered: bool = False,
        inputs: dict[int, Any] | None = None,
    ) -> Iterator[TaskResult]:
        """The results of run ``run_id``, each index once (``wait``: until all are in);
        as they were reported, or in index order (``ordered``). ``inputs``, if given, is
        filled with index -> input of the tasks whose inputs the backend still has (for
        display)."""
        raise self._no_durable_runs()

    def run_status(self, run_id: str) -> dict[str, Any]:
        """Run ``run_id``'s counts: total, ok, failed, cancelled, queued, running, workers."""
        raise self._no_durable_runs()

    def cancel_run(self, run_id: str) -> None:
        """Cancel run ``run_id``: queued tasks cancelled, running ones stopped."""
        raise self._no_durable_runs()

    def detach(self) -> None:  # noqa: B027 - optional hook
        """Leave the runs in progress going when this backend closes (SIGHUP)."""

    def _no_durable_runs(self) -> ValueError:
        return ValueError(
            f"the {self.name} backend has no runs that outlive their caller (detach, run"
            " ids, results, status, cancel): use --backend rq"
        )
