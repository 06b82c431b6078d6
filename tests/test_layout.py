"""The reader learns the loaded rule layout, and says once when it cannot use it.

A newcomer following the README wrote ``PlannerConfig(interval="30s")`` against rules rendered
at 15 s, and a Prometheus without rules took the raw plan silently. Now ``LiveStats`` reads the
profile of the loaded rules from ``/api/v1/rules`` (the profile rule, or what the recorded
families show), reads with it by default, and logs exactly one WARNING per instance when the
profile it was given differs, or when no promstat rules are loaded at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from _support.waiting import poll_until

from promstat.conventions import SeriesNames
from promstat.expressions import RateSource
from promstat.generate.rules import write_rules
from promstat.layout import read_rules
from promstat.loader import CacheConfig
from promstat.planner import PlannerConfig
from promstat.profile import RuleProfile
from promstat.refresh import RefreshConfig
from promstat.service import LiveStats
from promstat.testing import lab
from promstat.testing.sim import FleetConfig, SimulatedFleet
from promstat.testing.stub import StubAPI
from promstat.wire import Rule, RuleGroup

N = SeriesNames()
NO_REFRESH = RefreshConfig(enabled=False)
#: Detect (and read the rules) again at every load, and cache nothing: a warning must still
#: come once.
EVERY_LOAD = PlannerConfig(detect_ttl=0)
NO_CACHE = CacheConfig(ttl=0)


def kernel_rule(stat: str, query: str = "x") -> Rule:
    """A recorded kernel live_stat rule with its ``stat`` label."""
    return Rule(name=N.kernel_live_stat, query=query, type="recording", labels={"stat": stat})


def profile_rule(profile: RuleProfile) -> Rule:
    """The profile rule as ``/api/v1/rules`` lists it."""
    labels = profile.to_labels()
    return Rule(name=N.profile_info, query="vector(1)", type="recording", labels=labels)


# -- reading /api/v1/rules -----------------------------------------------------------------------


def test_the_profile_rule_gives_the_whole_profile() -> None:
    rendered = RuleProfile(interval=30.0, window=600.0, lookback=120.0, rates="exporter")  # type: ignore[arg-type]
    groups = [
        RuleGroup(name="promstat.kernel.live_stat", rules=[kernel_rule("max")], interval=30.0),
        RuleGroup(name="promstat.profile", rules=[profile_rule(rendered)], interval=30.0),
    ]
    loaded = read_rules(groups, RuleProfile())
    assert loaded.found and loaded.labels is not None
    assert loaded.profile == rendered
    assert set(loaded.differences(RuleProfile())) == {"interval", "window", "lookback", "rates"}
    assert loaded.differences(rendered) == {}


def test_rules_without_a_profile_rule_show_interval_window_and_rates() -> None:
    """Rules rendered before the profile rule existed: derived from the recorded families."""
    max_query = f'max by (kernel_id) (max_over_time({N.kernel_live_stat}{{stat="current"}}[10m]))'
    groups = [
        RuleGroup(name="unrelated", rules=[Rule(name="up:sum", query="sum(up)", type="recording")]),
        RuleGroup(
            name="promstat.kernel.live_stat",
            rules=[kernel_rule("current"), kernel_rule("max", max_query)],
            interval=30.0,
        ),
    ]
    loaded = read_rules(groups, RuleProfile())
    assert loaded.found and loaded.labels is None and loaded.profile is not None
    assert (loaded.profile.interval, loaded.profile.window) == (30.0, 600.0)
    assert loaded.profile.rates is RateSource.BOTH
    assert loaded.derived == {"interval": "30s", "window": "10m", "rates": "both"}
    # Only what the rules show is compared: the lookback is not among them.
    assert loaded.differences(RuleProfile(lookback=600.0, window=600.0)) == {
        "interval": ("15s", "30s")
    }
    exporter = read_rules(
        [RuleGroup(name="k", rules=[kernel_rule("max", max_query)], interval=15.0)], RuleProfile()
    )
    assert exporter.profile is not None and exporter.profile.rates is RateSource.EXPORTER


def test_no_promstat_rules_and_a_damaged_profile_rule() -> None:
    assert not read_rules([], RuleProfile()).found
    other = [RuleGroup(name="x", rules=[Rule(name="a:b", query="1", type="recording")])]
    assert not read_rules(other, RuleProfile()).found
    # A profile rule missing its labels is ignored: the families still show the interval.
    broken = Rule(name=N.profile_info, query="vector(1)", type="recording", labels={"x": "y"})
    loaded = read_rules(
        [RuleGroup(name="k", rules=[broken, kernel_rule("current")], interval=60.0)],
        RuleProfile(),
    )
    assert loaded.found and loaded.labels is None
    assert loaded.profile is not None and loaded.profile.interval == 60.0


# -- one warning per LiveStats, with a stub server -----------------------------------------------


class Rules(StubAPI):
    """Lists the given rule groups; every query answers an empty vector (no recorded data)."""

    def __init__(self, *groups: RuleGroup) -> None:
        self.rule_groups = groups
        self.rule_calls = 0

    async def rules(self, type: Any = None) -> list[RuleGroup]:
        self.rule_calls += 1
        return await super().rules(type)


def layout_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every WARNING promstat logged."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("promstat") and r.levelno >= logging.WARNING
    ]


async def test_the_loaded_profile_is_read_with_by_default(caplog: pytest.LogCaptureFixture) -> None:
    rendered = RuleProfile(interval=30.0, window=600.0)
    api = Rules(RuleGroup(name="p", rules=[profile_rule(rendered), kernel_rule("current")]))
    with caplog.at_level(logging.WARNING):
        async with LiveStats(api) as stats:
            assert stats.profile.interval == 15.0  # nothing read before the first load
            assert await stats.learn_profile() == rendered == stats.profile  # at startup
            await stats.load_kernels(["k"])
            assert stats.profile == rendered and api.rule_calls == 1  # read once per detect_ttl
            assert stats.history.profile == rendered and stats.final.profile == rendered
            # The cache and refresh-ahead follow the rules' interval.
            assert stats._kernels.ttl == 30.0 and stats.refresher.config.interval == 30.0
            assert stats.refresher.levels["kernel"].config.staleness == 60.0
    assert layout_warnings(caplog) == []


async def test_a_mismatched_profile_is_warned_once_over_many_loads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rendered = RuleProfile(interval=30.0)
    api = Rules(RuleGroup(name="p", rules=[profile_rule(rendered), kernel_rule("current")]))
    given = RuleProfile(interval=15.0, rates="exporter")  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        async with LiveStats(api, profile=given, planner=EVERY_LOAD, cache=NO_CACHE) as s:
            for _ in range(5):
                await s.load_kernels(["k"])
            assert s.profile == given  # what it was told: the warning says so
        async with LiveStats(api, profile=given, planner=EVERY_LOAD, cache=NO_CACHE) as s:
            await s.load_kernels(["k"])
    assert api.rule_calls >= 6  # the rules were read again and again
    warnings = layout_warnings(caplog)
    assert len(warnings) == 2, warnings  # one per LiveStats
    text = warnings[0]
    assert "interval 15s given, 30s loaded" in text and "rates exporter given, both loaded" in text
    assert "Cost:" in text and "Reading with the given profile (interval=15s" in text
    assert "profile=None" in text


async def test_no_rules_is_warned_once_with_the_cost_of_the_raw_plan(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = Rules()
    with caplog.at_level(logging.WARNING):
        async with LiveStats(api, planner=EVERY_LOAD, cache=NO_CACHE) as stats:
            for _ in range(5):
                await stats.load_kernels(["k"])
            raw, recorded = stats._raw_cost()
            plans = stats.metrics.snapshot().plans
    assert set(plans) == {"raw/filtered"} and plans["raw/filtered"] == 5
    (warning,) = layout_warnings(caplog)
    assert "no promstat recording rules are loaded" in warning
    assert f"raw plan: {raw} queries per 1,000-kernel page instead of {recorded}" in warning
    assert raw > recorded
    assert "`promstat rules render`" in warning and "the default profile" in warning


async def test_a_forced_raw_plan_is_not_warned(caplog: pytest.LogCaptureFixture) -> None:
    """use_recorded=False is the caller's choice: no warning about the raw plan."""
    with caplog.at_level(logging.WARNING):
        async with LiveStats(Rules(), planner=PlannerConfig(use_recorded=False)) as stats:
            await stats.load_kernels(["k"])
    assert layout_warnings(caplog) == []


async def test_a_failing_rules_endpoint_keeps_the_profile_and_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The rules read fails: no error for any load, no warning of its own, asked again later."""
    from promstat.errors import TransportError

    class Broken(StubAPI):
        calls = 0

        async def rules(self, type: Any = None) -> list[RuleGroup]:
            Broken.calls += 1
            raise TransportError("connection refused", url="http://x")

    with caplog.at_level(logging.WARNING):
        async with LiveStats(
            Broken(), planner=PlannerConfig(use_recorded=True, detect_backoff=0)
        ) as stats:
            assert await stats.load_kernels(["k"]) == [None]
            assert await stats.load_kernels(["j"]) == [None]
            assert stats.profile == RuleProfile()
    assert Broken.calls == 2  # not cached: asked again once the backoff (0 s) passed
    assert layout_warnings(caplog) == []


# -- a real Prometheus ---------------------------------------------------------------------------


async def _wait_for_kernels(prom: lab.PrometheusProcess, kernels: int) -> None:
    """Poll until every kernel's raw memory series was scraped (a condition, not a delay)."""
    query = f'count({N.container_metric}{{value_type="current",container_metric_name="mem"}})'
    await poll_until(
        lambda: asyncio.to_thread(prom.query, query),
        lambda rows: bool(rows) and float(rows[0]["value"][1]) >= kernels,
        timeout=60,
        interval=0.2,
        what=f"a scrape of all {kernels} kernels",
    )


@pytest.fixture(scope="module")
def rules_30s(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """promstat's rules rendered at 30 s (by promstat.generate.rules)."""
    out = tmp_path_factory.mktemp("rules-30s")
    written = write_rules(out, RuleProfile(interval=30.0))
    return [p for p in written if p.parent == out and p.name.endswith(".rules.yml")]


@pytest.fixture
async def fleet_and_prom(
    start_prometheus: Callable[..., lab.PrometheusProcess], rules_30s: list[Path]
) -> AsyncIterator[tuple[lab.PrometheusProcess, list[str]]]:
    """Three simulated kernels scraped every second, promstat's 30 s rules loaded."""
    async with SimulatedFleet(
        FleetConfig(agents=1, kernels_per_agent=3, gpu_agent_ratio=0.0, churn=None)
    ) as fleet:
        prom = await asyncio.to_thread(
            start_prometheus, scrape_targets=fleet.targets, scrape_interval="1s",
            rule_files=rules_30s,
        )
        ids = fleet.kernel_ids()
        await _wait_for_kernels(prom, len(ids))
        yield prom, ids


def _has_memory(payloads: list[Any]) -> bool:
    return all(isinstance(p, dict) and float(p["mem"]["current"]) > 0 for p in payloads)


async def test_rules_rendered_at_30s_are_read_with_30s(
    fleet_and_prom: tuple[lab.PrometheusProcess, list[str]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Given nothing, LiveStats reads with the loaded rules' profile (their profile rule:
    30 s); every page has data and nothing is warned."""
    prom, ids = fleet_and_prom
    with caplog.at_level(logging.WARNING):
        async with LiveStats(prom.url, refresh=NO_REFRESH) as stats:
            assert _has_memory(await stats.load_kernels(ids))
            assert stats.profile == RuleProfile(interval=30.0)
            assert stats._kernels.ttl == 30.0
            assert stats.layout.loaded is not None and stats.layout.loaded.labels is not None
    assert layout_warnings(caplog) == []


async def test_a_mismatched_profile_against_real_rules_is_warned_once(
    fleet_and_prom: tuple[lab.PrometheusProcess, list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    prom, ids = fleet_and_prom
    given = RuleProfile(interval=15.0)
    with caplog.at_level(logging.WARNING):
        async with LiveStats(
            prom.url, profile=given, planner=EVERY_LOAD, cache=NO_CACHE
        ) as stats:
            for _ in range(4):
                assert _has_memory(await stats.load_kernels(ids))
            assert stats.profile == given
    (warning,) = layout_warnings(caplog)
    assert "interval 15s given, 30s loaded" in warning and "their profile rule" in warning


async def test_no_rules_on_a_real_prometheus_is_warned_once_and_read_raw(
    start_prometheus: Callable[..., lab.PrometheusProcess],
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with SimulatedFleet(
        FleetConfig(agents=1, kernels_per_agent=2, gpu_agent_ratio=0.0, churn=None)
    ) as fleet:
        prom = await asyncio.to_thread(
            start_prometheus, scrape_targets=fleet.targets, scrape_interval="1s"
        )
        ids = fleet.kernel_ids()
        await _wait_for_kernels(prom, len(ids))
        with caplog.at_level(logging.WARNING):
            async with LiveStats(prom.url, planner=EVERY_LOAD, cache=NO_CACHE) as stats:
                for _ in range(4):
                    assert _has_memory(await stats.load_kernels(ids))
                plans = stats.metrics.snapshot().plans
    assert set(plans) == {"raw/filtered"}
    (warning,) = layout_warnings(caplog)
    assert "no promstat recording rules are loaded" in warning and "1,000-kernel" in warning
