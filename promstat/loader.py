"""Batching: a per-request DataLoader and a cross-request coalescing cache below it.

Two layers, because they solve different problems:

* :class:`DataLoader` lives for one GraphQL request. Every ``load(key)`` made in one event-loop
  tick lands in one batch (aiodataloader's semantics, strawberry's structure): keys are
  de-duplicated, split by ``max_batch_size``, and each key gets exactly one value, ``None`` or
  exception. Errors are never cached (a later ``load`` tries again), and when every caller of a
  batch has been cancelled the batch is not sent (or is cancelled in flight).
* :class:`SharedLoader` is shared by all requests of a process. Concurrent loads of the same key
  share one query (single-flight) and results are kept for a short TTL (default: one scrape
  interval — the data cannot change faster). It never keeps errors, nor results that came with
  warnings (a partial answer from Thanos, say). Its memory is bounded twice: entries are kept in
  write order, and since every entry lives the same TTL the expired ones are always at the front,
  so each write (and each load) drops them there in O(expired); and ``max_entries`` caps what a
  burst of distinct keys can add within one TTL (default :data:`DEFAULT_MAX_ENTRIES`, sized in
  bytes below). ``aclose()`` cancels its fetches; their waiters get :class:`ClosedError`.

Failures are quiet: every future that carries a key's error is read before it is dropped, so
asyncio never reports "Future exception was never retrieved", however many callers gave up.

Both speak the batch-function contract ``async batch_load(keys) -> list[value | None |
Exception]``, so aiodataloader's and strawberry's loaders can sit on top of a
:class:`SharedLoader` unchanged (see :mod:`promstat.integrations`).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from promstat.errors import (
    BatchSizeMismatchError,
    ClosedError,
    ConfigError,
    PromstatError,
    check_seconds,
)
from promstat.selfmetrics import PromstatMetrics

__all__ = [
    "DEFAULT_AGENT_CACHE_ENTRIES",
    "DEFAULT_MAX_ENTRIES",
    "BatchLoadFn",
    "CacheConfig",
    "DataLoader",
    "FetchResult",
    "SharedLoader",
]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: The batch-function contract: one result per key, in key order.
BatchLoadFn = Callable[[list[K]], Awaitable[Sequence[V | BaseException | None]]]

#: Default bound of a :class:`SharedLoader`: 16,384 entries, room for a fleet-wide
#: 10,000-kernel page plus 60% churn within one TTL, at a memory cost a manager can carry (what
#: a payload weighs is measured in ``benchmarks/README.md``, "Memory bounds"). The TTL purge
#: keeps a steady manager far below it (only keys written within the last TTL stay).
DEFAULT_MAX_ENTRIES = 16_384

#: Default bound of the agent cache. An agent payload carries every device, so it weighs many
#: kernel payloads: 2,048 agents fill about as much memory as the full kernel cache
#: (``benchmarks/README.md``, "Memory bounds"); fleets have far fewer agents than kernels.
DEFAULT_AGENT_CACHE_ENTRIES = 2_048


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The shared caches of :class:`~promstat.service.LiveStats` (one per level).

    Attributes:
        ttl: seconds a live value is shared across requests; ``None`` (the default): one
            rule evaluation interval of the profile read with. 0 keeps single-flight but
            caches nothing (and turns refresh-ahead off: nothing may be kept).
        kernel_entries: bound of the kernel cache (:data:`DEFAULT_MAX_ENTRIES`).
        agent_entries: bound of the agent cache (:data:`DEFAULT_AGENT_CACHE_ENTRIES`).

    Raises:
        ConfigError: a field is out of range (the message names it).
    """

    ttl: float | None = None
    kernel_entries: int = DEFAULT_MAX_ENTRIES
    agent_entries: int = DEFAULT_AGENT_CACHE_ENTRIES

    def __post_init__(self) -> None:
        check_seconds("CacheConfig.ttl", self.ttl, optional=True)
        for name in ("kernel_entries", "agent_entries"):
            if getattr(self, name) < 1:
                raise ConfigError(f"CacheConfig.{name} must be >= 1, not {getattr(self, name)}")


def _copy_outcome(shared: asyncio.Future[V | None], waiter: asyncio.Future[V | None]) -> None:
    """Give ``waiter`` the outcome of the finished ``shared`` future."""
    if waiter.done():
        return
    if shared.cancelled():
        waiter.cancel()
    elif (exc := shared.exception()) is not None:
        waiter.set_exception(exc)
        waiter.exception()  # retrieved: a caller that went away leaves no log line
    else:
        waiter.set_result(shared.result())


class _Waiter(asyncio.Future):  # type: ignore[type-arg]
    """The future one ``load`` call gets: the key's outcome, cancellable on its own.

    A subclass rather than a plain future with done-callbacks: the loader hears of a
    cancellation in :meth:`cancel` itself (``Task.cancel`` and ``gather`` call it), and the
    outcome is copied in when the batch lands. Two callbacks per load, each with a copied
    ``Context`` and a ``partial``, made every pending key several GC-tracked objects; with
    many pages in flight, full collections over them took most of the process' CPU (the
    polling benchmark; see ``benchmarks/README.md``).
    """

    __slots__ = ("_key", "_loader", "_shared")

    def __init__(
        self, loader: DataLoader[Any, Any], key: Hashable, shared: asyncio.Future[Any]
    ) -> None:
        super().__init__(loop=shared.get_loop())
        self._loader = loader
        self._key = key
        self._shared = shared

    def cancel(self, msg: Any = None) -> bool:
        """Cancel this caller's wait; the last caller of a key lets its batch go."""
        if not super().cancel(msg):
            return False
        self._loader._waiter_cancelled(self)
        return True


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
        # per key, the waiter (or a list of them) handed to callers still waiting; a cancelled
        # waiter leaves at once, in its cancel(), and the rest are answered when the key lands
        self._waiters: dict[K, _Waiter | list[_Waiter]] = {}
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
        # other callers of the same key share. One waiter is stored bare (the common case: a
        # page loads each key once), more in a list.
        waiter = _Waiter(self, key, shared)
        entry = self._waiters.get(key)
        if entry is None:
            self._waiters[key] = waiter
        elif isinstance(entry, list):
            entry.append(waiter)
        else:
            self._waiters[key] = [entry, waiter]
        return waiter

    async def load_many(self, keys: Iterable[K]) -> list[V | None]:
        """Load several keys in one batch; raise the first error among them."""
        return list(await asyncio.gather(*(self.load(k) for k in keys)))

    def _waiter_cancelled(self, waiter: _Waiter) -> None:
        key: K = waiter._key  # type: ignore[assignment]
        entry = self._waiters.get(key)
        if entry is waiter:
            del self._waiters[key]
        elif isinstance(entry, list) and waiter in entry:
            entry.remove(waiter)
            if not entry:
                del self._waiters[key]
        if key not in self._waiters and not waiter._shared.done():
            self._abandoned(key)

    def _relay(self, key: K, shared: asyncio.Future[V | None]) -> None:
        """Hand the finished ``shared`` future's outcome to every caller still waiting on it.

        Called wherever a shared future is resolved. Waiters of the same key on another
        shared future (a later tick's, with ``cache=False``) stay for theirs.
        """
        entry = self._waiters.get(key)
        if entry is None:
            return
        if not isinstance(entry, list):
            if entry._shared is shared:
                del self._waiters[key]
                _copy_outcome(shared, entry)
            return
        mine = [w for w in entry if w._shared is shared]
        rest = [w for w in entry if w._shared is not shared]
        if rest:
            self._waiters[key] = rest
        else:
            del self._waiters[key]
        for waiter in mine:
            _copy_outcome(shared, waiter)

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
                self._relay(key, fut)
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
        # A cancelled waiter leaves the table in its cancel(): any entry is a live caller.
        return key in self._waiters

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
                self._relay(k, fut)
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
                self._relay(key, fut)
            raise
        except Exception as exc:  # the whole batch failed: reject and evict every key
            for key, fut in zip(batch.keys, batch.futures, strict=True):
                self._evict(key, fut)
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: its callers may all have gone
                self._relay(key, fut)
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
            self._relay(key, fut)

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


@dataclass(slots=True, eq=False)
class _Flight(Generic[K, V]):
    """One fetch shared by every caller waiting on any of its keys.

    One future per fetch, not per key: a 5,000-kernel page used to create, resolve and
    wait on 5,000 futures (tens of milliseconds on the event loop, and garbage for the
    collector). ``done`` only ever gets ``None`` as its result, so no exception can be left
    unretrieved on it; answers are read from ``values`` or ``error``.
    """

    done: asyncio.Future[None]
    values: Mapping[K, V | PromstatError | None] = field(default_factory=dict)
    error: BaseException | None = None

    def answer(self, key: K) -> V | BaseException | None:
        """The key's value, ``None`` or error; a cancelled flight answers ClosedError."""
        if self.error is not None:
            return self.error
        return self.values.get(key)


class SharedLoader(Generic[K, V]):
    """Cross-request single-flight + short-TTL cache in front of a fetch function.

    Args:
        fetch: ``async fetch(keys) -> FetchResult`` answering every key it is given.
        ttl: seconds a value stays fresh (default 15: one scrape interval). 0 disables caching
            but keeps single-flight.
        max_entries: bound of the cache; beyond it the oldest written entries go first (they
            are the next to expire anyway).
        metrics: counters for hits and misses.
        clock: monotonic clock (injectable for tests).
        name: what error messages call this loader.
    """

    def __init__(
        self,
        fetch: Callable[[list[K]], Awaitable[FetchResult[K, V]]],
        *,
        ttl: float = 15.0,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        metrics: PromstatMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "SharedLoader",
    ) -> None:
        self._fetch = fetch
        self.ttl = ttl
        self.max_entries = max_entries
        self.metrics = metrics or PromstatMetrics()
        self.name = name
        self._clock = clock
        # Write order, not use order: every entry lives `ttl`, so the expired ones are always
        # at the front and a purge stops at the first fresh one.
        self._cache: OrderedDict[K, tuple[float, V | None]] = OrderedDict()
        self._inflight: dict[K, _Flight[K, V]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def inflight(self) -> int:
        """Keys being fetched right now."""
        return len(self._inflight)

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    def invalidate(self, keys: Iterable[K] | None = None) -> None:
        """Drop cached values (all of them when ``keys`` is None)."""
        if keys is None:
            self._cache.clear()
        else:
            for key in keys:
                self._cache.pop(key, None)

    def purge(self, now: float | None = None) -> int:
        """Drop expired entries now (writes and loads do it as they go); returns how many."""
        return self._purge(self._clock() if now is None else now)

    def _purge(self, now: float) -> int:
        cache, limit, dropped = self._cache, now - self.ttl, 0
        while cache:
            stamp = cache[next(iter(cache))][0]
            if stamp > limit:
                break
            cache.popitem(last=False)
            dropped += 1
        return dropped

    async def batch_load(self, keys: Sequence[K]) -> list[V | BaseException | None]:
        """Answer ``keys`` from cache, from in-flight fetches, or with one new fetch.

        Returns one value, ``None`` or exception per key, in key order (the batch-function
        contract). Never raises for a key's own failure; cancellation of this call does not
        cancel a fetch other callers share.

        Raises:
            ClosedError: :meth:`aclose` was called.
        """
        if self._closed:
            raise ClosedError(what=self.name)
        now = self._clock()
        if self._cache:
            self._purge(now)
        answers: dict[K, V | None] = {}
        waiting: dict[K, _Flight[K, V]] = {}
        missing: list[K] = []
        hits = 0
        cache, inflight, ttl = self._cache, self._inflight, self.ttl
        for key in dict.fromkeys(keys):
            entry = cache.get(key)
            if entry is not None and now - entry[0] < ttl:
                answers[key] = entry[1]
                hits += 1
                continue
            flight = inflight.get(key)
            if flight is not None:
                waiting[key] = flight
            else:
                missing.append(key)
        self.metrics.on_cache(hits=hits, misses=len(missing))
        if missing:
            loop = asyncio.get_running_loop()
            flight = _Flight(loop.create_future())
            new = dict.fromkeys(missing, flight)
            inflight.update(new)
            waiting.update(new)
            task = loop.create_task(self._run(missing, flight))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if waiting:
            # asyncio.wait never cancels what it waits for, so a caller that goes away leaves
            # the shared fetch running for the others; the flights' futures never hold an
            # exception, so nothing is ever left unretrieved ("Future exception was never
            # retrieved" floods during an outage came from per-key shield futures).
            await asyncio.wait({f.done for f in set(waiting.values())})
        out: list[V | BaseException | None] = []
        for key in keys:
            if key in answers:
                out.append(answers[key])
            else:
                out.append(waiting[key].answer(key))
        return out

    async def aclose(self) -> None:
        """Cancel in-flight fetches (their waiters get :class:`ClosedError`), drop the cache.

        Idempotent. Later :meth:`batch_load` calls raise :class:`ClosedError`.
        """
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        # A task cancelled before its first step never ran its handler: answer its keys here.
        closed = ClosedError(what=self.name)
        for flight in {id(f): f for f in self._inflight.values()}.values():
            if not flight.done.done():
                flight.error = closed
                flight.done.set_result(None)
        self._inflight.clear()
        self._cache.clear()

    def _land(self, keys: list[K], flight: _Flight[K, V]) -> None:
        """Take ``flight``'s keys off the in-flight map and wake its waiters."""
        inflight = self._inflight
        for key in keys:
            if inflight.get(key) is flight:
                del inflight[key]
        if not flight.done.done():
            flight.done.set_result(None)

    async def _run(self, keys: list[K], flight: _Flight[K, V]) -> None:
        try:
            result = await self._fetch(keys)
        except BaseException as exc:  # the whole fetch failed: every key gets the error
            if isinstance(exc, Exception):
                flight.error = exc
            elif self._closed:
                flight.error = ClosedError(what=self.name)
            else:
                flight.error = PromstatError(f"fetch aborted: {exc!r}")
            self._land(keys, flight)
            if not isinstance(exc, Exception):
                raise
            return
        values = result.values
        flight.values = values
        self._land(keys, flight)
        if self.ttl <= 0:
            return
        stamp = self._clock()
        cache, uncacheable = self._cache, result.uncacheable
        for key in keys:
            value = values.get(key)
            if isinstance(value, BaseException) or key in uncacheable:
                continue  # errors and partial answers are never cached
            cache[key] = (stamp, value)
            cache.move_to_end(key)
        self._purge(stamp)
        while len(cache) > self.max_entries:
            cache.popitem(last=False)
