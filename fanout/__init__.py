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
    BadRedisURL,
    Cancelled,
    FanoutError,
    IncompleteRun,
    InputError,
    JobCanceled,
    JobStopped,
    MemoryLimitExceeded,
    ResultsGone,
    RunRemoved,
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

if TYPE_CHECKING:
    from fanout.aio import AsyncFanout, arun
    from fanout.dropin import Executor, Pool, TaskFuture
    from fanout.models import TaskError, TaskResult, Usage, WorkerInfo
    from fanout.reporting import report
    from fanout.runs import Run, attach, submit

__version__ = "0.1.0"


_LAZY = {
    "TaskResult": "fanout.models",
    "TaskError": "fanout.models",
    "WorkerInfo": "fanout.models",
    "Usage": "fanout.models",
    "AsyncFanout": "fanout.aio",
    "arun": "fanout.aio",
    "Run": "fanout.runs",
    "submit": "fanout.runs",
    "attach": "fanout.runs",
    "Executor": "fanout.dropin",
    "Pool": "fanout.dropin",
    "TaskFuture": "fanout.dropin",
    "report": "fanout.reporting",
}


def __getattr__(name: str) -> object:
    # The records (msgspec), durable runs, the drop-ins and the report load on first use:
    # `import fanout` stays light.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fanout' has no attribute {name!r}")


__all__ = [  # noqa: RUF022 - grouped by purpose
    # running
    "Fanout",
    "run",
    # asyncio
    "AsyncFanout",
    "arun",
    # drop-ins for concurrent.futures and multiprocessing
    "Executor",
    "Pool",
    "TaskFuture",
    # runs that outlive their caller
    "Run",
    "attach",
    "submit",
    # results
    "TaskError",
    "TaskResult",
    "Usage",
    "WorkerInfo",
    # the run as a picture
    "report",
    # errors
    "BackendUnavailable",
    "FanoutError",
    "BadRedisURL",
    "Cancelled",
    "IncompleteRun",
    "InputError",
    "JobCanceled",
    "JobStopped",
    "MemoryLimitExceeded",
    "ResultsGone",
    "RunRemoved",
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
