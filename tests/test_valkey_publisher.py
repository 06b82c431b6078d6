"""Tests for the legacy Valkey publisher: StatContext semantics and real redis writes."""

from __future__ import annotations

import uuid
from decimal import Decimal

import msgpack
import pytest
from _support.waiting import poll_until
from redis.asyncio import from_url

from promstat.agent.exporter import Measured, UtilizationExporter
from promstat.errors import ConfigError, TransportError
from promstat.migration.publisher import (
    KERNEL_TTL,
    LegacyStatContext,
    MovingStatistics,
    ValkeyPublisher,
    legacy_spec,
    pack,
    replay,
    serializable_value,
)
from promstat.renderer import format_decimal_reference
from promstat.testing import lab
from promstat.testing.sim import FleetConfig, SimulatedFleet


def kernel(metric: str, current: float | str, capacity: float | str | None, at: float) -> Measured:
    return Measured("i-a", metric, current, capacity, at, kernel_id="k1")


def device(
    metric: str, device_id: str, current: float | str, capacity: float | str | None, at: float
) -> Measured:
    return Measured("i-a", metric, current, capacity, at, device_id=device_id)


def test_exporter_listeners_see_each_recorded_measurement() -> None:
    seen: list[Measured] = []
    exporter = UtilizationExporter("i-a", clock=lambda: 5.0)
    exporter.add_listener(seen.append)
    exporter.add_kernel("k")
    exporter.observe_container("k", "mem", "10", 20)
    exporter.sample_time = 7.0  # a simulator's measurement instant wins over the clock
    exporter.observe_device("mem", "root", 1.5)
    exporter.terminate_kernel("k")
    assert exporter.observe_container("k", "mem", 11) is False  # detained: not measured
    assert seen == [
        Measured("i-a", "mem", "10", 20, 5.0, kernel_id="k"),
        Measured("i-a", "mem", 1.5, None, 7.0, device_id="root"),
    ]


def test_kernel_payload_follows_the_agents_stat_context() -> None:
    ctx = LegacyStatContext()
    for m in (
        kernel("cpu_util", "1290.608", "1000", 0.0),
        kernel("cpu_used", "1290.608", None, 0.0),
        kernel("mem", 1_000_000_000, 4294967296, 0.0),
        kernel("io_read", 3387392, None, 0.0),
        kernel("net_rx", 5000, None, 0.0),
        kernel("io_scratch_size", 0, None, 0.0),
    ):
        ctx.observe(m)
    first = ctx.kernel_payload("k1", "i-a")
    # The hook applies to the first measurement (BA-7002): a rate of 0, never the counter.
    assert first["cpu_util"] == {
        "current": "0",
        "capacity": "1000",
        "pct": "0",
        "unit_hint": "millicores",
        "stats.max": "1290.608",
        "stats.avg": "1290.608",
    }
    for m in (
        kernel("cpu_util", "16290.608", "1000", 30.0),
        kernel("cpu_used", "16290.608", None, 30.0),
        kernel("mem", 2_000_000_000, 4294967296, 30.0),
        kernel("io_read", 3417392, None, 30.0),
        kernel("net_rx", 100, None, 30.0),  # a counter reset
        kernel("io_scratch_size", 0, None, 30.0),
    ):
        ctx.observe(m)
    payload = ctx.kernel_payload("k1", "i-a")
    assert list(payload) == ["cpu_util", "cpu_used", "mem", "io_read", "net_rx", "io_scratch_size"]
    # stats.max/avg over the raw cumulative counter: upstream #4126, reproduced on purpose.
    assert payload["cpu_util"] == {
        "current": "500",
        "capacity": "1000",
        "pct": "50",
        "unit_hint": "millicores",
        "stats.max": "16290.608",
        "stats.avg": "8790.608",
    }
    # No capacity: the first raw value stays the capacity forever.
    assert payload["cpu_used"] == {
        "current": "16290.608",
        "capacity": "1290.608",
        "pct": "1262.24",
        "unit_hint": "msec",
    }
    assert payload["mem"] == {
        "current": "2000000000",
        "capacity": "4294967296",
        "pct": "46.57",
        "unit_hint": "bytes",
        "stats.max": "2000000000",
    }
    assert payload["io_read"] == {
        "current": "3417392",
        "capacity": "3387392",
        "pct": "100.89",
        "unit_hint": "bytes",
        "stats.rate": "1000",
    }
    assert payload["net_rx"]["current"] == "0"  # reset -> 0, not a negative rate
    assert "stats.rate" not in payload["net_rx"]  # net_* published no stats
    assert payload["io_scratch_size"] == {
        "current": "0",
        "capacity": "0",
        "pct": "0.00",
        "unit_hint": "bytes",
        "stats.max": "0",
    }


def test_node_payload_sums_devices_with_the_interval_as_capacity() -> None:
    ctx = LegacyStatContext()
    for at, core0, core1, interval in ((0.0, 1000, 2000, 30012), (30.0, 16000, 11000, 30012)):
        ctx.observe(device("cpu_util", "0", core0, interval, at))
        ctx.observe(device("cpu_util", "1", core1, interval, at))
        ctx.observe(device("mem", "root", 10 * at + 5, 100, at))
        ctx.observe(device("net_rx", "node", 1000 + 300 * at, None, at))
        ctx.end_collection("i-a")
    payload = ctx.agent_payload("i-a")
    # Node cpu_util: diff of the summed per-core msec, capacity the interval ("max" rule).
    assert payload["node"]["cpu_util"] == {
        "current": "24000",
        "capacity": "30012",
        "pct": "79.97",
        "unit_hint": "msec",
    }
    assert payload["devices"]["cpu_util"]["0"]["pct"] == "49.98"
    assert list(payload["devices"]["cpu_util"]) == ["0", "1"]
    assert payload["node"]["mem"]["stats.max"] == "305"
    assert payload["node"]["net_rx"] == {
        "current": "300",
        "capacity": None,
        "pct": "0.00",
        "unit_hint": "bps",
    }
    assert payload["devices"]["net_rx"]["node"]["capacity"] is None


def test_one_write_with_two_measurement_times_folds_two_node_collections() -> None:
    # A fleet catching up observes its previous measurement first; the node gets both.
    ctx = LegacyStatContext()
    for at, core0 in ((0.0, 1000), (30.0, 16000)):
        ctx.observe(device("cpu_util", "0", core0, 30000, at))
        ctx.observe(device("net_rx", "node", 1000 + 300 * at, None, at))
    ctx.end_collection("i-a")
    node = ctx.agent_payload("i-a")["node"]
    assert node["cpu_util"]["current"] == "15000"
    assert node["net_rx"]["current"] == "300"


def test_moving_statistics_rate_needs_two_points_in_time_order() -> None:
    stats = MovingStatistics(Decimal(10), 5.0)
    assert (stats.diff, stats.rate) == (0, 0)
    stats.update(Decimal(40), 20.0)
    assert (stats.diff, stats.rate, stats.avg) == (30, 2, 25)
    stats.update(Decimal(50), 20.0)  # same instant: no rate rather than a division by zero
    assert stats.rate == 0


@pytest.mark.parametrize(
    "text",
    ["500.01133333333337", "12.500", "4294967296", "0.000", "1181116006", "9.9996", "1E+26"],
)
def test_serializable_value_is_legacys_formatter(text: str) -> None:
    assert serializable_value(Decimal(text)) == format_decimal_reference(text)


def test_legacy_spec_comes_from_the_catalog() -> None:
    assert legacy_spec_hook("cpu_util", node=False) == "rate"
    assert legacy_spec_hook("cpu_util", node=True) == "diff"
    assert legacy_spec_hook("net_tx", node=True) == "rate"
    assert legacy_spec_hook("cuda_util", node=False) is None


def legacy_spec_hook(metric: str, *, node: bool) -> str | None:
    from promstat.catalog import DEFAULT_CATALOG

    return legacy_spec(DEFAULT_CATALOG, metric, node=node).hook


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="forget_after"):
        LegacyStatContext(forget_after=0)


def test_forgotten_kernels_start_over() -> None:
    ctx = LegacyStatContext(forget_after=60)
    ctx.observe(kernel("mem", 5, 10, 0.0))
    ctx.observe(device("mem", "root", 1, 2, 100.0))
    ctx.end_collection("i-a")
    assert ctx.kernel_payload("k1", "i-a") == {}


@pytest.mark.slow
async def test_exporter_listener_writes_bare_keys_with_legacy_ttls(
    redis_server: lab.ManagedProcess,
) -> None:
    kernel_id, agent_id = str(uuid.uuid4()), f"i-{uuid.uuid4().hex[:8]}"
    exporter = UtilizationExporter(agent_id)
    publisher = ValkeyPublisher.from_url(redis_server.url, node_interval=30)
    exporter.add_listener(publisher)
    exporter.add_kernel(kernel_id)
    exporter.observe_container(kernel_id, "mem", 1000, 4096)
    exporter.observe_device("mem", "root", 10, 100)
    client = from_url(redis_server.url)
    try:
        # the write was scheduled on this loop: poll until Valkey has it
        raw = await poll_until(
            lambda: client.get(kernel_id),
            lambda r: r is not None,
            timeout=30,
            interval=0.01,
            what="the publisher's write reached Valkey",
        )
        assert msgpack.unpackb(raw, raw=False) == {
            "mem": {
                "current": "1000",
                "capacity": "4096",
                "pct": "24.41",
                "unit_hint": "bytes",
                "stats.max": "1000",
            }
        }
        agent = msgpack.unpackb(await client.get(agent_id), raw=False)
        assert agent["node"]["mem"]["current"] == "10"
        assert agent["devices"]["mem"]["root"]["pct"] == "10"
        assert KERNEL_TTL - 60 < await client.ttl(kernel_id) <= KERNEL_TTL
        assert 60 < await client.ttl(agent_id) <= 120  # 4 x node interval
        assert publisher.writes == 2 and publisher.errors == 0
    finally:
        await publisher.close()
        await client.aclose()


@pytest.mark.slow
async def test_a_failed_write_keeps_the_payloads_and_says_where() -> None:
    redis = lab.start_redis()
    publisher = ValkeyPublisher.from_url(redis.url, auto_flush=False)
    publisher(kernel("mem", 5, 10, 0.0))
    redis.stop()
    try:
        with pytest.raises(TransportError, match=f"redis://127.0.0.1:{redis.port}"):
            await publisher.flush()
        assert publisher.context.dirty_kernels == {"k1": "i-a"}  # retried by the next flush
        # Automatic writes count and log failures instead of raising into the event loop.
        publisher.auto_flush = True
        publisher(kernel("mem", 6, 10, 1.0))
        pending = publisher._pending
        assert pending is not None
        await pending
        assert publisher.errors == 1
        assert isinstance(publisher.last_error, TransportError)
    finally:
        await publisher.redis.aclose()


@pytest.mark.slow
async def test_simulated_fleet_dual_publishes_exact_legacy_values(
    redis_server: lab.ManagedProcess,
) -> None:
    # Stepped every 15 s, measured every 30 s (the agents' own timers, per-agent phases): the
    # payloads hold the measurements, with rates over measurement times, not step times.
    config = FleetConfig(agents=2, kernels_per_agent=3, churn=None, epoch=1_700_000_000, seed=7)
    assert config.measure_interval == 30
    now = [0.0]
    publisher = ValkeyPublisher.from_url(redis_server.url, auto_flush=False)
    fleet = SimulatedFleet(config, clock=lambda: now[0], listeners=[publisher])
    times = [1_700_000_000.0 + 15 * i for i in range(5)]
    for t in times:
        now[0] = t
        await replay(fleet, publisher, [t])
    client = from_url(redis_server.url)
    try:
        kernel_ids = fleet.kernel_ids(times[-1])
        assert len(kernel_ids) == 6
        values = await client.mget(kernel_ids)
        for kernel_id, raw in zip(kernel_ids, values, strict=True):
            payload = msgpack.unpackb(raw, raw=False)
            rate = fleet.expected_rate(kernel_id, "cpu_util")
            assert payload["cpu_util"]["current"] == serializable_value(Decimal(rate))
            # Measured at the agent's ticks; the first step also observes the measurement
            # before it (so the first rate is there), which the lifetime max covers too.
            agent_id = fleet.kernel(kernel_id).agent_id
            ticks = sorted({fleet.measured_at(agent_id, t) for t in times})
            assert len(ticks) == 3  # 60 s of steps: 2 or 3 ticks, and the seed gives 3
            ticks.insert(0, ticks[0] - config.measure_interval)
            mems = [fleet.sample(kernel_id, "mem", t)[0] for t in ticks]
            assert payload["mem"]["current"] == str(int(mems[-1]))
            assert payload["mem"]["stats.max"] == str(int(max(mems)))
            assert payload["mem"]["capacity"] == str(fleet.kernel(kernel_id).mem_limit)
        for agent_id in fleet.agent_ids():
            agent = msgpack.unpackb(await client.get(agent_id), raw=False)
            assert len(agent["devices"]["cpu_util"]) == fleet.agent(agent_id).cores
            assert agent["node"]["net_rx"]["current"] == serializable_value(
                Decimal(fleet.expected_device_rate(agent_id, "net_rx", "node"))
            )
            # node cpu_util: the summed per-core msec over one measurement interval
            msec = sum(fleet.agent(agent_id).core_rates) * config.measure_interval
            assert agent["node"]["cpu_util"]["current"] == serializable_value(Decimal(msec))
    finally:
        await publisher.close()
        await client.aclose()


def test_node_measurement_wins_over_devices_and_exists_without_them() -> None:
    """The agent's node entry is the plugin's per-node value: disk with every partition
    filtered out is zeros (no device); a given node value is used as is, not the devices'
    sum."""
    ctx = LegacyStatContext()
    ctx.observe(Measured("i-a", "disk", "0", "0", 0.0, node=True))
    ctx.observe(device("mem", "root", 10, 100, 0.0))
    ctx.observe(Measured("i-a", "mem", "12", "100", 0.0, node=True))
    ctx.end_collection("i-a")
    payload = ctx.agent_payload("i-a")
    assert "disk" not in payload["devices"]
    assert payload["node"]["disk"] == {
        "current": "0",
        "capacity": "0",
        "pct": "0.00",
        "unit_hint": "bytes",
    }
    assert payload["node"]["mem"]["current"] == "12"
    assert list(payload["node"]) == ["disk", "mem"]  # plugin (measurement) order


def test_process_payloads_are_per_container_with_integer_pids() -> None:
    ctx = LegacyStatContext(forget_after=100)
    for at, used in ((0.0, "100"), (30.0, "1600")):
        for pid in (7, 8):
            ctx.observe(
                Measured("i-a", "cpu_util", used, "1000", at, "k1", container_id="c1", pid=pid)
            )
    assert ctx.dirty_containers == {"c1": "i-a"}
    payload = ctx.process_payload("c1", "i-a")
    assert list(payload) == [7, 8]
    assert payload[7]["cpu_util"] == {
        "current": "50",
        "capacity": "1000",
        "pct": "5",
        "unit_hint": "millicores",
        "stats.max": "1600",
        "stats.avg": "850",
    }
    assert msgpack.unpackb(pack(payload), strict_map_key=False) == payload
    # An exited process stays until forget_after past the first collection that missed it
    # (the agent's lazy_remove_process_metric starts there), then leaves.
    for at in (60.0, 159.0, 160.0):
        ctx.observe(Measured("i-a", "cpu_util", "1700", "1000", at, "k1", container_id="c1", pid=7))
        kept = list(ctx.process_payload("c1", "i-a"))
        assert kept == ([7, 8] if at < 160 else [7]), at
    # A container no longer measured at all leaves after forget_after (its kernel ended).
    ctx.observe(device("mem", "root", 1, 2, 261.0))
    ctx.end_collection("i-a")
    assert ctx.process_payload("c1", "i-a") == {}
