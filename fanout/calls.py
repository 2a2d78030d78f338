"""Calls as tasks: each carries its own function, so that one long-lived run serves
every ``submit`` and ``apply_async`` of an Executor or a Pool (and a drop-in's map of a
function workers cannot import by name), whatever function each call names; and a
Pool's ``initializer``, run once per process.

:func:`call` is such a run's target on every worker; its name, :data:`TARGET`, travels
in RQ jobs, and :class:`Call` and :class:`Init` in their pickles. Both are plain
picklable objects; on rq, a worker's allowlist sees the function inside every call (it
unpickles them with ``restricted_loads``), as it sees a run's target. They lived in
``fanout.dropin.calls`` before: that module stays, an alias, for the jobs an earlier
fanout enqueued (``EARLIER_TARGETS``).
"""

from __future__ import annotations

from typing import Any

# The tokens of the initializers this process has run: one per Pool.
_initialized: set[str] = set()


class Init:
    """A Pool's ``initializer(*initargs)``, run once in each process that runs its tasks."""

    __slots__ = ("args", "fn", "token")

    def __init__(self, token: str, fn: Any, args: tuple[Any, ...]) -> None:
        self.token = token
        self.fn = fn
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (Init, (self.token, self.fn, self.args))

    def ensure(self) -> None:
        if self.token not in _initialized:
            self.fn(*self.args)  # raises: the task fails, the next one tries again
            _initialized.add(self.token)


class Call:
    """``fn(*args, **kwargs)``, to be made on a worker (after the Pool's ``init``), in
    the trace context of its submitter (``trace``: where it differs from its run's)."""

    __slots__ = ("args", "fn", "init", "kwargs", "trace")

    def __init__(
        self,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        init: Init | None = None,
        trace: dict[str, str] | None = None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.init = init
        self.trace = trace

    def __reduce__(self) -> tuple[Any, ...]:
        if self.trace is None:  # as before tracing: nothing more to pickle
            return (Call, (self.fn, self.args, self.kwargs, self.init))
        return (Call, (self.fn, self.args, self.kwargs, self.init, self.trace))


def call(item: Call) -> Any:
    """Make the call ``item`` carries (the run's target on every worker), in its
    submitter's trace context where it still carries one (its worker did not make it
    current: its run is not traced, ``fanout.tracing``)."""
    if item.init is not None:
        item.init.ensure()
    if item.trace is not None:
        from fanout import tracing

        with tracing.attached(item.trace):
            return item.fn(*item.args, **item.kwargs)
    return item.fn(*item.args, **item.kwargs)


TARGET = "fanout.calls:call"
#: The names an earlier fanout gave :func:`call` in the jobs it enqueued.
EARLIER_TARGETS = ("fanout.dropin.calls:call",)
#: Every name a job's target has when it is :func:`call`.
TARGETS = (TARGET, *EARLIER_TARGETS)
