"""Read-only live_stat payloads: a cached value that no caller can change for the others.

Every request of a manager process is answered from the same cached payload objects (the
shared cache, refresh-ahead). A resolver that "just adds a key" to the dict it was given —
legacy's destroy path added ``version`` and ``status`` to ``last_stat`` — would change the
value every other request sees. :func:`freeze` turns a payload into nested
:class:`FrozenDict` values once, when it enters the cache; every read after that is free.

:class:`FrozenDict` is a real ``dict`` subclass, so everything that reads dicts keeps working
unchanged: ``json.dumps`` (graphene's ``JSONString``), strawberry's scalars, ``msgspec``,
``==`` against plain dicts, ``isinstance(x, dict)``. Only the mutators raise a
``TypeError`` that says how to get a mutable copy::

    payload = await loader.load(kernel_id)
    payload["status"] = "TERMINATED"        # TypeError: read-only live_stat payload ...
    mine = {**payload, "status": "TERMINATED"}   # a plain dict: yours to change
    deep = thaw(payload)                    # nested plain dicts, all yours

``dict(payload)``, ``payload.copy()`` and ``payload | other`` return plain dicts (their inner
dicts stay read-only); :func:`thaw` copies all the way down.

**Garbage collection (opt-in).** CPython's collector walks every container it tracks on each
full collection, and it never stops tracking a ``dict`` subclass, so read-only payloads stay on
its list for as long as they are cached. A payload holds only strings, ``None`` and payload
dicts, so it cannot be part of a reference cycle. After :func:`untrack_payloads`, :func:`frozen`
(what the renderer builds every level with) takes such a dict off the collector's list, as
CPython does for its own dicts of strings (``PyObject_GC_UnTrack``, a public C-API function,
through ``ctypes``, loaded on first use; a no-op where that is not available, e.g. on PyPy). It
checks keys and values first: a dict holding anything else stays tracked. It is process-wide
and off by default because the collector is the application's: call it once at start-up, next
to ``gc.freeze()`` if the application uses that. What it saves, measured, is in
``benchmarks/README.md``.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn, TypeVar

__all__ = [
    "FrozenDict",
    "afreeze_values",
    "freeze",
    "freeze_values",
    "frozen",
    "thaw",
    "untrack_payloads",
]

K = TypeVar("K")
V = TypeVar("V")

_HINT = (
    "read-only live_stat payload: it is shared by every request of this process; "
    "copy it first ({**payload} or promstat.payload.thaw(payload)) to change it"
)


class FrozenDict(dict[K, V]):
    """A ``dict`` whose mutating methods raise ``TypeError`` (see the module docstring).

    Reads, iteration, ``==``, use as a mapping, pickling, ``copy.deepcopy`` and serialisation
    behave as for a plain ``dict``. Build one with ``FrozenDict(mapping)`` or :func:`freeze`.
    """

    __slots__ = ()

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse()

    __setitem__ = _read_only
    __delitem__ = _read_only
    __ior__ = _read_only
    clear = _read_only
    pop = _read_only
    popitem = _read_only
    setdefault = _read_only
    update = _read_only

    @classmethod
    def fromkeys(cls, iterable: Iterable[Any], value: Any = None) -> FrozenDict[Any, Any]:
        """Like ``dict.fromkeys`` (which would fill the new dict through ``__setitem__``)."""
        return cls(dict.fromkeys(iterable, value))

    def __reduce__(self) -> tuple[type[FrozenDict[K, V]], tuple[dict[K, V]]]:
        # pickle and copy.deepcopy rebuild through __init__, never item by item.
        return (type(self), (dict(self),))

    def __repr__(self) -> str:
        return f"FrozenDict({dict.__repr__(self)})"


def _refuse() -> NoReturn:
    raise TypeError(_HINT)


@functools.cache
def _gc_untrack() -> Callable[[object], None] | None:
    """CPython's ``PyObject_GC_UnTrack``, or None where it cannot be called.

    Looked up on first use, so ``import promstat`` does not load ``ctypes``.
    """
    if sys.implementation.name != "cpython":
        return None
    try:
        import ctypes

        # A prototype of our own rather than ctypes.pythonapi.PyObject_GC_UnTrack with its
        # argtypes set: that attribute is one object shared by the whole process.
        prototype = ctypes.PYFUNCTYPE(None, ctypes.py_object)
        untrack: Callable[[object], None] = prototype(("PyObject_GC_UnTrack", ctypes.pythonapi))
    except (ImportError, AttributeError, OSError):  # no ctypes, or no Python C API
        return None
    return untrack


_untracking = False


def untrack_payloads(enabled: bool = True) -> bool:
    """Opt in (or out again) to taking new read-only payloads off the garbage collector's list.

    Process-wide: the collector is. Payloads built before the call are unaffected. See the
    module docstring for why this is safe and what it costs and saves.

    Returns:
        Whether it was on before the call (to restore it).
    """
    global _untracking
    previous = _untracking
    _untracking = bool(enabled) and _gc_untrack() is not None
    return previous


def _untrackable(value: FrozenDict[Any, Any]) -> bool:
    # Only what no cycle can run through: string keys, atomic values, payload dicts the
    # collector already ignores. Anything else (a tuple, an object) keeps the dict tracked.
    for key, item in value.items():
        if type(key) is not str:
            return False
        kind = type(item)
        if kind not in _ATOMIC and not (kind is FrozenDict and not gc.is_tracked(item)):
            return False
    return True


def _seal(value: FrozenDict[K, V]) -> FrozenDict[K, V]:
    if _untracking and _untrackable(value):
        untrack = _gc_untrack()
        if untrack is not None:
            untrack(value)
    return value


def frozen(mapping: Mapping[K, V]) -> FrozenDict[K, V]:
    """A read-only copy of ``mapping`` (one level), untracked when opted in and safe.

    The renderer builds every level of a payload with it. See :func:`untrack_payloads`.
    """
    return _seal(FrozenDict(mapping))


def freeze(value: Any) -> Any:
    """Return ``value`` with every nested ``dict`` replaced by a :class:`FrozenDict`.

    Payload leaves are strings, numbers or ``None`` (immutable already); lists become tuples.
    A value that is already frozen is returned as is, so freezing twice costs nothing. A dict
    of such atomic values only is also untracked when opted in (:func:`untrack_payloads`).
    """
    kind = type(value)
    if kind is dict:
        atomic = True
        for item in value.values():
            item_kind = type(item)
            if item_kind in _CONTAINERS:
                return FrozenDict({k: freeze(v) for k, v in value.items()})
            if item_kind not in _ATOMIC:
                atomic = False  # a tuple, a set, an object: the collector keeps watching it
        # A leaf dict (a metric's strings): one C-level copy, the common case by far.
        leaf: FrozenDict[Any, Any] = FrozenDict(value)
        return _seal(leaf) if atomic else leaf
    if kind is list:
        return tuple(freeze(v) for v in value)
    return value


_CONTAINERS: frozenset[type[Any]] = frozenset((dict, list))
# Values that hold no references the collector follows.
_ATOMIC: frozenset[type[Any]] = frozenset((str, int, float, bool, type(None)))


def freeze_values(values: Mapping[K, V]) -> dict[K, V]:
    """Freeze each value of ``values`` (errors and ``None`` pass through unchanged).

    The form a batch of payloads takes on its way into a cache: one new outer dict (the
    caller's own) whose values are read-only.
    """
    return {key: freeze(value) for key, value in values.items()}


#: Payloads frozen between two yields to the event loop in :func:`afreeze_values`.
FREEZE_SLICE = 256


async def afreeze_values(values: Mapping[K, V], *, slice_size: int = FREEZE_SLICE) -> dict[K, V]:
    """:func:`freeze_values` that lets the event loop run every ``slice_size`` values.

    Freezing a cold page of plain dicts copies every nested dict; done in one go it was the
    longest callback of the full benchmark and held a manager's event loop all that time
    (``benchmarks/README.md``), so it is cut into slices of a few milliseconds, like the
    planner's rendering. Values that need no copy
    (already frozen, ``None``, errors) pass straight through: a slice of them only does not
    yield.
    """
    out: dict[K, V] = {}
    copied = False
    for n, (key, value) in enumerate(values.items(), 1):
        if type(value) in _CONTAINERS:
            out[key] = freeze(value)
            copied = True
        else:
            out[key] = value  # already frozen (as the planner renders), None or an error
        # A slice without a copy had no work worth a loop turn: an already frozen page goes
        # through in one short pass instead of one turn per slice.
        if copied and n % slice_size == 0:
            copied = False
            await asyncio.sleep(0)
    return out


def thaw(value: Any) -> Any:
    """Return a deep, mutable copy of a (frozen) payload: plain dicts all the way down."""
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value
