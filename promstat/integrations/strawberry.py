"""The same legacy list-page schema on strawberry-graphql (extra ``strawberry``).

Field names, types and wire values match :mod:`promstat.integrations.graphene`, so one query
works on both stacks (``auto_camel_case=False``, as Backend.AI's legacy schema). Live stats
are a custom ``JSONString`` scalar holding the JSON *text* (:func:`~promstat.integrations.
json_string`): ``strawberry.scalars.JSON`` would put an object on the wire, which is not the
legacy shape.

Loaders: per request and per batch function, a ``strawberry.dataloader.DataLoader(load_fn=
stats.load_kernels, max_batch_size=128)``, created lazily in the resolver. strawberry's loader
keeps a failed key's exception in its cache for the loader's life (aiodataloader evicts it);
with one loader per request that means "an error is not retried within the same request",
which is the behaviour we want anyway. Never keep these loaders across requests.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NewType, cast

import strawberry
from strawberry.dataloader import DataLoader
from strawberry.schema.config import StrawberryConfig

from promstat.integrations import (
    DEFAULT_MAX_BATCH_SIZE,
    AgentRow,
    BatchLoadFn,
    KernelRow,
    LoaderManager,
    Payload,
    Registry,
    RequestContext,
    SchemaExecutor,
    StatsSource,
    agent_cpu_pct,
    agent_mem_bytes,
    json_string,
    kernel_stat,
)

__all__ = [
    "Agent",
    "AgentList",
    "ComputeContainer",
    "ComputeContainerList",
    "JSONString",
    "Query",
    "StrawberryContext",
    "StrawberryExecutor",
    "build_schema",
    "make_context",
]

#: JSON text of a live_stat payload (the GraphQL scalar ``JSONString``).
JSONString = NewType("JSONString", str)

#: The context strawberry resolvers receive (``info.context``).
StrawberryContext = RequestContext[DataLoader[str, Any]]


def _identity(value: object) -> object:
    return value


def _parse_json_string(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("JSONString input must be a string holding JSON text")
    return value


_JSON_STRING_SCALAR = strawberry.scalar(
    name="JSONString",
    description="A JSON-encoded string (the legacy live_stat wire form).",
    serialize=_identity,
    parse_value=_parse_json_string,
)


def _loader_factory(max_batch_size: int | None) -> Any:
    def factory(fn: BatchLoadFn) -> DataLoader[str, Any]:
        return DataLoader(load_fn=cast(Any, fn), max_batch_size=max_batch_size)

    return factory


def make_context(
    stats: StatsSource,
    registry: Registry,
    *,
    max_batch_size: int | None = DEFAULT_MAX_BATCH_SIZE,
    at: float | None = None,
) -> StrawberryContext:
    """A fresh context for one request (its own, still empty, set of loaders).

    Args:
        stats: the batch functions (a :class:`~promstat.service.LiveStats`).
        registry: where list rows come from.
        max_batch_size: ids per batch call (Backend.AI: 128); ``None`` = one batch per page.
        at: pin every live_stat of this request to this Unix time.
    """
    return RequestContext(stats, registry, LoaderManager(_loader_factory(max_batch_size)), at)


async def _agent_stat(ctx: StrawberryContext, agent_id: str) -> Payload | None:
    result: Payload | None = await ctx.agent_loader().load(agent_id)
    return result


async def _kernel_live_stat(
    root: ComputeContainer, info: strawberry.Info[StrawberryContext, None]
) -> JSONString | None:
    payload = await kernel_stat(info.context, root.row)
    return cast("JSONString | None", json_string(payload))


async def _kernel_last_stat(
    root: ComputeContainer, info: strawberry.Info[StrawberryContext, None]
) -> JSONString | None:
    payload = await kernel_stat(info.context, root.row, last=True)
    return cast("JSONString | None", json_string(payload))


@strawberry.type(description="A kernel (container) row with its live statistics.")
class ComputeContainer:
    """A kernel row; ``live_stat``/``last_stat`` share the request's kernel loader (terminated
    kernels: see :func:`~promstat.integrations.kernel_stat`)."""

    id: strawberry.ID
    agent: str | None
    status: str | None
    terminated_at: datetime | None
    row: strawberry.Private[KernelRow]
    live_stat: JSONString | None = strawberry.field(
        resolver=_kernel_live_stat, description="Legacy live_stat, a JSON-encoded string."
    )
    last_stat: JSONString | None = strawberry.field(
        resolver=_kernel_last_stat,
        description="live_stat while running; the final stats once terminated.",
    )

    @classmethod
    def from_row(cls, row: KernelRow) -> ComputeContainer:
        """Build from a registry row."""
        t = row.terminated_at
        return cls(
            id=strawberry.ID(row.id),
            agent=row.agent,
            status=row.status,
            terminated_at=None if t is None else datetime.fromtimestamp(t, tz=UTC),
            row=row,
        )


@strawberry.type(description="One page of kernels.")
class ComputeContainerList:
    """One page of kernels."""

    items: list[ComputeContainer | None]
    total_count: int


async def _agent_live_stat(
    root: Agent, info: strawberry.Info[StrawberryContext, None]
) -> JSONString | None:
    payload = await _agent_stat(info.context, str(root.id))
    return cast("JSONString | None", json_string(payload))


@strawberry.type(description="An agent row with its node/device live statistics.")
class Agent:
    """An agent row; its three stat fields share the request's agent loader."""

    id: strawberry.ID
    status: str | None

    live_stat: JSONString | None = strawberry.field(
        resolver=_agent_live_stat, description="Legacy agent live_stat, a JSON string."
    )

    @strawberry.field
    async def cpu_cur_pct(self, info: strawberry.Info[StrawberryContext, None]) -> float | None:
        """``float(stat["node"]["cpu_util"]["pct"])``, 0 without data."""
        return agent_cpu_pct(await _agent_stat(info.context, str(self.id)))

    @strawberry.field
    async def mem_cur_bytes(self, info: strawberry.Info[StrawberryContext, None]) -> float | None:
        """``float(stat["node"]["mem"]["current"])``, 0 without data."""
        return agent_mem_bytes(await _agent_stat(info.context, str(self.id)))

    @classmethod
    def from_row(cls, row: AgentRow) -> Agent:
        """Build from a registry row."""
        return cls(id=strawberry.ID(row.id), status=row.status)


@strawberry.type(description="One page of agents.")
class AgentList:
    """One page of agents."""

    items: list[Agent | None]
    total_count: int


@strawberry.type
class Query:
    """Root query type (the legacy schema's list queries used by list pages)."""

    @strawberry.field
    async def compute_container_list(
        self,
        info: strawberry.Info[StrawberryContext, None],
        limit: int,
        offset: int,
        status: str | None = None,
    ) -> ComputeContainerList | None:
        """A page of kernel rows from the registry."""
        page = await info.context.registry.list_kernels(limit=limit, offset=offset, status=status)
        items: list[ComputeContainer | None] = [ComputeContainer.from_row(r) for r in page.items]
        return ComputeContainerList(items=items, total_count=page.total_count)

    @strawberry.field
    async def agent_list(
        self,
        info: strawberry.Info[StrawberryContext, None],
        limit: int,
        offset: int,
        status: str | None = None,
    ) -> AgentList | None:
        """A page of agent rows from the registry."""
        page = await info.context.registry.list_agents(limit=limit, offset=offset, status=status)
        items: list[Agent | None] = [Agent.from_row(r) for r in page.items]
        return AgentList(items=items, total_count=page.total_count)


def build_schema() -> strawberry.Schema:
    """The strawberry schema (snake_case names and a ``JSONString`` scalar, as legacy)."""
    return strawberry.Schema(
        query=Query,
        config=StrawberryConfig(
            auto_camel_case=False, scalar_map={JSONString: _JSON_STRING_SCALAR}
        ),
    )


class StrawberryExecutor(SchemaExecutor):
    """Runs GraphQL requests against :func:`build_schema`, one fresh context per request.

    Args:
        stats: the batch functions (a :class:`~promstat.service.LiveStats`).
        registry: where list rows come from.
        max_batch_size: ids per batch call (Backend.AI: 128).
    """

    stack = "strawberry"

    schema_factory = staticmethod(build_schema)
    context_factory = staticmethod(make_context)

    async def _run(
        self, query: str, variables: dict[str, Any] | None, operation_name: str | None, ctx: Any
    ) -> Any:
        return await self.schema.execute(
            query,
            variable_values=variables,
            operation_name=operation_name,
            context_value=ctx,
        )
