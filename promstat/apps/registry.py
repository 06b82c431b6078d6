"""Where the list pages of ``promstat serve`` and ``promstat demo`` get their rows.

A Backend.AI manager reads a page's kernel or agent rows from its database; promstat's own
GraphQL service has no database, so its rows come from a :class:`Registry`:

* :class:`StaticRegistry` — explicit lists (tests, embedding);
* :class:`FleetRegistry` — the live kernels of a :class:`~promstat.testing.sim.SimulatedFleet`
  (the demo), and the ones it saw terminate;
* :class:`PrometheusRegistry` — the kernels and agents that currently report to Prometheus
  (``promstat serve``: works against any Prometheus-compatible backend with Backend.AI data).

:func:`paginate` slices a list the way the manager's ``LIMIT``/``OFFSET`` query does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import msgspec

from promstat.conventions import SeriesNames
from promstat.errors import ConfigError

if TYPE_CHECKING:
    from promstat.testing.sim import SimulatedFleet

__all__ = [
    "ALIVE",
    "DEFAULT_LIVE_WINDOW",
    "MAX_PAGE_SIZE",
    "RUNNING",
    "TERMINATED",
    "AgentRow",
    "FleetRegistry",
    "KernelRow",
    "Page",
    "PrometheusRegistry",
    "Registry",
    "Snapshot",
    "SnapshotRegistry",
    "StaticRegistry",
    "paginate",
]

T = TypeVar("T")

#: Largest ``limit`` a list query accepts (a guard against accidental full-fleet pages).
MAX_PAGE_SIZE = 10_000

#: Kernel status of live rows (Backend.AI's ``KernelStatus.RUNNING``).
RUNNING = "RUNNING"
#: Agent status of live rows (Backend.AI's ``AgentStatus.ALIVE``).
ALIVE = "ALIVE"
#: Kernel status of terminated rows (Backend.AI's ``KernelStatus.TERMINATED``).
TERMINATED = "TERMINATED"


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
            kernels_expr = f"changes({current}[{w}]) > 0 or ({current} unless {current} offset {w})"
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
