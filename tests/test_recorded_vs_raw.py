"""The recorded-series plan and the raw fallback agree on a live, scraped, simulated fleet."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from _support.rules_backfill import merge_openmetrics, prometheus_with_rules
from _support.waiting import poll_until

from promstat.client import PrometheusClient
from promstat.errors import ConfigError
from promstat.generate.rules import write_rules
from promstat.planner import Planner, PlannerConfig
from promstat.profile import RuleProfile
from promstat.testing import lab
from promstat.testing.sim import ChurnConfig, FleetConfig, SimulatedFleet, fleet_openmetrics

pytestmark = pytest.mark.slow

# Scrapes every second, agents measure every 2 s: each measurement is stored twice.
INTERVAL, WINDOW, COLLECT = "1s", "4s", "2s"


def close(a: str | None, b: str | None, *, rel: float) -> bool:
    """Legacy-formatted numbers equal within ``rel``, or one unit of their last decimal.

    The strings are rounded (3 decimals, pct 2): two values a hair apart on either side of a
    rounding boundary print one unit apart ("8.81" and "8.8"), which is still agreement.
    """
    if a is None or b is None:
        return a is b
    decimals = max(len(s.partition(".")[2]) for s in (a, b))
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1.000001 * 10.0**-decimals)


def assert_payloads_agree(raw: dict[str, Any], recorded: dict[str, Any], *, where: str) -> None:
    """Same metrics, same keys, numbers within tolerance.

    Rates are the agents' own (exact), but a sample scraped just before an evaluation time
    can arrive after the rule evaluated at that time; device ``cpu_util`` then pairs the rate
    with the next collection interval's capacity (it jitters by < 0.1%).
    """
    assert raw.keys() == recorded.keys(), where
    for metric, fields in raw.items():
        other = recorded[metric]
        assert fields.keys() == other.keys(), f"{where} {metric}"
        for key, value in fields.items():
            if key == "unit_hint":
                assert value == other[key]
                continue
            assert close(value, other[key], rel=1e-3), (
                f"{where} {metric}.{key}: {value} != {other[key]}"
            )


KERNEL_CURRENT = 'kernel_metric:backendai_container_utilization:live_stat{stat="current"}'
AGENT_CURRENT = 'agent_metric:backendai_device_utilization:live_stat{stat="current"}'


async def _scalar(client: PrometheusClient, expr: str, at: float) -> float:
    res = await client.query(expr, time=at)
    return float(res.vector[0].value[1]) if res.vector else 0.0


async def _settled_times(
    client: PrometheusClient, kernels: int, rates: str = "both"
) -> tuple[float, float]:
    """Evaluation times at which the kernel and the agent rule groups last ran, once settled.

    A counter's first rule evaluation sees one sample and records a rate of 0 (never the raw
    counter); window statistics include that 0 until it leaves the window, so wait until every
    kernel's and device's recent ``cpu_util`` rates are all positive. Each plan is then compared
    at the exact timestamp its rule group evaluated at: recorded and raw values are computed
    from the same raw samples there, so they must agree to float precision.
    """
    kernel_cpu = KERNEL_CURRENT.replace("}", ',container_metric_name="cpu_util"}')
    kernel_rule = KERNEL_CURRENT
    if rates == "exporter":  # those rules record only the window stats: the rate is raw
        kernel_cpu = (
            'backendai_container_utilization{container_metric_name="cpu_util",value_type="rate"}'
        )
        kernel_rule = KERNEL_CURRENT.replace('"current"', '"max"')
    device_cpu = (
        "agent_device_metric:backendai_device_utilization:live_stat"
        '{stat="current",device_metric_name="cpu_util"}'
    )
    raw_devices = 'backendai_device_utilization{device_metric_name="cpu_util",value_type="current"}'
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        now = time.time() - 0.2
        ok_k = await _scalar(client, f"count(min_over_time({kernel_cpu}[6s]) > 0)", now)
        ok_d = await _scalar(client, f"count(min_over_time({device_cpu}[6s]) > 0)", now)
        devices = await _scalar(client, f"count({raw_devices})", now)
        # the kernel group's last evaluation covered every kernel (its timestamp is k_at)
        ruled = await _scalar(client, f"count(count by (kernel_id) ({kernel_rule}))", now)
        if ok_k == kernels and ruled == kernels and devices > 0 and ok_d == devices:
            k_at = await _scalar(client, f"max(timestamp({kernel_rule}))", now)
            a_at = await _scalar(client, f"max(timestamp({AGENT_CURRENT}))", now)
            return k_at, a_at
        await asyncio.sleep(0.5)
    raise AssertionError("recorded series did not settle in time")


@contextlib.asynccontextmanager
async def scraped_fleet(
    tmp_path: Path,
    start_prometheus: Callable[..., lab.PrometheusProcess],
    *,
    rates: str = "both",
    **fleet: Any,
) -> AsyncIterator[tuple[SimulatedFleet, PrometheusClient, str, float, float]]:
    """A simulated fleet scraped by a real Prometheus with the generated rules, settled.

    Yields the fleet, a client, the Prometheus URL and the kernel and agent rule groups'
    last evaluation times (see :func:`_settled_times`).
    """
    rule_files = write_rules(
        tmp_path / "rules",
        RuleProfile.parse(interval=INTERVAL, window=WINDOW, collect_interval=COLLECT, rates=rates),
    )
    # the agents' rate series are exact whatever the scrape jitter; constant gauges and no
    # churn keep the window statistics comparable
    config = FleetConfig(
        churn=None, gauge_period=3600.0, measure_interval=2.0, node_interval=2.0, **fleet
    )
    async with SimulatedFleet(config) as sim:
        prom = start_prometheus(
            scrape_targets=sim.targets,
            scrape_interval=INTERVAL,
            evaluation_interval=INTERVAL,
            rule_files=[p for p in rule_files if "test" not in p.name],
        )
        async with PrometheusClient(prom.url) as client:
            k_at, a_at = await _settled_times(client, len(sim.kernel_ids()), rates)
            yield sim, client, prom.url, k_at, a_at


@pytest.mark.parametrize("rates", ["both", "exporter"])
async def test_recorded_and_raw_plans_agree(
    tmp_path: Path, start_prometheus: Callable[..., lab.PrometheusProcess], rates: str
) -> None:
    """Both plans give the same live_stat for every kernel and agent of a scraped fleet.

    With ``rates="exporter"`` the rules read only the agents' rate series (no ``rate()``
    fallback): on a fleet of promstat exporters the numbers are the same as the raw plan's.
    """
    async with scraped_fleet(
        tmp_path,
        start_prometheus,
        rates=rates,
        agents=3,
        kernels_per_agent=6,
        gpu_agent_ratio=0.34,
        seed=7,
    ) as (fleet, client, _, k_at, a_at):
        kernels, agents = fleet.kernel_ids(), fleet.agent_ids()
        profile = RuleProfile.parse(
            interval=INTERVAL, window=WINDOW, collect_interval=COLLECT, rates=rates
        )
        raw = Planner(client, PlannerConfig(use_recorded=False), profile=profile)
        rec = Planner(client, PlannerConfig(use_recorded=None), profile=profile)
        raw_k, rec_k = await raw.kernels(kernels, at=k_at), await rec.kernels(kernels, at=k_at)
        raw_a, rec_a = await raw.agents(agents, at=a_at), await rec.agents(agents, at=a_at)
    assert rec_k.plan.startswith("recorded") and raw_k.plan.startswith("raw")
    assert rec_a.plan.startswith("recorded")
    for kernel_id in kernels:
        r, c = raw_k.payloads[kernel_id], rec_k.payloads[kernel_id]
        assert isinstance(r, dict) and isinstance(c, dict), (kernel_id, r, c, k_at)
        assert_payloads_agree(r, c, where=kernel_id)
        expected = fleet.expected_rate(kernel_id, "cpu_util")
        assert math.isclose(float(c["cpu_util"]["current"]), expected, rel_tol=1e-3)
    for agent_id in agents:
        r, c = raw_a.payloads[agent_id], rec_a.payloads[agent_id]
        assert isinstance(r, dict) and isinstance(c, dict), agent_id
        assert_payloads_agree(r["node"], c["node"], where=f"{agent_id} node")
        assert r["devices"].keys() == c["devices"].keys()
        for metric in r["devices"]:
            for device, fields in r["devices"][metric].items():
                assert_payloads_agree(
                    {metric: fields},
                    {metric: c["devices"][metric][device]},
                    where=f"{agent_id} {device}",
                )


async def _server_samples(url: str, queries: list[str], at: float) -> tuple[int, int]:
    """Total samples Prometheus touched (``stats=all``) and response bytes for the queries."""
    samples = size = 0
    async with aiohttp.ClientSession() as session:
        for query in queries:
            form = {"query": query, "time": str(at), "stats": "all"}
            async with session.post(f"{url}/api/v1/query", data=form) as resp:
                body = await resp.read()
                assert resp.status == 200, body[:200]
            size += len(body)
            samples += json.loads(body)["data"]["stats"]["samples"]["totalQueryableSamples"]
    return samples, size


async def test_recorded_plan_is_cheaper_for_the_server(
    tmp_path: Path, start_prometheus: Callable[..., lab.PrometheusProcess]
) -> None:
    """The recorded plan sends fewer queries and makes Prometheus touch far fewer samples."""
    async with scraped_fleet(
        tmp_path, start_prometheus, agents=2, kernels_per_agent=20, seed=3
    ) as (fleet, client, url, k_at, _):
        kernels = fleet.kernel_ids()
        # let the raw ranges fill (rate window 9 s plus the 4 s max/avg window): every target
        # scraped for 14 s; the agents' rate series settle the comparison long before
        await poll_until(
            lambda: client.query_vector("min(count_over_time(up[15s]))"),
            lambda v: bool(v.series) and float(v.series[0].value[1]) >= 14,
            timeout=120,
            interval=0.5,
            what="14 s of scrapes of every target",
        )
        k_at, _ = await _settled_times(client, len(kernels))
        profile = RuleProfile.parse(interval=INTERVAL, window=WINDOW, collect_interval=COLLECT)
        planner = Planner(client, PlannerConfig(fleet_fraction=None), profile=profile)
        raw_q = planner.queries("kernel", kernels, recorded=False)
        rec_q = planner.queries("kernel", kernels, recorded=True)
        raw_samples, raw_bytes = await _server_samples(url, raw_q, k_at)
        rec_samples, rec_bytes = await _server_samples(url, rec_q, k_at)
    assert len(rec_q) < len(raw_q)
    # the raw plan rates ranges of about four measurements and runs window subqueries;
    # recorded series are read at one instant: at least 3x fewer samples touched (about 7x
    # with this 4 s window of 1 s steps; production's 5 m window of 15 s steps: 20x or more)
    assert rec_samples * 3 <= raw_samples, (rec_samples, raw_samples)
    # the recorded family carries a `stat` label the raw shapes imply: it may cost a few
    # more bytes, never many more
    assert rec_bytes <= raw_bytes * 1.3, (rec_bytes, raw_bytes)


# -------------------------------------------------------------------------------------------
# Non-steady data: both plans through the planner on backfilled data with backfilled rules

T0 = 1_700_003_400  # a multiple of 60
SPAN = 900
C, S = 30, 15
RESET_KERNEL = "eeeeeeee-0000-4000-8000-000000000001"
DUP_KERNEL = "eeeeeeee-0000-4000-8000-000000000002"


def _odd_series() -> list[str]:
    """A counter reset 45 s before the end (first sampled 30 s before it, at the next
    measurement) and a duplicate frozen series from a second instance."""
    lines = []

    def series(kernel: str, metric: str, value_type: str, instance: str = "odd:6003") -> str:
        return (
            f'backendai_container_utilization{{container_metric_name="{metric}",'
            f'agent_id="i-odd",kernel_id="{kernel}",session_id="s",user_id="u",project_id="p",'
            f'value_type="{value_type}",instance="{instance}",job="agent"}}'
        )

    reset_at = T0 + SPAN - 45
    for i in range(SPAN // S + 1):
        t = T0 + i * S
        measured = T0 + (i * S // C) * C  # stair steps: each measurement scraped twice
        cpu = 1000.0 * (measured - T0) if measured < reset_at else 500.0 * (measured - reset_at)
        lines.append(f"{series(RESET_KERNEL, 'cpu_util', 'current')} {cpu} {t}")
        lines.append(f"{series(RESET_KERNEL, 'cpu_util', 'capacity')} 1000 {t}")
        lines.append(f"{series(DUP_KERNEL, 'mem', 'current')} {2 * 2**30 + i} {t}")
        lines.append(f"{series(DUP_KERNEL, 'mem', 'capacity')} {4 * 2**30} {t}")
        lines.append(f"{series(DUP_KERNEL, 'mem', 'current', 'old:6003')} {2**30} {t}")
        lines.append(f"{series(DUP_KERNEL, 'mem', 'capacity', 'old:6003')} {4 * 2**30} {t}")
    return lines


def _churny(publish_rates: bool, seed: int) -> FleetConfig:
    return FleetConfig(
        agents=1,
        kernels_per_agent=6,
        gpu_agent_ratio=1.0,
        churn=ChurnConfig(mean_lifetime=240, min_lifetime=45, max_gap=20),
        detention=60,
        epoch=T0,
        gauge_period=15.0,
        measure_interval=float(C),
        measure_offset=float(T0 + 11),
        publish_rates=publish_rates,
        seed=seed,
    )


WINDOW_KEYS = ("stats.max", "stats.avg")


def _series_end(fleets: list[SimulatedFleet], kernel_id: str) -> float | None:
    """When a simulated kernel's series stop (end + detention), or None if they never do."""
    for f in fleets:
        try:
            k = f.kernel(kernel_id)
        except ConfigError:
            continue
        return None if k.end is None else k.end + f.config.detention
    return None


def _compare(raw: dict[str, Any], rec: dict[str, Any], where: str, diffs: list[str]) -> None:
    """Instant fields equal to float precision; window statistics collected, not asserted."""
    assert raw.keys() == rec.keys(), where
    for metric, fields in raw.items():
        assert fields.keys() == rec[metric].keys(), f"{where} {metric}"
        for key, value in fields.items():
            other = rec[metric][key]
            if key in WINDOW_KEYS:
                if not close(value, other, rel=1e-9):
                    diffs.append(f"{where} {metric}.{key}: raw {value} recorded {other}")
                continue
            assert value == other or close(value, other, rel=1e-9), (
                f"{where} {metric}.{key}: raw {value} != recorded {other}"
            )


def test_recorded_and_raw_agree_on_changing_data(tmp_path: Path) -> None:
    """Stair-step counters (measure 30 s, scrape 15 s), a counter reset, a stale duplicate,
    kernel churn with young and terminated kernels, gauges changing every scrape, both
    exporters: at each rule evaluation time the recorded plan (with its raw fallback for
    kernels younger than a rule evaluation) and the raw plan give the same current, capacity,
    pct and stats.rate. Window statistics may differ on changing data (docs/numbers.md,
    "Known differences"): they are counted and printed (``-s``), not asserted."""
    fleets = [SimulatedFleet(_churny(True, 21)), SimulatedFleet(_churny(False, 22))]
    tags = ("own", "plain")
    om = merge_openmetrics(
        (
            fleet_openmetrics(f.config, T0, T0 + SPAN, S).replace("i-sim-", f"i-{tag}-")
            for f, tag in zip(fleets, tags, strict=True)
        ),
        _odd_series(),
    )
    end = T0 + SPAN
    with prometheus_with_rules(tmp_path, C, S, om, T0 + 200, end) as prom:
        # each rule group evaluates at its own offset: compare at those instants
        last, a_last = (
            float(prom.query(f"max(timestamp({q}))", at=end)[0]["value"][1])
            for q in (KERNEL_CURRENT, AGENT_CURRENT)
        )
        times = [last - k * S for k in (0, 1, 3, 6, 9)]
        # (node evaluation time, the device evaluation it read): promtool evaluates the
        # backfilled stages at offsets of its own, so the two can differ (a live server
        # evaluates one group at one timestamp)
        device_current = AGENT_CURRENT.replace("agent_metric:", "agent_device_metric:")
        agent_times = []
        for k in (0, 1, 3, 6, 9):
            a_at = a_last - k * S
            rows = prom.query(f"max(timestamp({device_current}))", at=a_at)
            agent_times.append((a_at, float(rows[0]["value"][1])))
        agent_ids = [f"i-{tag}-0000" for tag in tags]
        window_diffs: list[str] = []
        seen_plans: set[str] = set()
        checked_reset = False

        async def run() -> None:
            nonlocal checked_reset
            async with PrometheusClient(prom.url) as client:
                profile = RuleProfile(interval=float(S), collect_interval=float(C))
                raw = Planner(client, PlannerConfig(use_recorded=False), profile=profile)
                rec = Planner(client, PlannerConfig(use_recorded=None), profile=profile)
                for at in times:
                    kernels = [RESET_KERNEL, DUP_KERNEL]
                    for f in fleets:
                        lo = at - 300
                        kernels += [
                            k.kernel_id
                            for a in f.agent_ids()
                            for k in f._model.kernels_overlapping(a, lo, at)
                        ]
                    r, c = await raw.kernels(kernels, at=at), await rec.kernels(kernels, at=at)
                    seen_plans.add(c.plan)
                    for k in kernels:
                        rp, cp = r.payloads[k], c.payloads[k]
                        if rp is None and cp is not None:
                            # Backfilled rule output has no staleness markers, so it outlives
                            # its raw series by up to the lookback; a live server marks it
                            # stale at the first evaluation without input.
                            gone = _series_end(fleets, k)
                            assert gone is not None and gone <= at - 300 + S, (k, at, cp)
                            continue
                        assert (rp is None) == (cp is None), (k, at, rp, cp)
                        if isinstance(rp, dict) and isinstance(cp, dict):
                            _compare(rp, cp, f"{k} @{at}", window_diffs)
                    # node rules read the device records of the last device evaluation
                    a_at, d_at = agent_times[times.index(at)]
                    ra = await raw.agents(agent_ids, at=d_at)
                    ca = await rec.agents(agent_ids, at=a_at)
                    for a in agent_ids:
                        rp, cp = ra.payloads[a], ca.payloads[a]
                        assert isinstance(rp, dict) and isinstance(cp, dict), a
                        _compare(rp["node"], cp["node"], f"{a} node @{a_at}", window_diffs)
                    reset = r.payloads[RESET_KERNEL]
                    assert isinstance(reset, dict)
                    if 0 <= at - (end - 30) < S:  # the last two samples show the reset: 0
                        assert reset["cpu_util"]["current"] == "0", (at, reset)
                        checked_reset = True
                    dup = c.payloads[DUP_KERNEL]
                    assert isinstance(dup, dict)
                    # the frozen duplicate never adds up: max, not sum
                    assert dup["mem"]["capacity"] == str(4 * 2**30)
                    assert int(dup["mem"]["current"]) > 2 * 2**30

        asyncio.run(run())
    assert any(p.startswith("recorded") for p in seen_plans), seen_plans
    assert checked_reset, "no evaluation time saw the reset as the last two samples"
    print(f"window statistics differing between plans: {len(window_diffs)}")
    for line in window_diffs[:10]:
        print(line)
