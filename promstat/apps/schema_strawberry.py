"""The same legacy list-page schema on strawberry-graphql (extra ``strawberry``).

Field names, types and wire values match :mod:`promstat.apps.schema_graphene`, so one query
works on both stacks (``auto_camel_case=False``, as Backend.AI's legacy schema). Live stats
are a custom ``JSONString`` scalar holding the JSON *text* (:func:`~promstat.apps.schema.
json_string`): ``strawberry.scalars.JSON`` would put an object on the wire, which is not the
legacy shape. Stats come from the strawberry loaders of :mod:`promstat.integrations.strawberry`
(one set per request), rows from the context's :class:`~promstat.apps.registry.Registry`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NewType, cast

import strawberry
from strawberry.dataloader import DataLoader
from strawberry.schema.config import StrawberryConfig

from promstat.apps.registry import AgentRow, KernelRow, Registry
from promstat.apps.schema import (
    ListContext,
    SchemaExecutor,
    agent_cpu_pct,
    agent_mem_bytes,
    json_string,
)
from promstat.integrations import (
    DEFAULT_MAX_BATCH_SIZE,
    LoaderManager,
    Payload,
    StatsSource,
    kernel_stat,
)
from promstat.integrations.strawberry import loader_factory

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
StrawberryContext = ListContext[DataLoader[str, Any]]


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
    loaders = LoaderManager(loader_factory(max_batch_size))
    return ListContext(stats, loaders, at, registry=registry)


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
