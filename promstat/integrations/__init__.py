"""What the GraphQL integrations share: row registries, per-request loader managers, helpers.

A Backend.AI manager resolves a list page in two steps: it reads the page's *rows* (kernel or
agent ids, status, owning agent) from its database, then each row's ``live_stat`` field asks a
per-request DataLoader, which batches the page into one call of a batch function. promstat
supplies the batch function (:meth:`promstat.service.LiveStats.load_kernels` /
:meth:`~promstat.service.LiveStats.load_agents`); the rows stay the manager's business, so they
come from a pluggable :class:`Registry`:

* :class:`StaticRegistry` — explicit lists (tests, embedding);
* :class:`FleetRegistry` — the live kernels of a :class:`~promstat.testing.sim.SimulatedFleet`
(demo);
* :class:`PrometheusRegistry` — the kernels and agents that currently report to Prometheus
  (``promstat serve``: works against any Prometheus-compatible backend with Backend.AI data).

:class:`LoaderManager` mirrors Backend.AI's ``DataLoaderManager`` (``gql_legacy/base.py``): one
loader per request and per batch function (+ keyword arguments), created lazily on first use —
inside the running event loop, which is what aiodataloader needs. Rows of terminated kernels
(:attr:`KernelRow.terminated_at`) are answered from history by :func:`kernel_stat` through one
more loader over :meth:`~promstat.service.LiveStats.load_kernel_stats`. The stack-specific schemas
live in :mod:`promstat.integrations.graphene` (extra ``graphene``) and
:mod:`promstat.integrations.strawberry` (extra ``strawberry``); this module imports neither.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar, cast

import msgspec

from promstat.conventions import SeriesNames
from promstat.errors import ConfigError
from promstat.renderer import to_json

if TYPE_CHECKING:
    from promstat.testing.sim import SimulatedFleet

__all__ = [
    "ALIVE",
    "DEFAULT_LIVE_WINDOW",
    "DEFAULT_MAX_BATCH_SIZE",
    "LAST_STAT_VERSION",
    "LEGACY_LIVE_STAT_TTL",
    "MAX_PAGE_SIZE",
    "RUNNING",
    "TERMINATED",
    "AgentRow",
    "BatchLoadFn",
    "FleetRegistry",
    "KernelRow",
    "LoaderManager",
    "Page",
    "Payload",
    "PrometheusRegistry",
    "Registry",
    "RequestContext",
    "SchemaExecutor",
    "SnapshotRegistry",
    "StaticRegistry",
    "StatsSource",
    "agent_cpu_pct",
    "agent_mem_bytes",
    "json_string",
    "kernel_stat",
    "paginate",
]

Payload = dict[str, Any]
T = TypeVar("T")
LoaderT = TypeVar("LoaderT")

#: Backend.AI's ``DataLoaderManager`` builds every loader with ``max_batch_size=128``.
DEFAULT_MAX_BATCH_SIZE = 128
#: Largest ``limit`` a list query accepts (a guard against accidental full-fleet pages).
MAX_PAGE_SIZE = 10_000

#: The batch-function contract: one payload, ``None`` or exception per key, in key order.
BatchLoadFn = Callable[[list[str]], Awaitable[Sequence[Payload | BaseException | None]]]

#: Kernel status of live rows (Backend.AI's ``KernelStatus.RUNNING``).
RUNNING = "RUNNING"
#: Agent status of live rows (Backend.AI's ``AgentStatus.ALIVE``).
ALIVE = "ALIVE"
#: Kernel status of terminated rows (Backend.AI's ``KernelStatus.TERMINATED``).
TERMINATED = "TERMINATED"
#: Seconds legacy answered a terminated kernel's ``live_stat``: the Valkey key of its last
#: stats expired 24 h after the agent's last write (``_DEFAULT_EXPIRATION``).
LEGACY_LIVE_STAT_TTL = 86400.0
#: The top-level ``"version"`` legacy's destroy path added to the persisted ``last_stat``.
LAST_STAT_VERSION = 2


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


# -- rows and registries --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KernelRow:
    """One kernel row of a list page (what the manager reads from its ``kernels`` table).

    Attributes:
        id: kernel id (the live_stat loader key).
        agent: id of the agent running it, if known.
        status: kernel status (``RUNNING`` for live kernels).
        terminated_at: termination time (Unix seconds) of a terminated kernel, else ``None``;
            its stats are then answered from history at that time.
    """

    id: str
    agent: str | None = None
    status: str = RUNNING
    terminated_at: float | None = None


@dataclass(frozen=True, slots=True)
class AgentRow:
    """One agent row of a list page.

    Attributes:
        id: agent id (the live_stat loader key).
        status: agent status (``ALIVE`` for agents that report).
    """

    id: str
    status: str = ALIVE


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a paginated list: ``items`` and the ``total_count`` of the whole list."""

    items: tuple[T, ...]
    total_count: int


def paginate(rows: Sequence[T], *, limit: int, offset: int) -> Page[T]:
    """Slice ``rows`` like the manager's ``LIMIT``/``OFFSET`` query.

    Raises:
        ValueError: ``limit`` outside ``0..MAX_PAGE_SIZE`` or a negative ``offset``.
    """
    if not 0 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 0 and {MAX_PAGE_SIZE}, got {limit}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    return Page(tuple(rows[offset : offset + limit]), len(rows))


class Registry(Protocol):
    """Where list pages get their rows (the manager's database in a real deployment)."""

    async def list_kernels(
        self, *, limit: int, offset: int, status: str | None = None
    ) -> Page[KernelRow]:
        """One page of kernels, ordered stably, optionally only those with ``status``."""
        ...

    async def list_agents(
        self, *, limit: int, offset: int, status: str | None = None
    ) -> Page[AgentRow]:
        """One page of agents, ordered stably, optionally only those with ``status``."""
        ...


def _filter(rows: Sequence[T], status: str | None) -> Sequence[T]:
    if status is None:
        return rows
    wanted = status.upper()
    return [r for r in rows if str(getattr(r, "status", "")).upper() == wanted]


class StaticRegistry:
    """A registry over explicit lists of rows (kept in the given order).

    Args:
        kernels: kernel rows, or bare kernel ids (``RUNNING``, agent unknown).
        agents: agent rows or ids; by default the distinct agents of ``kernels``.
    """

    def __init__(
        self,
        kernels: Iterable[KernelRow | str] = (),
        agents: Iterable[AgentRow | str] | None = None,
    ) -> None:
        self.kernels: list[KernelRow] = [
            k if isinstance(k, KernelRow) else KernelRow(k) for k in kernels
        ]
        if agents is None:
            seen = dict.fromkeys(k.agent for k in self.kernels if k.agent is not None)
            self.agents: list[AgentRow] = [AgentRow(a) for a in seen]
        else:
            self.agents = [a if isinstance(a, AgentRow) else AgentRow(a) for a in agents]

    async def list_kernels(
        self, *, limit: int, offset: int, status: str | None = None
    ) -> Page[KernelRow]:
        """One page of the kernel list."""
        return paginate(_filter(self.kernels, status), limit=limit, offset=offset)

    async def list_agents(
        self, *, limit: int, offset: int, status: str | None = None
    ) -> Page[AgentRow]:
        """One page of the agent list."""
        return paginate(_filter(self.agents, status), limit=limit, offset=offset)


#: What a :class:`SnapshotRegistry` source returns: live ``(kernel_id, agent_id)`` pairs and
#: agent ids.
Snapshot = tuple[list[tuple[str, str]], list[str]]


class SnapshotRegistry:
    """A registry that re-reads a (kernel id, agent id) snapshot at most every ``ttl`` seconds.

    Pages of one snapshot are consistent with each other (offsets do not shift while a user
    pages through), and a busy list page does not re-read the source per request.

    Args:
        source: returns the live ``(kernel_id, agent_id)`` pairs and the agent ids.
        ttl: seconds a snapshot is reused; 0 re-reads on every call.
        clock: monotonic clock.
    """

    def __init__(
        self,
        source: Callable[[], Awaitable[Snapshot]],
        *,
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self.ttl = ttl
        self._clock = clock
        self._stamp = -float("inf")
        self._kernels: list[KernelRow] = []
        self._agents: list[AgentRow] = []
        self._lock: asyncio.Lock | None = None

    async def _snapshot(self) -> tuple[list[KernelRow], list[AgentRow]]:
        if self._clock() - self._stamp < self.ttl:
            return self._kernels, self._agents
        if self._lock is None:  # created in the running loop, on first use
            self._lock = asyncio.Lock()
        async with self._lock:  # single-flight: concurrent pages share one refresh
            if self._clock() - self._stamp < self.ttl:
                return self._kernels, self._agents
            pairs, agent_ids = await self._source()
            # A stable order (the manager orders by creation time; agent + id do here).
            self._kernels = [KernelRow(k, a) for k, a in sorted(pairs, key=lambda p: (p[1], p[0]))]
            self._agents = [AgentRow(a) for a in sorted(set(agent_ids))]
            self._stamp = self._clock()
            return self._kernels, self._agents

    def invalidate(self) -> None:
        """Make the next call re-read the source."""
        self._stamp = -float("inf")

    async def list_kernels(
        self, *, limit: int, offset: int, status: str | None = None
    ) -> Page[KernelRow]:
        """One page of the live kernels (all ``RUNNING``), ordered by agent then kernel id."""
        kernels, _ = await self._snapshot()
        return paginate(_filter(kernels, status), limit=limit, offset=offset)

    async def list_agents(
        self, *, limit: int, offset: int, status: str | None = None
    ) -> Page[AgentRow]:
        """One page of the agents (all ``ALIVE``), ordered by id."""
        _, agents = await self._snapshot()
        return paginate(_filter(agents, status), limit=limit, offset=offset)


class FleetRegistry(SnapshotRegistry):
    """The kernels of a simulated fleet (the demo's stand-in for the manager's DB).

    Live kernels are ``RUNNING``; a kernel seen live by an earlier snapshot and gone from a
    later one is listed as ``TERMINATED`` with its ``terminated_at`` (the fleet's schedule),
    most recent first, after the live ones; the newest ``keep_terminated`` are kept.

    Args:
        fleet: a :class:`promstat.testing.sim.SimulatedFleet`.
        ttl: seconds a snapshot is reused.
        keep_terminated: how many terminated kernels to remember.
    """

    def __init__(
        self, fleet: SimulatedFleet, *, ttl: float = 1.0, keep_terminated: int = 1000
    ) -> None:
        self.fleet = fleet
        self.keep_terminated = keep_terminated
        self._seen: dict[str, str] = {}  # kernel id -> agent id, live at the last snapshot
        self._ended: list[KernelRow] = []  # newest first

        async def source() -> Snapshot:
            now = fleet.clock()
            agents = fleet.agent_ids()
            pairs = [(k, a) for a in agents for k in fleet.kernel_ids(now, agent_id=a)]
            self._note_terminations(dict(pairs), now)
            return pairs, agents

        super().__init__(source, ttl=ttl)

    def _note_terminations(self, live: dict[str, str], now: float) -> None:
        ended: list[KernelRow] = []
        for kernel_id, agent_id in self._seen.items():
            if kernel_id in live:
                continue
            try:
                end = self.fleet.kernel(kernel_id).end
            except ConfigError:  # the fleet forgot it (gone for over a day): nothing to show
                continue
            if end is not None and end <= now:
                ended.append(KernelRow(kernel_id, agent_id, TERMINATED, float(end)))
        self._seen = live
        rows = sorted([*ended, *self._ended], key=lambda r: -(r.terminated_at or 0.0))
        self._ended = rows[: self.keep_terminated]

    async def list_kernels(
        self, *, limit: int, offset: int, status: str | None = None
    ) -> Page[KernelRow]:
        """One page of the live kernels, then the terminated ones (newest first)."""
        kernels, _ = await self._snapshot()
        return paginate(_filter([*kernels, *self._ended], status), limit=limit, offset=offset)


class _VectorQuery(Protocol):
    async def query_vector(self, query: str, *, labels: type[Any]) -> Any:
        """Run an instant query decoding labels into ``labels``."""
        ...


#: Seconds within which a running kernel's values change: Backend.AI agents measure every
#: 30 s and Prometheus scrapes every 15 s, so one measurement and the scrapes around it fit.
DEFAULT_LIVE_WINDOW = 30.0 + 2 * 15.0


class PrometheusRegistry(SnapshotRegistry):
    """Rows from Prometheus itself: the running kernels and the agents reporting now.

    A terminated kernel's series stay exported, frozen at their last values, for the agent's
    detention (``UTILIZATION_METRIC_DETENTION``, 600 s), so "has series" is not "running"
    (against the demo's churning 1,000 kernel slots, counting series listed 1,730 kernels as
    RUNNING). Kernels are therefore
    those with a ``value_type="current"`` series that changed within ``live_window`` seconds
    (a running container's CPU and network counters move at every measurement), or that
    appeared within it (one measurement so far)::

        count by (kernel_id, agent_id) (
            changes(backendai_container_utilization{value_type="current"}[W]) > 0
          or (backendai_container_utilization{value_type="current"}
              unless backendai_container_utilization{value_type="current"} offset W))

    A kernel that ended within the last ``live_window`` seconds is still listed.
    ``live_window=None`` lists every kernel with a series (detained ones too). Agents:
    ``count by (agent_id)`` over ``backendai_device_utilization`` (plus every agent that runs
    a kernel). Label and metric names follow ``names``, so relabelled setups work. One
    snapshot (two small queries) is shared for ``ttl`` seconds.

    Args:
        client: a :class:`~promstat.client.PrometheusClient` (anything with ``query_vector``).
        names: metric and label names.
        ttl: seconds a snapshot is reused (default 10).
        live_window: seconds within which a running kernel's values change: the agents'
            measurement interval plus two scrape intervals (default
            :data:`DEFAULT_LIVE_WINDOW`, for 30 s measurements and 15 s scrapes).

    Raises:
        ConfigError: ``live_window`` is not a positive number of seconds.
    """

    def __init__(
        self,
        client: _VectorQuery,
        *,
        names: SeriesNames | None = None,
        ttl: float = 10.0,
        live_window: float | None = DEFAULT_LIVE_WINDOW,
    ) -> None:
        self.client = client
        self.names = n = names or SeriesNames()
        labels = msgspec.defstruct(
            "KernelAgent",
            [("kernel_id", str, ""), ("agent_id", str, "")],
            rename={"kernel_id": n.kernel_label, "agent_id": n.agent_label},
            frozen=True,
            gc=False,
        )
        current = f'{n.container_metric}{{{n.value_type_label}="{n.current_value}"}}'
        if live_window is None:
            kernels_expr = current
        else:
            from promstat.promql import duration

            if not live_window > 0:
                raise ConfigError(f"live_window must be > 0 seconds, not {live_window!r}")
            w = duration(live_window)
            kernels_expr = (
                f"changes({current}[{w}]) > 0 or ({current} unless {current} offset {w})"
            )
        self.live_window = live_window
        kernel_query = f"count by ({n.kernel_label}, {n.agent_label}) ({kernels_expr})"
        agent_query = (
            f"count by ({n.agent_label}) "
            f'({n.device_metric}{{{n.value_type_label}="{n.current_value}"}})'
        )
        self.queries = (kernel_query, agent_query)

        async def source() -> Snapshot:
            kernels, agents = await asyncio.gather(
                client.query_vector(kernel_query, labels=labels),
                client.query_vector(agent_query, labels=labels),
            )
            pairs = [
                (s.metric.kernel_id, s.metric.agent_id)
                for s in kernels.series
                if s.metric.kernel_id
            ]
            agent_ids = [s.metric.agent_id for s in agents.series if s.metric.agent_id]
            agent_ids += [a for _, a in pairs if a]
            return pairs, agent_ids

        super().__init__(source, ttl=ttl)


# -- per-request loaders --------------------------------------------------------------------


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
    """The GraphQL context of one request.

    Attributes:
        stats: the batch functions.
        registry: where list rows come from.
        loaders: this request's loaders.
        at: evaluate every live_stat of the request at this Unix time (``None``: now,
            through the shared cache). Pinned pages are reproducible and bypass the cache.
        extra: anything else the host application wants resolvers to see.
    """

    stats: StatsSource
    registry: Registry
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


async def kernel_stat(
    ctx: RequestContext[Any], row: KernelRow, *, last: bool = False
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
