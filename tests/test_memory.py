"""Bounded memory: expired cache entries go as new ones are written; kernel churn cannot fill RAM.

Before, expired entries stayed until the LRU bound (100,000 per cache) pushed them out: at ~5 KiB
per kernel payload, terminated kernels could hold half a gigabyte. These tests churn 100,000
kernel ids through a SharedLoader with real legacy payloads and watch the entry count and the
process' resident memory.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from typing import Any

import pytest

from promstat import renderer as live_stat
from promstat.loader import DEFAULT_MAX_ENTRIES, FetchResult, SharedLoader

METRICS = (
    "cpu_util",
    "cpu_used",
    "mem",
    "io_read",
    "io_write",
    "net_rx",
    "net_tx",
    "io_scratch_size",
    "cuda_util",
    "cuda_mem",
)
BATCH = 1_000
TTL = 15.0


def payload_for(i: int) -> dict[str, Any] | None:
    """A ten-metric legacy kernel payload with values of its own (as a page renders them)."""
    values = {
        m: {
            "current": f"{i * 7 + j}.25",
            "capacity": "17179869184",
            "max": f"{i + j}.5",
            "avg": f"{j}.125",
            "rate": f"{i % 97}",
        }
        for j, m in enumerate(METRICS)
    }
    return live_stat.render_kernel(values)


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def fetch(keys: list[str]) -> FetchResult[str, dict[str, Any]]:
    """Answer every key with its own payload."""
    return FetchResult({k: payload_for(int(k.split("-")[1])) for k in keys})


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def batch(n: int) -> list[str]:
    """The n-th batch of fresh kernel ids (never seen before: churn)."""
    return [f"k-{n * BATCH + i}" for i in range(BATCH)]


@pytest.mark.slow
async def test_churning_100k_kernels_keeps_entries_and_rss_bounded() -> None:
    """100 pages of 1,000 new kernels, 3 s apart: at most one TTL of pages stays cached."""
    clock = Clock()
    shared: SharedLoader[str, dict[str, Any]] = SharedLoader(fetch, ttl=TTL, clock=clock)
    high = 0
    warm_rss = 0
    for n in range(100):
        out = await shared.batch_load(batch(n))
        assert all(isinstance(p, dict) for p in out)
        high = max(high, len(shared))
        if n == 19:
            gc.collect()
            warm_rss = rss_bytes()
        clock.now += TTL / 5
    gc.collect()
    grown = rss_bytes() - warm_rss
    # Entries written within one TTL: this batch and the 4 before it (3 s apart, 15 s TTL).
    assert high <= 5 * BATCH
    assert len(shared) <= 5 * BATCH
    # 80,000 more payloads went through after the warm point (~400 MiB if kept); the cache's
    # steady state is ~25 MiB and is reused. 64 MiB leaves room for allocator noise.
    assert grown < 64 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB"


async def test_a_burst_within_one_ttl_stops_at_max_entries() -> None:
    """Without time passing nothing expires: the bound keeps the newest max_entries."""
    clock = Clock()
    shared: SharedLoader[str, dict[str, Any]] = SharedLoader(
        fetch, ttl=TTL, clock=clock, max_entries=3 * BATCH
    )
    for n in range(10):
        await shared.batch_load(batch(n))
        assert len(shared) <= 3 * BATCH
    assert len(shared) == 3 * BATCH
    # the newest entries are the ones kept: the last batch is answered from the cache
    hits = shared.metrics.snapshot().cache_hits
    await shared.batch_load(batch(9))
    assert shared.metrics.snapshot().cache_hits == hits + BATCH


async def test_expired_entries_go_on_the_next_load_even_without_writes() -> None:
    """An idle period ends with the next load dropping everything that expired."""
    clock = Clock()
    shared: SharedLoader[str, dict[str, Any]] = SharedLoader(fetch, ttl=TTL, clock=clock)
    await shared.batch_load(batch(0))
    clock.now += TTL + 1
    await shared.batch_load(batch(0)[:1])  # one key, fetched again
    assert len(shared) == 1
    clock.now += TTL + 1
    assert shared.purge() == 1 and len(shared) == 0


def test_the_default_bound_is_what_the_docs_say() -> None:
    """DEFAULT_MAX_ENTRIES x the measured payload size stays near the documented ~80 MiB."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [payload_for(i) for i in range(2_000)]
        per_payload = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert 2_000 < per_payload < 8_000  # ~5 KiB: the figure the bound is sized with
    assert DEFAULT_MAX_ENTRIES * per_payload < 128 * 2**20
    assert DEFAULT_MAX_ENTRIES >= 10_000  # a fleet-wide 10,000-kernel page fits
