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

**Driving runs (the drive interface).** ``map`` serves ``fanout.run`` and
``Fanout.map``: the consumer's own thread drives the run while it waits for the next
result. ``fanout.Executor``, ``fanout.Pool`` and ``fanout.AsyncFanout`` drive their
runs from one thread of their own instead (:class:`fanout.driving.Driver`), several runs
at once on one set of workers, and need four more methods: :meth:`Backend.start_run`,
:meth:`Backend.pump`, :meth:`Backend.end_run` and :meth:`Backend.wake` (and, where
tasks wait between the run and a worker, :meth:`Backend.cancel_tasks`). A backend with
them has ``drive_interface`` set (by default, when it implements the first three). The
driver's loop is::

    run = backend.start_run(spec)            # for each run asked for, between pumps
    while runs:
        backend.pump(0.5)                    # one round of every run, waiting <= 0.5 s
        for run in runs:                     # then, for each run, in the same thread:
            hand on run.ready_values, run.ready (and clear them)
            if run.done():
                backend.end_run(run)         # (and at once for a run its consumer left)
                tell its consumer run.input_error, if any

What the driver reads of a run — a :class:`~fanout.backends.runstate.RunState` (or a
subclass), whose methods the backend calls as the rules above say — and nothing else:

- ``ready``: a deque of final results (:class:`~fanout.TaskResult`) to hand on; the
  driver empties it after each pump (in input order for an ordered run, as they came
  otherwise);
- ``ready_values``: for a run with ``spec.bare`` set (the drop-ins' maps), successes as
  ``(indices, values, output)`` chunks (``RunState.settle_values``), emptied likewise; a
  backend may give every result in ``ready`` instead;
- ``done()``: every input has been taken and every result handed on;
- ``input_error``: the exception the input raised, raised to the consumer after the
  results of the tasks taken before it;
- ``exceptions``: index -> the exception an input could not be pickled with (the
  drop-ins raise it as the stdlib would), filled by ``take_batch``;
- ``spec``: the :class:`MapSpec` it was started with.

``spec.items`` of a driven run may be a live input (``fanout.backends.feed.Feed``: the
calls of ``submit``), which other threads add to while the run goes on and which never
waits: ``RunState.take_fresh`` takes what is there. ``spec.room`` bounds how far the
input is read ahead of its consumer; the consumer calls ``wake`` when it has taken
results and the run may read on.

**Threads.** ``start_run``, ``pump``, ``end_run``, ``cancel_tasks`` and ``give_back``
are called from one thread at a time, the driver's, which alone reads and changes its
runs' ``RunState``; they need no lock of their own. ``wake`` is called from any thread,
at any time (also while ``pump`` waits, and before a run exists), and must neither block
nor touch a run. A backend's ``map`` runs and its driven runs are never mixed on one
backend object (a Fanout, an Executor, a Pool each make their own). ``close`` is called
once the driver's thread has ended, every run ended.

**Proving it.** The contract's tests ship with fanout: subclass
:class:`fanout.testing.contract.BackendContract` in a test module of your own and give it
a ``fanout_options`` fixture (the keyword arguments of ``fanout.run`` that select your
backend); ``tests/test_contract.py`` does exactly that for the built-in backends, and
``tests/stub_backend.py`` is a small backend (its workers threads of the caller) that
passes it whole and serves ``Executor``, ``Pool`` and ``AsyncFanout``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from fanout.backends.spec import MapSpec as MapSpec  # its home; imported from here too
from fanout.errors import UnknownOption

if TYPE_CHECKING:
    from fanout._wire import Task
    from fanout.backends.runstate import RunState
    from fanout.models import TaskResult


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
    #: The drive interface works (``start_run``, ``pump``, ``end_run``, ``wake``): the
    #: backend serves ``fanout.Executor``, ``fanout.Pool`` and ``fanout.AsyncFanout``.
    #: By default, whether the class implements the first three.
    drive_interface: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "drive_interface" not in cls.__dict__:
            cls.drive_interface = all(
                getattr(cls, method) is not getattr(Backend, method)
                for method in ("start_run", "pump", "end_run")
            )

    def __init__(self, workers: int | None = None, **options: Any) -> None:  # noqa: B027
        """Take the worker count (None: the backend's default) and backend options."""

    @classmethod
    def option_names(cls) -> list[str] | None:
        """The keyword options ``__init__`` takes besides ``workers`` (None: any)."""
        import inspect  # here: a third of what ``import fanout`` would cost

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
        """Run ``spec.fn`` on every item; yield results in input order if ``spec.ordered``.

        The one method every backend implements (``fanout.run``, ``Fanout.map``); the
        rules of the module docstring apply. The consumer's thread drives the run as it
        asks for results; closing the iterator early ends what still runs for it.

        :param spec: the run, normalised.
        :returns: an iterator of one result per item taken from ``spec.items``; after
            the last, the input's own exception if it raised.
        :raises TargetError, BackendUnavailable: before any task runs, or (the service
            lost for good) from the iterator.
        """

    def close(self, cancel: bool = False) -> None:  # noqa: B027 - optional hook
        """Release workers and connections; ``cancel`` ends running tasks at once."""

    def stop_note(self) -> str:
        """What ``close(cancel=True)`` did, in a few words (said after a Ctrl-C)."""
        return "workers stopped"

    # The drive interface (see "Driving runs" above): what fanout.Executor, fanout.Pool
    # and fanout.AsyncFanout need. One thread, the driver's, calls all but wake().

    def start_run(self, spec: MapSpec) -> RunState:
        """Make a run of ``spec`` without driving it; later pumps drive it.

        Check what can be checked before any task runs (the target can be sent, the
        service is there) and raise that, as ``map`` would. The run is open from now
        until :meth:`end_run`: every pump makes progress on it among the others.

        :param spec: the run, normalised; ``spec.items`` may be a live input (a Feed).
        :returns: the run's :class:`~fanout.backends.runstate.RunState` (or a subclass
            carrying the backend's own dispatch state).
        :raises TargetError, BackendUnavailable: before any task of it runs.
        :raises NotImplementedError: the backend has no drive interface.
        """
        raise NotImplementedError(self._no_drive_interface("start_run"))

    def pump(self, max_wait: float | None) -> None:
        """Make one round of progress on every open run.

        Hand what workers can take now to them (``RunState.take_batch``), and settle
        what came back into each run (``RunState.settle`` and the rest), so that the
        driver finds results in ``ready``/``ready_values``. Wait for something to happen
        at most ``max_wait`` seconds (None: as long as the backend likes), or until
        :meth:`wake`; do not wait when a run already has results ready or is done. It
        may be called with no run open (then there is nothing to do).

        :param max_wait: the longest this call may wait for events, in seconds.
        :raises BackendUnavailable: the service is lost for good; the driver then ends
            every run and fails what waits on them with this error.
        :raises NotImplementedError: the backend has no drive interface.
        """
        raise NotImplementedError(self._no_drive_interface("pump"))

    def end_run(self, run: RunState) -> None:
        """Close ``run``: it is done (every result handed on), or its consumer left it
        early (a map closed, an executor terminated, an asyncio task cancelled).

        Forget it, drop what it still has queued, and stop the tasks of it that are
        running, as leaving a ``map`` early does; later runs are not held up behind
        them. Called once per run; idempotent for a run already ended.

        :param run: a run this backend's :meth:`start_run` returned.
        :raises NotImplementedError: the backend has no drive interface.
        """
        raise NotImplementedError(self._no_drive_interface("end_run"))

    def wake(self) -> None:  # noqa: B027 - optional hook
        """From any thread: make a :meth:`pump` that waits return now (new input in a
        run's Feed, a consumer that took results). Never blocks. Without it, new input
        waits for the pump's ``max_wait`` to pass."""

    def give_back(self, run: RunState) -> list[Task]:
        """Stop ``run`` from sending more and give back every task of it that no worker
        has started — taken back from workers where this backend can — for someone else
        to run (``RunState.hand_back``); the run ends once its running tasks are done.
        (``fanout worker`` splits a slow job this way, on the backend running its tasks.)"""
        return run.hand_back()

    def cancel_tasks(self, run: RunState, indices: list[int]) -> set[int]:
        """Cancel the tasks of ``run`` among ``indices`` that have left the run's input
        but that no worker has yet (queued on the backend); the ones cancelled, each of
        which then gets its ``Cancelled`` result. Where handing a task over means a
        worker has it, nothing is left to cancel: the default cancels none."""
        return set()

    def _no_drive_interface(self, method: str) -> str:
        return (
            f"the {self.name} backend has no drive interface ({method} is not implemented):"
            " it cannot serve fanout.Executor, fanout.Pool or fanout.AsyncFanout"
        )

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
