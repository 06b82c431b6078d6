"""What a manager's GraphQL layer needs to call promstat's batching: per-request loaders.

A Backend.AI manager resolves a list page in two steps: it reads the page's *rows* (kernel or
agent ids, status, owning agent) from its database, then each row's ``live_stat`` field asks a
per-request DataLoader, which batches the page into one call of a batch function. promstat
supplies the batch functions (:meth:`promstat.service.LiveStats.load_kernels` /
:meth:`~promstat.service.LiveStats.load_agents`, typed here as :class:`StatsSource`); the rows
stay the manager's.

:class:`LoaderManager` mirrors Backend.AI's ``DataLoaderManager`` (``gql_legacy/base.py``): one
loader per request and per batch function (+ keyword arguments), created lazily on first use —
inside the running event loop, which is what aiodataloader needs. :class:`RequestContext`
carries one request's loaders. Rows of terminated kernels (a ``terminated_at``) are answered
from history by :func:`kernel_stat` through one more loader over
:meth:`~promstat.service.LiveStats.load_kernel_stats`. The stack's DataLoader class is plugged
in by :mod:`promstat.integrations.graphene` (extra ``graphene``) or
:mod:`promstat.integrations.strawberry` (extra ``strawberry``); this module imports neither.
The list-page schemas ``promstat serve`` runs on top of this live in :mod:`promstat.apps`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, cast

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "LAST_STAT_VERSION",
    "LEGACY_LIVE_STAT_TTL",
    "BatchLoadFn",
    "KernelRef",
    "LoaderManager",
    "Payload",
    "RequestContext",
    "StatsSource",
    "kernel_stat",
]

Payload = dict[str, Any]
LoaderT = TypeVar("LoaderT")

#: Backend.AI's ``DataLoaderManager`` builds every loader with ``max_batch_size=128``.
DEFAULT_MAX_BATCH_SIZE = 128

#: The batch-function contract: one payload, ``None`` or exception per key, in key order.
BatchLoadFn = Callable[[list[str]], Awaitable[Sequence[Payload | BaseException | None]]]

#: Seconds legacy answered a terminated kernel's ``live_stat``: the Valkey key of its last
#: stats expired 24 h after the agent's last write (``_DEFAULT_EXPIRATION``).
LEGACY_LIVE_STAT_TTL = 86400.0
#: The top-level ``"version"`` legacy's destroy path added to the persisted ``last_stat``.
LAST_STAT_VERSION = 2


class StatsSource(Protocol):
    """The batch functions a schema needs (:class:`promstat.service.LiveStats` has them)."""

    async def load_kernels(
        self, kernel_ids: Sequence[str], *, at: float | None = None
    ) -> list[Payload | BaseException | None]:
        """Legacy kernel live_stat per id, in order: payload, ``None`` or the key's error."""
        ...

    async def load_agents(
        self, agent_ids: Sequence[str], *, at: float | None = None
    ) -> list[Payload | BaseException | None]:
        """Legacy agent live_stat (``{"node", "devices"}``) per id, in order."""
        ...

    async def load_kernel_stats(
        self, pairs: Sequence[tuple[str, float | None]], *, at: float | None = None
    ) -> list[Payload | BaseException | None]:
        """Kernel live_stat per ``(kernel_id, terminated_at or None)``: final stats of
        terminated kernels at their termination time, live ones as ``load_kernels``."""
        ...


class LoaderManager(Generic[LoaderT]):
    """One loader per batch function (+ keyword arguments) for one request.

    The shape of Backend.AI's ``DataLoaderManager.get_loader_by_func``: every resolver that
    asks for the same function shares one loader, so a page's ``live_stat``, ``last_stat``
    (and an agent's ``cpu_cur_pct``/``mem_cur_bytes``) end up in the same batches and each id
    is fetched once per request.

    Args:
        factory: builds a loader around a batch function (the stack's DataLoader class).
    """

    def __init__(self, factory: Callable[[BatchLoadFn], LoaderT]) -> None:
        self._factory = factory
        self._loaders: dict[tuple[object, tuple[tuple[str, Any], ...]], LoaderT] = {}

    def get_loader_by_func(self, fn: BatchLoadFn, **kwargs: Any) -> LoaderT:
        """Return this request's loader for ``fn`` called with ``kwargs``, creating it lazily.

        Call it from a resolver: the loader is then built inside the running event loop.
        """
        key = (fn, tuple(sorted(kwargs.items())))
        loader = self._loaders.get(key)
        if loader is None:
            batch_fn: BatchLoadFn = functools.partial(fn, **kwargs) if kwargs else fn
            loader = self._loaders[key] = self._factory(batch_fn)
        return loader

    def __len__(self) -> int:
        return len(self._loaders)


@dataclass(slots=True)
class RequestContext(Generic[LoaderT]):
    """One request's loaders over the batch functions (build a fresh one per request).

    Attributes:
        stats: the batch functions.
        loaders: this request's loaders.
        at: evaluate every live_stat of the request at this Unix time (``None``: now,
            through the shared cache). Pinned pages are reproducible and bypass the cache.
        extra: anything else the host application wants resolvers to see.
    """

    stats: StatsSource
    loaders: LoaderManager[LoaderT]
    at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def kernel_loader(self) -> LoaderT:
        """The request's loader over ``stats.load_kernels`` (shared by all kernel fields)."""
        return self._loader(self.stats.load_kernels)

    def agent_loader(self) -> LoaderT:
        """The request's loader over ``stats.load_agents`` (shared by all agent fields)."""
        return self._loader(self.stats.load_agents)

    def final_loader(self) -> LoaderT:
        """The request's loader over ``stats.load_kernel_stats``, keyed by
        ``(kernel_id, terminated_at)`` (terminated kernels' live_stat and last_stat)."""
        return self._loader(cast(BatchLoadFn, self.stats.load_kernel_stats))

    def _loader(self, fn: BatchLoadFn) -> LoaderT:
        if self.at is None:
            return self.loaders.get_loader_by_func(fn)
        return self.loaders.get_loader_by_func(fn, at=self.at)


class KernelRef(Protocol):
    """What :func:`kernel_stat` reads of a kernel row."""

    @property
    def id(self) -> str:
        """The kernel id (the loader key)."""
        ...

    @property
    def terminated_at(self) -> float | None:
        """Termination time (Unix seconds) of a terminated kernel, ``None`` while it runs."""
        ...


async def kernel_stat(
    ctx: RequestContext[Any], row: KernelRef, *, last: bool = False
) -> Payload | None:
    """A kernel row's ``live_stat`` (or ``last_stat`` with ``last``), as legacy answered it.

    * Live kernels: the request's kernel loader, for both fields (``last_stat`` is an alias
      of ``live_stat`` while a kernel runs, as in Backend.AI's ``ComputeContainer``).
    * Terminated kernels (``row.terminated_at`` set): their final stats from history
      (:mod:`promstat.final`). ``live_stat`` shows them for :data:`LEGACY_LIVE_STAT_TTL` after
      the termination (legacy's Valkey key lived 24 h), then ``None``; ``last_stat`` is the
      persisted copy: always, with legacy's top-level ``"version": 2`` (a new dict: shared
      cached payloads are never modified).
    """
    if row.terminated_at is None:
        live: Payload | None = await ctx.kernel_loader().load(row.id)
        return live
    now = ctx.at if ctx.at is not None else time.time()
    if not last and now - row.terminated_at > LEGACY_LIVE_STAT_TTL:
        return None
    final: Payload | None = await ctx.final_loader().load((row.id, row.terminated_at))
    if last and final is not None:
        return {**final, "version": LAST_STAT_VERSION}
    return final
