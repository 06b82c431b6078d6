"""Cold-path cost against bare HTTP, and polling clients against legacy, on the benchmark fleet.

Two measurements for the design goals (reported, never asserted):

* :func:`measure_cold_path` — for a cold recorded page of 1,000 and 5,000 kernels, the time
  promstat adds on top of the bare HTTP time of *the same queries* (sent concurrently with a
  plain aiohttp session that only reads the bytes), interleaved in one run, with gzip and
  without. Also per page: the client's CPU, Prometheus' CPU (``/proc/<pid>/stat``; how much
  gzip costs the server) and the longest event-loop callback of the promstat page
  (:class:`benchmarks.loopwatch.LoopWatch`, wall and CPU).
* :func:`run_polling` — ``clients`` clients each poll a 1,000-kernel page every ``period``
  seconds for a fixed time. Clients share a few page positions (as users of one manager
  watch the same session lists): position ``p`` starts ``p`` quarter pages into the fleet, so
  the positions overlap, and every page drifts by a few kernels per poll, so ids keep entering
  and leaving the watched set as they do when kernels start and stop. 10 and 50 clients thus
  request the same kernels, and queries per interval compare like with like (with one
  position per client, 50 clients covered the whole fleet and 10 two thirds of it). Both
  contenders go through the same per-request :class:`promstat.loader.DataLoader`: ``legacy``
  over a redis ``MGET`` + msgpack batch function, ``promstat`` over one shared
  :class:`promstat.service.LiveStats` with the interval as cache TTL (and its default
  refresh-ahead, where that exists). Reported: p50/p95/p99 page latency, promstat's data age
  p95 (when ``PromstatMetrics`` has a data-age histogram), Prometheus queries per interval,
  the distinct kernels requested, CPU seconds of the client and of Prometheus per page and
  Prometheus' CPU seconds per minute. ``upstream`` (the real Backend.AI 26.9 code,
  :mod:`benchmarks.upstream`) polls the same way through a DataLoader of 128-id batches over
  ``fetch_container_live_stats``: it has no cross-request cache, so every page asks
  Prometheus six queries per batch.

The fleet's data is pinned at one instant (``PinnedClient``), so "churn" here is churn of the
requested ids, not of the series; a live, scraped fleet is the soak benchmark's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import msgpack
import redis.asyncio as aioredis

from promstat.client import PrometheusClient
from promstat.loader import CacheConfig, DataLoader
from promstat.planner import PlannerConfig
from promstat.profile import RuleProfile
from promstat.selfmetrics import PromstatMetrics
from promstat.service import LiveStats

from . import report
from .contenders import PinnedClient
from .fleet import Fleet
from .loopwatch import LoopWatch
from .upstream import UPSTREAM_BATCH, Upstream

__all__ = ["data_age_p95", "measure_cold_path", "process_cpu_seconds", "run_polling"]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``); None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the ")" closing comm: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


# -------------------------------------------------------------------------------------------
# Cold path: promstat vs the bare HTTP of its own queries


async def _cold_one(
    fleet: Fleet, ids: list[str], *, compress: bool, reps: int
) -> dict[str, Any]:
    metrics = PromstatMetrics()
    client = PrometheusClient(fleet.prometheus.url, observer=metrics, compress=compress)
    pinned = PinnedClient(client, fleet.at)
    stats = LiveStats(
        pinned,
        planner=PlannerConfig(use_recorded=True, detect_ttl=1e9),
        cache=CacheConfig(ttl=0),
        metrics=metrics,
    )
    prom_pid = fleet.prometheus.pid
    http_s: list[float] = []
    total_s: list[float] = []
    http_prom_cpu: list[float] = []
    page_prom_cpu: list[float] = []
    page_cpu: list[float] = []
    http_cpu: list[float] = []
    loop_wall: list[float] = []
    loop_cpu: list[float] = []
    gc_ms: list[float] = []
    gc_longest: list[float] = []
    gc_full = 0
    slowest: list[Any] = []
    url = f"{fleet.prometheus.url}/api/v1/query"
    headers = {"Accept-Encoding": "gzip" if compress else "identity"}
    try:
        await stats.learn_profile()  # the rules read, once: outside the timings
        await stats.planner.detect("kernel")
        pinned.sent = []
        bytes0 = metrics.snapshot().response_bytes
        await stats.load_kernels(ids)  # warm-up, and the queries a page sends
        page_bytes = metrics.snapshot().response_bytes - bytes0
        queries = list(pinned.sent)
        pinned.sent = None
        async with aiohttp.ClientSession() as session:

            async def post(query: str) -> int:
                form = {"query": query, "time": repr(fleet.at)}
                async with session.post(url, data=form, headers=headers) as resp:
                    return len(await resp.read())

            await asyncio.gather(*(post(q) for q in queries))
            for _ in range(reps):
                # No gc.collect() before the page: a manager's page starts with whatever the
                # collector's generations hold, and a collection inside the page is part of its
                # time and of its longest callback (LoopWatch times collections apart too).
                p0, c0, t0 = process_cpu_seconds(prom_pid), time.process_time(), time.perf_counter()
                await asyncio.gather(*(post(q) for q in queries))
                t1, c1, p1 = time.perf_counter(), time.process_time(), process_cpu_seconds(prom_pid)
                http_s.append(t1 - t0)
                http_cpu.append(c1 - c0)
                if p0 is not None and p1 is not None:
                    http_prom_cpu.append(p1 - p0)
                with LoopWatch() as watch:
                    p0, c0, t0 = (
                        process_cpu_seconds(prom_pid), time.process_time(), time.perf_counter()
                    )
                    await stats.load_kernels(ids)
                    t1, c1, p1 = (
                        time.perf_counter(), time.process_time(), process_cpu_seconds(prom_pid)
                    )
                total_s.append(t1 - t0)
                page_cpu.append(c1 - c0)
                if p0 is not None and p1 is not None:
                    page_prom_cpu.append(p1 - p0)
                loop_wall.append(watch.longest)
                loop_cpu.append(watch.longest_cpu)
                gc_ms.append(watch.gc_seconds)
                gc_longest.append(watch.gc_longest)
                gc_full += watch.gc_collections[2]
                if watch.longest >= max(loop_wall):
                    slowest = watch.summary()["slowest"][:3]
    finally:
        await client.close()
    http = _median(http_s) or 0.0
    total = _median(total_s) or 0.0
    added = [t - h for t, h in zip(total_s, http_s, strict=True)]
    return {
        "page": len(ids),
        "compress": compress,
        "queries": len(queries),
        "response_bytes": page_bytes,
        "http_p50_ms": _ms(http),
        "promstat_p50_ms": _ms(total),
        "added_p50_ms": _ms(_median(added)),
        # Median over repetitions of (page - bare HTTP) / bare HTTP, each pair measured
        # back to back: robust to the machine's load drifting during the run.
        "added_ratio": round(_median([a / h for a, h in zip(added, http_s, strict=True)]) or 0, 3),
        "client_cpu_ms_per_page": _ms(_median(page_cpu)),
        "client_cpu_ms_bare_http": _ms(_median(http_cpu)),
        "prometheus_cpu_ms_per_page": _ms(_median(page_prom_cpu)),
        "prometheus_cpu_ms_bare_http": _ms(_median(http_prom_cpu)),
        "loop_longest_ms": _ms(max(loop_wall) if loop_wall else None),
        "loop_longest_ms_p50": _ms(_median(loop_wall)),
        "loop_longest_cpu_ms": _ms(max(loop_cpu) if loop_cpu else None),
        "loop_slowest": slowest,
        "gc_ms_p50": _ms(_median(gc_ms)),
        "gc_longest_ms": _ms(max(gc_longest) if gc_longest else None),
        "gc_full_collections": gc_full,
    }


async def measure_cold_path(
    fleet: Fleet, sizes: Sequence[int], *, reps: int
) -> list[dict[str, Any]]:
    """Cold recorded pages vs the bare HTTP of the same queries, with and without gzip."""
    out = []
    for size in sizes:
        ids = fleet.page(size, 3)
        for compress in (False, True):
            out.append(await _cold_one(fleet, ids, compress=compress, reps=reps))
    return out


# -------------------------------------------------------------------------------------------
# Polling clients


def data_age_p95(metrics: PromstatMetrics) -> float | None:
    """p95 of promstat's data-age histogram in seconds (``None`` before any value was served).

    Every value LiveStats hands out is observed with its age (now minus the evaluation time of
    the query that produced it), cold answers and refresh-ahead answers alike; the quantile is
    interpolated inside its bucket, as Prometheus' ``histogram_quantile`` does.
    """
    age = metrics.snapshot().data_age
    if age is None or age.count == 0:
        return None
    return age.quantile(0.95)


class _Legacy:
    """``MGET`` + msgpack as a batch function, as Backend.AI's Valkey client reads live stats."""

    def __init__(self, url: str) -> None:
        self.redis = aioredis.Redis.from_url(url)

    async def batch(self, keys: Sequence[str]) -> list[Any]:
        raws = await self.redis.mget(list(keys))
        return [
            msgpack.unpackb(r, raw=False, strict_map_key=False, use_list=False)
            if r is not None
            else None
            for r in raws
        ]


async def run_polling(
    fleet: Fleet,
    *,
    contender: str,
    clients: int,
    period: float,
    seconds: float,
    interval: float,
    page_size: int = 1000,
    drift: int = 10,
    seed: int = 0,
    positions: int = 8,
) -> dict[str, Any]:
    """``clients`` clients poll overlapping, drifting ``page_size`` pages every ``period`` s.

    Each client's first page is warm-up for every contender: it is counted apart
    (``warmup_pages``, ``warmup_max_ms``), not in the percentiles. A client stops at the
    deadline only once it has one measured page: a contender whose pages take longer than
    the whole window (26.9 under 10 clients) is measured, not reported as "no pages".

    Args:
        contender: ``"legacy"``, ``"upstream"`` or ``"promstat"``.
        interval: the scrape interval (promstat's cache TTL and refresh period).
        drift: ids a client's page moves by on every poll (ids enter and leave the pages).
        positions: page positions the clients share (client ``i`` takes ``i % positions``).

    Returns:
        Latency percentiles, pages, queries per interval, CPU per page, data age p95.
    """
    ids = fleet.kernel_ids
    n = len(ids)
    size = min(page_size, n)
    metrics = PromstatMetrics()
    client: PrometheusClient | None = None
    legacy: _Legacy | None = None
    stats: LiveStats | None = None
    upstream: Upstream | None = None
    if contender == "legacy":
        legacy = _Legacy(fleet.redis.url)
    elif contender == "upstream":
        upstream = Upstream(fleet.prometheus.url, fleet.at)
        await upstream.start()
    else:
        client = PrometheusClient(fleet.prometheus.url, observer=metrics)
        config = PlannerConfig(use_recorded=True, detect_ttl=1e9)
        stats = LiveStats(PinnedClient(client, fleet.at), planner=config,
                          profile=RuleProfile(interval=float(interval)),
                          cache=CacheConfig(ttl=interval), metrics=metrics)
        await stats.learn_profile()  # the rules read, once: outside the timings
        await stats.planner.detect("kernel")
    latencies: list[float] = []
    warmup: list[float] = []
    errors = missing = 0
    prom_pid = fleet.prometheus.pid
    loop = asyncio.get_running_loop()

    def loader() -> DataLoader[str, Any]:
        if stats is not None:
            return stats.kernel_loader()
        if upstream is not None:  # _batch_load_kernel_live_stat's loader: 128 ids a batch
            return DataLoader(upstream.batch_load, max_batch_size=UPSTREAM_BATCH)
        assert legacy is not None
        return DataLoader(legacy.batch)

    async def one_client(index: int) -> None:
        nonlocal errors, missing
        rng = random.Random(f"promstat-bench-poll:{seed}:{clients}:{index}")
        measured = 0
        offset = ((index % positions) * size // 4) % n
        next_at = started + rng.uniform(0, period)  # clients do not start in lockstep
        first = True
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if loop.time() >= deadline and measured:
                return
            page = [ids[(offset + i) % n] for i in range(size)]
            requested.update(page)
            offset = (offset + drift) % n
            request = loader()
            t0 = time.perf_counter()
            values = await asyncio.gather(*(request.load(k) for k in page),
                                          return_exceptions=True)
            if first:
                # A manager polls for hours: each client's first page (cold for promstat,
                # a first MGET for legacy) is warm-up, timed apart for both contenders;
                # the cold page has its own figures above.
                warmup.append(time.perf_counter() - t0)
                first = False
            else:
                latencies.append(time.perf_counter() - t0)
                measured += 1
            errors += sum(1 for v in values if isinstance(v, BaseException))
            missing += sum(1 for v in values if v is None)
            next_at = max(next_at + period, loop.time())

    requested: set[str] = set()
    before = metrics.snapshot()
    upstream_q0 = upstream.queries if upstream is not None else 0
    p0, c0 = process_cpu_seconds(prom_pid), time.process_time()
    started = loop.time()
    deadline = started + seconds
    try:
        await asyncio.gather(*(one_client(i) for i in range(clients)))
        elapsed = loop.time() - started
        c1, p1 = time.process_time(), process_cpu_seconds(prom_pid)
        after = metrics.snapshot()
    finally:
        if stats is not None:
            with contextlib.suppress(Exception):
                close = getattr(stats, "aclose", None)
                if close is not None:
                    await close()
        if client is not None:
            await client.close()
        if legacy is not None:
            await legacy.redis.aclose()
        if upstream is not None:
            await upstream.close()
    lat = sorted(latencies)
    pages = len(lat)
    intervals = max(1.0, elapsed / interval)
    queries = (
        upstream.queries - upstream_q0 if upstream is not None else after.queries - before.queries
    )
    age = data_age_p95(metrics) if stats is not None else None
    return {
        "contender": contender,
        "clients": clients,
        "period_s": period,
        "interval_s": interval,
        "seconds": round(elapsed, 2),
        "page_size": size,
        "pages": pages,
        "p50_ms": _ms(report.percentile(lat, 50)) if lat else None,
        "p95_ms": _ms(report.percentile(lat, 95)) if lat else None,
        "p99_ms": _ms(report.percentile(lat, 99)) if lat else None,
        "warmup_pages": len(warmup),
        "warmup_max_ms": _ms(max(warmup)) if warmup else None,
        "queries": queries,
        "queries_per_interval": round(queries / intervals, 2),
        "distinct_ids": len(requested),
        "client_cpu_ms_per_page": _ms((c1 - c0) / pages) if pages else None,
        "prometheus_cpu_ms_per_page": (
            _ms((p1 - p0) / pages) if pages and p0 is not None and p1 is not None else None
        ),
        "prometheus_cpu_s_per_minute": (
            round((p1 - p0) / elapsed * 60, 2) if p0 is not None and p1 is not None else None
        ),
        "data_age_p95_s": age,
        "data_age_p95_intervals": None if age is None else round(age / interval, 2),
        "errors": errors,
        "missing": missing,
    }


async def polling_matrix(
    fleet: Fleet,
    *,
    clients: Sequence[int],
    seconds: float,
    interval: float,
    seed: int,
    log: Any = None,
    contenders: Sequence[str] = ("legacy", "upstream", "promstat"),
) -> list[dict[str, Any]]:
    """Every (clients, period in {interval/2, interval}) pair, for each contender in turn."""
    out = []
    for n in clients:
        for period in (interval / 2, interval):
            for contender in contenders:
                if log is not None:
                    log(f"polling: {contender}, {n} clients every {period:g}s for {seconds:g}s")
                # The previous contender's garbage is not the next one's to collect: 26.9's pages
                # leave much of it; after them promstat's polling p95 doubled, without them not.
                gc.collect()
                out.append(
                    await run_polling(
                        fleet, contender=contender, clients=n, period=period, seconds=seconds,
                        interval=interval, seed=seed,
                    )
                )
    return out
