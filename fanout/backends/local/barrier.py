"""A memory barrier on every CPU that runs a worker: Linux's ``membarrier``.

Taking tasks back from a worker (``handles.WorkerHandle.take_back``) is an agreement
through the shared marker, made with plain stores and loads on both sides: before it
starts tasks, the worker stores its claim, then loads the stop point; the caller stores
the stop point, then loads the claim. For that to be safe each side's store must be
visible to the other before its own load (Dekker's pattern), which no modern CPU
promises for plain stores and loads (x86 lets a load pass an earlier store). A fence on
the worker's side would cost every task; ``membarrier`` puts the whole cost on the
caller, which takes work back rarely: :func:`everywhere` makes every CPU that runs a
process that called :func:`register` execute a full memory barrier before it returns
(``MEMBARRIER_CMD_GLOBAL_EXPEDITED``, Linux 4.16 and later, about a microsecond here).

Where it is missing (another system, an old kernel, a seccomp filter that refuses it) a
worker still gives tasks back, but only when it next looks at the stop point, after the
task it is running: the caller then takes back only what the worker says it gave.
"""

from __future__ import annotations

import contextlib
import platform
import sys
from typing import Any

# membarrier's system call number on the architectures Linux gives it one on.
_SYSCALLS = {
    "x86_64": 324,
    "aarch64": 283,
    "arm64": 283,
    "riscv64": 283,
    "ppc64le": 365,
    "ppc64": 365,
    "s390x": 356,
}
_QUERY = 0
_GLOBAL_EXPEDITED = 1 << 1
_REGISTER_GLOBAL_EXPEDITED = 1 << 2

_call: Any = None  # libc's syscall(), bound to membarrier's number; False: none here


def _membarrier() -> Any:
    global _call
    if _call is None:
        _call = False
        number = _SYSCALLS.get(platform.machine())
        if sys.platform.startswith("linux") and number is not None:
            with contextlib.suppress(OSError, AttributeError):
                import ctypes

                syscall = ctypes.CDLL(None, use_errno=True).syscall

                def call(command: int) -> int:
                    result: int = syscall(number, command, 0)
                    return result

                supported = call(_QUERY)
                if supported >= 0 and supported & _GLOBAL_EXPEDITED:
                    _call = call
    return _call


def register() -> bool:
    """In a worker: receive the caller's barriers from now on; False if it cannot."""
    call = _membarrier()
    return bool(call) and call(_REGISTER_GLOBAL_EXPEDITED) == 0


def everywhere() -> bool:
    """In the caller: a full memory barrier on every CPU running a registered process;
    False if none could be made (then nothing may be taken back at once)."""
    call = _membarrier()
    return bool(call) and call(_GLOBAL_EXPEDITED) == 0
