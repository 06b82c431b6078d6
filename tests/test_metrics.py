"""Tests for promstat.selfmetrics: counters, snapshots and prometheus_client export."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from promstat.selfmetrics import AGE_BUCKETS, LATENCY_BUCKETS, Histogram, PromstatMetrics


def _request(metrics: PromstatMetrics, seconds: float, *, ok: bool = True) -> None:
    metrics.on_request(
        endpoint="query",
        seconds=seconds,
        response_bytes=100,
        series=3,
        ok=ok,
        error_type=None if ok else "bad_data",
        retries=1,
    )


def test_snapshot_counts_requests_errors_and_cumulative_buckets() -> None:
    """Requests, bytes, series, retries, errors and latency buckets add up as recorded."""
    metrics = PromstatMetrics()
    _request(metrics, 0.004)
    _request(metrics, 0.2)
    _request(metrics, 30.0, ok=False)
    metrics.on_split()
    metrics.on_cache(hits=5, misses=2)
    metrics.on_plan("recorded/filtered")
    snap = metrics.snapshot()
    assert (snap.queries, snap.response_bytes, snap.series, snap.retries) == (3, 300, 9, 3)
    assert snap.query_errors == {"bad_data": 1}
    assert (snap.chunk_splits, snap.cache_hits, snap.cache_misses) == (1, 5, 2)
    assert snap.plans == {"recorded/filtered": 1}
    buckets = dict(snap.query_seconds_buckets)
    assert buckets[0.005] == 1 and buckets[0.25] == 2 and buckets[float("inf")] == 3
    assert [b for b, _ in snap.query_seconds_buckets] == list(LATENCY_BUCKETS)


def test_snapshot_is_a_copy() -> None:
    """Later events do not change an earlier snapshot."""
    metrics = PromstatMetrics()
    snap = metrics.snapshot()
    _request(metrics, 0.01)
    assert snap.queries == 0 and metrics.snapshot().queries == 1


def test_register_exports_through_prometheus_client() -> None:
    """register() exposes the counters in a prometheus_client registry, and can be undone."""
    metrics = PromstatMetrics()
    _request(metrics, 0.02)
    _request(metrics, 0.02, ok=False)
    metrics.on_plan("raw/fleet")
    registry = CollectorRegistry()
    collector = metrics.register(registry, prefix="ps")
    text = generate_latest(registry).decode()
    assert "ps_queries_total 2.0" in text
    assert 'ps_query_errors_total{error_type="bad_data"} 1.0' in text
    assert 'ps_query_duration_seconds_bucket{le="0.025"} 2.0' in text
    assert 'ps_plans_total{plan="raw/fleet"} 1.0' in text
    registry.unregister(collector)
    assert "ps_queries_total" not in generate_latest(registry).decode()


def test_histogram_counts_with_le_buckets_and_estimates_quantiles() -> None:
    """observe() lands on the first bound >= value; quantiles interpolate like Prometheus."""
    hist = Histogram((1.0, 2.0, 4.0, float("inf")))
    hist.observe(1.0)  # on the bound: the 1.0 bucket (le)
    hist.observe(1.5, 2)
    hist.observe(3.0)
    snap = hist.snapshot()
    assert snap.buckets == ((1.0, 1), (2.0, 3), (4.0, 4), (float("inf"), 4))
    assert (snap.count, snap.sum) == (4, 7.0)
    assert snap.quantile(0.5) == pytest.approx(1.5)  # rank 2 of 4: halfway into (1, 2]
    assert snap.quantile(1.0) == 4.0
    hist.observe(100.0)
    assert hist.snapshot().quantile(1.0) == 4.0  # +Inf bucket: the largest finite bound
    assert math.isnan(Histogram(AGE_BUCKETS).snapshot().quantile(0.9))
    with pytest.raises(ValueError, match="quantile"):
        snap.quantile(1.5)
    with pytest.raises(ValueError, match="buckets"):
        Histogram((2.0, 1.0, float("inf")))


def test_refresh_metrics_snapshot_and_export() -> None:
    """Data age, refresh duration, refreshes, failures and watched ids are exported."""
    metrics = PromstatMetrics()
    metrics.data_age.observe(3.5, 10)
    metrics.on_refresh("kernel", seconds=0.2, failed=0)
    metrics.on_refresh("kernel", seconds=0.3, failed=4)
    metrics.set_watched("kernel", 1000)
    metrics.set_watched("agent", 20)
    snap = metrics.snapshot()
    assert snap.data_age is not None and snap.data_age.count == 10
    assert snap.refresh_seconds is not None and snap.refresh_seconds.sum == pytest.approx(0.5)
    assert snap.refreshes == {"kernel": 2} and snap.refresh_failures == {"kernel": 4}
    assert snap.watched == {"kernel": 1000, "agent": 20}
    registry = CollectorRegistry()
    metrics.register(registry, prefix="ps")
    text = generate_latest(registry).decode()
    assert 'ps_data_age_seconds_bucket{le="5.0"} 10.0' in text
    assert 'ps_data_age_seconds_bucket{le="3.0"} 0.0' in text
    assert "ps_data_age_seconds_sum 35.0" in text
    assert "ps_refresh_duration_seconds_count 2.0" in text
    assert 'ps_refreshes_total{level="kernel"} 2.0' in text
    assert 'ps_refresh_failures_total{level="kernel"} 4.0' in text
    assert 'ps_watched_ids{level="agent"} 20.0' in text
