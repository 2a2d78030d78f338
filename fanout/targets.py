"""Turning a target (a callable or a ``"module:function"`` string) into a callable."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

from fanout.errors import TargetError

_FORM = "'package.module:function' or 'path/to/file.py:function'"


def resolve_target(target: Callable[..., Any] | str) -> tuple[Callable[..., Any], str | None]:
    """Return the callable and, when workers could import it by name, its ``module:name``."""
    if callable(target):
        return target, importable_name(target)
    if not isinstance(target, str):
        raise TargetError(f"target must be a callable or a string like {_FORM}, got {target!r}")
    location, sep, attr = target.rpartition(":")
    if not sep or not location or not attr:
        raise TargetError(f"target {target!r} is not of the form {_FORM}")
    is_file = location.endswith(".py") or os.sep in location or "/" in location
    module = _load_file(location) if is_file else _import(location)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TargetError(
                f"{location!r} has no attribute {attr!r} (target {target!r})"
            ) from None
    if not callable(obj):
        kind = type(obj).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise TargetError(f"target {target!r} is {article} {kind}, not a callable")
    return obj, None if is_file else f"{location}:{attr}"


def importable_name(fn: Callable[..., Any]) -> str | None:
    """``module:qualname`` when a worker on another machine could import ``fn``, else None."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or module == "__main__":
        return None
    if "<lambda>" in qualname or "<locals>" in qualname:
        return None
    mod = sys.modules.get(module)
    if mod is None or getattr(mod, "__fanout_file__", False):
        return None
    obj: Any = mod
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return f"{module}:{qualname}" if obj is fn else None


def why_not_importable(fn: Callable[..., Any]) -> str:
    """A one-line reason why ``fn`` cannot be imported by name on another machine."""
    qualname = getattr(fn, "__qualname__", repr(fn))
    module = getattr(fn, "__module__", None)
    if "<lambda>" in qualname:
        return "a lambda has no importable name"
    if "<locals>" in qualname:
        return f"{qualname!r} is defined inside a function (a closure)"
    if module == "__main__":
        return f"{qualname!r} lives in __main__, which workers cannot import"
    mod = sys.modules.get(module or "")
    if mod is not None and getattr(mod, "__fanout_file__", False):
        return f"{qualname!r} was loaded from a file path; use 'package.module:function'"
    return f"{qualname!r} cannot be found again by its module and name"


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise TargetError(
                f"cannot import module {name!r}: no module named {exc.name!r}"
                " (is it installed, or on PYTHONPATH?)"
            ) from None
        raise TargetError(f"importing {name!r} failed: {exc}") from exc
    except Exception as exc:
        raise TargetError(f"importing {name!r} failed: {type(exc).__name__}: {exc}") from exc


def _load_file(path: str) -> Any:
    """Load a Python file as a module named after it; its functions pickle by value."""
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise TargetError(f"no such file: {path!r}")
    name = os.path.splitext(os.path.basename(full))[0]
    existing = sys.modules.get(name)
    if existing is not None and getattr(existing, "__file__", None) == full:
        return existing
    if existing is not None:
        name = f"fanout_file_{name}"
    spec = importlib.util.spec_from_file_location(name, full)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot load {path!r} as Python")
    module = importlib.util.module_from_spec(spec)
    module.__fanout_file__ = True  # type: ignore[attr-defined]
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise TargetError(f"running {path!r} failed: {type(exc).__name__}: {exc}") from exc
    _file_modules[name] = full
    return module


# Modules loaded from file paths, by name: a worker started before one of them was
# loaded loads it too (see load_file_modules) instead of failing to unpickle the target.
_file_modules: dict[str, str] = {}


def file_modules() -> dict[str, str]:
    """``{module name: path}`` of every module loaded from a file path so far."""
    return dict(_file_modules)


def load_file_modules(modules: dict[str, str]) -> None:
    """In a worker: load the file-path modules the caller has and this process lacks."""
    for name, path in modules.items():
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is not None and spec.loader is not None:
                module = importlib.util.module_from_spec(spec)
                module.__fanout_file__ = True  # type: ignore[attr-defined]
                sys.modules[name] = module
                spec.loader.exec_module(module)
