"""Event-loop instrumentation: how long the longest single callback held the loop.

asyncio runs every ready callback (a task step, a transport's ``data_received``, a timer) as a
:class:`asyncio.Handle`; while one runs, nothing else on the loop can. :class:`LoopWatch`
times every ``Handle._run`` while it is active, like asyncio's debug-mode
``slow_callback_duration`` report but without debug mode's other costs, and keeps the longest
ones with a short description of what ran.

It also times the garbage collector's runs meanwhile (``gc.callbacks``): a collection runs
inside whatever callback allocated last, and a full one walks the whole process heap.

Usage::

    with LoopWatch() as watch:
        await stats.load_kernels(ids)
    print(watch.longest_ms, watch.slowest)
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

__all__ = ["LoopWatch"]

_Run = Callable[[asyncio.Handle], None]


class LoopWatch:
    """Times every event-loop callback run while the context is active (any loop, this thread).

    Wall time is what the loop's other work waited; on a shared machine it also counts time
    the process was not scheduled, so the CPU time this thread spent in each callback is kept
    too (``longest_cpu``): the callback's own work, whatever the neighbours do.

    Attributes:
        longest: seconds of the longest callback (wall clock).
        longest_cpu: CPU seconds of the most expensive callback (this thread).
        callbacks: callbacks run.
        slowest: up to ``keep`` ``(seconds, description)`` of the slowest callbacks, slowest
            first.
        over: callbacks longer than ``threshold`` seconds.
        gc_seconds: time spent in garbage collections while active.
        gc_longest: the longest single collection, seconds.
        gc_collections: collections per generation (0, 1, 2).
    """

    def __init__(self, *, threshold: float = 0.020, keep: int = 5) -> None:
        self.threshold = threshold
        self.keep = keep
        self.longest = 0.0
        self.longest_cpu = 0.0
        self.callbacks = 0
        self.over = 0
        self.slowest: list[tuple[float, str]] = []
        self.gc_seconds = 0.0
        self.gc_longest = 0.0
        self.gc_collections = [0, 0, 0]
        self._gc_started = 0.0
        self._original: _Run | None = None

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        seconds = time.perf_counter() - self._gc_started
        self.gc_seconds += seconds
        self.gc_longest = max(self.gc_longest, seconds)
        generation = info.get("generation", 0)
        if 0 <= generation < len(self.gc_collections):
            self.gc_collections[generation] += 1

    @property
    def longest_ms(self) -> float:
        """The longest callback in milliseconds."""
        return round(self.longest * 1000, 2)

    def _record(self, seconds: float, cpu: float, handle: asyncio.Handle) -> None:
        self.longest = max(self.longest, seconds)
        if seconds > self.threshold:
            self.over += 1
        if len(self.slowest) < self.keep or seconds > self.slowest[-1][0]:
            # The description is built only for the few slow ones: repr() is not free.
            self.slowest.append((seconds, f"{_describe(handle)} (cpu {cpu * 1000:.1f} ms)"))
            self.slowest.sort(key=lambda item: -item[0])
            del self.slowest[self.keep :]

    def __enter__(self) -> LoopWatch:
        original: _Run = asyncio.events.Handle._run
        self._original = original
        watch = self
        clock, cpu_clock = time.perf_counter, time.thread_time

        def _run(handle: asyncio.Handle) -> None:
            t0, c0 = clock(), cpu_clock()
            try:
                original(handle)
            finally:
                seconds, cpu = clock() - t0, cpu_clock() - c0
                watch.callbacks += 1
                watch.longest_cpu = max(watch.longest_cpu, cpu)
                if seconds > watch.longest * 0.5 or seconds > watch.threshold:
                    watch._record(seconds, cpu, handle)

        asyncio.events.Handle._run = _run  # type: ignore[method-assign,assignment]
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._original is not None:
            asyncio.events.Handle._run = self._original  # type: ignore[method-assign,assignment]
            self._original = None

    def summary(self) -> dict[str, Any]:
        """The measurements as plain data (for a report)."""
        return {
            "longest_ms": self.longest_ms,
            "longest_cpu_ms": round(self.longest_cpu * 1000, 2),
            "callbacks": self.callbacks,
            "over_threshold": self.over,
            "threshold_ms": round(self.threshold * 1000, 1),
            "slowest": [(round(s * 1000, 2), what) for s, what in self.slowest],
            "gc_ms": round(self.gc_seconds * 1000, 2),
            "gc_longest_ms": round(self.gc_longest * 1000, 2),
            "gc_collections": list(self.gc_collections),
        }


def _describe(handle: asyncio.Handle) -> str:
    callback = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        code = getattr(coro, "cr_code", None)
        return f"task {getattr(code, 'co_qualname', None) or owner.get_name()}"
    return getattr(callback, "__qualname__", None) or repr(callback)[:80]
