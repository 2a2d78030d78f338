"""Worker allowlists: which modules a worker may import code from, by name or by pickle.

``fanout worker --allow app.tasks`` admits targets defined in ``app.tasks`` or below,
on a module boundary. The name is checked before anything is imported; the callable
it resolves to is checked too (``app.tasks:os.system`` names ``os.system``, which is
not in ``app.tasks``). Pickles that reach the worker — RQ's job data and fanout's
pickled inputs — are read with :func:`restricted_loads`, which imports nothing but
plain data types and the allowed modules: unpickling is code execution otherwise.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterable
from typing import Any

from fanout.errors import TargetNotAllowed

# What a pickle of plain data may name beyond the allowed modules. Never a callable
# that runs code of its choosing (eval, getattr, os.system, ...).
_BUILTINS = "bool bytearray bytes complex dict float frozenset int list object range set slice str"
SAFE_GLOBALS = frozenset(
    [("builtins", name) for name in [*_BUILTINS.split(), "tuple"]]
    + [("collections", name) for name in ("OrderedDict", "deque", "defaultdict", "Counter")]
    + [("datetime", name) for name in ("date", "datetime", "time", "timedelta", "timezone")]
    + [("decimal", "Decimal"), ("fractions", "Fraction"), ("uuid", "UUID")]
    + [("pathlib", name) for name in ("Path", "PosixPath", "PurePath", "PurePosixPath")]
    + [("copyreg", "_reconstructor")]  # rebuilds plain instances of vetted classes
    # The drop-ins' calls (fanout/calls.py): plain holders of a function, its arguments
    # and a Pool's initializer, each unpickled through this same check; also under the
    # path an earlier fanout pickled them with (the alias fanout/dropin/calls.py).
    + [("fanout.calls", "Call"), ("fanout.calls", "Init")]
    + [("fanout.dropin.calls", "Call"), ("fanout.dropin.calls", "Init")]
)


def parse_allow(values: Iterable[str]) -> tuple[str, ...]:
    """Module prefixes from ``--allow`` values or ``FANOUT_ALLOW`` (comma-separated)."""
    prefixes = []
    for value in values:
        for prefix in value.split(","):
            prefix = prefix.strip().rstrip(".")
            if not prefix:
                continue
            if not all(part.isidentifier() for part in prefix.split(".")):
                raise ValueError(
                    f"--allow {prefix!r} is not a module path like 'app.tasks' (dotted names)"
                )
            prefixes.append(prefix)
    return tuple(prefixes)


def allowlist_from_env() -> tuple[str, ...]:
    """The allowlist of a stock ``rq worker``: ``FANOUT_ALLOW`` (empty: any module)."""
    return parse_allow([os.environ.get("FANOUT_ALLOW", "")])


def is_allowed(module: str, allow: tuple[str, ...]) -> bool:
    """Whether ``module`` is one of the prefixes or inside one, on a module boundary:
    ``app.tasks`` admits ``app.tasks`` and ``app.tasks.x``, never ``app.tasks_evil``."""
    return any(module == prefix or module.startswith(prefix + ".") for prefix in allow)


def is_module_path(module: str) -> bool:
    """Dotted identifiers (``app.tasks``): never a file path, never ``..``."""
    return bool(module) and all(part.isidentifier() for part in module.split("."))


def target_module(target: str) -> str:
    """The module a ``module:function`` target (or an RQ ``module.function``) lives in."""
    location, sep, _ = target.rpartition(":")
    return location if sep else target.rpartition(".")[0]


def _refuse(what: str, allow: tuple[str, ...]) -> TargetNotAllowed:
    return TargetNotAllowed(
        f"{what} is not in this worker's allowlist ({', '.join(allow)});"
        " start the worker with --allow for its module to run it"
    )


def check_name(name: str, what: str, allow: tuple[str, ...]) -> None:
    """Before import: the module that ``name`` lives in must be allowed (and be a module
    name: ``app.tasks./../evil.py`` starts with ``app.tasks.`` but is a file path)."""
    module = target_module(name)
    if allow and not (is_module_path(module) and is_allowed(module, allow)):
        raise _refuse(f"{what} {name}", allow)


def check_callable(fn: Any, name: str, what: str, allow: tuple[str, ...]) -> None:
    """After import: the callable itself must be defined in an allowed module, not merely
    be reachable from one (``app.tasks:os.system``)."""
    module = getattr(fn, "__module__", None)
    if allow and not (isinstance(module, str) and is_allowed(module, allow)):
        raise _refuse(f"{what} {name} (defined in {module or 'no module'})", allow)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, allow: tuple[str, ...]) -> None:
        super().__init__(io.BytesIO(data))
        self.allow = allow

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        if not is_allowed(module, self.allow):
            raise _refuse(f"a pickle on this queue names {module}.{name}, which", self.allow)
        obj = super().find_class(module, name)
        check_callable(obj, f"{module}.{name}", "pickled object", self.allow)
        return obj


def plain_loads(data: bytes) -> Any:
    """``pickle.loads`` of plain data only (``SAFE_GLOBALS``): for showing a value,
    where no module may be imported at all."""
    return _RestrictedUnpickler(data, ()).load()


def restricted_loads(data: bytes, allow: tuple[str, ...]) -> Any:
    """``pickle.loads`` that imports only plain data types and the allowed modules."""
    if not allow:
        return pickle.loads(data)
    return _RestrictedUnpickler(data, allow).load()
