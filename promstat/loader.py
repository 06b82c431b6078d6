"""Batching: a per-request DataLoader and a cross-request coalescing cache below it.

Two layers, because they solve different problems:

* :class:`DataLoader` lives for one GraphQL request. Every ``load(key)`` made in one event-loop
  tick lands in one batch (aiodataloader's semantics, strawberry's structure): keys are
  de-duplicated, split by ``max_batch_size``, and each key gets exactly one value, ``None`` or
  exception. Errors are never cached (a later ``load`` tries again), and when every caller of a
  batch has been cancelled the batch is not sent (or is cancelled in flight).
* :class:`SharedLoader` is shared by all requests of a process. Concurrent loads of the same key
  share one query (single-flight) and results are kept for a short TTL (default: one scrape
  interval — the data cannot change faster) in a bounded LRU. It never keeps errors, nor results
  that came with warnings (a partial answer from Thanos, say).

Both speak the batch-function contract ``async batch_load(keys) -> list[value | None |
Exception]``, so aiodataloader's and strawberry's loaders can sit on top of a
:class:`SharedLoader` unchanged (see :mod:`promstat.integrations`).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Generic, TypeVar

from .errors import BatchSizeMismatchError, PromstatError
from .metrics import PromstatMetrics

__all__ = [
    "BatchLoadFn",
    "DataLoader",
    "FetchResult",
    "SharedLoader",
]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: The batch-function contract: one result per key, in key order.
BatchLoadFn = Callable[[list[K]], Awaitable[Sequence[V | BaseException | None]]]


def _relay(waiter: asyncio.Future[V | None], shared: asyncio.Future[V | None]) -> None:
    if waiter.done():
        return
    if shared.cancelled():
        waiter.cancel()
    elif (exc := shared.exception()) is not None:
        waiter.set_exception(exc)
    else:
        waiter.set_result(shared.result())


@dataclass(slots=True)
class _Batch(Generic[K, V]):
    keys: list[K]
    futures: list[asyncio.Future[V | None]]
    task: asyncio.Task[None] | None = None


class DataLoader(Generic[K, V]):
    """Per-request batching of ``load(key)`` calls made in one event-loop tick.

    Args:
        batch_load_fn: ``async fn(keys) -> list[value | None | Exception]`` with one entry per
            key, in order. An exception instance rejects only its key.
        max_batch_size: split larger batches (they run concurrently); ``None`` = no limit.
        cache: memoise futures per key for the loader's life (errors are always evicted).

    Create one per request. It looks the event loop up on first use, never at construction
    (aiodataloader's "attached to a different loop" trap).
    """

    def __init__(
        self,
        batch_load_fn: BatchLoadFn[K, V],
        *,
        max_batch_size: int | None = None,
        cache: bool = True,
    ) -> None:
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1 or None")
        self._fn = batch_load_fn
        self._max = max_batch_size
        self._cache_enabled = cache
        self._cache: dict[K, asyncio.Future[V | None]] = {}
        self._pending: dict[K, asyncio.Future[V | None]] | None = None
        # per key, the waiter futures handed to callers still waiting (cancelled ones are
        # checked by state, so a cancel is seen at once, before its callbacks run)
        self._waiters: dict[K, list[asyncio.Future[V | None]]] = {}
        self._running: dict[K, _Batch[K, V]] = {}
        # strong references: a task nobody holds can be garbage-collected mid-flight
        self._tasks: set[asyncio.Task[None]] = set()

    def load(self, key: K) -> asyncio.Future[V | None]:
        """Return a future of the value for ``key`` (``None`` if it has none, or its error).

        ``await loader.load(key)``. A plain future rather than a coroutine: a page's
        resolvers call this thousands of times, and a coroutine (plus the task that
        ``gather`` wraps it in) per call is the loader's main cost.
        """
        shared = self._future_for(key)
        if shared.done():
            return shared  # a finished future cannot be cancelled by a caller
        # Each caller gets its own waiter: cancelling it must not cancel the future that
        # other callers of the same key share.
        waiter: asyncio.Future[V | None] = shared.get_loop().create_future()
        self._waiters.setdefault(key, []).append(waiter)
        shared.add_done_callback(partial(_relay, waiter))
        waiter.add_done_callback(partial(self._waiter_done, key, shared))
        return waiter

    async def load_many(self, keys: Iterable[K]) -> list[V | None]:
        """Load several keys in one batch; raise the first error among them."""
        return list(await asyncio.gather(*(self.load(k) for k in keys)))

    def _waiter_done(
        self, key: K, shared: asyncio.Future[V | None], waiter: asyncio.Future[V | None]
    ) -> None:
        waiters = self._waiters.get(key)
        if waiters is not None:
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                del self._waiters[key]
        if waiter.cancelled() and not shared.done():
            self._abandoned(key)

    def clear(self, key: K) -> DataLoader[K, V]:
        """Forget the cached value of ``key``."""
        self._cache.pop(key, None)
        return self

    def clear_all(self) -> DataLoader[K, V]:
        """Forget every cached value."""
        self._cache.clear()
        return self

    def prime(self, key: K, value: V | None) -> DataLoader[K, V]:
        """Cache ``value`` for ``key`` unless a value is already cached."""
        if key not in self._cache:
            fut: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
            fut.set_result(value)
            self._cache[key] = fut
        return self

    # -- internals --------------------------------------------------------------------------

    def _future_for(self, key: K) -> asyncio.Future[V | None]:
        if self._cache_enabled:
            cached = self._cache.get(key)
            if cached is not None:
                return cached
        loop = asyncio.get_running_loop()
        if self._pending is None:
            self._pending = {}
            loop.call_soon(self._dispatch)
        fut = self._pending.get(key)
        if fut is None:
            fut = self._pending[key] = loop.create_future()
            if self._cache_enabled:
                self._cache[key] = fut
        return fut

    def _dispatch(self) -> None:
        pending, self._pending = self._pending or {}, None
        keys: list[K] = []
        futures: list[asyncio.Future[V | None]] = []
        for key, fut in pending.items():
            if fut.done():
                continue
            if not self._wanted(key):  # every caller of this key was cancelled already
                self._evict(key, fut)
                fut.cancel()
                continue
            keys.append(key)
            futures.append(fut)
        size = self._max or len(keys) or 1
        loop = asyncio.get_running_loop()
        for start in range(0, len(keys), size):
            batch: _Batch[K, V] = _Batch(keys[start : start + size], futures[start : start + size])
            for key in batch.keys:
                self._running[key] = batch
            batch.task = loop.create_task(self._run(batch))
            self._tasks.add(batch.task)
            batch.task.add_done_callback(self._tasks.discard)

    def _wanted(self, key: K) -> bool:
        return any(not w.cancelled() for w in self._waiters.get(key, ()))

    def _abandoned(self, key: K) -> None:
        batch = self._running.get(key)
        if batch is None or batch.task is None or batch.task.done():
            return  # not dispatched yet: _dispatch skips keys with no waiters
        if not any(self._wanted(k) for k in batch.keys):
            # Clean up here, not only in _run: a task cancelled before its first step never
            # runs its body, and its futures would stay cached and unresolved forever.
            for k, fut in zip(batch.keys, batch.futures, strict=True):
                self._evict(k, fut)
                fut.cancel()
                if self._running.get(k) is batch:
                    del self._running[k]
            batch.task.cancel()

    async def _run(self, batch: _Batch[K, V]) -> None:
        try:
            results = await self._fn(list(batch.keys))
            if len(results) != len(batch.keys):
                raise BatchSizeMismatchError(expected=len(batch.keys), received=len(results))
        except asyncio.CancelledError:
            for key, fut in zip(batch.keys, batch.futures, strict=True):
                self._evict(key, fut)
                fut.cancel()
            raise
        except Exception as exc:  # the whole batch failed: reject and evict every key
            for key, fut in zip(batch.keys, batch.futures, strict=True):
                self._evict(key, fut)
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: its callers may all have gone
            return
        finally:
            for key in batch.keys:
                if self._running.get(key) is batch:
                    del self._running[key]
        for key, fut, result in zip(batch.keys, batch.futures, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                self._evict(key, fut)  # errors are never cached
                fut.set_exception(result)
                fut.exception()
            else:
                fut.set_result(result)

    def _evict(self, key: K, fut: asyncio.Future[V | None]) -> None:
        if self._cache.get(key) is fut:
            del self._cache[key]


@dataclass(slots=True)
class FetchResult(Generic[K, V]):
    """What a :class:`SharedLoader` fetch function returns for a list of keys.

    Attributes:
        values: one entry per key fetched: value, ``None`` or exception.
        uncacheable: keys whose value must not be cached (came with warnings).
    """

    values: dict[K, V | PromstatError | None]
    uncacheable: set[K] = field(default_factory=set)


class SharedLoader(Generic[K, V]):
    """Cross-request single-flight + short-TTL cache in front of a fetch function.

    Args:
        fetch: ``async fetch(keys) -> FetchResult`` answering every key it is given.
        ttl: seconds a value stays fresh (default 15: one scrape interval). 0 disables caching
            but keeps single-flight.
        max_entries: LRU bound of the cache.
        metrics: counters for hits and misses.
        clock: monotonic clock (injectable for tests).
    """

    def __init__(
        self,
        fetch: Callable[[list[K]], Awaitable[FetchResult[K, V]]],
        *,
        ttl: float = 15.0,
        max_entries: int = 100_000,
        metrics: PromstatMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.ttl = ttl
        self.max_entries = max_entries
        self.metrics = metrics or PromstatMetrics()
        self._clock = clock
        self._cache: OrderedDict[K, tuple[float, V | None]] = OrderedDict()
        self._inflight: dict[K, asyncio.Future[V | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._cache)

    def invalidate(self, keys: Iterable[K] | None = None) -> None:
        """Drop cached values (all of them when ``keys`` is None)."""
        if keys is None:
            self._cache.clear()
        else:
            for key in keys:
                self._cache.pop(key, None)

    async def batch_load(self, keys: Sequence[K]) -> list[V | BaseException | None]:
        """Answer ``keys`` from cache, from in-flight fetches, or with one new fetch.

        Returns one value, ``None`` or exception per key, in key order (the batch-function
        contract). Never raises for a key's own failure; cancellation of this call does not
        cancel a fetch other callers share.
        """
        now = self._clock()
        answers: dict[K, V | None] = {}
        waiting: dict[K, asyncio.Future[V | None]] = {}
        missing: list[K] = []
        hits = 0
        for key in dict.fromkeys(keys):
            entry = self._cache.get(key)
            if entry is not None and now - entry[0] < self.ttl:
                answers[key] = entry[1]
                self._cache.move_to_end(key)
                hits += 1
                continue
            fut = self._inflight.get(key)
            if fut is not None:
                waiting[key] = fut
            else:
                missing.append(key)
        self.metrics.on_cache(hits=hits, misses=len(missing))
        if missing:
            loop = asyncio.get_running_loop()
            futs = {key: loop.create_future() for key in missing}
            self._inflight.update(futs)
            task = loop.create_task(self._run(missing, futs))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            waiting.update(futs)
        out: list[V | BaseException | None] = []
        if waiting:
            await asyncio.wait([asyncio.shield(f) for f in set(waiting.values())])
        for key in keys:
            if key in answers:
                out.append(answers[key])
                continue
            fut = waiting[key]
            exc = fut.exception()
            out.append(exc if exc is not None else fut.result())
        return out

    async def _run(self, keys: list[K], futs: dict[K, asyncio.Future[V | None]]) -> None:
        try:
            result = await self._fetch(keys)
        except BaseException as exc:  # the whole fetch failed: every key gets the error
            err = exc if isinstance(exc, Exception) else PromstatError(f"fetch aborted: {exc!r}")
            for key, fut in futs.items():
                if self._inflight.get(key) is fut:
                    del self._inflight[key]
                if not fut.done():
                    fut.set_exception(err)
                    fut.exception()  # mark retrieved: callers may all have gone
            if not isinstance(exc, Exception):
                raise
            return
        stamp = self._clock()
        for key, fut in futs.items():
            if self._inflight.get(key) is fut:
                del self._inflight[key]
            value = result.values.get(key)
            if isinstance(value, BaseException):
                fut.set_exception(value)
                fut.exception()
                continue
            fut.set_result(value)
            if self.ttl > 0 and key not in result.uncacheable:
                self._cache[key] = (stamp, value)
                self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
