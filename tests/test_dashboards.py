"""Tests for promstat.generate.dashboards: committed files, required fields, PromQL, live data."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from promstat.agent.exporter import ExporterServer, UtilizationExporter
from promstat.apps.demo import alert_summary
from promstat.catalog import DEFAULT_CATALOG, Catalog, Kind
from promstat.cli import build_parser
from promstat.client import PrometheusClient
from promstat.conventions import SeriesNames
from promstat.errors import PromstatError
from promstat.generate.alerts import demo_settings, write_alerts
from promstat.generate.dashboards import (
    DASHBOARD_FILES,
    MetricFamily,
    build_dashboards,
    catalog_families,
    iter_targets,
    render_dashboards,
    write_dashboards,
)
from promstat.generate.rules import write_rules
from promstat.profile import RuleProfile
from promstat.selfmetrics import PromstatMetrics
from promstat.testing import lab
from promstat.testing.sim import FleetConfig, SimulatedFleet

DASHBOARDS_DIR = Path(__file__).resolve().parent.parent / "dashboards"
NAMES = SeriesNames()
_VAR = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text(encoding="utf-8")
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _models(rates: str = "both") -> dict[str, dict[str, Any]]:
    return {
        name: json.loads(text)
        for name, text in render_dashboards(rates=rates).items()
        if name.endswith(".json")
    }


def _all_panels(model: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for panel in model["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _substitute(expr: str, values: Mapping[str, str]) -> str:
    """Grafana's substitution for tests: ``$__rate_interval`` and the template variables."""
    return _VAR.sub(lambda m: values[m.group(1) or m.group(2)], expr)


# ------------------------------------------------------------------------ generated files


def test_committed_dashboards_match_generator(tmp_path: Path) -> None:
    """dashboards/ is byte-identical to a fresh render (no hand edits, no stale output)."""
    write_dashboards(tmp_path)
    hint = "dashboards/ is out of date: run `promstat dashboards render --output dashboards`"
    assert _tree(tmp_path) == _tree(DASHBOARDS_DIR), hint


def test_cli_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dashboards render --output DIR` writes the committed files."""
    parser = build_parser()
    args = parser.parse_args(["dashboards", "render", "--output", str(tmp_path)])
    assert args.handler(args) == 0
    assert _tree(tmp_path) == _tree(DASHBOARDS_DIR)
    assert "promstat-fleet.json" in capsys.readouterr().out


def test_dashboards_have_the_fields_grafana_needs() -> None:
    """Stable unique uids, titles, schema, unique panel ids, grid positions, typed panels."""
    models = _models()
    assert sorted(models) == sorted(DASHBOARD_FILES.values())
    uids = [m["uid"] for m in models.values()]
    assert sorted(uids) == sorted(DASHBOARD_FILES)
    for name, model in models.items():
        assert DASHBOARD_FILES[model["uid"]] == name
        assert model["title"] and model["schemaVersion"] >= 36
        assert model["time"]["to"] == "now" and model["refresh"]
        ids = [p["id"] for p in _all_panels(model)]
        assert len(ids) == len(set(ids)), name
        for panel in _all_panels(model):
            assert panel["type"] in {"row", "timeseries", "stat", "bargauge"}
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
            if panel["type"] != "row":
                assert panel["targets"] and panel["title"], panel
                assert panel["fieldConfig"]["defaults"]["unit"]
        # panels never overlap (Grafana would shuffle them)
        cells: set[tuple[int, int]] = set()
        for panel in model["panels"]:
            pos = panel["gridPos"]
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in cells, (name, panel["title"])
                    cells.add((x, y))


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    """Panels, targets and query variables point at ${datasource}, a prometheus datasource."""
    for name, model in _models().items():
        variables = model["templating"]["list"]
        assert variables[0]["name"] == "datasource" and variables[0]["type"] == "datasource"
        assert variables[0]["query"] == "prometheus"
        for var in variables[1:]:
            assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, name
        for panel in _all_panels(model):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids))
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"
                assert target["expr"]


def test_template_variables() -> None:
    """agent/user/project/session/kernel come from label_values on the raw container series."""
    models = {m["uid"]: m for m in _models().values()}
    names = {uid: [v["name"] for v in m["templating"]["list"]] for uid, m in models.items()}
    assert names["promstat-kernel"] == [
        "datasource",
        "agent",
        "user",
        "project",
        "session",
        "kernel",
    ]
    assert names["promstat-fleet"] == names["promstat-kernel"]
    assert names["promstat-agent"] == ["datasource", "agent"]
    assert names["promstat-self"] == ["datasource", "job", "instance"]
    for var in models["promstat-kernel"]["templating"]["list"][1:]:
        assert var["definition"].startswith(f"label_values({NAMES.container_metric}{{")
        assert var["query"]["query"] == var["definition"]
        assert var["includeAll"] and var["multi"] and var["allValue"] == ".*"
    kernel = models["promstat-kernel"]["templating"]["list"][-1]["definition"]
    assert 'session_id=~"$session"' in kernel and kernel.endswith(", kernel_id)")


def test_every_variable_used_is_defined() -> None:
    """Every $var in a query is a variable of its dashboard (or Grafana's $__rate_interval)."""
    for name, model in _models().items():
        defined = {v["name"] for v in model["templating"]["list"]} | {"__rate_interval"}
        used: set[str] = set()
        for _, target in iter_targets(model):
            used |= {a or b for a, b in _VAR.findall(target["expr"])}
        for var in model["templating"]["list"][1:]:
            used |= {a or b for a, b in _VAR.findall(var["definition"])}
        assert used <= defined, (name, used - defined)


def test_every_query_parses() -> None:
    """Every target and variable query is valid PromQL once the variables are substituted."""
    values = {"__rate_interval": "1m"}
    count = 0
    for model in _models().values():
        for var in model["templating"]["list"]:
            values[var["name"]] = ".*"
        for _, target in iter_targets(model):
            promql_parser.parse(_substitute(target["expr"], values))
            count += 1
        for var in model["templating"]["list"][1:]:
            inner = var["definition"].removeprefix("label_values(").rsplit(",", 1)[0]
            promql_parser.parse(_substitute(inner, values))
    assert count >= 60


def test_queries_never_read_the_recorded_pct_series() -> None:
    """pct is current / capacity of the recorded stats; the recorded pct family is going away."""
    for model in _models().values():
        for _, target in iter_targets(model):
            assert ":pct" not in target["expr"]


def test_one_kernel_panel_per_catalog_family() -> None:
    """The kernel drill-down has a panel per catalog entry, and a rate panel for stats.rate."""
    kernel = next(m for m in _models().values() if m["uid"] == "promstat-kernel")
    titles = [p["title"] for p in _all_panels(kernel)]
    for fam in catalog_families():
        assert any(t.startswith(f"{fam.title} (") for t in titles), fam.title
    assert "io_read rate (per second)" in titles and "mem rate (per second)" not in titles
    mem = next(p for p in _all_panels(kernel) if p["title"] == "mem (bytes)")
    assert mem["fieldConfig"]["defaults"]["unit"] == "bytes"
    assert 'stat=~"current|capacity|max"' in mem["targets"][0]["expr"]


def test_catalog_families_respect_lookup_precedence() -> None:
    """A pattern excludes exact names and earlier patterns, as Catalog.lookup resolves them."""
    families = {f.title: f for f in catalog_families()}
    util = families[".+_util"]
    assert util.matchers("m") == 'm=~".+_util", m!~"cpu_util|.+_mem"'
    assert families["mem"].matchers("m") == 'm="mem"'
    catalog = Catalog.from_yaml("metrics:\n  - pattern: 'npu\\d+_(util|load)'\n    stats: [max]\n")
    first = catalog_families(catalog)[len(catalog.exact)]
    assert first.pattern == "npu\\d+_(util|load)" and first.exclude == ()
    later = {f.title: f for f in catalog_families(catalog)}[".+_util"]
    assert "(?:npu\\d+_(util|load))" in later.exclude


def test_custom_catalog_adds_panels() -> None:
    """A metric added to the catalog gets kernel, node and device panels."""
    catalog = DEFAULT_CATALOG.extended({"tpu_duty": DEFAULT_CATALOG.lookup("cuda_util")})
    boards = {b.uid: b.to_dict() for b in build_dashboards(catalog=catalog)}
    kernel_titles = [p["title"] for p in _all_panels(boards["promstat-kernel"])]
    agent_titles = [p["title"] for p in _all_panels(boards["promstat-agent"])]
    assert "tpu_duty (percent)" in kernel_titles
    assert {"Node tpu_duty (percent)", "Devices: tpu_duty (percent)"} <= set(agent_titles)


def test_provisioning_files() -> None:
    """A file provider for the dashboards and a Prometheus datasource example, valid YAML."""
    provider = yaml.safe_load(
        (DASHBOARDS_DIR / "provisioning/dashboards/promstat.yaml").read_text(encoding="utf-8")
    )
    (prov,) = provider["providers"]
    assert provider["apiVersion"] == 1 and prov["type"] == "file" and prov["options"]["path"]
    ds = yaml.safe_load(
        (DASHBOARDS_DIR / "provisioning/datasources/prometheus.example.yaml").read_text(
            encoding="utf-8"
        )
    )
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["jsonData"]["httpMethod"] == "POST"


# ------------------------------------------------------------------------ live data


def _example_name(fam: MetricFamily) -> str:
    """A metric name that the catalog resolves to ``fam`` (``.+_util`` -> ``npu_util``)."""
    if fam.exact is not None:
        return fam.exact
    assert fam.pattern is not None
    name = re.sub(r"^\.\+", "npu", fam.pattern)
    assert DEFAULT_CATALOG.lookup(name) is fam.spec, name
    return name


EXTRA_AGENT, EXTRA_KERNEL = "i-extra-0000", "00000000-0000-4000-8000-00000000e0e0"
EXTRA_OWNER = {"session_id": "extra-session", "user_id": "extra-user", "project_id": "extra-prj"}


def _extra_exporter() -> UtilizationExporter:
    """One more agent reporting every catalog family at kernel and device level.

    The simulated fleet models Backend.AI's usual metrics; this agent adds the catalog entries
    it lacks (``disk`` on kernels, ``*_power``, ``*_temperature``, ...), with memory at 95 % of
    its limit and an idle accelerator so the demo-tuned alerts fire.
    """
    exporter = UtilizationExporter(EXTRA_AGENT)
    exporter.add_kernel(EXTRA_KERNEL, **EXTRA_OWNER)
    started = time.time()

    def collect() -> None:
        t = time.time() - started
        for fam in catalog_families():
            name = _example_name(fam)
            spec = fam.spec
            if spec.kind is Kind.GAUGE:
                current, capacity = (950.0, 1000.0) if name == "mem" else (1.0, 100.0)
            else:
                current, capacity = 1000.0 + 500.0 * t, 1000.0
            exporter.observe_container(EXTRA_KERNEL, name, current, capacity)
            exporter.observe_device(name, "0", current, capacity)

    exporter.add_collect_hook(collect)
    collect()
    return exporter


async def _self_metrics_app(
    metrics: PromstatMetrics,
) -> tuple[web.AppRunner, str, Callable[[], None]]:
    """Serve promstat's prometheus_client export, plus the data-age and refresh-failure series.

    ``promstat_data_age_seconds`` and ``promstat_refresh_failures_total`` are exported here by
    stand-ins until PromstatMetrics grows them (the names the dashboards and alerts use).
    """
    registry = CollectorRegistry()
    metrics.register(registry)
    age = Histogram(
        "promstat_data_age_seconds", "stand-in", buckets=(1, 5, 15, 30, 60), registry=registry
    )
    failures = Counter("promstat_refresh_failures", "stand-in", registry=registry)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]

    def tick() -> None:
        age.observe(3.0)
        failures.inc()
        metrics.on_cache(hits=3, misses=1)
        metrics.on_plan("recorded/filtered")
        metrics.on_split()

    return runner, f"{host}:{port}", tick


@contextlib.asynccontextmanager
async def _lab(
    tmp_path: Path, start_prometheus: Callable[..., lab.PrometheusProcess], rates: str = "both"
) -> AsyncIterator[PrometheusClient]:
    """Simulated fleet + extra agent + promstat's own metrics, scraped with rules and alerts."""
    rules = [
        p
        for p in write_rules(
            tmp_path / "rules", RuleProfile.parse(interval="1s", window="4s", rates=rates)
        )
        if p.name.endswith(".rules.yml")
    ]
    settings = dataclasses.replace(demo_settings("1s"), rates=rates)
    alerts = write_alerts(tmp_path / "alerts", settings=settings)
    metrics = PromstatMetrics()
    runner, self_target, tick = await _self_metrics_app(metrics)
    fleet = SimulatedFleet(FleetConfig(agents=3, kernels_per_agent=3, churn=None, seed=7))
    extra = ExporterServer(_extra_exporter())
    try:
        await fleet.start()
        await extra.start()
        prom = start_prometheus(
            scrape_targets=[*fleet.targets, extra.target, self_target],
            scrape_interval="1s",
            evaluation_interval="1s",
            rule_files=[*rules, *alerts[:1]],
        )
        async with PrometheusClient(prom.url, observer=metrics) as client:

            async def traffic() -> None:
                # promstat's own counters move: queries, a failing one, cache and refreshes
                while True:
                    tick()
                    await client.query("up")
                    with contextlib.suppress(PromstatError):
                        await client.query("up{")
                    await asyncio.sleep(0.2)  # behaviour, not synchronisation: paced traffic

            task = asyncio.create_task(traffic())
            try:
                yield client
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await extra.stop()
        await fleet.stop()
        await runner.cleanup()


async def _empty_targets(
    client: PrometheusClient, passes: list[dict[str, str]], rates: str = "both"
) -> tuple[int, list[tuple[str, str, str]]]:
    """How many targets were run, and those that returned no series."""
    empty, count = [], 0
    for model in _models(rates).values():
        for values in passes:
            for panel, target in iter_targets(model):
                expr = _substitute(target["expr"], values)
                result = await client.query(expr)
                count += 1
                if not result.vector:
                    empty.append((model["uid"], str(panel["title"]), expr))
    return count, empty


@pytest.mark.slow
@pytest.mark.parametrize("rates", ["both", "exporter"])
async def test_every_panel_returns_data_on_a_scraped_fleet(
    tmp_path: Path, start_prometheus: Callable[..., lab.PrometheusProcess], rates: str
) -> None:
    """On a real Prometheus with the rules and alerts, every target answers with data, for
    "All" (``.*``) and for one concrete agent/user/project/session/kernel.

    With ``rates="exporter"`` the rules record only the kernels' window stats: the
    dashboards and the kernel alerts rendered for that mode read the rest raw."""
    everything = {
        "__rate_interval": "5s",
        **{v: ".*" for v in ("agent", "user", "project", "session", "kernel", "job", "instance")},
    }
    concrete = {
        **everything,
        "agent": EXTRA_AGENT,
        "user": EXTRA_OWNER["user_id"],
        "project": EXTRA_OWNER["project_id"],
        "session": EXTRA_OWNER["session_id"],
        "kernel": EXTRA_KERNEL,
    }
    async with _lab(tmp_path, start_prometheus, rates) as client:
        deadline = time.monotonic() + 120
        count, empty = await _empty_targets(client, [everything, concrete], rates)
        while empty and time.monotonic() < deadline:
            # rates need two scrapes, window stats a few rule evaluations, alerts a pending state
            await asyncio.sleep(1.0)
            count, empty = await _empty_targets(client, [everything, concrete], rates)
        assert count >= 2 * 60
        # the check is not vacuous: a selection nobody matches finds nothing
        _, none = await _empty_targets(client, [{**concrete, "user": "nobody"}], rates)
        assert {uid for uid, _, _ in none} == {"promstat-fleet", "promstat-kernel"}
        assert not empty, "\n".join(f"{uid} / {title}: {expr}" for uid, title, expr in empty)
        # the demo's alert line: the extra kernel's memory alert is at least pending by now
        summary = await alert_summary(client)
        while "BackendAIKernelMemoryNearLimit x" not in summary and time.monotonic() < deadline:
            await asyncio.sleep(1.0)  # the panels can have data a rule evaluation before it
            summary = await alert_summary(client)
        assert re.fullmatch(r"alerts: \d+ firing.*, \d+ pending.*", summary), summary
        assert "BackendAIKernelMemoryNearLimit x" in summary  # the extra kernel, maybe others
        # the variables' own queries list the fleet's values
        values = await client.label_values(NAMES.user_label)
        assert EXTRA_OWNER["user_id"] in values


def test_promstat_command_renders_dashboards(tmp_path: Path) -> None:
    """`promstat dashboards render` is registered on the main command."""
    from promstat.cli import main

    assert main(["dashboards", "render", "--output", str(tmp_path)]) == 0
    assert _tree(tmp_path) == _tree(DASHBOARDS_DIR)
