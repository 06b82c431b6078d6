"""promstat's exporter and Valkey publisher against the real Backend.AI 26.9 agent.

The real ``StatContext`` with the real intrinsic plugins and the real ``ValkeyStatClient``
(:mod:`backendai.harness`) and promstat, fed the same measurements, over collections that
exercise the agent's corner cases: a kernel that starts late, one that stops, a counter reset,
a memory limit of 0, a partial reading (no ``networks`` in the docker stats), processes that
come and go, a disk that appears late and a node value with no devices. After every collection:

* every Valkey key either side wrote, its bytes and its TTL are identical (kernel, agent and
  per-container process keys);
* every exposition series, label set and value of the three utilization families is identical
  to the real registry's ``prometheus_client.generate_latest``; promstat's own
  ``value_type="rate"`` series are the only addition when rates are on.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from backendai.harness import AgentRig

pytestmark = pytest.mark.backendai


def assert_same_valkey(rig: AgentRig) -> None:
    from backendai.harness import decoded

    real, ours = rig.valkey.store, rig.redis.store
    assert sorted(ours) == sorted(real), "key names differ"
    for key in real:
        assert ours[key][1] == real[key][1], f"TTL of {key}"
    # Decoded first so a difference reads as a field, then byte for byte.
    assert decoded(ours) == decoded(real)
    assert ours == real


def assert_same_series(rig: AgentRig) -> None:
    real = rig.real_series()
    assert rig.promstat_series() == real
    with_rates = rig.promstat_series(rates=True)
    extra = {k: v for k, v in with_rates.items() if k not in real}
    assert {k: with_rates[k] for k in real} == real
    assert {dict(labels)["value_type"] for _, labels in extra} <= {"rate"}


async def collect_and_compare(rig: AgentRig, at: float) -> None:
    await rig.collect(at)
    assert_same_valkey(rig)
    assert_same_series(rig)


async def test_collections_with_every_corner_case_match_the_real_agent(rig: AgentRig) -> None:
    from backendai.harness import Container, unpack

    user = uuid.UUID("2b2a43d9-7ab1-4b84-9d4b-6d4f0a7e3c11")
    a = rig.start_kernel(
        "c" * 64,
        Container(cpu_ns=1_290_608_000, mem=1 << 30, io_read=3_387_392, rx=5000, tx=700),
        owner_user=user,
    )
    await collect_and_compare(rig, 1000.0)

    # Round 2: everything grows; a kernel starts late with two processes.
    ca = rig.containers["c" * 64]
    ca.cpu_ns, ca.mem, ca.io_read, ca.rx, ca.tx = 16_290_608_000, 2 << 30, 4_435_968, 9000, 900
    b = rig.start_kernel(
        "d" * 64,
        Container(
            cpu_ns=500_000_000,
            mem=300 << 20,
            rx=10,
            processes={101: (400.0, 100 << 20, 4096, 0), 102: (100.0, 50 << 20, 0, 512)},
        ),
    )
    rig.host.cores = [(40.0, 6.0), (35.0, 3.25)]
    rig.host.net_recv, rig.host.net_sent = 4_000_000, 800_000
    await collect_and_compare(rig, 1030.0)

    # Round 3: a counter reset (a's container restarted), b's memory limit 0, a partial
    # reading of b (docker stats without "networks"), a process exits, a disk appears.
    ca.cpu_ns, ca.rx, ca.tx, ca.io_read = 200_000_000, 100, 10, 1024
    cb = rig.containers["d" * 64]
    cb.cpu_ns, cb.mem_limit, cb.rx = 2_000_000_000, 0, None
    cb.processes = {101: (1900.0, 120 << 20, 8192, 0)}
    rig.host.partitions.append(("/dev/sdb1", "/data", "xfs", 4096, 2_000_000, 1_999_000))
    await collect_and_compare(rig, 1060.0)

    # Round 4: a stops; b's processes measured again; b's memory limit back.
    await rig.stop_kernel("c" * 64)
    cb.mem_limit, cb.rx = 8 << 30, 50
    cb.processes = {101: (2500.0, 130 << 20, 8192, 4096), 103: (10.0, 1 << 20, 0, 0)}
    await collect_and_compare(rig, 1090.0)

    # What was compared is what 26.9 writes, and what promstat used to get wrong.
    kernel_b, ttl = rig.valkey.store[b]
    assert ttl == 86400  # ValkeyStatClient's default: collect_container_stat passes none
    assert unpack(kernel_b)["cpu_util"]["unit_hint"] == "millicores"
    assert unpack(rig.valkey.store[a][0])["cpu_util"]["current"] == "0"  # the reset
    assert rig.valkey.store[rig.agent_id][1] == 120  # 4 x the node interval
    processes, process_ttl = rig.valkey.store["d" * 64]
    assert process_ttl == 120  # 4 x the process interval
    assert set(unpack(processes)) == {101, 102, 103}  # an exited pid stays for its detention
    assert unpack(processes)[101]["cpu_util"]["unit_hint"] == "millicores"


async def test_a_node_value_without_devices_is_written_as_the_agent_does(rig: AgentRig) -> None:
    """Every partition filtered out (tmpfs, squashfs): no disk device, node.disk all zeros."""
    from backendai.harness import Container, unpack

    rig.host.partitions = [
        ("tmpfs", "/run", "tmpfs", 4096, 1000, 1000),
        ("/dev/loop0", "/snap/core", "squashfs", 4096, 5000, 0),
    ]
    rig.start_kernel("e" * 64, Container(cpu_ns=10**9, mem=1 << 20))
    for at in (1000.0, 1030.0):
        await collect_and_compare(rig, at)
    agent = unpack(rig.valkey.store[rig.agent_id][0])
    assert "disk" not in agent["devices"]
    assert agent["node"]["disk"] == {
        "current": "0",
        "capacity": "0",
        "pct": "0.00",
        "unit_hint": "bytes",
    }


@pytest.mark.parametrize("version", ["26.4", "26.9"])
async def test_unit_hints_of_other_versions_are_one_setting(
    backendai: Any, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    """The catalog setting is what makes the payloads agree: 26.9's agent matches 26.9's
    hints and, on exactly the cpu_util unit_hint, differs from an older agent's."""
    from backendai.harness import AgentRig, Container, decoded
    from promstat.catalog import DEFAULT_CATALOG

    rig = AgentRig(monkeypatch, catalog=DEFAULT_CATALOG.for_backendai(version))
    try:
        kernel = rig.start_kernel("f" * 64, Container(cpu_ns=10**9))
        await rig.collect(1000.0)
        await rig.collect(1030.0)
        real, ours = decoded(rig.valkey.store), decoded(rig.redis.store)
        if version == "26.9":
            assert ours == real
        else:
            assert ours[kernel][0]["cpu_util"]["unit_hint"] == "percent"
            ours[kernel][0]["cpu_util"]["unit_hint"] = "millicores"
            assert ours == real
    finally:
        await rig.close()


async def test_exited_processes_and_stopped_kernels_leave_as_the_agent_removes_them(
    backendai: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent removes an exited process (payload entry and series) and a stopped kernel's
    series when its detention task has slept; with that sleep shortened to 0 (so it runs before
    the next collection) promstat with a detention of one interval does the same."""
    import ai.backend.agent.metrics.metric as bai_metric

    from backendai.harness import AgentRig, Container, unpack

    monkeypatch.setattr(bai_metric, "UTILIZATION_METRIC_DETENTION", 0.0)
    rig = AgentRig(monkeypatch, detention=30.0)
    try:
        procs = {201: (10.0, 1 << 20, 0, 0), 202: (20.0, 2 << 20, 0, 0)}
        rig.start_kernel("a" * 64, Container(cpu_ns=10**9, processes=procs))
        rig.start_kernel("b" * 64, Container(cpu_ns=10**9))
        await collect_and_compare(rig, 1000.0)
        rig.containers["a" * 64].processes = {201: (40.0, 1 << 20, 0, 0)}  # 202 exits
        await collect_and_compare(rig, 1030.0)
        assert set(unpack(rig.valkey.store["a" * 64][0])) == {201, 202}  # still there
        await rig.stop_kernel("b" * 64)
        await collect_and_compare(rig, 1060.0)
        assert set(unpack(rig.valkey.store["a" * 64][0])) == {201}  # removed
        await collect_and_compare(rig, 1090.0)
        kernels = {dict(labels).get("kernel_id") for _, labels in rig.real_series()}
        assert len(kernels - {None}) == 1  # the stopped kernel's series are gone
    finally:
        await rig.close()
