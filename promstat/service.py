"""The façade a manager uses: :class:`LiveStats`.

It wires the pieces in the order of the data flow::

    resolver -> DataLoader (per request) -> SharedLoader (all requests: single-flight + TTL)
             -> Planner (chunked, concurrent PromQL) -> PrometheusClient -> legacy payloads

Typical use in a manager process (no interval to give: the reader learns how the rules were
rendered from Prometheus itself)::

    async with LiveStats("http://prometheus:9090") as stats:   # owns its client
        ...
        # in each GraphQL request:
        loader = stats.kernel_loader()
        payload = await loader.load(kernel_id)       # dict in the legacy shape, or None

Lifecycle: ``aclose()`` (or leaving ``async with``) runs the closers of everything the instance
owns, last registered first: background components (refresh-ahead registers its own), the
shared loaders (in-flight fetches are cancelled; their waiters get
:class:`~promstat.errors.ClosedError`), the planner's background detections, the rule layout
read and, when the instance built it from a URL, the client (a client passed in is borrowed).
A closed instance raises :class:`~promstat.errors.ClosedError`; an instance used from a
second event loop raises
:class:`~promstat.errors.EventLoopMismatchError` (create one per event loop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, Self

from promstat.api import PrometheusAPI
from promstat.client import ClientConfig
from promstat.errors import ClosedError, ConfigError, EventLoopMismatchError, PromstatError
from promstat.final import FinalConfig, FinalStats, load_kernel_stats
from promstat.history import History, HistoryResult
from promstat.layout import ProfileWatch
from promstat.loader import DEFAULT_AGENT_CACHE_ENTRIES, CacheConfig, DataLoader, SharedLoader
from promstat.payload import afreeze_values
from promstat.planner import BatchOutcome, Planner, PlannerConfig
from promstat.profile import RuleProfile
from promstat.refresh import RefreshConfig, Refresher
from promstat.selfmetrics import PromstatMetrics

__all__ = ["DEFAULT_AGENT_CACHE_ENTRIES", "LiveStats"]

Payload = dict[str, Any]

log = logging.getLogger(__name__)

# Share of a load's page deadline it waits for the rule layout read (the first load, then one
# every detect_ttl): the rest is for detection and the load's own queries.
_LAYOUT_SHARE = 0.25
# Ids of the synthetic 1,000-kernel page the warning prices the raw plan with.
_PRICE_IDS = tuple(f"{i:08x}-0000-4000-8000-000000000000" for i in range(1000))


class LiveStats:
    """Kernel and agent live_stat in the legacy wire shape, batched and cached.

    Args:
        client_or_url: a :class:`~promstat.api.PrometheusAPI` (a
            :class:`~promstat.client.PrometheusClient`, or a wrapper of one), which is
            borrowed: never closed here; or a base URL, from which LiveStats builds a client
            (with ``client``, reporting to ``metrics``) that it owns and closes.
        profile: how the recording rules were rendered. ``None`` (the default): the profile
            of the rules loaded in Prometheus, read from ``/api/v1/rules`` at the first load
            (:mod:`promstat.layout`). A profile given that differs from the loaded one, and
            a Prometheus without promstat's rules, are reported in one WARNING.
        planner: how queries are cut, sent and bounded (:class:`PlannerConfig`).
        cache: the shared caches' TTL and bounds (:class:`~promstat.loader.CacheConfig`).
        refresh: refresh-ahead (:class:`~promstat.refresh.RefreshConfig`); its interval
            defaults to the profile's.
        final: terminated-kernel answers (:class:`~promstat.final.FinalConfig`).
        client: how to build the client from a URL (:class:`~promstat.client.ClientConfig`);
            only with a URL.
        metrics: counters to report to (a new :class:`PromstatMetrics` by default); pass the
            same object as a borrowed client's ``observer`` to see HTTP costs as well.
        clock: what "now" is (Unix seconds) for loads without ``at``; replays and tests pin
            it to a time inside their data.

    Raises:
        ConfigError: ``client`` given with a client object, or a bad URL.

    Payloads are read-only (:class:`~promstat.payload.FrozenDict`): every request shares them.
    Use it as an async context manager or call :meth:`aclose` at shutdown, so the background
    refresh stops.
    """

    def __init__(
        self,
        client_or_url: PrometheusAPI | str,
        *,
        profile: RuleProfile | None = None,
        planner: PlannerConfig | None = None,
        cache: CacheConfig | None = None,
        refresh: RefreshConfig | None = None,
        final: FinalConfig | None = None,
        client: ClientConfig | None = None,
        metrics: PromstatMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.planner_config = planner or PlannerConfig()
        self.cache_config = cache or CacheConfig()
        self.refresh_config = refresh or RefreshConfig()
        self.final_config = final or FinalConfig()
        self.metrics = metrics or PromstatMetrics()
        #: What aclose() runs, last registered first. A background component joins with
        #: ``self._closers.append(component.aclose)`` when it starts.
        self._closers: list[Callable[[], Awaitable[object]]] = []
        api: PrometheusAPI
        if isinstance(client_or_url, str):
            api = (client or ClientConfig()).build(client_or_url, observer=self.metrics)
            self._closers.append(api.aclose)  # built here, so closed here (closed last)
        elif client is not None:
            raise ConfigError(
                "client= (a ClientConfig) applies only when LiveStats is given a URL; "
                "configure the PrometheusClient you pass instead"
            )
        else:
            api = client_or_url  # borrowed: never closed here
        self.client = api
        start = profile or RuleProfile()
        self.planner = Planner(
            api, self.planner_config, profile=start, metrics=self.metrics, clock=clock
        )
        self.layout = ProfileWatch(
            api,
            profile,
            apply=self._use_profile,
            raw_cost=self._raw_cost,
            ttl=self.planner_config.detect_ttl,
            backoff=self.planner_config.detect_backoff,
            timeout=self.planner.page_deadline,
        )
        names = start.names
        ttl = start.interval if self.cache_config.ttl is None else self.cache_config.ttl
        refresh_cfg = self.refresh_config
        self._refresh_follows_profile = refresh_cfg.interval is None
        if refresh_cfg.interval is None:
            refresh_cfg = replace(refresh_cfg, interval=start.interval)  # follows the profile
        self.refresher = Refresher(
            refresh_cfg,
            enabled=ttl > 0,  # nothing may be kept with a TTL of 0
            metrics=self.metrics,
            clock=clock,
            rules_client=api,
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
            max_entries=self.cache_config.kernel_entries,
            metrics=self.metrics,
            name="LiveStats kernel loader",
        )
        self._agents: SharedLoader[str, Payload] = SharedLoader(
            self._agent_watch.fetch,
            ttl=ttl,
            max_entries=self.cache_config.agent_entries,
            metrics=self.metrics,
            name="LiveStats agent loader",
        )
        self.history = History(api, self.planner_config, profile=start, metrics=self.metrics)
        # Terminated kernels: answers at their termination times, cached without expiry.
        if self.final_config.max_entries is None:
            self.final_config = replace(
                self.final_config, max_entries=self.cache_config.kernel_entries
            )
        self.final = FinalStats(
            api, self.planner, config=self.final_config, metrics=self.metrics, clock=clock
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._closers += [
            self.planner.aclose,
            self.final.aclose,
            self._agents.aclose,
            self._kernels.aclose,
            self.layout.aclose,
        ]
        # Last registered, first closed: the refresher stops before the loaders it feeds.
        self._closers.append(self.refresher.aclose)

    @property
    def profile(self) -> RuleProfile:
        """The profile read with now: the one given, or the loaded rules' once read."""
        return self.planner.profile

    def _use_profile(self, profile: RuleProfile) -> None:
        """Read with ``profile`` from now on (the loaded rules were read)."""
        self.planner.use_profile(profile)
        self.history.profile = profile
        if self.cache_config.ttl is None:
            self._kernels.ttl = self._agents.ttl = profile.interval
        if self._refresh_follows_profile:
            self.refresher.retime(profile.interval)

    def _raw_cost(self) -> tuple[int, int]:
        """Queries of a 1,000-kernel page on the raw and on the recorded plan."""
        raw = len(self.planner.queries("kernel", _PRICE_IDS, recorded=False))
        return raw, len(self.planner.queries("kernel", _PRICE_IDS, recorded=True))

    async def learn_profile(self) -> RuleProfile:
        """Read the rule layout loaded in Prometheus now (the first load does it otherwise).

        A manager may call it at startup so the first page does not wait for
        ``/api/v1/rules``; a failed read is not an error (the profile stays as it was).

        Returns:
            The profile read with from now on (see :attr:`profile`).

        Raises:
            ClosedError: after :meth:`aclose`.
        """
        self._check()
        await self._prepare(wait=1.0)
        return self.profile

    async def _prepare(self, *, wait: float = _LAYOUT_SHARE) -> float:
        """Start a load: bring the profile up to date (waiting at most ``wait`` of the page
        deadline for it, a quarter by default) and return the load's page deadline as a loop
        time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.planner.page_deadline
        await self.layout.ensure(loop.time() + wait * self.planner.page_deadline)
        if self.layout.loaded is not None and self.layout.loaded.found:
            # The layout watch compares the loaded rules with the profile (one WARNING per
            # LiveStats); the planner's own layout check would say it a second time.
            self.planner.warn_layout = False
        return deadline

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

    async def _plan_kernels(self, ids: list[str], at: float | None = None) -> BatchOutcome:
        deadline = await self._prepare()
        out = await self.planner.kernels(ids, at=at, deadline=deadline)
        detected = self.planner.detected("kernel")
        if detected is not None and self.planner_config.use_recorded is None:
            self.layout.note_detection(detected[0])
        out.payloads = await afreeze_values(out.payloads)  # once, as they enter the caches
        return out

    async def _plan_agents(self, ids: list[str], at: float | None = None) -> BatchOutcome:
        deadline = await self._prepare()
        out = await self.planner.agents(ids, at=at, deadline=deadline)
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
        out = await self._plan_kernels(list(kernel_ids), at=at)
        return [out.payloads[k] for k in kernel_ids]

    async def load_agents(
        self, agent_ids: Sequence[str], *, at: float | None = None
    ) -> list[Payload | BaseException | None]:
        """Legacy agent live_stat (``{"node", "devices"}``) for each id, or ``None``/error."""
        self._check()
        if at is None:
            return await self._agent_watch.batch_load(agent_ids, self._agents.batch_load)
        out = await self._plan_agents(list(agent_ids), at=at)
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
        await self._prepare()
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
        await self._prepare()
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
        await self._prepare()
        return await self.history.kernels(kernel_ids, metrics, start=start, end=end, step=step)

    def invalidate(self) -> None:
        """Drop every value in the shared caches (e.g. after a kernel was destroyed)."""
        self._kernels.invalidate()
        self._agents.invalidate()
        self.refresher.invalidate()
