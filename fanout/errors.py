"""The whole error tree of fanout, and the vocabulary of failed results.

Every failed result also says why it ended in one word, ``TaskError.cause``
(``fanout.models.CAUSES``); the types below are what the drop-ins raise.

Errors raised to the caller derive from :class:`FanoutError`. Task failures are not
raised by ``run``/``map``: they come back as failed ``TaskResult``s whose
``error.type`` is the name of the task's own exception class (``"ZeroDivisionError"``)
or of one of these classes, each the whole vocabulary of what fanout itself reports:

- ``WorkerLost``: the process running the task died (the message says which, and how);
- ``TaskTimeout``: it ran longer than its ``timeout`` and its process was ended;
- ``MemoryLimitExceeded``: its process grew past the run's ``max_memory`` and was ended;
- ``SerializationError``: its input or value could not be pickled or unpickled (the
  message names the task's index);
- ``TargetError`` / ``TargetNotAllowed``: the worker could not load the target, or its
  allowlist refused the target or an input;
- ``SignatureError``: a worker refused the job as unsigned or forged (rq);
- ``Cancelled``: the run was cancelled, or halted by ``max_failures``, before the task
  started (``attempts`` 0, worker ``(not run)``), or stopped it while it ran;
- ``JobCanceled`` / ``JobStopped``: the RQ job that held the task was cancelled
  (``rq cancel``) or stopped (``rq stop-job``) outside fanout;
- ``FanoutError``: RQ failed a job around its tasks and said no more (otherwise that
  error's own class name is given, as for a task's exception).

The drop-ins (``fanout.Executor``, ``fanout.Pool``) raise each of these in the caller
as its own class: every one of them is made from its message alone.
"""

from __future__ import annotations

from typing import Protocol


class ErrorRecord(Protocol):
    """What :class:`TaskFailed` reads of a failed task's error: a
    :class:`fanout.TaskError` (its own module depends on this one, not the reverse)."""

    @property
    def type(self) -> str: ...

    @property
    def message(self) -> str: ...

    @property
    def traceback(self) -> str: ...


class FanoutError(Exception):
    """Base class of every error fanout raises."""


class TargetError(FanoutError):
    """The target cannot be resolved or imported, or cannot run on the chosen backend."""


class TargetNotAllowed(TargetError):
    """A worker's allowlist (``--allow``, ``FANOUT_ALLOW``) does not admit the target's module."""


class SignatureError(FanoutError):
    """A job or result on Redis is unsigned, or signed with another or a forged key."""


class UnknownBackend(FanoutError, ValueError):
    """No backend is registered under the requested name."""


class UnknownOption(FanoutError, ValueError):
    """A backend was given a keyword option it does not take."""

    def __init__(self, backend: str, option: str, valid: list[str]) -> None:
        options = ", ".join(valid) if valid else "none"
        super().__init__(
            f"the {backend} backend takes no option {option!r}; its options: {options}"
        )
        self.backend = backend
        self.option = option
        self.valid = valid


class UnknownRun(FanoutError, ValueError):
    """No run has this id in this Redis (never had, or it expired or was collected)."""

    def __init__(self, run_id: str, where: str) -> None:
        super().__init__(
            f"no run {run_id!r} in {where}: it never was, or it was collected or expired"
            " (runs are kept result_ttl, 7 days by default, after their last activity)"
        )
        self.run_id = run_id


class ResultsGone(UnknownRun):
    """The run is known, but its results are no longer in Redis: another collection got
    them all, a cancel dropped them, or they expired."""

    def __init__(self, run_id: str, message: str) -> None:
        FanoutError.__init__(self, message)
        self.run_id = run_id


class IncompleteRun(FanoutError):
    """The run's caller stopped before it had enqueued every input: its results cover
    only the inputs it had enqueued (raised once they have all been given)."""

    def __init__(self, run_id: str, total: int) -> None:
        super().__init__(
            f"run {run_id} is incomplete: its caller stopped (killed, or cut off from Redis)"
            f" after enqueueing {total} input{'s' if total != 1 else ''}, before the rest:"
            " its results are those of these; run the others again (a --journal with"
            " --resume knows which)"
        )
        self.run_id = run_id
        self.total = total


class BadRedisURL(FanoutError, ValueError):
    """A Redis URL that cannot be right: an unknown scheme, a port or database that is no
    number (its password masked in the message)."""


class BackendUnavailable(FanoutError):
    """The backend's service cannot be reached or refused the credentials."""


class RunRemoved(BackendUnavailable):
    """The run was removed from Redis while its caller still ran it (a collector took
    the caller for dead, it expired, or it was deleted): it cannot go on."""


class InputError(FanoutError):
    """An input item could not be read (bad JSON line, unreadable file)."""


class SerializationError(FanoutError):
    """An input, a return value or an exception could not be pickled or unpickled."""


class WorkerLost(FanoutError):
    """The process running a task died before reporting its result."""


class TaskTimeout(FanoutError):
    """A task ran longer than its ``timeout`` and its process was ended."""


class MemoryLimitExceeded(FanoutError):
    """A task's process grew past its run's ``max_memory`` and was ended."""


class Cancelled(FanoutError):
    """The task's run was cancelled, or halted by ``max_failures``, before it started
    (or stopped it while it ran)."""


class JobCanceled(FanoutError):
    """The RQ job that held the task was cancelled in RQ (``rq cancel``) before it ran."""


class JobStopped(FanoutError):
    """The RQ job that held the task was stopped outside fanout (``rq stop-job``)."""


class RemoteTraceback(Exception):
    """Carries the traceback text of the process that ran a task (as ``__cause__``)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class TaskFailed(FanoutError):
    """Raised by ``TaskResult.unwrap()`` for a failed task: ``error`` is its
    :class:`~fanout.TaskError`, whose remote traceback is the ``__cause__``."""

    def __init__(self, index: int, error: ErrorRecord) -> None:
        said = f"{error.type}: {error.message}" if error.message else error.type
        super().__init__(f"task {index} failed: {said}")
        self.index = index
        self.error = error
        self.traceback = error.traceback
        if error.traceback:
            self.__cause__ = RemoteTraceback(error.traceback)
