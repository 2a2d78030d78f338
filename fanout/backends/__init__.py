"""Backend registry: built-in backends by name, third-party ones by entry point.

A package registers a backend under the ``fanout.backends`` entry-point group::

    [project.entry-points."fanout.backends"]
    mybackend = "mypackage.backend:MyBackend"

Built-in backends are imported only when used, so ``import fanout`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from fanout.backends.base import Backend, MapSpec
from fanout.errors import UnknownBackend

ENTRY_POINT_GROUP = "fanout.backends"

_BUILTIN: dict[str, str] = {
    "local": "fanout.backends.local:LocalBackend",
    "inline": "fanout.backends.inline:InlineBackend",
    "rq": "fanout.backends.rq:RQBackend",
}
_registered: dict[str, type[Backend]] = {}


def _entry_points() -> Any:
    # importlib.metadata costs ~14 ms to import: only pay it when a name is looked up.
    from importlib.metadata import entry_points

    return entry_points(group=ENTRY_POINT_GROUP)


def register_backend(name: str, cls: type[Backend]) -> None:
    """Register ``cls`` under ``name`` (overrides an entry point of the same name)."""
    _registered[name] = cls


def unregister_backend(name: str) -> None:
    """Forget a backend registered with :func:`register_backend` (tests use this)."""
    _registered.pop(name, None)


def backend_names() -> list[str]:
    """Every name a backend can be asked for, sorted."""
    names = set(_BUILTIN) | set(_registered)
    names.update(ep.name for ep in _entry_points())
    return sorted(names)


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name``; :class:`UnknownBackend` lists the valid ones."""
    if name in _registered:
        return _registered[name]
    if name in _BUILTIN:
        module, _, attr = _BUILTIN[name].partition(":")
        cls: type[Backend] = getattr(importlib.import_module(module), attr)
        return cls
    for ep in _entry_points():
        if ep.name == name:
            loaded = ep.load()
            if not (isinstance(loaded, type) and issubclass(loaded, Backend)):
                raise UnknownBackend(
                    f"entry point {ep.value!r} for backend {name!r} is not a fanout Backend"
                )
            return loaded
    raise UnknownBackend(f"unknown backend {name!r}; valid backends: {', '.join(backend_names())}")


def create_backend(name: str, workers: int | None, options: dict[str, Any]) -> Backend:
    """The backend registered as ``name``, made with ``workers`` and checked ``options``."""
    cls = get_backend(name)
    cls.check_options(options)
    return cls(workers=workers, **options)


__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "MapSpec",
    "backend_names",
    "create_backend",
    "get_backend",
    "register_backend",
    "unregister_backend",
]
