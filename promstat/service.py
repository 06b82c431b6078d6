"""The façade a manager uses: :class:`LiveStats`.

It wires the pieces in the order of the data flow::

    resolver -> DataLoader (per request) -> SharedLoader (all requests: single-flight + TTL)
             -> Planner (chunked, concurrent PromQL) -> PrometheusClient -> legacy payloads

Typical use in a manager process::

    async with LiveStats("http://prometheus:9090") as stats:   # owns its client
        ...
        # in each GraphQL request:
        loader = stats.kernel_loader()
        payload = await loader.load(kernel_id)       # dict in the legacy shape, or None

Lifecycle: ``aclose()`` (or leaving ``async with``) runs the closers of everything the instance
owns, last registered first: background components (refresh-ahead registers its own), the
shared loaders (in-flight fetches are cancelled; their waiters get
:class:`~promstat.errors.ClosedError`), the planner's background detections and, when the
instance owns it, the client. A closed instance raises :class:`~promstat.errors.ClosedError`;
an instance used from a second event loop raises
:class:`~promstat.errors.EventLoopMismatchError` (create one per event loop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from promstat.errors import ClosedError, ConfigError, EventLoopMismatchError, PromstatError
from promstat.final import FinalStats, load_kernel_stats
from promstat.history import History, HistoryResult
from promstat.loader import DEFAULT_MAX_ENTRIES, DataLoader, SharedLoader
from promstat.payload import afreeze_values
from promstat.planner import BatchOutcome, Planner, PlannerConfig, QueryExecutor
from promstat.promql import parse_duration
from promstat.refresh import RefreshConfig, Refresher
from promstat.selfmetrics import PromstatMetrics

__all__ = ["DEFAULT_AGENT_CACHE_ENTRIES", "LiveStats"]

Payload = dict[str, Any]

log = logging.getLogger(__name__)

#: Default bound of the agent cache. An agent payload carries every device: 35 KiB of Python
#: objects for a 64-core, 8-GPU agent (measured with tracemalloc), so 2,048 agents is at most
#: ~70 MiB, like the kernel cache (:data:`~promstat.loader.DEFAULT_MAX_ENTRIES`); fleets have
#: far fewer agents than kernels.
DEFAULT_AGENT_CACHE_ENTRIES = 2_048


class LiveStats:
    """Kernel and agent live_stat in the legacy wire shape, batched and cached.

    Args:
        client: a :class:`~promstat.client.PrometheusClient` (or anything with
            ``query_vector``/``query_range``), or a base URL: LiveStats then creates the
            client (with ``client_options``, reporting to ``metrics``) and owns it.
        config: planner settings (names, catalog, windows, budgets, ``page_deadline``).
        cache_ttl: seconds a live value is shared across requests; default one scrape
            interval (``config.interval``). 0 keeps single-flight but caches nothing.
        cache_entries: bound of the kernel cache (default
            :data:`~promstat.loader.DEFAULT_MAX_ENTRIES`, ~80 MiB when full).
        agent_cache_entries: bound of the agent cache (default
            :data:`DEFAULT_AGENT_CACHE_ENTRIES`).
        metrics: counters to report to (a new :class:`PromstatMetrics` by default); pass the
            same object as the client's ``observer`` to see HTTP costs as well.
        clock: what "now" is (Unix seconds) for loads without ``at``; replays and tests pin
            it to a time inside their data.
        refresh_ahead: refresh the ids pages keep requesting in the background, once per
            interval, and answer them from memory (:mod:`promstat.refresh`). Off with
            ``False``, and always off with ``cache_ttl=0`` (nothing may be cached).
        watch_intervals: an id is refreshed until this many intervals after its last request.
        max_staleness: seconds a refreshed value may be served; ``None`` = two intervals.
        max_watched: bound of the watched ids per level (least recently requested dropped).
        refresh_jitter: fraction of the interval over which processes spread their refreshes.
        owns_client: close the client in :meth:`aclose` (default: only a client LiveStats
            created from a URL).
        client_options: keyword arguments for the client created from a URL (``timeout``,
            ``bearer_token``, ``headers``, ...).

    Payloads are read-only (:class:`~promstat.payload.FrozenDict`): every request shares them.
    Use it as an async context manager or call :meth:`aclose` at shutdown, so the background
    refresh stops.
    """

    def __init__(
        self,
        client: QueryExecutor | str,
        config: PlannerConfig | None = None,
        *,
        cache_ttl: float | None = None,
        cache_entries: int = DEFAULT_MAX_ENTRIES,
        agent_cache_entries: int = DEFAULT_AGENT_CACHE_ENTRIES,
        metrics: PromstatMetrics | None = None,
        clock: Callable[[], float] = time.time,
        refresh_ahead: bool = True,
        watch_intervals: int = 4,
        max_staleness: float | None = None,
        max_watched: int = 100_000,
        refresh_jitter: float = 0.5,
        owns_client: bool | None = None,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config or PlannerConfig()
        self.metrics = metrics or PromstatMetrics()
        ttl = parse_duration(self.config.interval) if cache_ttl is None else cache_ttl
        if ttl < 0:
            raise ConfigError(f"cache_ttl must be >= 0, not {ttl}")
        if cache_entries < 1 or agent_cache_entries < 1:
            raise ConfigError(
                f"cache_entries and agent_cache_entries must be >= 1, not {cache_entries} "
                f"and {agent_cache_entries}"
            )
        if isinstance(client, str):
            from promstat.client import PrometheusClient  # only this way of building needs it

            options = {"observer": self.metrics, **(client_options or {})}
            client = PrometheusClient(client, **options)
            owns_client = True if owns_client is None else owns_client
        elif client_options:
            raise ConfigError("client_options apply only when LiveStats is given a URL")
        self.client = client
        self.planner = Planner(client, self.config, metrics=self.metrics, clock=clock)
        names, interval = self.config.names, parse_duration(self.config.interval)
        self.refresher = Refresher(
            RefreshConfig(
                interval=interval or 1.0,  # unused when the interval is 0: refresh is off
                watch_intervals=watch_intervals,
                max_staleness=max_staleness,
                max_watched=max_watched,
                jitter=refresh_jitter,
            ),
            enabled=refresh_ahead and ttl > 0 and interval > 0,
            metrics=self.metrics,
            clock=clock,
            rules_client=client,
        )
        self._kernel_watch = self.refresher.watch(
            "kernel", self._plan_kernels, families=(names.kernel_live_stat,)
        )
        self._agent_watch = self.refresher.watch(
            "agent", self._plan_agents, families=(names.device_live_stat, names.agent_live_stat)
        )
        self._kernels: SharedLoader[str, Payload] = SharedLoader(
            self._kernel_watch.fetch,
            ttl=ttl,
            max_entries=cache_entries,
            metrics=self.metrics,
            name="LiveStats kernel loader",
        )
        self._agents: SharedLoader[str, Payload] = SharedLoader(
            self._agent_watch.fetch,
            ttl=ttl,
            max_entries=agent_cache_entries,
            metrics=self.metrics,
            name="LiveStats agent loader",
        )
        self.history = History(client, self.config, metrics=self.metrics)
        # Terminated kernels: answers at their termination times, cached without expiry.
        self.final = FinalStats(
            client, self.planner, metrics=self.metrics, max_entries=cache_entries, clock=clock
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        #: What aclose() runs, last registered first. A background component joins with
        #: ``self._closers.append(component.aclose)`` when it starts.
        self._closers: list[Callable[[], Awaitable[object]]] = []
        close_client = getattr(client, "close", None) if owns_client else None
        if close_client is not None:
            self._closers.append(close_client)
        self._closers += [
            self.planner.aclose,
            self.final.aclose,
            self._agents.aclose,
            self._kernels.aclose,
        ]
        # Last registered, first closed: the refresher stops before the loaders it feeds.
        self._closers.append(self.refresher.aclose)

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    def cache_sizes(self) -> dict[str, int]:
        """Entries in each shared cache (``kernels``, ``agents``)."""
        return {"kernels": len(self._kernels), "agents": len(self._agents)}

    def _check(self) -> None:
        """Raise unless this instance is open and used from its own event loop."""
        if self._closed:
            raise ClosedError(what="LiveStats")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a loader built outside a loop: its first load checks again
            return
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise EventLoopMismatchError(what="LiveStats")

    async def __aenter__(self) -> Self:
        self._check()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop background work, answer waiting loads with ClosedError, close an owned client.

        Runs every registered closer, last registered first; a closer that fails is logged
        (logger ``promstat.service``) and the others still run. Idempotent.
        """
        self._closed = True
        while self._closers:
            closer = self._closers.pop()
            try:
                await closer()
            except Exception:
                log.exception("closing %r failed", closer)

    async def _plan_kernels(self, ids: list[str]) -> BatchOutcome:
        out = await self.planner.kernels(ids)
        out.payloads = await afreeze_values(out.payloads)  # once, as they enter the caches
        return out

    async def _plan_agents(self, ids: list[str]) -> BatchOutcome:
        out = await self.planner.agents(ids)
        out.payloads = await afreeze_values(out.payloads)
        return out

    # -- batch functions (the contract aiodataloader / strawberry loaders call) -------------

    async def load_kernels(
        self, kernel_ids: Sequence[str], *, at: float | None = None
    ) -> list[Payload | BaseException | None]:
        """Legacy kernel live_stat for each id: payload, ``None`` (no data) or its error.

        With ``at`` (Unix seconds) the values are evaluated at that time and bypass the shared
        cache (used for final stats of terminated kernels).

        Raises:
            ClosedError: after :meth:`aclose`.
            EventLoopMismatchError: called from another event loop than the first use.
        """
        self._check()
        if at is None:
            return await self._kernel_watch.batch_load(kernel_ids, self._kernels.batch_load)
        out = await self.planner.kernels(kernel_ids, at=at)
        return [out.payloads[k] for k in kernel_ids]

    async def load_agents(
        self, agent_ids: Sequence[str], *, at: float | None = None
    ) -> list[Payload | BaseException | None]:
        """Legacy agent live_stat (``{"node", "devices"}``) for each id, or ``None``/error."""
        self._check()
        if at is None:
            return await self._agent_watch.batch_load(agent_ids, self._agents.batch_load)
        out = await self.planner.agents(agent_ids, at=at)
        return [out.payloads[a] for a in agent_ids]

    # -- per-request loaders ----------------------------------------------------------------

    def kernel_loader(self, *, max_batch_size: int | None = None) -> DataLoader[str, Payload]:
        """A new per-request DataLoader over :meth:`load_kernels`."""
        self._check()
        return DataLoader(self.load_kernels, max_batch_size=max_batch_size)

    def agent_loader(self, *, max_batch_size: int | None = None) -> DataLoader[str, Payload]:
        """A new per-request DataLoader over :meth:`load_agents`."""
        self._check()
        return DataLoader(self.load_agents, max_batch_size=max_batch_size)

    # -- more than legacy had ---------------------------------------------------------------

    async def load_kernel_stats(
        self, pairs: Sequence[tuple[str, float | None]], *, at: float | None = None
    ) -> list[Payload | BaseException | None]:
        """Kernel live_stat per ``(kernel_id, terminated_at or None)``, in order.

        Live kernels (``None``) are answered as :meth:`load_kernels` does (shared cache);
        terminated ones with their final stats at ``terminated_at`` (:mod:`promstat.final`:
        grouped into few ``@``-pinned queries, cached for good). With ``at``, kernels
        terminated after ``at`` are evaluated at ``at``.
        """
        self._check()
        return await load_kernel_stats(self.final, self.load_kernels, pairs, at=at)

    async def final_stats(
        self, terminated: Mapping[str, float]
    ) -> dict[str, Payload | PromstatError | None]:
        """Live stats of kernels at their termination times, for persisting ``last_stat``.

        Args:
            terminated: kernel id -> termination time (Unix seconds).

        Returns:
            kernel id -> payload, ``None`` or the error of its query.
        """
        self._check()
        values = await self.final.load(list(terminated.items()))
        return {
            k: v if v is None or isinstance(v, dict | PromstatError) else PromstatError(str(v))
            for k, v in zip(terminated, values, strict=True)
        }

    async def kernel_history(
        self,
        kernel_ids: Sequence[str],
        metrics: Sequence[str],
        *,
        start: float,
        end: float,
        step: float,
    ) -> HistoryResult:
        """Trend series for many kernels and metrics at once (see :class:`History`)."""
        self._check()
        return await self.history.kernels(kernel_ids, metrics, start=start, end=end, step=step)

    def invalidate(self) -> None:
        """Drop every value in the shared caches (e.g. after a kernel was destroyed)."""
        self._kernels.invalidate()
        self._agents.invalidate()
        self.refresher.invalidate()
