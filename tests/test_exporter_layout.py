"""``--rates exporter`` rules record only the kernels' window stats.

A kernel's ``current``, ``capacity`` and ``rate`` are then each one of the exporter's own
series, so the rules no longer copy them (recording the copies was 60-75% of the rules' CPU at
5,000 kernels). Every reader of those stats reads the exporter's series instead: pages (one
selector over the raw and the recorded family, ``value_type`` mapped to the stat), history,
final stats, utilization, alerts and dashboards. These tests pin the rules, the page's mapping
and, on a real Prometheus, that each reader gets the page's numbers. Page == raw plan on a
scraped fleet is ``test_recorded_vs_raw.test_recorded_and_raw_plans_agree[exporter]``; the
dashboards and alerts are ``test_dashboards.test_every_panel_returns_data_on_a_scraped_fleet``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from promstat.client import PrometheusClient
from promstat.errors import ConfigError
from promstat.expressions import LiveStatExpressions
from promstat.generate.rules import render_rules, write_rules
from promstat.planner import Planner, PlannerConfig
from promstat.profile import RuleProfile
from promstat.renderer import render_kernel
from promstat.service import LiveStats
from promstat.testing import lab
from promstat.testing.sim import FleetConfig, SimulatedFleet
from promstat.testing.stub import StubAPI
from promstat.utilization import Utilization

KERNEL_RULES = "promstat-kernel.rules.yml"
K = "11111111-1111-4111-8111-111111111111"


def _rules(**options: Any) -> list[dict[str, Any]]:
    doc = yaml.safe_load(render_rules(RuleProfile.parse(**options))[KERNEL_RULES])
    # the live_stat rules (not the profile rule, which reads nothing)
    return [r for g in doc["groups"] for r in g["rules"] if r["record"].endswith(":live_stat")]


def test_exporter_rules_record_only_the_window_stats() -> None:
    both = _rules()
    # a stat may be one rule per metric kind (disjoint metric names), never a missing one
    assert sorted({r["labels"]["stat"] for r in both}) == [
        "avg",
        "capacity",
        "current",
        "max",
        "rate",
    ]
    exporter = _rules(rates="exporter")
    assert sorted({r["labels"]["stat"] for r in exporter}) == ["avg", "max"]
    for rule in exporter:
        # over the exporter's series, not over a recorded copy that no longer exists
        assert ":live_stat" not in rule["expr"], rule
        assert "backendai_container_utilization{" in rule["expr"]
    # counters' windows come from their rate series, gauges' from their current series
    max_expr = " ".join(r["expr"] for r in exporter if r["labels"]["stat"] == "max")
    assert 'value_type="rate",container_metric_name="cpu_util"' in max_expr
    assert 'value_type="current"' in max_expr and 'container_metric_name!="cpu_util"' in max_expr
    sharded = _rules(rates="exporter", kernel_shards=4)
    assert len(sharded) == 4 * len(exporter) and all("kernel_id=~" in r["expr"] for r in sharded)


def test_exporter_window_needs_exporter_expressions() -> None:
    from promstat.errors import QueryBuildError

    with pytest.raises(QueryBuildError, match="rates='exporter'"):
        LiveStatExpressions().kernel_exporter_window("max")
    with pytest.raises(QueryBuildError, match="not a window stat"):
        LiveStatExpressions(rates="exporter").kernel_exporter_window("current")  # type: ignore[arg-type]
    with pytest.raises(QueryBuildError, match="current, capacity or rate"):
        LiveStatExpressions().kernel_source("max")
    with pytest.raises(ConfigError, match="rates must be one of"):
        RuleProfile(rates="fast")  # type: ignore[arg-type]


def test_kernel_source_follows_the_rules() -> None:
    recorded = LiveStatExpressions().kernel_source("current", matchers='kernel_id="a"')
    assert recorded == (
        'kernel_metric:backendai_container_utilization:live_stat{stat="current",kernel_id="a"}'
    )
    exporter = LiveStatExpressions(rates="exporter")  # type: ignore[arg-type]
    assert exporter.kernel_source("current") == exporter.kernel("current")
    assert ":live_stat" not in exporter.kernel_source("capacity")


def test_exporter_page_is_one_selector_over_both_families() -> None:
    planner = Planner(StubAPI(), profile=RuleProfile(rates="exporter"))  # type: ignore[arg-type]
    ids = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(600)]
    queries = planner.queries("kernel", ids, recorded=True)
    plain = Planner(StubAPI()).queries("kernel", ids, recorded=True)
    assert len(queries) == len(plain) == 3  # the same chunking: one id matcher per query
    for q in queries:
        assert q.startswith("max by (kernel_id, container_metric_name, value_type, stat) ({")
        assert (
            '__name__=~"backendai_container_utilization|'
            'kernel_metric:backendai_container_utilization:live_stat"'
        ) in q
        # a both-rules backend's recorded copies are not read twice
        assert 'stat!~"current|capacity|rate"' in q


class _Answers(StubAPI):
    """A query executor answering by a substring of the query (first match, ``""`` matches
    every query), else with nothing; it keeps the query texts."""

    def __init__(self, answers: dict[str, list[dict[str, str]]]) -> None:
        self.answers = answers
        self.texts: list[str] = []

    async def query_vector(
        self, query: str, *, labels: type[Any], time: float | None = None
    ) -> Any:
        self.texts.append(query)
        rows = next((r for key, r in self.answers.items() if key in query), [])
        series = [
            SimpleNamespace(
                metric=labels(**{k: v for k, v in r.items() if k != "v"}), value=(time, r["v"])
            )
            for r in rows
        ]
        return SimpleNamespace(series=series, warnings=(), infos=())


def _rows(rows: list[dict[str, str]]) -> _Answers:
    """Detection (``count(...)``) finds one row; every other query gets ``rows``."""
    return _Answers({"count(": [{"v": "1"}], "": rows})


async def test_value_types_map_to_the_legacy_stats() -> None:
    """Raw rows carry value_type; the planner maps (value_type, metric) to the stat a rule
    would have recorded: a rate counter's rate is its current and its cumulative current is
    dropped, an accumulating counter's rate is ``stats.rate``, unknown value types are
    ignored; recorded rows keep their stat."""

    def row(metric: str, v: str, *, vt: str = "", stat: str = "") -> dict[str, str]:
        return {"id": K, "metric": metric, "vt": vt, "stat": stat, "v": v}

    rows = [
        row("cpu_util", "123456", vt="current"),  # cumulative msec: not shown
        row("cpu_util", "150", vt="rate"),
        row("cpu_util", "400", vt="capacity"),
        row("cpu_util", "180", stat="max"),
        row("cpu_util", "120", stat="avg"),
        row("mem", "1073741824", vt="current"),
        row("mem", "4294967296", vt="capacity"),
        row("mem", "2147483648", stat="max"),
        row("io_read", "1000", vt="current"),
        row("io_read", "25.5", vt="rate"),
        row("mem", "99", vt="pct"),  # a value type promstat does not read
    ]
    executor = _rows(rows)
    planner = Planner(
        executor, PlannerConfig(use_recorded=True), profile=RuleProfile(rates="exporter")  # type: ignore[arg-type]
    )
    out = await planner.kernels([K], at=1.0)
    payload = out.payloads[K]
    assert isinstance(payload, dict), payload
    # exactly what the recorded family would have rendered
    expected = render_kernel(
        {
            "cpu_util": {"current": "150", "capacity": "400", "max": "180", "avg": "120"},
            "mem": {"current": "1073741824", "capacity": "4294967296", "max": "2147483648"},
            "io_read": {"current": "1000", "rate": "25.5"},
        }
    )
    assert payload == expected
    assert payload["io_read"]["stats.rate"] == "25.5" and payload["cpu_util"]["current"] == "150"
    assert out.plan == "recorded/filtered"  # no raw fallback: the plan already reads raw
    assert len(executor.texts) == 1


async def test_exporter_plan_detects_the_window_rules() -> None:
    """With detection, the exporter plan looks for the recorded ``max`` (those rules record
    no ``current``); without it the raw plan answers."""
    executor = _rows([])
    planner = Planner(executor, profile=RuleProfile(rates="exporter"))  # type: ignore[arg-type]
    await planner.kernels([K], at=1.0)
    assert 'stat=~"current|max"' in executor.texts[0] and "by (stat)" in executor.texts[0]


LAYOUT_CASES = [
    # (PlannerConfig.rates, stats the loaded rules record, recorded plan?, warning names)
    ("both", ("current", "max"), True, None),
    ("both", ("max",), False, "--rates exporter layout"),
    ("exporter", ("max",), True, None),
    ("exporter", ("current", "max"), True, "--rates both layout"),
    ("both", (), False, None),
    ("exporter", (), False, None),
]


@pytest.mark.parametrize(("rates", "recorded_stats", "recorded", "warning"), LAYOUT_CASES)
async def test_detection_tells_the_rules_layout_in_the_same_query(
    rates: str,
    recorded_stats: tuple[str, ...],
    recorded: bool,
    warning: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One detection query counts the recorded kernels per stat: the plan follows the stat
    ``rates`` reads, and rules of the other layout are logged once, not per detection."""
    executor = _Answers(
        {
            "count(count by (kernel_id, stat)": [
                {"stat": s, "v": str(5 + i)} for i, s in enumerate(recorded_stats)
            ],
            "count(count by (kernel_id) (": [{"v": "9"}],  # the raw series' kernels
        }
    )
    planner = Planner(executor, profile=RuleProfile(rates=rates))
    with caplog.at_level(logging.WARNING, logger="promstat.planner"):
        found = await planner.detect("kernel", at=1.0)
        again = await planner.detect("kernel", at=1.0, refresh=True)
    read = "current" if rates == "both" else "max"
    live = 5 + recorded_stats.index(read) if recorded else 9
    assert found == again == (recorded, live)
    # recorded: one query per detection; raw plan: the recorded count, then the raw one
    assert len(executor.texts) == (2 if recorded else 4)
    logged = [r.getMessage() for r in caplog.records]
    if warning is None:
        assert logged == []
    else:
        assert len(logged) == 1 and warning in logged[0], logged
        assert f"the profile's rates is '{rates}'" in logged[0]


# -- every reader on a real Prometheus ------------------------------------------------------


@pytest.mark.slow
async def test_readers_get_the_page_numbers_without_recorded_copies(
    tmp_path: Path,
    start_prometheus: Callable[..., lab.PrometheusProcess],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A fleet of promstat exporters under ``--rates exporter`` rules: the page, history,
    final stats and utilization all answer, agree on memory, and no query asks for a
    recorded ``current``/``capacity``/``rate`` (there is none). A planner left at
    ``rates="both"`` finds no recorded plan there and logs the layout it found."""
    rules = write_rules(
        tmp_path,
        RuleProfile.parse(interval="1s", window="4s", collect_interval="1s", rates="exporter"),
    )
    config = FleetConfig(
        agents=2,
        kernels_per_agent=3,
        seed=5,
        churn=None,
        gauge_period=86400.0,  # one value all day: every reader sees the same
        measure_interval=1.0,
        node_interval=1.0,
    )
    async with SimulatedFleet(config) as sim:
        prom = start_prometheus(
            scrape_targets=sim.targets,
            scrape_interval="1s",
            evaluation_interval="1s",
            rule_files=[p for p in rules if p.name.endswith(".rules.yml")],
        )
        kernels = sim.kernel_ids()
        settings = RuleProfile(
            interval=1.0, window=4.0, collect_interval=1.0, rates="exporter"  # type: ignore[arg-type]
        )
        async with PrometheusClient(prom.url) as client:
            recorder = _Recorder(client)
            # the window rules have run for every kernel (detection then finds them)
            windows = 'kernel_metric:backendai_container_utilization:live_stat{stat="max"}'
            count = f"count by (kernel_id) ({windows})"
            deadline = time.monotonic() + 60
            while len((await client.query(count, time=time.time() - 1.0)).vector) < len(kernels):
                assert time.monotonic() < deadline, "no window stats recorded in time"
                await asyncio.sleep(0.5)
            mismatched = Planner(client, profile=RuleProfile(interval=1.0, window=4.0))
            with caplog.at_level(logging.WARNING, logger="promstat.planner"):
                assert await mismatched.detect("kernel") == (False, len(kernels))
            assert any("--rates exporter layout" in r.getMessage() for r in caplog.records)
            async with LiveStats(recorder, profile=settings) as stats:
                deadline = time.monotonic() + 60
                while True:
                    at = time.time() - 0.5
                    out = await stats.planner.kernels(kernels, at=at)
                    page = out.payloads
                    if all(
                        isinstance(p, dict) and "stats.max" in p.get("mem", {})
                        for p in page.values()
                    ):
                        break
                    assert time.monotonic() < deadline, page
                    await asyncio.sleep(0.5)
                assert out.plan == "recorded/filtered", recorder.texts[:2]
                # every kernel's series a few seconds old: history's points sit on whole
                # seconds before `at`, and the agents' first scrapes land at their own offsets
                await asyncio.sleep(3)
                at = time.time() - 0.5
                out = await stats.planner.kernels(kernels, at=at)
                page = out.payloads
                final = await stats.final_stats(dict.fromkeys(kernels, at))
                history = await stats.kernel_history(
                    kernels, ["mem"], start=at - 3, end=at, step=1.0
                )
                util = Utilization(recorder, expressions=settings.expressions)
                pct = await util.kernels(kernels, ["mem"], at=at)
    for kernel in kernels:
        mem = page[kernel]["mem"]  # type: ignore[index]
        f = final[kernel]
        assert isinstance(f, dict), (kernel, f)
        # gauges are constant for the test (gauge_period=1 day): readers agree to float noise
        assert math.isclose(float(f["mem"]["current"]), float(mem["current"]), rel_tol=1e-3)
        assert f["mem"]["capacity"] == mem["capacity"]
        assert not history.errors, history.errors
        assert kernel in history.series, (kernel, sorted(history.series), history, at)
        points = history.series[kernel]["mem"]
        assert points and math.isclose(points[-1][1], float(mem["current"]), rel_tol=1e-3)
        assert math.isclose(pct[kernel]["mem"], float(mem["pct"]), abs_tol=0.01)
    assert recorder.texts
    for text in recorder.texts:
        for stat in ("current", "capacity", "rate"):
            assert f'stat="{stat}"' not in text, text


class _Recorder(StubAPI):
    """Delegates to a client, keeping every query text."""

    def __init__(self, client: PrometheusClient) -> None:
        self.client = client
        self.texts: list[str] = []

    async def query_vector(self, query: str, **kw: Any) -> Any:
        self.texts.append(query)
        return await self.client.query_vector(query, **kw)

    async def query_range(self, query: str, **kw: Any) -> Any:
        self.texts.append(query)
        return await self.client.query_range(query, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_alerts_and_dashboards_render_for_the_exporter_rules(tmp_path: Path) -> None:
    """``--set rates=exporter`` alerts and ``--rates exporter`` dashboards never read a
    recorded kernel current/capacity/rate; the defaults still do. (That every target returns
    data on a real Prometheus is test_dashboards' scraped-fleet test.)"""
    import json

    from promstat.cli import main as cli_main
    from promstat.generate.alert_tests import alert_tests_apply
    from promstat.generate.alerts import AlertSettings, render_alerts

    copies = [f'stat="{s}"' for s in ("current", "capacity", "rate")]
    exporter_alerts = next(iter(render_alerts(settings=AlertSettings(rates="exporter")).values()))
    assert "--set rates=exporter" in exporter_alerts
    assert not any(c in exporter_alerts for c in copies)
    assert 'value_type="capacity"' in exporter_alerts
    assert 'stat="current"' in next(iter(render_alerts().values()))
    assert not alert_tests_apply(settings=AlertSettings(rates="exporter"))
    with pytest.raises(ConfigError, match="rates must be one of"):
        AlertSettings(rates="fast")

    assert cli_main(["dashboards", "render", "--output", str(tmp_path), "--rates", "exporter"]) == 0
    kernel = json.loads((tmp_path / "promstat-kernel.json").read_text())
    text = json.dumps(kernel)
    assert not any(c.replace('"', '\\"') in text for c in copies)
    assert (
        'stat=~\\"avg|max\\"' in text or 'stat=~\\"max|avg\\"' in text or 'stat=\\"max\\"' in text
    )
