"""The soak run's CI version: 60 s of churn, polling and a Prometheus restart (benchmarks.soak).

The full benchmark runs ``python -m benchmarks.soak --duration 600``. Bounds here are generous
on purpose (the machine is shared): they catch leaks and stuck recovery, not slowness.
"""

from __future__ import annotations

import io

import pytest

from benchmarks.soak import SoakOptions, run_soak

pytestmark = pytest.mark.slow


async def test_a_60s_soak_ends_flat_and_recovers_from_a_restart() -> None:
    """Memory and tasks end flat, errors are served while Prometheus is down, pages recover."""
    out = io.StringIO()
    report = await run_soak(SoakOptions(duration=60), out=out)
    print(out.getvalue())  # the figures, for the CI log (pytest -s / -rA)
    start, end = report.start, report.end
    # Memory: the caches are bounded by the TTL, so RSS must not climb with the pages served.
    assert end.rss_mib - start.rss_mib < 40, report.summary()
    assert max(s.kernel_cache for s in report.samples) <= 4 * 10 * 20  # a few TTLs of the fleet
    # Tasks: the floor of live tasks does not rise; aclose() leaves none of promstat's behind.
    first, second = report.task_floor()
    assert second <= first + 10, report.summary()
    assert report.promstat_tasks_after_close == 0, report.summary()
    # (the fleet's exporters keep one keep-alive scrape connection task per agent)
    assert report.tasks_after_close <= report.tasks_before + 10 + 2, report.summary()
    # The outage was seen as per-key errors, answered promptly, and pages came back.
    assert report.down_at is not None and report.up_at is not None
    assert report.pages_while_down > 0 and report.key_errors_while_down > 0
    assert report.page_seconds_while_down_max is not None
    assert report.page_seconds_while_down_max < 3 * 2.5  # a few page deadlines at most
    assert report.recovery_seconds is not None and report.recovery_seconds < 20
    assert report.clean_pages > report.pages // 2
    # Quiet: nothing for asyncio to report, and far fewer log lines than errors served.
    assert report.loop_reports == 0
    assert report.log_lines < report.key_errors_while_down
    assert report.kernel_ids_seen > 10 * 20  # kernels churned during the run
