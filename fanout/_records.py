"""Results pickled by earlier fanout releases, loaded as the records of today.

Until issue 24, ``TaskResult``, ``TaskError`` and ``WorkerInfo`` were frozen dataclasses
(with slots, and before that without). A dataclass pickles as "an empty object of the
class, then its state": pickle's NEWOBJ calls the class's ``tp_new``, then BUILD calls
``__setstate__`` with the field values in order (or the object's ``__dict__``). The
class is found by its name, ``fanout.models.TaskResult``, which is a ``msgspec.Struct``
now: a frozen record with no ``tp_new`` (a Struct is made by its metaclass's call), so
NEWOBJ would fail with "NEWOBJ class argument ... doesn't have __new__".

:func:`restore_earlier_pickles` gives the record types CPython's generic ``tp_new`` (an
object of the type with every field unset), and :func:`setstate` fills the fields, as
BUILD asks. Both only ever run for such a pickle: today's records pickle as ``(type,
field values)``, which calls the type. Where the slot cannot be found for certain
(another Python implementation, a layout it does not recognise), nothing is changed
and an earlier release's pickle fails to load, as it would have anyway.
"""

from __future__ import annotations

import sys
from typing import Any

from msgspec.structs import force_setattr


def setstate(self: Any, state: Any) -> None:
    """BUILD of an earlier release's pickle: the field values in order (a dataclass with
    slots), or the object's ``__dict__`` (one before slots). A field the pickle does not
    have gets its default (None where it has none)."""
    fields: tuple[str, ...] = type(self).__struct_fields__
    defaults: tuple[Any, ...] = type(self).__struct_defaults__
    fallback = dict(zip(fields[len(fields) - len(defaults) :], defaults, strict=True))
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        state = state[1]  # (None, slot values): copyreg's form for slots without a getstate
    if isinstance(state, dict):
        values = [state.get(name, fallback.get(name)) for name in fields]
    else:
        given = list(state)
        values = given + [fallback.get(name) for name in fields[len(given) :]]
    for name, value in zip(fields, values, strict=False):
        force_setattr(self, name, value)


def restore_earlier_pickles(*types: type) -> bool:
    """Let pickle's NEWOBJ make an empty object of each of ``types`` (see the module's
    docstring); True if it could."""
    if sys.implementation.name != "cpython":
        return False
    try:
        import ctypes

        generic = ctypes.cast(ctypes.pythonapi.PyType_GenericNew, ctypes.c_void_p).value
        offset = _tp_new_offset(generic)
        if offset is None:
            return False
        for kind in types:
            slot = ctypes.c_void_p.from_address(id(kind) + offset)
            if slot.value is None:  # a Struct's: nothing else is ever replaced
                slot.value = generic
        ctypes.pythonapi.PyType_Modified.argtypes = [ctypes.py_object]
        for kind in types:
            ctypes.pythonapi.PyType_Modified(kind)
    except Exception:  # only earlier releases' pickles depend on it
        return False
    return True


def _tp_new_offset(generic: int | None) -> int | None:
    """The byte offset of ``tp_new`` in a type object: the one word that holds
    ``PyType_GenericNew`` in both ``list`` and ``bytearray``'s types (which use it), and
    is empty in a Struct type's."""
    import ctypes

    from msgspec import Struct

    class Probe(Struct):
        pass

    size = ctypes.sizeof(ctypes.c_void_p)
    kinds = (list, bytearray)
    found = [
        offset
        for offset in range(0, 64 * size, size)
        if all(ctypes.c_void_p.from_address(id(kind) + offset).value == generic for kind in kinds)
    ]
    if len(found) != 1 or generic is None:
        return None
    if ctypes.c_void_p.from_address(id(Probe) + found[0]).value is not None:
        return None
    return found[0]
