"""The façade a manager uses: :class:`LiveStats`.

It wires the pieces in the order of the data flow::

    resolver -> DataLoader (per request) -> SharedLoader (all requests: single-flight + TTL)
             -> Planner (chunked, concurrent PromQL) -> PrometheusClient -> legacy payloads

Typical use in a manager process::

    async with PrometheusClient("http://prometheus:9090") as prom:
        stats = LiveStats(prom)
        ...
        # in each GraphQL request:
        loader = stats.kernel_loader()
        payload = await loader.load(kernel_id)       # dict in the legacy shape, or None
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import ConfigError, PromstatError
from .final import FinalStats, load_kernel_stats
from .history import History, HistoryResult
from .loader import DataLoader, SharedLoader
from .metrics import PromstatMetrics
from .payload import freeze_values
from .planner import BatchOutcome, Planner, PlannerConfig, QueryExecutor
from .promql import parse_duration
from .refresh import RefreshConfig, Refresher

__all__ = ["LiveStats"]

Payload = dict[str, Any]


class LiveStats:
    """Kernel and agent live_stat in the legacy wire shape, batched and cached.

    Args:
        client: a :class:`~promstat.client.PrometheusClient` (or anything with
            ``query_vector``/``query_range``).
        config: planner settings (names, catalog, windows, budgets).
        cache_ttl: seconds a live value is shared across requests; default one scrape
            interval (``config.interval``). 0 keeps single-flight but caches nothing.
        cache_entries: bound of each shared cache.
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

    Payloads are read-only (:class:`~promstat.payload.FrozenDict`): every request shares them.
    Call :meth:`aclose` when done, so the background refresh stops.
    """

    def __init__(
        self,
        client: QueryExecutor,
        config: PlannerConfig | None = None,
        *,
        cache_ttl: float | None = None,
        cache_entries: int = 100_000,
        metrics: PromstatMetrics | None = None,
        clock: Callable[[], float] = time.time,
        refresh_ahead: bool = True,
        watch_intervals: int = 4,
        max_staleness: float | None = None,
        max_watched: int = 100_000,
        refresh_jitter: float = 0.5,
    ) -> None:
        self.config = config or PlannerConfig()
        self.metrics = metrics or PromstatMetrics()
        self.planner = Planner(client, self.config, metrics=self.metrics, clock=clock)
        ttl = parse_duration(self.config.interval) if cache_ttl is None else cache_ttl
        if ttl < 0:
            raise ConfigError(f"cache_ttl must be >= 0, not {ttl}")
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
            self._kernel_watch.fetch, ttl=ttl, max_entries=cache_entries, metrics=self.metrics
        )
        self._agents: SharedLoader[str, Payload] = SharedLoader(
            self._agent_watch.fetch, ttl=ttl, max_entries=cache_entries, metrics=self.metrics
        )
        self.history = History(client, self.config, metrics=self.metrics)
        # Terminated kernels: answers at their termination times, cached without expiry.
        self.final = FinalStats(
            client, self.planner, metrics=self.metrics, max_entries=cache_entries, clock=clock
        )

    async def _plan_kernels(self, ids: list[str]) -> BatchOutcome:
        out = await self.planner.kernels(ids)
        out.payloads = freeze_values(out.payloads)  # once, as they enter the caches
        return out

    async def _plan_agents(self, ids: list[str]) -> BatchOutcome:
        out = await self.planner.agents(ids)
        out.payloads = freeze_values(out.payloads)
        return out

    # -- batch functions (the contract aiodataloader / strawberry loaders call) -------------

    async def load_kernels(
        self, kernel_ids: Sequence[str], *, at: float | None = None
    ) -> list[Payload | BaseException | None]:
        """Legacy kernel live_stat for each id: payload, ``None`` (no data) or its error.

        With ``at`` (Unix seconds) the values are evaluated at that time and bypass the shared
        cache (used for final stats of terminated kernels).
        """
        if at is None:
            return await self._kernel_watch.batch_load(kernel_ids, self._kernels.batch_load)
        out = await self.planner.kernels(kernel_ids, at=at)
        return [out.payloads[k] for k in kernel_ids]

    async def load_agents(
        self, agent_ids: Sequence[str], *, at: float | None = None
    ) -> list[Payload | BaseException | None]:
        """Legacy agent live_stat (``{"node", "devices"}``) for each id, or ``None``/error."""
        if at is None:
            return await self._agent_watch.batch_load(agent_ids, self._agents.batch_load)
        out = await self.planner.agents(agent_ids, at=at)
        return [out.payloads[a] for a in agent_ids]

    # -- per-request loaders ----------------------------------------------------------------

    def kernel_loader(self, *, max_batch_size: int | None = None) -> DataLoader[str, Payload]:
        """A new per-request DataLoader over :meth:`load_kernels`."""
        return DataLoader(self.load_kernels, max_batch_size=max_batch_size)

    def agent_loader(self, *, max_batch_size: int | None = None) -> DataLoader[str, Payload]:
        """A new per-request DataLoader over :meth:`load_agents`."""
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
        return await self.history.kernels(kernel_ids, metrics, start=start, end=end, step=step)

    def invalidate(self) -> None:
        """Drop every value in the shared caches (e.g. after a kernel was destroyed)."""
        self._kernels.invalidate()
        self._agents.invalidate()
        self.refresher.invalidate()

    async def aclose(self) -> None:
        """Stop the background refresh (refresh-ahead) and wait for it to finish."""
        await self.refresher.aclose()
