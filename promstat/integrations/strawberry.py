"""The strawberry-graphql side of the loaders (extra ``strawberry``).

The same per-request loaders as :mod:`promstat.integrations.graphene`, built from
``strawberry.dataloader.DataLoader(load_fn=stats.load_kernels, max_batch_size=128)``, created
lazily in the resolver. strawberry's loader keeps a failed key's exception in its cache for
the loader's life (aiodataloader evicts it); with one loader per request that means "an error
is not retried within the same request", which is the behaviour we want anyway. Never keep
these loaders across requests.

The legacy list-page schema ``promstat serve`` runs on this is
:mod:`promstat.apps.schema_strawberry`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from strawberry.dataloader import DataLoader

from promstat.integrations import (
    DEFAULT_MAX_BATCH_SIZE,
    BatchLoadFn,
    LoaderManager,
    RequestContext,
    StatsSource,
)

__all__ = ["StrawberryContext", "loader_factory", "make_context"]

#: A request context whose loaders are strawberry's.
StrawberryContext = RequestContext[DataLoader[str, Any]]


def loader_factory(
    max_batch_size: int | None = DEFAULT_MAX_BATCH_SIZE,
) -> Callable[[BatchLoadFn], DataLoader[str, Any]]:
    """What builds each strawberry loader of a :class:`~promstat.integrations.LoaderManager`.

    Args:
        max_batch_size: ids per batch call (Backend.AI: 128); ``None`` = one batch per page.
    """

    def factory(fn: BatchLoadFn) -> DataLoader[str, Any]:
        return DataLoader(load_fn=cast(Any, fn), max_batch_size=max_batch_size)

    return factory


def make_context(
    stats: StatsSource,
    *,
    max_batch_size: int | None = DEFAULT_MAX_BATCH_SIZE,
    at: float | None = None,
) -> StrawberryContext:
    """A fresh context for one request (its own, still empty, set of loaders).

    Args:
        stats: the batch functions (a :class:`~promstat.service.LiveStats`).
        max_batch_size: ids per batch call (Backend.AI: 128); ``None`` = one batch per page.
        at: pin every live_stat of this request to this Unix time.
    """
    return RequestContext(stats, LoaderManager(loader_factory(max_batch_size)), at)
