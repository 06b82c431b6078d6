"""Kernel live_stat, field by field against the agent's Valkey payload: promstat vs 26.9's own path.

Backend.AI 26.9 already serves the legacy GraphQL kernel ``live_stat`` from Prometheus:
``PrometheusClient.fetch_container_live_stats`` (six sequential instant queries, ``rate(...
[5m])``, ``[5m:]`` subqueries) and ``LegacyLiveStatConverter.convert``. Here the installed code
runs against a real Prometheus holding a fleet measured every 30 s and scraped every 15 s or
20 s, next to promstat's raw and recorded plans on the same server, and all three are compared
with what the agent wrote to Valkey for the same measurements (the ground truth; promstat's
publisher writes the agent's bytes).

Two exporters per server: ``plain`` is the 26.9 agent (raw counters only); ``own`` is
promstat's exporter (plus the agent-computed ``value_type="rate"``). Asserted: promstat's two
plans agree with the payload on every rate field (``own``: legacy-exact; ``plain``: within
the documented bound of a windowed rate). The 26.9 path's agreement is reported, not asserted:
printed and written to ``live-stat-agreement.json`` in the test's temporary directory.

The installed client evaluates "now"; the fleet is historical, so its ``_query_instant`` gets
the fleet's time as ``time=`` (its own parameter) and nothing else is changed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _support.bai_manager import require, upstream_deprecations
from _support.rules_backfill import merge_openmetrics, prometheus_with_rules

from promstat.client import PrometheusClient
from promstat.migration.publisher import ValkeyPublisher, replay
from promstat.planner import Planner, PlannerConfig
from promstat.profile import RuleProfile
from promstat.testing import lab
from promstat.testing.sim import FleetConfig, SimulatedFleet, fleet_openmetrics

pytestmark = [pytest.mark.slow, pytest.mark.backendai]

T0 = 1_700_000_400  # a multiple of 60: on the 15 s and 20 s scrape grids
SPAN = 1200
AT = T0 + 900  # a scrape time of both grids and a rule evaluation time
C = 30
#: Fields of the agent's payload that carry a rate between its last two measurements.
RATE_FIELDS = (
    ("cpu_util", "current"),
    ("net_rx", "current"),
    ("net_tx", "current"),
    ("io_read", "stats.rate"),
    ("io_write", "stats.rate"),
)
#: The documented worst relative error of a windowed rate over raw counters (tests/test_timing).
PLAIN_BOUND = {15: 0.12, 20: 0.15}
#: With the agent's own rate series: legacy-exact (tests/test_timing.py ``OWN_BOUND``).
OWN_BOUND = 0.005


@dataclass(frozen=True)
class Fleet:
    exporter: str
    config: FleetConfig


def fleets() -> list[Fleet]:
    return [
        Fleet(
            exporter,
            FleetConfig(
                agents=3,
                kernels_per_agent=3,
                gpu_agent_ratio=0.34,
                churn=None,
                epoch=T0,
                node_interval=float(C),
                measure_interval=float(C),
                publish_rates=exporter == "own",
                seed=7100 + n,
            ),
        )
        for n, exporter in enumerate(("plain", "own"))
    ]


def close(truth: Any, got: Any, rel: float) -> bool:
    """Equal strings, or numbers within ``rel`` (or one unit of the last printed decimal)."""
    if truth == got:
        return True
    try:
        a, b = float(truth), float(got)
    except (TypeError, ValueError):
        return False
    decimals = max(len(str(s).partition(".")[2]) for s in (truth, got))
    return math.isclose(a, b, rel_tol=rel, abs_tol=1.000001 * 10.0**-decimals)


@dataclass
class Agreement:
    """Counts of ground-truth fields a path reproduced."""

    rate_fields: int = 0
    rate_agree: int = 0  # within 0.1 %
    rate_within_bound: int = 0  # within the plain-rate bound
    value_fields: int = 0
    value_agree: int = 0
    missing: int = 0
    examples: list[str] | None = None
    differs: dict[str, int] | None = None  # "metric.field" -> kernels it differed for

    def add(
        self, truth: Mapping[str, Any] | None, got: Mapping[str, Any] | None, bound: float
    ) -> None:
        assert truth is not None
        self.examples = self.examples or []
        self.differs = self.differs or {}
        for metric, fields in truth.items():
            for name, value in fields.items():
                if name == "unit_hint":
                    continue  # a catalog setting, not a measurement (reported separately)
                mine = None if got is None else got.get(metric, {}).get(name)
                self.value_fields += 1
                self.missing += mine is None
                ok = mine is not None and close(value, mine, 1e-3)
                self.value_agree += ok
                if not ok:
                    where = f"{metric}.{name}"
                    self.differs[where] = self.differs.get(where, 0) + 1
                if (metric, name) in RATE_FIELDS:
                    self.rate_fields += 1
                    self.rate_agree += ok
                    self.rate_within_bound += mine is not None and close(value, mine, bound)
                    if not ok and len(self.examples) < 4:
                        self.examples.append(f"{metric}.{name} {value} -> {mine}")

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


async def _payloads(redis_url: str, configs: Sequence[FleetConfig], s: int) -> dict[str, Any]:
    """Replay every fleet into redis as the agent writes (the ground truth), then read it back."""
    import msgpack
    from redis.asyncio import from_url

    now = [0.0]
    for config in configs:
        publisher = ValkeyPublisher.from_url(redis_url, node_interval=C, auto_flush=False)
        fleet = SimulatedFleet(config, clock=lambda: now[0], listeners=[publisher])
        for t in range(AT - 300, AT + 1, s):
            now[0] = t
            await replay(fleet, publisher, [t])
        await publisher.close()
    ids = [k for config in configs for k in SimulatedFleet(config).kernel_ids(AT)]
    client = from_url(redis_url)
    try:
        raw = await client.mget(ids)
    finally:
        await client.aclose()
    return {k: msgpack.unpackb(v, raw=False) for k, v in zip(ids, raw, strict=True)}


async def _upstream(url: str, kernel_ids: Sequence[str]) -> dict[str, Any]:
    """The installed 26.9.6 path: its client, query builder, client pool and converter."""
    prom = require("ai.backend.manager.clients.prometheus.client")
    builders = require("ai.backend.manager.clients.prometheus.fixed_query_builder")
    converter = require("ai.backend.manager.api.gql_legacy.stat_converter")
    http = require("ai.backend.common.clients.http_client")
    types = require("ai.backend.common.types")
    defs = require("ai.backend.manager.defs")
    window = defs.DEFAULT_METRIC_RANGE_VECTOR_TIMEWINDOW  # "5m", the manager's default
    with upstream_deprecations():
        pool = http.ClientPool(http.tcp_client_session_factory)
    try:
        client = prom.PrometheusClient(
            endpoint=f"{url}/api/v1/",
            client_pool=pool,
            container_metric_query_builder=builders.ContainerMetricQueryBuilder(window),
            container_live_stat_query_builder=builders.ContainerLiveStatQueryBuilder(window),
        )
        # Evaluate at the fleet's time: the one argument the real code leaves at "now".
        client._query_instant = functools.partial(
            prom.PrometheusClient._query_instant, client, time=str(AT)
        )
        ids = [types.KernelId(uuid.UUID(k)) for k in kernel_ids]
        raw = await client.fetch_container_live_stats(ids)
        out = converter.LegacyLiveStatConverter.convert(ids, raw)
    finally:
        await pool.close()
    return {str(k): v for k, v in out.items()}


async def _compare(url: str, redis_url: str, fleet_list: Sequence[Fleet], s: int) -> dict[str, Any]:
    truth = await _payloads(redis_url, [f.config for f in fleet_list], s)
    report: dict[str, Any] = {}
    async with PrometheusClient(url) as client:
        for f in fleet_list:
            ids = SimulatedFleet(f.config).kernel_ids(AT)
            bound = OWN_BOUND if f.exporter == "own" else PLAIN_BOUND[s]
            answers: dict[str, Mapping[str, Any]] = {}
            for plan, use_recorded in (("raw", False), ("recorded", True)):
                profile = RuleProfile(interval=float(s), collect_interval=float(C))
                planner = Planner(client, PlannerConfig(use_recorded=use_recorded), profile=profile)
                out = await planner.kernels(ids, at=AT)
                answers[plan] = out.payloads
            answers["26.9"] = await _upstream(url, ids)
            for path, payloads in answers.items():
                agreement = Agreement()
                for k in ids:
                    got = payloads[k]
                    assert not isinstance(got, BaseException), (path, k, got)
                    agreement.add(truth[k], got, bound)
                report[f"{path}/{f.exporter}"] = agreement.as_dict()
            report[f"unit_hint/{f.exporter}"] = {
                path: sorted(
                    {
                        f"{m}={(payloads[k] or {}).get(m, {}).get('unit_hint')}"
                        for k in ids
                        for m in truth[k]
                        if (payloads[k] or {}).get(m, {}).get("unit_hint")
                        != truth[k][m]["unit_hint"]
                    }
                )
                for path, payloads in answers.items()
            }
    return report


@pytest.mark.parametrize("s", [15, 20], ids=["C30-S15", "C30-S20"])
def test_plans_and_the_26_9_path_against_the_agent_payloads(tmp_path: Path, s: int) -> None:
    fleet_list = fleets()
    om = merge_openmetrics(
        # distinct agent ids per fleet: device series must not collide in one server
        fleet_openmetrics(f.config, T0, T0 + SPAN, s).replace("i-sim-", f"i-{f.exporter}-")
        for f in fleet_list
    )
    with (
        prometheus_with_rules(tmp_path, C, s, om, T0 + 300, T0 + SPAN) as prom,
        lab.start_redis() as redis,
    ):
        report = asyncio.run(_compare(prom.url, redis.url, fleet_list, s))
    report = {f"C{C}-S{s}": report}
    (tmp_path / "live-stat-agreement.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    rows = report[f"C{C}-S{s}"]
    for exporter in ("plain", "own"):
        for plan in ("raw", "recorded"):
            got = rows[f"{plan}/{exporter}"]
            assert got["rate_fields"] > 0 and got["missing"] == 0, (plan, exporter, got)
            # promstat's plans: every rate field of the agent's payload, within its bound
            assert got["rate_within_bound"] == got["rate_fields"], (plan, exporter, got)
        # every path was compared on the same ground-truth fields
        assert rows[f"raw/{exporter}"]["rate_fields"] == rows[f"26.9/{exporter}"]["rate_fields"]
    for plan in ("raw", "recorded"):
        # own rates are the agent's: legacy-exact
        got = rows[f"{plan}/own"]
        assert got["rate_agree"] == got["rate_fields"], (plan, got)
    # 26.9's own path: sanity only (it answered every kernel)
    assert rows["26.9/plain"]["value_fields"] > 0
