"""``--rates exporter``: recording rules that read the agents' rate series only.

The default (``both``) also evaluates a ``rate()`` fallback for agents that export raw counters
only; PromQL has no short-circuit ``or``, so that fallback costs as much with a fleet of
promstat exporters as without. ``exporter`` drops it. These tests pin what each mode means:
the expressions, the rendered files and the command line, and on a real Prometheus what a
plain agent looks like under ``exporter`` rules (its rates are gone, the
``PromstatRateSeriesMissing`` alert names it). That both modes give the same numbers on a
fleet of promstat exporters is ``test_recorded_vs_raw.test_recorded_and_raw_plans_agree``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from promstat.cli import main as cli_main
from promstat.client import PrometheusClient
from promstat.errors import ConfigError
from promstat.expressions import LiveStatExpressions, RateSource
from promstat.generate.alerts import build_alert_groups
from promstat.generate.rule_tests import rule_tests_apply
from promstat.generate.rules import render_rules, write_rules
from promstat.planner import Planner, PlannerConfig
from promstat.profile import RuleProfile
from promstat.testing import lab
from promstat.testing.sim import FleetConfig, SimulatedFleet

FALLBACK_PARTS = ("rate(", "idelta(", "* 0", "and on")


def test_exporter_expressions_have_no_fallback() -> None:
    """Every rate-bearing expression drops rate(), the reset check and the guards."""
    both = LiveStatExpressions()
    exporter = LiveStatExpressions(rates="exporter")  # type: ignore[arg-type]
    assert exporter.rates is RateSource.EXPORTER
    for build in (
        lambda e: e.kernel("current"),
        lambda e: e.kernel("rate"),
        lambda e: e.device("current"),
    ):
        b, x = build(both), build(exporter)
        assert all(part in b for part in ("rate(", "idelta(", "* 0")), b
        assert not any(part in x for part in FALLBACK_PARTS), x
        assert 'value_type="rate"' in x
        assert len(x) < len(b) / 2
    # capacities and the recorded window statistics read no counters: the same in both modes
    assert both.kernel("capacity") == exporter.kernel("capacity")
    for stat in ("max", "avg"):
        assert both.kernel_recorded_window(stat) == exporter.kernel_recorded_window(stat)


def test_invalid_rate_source_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"rates must be one of 'both', 'exporter', got 'fast'"):
        LiveStatExpressions(rates="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rates must be one of"):
        render_rules(RuleProfile.parse(rates="fast"))


def test_rendered_files_say_their_mode(tmp_path: Path) -> None:
    """The header's command line reproduces the mode; promtool unit tests (a scenario of
    plain agents) are written for ``both`` only."""
    exporter = render_rules(RuleProfile.parse(rates="exporter"))
    kernel = exporter["promstat-kernel.rules.yml"]
    assert "promstat rules render --interval 15s --window 5m --rates exporter)" in kernel
    assert "idelta" not in kernel and "rate(" not in kernel
    assert "--rates" not in render_rules()["promstat-kernel.rules.yml"]
    assert rule_tests_apply() and not rule_tests_apply(RuleProfile.parse(rates="exporter"))
    written = write_rules(tmp_path, RuleProfile.parse(rates=RateSource.EXPORTER))
    assert sorted(p.name for p in written) == [
        "promstat-agent.rules.yml",
        "promstat-kernel.rules.yml",
    ]


def test_cli_rates_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["rules", "render", "--output", str(tmp_path), "--rates", "exporter"]) == 0
    assert "--rates both" in capsys.readouterr().out  # the note on unit tests
    doc = yaml.safe_load((tmp_path / "promstat-kernel.rules.yml").read_text())
    exprs = [r["expr"] for g in doc["groups"] for r in g["rules"]]
    assert exprs and not any("idelta" in e for e in exprs)
    with pytest.raises(SystemExit):
        cli_main(["rules", "render", "--output", str(tmp_path), "--rates", "fast"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err


@pytest.mark.slow
async def test_plain_agent_under_exporter_rules(
    tmp_path: Path, start_prometheus: Callable[..., lab.PrometheusProcess]
) -> None:
    """A plain upstream agent (raw counters only) under ``--rates exporter`` rules: its
    gauges are served, its rates are not (``cpu_util``/``net_*`` absent, ``io_*``
    ``stats.rate`` "0" as for a kernel without a rate), and the rate-missing alert's expression
    names it; the same fleet under ``both`` rules shows the rates."""
    config = FleetConfig(
        agents=2,
        kernels_per_agent=3,
        seed=11,
        churn=None,
        publish_rates=False,
        measure_interval=1.0,
        node_interval=1.0,
    )
    alert = next(
        r.expr
        for g in build_alert_groups()
        for r in g.rules
        if r.alert == "PromstatRateSeriesMissing"
    )
    seen: dict[str, dict[str, object]] = {}
    async with SimulatedFleet(config) as sim:
        for rates in ("exporter", "both"):
            rules = write_rules(
                tmp_path / rates,
                RuleProfile.parse(interval="1s", window="4s", collect_interval="1s", rates=rates),
            )
            prom = start_prometheus(
                scrape_targets=sim.targets,
                scrape_interval="1s",
                evaluation_interval="1s",
                rule_files=[p for p in rules if p.name.endswith(".rules.yml")],
            )
            async with PrometheusClient(prom.url) as client:
                planner = Planner(
                    client,
                    PlannerConfig(use_recorded=True),
                    profile=RuleProfile(interval=1.0, rates=rates),
                )
                kernels = sim.kernel_ids()
                deadline = time.monotonic() + 60
                while True:
                    out = await planner.kernels(kernels)
                    payloads = [out.payloads[k] for k in kernels]
                    if all(isinstance(p, dict) and "mem" in p for p in payloads) and (
                        rates == "exporter"
                        # the first evaluations see one sample: a rate of 0 until two are in
                        or all(
                            float(p.get("cpu_util", {}).get("current", 0)) > 0  # type: ignore[union-attr]
                            for p in payloads
                        )
                    ):
                        break
                    assert time.monotonic() < deadline, f"{rates}: no data in time: {payloads}"
                    await asyncio.sleep(0.5)
                firing = await client.query(alert)
            seen[rates] = {k: out.payloads[k] for k in kernels}
            agents = {s.metric.get("agent_id") for s in firing.vector}
            assert agents == set(sim.agent_ids()), rates
    for kernel, payload in seen["exporter"].items():
        assert isinstance(payload, dict)
        assert "mem" in payload and "cpu_util" not in payload and "net_rx" not in payload
        assert payload["io_read"]["stats.rate"] == "0", kernel
        both = seen["both"][kernel]
        assert isinstance(both, dict) and "cpu_util" in both and "net_rx" in both, kernel
        assert float(both["cpu_util"]["current"]) > 0, kernel
