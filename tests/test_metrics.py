"""Tests for promstat.metrics: counters, snapshots and prometheus_client export."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from promstat.metrics import LATENCY_BUCKETS, PromstatMetrics


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
