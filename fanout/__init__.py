"""fanout: run one Python function over many inputs, on local processes or RQ workers.

Every result says which process produced it (name, pid, parent pid, host)::

    import fanout

    for r in fanout.run(pow, [(2, 5), (3, 3)], star=True):
        print(r.index, r.value, r.worker.name, r.worker.pid)
"""

from typing import TYPE_CHECKING

from fanout.api import Fanout, run
from fanout.backends import backend_names, register_backend
from fanout.backends.base import Backend, MapSpec
from fanout.errors import (
    BackendUnavailable,
    FanoutError,
    InputError,
    SerializationError,
    SignatureError,
    TargetError,
    TargetNotAllowed,
    TaskFailed,
    TaskTimeout,
    UnknownBackend,
    UnknownOption,
    UnknownRun,
    WorkerLost,
)
from fanout.models import TaskError, TaskResult, WorkerInfo

if TYPE_CHECKING:
    from fanout.runs import Run, attach, submit

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The durable-runs API loads on first use: `import fanout` stays light.
    if name in ("Run", "submit", "attach"):
        from fanout import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'fanout' has no attribute {name!r}")


__all__ = [  # noqa: RUF022 - grouped by purpose
    # running
    "Fanout",
    "run",
    # runs that outlive their caller
    "Run",
    "attach",
    "submit",
    # results
    "TaskError",
    "TaskResult",
    "WorkerInfo",
    # errors
    "BackendUnavailable",
    "FanoutError",
    "InputError",
    "SerializationError",
    "SignatureError",
    "TargetError",
    "TargetNotAllowed",
    "TaskFailed",
    "TaskTimeout",
    "UnknownBackend",
    "UnknownOption",
    "UnknownRun",
    "WorkerLost",
    # backends
    "Backend",
    "MapSpec",
    "backend_names",
    "register_backend",
]
