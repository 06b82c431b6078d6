"""The legacy list-page schema of ``promstat serve`` on graphene 3 (extra ``graphene``).

The subset a kernel or agent list page uses, with Backend.AI's field names and types
(``auto_camelcase=False``, live stats as ``JSONString``)::

    compute_container_list(limit: Int!, offset: Int!, status: String): ComputeContainerList
        ComputeContainerList { items: [ComputeContainer], total_count: Int! }
        ComputeContainer { id, agent, status, terminated_at: DateTime,
                           live_stat: JSONString, last_stat: JSONString }
    agent_list(limit: Int!, offset: Int!, status: String): AgentList
        AgentList { items: [Agent], total_count: Int! }
        Agent { id, status, live_stat: JSONString, cpu_cur_pct: Float, mem_cur_bytes: Float }

Rows come from the context's :class:`~promstat.apps.registry.Registry`; stats from the
aiodataloader loaders of :mod:`promstat.integrations.graphene`. ``live_stat`` and
``last_stat`` share the kernel loader (terminated kernels: one loader over
``stats.load_kernel_stats``, see :func:`~promstat.integrations.kernel_stat`);
``Agent.live_stat``, ``cpu_cur_pct`` and ``mem_cur_bytes`` share the agent loader, so a page
costs one batch per 128 ids and no field adds queries (legacy built one loader per agent field
and fetched the same stats three times).

A ``JSONString`` resolver returns the payload dict; graphene serialises it with ``json.dumps``,
so the wire value is a JSON *string*, or ``null`` without data. A batch error surfaces as a
GraphQL error on that field (its value ``null``); other rows are unaffected.

Usage::

    executor = GrapheneExecutor(stats, registry)
    result = await executor.execute("{ compute_container_list(limit: 50, offset: 0) { ... } }")
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import graphene
from aiodataloader import DataLoader

from promstat.apps.registry import AgentRow, KernelRow, Page, Registry
from promstat.apps.schema import (
    ListContext,
    SchemaExecutor,
    agent_cpu_pct,
    agent_mem_bytes,
)
from promstat.integrations import (
    DEFAULT_MAX_BATCH_SIZE,
    LoaderManager,
    Payload,
    StatsSource,
    kernel_stat,
)
from promstat.integrations.graphene import loader_factory

__all__ = [
    "Agent",
    "AgentList",
    "ComputeContainer",
    "ComputeContainerList",
    "GrapheneContext",
    "GrapheneExecutor",
    "Queries",
    "build_schema",
    "make_context",
]

#: The context graphene resolvers receive (``info.context``).
GrapheneContext = ListContext[DataLoader[str, Any]]


def make_context(
    stats: StatsSource,
    registry: Registry,
    *,
    max_batch_size: int | None = DEFAULT_MAX_BATCH_SIZE,
    at: float | None = None,
) -> GrapheneContext:
    """A fresh context for one request (its own, still empty, set of loaders).

    Args:
        stats: the batch functions (a :class:`~promstat.service.LiveStats`).
        registry: where list rows come from.
        max_batch_size: ids per batch call (Backend.AI: 128); ``None`` = one batch per page.
        at: pin every live_stat of this request to this Unix time.
    """
    loaders = LoaderManager(loader_factory(max_batch_size))
    return ListContext(stats, loaders, at, registry=registry)


async def _agent_stat(root: AgentRow, info: graphene.ResolveInfo) -> Payload | None:
    ctx: GrapheneContext = info.context
    result: Payload | None = await ctx.agent_loader().load(root.id)
    return result


class ComputeContainer(graphene.ObjectType):  # type: ignore[misc]
    """A kernel (container) row with its live statistics."""

    id = graphene.ID(required=True)
    agent = graphene.String()
    status = graphene.String()
    terminated_at = graphene.DateTime()
    live_stat = graphene.JSONString(description="Legacy live_stat, a JSON-encoded string.")
    last_stat = graphene.JSONString(
        description="live_stat while running; the final stats once terminated."
    )

    @staticmethod
    def resolve_terminated_at(root: KernelRow, info: graphene.ResolveInfo) -> datetime | None:
        """When the kernel terminated (UTC), or None while it runs."""
        t = root.terminated_at
        return None if t is None else datetime.fromtimestamp(t, tz=UTC)

    @staticmethod
    async def resolve_live_stat(root: KernelRow, info: graphene.ResolveInfo) -> Payload | None:
        """The kernel's live_stat dict (serialised to a JSON string by graphene) or None;
        a terminated kernel's final stats for 24 h, as legacy's Valkey key."""
        return await kernel_stat(info.context, root)

    @staticmethod
    async def resolve_last_stat(root: KernelRow, info: graphene.ResolveInfo) -> Payload | None:
        """Same value as ``live_stat`` while running; a terminated kernel's final stats."""
        return await kernel_stat(info.context, root, last=True)


class ComputeContainerList(graphene.ObjectType):  # type: ignore[misc]
    """One page of kernels."""

    items = graphene.List(ComputeContainer, required=True)
    total_count = graphene.Int(required=True)


class Agent(graphene.ObjectType):  # type: ignore[misc]
    """An agent row with its node/device live statistics."""

    id = graphene.ID(required=True)
    status = graphene.String()
    live_stat = graphene.JSONString(description="Legacy agent live_stat, a JSON string.")
    cpu_cur_pct = graphene.Float()
    mem_cur_bytes = graphene.Float()

    @staticmethod
    async def resolve_live_stat(root: AgentRow, info: graphene.ResolveInfo) -> Payload | None:
        """The agent's ``{"node", "devices"}`` dict or None."""
        return await _agent_stat(root, info)

    @staticmethod
    async def resolve_cpu_cur_pct(root: AgentRow, info: graphene.ResolveInfo) -> float:
        """``float(stat["node"]["cpu_util"]["pct"])``, 0 without data (same loader)."""
        return agent_cpu_pct(await _agent_stat(root, info))

    @staticmethod
    async def resolve_mem_cur_bytes(root: AgentRow, info: graphene.ResolveInfo) -> float:
        """``float(stat["node"]["mem"]["current"])``, 0 without data (same loader)."""
        return agent_mem_bytes(await _agent_stat(root, info))


class AgentList(graphene.ObjectType):  # type: ignore[misc]
    """One page of agents."""

    items = graphene.List(Agent, required=True)
    total_count = graphene.Int(required=True)


class Queries(graphene.ObjectType):  # type: ignore[misc]
    """Root query type (the legacy schema's list queries used by list pages)."""

    compute_container_list = graphene.Field(
        ComputeContainerList,
        limit=graphene.Int(required=True),
        offset=graphene.Int(required=True),
        status=graphene.String(),
    )
    agent_list = graphene.Field(
        AgentList,
        limit=graphene.Int(required=True),
        offset=graphene.Int(required=True),
        status=graphene.String(),
    )

    @staticmethod
    async def resolve_compute_container_list(
        root: object, info: graphene.ResolveInfo, limit: int, offset: int, status: str | None = None
    ) -> Page[KernelRow]:
        """A page of kernel rows from the registry."""
        ctx: GrapheneContext = info.context
        return await ctx.registry.list_kernels(limit=limit, offset=offset, status=status)

    @staticmethod
    async def resolve_agent_list(
        root: object, info: graphene.ResolveInfo, limit: int, offset: int, status: str | None = None
    ) -> Page[AgentRow]:
        """A page of agent rows from the registry."""
        ctx: GrapheneContext = info.context
        return await ctx.registry.list_agents(limit=limit, offset=offset, status=status)


def build_schema() -> graphene.Schema:
    """The graphene schema (snake_case field names, as Backend.AI's legacy schema)."""
    return graphene.Schema(query=Queries, auto_camelcase=False)


class GrapheneExecutor(SchemaExecutor):
    """Runs GraphQL requests against :func:`build_schema`, one fresh context per request.

    Args:
        stats: the batch functions (a :class:`~promstat.service.LiveStats`).
        registry: where list rows come from.
        max_batch_size: ids per batch call (Backend.AI: 128).
    """

    stack = "graphene"

    schema_factory = staticmethod(build_schema)
    context_factory = staticmethod(make_context)

    async def _run(
        self, query: str, variables: dict[str, Any] | None, operation_name: str | None, ctx: Any
    ) -> Any:
        return await self.schema.execute_async(
            query,
            variable_values=variables,
            operation_name=operation_name,
            context_value=ctx,
        )
