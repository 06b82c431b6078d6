"""Rates under real agent timing: measurement interval C, scrape interval S, both phases.

Agents measure every C seconds on their own timer; Prometheus scrapes every S seconds and stores
the last measurement each time, so with S < C every measurement is stored two or more times
(stair-step counters). For each (C, S) of :data:`GRID`, both phases of the measurement grid
against the scrapes, and two exporters:

* ``own`` — promstat's exporter: raw counters plus the agent-computed ``value_type="rate"``;
  must be legacy-exact (the rate between the last two measurements, within 0.5%);
* ``plain`` — an upstream agent: raw counters only; the rules and the raw plan take ``rate()``
  over ``4 x max(C, S) + S``, and must stay within :data:`PLAIN_BOUND` of the true rate (never
  0, never a multiple of it).

The rules run every S seconds (``rules render --interval`` = the scrape interval, the default)
and, in :data:`RULE_GRID`, also every C seconds (the agents' measurement interval, the cheaper
setting of ``docs/rules.md``). Freshness: a gauge steps once; its recorded ``current`` shows
the new measurement exactly, never a mix, at most S + R after the agent measured it (R: the
rules' interval), and the raw plan's at most S after.

Checked through promtool unit tests (recorded series and raw expressions at many evaluation
times) and on a real Prometheus through the planner (raw and recorded plans, the rules
backfilled with ``promtool tsdb create-blocks-from rules``). The worst relative errors measured
on the real server are written to ``timing-errors.json`` in the test's temporary directory and
printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from _support.rules_backfill import merge_openmetrics, prometheus_with_rules

from promstat.client import PrometheusClient
from promstat.conventions import SeriesNames
from promstat.expressions import LiveStatExpressions
from promstat.generate.rules import write_rules
from promstat.planner import Planner, PlannerConfig
from promstat.profile import RuleProfile
from promstat.promql import duration
from promstat.testing import lab
from promstat.testing.sim import FleetConfig, SimulatedFleet, fleet_openmetrics

#: (measurement interval C, scrape interval S) in seconds.
GRID: tuple[tuple[int, int], ...] = ((5, 15), (15, 15), (30, 15), (30, 20), (60, 15))
#: Documented worst relative error of a steady rate with raw counters only (benchmarks/README.md,
#: "Rate accuracy"); the issue's target is 20% at (30, 15) and (30, 20).
PLAIN_BOUND: Mapping[tuple[int, int], float] = {
    (5, 15): 0.05,
    (15, 15): 0.05,
    (30, 15): 0.12,
    (30, 20): 0.15,
    (60, 15): 0.18,
}
#: (C, S, R): the rules every R seconds; R = S everywhere, and R = C where Backend.AI's agents
#: measure every 30 s (docs/rules.md, "What they cost": 0.5-0.65 of the CPU at 30 s).
RULE_GRID: tuple[tuple[int, int, int], ...] = (
    *((c, s, s) for c, s in GRID),
    (30, 15, 30),
    (30, 20, 30),
)
#: The stepping gauge: 1000 until the agent's first measurement at or after STEP_AT, 2000 on.
STEP_AT = 700.0
GAUGE_BEFORE, GAUGE_AFTER = 1000.0, 2000.0
#: With the agent's own rate series: legacy-exact.
OWN_BOUND = 0.005
#: True per-second rates of the promtool scenario's steady counters.
RATES: Mapping[str, float] = {"cpu_util": 1000.0, "net_rx": 125000.0, "io_read": 4096.0}
NAMES = SeriesNames()
REC = NAMES.kernel_live_stat


def _phases(c: int, s: int) -> tuple[float, float]:
    """Measurement phases: ticks on the scrape grid, and half a scrape interval off it."""
    return 0.0, s / 2


def _rule_ids(grid: Sequence[tuple[int, int, int]]) -> list[str]:
    return [f"C{c}-S{s}" + (f"-R{r}" if r != s else "") for c, s, r in grid]


def _last_measurement(c: int, phase: float, t: float) -> float:
    """When the agent measuring every ``c`` s at ``phase`` last measured, at time ``t``."""
    return phase + math.floor((t - phase) / c) * c


def _eval_time(at: float) -> str:
    """A promtool ``eval_time`` to the millisecond."""
    return duration(round(at * 1000) / 1000)


def _step_measured(c: int, phase: float) -> float:
    """When the agent measuring every ``c`` s at ``phase`` first measures the stepped gauge."""
    return phase + math.ceil((STEP_AT - phase) / c) * c


def _bound(exporter: str, c: int, s: int) -> float:
    return OWN_BOUND if exporter == "own" else PLAIN_BOUND[(c, s)]


# -------------------------------------------------------------------------------------------
# promtool unit tests


def _stairs(c: int, s: int, phase: float, rate: float, n: int) -> list[float]:
    """A steady counter measured every ``c`` s at ``phase``, sampled every ``s`` s."""
    base = 1e7
    out = []
    for i in range(n):
        t = i * s
        out.append(base + rate * _last_measurement(c, phase, t))
    return out


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def _input_series(c: int, s: int, n: int) -> list[dict[str, str]]:
    series = []
    for exporter in ("own", "plain"):
        for p, phase in enumerate(_phases(c, s)):
            kernel = f"{exporter}-{p}"

            def one(metric: str, value_type: str, values: Sequence[float], kernel: str = kernel):
                labels = (
                    f'{NAMES.container_metric}{{kernel_id="{kernel}",'
                    f'container_metric_name="{metric}",value_type="{value_type}",'
                    'agent_id="ag",instance="ag:6003",job="agent"}'
                )
                return {"series": labels, "values": " ".join(_fmt(v) for v in values)}

            series.append(one("cpu_util", "capacity", [1000.0] * n))
            step = _step_measured(c, phase)
            mem = [
                GAUGE_AFTER if _last_measurement(c, phase, i * s) >= step else GAUGE_BEFORE
                for i in range(n)
            ]
            series.append(one("mem", "current", mem))
            for metric, rate in RATES.items():
                series.append(one(metric, "current", _stairs(c, s, phase, rate, n)))
                if exporter == "own":
                    series.append(one(metric, "rate", [rate] * n))
    return series


def _checks(ex: LiveStatExpressions, exporter: str, bound: float) -> Iterator[str]:
    """Expressions whose value is the number of phases (2) when every rate is within bound."""
    kernels = f'kernel_id=~"{exporter}-.*"'
    cases = [
        ("cpu_util", "current"),
        ("net_rx", "current"),
        ("io_read", "rate"),
        ("cpu_util", "max"),
        ("cpu_util", "avg"),
    ]
    for metric, stat in cases:
        true = RATES[metric]
        rec = f'{REC}{{stat="{stat}",container_metric_name="{metric}",{kernels}}}'
        raw = ex.kernel(stat, matchers=f'{kernels},container_metric_name="{metric}"')
        for expr in (rec, raw):
            yield f"count(abs(({expr}) / {_fmt(true)} - 1) <= {bound})"


def _freshness_checks(ex: LiveStatExpressions, c: int, s: int, r: int) -> Iterator[dict[str, Any]]:
    """The stepped gauge of each kernel: the old value just before the agent measured the new
    one; the new one S + R later in the recorded series and S later in the raw plan."""
    for exporter in ("own", "plain"):
        for p, phase in enumerate(_phases(c, s)):
            kernel = f'kernel_id="{exporter}-{p}"'
            rec = f'{REC}{{stat="current",container_metric_name="mem",{kernel}}}'
            raw = ex.kernel("current", matchers=f'{kernel},container_metric_name="mem"')
            step = _step_measured(c, phase)
            for expr, at, value in (
                (rec, step - 0.001, GAUGE_BEFORE),
                (raw, step - 0.001, GAUGE_BEFORE),
                (rec, step + s + r, GAUGE_AFTER),
                (raw, step + s, GAUGE_AFTER),
            ):
                yield {
                    "expr": f"count(({expr}) == {_fmt(value)})",
                    "eval_time": _eval_time(at),
                    "exp_samples": [{"labels": "{}", "value": 1}],
                }


def _promtool_doc(
    c: int, s: int, rule_files: Sequence[str], r: int | None = None
) -> dict[str, Any]:
    r = r or s
    n = 1200 // s + 1
    ex = LiveStatExpressions(interval=f"{r}s", collect_interval=f"{c}s")
    eval_times: list[float] = []
    t = 600.0
    while t <= 600 + 2 * max(c, r) + r:
        eval_times += [t, t + s / 3]  # on the rule grid, and between rule evaluations
        t += s
    tests = []
    for exporter in ("own", "plain"):
        for expr in _checks(ex, exporter, _bound(exporter, c, s)):
            for at in eval_times:
                tests.append(
                    {
                        "expr": expr,
                        "eval_time": _eval_time(at),
                        "exp_samples": [{"labels": "{}", "value": 2}],
                    }
                )
    tests += _freshness_checks(ex, c, s, r)
    return {
        "rule_files": list(rule_files),
        "evaluation_interval": f"{r}s",
        "tests": [
            {
                "interval": f"{s}s",
                "input_series": _input_series(c, s, n),
                "promql_expr_test": tests,
            }
        ],
    }


@pytest.mark.parametrize(("c", "s", "r"), RULE_GRID, ids=_rule_ids(RULE_GRID))
def test_promtool_rates_within_bounds(tmp_path: Path, c: int, s: int, r: int) -> None:
    """Recorded and raw rates (current, stats.rate, stats.max/avg) stay within the bound at
    every evaluation, for both exporters and both measurement phases, with the rules every
    S or every C seconds; a stepped gauge reaches the recorded series within S + R."""
    promtool = lab.require_binary("promtool")
    rules = [
        p
        for p in write_rules(
            tmp_path, RuleProfile.parse(interval=f"{r}s", collect_interval=f"{c}s")
        )
        if p.name.endswith(".rules.yml")
    ]
    test_file = tmp_path / "timing.test.yml"
    doc = _promtool_doc(c, s, [str(p) for p in rules], r)
    test_file.write_text(yaml.safe_dump(doc, sort_keys=False, width=1 << 20), encoding="utf-8")
    proc = subprocess.run(
        [promtool, "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def test_promtool_check_catches_a_rate_out_of_bound(tmp_path: Path) -> None:
    """The bound checks can fail: irate over the last two scrapes (the old rules) breaks
    them at (C, S) = (30, 15), where it reads 0 or 2x."""
    promtool = lab.require_binary("promtool")
    c, s = 30, 15
    doc = _promtool_doc(c, s, [])
    rate = f'irate({NAMES.container_metric}{{value_type="current",kernel_id=~"plain-.*"}}[5m])'
    checks = [f"count(abs({rate} / {_fmt(RATES[m])} - 1) <= 0.2)" for m in ("cpu_util",)]
    tests = doc["tests"][0]
    tests["promql_expr_test"] = [
        {"expr": e.replace("kernel_id", 'container_metric_name="cpu_util",kernel_id'),
         "eval_time": f"{t}s", "exp_samples": [{"labels": "{}", "value": 2}]}
        for e in checks
        for t in (600, 615, 630, 645)
    ]  # fmt: skip
    test_file = tmp_path / "irate.test.yml"
    test_file.write_text(yaml.safe_dump(doc, sort_keys=False, width=1 << 20), encoding="utf-8")
    proc = subprocess.run(
        [promtool, "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode != 0


# -------------------------------------------------------------------------------------------
# A real Prometheus through the planner

T0 = 1_700_000_400  # a multiple of 60: on every scrape grid of GRID
SPAN = 1200


@dataclasses.dataclass(frozen=True)
class _Fleet:
    exporter: str
    phase: float
    sim: SimulatedFleet
    tag: str

    def agent(self, sim_agent: str) -> str:
        return sim_agent.replace("i-sim-", f"i-{self.tag}-")


def _fleets(c: int, s: int) -> list[_Fleet]:
    out = []
    for exporter in ("own", "plain"):
        for p, phase in enumerate(_phases(c, s)):
            config = FleetConfig(
                agents=1,
                kernels_per_agent=3,
                gpu_agent_ratio=0.0,
                churn=None,
                epoch=T0,
                gauge_period=3600.0,
                node_interval=float(c),
                measure_interval=float(c),
                measure_offset=float(T0) + phase,
                publish_rates=exporter == "own",
                seed=1000 + 10 * p + (exporter == "own"),
            )
            out.append(_Fleet(exporter, phase, SimulatedFleet(config), f"{exporter}{p}"))
    return out


def _openmetrics(fleets: Sequence[_Fleet], s: int) -> str:
    """All fleets' samples every ``s`` seconds in one OpenMetrics text."""
    return merge_openmetrics(
        fleet_openmetrics(f.sim.config, T0, T0 + SPAN, s).replace("i-sim-", f"i-{f.tag}-")
        for f in fleets
    )


def _rel(got: str | None, true: float) -> float:
    if got is None:
        return math.inf
    return abs(float(got) / true - 1)


async def _worst_errors(
    url: str, c: int, r: int, fleets: Sequence[_Fleet], times: Sequence[float]
) -> dict[str, dict[str, float]]:
    """``{"<plan>/<exporter>": {metric: worst relative error}}`` over ``times`` (rules every
    ``r`` seconds)."""
    worst: dict[str, dict[str, float]] = {}
    async with PrometheusClient(url) as client:
        for plan, use_recorded in (("raw", False), ("recorded", True)):
            profile = RuleProfile(interval=float(r), collect_interval=float(c))
            planner = Planner(client, PlannerConfig(use_recorded=use_recorded), profile=profile)
            for f in fleets:
                w = worst.setdefault(f"{plan}/{f.exporter}", {})
                kernels = f.sim.kernel_ids(at=T0)
                (sim_agent,) = f.sim.agent_ids()
                agent = f.agent(sim_agent)
                for at in times:
                    out = await planner.kernels(kernels, at=at)
                    for k in kernels:
                        payload = out.payloads[k]
                        assert isinstance(payload, dict), (plan, f.tag, k, at, payload)
                        for metric, key in (
                            ("cpu_util", "current"),
                            ("net_rx", "current"),
                            ("io_read", "stats.rate"),
                            ("cpu_util", "stats.max"),
                            ("cpu_util", "stats.avg"),
                        ):
                            err = _rel(payload[metric].get(key), f.sim.expected_rate(k, metric))
                            name = f"{metric} {key}"
                            w[name] = max(w.get(name, 0.0), err)
                    agents = await planner.agents([agent], at=at)
                    node = agents.payloads[agent]
                    assert isinstance(node, dict), (plan, f.tag, at, node)
                    true = f.sim.expected_device_rate(sim_agent, "net_rx", "node")
                    err = _rel(node["node"]["net_rx"]["current"], true)
                    w["node net_rx current"] = max(w.get("node net_rx current", 0.0), err)
    return worst


@pytest.mark.slow
@pytest.mark.parametrize(("c", "s", "r"), RULE_GRID, ids=_rule_ids(RULE_GRID))
def test_planner_rates_on_real_prometheus(tmp_path: Path, c: int, s: int, r: int) -> None:
    """Both plans, both exporters, both phases, the rules every S or every C seconds: every
    rate within its bound at evaluation times sweeping two measurement intervals (so every
    phase against the evaluation time)."""
    fleets = _fleets(c, s)
    om = _openmetrics(fleets, s)
    # Rules evaluate at the group's own offset from the scrapes (promtool picks it, as a
    # server does); the raw plan is evaluated at times sweeping every phase.
    rules_start = T0 + 300
    # the kernel rules sharded four ways: every kernel must still have its recorded series
    with prometheus_with_rules(
        tmp_path, c, s, om, rules_start, T0 + SPAN, kernel_shards=4, every=r
    ) as prom:
        first = T0 + 900.0
        times = [first + i * 2.3 for i in range(int((2 * max(c, r) + r) / 2.3) + 1)]
        worst = asyncio.run(_worst_errors(prom.url, c, r, fleets, times))
    report = {_rule_ids([(c, s, r)])[0]: worst}
    (tmp_path / "timing-errors.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    for plan_exporter, errors in worst.items():
        bound = _bound(plan_exporter.split("/")[1], c, s)
        for metric, err in errors.items():
            assert err <= bound, (plan_exporter, metric, err, bound)
