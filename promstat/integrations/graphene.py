"""The graphene 3 + aiodataloader side of the loaders (extra ``graphene``).

Backend.AI's legacy schema runs on graphene with aiodataloader; its ``DataLoaderManager``
builds, per request and per batch function, an ``aiodataloader.DataLoader(batch_load_fn=...,
max_batch_size=128)``. :func:`make_context` gives a resolver the same, over promstat's batch
functions: ``ctx.kernel_loader().load(kernel_id)`` (``live_stat`` and ``last_stat`` share it;
terminated kernels through :func:`~promstat.integrations.kernel_stat`),
``ctx.agent_loader().load(agent_id)`` (``live_stat``, ``cpu_cur_pct`` and ``mem_cur_bytes``
share it), so a page costs one batch per 128 ids and no field adds queries.

Loaders are created lazily by the first resolver that needs one, so inside the running loop:
aiodataloader binds the loop at construction. A batch error surfaces as a GraphQL error on
that field (its value ``null``); other rows are unaffected.

Usage::

    ctx = make_context(stats)  # per request; pass it as the context (or keep it in yours)
    payload = await kernel_stat(ctx, row)  # in a live_stat resolver

The legacy list-page schema ``promstat serve`` runs on this is
:mod:`promstat.apps.schema_graphene`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from aiodataloader import DataLoader

from promstat.integrations import (
    DEFAULT_MAX_BATCH_SIZE,
    BatchLoadFn,
    LoaderManager,
    RequestContext,
    StatsSource,
)

__all__ = ["GrapheneContext", "loader_factory", "make_context"]

#: A request context whose loaders are aiodataloader's.
GrapheneContext = RequestContext[DataLoader[str, Any]]


def loader_factory(
    max_batch_size: int | None = DEFAULT_MAX_BATCH_SIZE,
) -> Callable[[BatchLoadFn], DataLoader[str, Any]]:
    """What builds each aiodataloader loader of a :class:`~promstat.integrations.LoaderManager`.

    Args:
        max_batch_size: ids per batch call (Backend.AI: 128); ``None`` = one batch per page.
    """

    def factory(fn: BatchLoadFn) -> DataLoader[str, Any]:
        # Explicit loop: the resolver runs inside it, and aiodataloader would otherwise call
        # the deprecated get_event_loop() (wrong loop when built outside one).
        return DataLoader(
            batch_load_fn=cast(Any, fn),
            max_batch_size=max_batch_size,
            loop=asyncio.get_running_loop(),
        )

    return factory


def make_context(
    stats: StatsSource,
    *,
    max_batch_size: int | None = DEFAULT_MAX_BATCH_SIZE,
    at: float | None = None,
) -> GrapheneContext:
    """A fresh context for one request (its own, still empty, set of loaders).

    Args:
        stats: the batch functions (a :class:`~promstat.service.LiveStats`).
        max_batch_size: ids per batch call (Backend.AI: 128); ``None`` = one batch per page.
        at: pin every live_stat of this request to this Unix time.
    """
    return RequestContext(stats, LoaderManager(loader_factory(max_batch_size)), at)
