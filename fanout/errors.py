"""The whole error tree of fanout.

Errors raised to the caller derive from :class:`FanoutError`. Task failures are not
raised by ``run``/``map``: they come back as failed ``TaskResult``s whose
``error.type`` names one of these classes (``WorkerLost``, ``TaskTimeout``,
``SerializationError``, ...) or the task's own exception class; the whole vocabulary is
in :mod:`fanout.backends.base`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fanout.models import TaskError


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


class RemoteTraceback(Exception):
    """Carries the traceback text of the process that ran a task (as ``__cause__``)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class TaskFailed(FanoutError):
    """Raised by ``TaskResult.unwrap()`` for a failed task; carries the remote error."""

    def __init__(self, index: int, error: TaskError) -> None:
        said = f"{error.type}: {error.message}" if error.message else error.type
        super().__init__(f"task {index} failed: {said}")
        self.index = index
        self.error = error
        self.traceback = error.traceback
        if error.traceback:
            self.__cause__ = RemoteTraceback(error.traceback)
