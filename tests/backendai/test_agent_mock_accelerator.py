"""The real mock accelerator plugin (backend.ai-accelerator-mock 26.9.6) on the real agent.

Its node measurements (random numbers, seeded here) reach promstat like every other
measurement; the comparison shows what the catalog must say for such a plugin. The built-in
catalog follows the accelerator plugins of the reference (``*_power``: ``stats.max``;
``*_temperature``: no stats); the mock publishes ``stats.avg`` and ``stats.max`` for both, and
its node temperature is the devices' mean. Everything else (unit hints, ``*_mem``, ``*_util``,
the node values given by the plugin) already agrees, and a catalog extended for the plugin's
stats filters (what an operator's ``--catalog`` YAML does) matches byte for byte.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest

from promstat.catalog import DEFAULT_CATALOG, MetricSpec

pytestmark = pytest.mark.backendai

# The mock's stats filters for its power and temperature (plugin.py gather_node_measures).
MOCK_CATALOG = DEFAULT_CATALOG.extended(
    patterns=[
        (r".+_power", MetricSpec(unit_hint="Watts", stats=("avg", "max"))),
        (
            r".+_temperature",
            MetricSpec(
                unit_hint="Celsius", stats=("avg", "max"), node_aggregate="max", node_capacity="max"
            ),
        ),
    ]
)


class _NoDocker:
    """aiodocker.Docker for the mock's container loop (no containers: never queried)."""

    async def close(self) -> None:
        return None


def _mock_plugin(monkeypatch: pytest.MonkeyPatch) -> Any:
    from ai.backend.accelerator.mock import plugin as mock
    from ai.backend.accelerator.mock.types import MockDevice
    from ai.backend.common.types import DeviceId, DeviceName, SlotName, SlotTypes

    monkeypatch.setattr(mock, "random", random.Random(20261203))
    monkeypatch.setattr(mock, "aiodocker", SimpleNamespace(Docker=_NoDocker))
    plugin = mock.MockPlugin({}, {"agent": {"docker-mode": "default"}})
    # What init() reads from mock-accelerator.toml: two 80 GiB "cuda" devices.
    plugin.key = DeviceName("cuda")
    plugin.slot_types = [(SlotName("cuda.device"), SlotTypes.COUNT)]
    plugin._all_devices = [
        MockDevice("cuda", "H100", DeviceId(f"gpu-{i}"), DeviceId(str(i)), "pci", 80 << 30, 132)
        for i in range(2)
    ]
    return plugin


async def _run(monkeypatch: pytest.MonkeyPatch, catalog: Any) -> tuple[Any, Any]:
    from backendai.harness import AgentRig, decoded

    rig = AgentRig(monkeypatch, catalog=catalog)
    try:
        rig.add_computer("cuda", _mock_plugin(monkeypatch))
        for at in (1000.0, 1030.0, 1060.0):
            await rig.collect(at)
            assert rig.promstat_series() == rig.real_series()
        return decoded(rig.valkey.store)[rig.agent_id], decoded(rig.redis.store)[rig.agent_id]
    finally:
        await rig.close()


async def test_mock_accelerator_node_payload_matches_with_its_stats_filters(
    backendai: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, ours = await _run(monkeypatch, MOCK_CATALOG)
    assert set(real[0]["node"]) >= {"cuda_mem", "cuda_util", "cuda_power", "cuda_temperature"}
    assert ours == real


async def test_builtin_catalog_differs_from_the_mock_only_in_stats_filters(
    backendai: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, ours = await _run(monkeypatch, DEFAULT_CATALOG)
    differences = set()
    for level in ("node", "devices"):
        for metric, real_value in real[0][level].items():
            entries = [(None, real_value)] if level == "node" else list(real_value.items())
            for device, value in entries:
                mine = ours[0][level][metric] if device is None else ours[0][level][metric][device]
                keys = set(value) | set(mine)
                differences |= {(metric, k) for k in keys if value.get(k) != mine.get(k)}
    assert differences == {
        ("cuda_power", "stats.avg"),
        ("cuda_temperature", "stats.avg"),
        ("cuda_temperature", "stats.max"),
    }
