"""What the graphene and strawberry list-page schemas of ``promstat serve`` share.

The schemas (:mod:`promstat.apps.schema_graphene`, :mod:`promstat.apps.schema_strawberry`)
are the subset of Backend.AI's legacy schema a kernel or agent list page uses. Both resolve
rows from a :class:`~promstat.apps.registry.Registry` and stats through the loaders of
:mod:`promstat.integrations`; :class:`ListContext` carries both. The field helpers answer as
the legacy fields did, and :class:`SchemaExecutor` runs one request the same way on both
stacks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from promstat.apps.registry import Registry
from promstat.integrations import DEFAULT_MAX_BATCH_SIZE, RequestContext, StatsSource
from promstat.renderer import to_json

__all__ = [
    "ListContext",
    "SchemaExecutor",
    "agent_cpu_pct",
    "agent_mem_bytes",
    "json_string",
]

LoaderT = TypeVar("LoaderT")


@dataclass(slots=True)
class ListContext(RequestContext[LoaderT]):
    """The GraphQL context of one list-page request: its loaders, and where rows come from.

    Attributes:
        registry: where list rows come from.
    """

    registry: Registry = field(kw_only=True)


def json_string(payload: Mapping[str, Any] | None) -> str | None:
    """Return ``payload`` in the wire form of a legacy ``JSONString`` field.

    Graphene's ``JSONString.serialize`` is ``json.dumps`` with default settings; the legacy
    wire value is that *string* (clients ``json.loads`` it), or ``null`` without data.

    Args:
        payload: a live_stat dict, or ``None``.

    Returns:
        The JSON text, or ``None``.
    """
    return to_json(payload)


def _node_value(payload: Mapping[str, Any] | None, metric: str, key: str) -> float:
    try:
        return float(payload["node"][metric][key])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return 0.0


def agent_cpu_pct(payload: Mapping[str, Any] | None) -> float:
    """Legacy ``Agent.cpu_cur_pct``: ``float(stat["node"]["cpu_util"]["pct"])``, else 0.

    The manager answered 0 for an agent without (or with incomplete) live stats.
    """
    return _node_value(payload, "cpu_util", "pct")


def agent_mem_bytes(payload: Mapping[str, Any] | None) -> float:
    """Legacy ``Agent.mem_cur_bytes``: ``float(stat["node"]["mem"]["current"])``, else 0."""
    return _node_value(payload, "mem", "current")


class SchemaExecutor:
    """Request plumbing shared by the graphene and strawberry executors.

    A subclass names its schema factory, its per-request context factory (a fresh set of
    loaders each time) and how to run a query; :meth:`execute` does the rest the same way for
    both stacks.

    Args:
        stats: the batch functions (a :class:`~promstat.service.LiveStats`).
        registry: where list rows come from.
        max_batch_size: ids per batch call (Backend.AI: 128).
    """

    stack: ClassVar[str] = ""
    #: ``() -> schema``
    schema_factory: ClassVar[Callable[[], Any]]
    #: ``(stats, registry, *, max_batch_size, at) -> context``
    context_factory: ClassVar[Callable[..., Any]]

    def __init__(
        self,
        stats: StatsSource,
        registry: Registry,
        *,
        max_batch_size: int | None = DEFAULT_MAX_BATCH_SIZE,
    ) -> None:
        self.stats = stats
        self.registry = registry
        self.max_batch_size = max_batch_size
        self.schema = type(self).schema_factory()

    async def _run(
        self, query: str, variables: dict[str, Any] | None, operation_name: str | None, ctx: Any
    ) -> Any:
        raise NotImplementedError

    async def execute(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        operation_name: str | None = None,
        *,
        at: float | None = None,
    ) -> dict[str, Any]:
        """Execute one request; returns the GraphQL response dict (``data``, ``errors``)."""
        ctx = type(self).context_factory(
            self.stats, self.registry, max_batch_size=self.max_batch_size, at=at
        )
        result = await self._run(query, dict(variables) if variables else None, operation_name, ctx)
        out: dict[str, Any] = {"data": result.data}
        if result.errors:
            out["errors"] = [err.formatted for err in result.errors]
        return out
