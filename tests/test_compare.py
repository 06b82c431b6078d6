"""Tests for ``promstat compare``: field kinds, tolerances, real dual-published fleets."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from _support.dual_fleet import DualFleet, dual_fleet, fleet_config
from _support.waiting import rules_evaluated
from redis.asyncio import from_url

from promstat.catalog import DEFAULT_CATALOG
from promstat.cli import main
from promstat.client import PrometheusClient
from promstat.errors import ConfigError, TransportError
from promstat.generate.rules import write_rules
from promstat.migration.compare import (
    COMPARE_EXIT_DISAGREE,
    CompareOptions,
    compare_payloads,
    read_legacy,
    run_compare,
)
from promstat.migration.publisher import ValkeyPublisher
from promstat.migration.tolerances import FieldKind, Tolerance, Tolerances, classify
from promstat.profile import RuleProfile
from promstat.testing import lab
from promstat.testing.sim import FleetConfig, SimulatedFleet


@pytest.mark.parametrize(
    ("metric", "name", "node", "kind"),
    [
        ("mem", "current", False, FieldKind.GAUGE),
        ("mem", "unit_hint", False, FieldKind.STRING),
        ("mem", "stats.max", False, FieldKind.WINDOW),
        ("io_read", "current", False, FieldKind.GAUGE),  # cumulative: one reading
        ("io_read", "stats.rate", False, FieldKind.RATE),
        ("io_read", "capacity", False, FieldKind.KNOWN),  # legacy: first raw value
        ("cpu_util", "current", False, FieldKind.RATE),
        ("cpu_util", "pct", False, FieldKind.RATE),
        ("cpu_util", "stats.max", False, FieldKind.KNOWN),  # legacy: the raw counter (#4126)
        ("cpu_util", "capacity", True, FieldKind.GAUGE),  # node: the interval
        ("net_rx", "capacity", True, FieldKind.GAUGE),  # node: null on both sides
        ("cuda_util", "stats.avg", False, FieldKind.WINDOW),
    ],
)
def test_fields_are_classified_by_kind(metric: str, name: str, node: bool, kind: FieldKind) -> None:
    assert classify(DEFAULT_CATALOG, metric, name, node=node) is kind


def test_tolerance_is_absolute_plus_relative() -> None:
    rule = Tolerance(rel=0.01, abs=0.01)
    assert rule.accepts(100.0, 100.99)
    assert not rule.accepts(100.0, 101.1)
    assert rule.accepts(0.0, 0.01)
    assert not Tolerance().accepts(1.0, 1.0000001)


def test_tolerance_file_overrides_kinds_fields_and_thresholds(tmp_path: Path) -> None:
    path = tmp_path / "tol.yml"
    path.write_text(
        "min_agreement: 0.5\nkinds:\n  rate: {rel: 0.2}\n"
        "fields:\n  mem.stats.max: {kind: known}\n  cuda_util.pct: {abs: 1}\n"
        "  cpu_util.pct: {rel: 0}\n"
    )
    tol = Tolerances.from_file(path)
    assert tol.min_agreement == 0.5 and tol.max_missing == 0.01
    assert tol.for_field("cpu_util.current", FieldKind.RATE) == (
        FieldKind.RATE,
        Tolerance(rel=0.2, abs=0.01),
    )
    assert tol.for_field("mem.stats.max", FieldKind.WINDOW)[0] is FieldKind.KNOWN
    assert tol.for_field("cuda_util.pct", FieldKind.GAUGE)[1].abs == 1
    assert tol.for_field("cpu_util.pct", FieldKind.RATE)[1] == Tolerance(rel=0.0, abs=0.01)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kinds:\n  fast: {rel: 1}\n", "unknown kind 'fast'"),
        ("fields:\n  mem.pct: {rel: -1}\n", r"fields.mem.pct.rel must be a number >= 0"),
        ("min_agreement: 2\n", r"min_agreement must be in \[0, 1\]"),
        ("oops: 1\n", "unknown key"),
        ("kinds:\n  rate: {kind: gauge}\n", r"kinds.rate: unknown key\(s\) \['kind'\]"),
        ("- 1\n", "must hold a mapping"),
    ],
)
def test_bad_tolerance_files_name_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tol.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        Tolerances.from_file(path)


def _metric(current: str, capacity: str | None = "100", **extra: str) -> dict[str, Any]:
    return {"current": current, "capacity": capacity, "pct": current, "unit_hint": "x", **extra}


def test_compare_payloads_counts_agreement_missing_and_known_apart() -> None:
    legacy = {
        "k1": {"mem": _metric("10", **{"stats.max": "12"}), "cpu_used": _metric("5", "3")},
        "k2": {"mem": _metric("20")},
        "k3": {"mem": _metric("1")},
        "k4": None,
    }
    promstat = {
        "k1": {"mem": _metric("10", **{"stats.max": "11"}), "cpu_used": _metric("5", "9e18")},
        "k2": {"mem": _metric("21"), "cuda_mem": _metric("1")},
        "k3": None,
        "k4": {"mem": _metric("1")},
    }
    report = compare_payloads(legacy, promstat)
    assert report.ids == 4 and report.both == 2
    assert report.missing_promstat == ["k3"] and report.missing_legacy == ["k4"]
    current = report.fields["mem", "current"]
    assert (current.compared, current.agreed, current.worst_abs, current.worst_id) == (
        2,
        1,
        1,
        "k2",
    )
    assert current.examples == [{"id": "k2", "legacy": "20", "promstat": "21"}]
    assert report.fields["mem", "stats.max"].agreed == 1  # 8% apart: inside the window bound
    assert report.fields["cuda_mem", "current"].missing_legacy == 1
    assert report.missing_values == 4  # cuda_mem: current, capacity, pct, unit_hint
    known = {(f.metric, f.name) for f in report.known}
    assert known == {("cpu_used", "capacity"), ("cpu_used", "pct")}
    assert report.agreement == report.agreed / report.compared < 1
    assert not report.ok  # 2 of 4 ids missing


def test_agent_payloads_compare_node_and_each_device() -> None:
    node = {"cpu_util": _metric("100", "30000")}
    devices = {"cpu_util": {"0": _metric("40", "30000"), "1": _metric("60", "30000")}}
    moved = {"cpu_util": {"0": _metric("40", "30000"), "1": _metric("66", "30000")}}
    report = compare_payloads(
        {"a": {"node": node, "devices": devices}},
        {"a": {"node": node, "devices": moved}},
        level="agent",
    )
    stats = report.fields["devices.cpu_util", "current"]
    assert (stats.compared, stats.agreed) == (2, 1)
    assert stats.examples[0]["id"] == "a/1"
    assert report.fields["node.cpu_util", "capacity"].kind is FieldKind.GAUGE


# ---------------------------------------------------------------------------- real servers


@pytest.fixture(scope="module")
def fleet() -> Iterator[DualFleet]:
    with dual_fleet(fleet_config(4, 10)) as running:
        yield running


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["compare", *args])
    return code, capsys.readouterr().out


def _cli_args(f: DualFleet) -> list[str]:
    return ["--redis", f.redis.url, "--url", f.prometheus.url, "--time", str(f.at)]


@pytest.mark.slow
def test_dual_published_fleet_agrees(fleet: DualFleet, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(capsys, *_cli_args(fleet), "--agents", "--json")
    doc = json.loads(out)
    assert code == 0
    kernels, agents = doc["reports"]
    assert kernels["ids"] == 40 and kernels["compared_ids"] == 40
    assert kernels["missing_legacy"] == kernels["missing_promstat"] == []
    for report in (kernels, agents):
        assert report["ok"]
        for f in report["fields"]:
            if f["kind"] in ("gauge", "string"):
                assert f["agreed"] == f["compared"] > 0, f  # exact: 100 %
            elif f["kind"] in ("rate", "window"):
                assert f["agreed"] == f["compared"], f  # within the documented bound
    by_field = {(f["metric"], f["field"]): f for f in kernels["fields"]}
    assert by_field["cpu_util", "stats.max"]["kind"] == "known"
    assert by_field["mem", "current"]["compared"] == 40
    assert by_field["cuda_mem", "current"]["compared"] > 0  # GPU kernels are in
    assert agents["compared_ids"] == 4


@pytest.mark.slow
def test_stair_step_fleet_agrees_exactly_on_rates_and_gauges(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Agents measuring every 30 s, scraped every 15 s (Backend.AI's defaults): Prometheus
    stores each measurement twice, as stair steps. Rates come from the measurements (the
    publisher's legacy ones and the exporter's rate series alike), so they agree exactly;
    only the lifetime statistics may reach one measurement past the window."""
    exact = tmp_path / "exact.yml"
    exact.write_text("kinds:\n  window: {rel: 0, abs: 0}\n")
    with dual_fleet(fleet_config(2, 5, node_interval=30)) as f:
        code, out = _run(capsys, *_cli_args(f), "--agents", "--json")
        _, exact_out = _run(capsys, *_cli_args(f), "--agents", "--json", "--tolerance", str(exact))
    assert code == 0
    for report in json.loads(out)["reports"]:
        assert report["ok"]
        for x in report["fields"]:
            node_cpu = x["metric"] in ("node.cpu_util", "devices.cpu_util")
            if x["kind"] in ("gauge", "string") or (x["kind"] == "rate" and not node_cpu):
                assert x["agreed"] == x["compared"] > 0 and x["worst_abs"] == 0, x
            elif x["kind"] in ("rate", "window"):
                # node cpu_util: the simulator's capacity jitter (see test_live_scraped...)
                assert x["agreed"] == x["compared"] > 0, x
    for report in json.loads(exact_out)["reports"]:
        for x in report["fields"]:
            if x["field"] == "stats.max":
                for e in x["examples"]:  # the lifetime max is never below the window's
                    assert float(e["legacy"]) > float(e["promstat"]), x


@pytest.mark.slow
def test_text_report_and_sample(fleet: DualFleet, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(capsys, *_cli_args(fleet), "--sample", "5", "--seed", "3")
    assert code == 0
    assert "kernels: 5 ids, 5 on both sides" in out
    assert re.search(r"^mem\s+current\s+gauge\s+5\s+5\s+100\.0%", out, re.M)
    assert "known differences (not counted):" in out
    kernel_id = fleet.fleet.kernel_ids(fleet.at)[0]
    code, out = _run(capsys, *_cli_args(fleet), kernel_id, "no-such-kernel", "--json")
    report = json.loads(out)["reports"][0]
    assert report["ids"] == 2 and report["compared_ids"] == 1
    assert report["missing_legacy"] == report["missing_promstat"] == ["no-such-kernel"]
    assert code == COMPARE_EXIT_DISAGREE  # half the ids are missing


def _broken(wrong_capacity: str, duplicated: str) -> Any:
    def tamper(text: str) -> str:
        out: list[str] = []
        extra: list[str] = []
        for line in text.splitlines(keepends=True):
            if (
                f'kernel_id="{wrong_capacity}"' in line
                and 'container_metric_name="mem"' in line
                and 'value_type="capacity"' in line
            ):
                name, value, stamp = line.rsplit(" ", 2)
                line = f"{name} {float(value) * 2:.0f} {stamp}"
            if f'kernel_id="{duplicated}"' in line and 'container_metric_name="mem"' in line:
                # A stale copy of the series from an agent the kernel was never on, 10% higher.
                name, value, stamp = line.rsplit(" ", 2)
                stale = name.replace('agent_id="', 'agent_id="stale-')
                factor = 1.0 if 'value_type="capacity"' in line else 1.1
                extra.append(f"{stale} {float(value) * factor:.0f} {stamp}")
            out.append(line)
        # Whole series must stay contiguous: append the copies before the device family.
        head, sep, tail = "".join(out).partition("# HELP backendai_device_utilization")
        return head + "".join(extra) + sep + tail

    return tamper


@pytest.mark.slow
def test_broken_fleet_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    config = fleet_config(2, 5)
    from promstat.testing.sim import SimulatedFleet

    ids = SimulatedFleet(config, clock=lambda: 0.0).kernel_ids(config.epoch)
    wrong, dup = ids[0], ids[1]
    with dual_fleet(config, tamper=_broken(wrong, dup)) as f:
        code, out = _run(capsys, *_cli_args(f), "--json")
    assert code == COMPARE_EXIT_DISAGREE
    report = json.loads(out)["reports"][0]
    assert not report["ok"]
    fields = {(x["metric"], x["field"]): x for x in report["fields"]}
    capacity = fields["mem", "capacity"]
    assert capacity["compared"] - capacity["agreed"] == 1
    assert capacity["examples"][0]["id"] == wrong
    assert capacity["worst_rel"] == pytest.approx(0.5)
    current = fields["mem", "current"]
    assert [e["id"] for e in current["examples"]] == [dup]  # max picked the stale copy
    assert current["worst_rel"] == pytest.approx(0.1 / 1.1, rel=1e-3)
    pct = fields["mem", "pct"]
    assert {e["id"] for e in pct["examples"]} == {wrong, dup}
    assert fields["cpu_util", "current"]["agreed"] == fields["cpu_util", "current"]["compared"]


async def _wait_for_samples(client: PrometheusClient, query: str, want: str) -> None:
    for _ in range(600):  # generous: the machine is shared
        res = await client.query(query)
        if res.vector and res.vector[0].value[1] == want:
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"{query} did not reach {want} within 60 s")


@pytest.mark.slow
@pytest.mark.parametrize("plan", ["raw", "recorded"])
async def test_live_scraped_fleet_agrees_after_the_last_scrape(
    plan: str, tmp_path: Path, start_prometheus: Callable[..., lab.PrometheusProcess]
) -> None:
    """A live fleet, really scraped, dual-publishing as it is measured (every second, on its
    own timer, as often as it is scraped).

    Exposition timestamps give Prometheus the measurement instants, so the agent's rate and
    ``irate`` span the same two measurements. Valkey has no history to pin a time in, and the
    agents measure on their own timers whether or not Prometheus scrapes, so before comparing
    the fleet's clock stops (no more measurements) and the test waits until Prometheus holds
    the last measurement Valkey got. Likewise the clock stands still until Prometheus scrapes
    the first measurement, so the publisher's lifetime statistics (``stats.max``) see no value
    Prometheus missed: the first step also observes the measurement a second before, kept in
    the same gauge bucket. ``recorded`` loads the generated rules and compares what production
    reads.
    """
    rules: list[Path] = []
    if plan == "recorded":
        written = write_rules(tmp_path / "rules", RuleProfile.parse(interval="1s", window="5m"))
        rules = [p for p in written if "test" not in p.name]
    config = FleetConfig(
        agents=3,
        kernels_per_agent=5,
        churn=None,
        exposition_timestamps=True,
        seed=5,
        node_interval=1,  # the device capacity: the interval the agents measure at
        measure_interval=1,  # ... on their own timers, as often as Prometheus scrapes
    )
    with lab.start_redis() as redis:
        publisher = ValkeyPublisher.from_url(redis.url, node_interval=1)
        t0 = float(math.floor(time.time()))
        t0 += 1 if t0 % config.gauge_period == 0 else 0  # t0 - 1 and t0: one gauge bucket
        started: list[float] = []  # wall time the agents' clock started running from t0
        stopped: list[float] = []  # the agents' clock, once stopped

        def clock() -> float:
            if stopped:
                return stopped[0]
            return t0 + (time.time() - started[0]) if started else t0

        fleet = SimulatedFleet(config, clock=clock, listeners=[publisher])
        async with fleet:
            prom = start_prometheus(
                scrape_targets=fleet.targets, scrape_interval="1s", rule_files=rules
            )
            root = 'backendai_device_utilization{device_id="root",value_type="current"}'
            async with PrometheusClient(prom.url) as client:
                await _wait_for_samples(client, f"count(count_over_time({root}[1h]))", "3")
                started.append(time.time())
                await _wait_for_samples(client, f"count(count_over_time({root}[1m]) >= 4)", "3")
                stopped.append(clock())
                last = {a: fleet.measured_at(a, stopped[0]) for a in fleet.agent_ids()}
                for _ in range(600):  # until every agent's last measurement is scraped
                    res = await client.query(f"max by (agent_id) (timestamp({root}))")
                    got = {v.metric["agent_id"]: float(v.value[1]) for v in res.vector}
                    if got == last:
                        break
                    await asyncio.sleep(0.1)
                else:
                    pytest.fail(f"Prometheus did not scrape the last measurements {last}: {got}")
                if rules:  # the rules evaluate once more after the last scrape
                    await rules_evaluated(client, after=time.time(), timeout=60)
        await publisher.close()
        assert publisher.errors == 0
        options = CompareOptions(
            redis_url=redis.url,
            prom_url=prom.url,
            interval="1s",
            window="5m",
            agents=True,
            use_recorded=plan == "recorded",
        )
        _, (report, agents) = await run_compare(options)
    assert report.ids == 15 and report.both == 15, report.to_json()
    for stats in report.fields.values():
        if stats.kind in (FieldKind.GAUGE, FieldKind.STRING, FieldKind.RATE):
            assert stats.agreed == stats.compared, stats.to_json()
    assert report.ok
    assert agents.both == 3
    for stats in agents.fields.values():
        if stats.metric.endswith(".cpu_util") and stats.kind is FieldKind.RATE:
            # The agent divides by the interval it measured; the simulator exports a model
            # interval (1 s + up to 19 ms) while scrapes come 1 s +- jitter apart.
            assert stats.worst_rel < 0.1, stats.to_json()
        elif stats.kind is FieldKind.WINDOW and stats.name == "stats.avg":
            # The agent's mean per measurement vs a mean per subquery step of a window holding
            # seconds of data in two or three gauge buckets, the last repeated after the clock
            # stopped: weights differ (the documented bound assumes a full window). The
            # maximum is exact: both sides hold the same measured values.
            continue
        elif stats.kind is not FieldKind.KNOWN:
            assert stats.agreed == stats.compared, stats.to_json()
            assert stats.worst_abs == 0 or stats.kind is not FieldKind.WINDOW, stats.to_json()


@pytest.mark.slow
async def test_read_legacy_sets_stale_and_undecodable_keys_apart(
    redis_server: lab.ManagedProcess,
) -> None:
    fresh, stale, garbage, scalar, absent = (str(uuid.uuid4()) for _ in range(5))
    client = from_url(redis_server.url)
    try:
        await client.set(fresh, msgpack.packb({"mem": _metric("1")}), ex=86400)
        await client.set(stale, msgpack.packb({"mem": _metric("1")}), ex=86400 - 500)
        await client.set(garbage, b"\xc1 not msgpack", ex=86400)
        await client.set(scalar, msgpack.packb(42), ex=86400)
    finally:
        await client.aclose()
    ids = [fresh, stale, garbage, scalar, absent]
    read = await read_legacy(redis_server.url, ids, key_ttl=86400, stale_after=120)
    assert read.values == {fresh: {"mem": _metric("1")}, absent: None}
    assert read.stale == [stale]  # written ~500 s ago: nothing refreshes it
    assert sorted(read.undecodable) == sorted([garbage, scalar])
    report = compare_payloads(
        read.values,
        {key: {"mem": _metric("1")} for key in ids},
        undecodable=read.undecodable,
        stale=read.stale,
    )
    assert report.both == 1 and report.stale_legacy == [stale]
    assert report.missing_legacy == [absent]
    assert report.missing_fraction == pytest.approx(3 / 5)  # stale ids are not "missing"
    unbounded = await read_legacy(redis_server.url, [stale])
    assert unbounded.stale == [] and stale in unbounded.values


async def test_unreachable_redis_is_a_transport_error() -> None:
    with pytest.raises(TransportError, match="reading legacy live stats failed"):
        await read_legacy(f"redis://127.0.0.1:{lab.free_port()}/0", ["k"])
