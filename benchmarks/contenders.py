"""The ways of loading one GraphQL page of kernel live stats that the harness compares.

Every contender answers the batch-function question "live_stat of these kernel ids" against the
same fleet (:mod:`benchmarks.fleet`) at the same pinned evaluation time, and reports what the
page cost: wall time, Prometheus HTTP requests, response bytes, and how many ids got data.

=================  ===========================================================================
``legacy``         redis ``MGET`` of the page's bare kernel-id keys + msgpack decode (the
                   Valkey path before the migration; 0 Prometheus queries)
``per_kernel``     one instant query per kernel (the N+1 shape), 16 in flight
``upstream``       the installed Backend.AI 26.9 manager's own code: per 128-id DataLoader batch
                   ``PrometheusClient.fetch_container_live_stats`` (six *sequential* instant
                   queries, its own client pool, pydantic validation) and
                   ``LegacyLiveStatConverter.convert`` (:mod:`benchmarks.upstream`)
``promstat_raw``   promstat without recording rules (``use_recorded=False``), no cache
``promstat_rec``   promstat reading the recorded series (``use_recorded=True``), no cache
``promstat_warm``  promstat with its cross-request cache: a second load within one interval
=================  ===========================================================================

``python -m benchmarks.contenders rss ...`` runs one contender in a fresh process and prints
its peak RSS (used by the harness to report memory per contender).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import aiohttp
import msgpack
import msgspec
import redis.asyncio as aioredis

from promstat.client import PrometheusClient
from promstat.loader import CacheConfig
from promstat.planner import PlannerConfig
from promstat.promql import eq
from promstat.refresh import RefreshConfig
from promstat.renderer import render_kernel
from promstat.selfmetrics import PromstatMetrics
from promstat.service import LiveStats
from promstat.wire import RuleGroup, vector_decoder

from .upstream import Upstream

__all__ = [
    "CONTENDERS",
    "DESCRIPTIONS",
    "Contender",
    "LegacyValkey",
    "PageResult",
    "PerKernel",
    "PinnedClient",
    "PromstatCold",
    "PromstatWarm",
    "Upstream",
    "make_contender",
    "promstat_breakdown",
]

#: Contender names in report order.
CONTENDERS: tuple[str, ...] = (
    "legacy",
    "per_kernel",
    "upstream",
    "promstat_raw",
    "promstat_rec",
    "promstat_warm",
)

DESCRIPTIONS: Mapping[str, str] = {
    "legacy": "redis MGET of bare kernel-id keys + msgpack decode (pre-migration Valkey path)",
    "per_kernel": "one instant query per kernel (N+1), 16 concurrent",
    "upstream": "Backend.AI 26.9.6's own fetch_container_live_stats (6 sequential queries per "
    "128-id batch, rate[5m], [5m:] subqueries) + LegacyLiveStatConverter",
    "promstat_raw": "promstat, raw-series plan (use_recorded=False), no cache",
    "promstat_rec": "promstat, recorded-series plan (use_recorded=True), no cache",
    "promstat_warm": "promstat, recorded plan, second load from the shared cache",
}


@dataclass(slots=True)
class PageResult:
    """What loading one page cost.

    Attributes:
        seconds: wall time from the first request to the last payload.
        queries: Prometheus HTTP requests sent.
        response_bytes: response body bytes received (decoded JSON for Prometheus, msgpack
            values for redis).
        found: ids that got a payload.
        errors: ids that got an error.
        measured: ids actually loaded (less than the page when a contender is capped and the
            numbers were extrapolated linearly).
    """

    seconds: float
    queries: int
    response_bytes: int
    found: int
    errors: int
    measured: int


class Contender(Protocol):
    """One way of loading a page of kernel live stats."""

    name: str

    async def start(self) -> None:
        """Open connections and warm anything done once per process (not timed)."""

    async def prepare(self, ids: Sequence[str]) -> None:
        """Untimed work before a timed load of ``ids`` (cache priming for the warm path)."""

    async def load(self, ids: Sequence[str]) -> PageResult:
        """Load the page and report its cost."""

    async def close(self) -> None:
        """Release connections."""


class PinnedClient:
    """A query executor that evaluates every query at one pinned time.

    The fleet is historical data, so "now" must be the pinned instant for every query the
    planner sends, detection included.

    Args:
        client: the real client.
        at: Unix seconds.
    """

    def __init__(self, client: PrometheusClient, at: float) -> None:
        self.client = client
        self.at = at
        #: Query texts sent, when a list is assigned (the breakdown replays them).
        self.sent: list[str] | None = None

    async def query_vector(
        self, query: str, *, labels: type[Any], time: Any = None, **kw: Any
    ) -> Any:
        """``client.query_vector`` at the pinned time."""
        if self.sent is not None:
            self.sent.append(query)
        return await self.client.query_vector(query, labels=labels, time=self.at, **kw)

    async def query_range(self, query: str, **kw: Any) -> Any:
        """``client.query_range`` unchanged (history is not benchmarked)."""
        return await self.client.query_range(query, **kw)

    @property
    def timeout(self) -> float:
        """The real client's deadline."""
        return self.client.timeout

    async def rules(self, type: Literal["record", "alert"] | None = None) -> list[RuleGroup]:
        """``client.rules`` unchanged (the rule layout is not pinned in time)."""
        return await self.client.rules(type)

    async def aclose(self) -> None:
        """Close the real client."""
        await self.client.aclose()


def _count(results: Sequence[object]) -> tuple[int, int]:
    found = sum(1 for r in results if isinstance(r, dict))
    errors = sum(1 for r in results if isinstance(r, BaseException))
    return found, errors


# -------------------------------------------------------------------------------------------
# 1. legacy: Valkey (redis) MGET + msgpack


class LegacyValkey:
    """``MGET`` + ``msgpack.unpackb`` like ``ValkeyStatClient.get_session_statistics_batch``."""

    name = "legacy"

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self._redis: aioredis.Redis | None = None

    async def start(self) -> None:
        """Connect (one pooled connection is all a page needs)."""
        self._redis = aioredis.Redis.from_url(self.redis_url)
        await self._redis.ping()

    async def prepare(self, ids: Sequence[str]) -> None:
        """Nothing to prepare."""

    async def load(self, ids: Sequence[str]) -> PageResult:
        """One MGET of the bare kernel-id keys, then unpack each value."""
        assert self._redis is not None
        t0 = time.perf_counter()
        raws = await self._redis.mget(list(ids))
        # Backend.AI's unpack: raw=False, strict_map_key=False, use_list=False.
        payloads = [
            msgpack.unpackb(r, raw=False, strict_map_key=False, use_list=False)
            if r is not None
            else None
            for r in raws
        ]
        seconds = time.perf_counter() - t0
        size = sum(len(r) for r in raws if r is not None)
        found, errors = _count(payloads)
        return PageResult(seconds, 0, size, found, errors, len(ids))

    async def close(self) -> None:
        """Close the connection pool."""
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


# -------------------------------------------------------------------------------------------
# 2. per-kernel: the N+1 shape


class PerKernel:
    """One instant query per kernel with bounded concurrency; legacy dict from its rows.

    Args:
        prom_url: Prometheus base URL.
        at: pinned evaluation time.
        concurrency: queries in flight.
        cap: load at most this many ids of a page and extrapolate time, queries and bytes
            linearly (``None``: no cap).
    """

    name = "per_kernel"

    def __init__(
        self, prom_url: str, at: float, *, concurrency: int = 16, cap: int | None = None
    ) -> None:
        self.at = at
        self.cap = cap
        self.concurrency = concurrency
        self.metrics = PromstatMetrics()
        self.client = PrometheusClient(prom_url, observer=self.metrics, max_connections=concurrency)

    async def start(self) -> None:
        """Open the session with one query."""
        await self.client.query_vector("vector(1)", time=self.at)

    async def prepare(self, ids: Sequence[str]) -> None:
        """Nothing to prepare."""

    async def _one(self, sem: asyncio.Semaphore, kernel_id: str) -> dict[str, Any] | None:
        async with sem:
            res = await self.client.query_vector(
                f"backendai_container_utilization{{{eq('kernel_id', kernel_id)}}}", time=self.at
            )
        values: dict[str, dict[str, str]] = {}
        for s in res.series:
            labels = s.metric
            values.setdefault(labels.get("container_metric_name", ""), {})[
                labels.get("value_type", "")
            ] = s.value[1]
        return render_kernel(values) if values else None

    async def load(self, ids: Sequence[str]) -> PageResult:
        """Query each kernel (up to ``cap``), render, extrapolate when capped."""
        page = list(ids)
        run = page if self.cap is None or len(page) <= self.cap else page[: self.cap]
        before = self.metrics.snapshot()
        sem = asyncio.Semaphore(self.concurrency)
        t0 = time.perf_counter()
        results = await asyncio.gather(*(self._one(sem, k) for k in run), return_exceptions=True)
        seconds = time.perf_counter() - t0
        after = self.metrics.snapshot()
        scale = len(page) / len(run) if run else 1.0
        found, errors = _count(results)
        return PageResult(
            seconds * scale,
            round((after.queries - before.queries) * scale),
            round((after.response_bytes - before.response_bytes) * scale),
            round(found * scale),
            round(errors * scale),
            len(run),
        )

    async def close(self) -> None:
        """Close the client."""
        await self.client.close()


# -------------------------------------------------------------------------------------------
# 3. upstream: the real Backend.AI 26.9 code (benchmarks/upstream.py)


# -------------------------------------------------------------------------------------------
# 4-6. promstat


class PromstatCold:
    """promstat's ``LiveStats.load_kernels`` with no cross-request cache (``CacheConfig(ttl=0)``).

    Plan detection runs once in :meth:`start` (it is cached per process for ``detect_ttl``),
    so a page's queries are the plan's chunks only.

    Args:
        prom_url: Prometheus base URL.
        at: pinned evaluation time.
        recorded: read the recorded series (True) or the raw series (False).
        cache_ttl: the shared cache's TTL (0: none; ``None``: one scrape interval).
        name: contender name.
    """

    def __init__(
        self,
        prom_url: str,
        at: float,
        *,
        recorded: bool,
        cache_ttl: float | None = 0,
        name: str | None = None,
    ) -> None:
        self.name = name or ("promstat_rec" if recorded else "promstat_raw")
        self.metrics = PromstatMetrics()
        self.client = PrometheusClient(prom_url, observer=self.metrics)
        self.stats = LiveStats(
            PinnedClient(self.client, at),
            planner=PlannerConfig(use_recorded=recorded, detect_ttl=1e9),
            cache=CacheConfig(ttl=cache_ttl),
            metrics=self.metrics,
            # Interleaved contenders: a background refresh would run during the others'
            # timings. The polling and load runs measure refresh-ahead instead.
            refresh=RefreshConfig(enabled=False),
        )

    async def start(self) -> None:
        """Detect the plan once (and open the session)."""
        await self.stats.learn_profile()  # the rules read, once: outside the timings
        await self.stats.planner.detect("kernel")

    async def prepare(self, ids: Sequence[str]) -> None:
        """Nothing to prepare: every load goes to Prometheus."""

    async def load(self, ids: Sequence[str]) -> PageResult:
        """``load_kernels`` and the query/byte counters' difference."""
        before = self.metrics.snapshot()
        t0 = time.perf_counter()
        results = await self.stats.load_kernels(list(ids))
        seconds = time.perf_counter() - t0
        after = self.metrics.snapshot()
        found, errors = _count(results)
        return PageResult(
            seconds,
            after.queries - before.queries,
            after.response_bytes - before.response_bytes,
            found,
            errors,
            len(ids),
        )

    async def close(self) -> None:
        """Close LiveStats, then the client it borrows."""
        await self.stats.aclose()
        await self.client.close()


class PromstatWarm(PromstatCold):
    """promstat with the shared cache: :meth:`prepare` loads the page, :meth:`load` reloads it.

    The cache TTL is the default (one scrape interval), so the timed load is the second
    request for those kernels within one interval: a cache hit for every id.
    """

    def __init__(self, prom_url: str, at: float) -> None:
        super().__init__(prom_url, at, recorded=True, cache_ttl=None, name="promstat_warm")

    async def prepare(self, ids: Sequence[str]) -> None:
        """Empty the cache, then fill it with this page (untimed)."""
        self.stats.invalidate()
        await self.stats.load_kernels(list(ids))


# -------------------------------------------------------------------------------------------
# Where promstat's time goes


class _Row(msgspec.Struct, frozen=True, gc=False):
    """The labels of a recorded live_stat row (what the planner decodes into)."""

    kernel_id: str = ""
    container_metric_name: str = ""
    stat: str = ""


async def promstat_breakdown(
    prom_url: str, at: float, ids: Sequence[str], *, reps: int = 3
) -> dict[str, Any]:
    """Split a cold recorded-plan page into server, decode, grouping and rendering time.

    Loads the page through ``LiveStats`` (recorded plan, no cache) recording the queries the
    planner sends, then replays those queries with a bare aiohttp session (with and without
    gzip, the client's default) and repeats the client-side steps on the body: msgspec decode
    into a label Struct, grouping rows by kernel, :func:`promstat.renderer.render_kernel`.
    Each figure is the best of ``reps``; ``other_ms`` is what the end-to-end time has beyond
    the parts (asyncio, aiohttp, the client's error handling, loaders).

    Returns:
        Milliseconds per stage, the plan's query count, response bytes and series.
    """
    metrics = PromstatMetrics()
    client = PrometheusClient(prom_url, observer=metrics)
    pinned = PinnedClient(client, at)
    stats = LiveStats(
        pinned,
        planner=PlannerConfig(use_recorded=True, detect_ttl=1e9),
        cache=CacheConfig(ttl=0),
        metrics=metrics,
    )
    page = list(ids)
    try:
        await stats.learn_profile()  # the rules read, once: outside the timings
        await stats.planner.detect("kernel")
        await stats.load_kernels(page)
        pinned.sent = []
        total = []
        for _ in range(reps):
            pinned.sent.clear()
            gc.collect()
            t0 = time.perf_counter()
            await stats.load_kernels(page)
            total.append(time.perf_counter() - t0)
        queries = list(pinned.sent)
    finally:
        await client.close()

    url = f"{prom_url}/api/v1/query"
    bodies: list[bytes] = []
    server: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:

        async def post(query: str, encoding: str) -> bytes:
            form = {"query": query, "time": repr(at)}
            headers = {"Accept-Encoding": encoding}
            async with session.post(url, data=form, headers=headers) as resp:
                return await resp.read()

        for encoding in ("identity", "gzip"):
            best = math.inf
            for _ in range(reps):
                t0 = time.perf_counter()
                bodies = list(await asyncio.gather(*(post(q, encoding) for q in queries)))
                best = min(best, time.perf_counter() - t0)
            server[encoding] = best

    decoder = vector_decoder(_Row)
    decode = group = render = math.inf
    series = 0
    for _ in range(reps):
        t0 = time.perf_counter()
        decoded = [decoder.decode(b) for b in bodies]
        t1 = time.perf_counter()
        rows: dict[str, dict[str, dict[str, str]]] = {}
        series = 0
        for env in decoded:
            result = env.data.result if env.data is not None else []
            series += len(result)
            for s in result:
                lab = s.metric
                rows.setdefault(lab.kernel_id, {}).setdefault(lab.container_metric_name, {})[
                    lab.stat
                ] = s.value[1]
        t2 = time.perf_counter()
        for k in page:
            metrics_of = rows.get(k)
            if metrics_of:
                render_kernel({m: v for m, v in metrics_of.items() if "current" in v})
        t3 = time.perf_counter()
        decode, group, render = min(decode, t1 - t0), min(group, t2 - t1), min(render, t3 - t2)
    best_total = min(total)
    parts = server["gzip"] + decode + group + render
    return {
        "page": len(page),
        "queries": len(queries),
        "series": series,
        "response_bytes": sum(len(b) for b in bodies),
        "total_ms": round(best_total * 1000, 2),
        "server_identity_ms": round(server["identity"] * 1000, 2),
        "server_gzip_ms": round(server["gzip"] * 1000, 2),
        "decode_ms": round(decode * 1000, 2),
        "group_ms": round(group * 1000, 2),
        "render_ms": round(render * 1000, 2),
        "other_ms": round(max(0.0, best_total - parts) * 1000, 2),
    }


def make_contender(
    name: str, *, prom_url: str, redis_url: str, at: float, per_kernel_cap: int | None
) -> Contender:
    """Build a contender by name.

    Raises:
        ValueError: unknown name.
    """
    if name == "legacy":
        return LegacyValkey(redis_url)
    if name == "per_kernel":
        return PerKernel(prom_url, at, cap=per_kernel_cap)
    if name == "upstream":
        return Upstream(prom_url, at)
    if name == "promstat_raw":
        return PromstatCold(prom_url, at, recorded=False)
    if name == "promstat_rec":
        return PromstatCold(prom_url, at, recorded=True)
    if name == "promstat_warm":
        return PromstatWarm(prom_url, at)
    raise ValueError(f"unknown contender {name!r}; choose from {', '.join(CONTENDERS)}")


# -------------------------------------------------------------------------------------------
# Peak RSS of one contender in a fresh process


def _status_kib(field_name: str) -> int | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in KiB; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak() -> bool:
    """Reset this process's peak RSS (``VmHWM``; Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _maxrss_kib() -> int:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value // 1024 if sys.platform == "darwin" else value


async def measure_rss(
    name: str,
    *,
    prom_url: str,
    redis_url: str,
    at: float,
    ids: Sequence[str],
    reps: int,
    per_kernel_cap: int | None,
) -> dict[str, Any]:
    """Peak RSS of this process while loading ``ids`` ``reps`` times, after a warm-up.

    The warm-up (a 50-kernel page) pays for imports, connections and decoder caches. Then the
    peak-RSS mark is reset (``/proc/self/clear_refs``), so ``peak_kib`` is the high-water mark
    of the page loads alone and ``delta_kib`` what they added over the warmed-up process.
    Where the mark cannot be reset, ``peak_kib`` is the process-lifetime ``ru_maxrss``.

    Returns:
        ``{"baseline_kib", "peak_kib", "delta_kib", "page", "reps", "method"}``.
    """
    contender = make_contender(
        name, prom_url=prom_url, redis_url=redis_url, at=at, per_kernel_cap=per_kernel_cap
    )
    await contender.start()
    try:
        await contender.prepare(ids[:50])
        await contender.load(ids[:50])
        gc.collect()
        baseline = _status_kib("VmRSS") or _maxrss_kib()
        reset = _reset_peak()
        for _ in range(reps):
            await contender.prepare(ids)
            await contender.load(ids)
        peak = (_status_kib("VmHWM") if reset else None) or _maxrss_kib()
    finally:
        await contender.close()
    return {
        "baseline_kib": baseline,
        "peak_kib": peak,
        "delta_kib": max(0, peak - baseline),
        "page": len(ids),
        "reps": reps,
        "method": "VmHWM after clear_refs reset" if reset else "ru_maxrss (process lifetime)",
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.contenders rss NAME --prom URL --redis URL --at T --ids FILE``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.contenders")
    sub = parser.add_subparsers(dest="cmd", required=True)
    rss = sub.add_parser("rss", help="peak RSS of one contender in this process (JSON)")
    rss.add_argument("name", choices=CONTENDERS)
    rss.add_argument("--prom", required=True)
    rss.add_argument("--redis", required=True)
    rss.add_argument("--at", type=float, required=True)
    rss.add_argument("--ids", type=Path, required=True, help="file with one kernel id a line")
    rss.add_argument("--reps", type=int, default=1)
    rss.add_argument("--per-kernel-cap", type=int, default=None)
    args = parser.parse_args(argv)
    ids = [line for line in args.ids.read_text().split() if line]
    out = asyncio.run(
        measure_rss(
            args.name,
            prom_url=args.prom,
            redis_url=args.redis,
            at=args.at,
            ids=ids,
            reps=args.reps,
            per_kernel_cap=args.per_kernel_cap,
        )
    )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
