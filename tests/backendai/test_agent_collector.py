"""promstat's RateCollector inside the real Backend.AI 26.9 agent's registry.

The real StatContext and plugins measure (:mod:`backendai.harness`); the collector, attached to
the real ``UtilizationMetricObserver``, adds ``value_type="rate"`` samples to the very families
``generate_latest`` serves. They must equal promstat's own exporter's rate series on the same
measurements and, quantized as legacy does, the rates the real agent wrote to Valkey
(``cpu_util`` / ``net_*`` ``current``, ``io_*`` ``stats.rate``), counter reset included.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from promstat.agent.collector import RateCollector
from promstat.renderer import format_decimal

if TYPE_CHECKING:
    from backendai.harness import AgentRig

pytestmark = pytest.mark.backendai


@pytest.fixture
def collector(rig: AgentRig) -> Iterator[RateCollector]:
    c = RateCollector(clock=lambda: rig.now)  # the agent's perf_counter, faked the same way
    c.attach(rig.observer, rig.registry)
    try:
        yield c
    finally:
        c.detach()


def _split(series: dict[Any, float]) -> tuple[dict[Any, float], dict[Any, float]]:
    rates = {k: v for k, v in series.items() if dict(k[1])["value_type"] == "rate"}
    return {k: v for k, v in series.items() if k not in rates}, rates


async def test_rates_in_the_agents_registry_match_promstat_and_the_agents_payload(
    rig: AgentRig, collector: RateCollector
) -> None:
    from backendai.harness import Container, unpack

    rig.start_kernel(
        "c" * 64,
        Container(cpu_ns=10**9, io_read=4096, rx=1000, tx=10, processes={5: (10.0, 1, 0, 0)}),
    )
    steps = [
        # (at, cpu_ns, io_read, rx): growth, growth, a counter reset
        (1030.0, 23_500_000_000, 1_052_672, 61_000),
        (1060.0, 40_000_000_000, 2_101_248, 61_000),
        (1090.0, 100_000_000, 0, 5),
    ]
    await rig.collect(1000.0)
    for at, cpu_ns, io_read, rx in steps:
        c = rig.containers["c" * 64]
        c.cpu_ns, c.io_read, c.rx = cpu_ns, io_read, rx
        c.processes = {5: (cpu_ns / 2e6, 1, io_read, 0)}
        rig.host.cores = [(u + 7.5, s) for u, s in rig.host.cores]
        rig.host.net_recv += 30_000
        await rig.collect(at)
        real_plain, real_rates = _split(rig.real_series())
        assert real_plain == rig.promstat_series()  # the raw series are untouched
        _, ours = _split(rig.promstat_series(rates=True))
        assert real_rates == ours  # every rate series, labels and value, as promstat's exporter
        families = {name for name, _ in real_rates}
        assert families == {
            "backendai_container_utilization",
            "backendai_device_utilization",
            "backendai_process_utilization",
        }
        # ... and, quantized as legacy does, what the real agent wrote to Valkey.
        (kernel_id,) = rig.exporter.kernel_ids()
        payload = unpack(rig.valkey.store[kernel_id][0])
        by_metric = {
            dict(labels)["container_metric_name"]: v
            for (name, labels), v in real_rates.items()
            if name == "backendai_container_utilization"
        }
        assert format_decimal(by_metric["cpu_util"]) == payload["cpu_util"]["current"]
        assert format_decimal(by_metric["net_rx"]) == payload["net_rx"]["current"]
        assert format_decimal(by_metric["io_read"]) == payload["io_read"]["stats.rate"]
        node = unpack(rig.valkey.store[rig.agent_id][0])
        device_rates = {
            dict(labels)["device_metric_name"]: v
            for (name, labels), v in real_rates.items()
            if name == "backendai_device_utilization" and dict(labels)["device_id"] == "node"
        }
        node_rx = node["devices"]["net_rx"]["node"]["current"]
        assert format_decimal(device_rates["net_rx"]) == node_rx
    assert by_metric["cpu_util"] == 0.0  # the reset: 0, as the agent's rate


def test_attach_twice_or_to_a_foreign_registry_is_an_error(rig: AgentRig) -> None:
    from prometheus_client import CollectorRegistry

    from promstat.errors import ConfigError

    c = RateCollector()
    with pytest.raises(ConfigError, match="not in that registry"):
        c.attach(rig.observer, CollectorRegistry())
    c.attach(rig.observer, rig.registry)
    try:
        with pytest.raises(ConfigError, match="already attached"):
            c.attach(rig.observer, rig.registry)
    finally:
        c.detach()
    assert "observe_container_metric" not in vars(rig.observer)  # the class method again
