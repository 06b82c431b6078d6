"""Tests for promstat.testing.sim: determinism, value shapes, churn, backfill, live scraping."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from promstat.agent.exporter import KernelState
from promstat.errors import ConfigError
from promstat.testing.lab import PrometheusProcess
from promstat.testing.sim import (
    GPU_MEMORY,
    ChurnConfig,
    FleetConfig,
    SimulatedFleet,
    fleet_openmetrics,
    iter_fleet_openmetrics,
    write_fleet_openmetrics,
)

E = 1_700_000_000  # a fixed epoch: integer, in the past (backfill retention is 100y)
SMALL = FleetConfig(agents=2, kernels_per_agent=3, gpu_agent_ratio=0.5, churn=None, epoch=E)
CHURNY = FleetConfig(
    agents=2,
    kernels_per_agent=3,
    gpu_agent_ratio=0.5,
    churn=ChurnConfig(mean_lifetime=120, min_lifetime=60, max_gap=10),
    detention=30,
    epoch=E,
)
# Measuring every second on whole seconds: every integer time is a measurement.
PER_SECOND = dataclasses.replace(SMALL, measure_interval=1.0, measure_offset=0.0)
COUNTERS = ("cpu_util", "cpu_used", "io_read", "io_write", "net_rx", "net_tx")


class FakeClock:
    """A settable wall clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def parse_exposition(body: str) -> dict[str, float]:
    """Map 'name{labels}' to value for an exposition without timestamps."""
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def parse_backfill_at(text: str, t: float) -> dict[str, float]:
    """Map 'name{labels}' to value for the samples of an OpenMetrics text at timestamp t."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value, ts = line.rsplit(" ", 2)
            if float(ts) == t:
                out[series] = float(value)
    return out


def live_snapshot(config: FleetConfig, t: float) -> dict[str, float]:
    """Render every exporter of a fresh live fleet at clock time t."""
    fleet = SimulatedFleet(config, clock=FakeClock(t))
    out: dict[str, float] = {}
    for exporter in fleet.exporters.values():
        out.update(parse_exposition(exporter.render().decode()))
    return out


def test_deterministic_for_a_seed() -> None:
    """Same config and time give the same ids and bytes; another seed gives other ids."""
    a = SimulatedFleet(SMALL, clock=FakeClock(E + 100.5))
    b = SimulatedFleet(SMALL, clock=FakeClock(E + 100.5))
    assert a.kernel_ids() == b.kernel_ids()
    assert len(a.kernel_ids()) == 6
    for agent_id in a.agent_ids():
        assert a.exporters[agent_id].render() == b.exporters[agent_id].render()
    other = SimulatedFleet(FleetConfig(**{**_fields(SMALL), "seed": 7}), clock=FakeClock(E))
    assert set(other.kernel_ids()).isdisjoint(a.kernel_ids())
    assert fleet_openmetrics(SMALL, E, E + 60, 15) == fleet_openmetrics(SMALL, E, E + 60, 15)


def _fields(config: FleetConfig) -> dict[str, object]:
    return {f: getattr(config, f) for f in config.__dataclass_fields__}


def test_ids_are_lowercase_uuid4() -> None:
    """Kernel ids are lowercase hyphenated version-4 UUIDs; agent ids are stable names."""
    fleet = SimulatedFleet(SMALL, clock=FakeClock(E))
    for kernel_id in fleet.kernel_ids():
        assert str(uuid.UUID(kernel_id)) == kernel_id
        assert uuid.UUID(kernel_id).version == 4
    assert fleet.agent_ids() == ["i-sim-0000", "i-sim-0001"]


def test_gpu_agents_and_metrics() -> None:
    """round(agents * ratio) agents have GPUs; only their kernels report cuda_* metrics."""
    config = FleetConfig(agents=10, kernels_per_agent=2, gpu_agent_ratio=0.3, churn=None, epoch=E)
    fleet = SimulatedFleet(config, clock=FakeClock(E))
    gpu_agents = [a for a in fleet.agent_ids() if fleet.agent(a).gpus]
    assert len(gpu_agents) == 3
    for kernel_id in fleet.kernel_ids():
        k = fleet.kernel(kernel_id)
        has_gpu = k.agent_id in gpu_agents
        assert ("cuda_util" in k.metrics) is has_gpu
        assert (k.gpus > 0) is has_gpu
    agent = fleet.agent(gpu_agents[0])
    assert ("cuda_mem", str(agent.gpus - 1)) in agent.devices


def test_value_shapes() -> None:
    """Counters grow monotonically, gauges stay within capacity, capacities are as specified."""
    fleet = SimulatedFleet(SMALL, clock=FakeClock(E))
    times = [E + 0.25 * i for i in range(0, 2400, 7)]
    for kernel_id in fleet.kernel_ids():
        k = fleet.kernel(kernel_id)
        for metric in COUNTERS:
            values = [fleet.sample(kernel_id, metric, t)[0] for t in times]
            assert all(x <= y for x, y in itertools.pairwise(values))
            assert values[-1] > values[0] or fleet.expected_rate(kernel_id, metric) == 0
        assert fleet.sample(kernel_id, "cpu_util", E)[1] == 1000
        assert fleet.sample(kernel_id, "cpu_used", E)[1] is None
        assert fleet.sample(kernel_id, "io_scratch_size", E) == (0, None)
        assert 50 <= fleet.expected_rate(kernel_id, "cpu_util") <= 2000
        for t in times:
            mem, limit = fleet.sample(kernel_id, "mem", t)
            assert limit in {g * 2**30 for g in (1, 2, 4, 8, 16)}
            assert limit is not None and 0 < mem < limit and mem == int(mem)
            for metric in ("io_read", "net_tx"):
                assert fleet.sample(kernel_id, metric, t)[0] == int(
                    fleet.sample(kernel_id, metric, t)[0]
                )
        if k.gpus:
            cur, cap = fleet.sample(kernel_id, "cuda_mem", E)
            assert cap == k.gpus * GPU_MEMORY and cur < cap
            cur, cap = fleet.sample(kernel_id, "cuda_util", E)
            assert cap == k.gpus * 100 and 0 <= cur <= cap
    for agent_id in fleet.agent_ids():
        a = fleet.agent(agent_id)
        cur, cap = fleet.device_sample(agent_id, "cpu_util", "0", E)
        assert cap is not None and 30000 <= cap < 30020
        assert fleet.device_sample(agent_id, "net_rx", "node", E)[1] is None
        mem, total = fleet.device_sample(agent_id, "mem", "root", E)
        assert total == a.mem_total and mem < total
        disk, size = fleet.device_sample(agent_id, "disk", "/dev/nvme0n1p2", E)
        assert size is not None and disk < size


def test_counters_are_exact_lines() -> None:
    """On integer times a counter's difference is exactly rate x seconds, also for bytes."""
    fleet = SimulatedFleet(PER_SECOND, clock=FakeClock(E))
    for kernel_id in fleet.kernel_ids():
        for metric in COUNTERS:
            v0 = fleet.sample(kernel_id, metric, E + 15)[0]
            v1 = fleet.sample(kernel_id, metric, E + 30)[0]
            assert v1 - v0 == 15 * fleet.expected_rate(kernel_id, metric)
    agent_id = fleet.agent_ids()[0]
    v0 = fleet.device_sample(agent_id, "cpu_util", "3", E)[0]
    v1 = fleet.device_sample(agent_id, "cpu_util", "3", E + 10)[0]
    assert v1 - v0 == 10 * fleet.expected_device_rate(agent_id, "cpu_util", "3")


def test_gauges_piecewise_constant() -> None:
    """Gauges hold their value within a gauge_period bucket (aligned to Unix time)."""
    fleet = SimulatedFleet(SMALL, clock=FakeClock(E))
    kernel_id = fleet.kernel_ids()[0]
    base = 15 * (E // 15)
    assert fleet.sample(kernel_id, "mem", base) == fleet.sample(kernel_id, "mem", base + 14.9)
    series = {fleet.sample(kernel_id, "mem", base + 15 * i)[0] for i in range(20)}
    assert len(series) > 1


def test_model_errors() -> None:
    """Unknown ids, gauges asked for a rate, and bad backfill ranges are ConfigErrors."""
    fleet = SimulatedFleet(SMALL, clock=FakeClock(E))
    kernel_id = fleet.kernel_ids()[0]
    with pytest.raises(ConfigError):
        fleet.expected_rate(kernel_id, "mem")
    with pytest.raises(ConfigError):
        fleet.expected_rate("nope", "cpu_util")
    with pytest.raises(ConfigError):
        fleet.sample(kernel_id, "tpu_util", E)
    with pytest.raises(ConfigError):
        fleet.expected_device_rate(fleet.agent_ids()[0], "mem", "root")
    with pytest.raises(ConfigError):
        fleet.agent("i-nope")
    with pytest.raises(ConfigError):
        fleet_openmetrics(SMALL, E, E + 10, 0)
    with pytest.raises(ConfigError):
        fleet_openmetrics(SMALL, E, E - 10, 15)
    with pytest.raises(ConfigError):
        FleetConfig(gpu_agent_ratio=2)
    with pytest.raises(ConfigError):
        ChurnConfig(mean_lifetime=10, min_lifetime=60)


def test_churn_schedule_lifecycle_through_exporter() -> None:
    """A kernel ends on schedule: frozen during the detention, then gone; new ids appear."""
    clock = FakeClock(E)
    fleet = SimulatedFleet(CHURNY, clock=clock)
    initial = fleet.kernel_ids()
    assert len(initial) == 6
    kernel_id = min(initial, key=lambda k: fleet.kernel(k).end or math.inf)
    k = fleet.kernel(kernel_id)
    assert k.end is not None and k.start <= E < k.end
    exporter = fleet.exporters[k.agent_id]

    def exported_cpu() -> float | None:
        body = parse_exposition(exporter.render().decode())
        hits = [
            v
            for s, v in body.items()
            if kernel_id in s and '"cpu_util"' in s and 'value_type="current"' in s
        ]
        return hits[0] if hits else None

    clock.now = k.end - 0.5
    assert exported_cpu() == fleet.sample(kernel_id, "cpu_util", k.end - 0.5)[0]
    frozen = fleet.sample(kernel_id, "cpu_util", k.end)[0]
    clock.now = k.end + 1
    assert exported_cpu() == frozen
    assert exporter.kernel_state(kernel_id) is KernelState.DETAINED
    assert kernel_id not in fleet.kernel_ids()
    clock.now = k.end + 29.9
    assert exported_cpu() == frozen
    clock.now = k.end + 30
    assert exported_cpu() is None
    assert exporter.kernel_state(kernel_id) is None
    later = fleet.kernel_ids(at=E + 1000)
    assert len(set(later) - set(initial)) >= 3
    assert fleet.kernel_ids(at=E + 1000) == later  # schedule is stable when asked again


def test_churn_is_deterministic() -> None:
    """Two fleets with churn produce the same schedule of ids at every time."""
    a = SimulatedFleet(CHURNY, clock=FakeClock(E))
    b = SimulatedFleet(CHURNY, clock=FakeClock(E))
    for t in range(E, E + 1200, 37):
        assert a.kernel_ids(at=t) == b.kernel_ids(at=t)


def test_no_churn_keeps_kernels() -> None:
    """Without churn the same kernels live forever."""
    fleet = SimulatedFleet(SMALL, clock=FakeClock(E))
    assert fleet.kernel_ids(at=E + 86400 * 30) == fleet.kernel_ids()


@pytest.mark.parametrize("offset", [0, 45, 90, 600])
def test_live_exporters_match_backfill(offset: int) -> None:
    """At a grid time the live exporters expose exactly the backfilled samples (churn too)."""
    t = float(E + offset)
    text = fleet_openmetrics(CHURNY, E - 300, E + 600, 15)
    assert parse_backfill_at(text, t) == live_snapshot(CHURNY, t)


def test_backfill_format_and_streaming(tmp_path: Path) -> None:
    """The backfill is OpenMetrics with grouped families, contiguous series and '# EOF'."""
    text = fleet_openmetrics(SMALL, E, E + 60, 15)
    lines = text.splitlines()
    assert lines[0].startswith("# HELP backendai_container_utilization ")
    assert lines[1] == "# TYPE backendai_container_utilization gauge"
    assert lines[-1] == "# EOF"
    assert sum(line.startswith("# TYPE") for line in lines) == 2
    assert "".join(iter_fleet_openmetrics(SMALL, E, E + 60, 15)) == text
    path = write_fleet_openmetrics(SMALL, tmp_path / "fleet.om", E, E + 60, 15)
    assert path.read_text(encoding="utf-8") == text
    seen: list[str] = []
    last_ts: dict[str, float] = {}
    for line in lines:
        if line.startswith("#"):
            continue
        series, _, ts = line.rsplit(" ", 2)
        if not seen or seen[-1] != series:
            assert series not in last_ts, "series lines must be contiguous"
            seen.append(series)
        assert float(ts) > last_ts.get(series, -math.inf)
        last_ts[series] = float(ts)
    kernel_series = [s for s in seen if s.startswith("backendai_container_utilization")]
    # 8 metrics + 2 capacities (cpu_util, mem) + 5 rates (cpu_util, io_*, net_*); GPU kernels
    # add cuda_mem/cuda_util + capacities
    fleet = SimulatedFleet(SMALL)
    expected = sum(19 if fleet.kernel(k).gpus else 15 for k in fleet.kernel_ids(at=E))
    assert len(kernel_series) == expected
    assert re.search(r'value_type="current"\} [0-9.e+]+ 1700000060$', text, re.MULTILINE)


def test_backfill_includes_detained_kernels_then_drops_them() -> None:
    """A kernel appears from its start, is frozen after its end and absent after detention."""
    fleet = SimulatedFleet(CHURNY, clock=FakeClock(E))
    kernel_id = min(fleet.kernel_ids(), key=lambda k: fleet.kernel(k).end or math.inf)
    k = fleet.kernel(kernel_id)
    assert k.end is not None
    text = fleet_openmetrics(CHURNY, E, k.end + 60, 1)
    stamps = sorted(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if kernel_id in line and '"cpu_used"' in line
    )
    assert stamps[0] == E and stamps[-1] == k.end + 29
    values = [
        float(line.rsplit(" ", 2)[1])
        for line in text.splitlines()
        if kernel_id in line and '"cpu_used"' in line
    ]
    assert values[-1] == values[-30] == fleet.sample(kernel_id, "cpu_used", k.end)[0]


async def test_fleet_serves_every_agent() -> None:
    """start() runs one loopback HTTP server per agent; stop() releases them."""
    import aiohttp

    async with SimulatedFleet(SMALL) as fleet:
        assert len(fleet.targets) == 2
        async with aiohttp.ClientSession() as session:
            for target, agent_id in zip(fleet.targets, fleet.agent_ids(), strict=True):
                assert target.startswith("127.0.0.1:")
                async with session.get(f"http://{target}/metrics") as resp:
                    body = await resp.text()
                assert f'agent_id="{agent_id}"' in body
                # three kernels: current, capacity and the agent-computed rate
                assert body.count('container_metric_name="cpu_util"') == 9
    assert fleet.targets == []


@pytest.mark.slow
def test_backfill_queried_from_real_prometheus(
    start_prometheus: Callable[..., PrometheusProcess],
) -> None:
    """Prometheus ingests the backfill; values and the agents' rates at a pinned time match
    the model (the raw counters are stair steps: each measurement is stored twice)."""
    end = E + 300
    prom = start_prometheus(openmetrics=fleet_openmetrics(SMALL, E, end, 15))
    fleet = SimulatedFleet(SMALL)
    mem = prom.query(
        'backendai_container_utilization{container_metric_name="mem",value_type="current"}',
        at=end,
    )
    assert len(mem) == 6
    for row in mem:
        assert float(row["value"][1]) == fleet.sample(row["metric"]["kernel_id"], "mem", end)[0]
    rates = prom.query(
        'backendai_container_utilization{container_metric_name="cpu_util",value_type="rate"}',
        at=end,
    )
    assert len(rates) == 6
    for row in rates:
        expected = fleet.expected_rate(row["metric"]["kernel_id"], "cpu_util")
        assert float(row["value"][1]) == expected
    net = prom.query(
        'backendai_device_utilization{device_metric_name="net_rx",value_type="rate"}', at=end
    )
    assert {r["metric"]["agent_id"]: float(r["value"][1]) for r in net} == {
        a: fleet.expected_device_rate(a, "net_rx", "node") for a in fleet.agent_ids()
    }


@pytest.mark.slow
async def test_live_scrape_irate_matches_expected_rate(
    start_prometheus: Callable[..., PrometheusProcess],
) -> None:
    """A real Prometheus scraping every second a fleet that measures every 2 s (each
    measurement stored twice) sees the model's CPU rates exactly in the agents' rate series."""
    config = FleetConfig(
        agents=2, kernels_per_agent=3, gpu_agent_ratio=0.5, churn=None, measure_interval=2.0
    )
    query = 'backendai_container_utilization{container_metric_name="cpu_util",value_type="rate"}'
    positive = f"{query} > 0"
    async with SimulatedFleet(config) as fleet:
        prom = await asyncio.to_thread(
            start_prometheus, scrape_targets=fleet.targets, scrape_interval="1s"
        )
        rows: list[dict[str, object]] = []
        for _ in range(120):  # up to ~60 s: two measurements of both agents are needed
            rows = await asyncio.to_thread(prom.query, positive)
            if len(rows) == 6:
                break
            await asyncio.sleep(0.5)
        assert len(rows) == 6, prom.log_tail()
        for row in rows:
            metric = row["metric"]
            value = row["value"]
            assert isinstance(metric, dict) and isinstance(value, list)
            assert metric["job"] == "promstat"
            expected = fleet.expected_rate(metric["kernel_id"], "cpu_util")
            assert float(value[1]) == pytest.approx(expected, rel=1e-9)
            assert metric["kernel_id"] in fleet.kernel_ids(agent_id=metric["agent_id"])


def test_agents_measure_on_their_own_timer() -> None:
    """Served values change only at each agent's measurement ticks (default every 30 s, a
    per-agent phase from the seed), whatever the scrape times; the rate series is the model's
    rate between the last two measurements."""
    assert SMALL.measure_interval == 30.0
    clock = FakeClock(E)
    fleet = SimulatedFleet(SMALL, clock=clock)
    agent_id = fleet.agent_ids()[0]
    kernel_id = fleet.kernel_ids(agent_id=agent_id)[0]
    tick = fleet.measured_at(agent_id, E + 100)
    assert tick <= E + 100 < tick + 30
    assert fleet.measured_at(agent_id, tick + 29.9) == tick
    offsets = {fleet.measured_at(a, E) % 30 for a in fleet.agent_ids()}
    assert len(offsets) == 2, "agents are not aligned with each other"
    exporter = fleet.exporters[agent_id]
    served: list[tuple[float, float]] = []
    for dt in (0.0, 10.0, 20.0, 29.0):  # scrapes every 10 s within one measurement interval
        clock.now = tick + dt
        snap = parse_exposition(exporter.render().decode())
        cur = next(v for s, v in snap.items() if kernel_id in s and '"cpu_used"' in s)
        rate = next(
            v
            for s, v in snap.items()
            if kernel_id in s and '"cpu_util"' in s and 'value_type="rate"' in s
        )
        served.append((cur, rate))
    assert len(set(served)) == 1, "a measurement is served unchanged until the next tick"
    assert served[0][0] == fleet.sample(kernel_id, "cpu_used", tick)[0]
    assert served[0][1] == fleet.expected_rate(kernel_id, "cpu_util")
    clock.now = tick + 30
    snap = parse_exposition(exporter.render().decode())
    cur = next(v for s, v in snap.items() if kernel_id in s and '"cpu_used"' in s)
    assert cur - served[0][0] == 30 * fleet.expected_rate(kernel_id, "cpu_used")


def test_backfill_stores_each_measurement_per_scrape() -> None:
    """A 15 s scrape of a 30 s measurement stores every value twice; without
    ``publish_rates`` no rate series exists (the upstream agent's exposition)."""
    config = dataclasses.replace(SMALL, measure_offset=float(E + 7))
    text = fleet_openmetrics(config, E, E + 120, 15)
    fleet = SimulatedFleet(config)
    kernel_id = fleet.kernel_ids(at=E)[0]
    values = [
        float(line.rsplit(" ", 2)[1])
        for line in text.splitlines()
        if kernel_id in line and '"cpu_used"' in line
    ]
    # samples at E, E+15, ..., E+120; ticks at E-23, E+7, E+37, E+67, E+97
    assert values[1] == values[2] and values[3] == values[4] and values[5] == values[6]
    assert values[2] != values[3]
    assert values[0] != values[1]
    plain = fleet_openmetrics(dataclasses.replace(config, publish_rates=False), E, E + 60, 15)
    assert 'value_type="rate"' not in plain and 'value_type="rate"' in text


async def test_timer_observes_measurements_without_scrapes() -> None:
    """While started, the fleet's own timer observes each measurement as its tick passes."""
    config = dataclasses.replace(SMALL, epoch=None, measure_interval=0.5)
    async with SimulatedFleet(config) as fleet:
        exporter = fleet.exporters[fleet.agent_ids()[0]]
        first = exporter.series_count
        assert first > 0, "the first step happens on start"
        seen: set[bytes] = set()
        for _ in range(40):
            # _chunks is the rendered body without running the catch-up hook
            seen.add(b"".join(exporter._chunks(False)))
            await asyncio.sleep(0.1)
            if len(seen) >= 3:
                break
        assert len(seen) >= 3


def test_each_measurement_is_observed_once() -> None:
    """However often it is scraped, the exporter sees each measurement once, at its
    measurement time (what a measurement listener on ``observe_*`` relies on)."""
    clock = FakeClock(E)
    fleet = SimulatedFleet(SMALL, clock=clock)
    agent_id = fleet.agent_ids()[0]
    exporter = fleet.exporters[agent_id]
    seen: list[tuple[str, str, float | None]] = []
    original = exporter.observe_container

    def spy(kernel_id: str, metric: str, *args: object, at: float | None = None) -> bool:
        seen.append((kernel_id, metric, at))
        return original(kernel_id, metric, *args, at=at)  # type: ignore[arg-type]

    exporter.observe_container = spy  # type: ignore[method-assign]
    for dt in range(0, 150, 7):  # scrapes every 7 s over five measurement intervals
        clock.now = E + dt
        exporter.render()
    assert seen and len(seen) == len(set(seen))
    kernel_id = fleet.kernel_ids(agent_id=agent_id)[0]
    times = {at for k, m, at in seen if k == kernel_id and m == "cpu_util"}
    ticks = {fleet.measured_at(agent_id, E + dt) for dt in range(0, 150, 7)}
    # the measurement before the first scrape's (for its rate), then one per tick
    assert times == ticks | {min(ticks) - 30}


def test_processes_are_measured_with_their_kernel_and_dual_published() -> None:
    """processes_per_kernel: backendai_process_utilization per process, values the model's
    (shares of the kernel's), and per-container process payloads for the publisher."""
    from promstat.agent.exporter import process_series
    from promstat.migration.publisher import LegacyStatContext

    ctx = LegacyStatContext()
    config = dataclasses.replace(PER_SECOND, processes_per_kernel=2)
    clock = FakeClock(E + 100)
    fleet = SimulatedFleet(config, clock=clock, listeners=[ctx.observe])
    fleet.step()
    clock.now = E + 101
    fleet.step()
    agent_id = fleet.agent_ids()[0]
    kernel_id = fleet.kernel_ids(agent_id=agent_id)[0]
    k = fleet.kernel(kernel_id)
    cid = fleet.container_id(kernel_id)
    assert re.fullmatch(r"[0-9a-f]{64}", cid)
    series = parse_exposition(fleet.exporters[agent_id].render().decode())
    for index, pid in enumerate((1000, 1001)):
        for metric in ("cpu_util", "cpu_used", "mem", "io_read", "io_write"):
            cur, cap = fleet.process_sample(kernel_id, index, metric, E + 101)
            name = process_series(
                config.names,
                metric=metric,
                agent_id=agent_id,
                kernel_id=kernel_id,
                owner=(k.session_id, k.user_id, k.project_id),
                container_id=cid,
                pid=pid,
                value_type="current",
            )
            assert series[name] == cur
            assert (cap is not None) == (metric == "cpu_util")
    # Shares add up to the kernel: 1/3 + 2/3 of its CPU counter.
    total = sum(fleet.process_sample(kernel_id, i, "cpu_used", E + 101)[0] for i in (0, 1))
    assert math.isclose(total, fleet.sample(kernel_id, "cpu_used", E + 101)[0])
    payload = ctx.process_payload(cid, agent_id)
    assert list(payload) == [1000, 1001]
    assert payload[1000]["cpu_util"]["unit_hint"] == "millicores"
    assert cid in ctx.dirty_containers
    # Without processes_per_kernel nothing changes: no process family at all.
    plain = SimulatedFleet(PER_SECOND, clock=FakeClock(E + 100))
    plain.step()
    assert b"backendai_process_utilization" not in plain.exporters[agent_id].render()
