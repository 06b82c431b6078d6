"""Deterministic data for the planner's real-server tests, and the payloads it must produce.

Samples are every 15 s from ``T0`` to ``T0 + 600``; queries are evaluated at ``AT = T0 + 607``,
seven seconds after the last sample and *between* subquery steps, so window statistics do not
depend on whether a range's left boundary is open (Prometheus 3) or closed (Prometheus 2).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from promstat.testing.fake import openmetrics_text

T0 = 1_700_000_040  # a multiple of 60, so samples sit on absolute 15 s subquery steps
AT = T0 + 607
STEPS = range(41)  # i = 0..40 -> T0 .. T0 + 600
GiB = 1024**3

K1 = "11111111-1111-4111-8111-111111111111"  # steady load, every metric kind
K2 = "22222222-2222-4222-8222-222222222222"  # counter reset + duplicate stale series
K3 = "33333333-3333-4333-8333-333333333333"  # a single sample
K4 = "44444444-4444-4444-8444-444444444444"  # samples older than the lookback -> None
K5 = 'we"ird\\id.*|(x)'  # quotes, backslash, regex metacharacters
K6 = ".*"  # must not match everything
K7 = "77777777-7777-4777-8777-777777777777"  # never reported -> None

SENTINEL = "9223372036854775807"


def _container(kernel: str, metric: str, value_type: str, **extra: str) -> dict[str, str]:
    labels = {
        "container_metric_name": metric,
        "agent_id": "agent-1",
        "kernel_id": kernel,
        "session_id": f"sess-{kernel[:4]}",
        "user_id": "user-1",
        "project_id": "proj-1",
        "value_type": value_type,
        "instance": "agent-1:6003",
        "job": "backendai-agent",
    }
    labels.update(extra)
    return labels


def _device(agent: str, metric: str, device: str, value_type: str) -> dict[str, str]:
    return {
        "device_metric_name": metric,
        "agent_id": agent,
        "device_id": device,
        "value_type": value_type,
        "instance": f"{agent}:6003",
        "job": "backendai-agent",
    }


C = "backendai_container_utilization"
D = "backendai_device_utilization"


def samples() -> Iterator[tuple[str, dict[str, str], float, float]]:
    """Every sample of the scenario."""
    for i in STEPS:
        t = T0 + 15 * i
        # K1: steady load
        yield C, _container(K1, "cpu_util", "current"), t, 15000.0 * i
        yield C, _container(K1, "cpu_util", "capacity"), t, 1000.0
        yield C, _container(K1, "cpu_used", "current"), t, 15000.0 * i
        mem = 3 * GiB if i <= 20 else (2 * GiB if i % 2 else 4 * GiB)
        yield C, _container(K1, "mem", "current"), t, float(mem)
        yield C, _container(K1, "mem", "capacity"), t, float(8 * GiB)
        yield C, _container(K1, "io_read", "current"), t, 4096.0 * 15 * i
        yield C, _container(K1, "io_write", "current"), t, 1024.0 * 15 * i
        yield C, _container(K1, "net_rx", "current"), t, 125000.0 * 15 * i
        yield C, _container(K1, "net_tx", "current"), t, 37507.5 * i
        yield C, _container(K1, "io_scratch_size", "current"), t, 0.0
        util = 60.0 if i <= 20 else (40.0 if i % 2 else 80.0)
        yield C, _container(K1, "npu_util", "current"), t, util
        yield C, _container(K1, "npu_util", "capacity"), t, 200.0
        yield C, _container(K1, "npu_mem", "current"), t, 1.5 * GiB
        yield C, _container(K1, "npu_mem", "capacity"), t, float(16 * GiB)
        # K2: cpu counter reset at i=36; mem exported twice (a stale instance with frozen value)
        cpu = 15000.0 * i if i < 36 else 7500.0 + 15000.0 * (i - 36)
        yield C, _container(K2, "cpu_util", "current"), t, cpu
        yield C, _container(K2, "cpu_util", "capacity"), t, 1000.0
        yield C, _container(K2, "mem", "current", instance="new:6003"), t, float(2 * GiB)
        yield C, _container(K2, "mem", "capacity", instance="new:6003"), t, float(4 * GiB)
        yield C, _container(K2, "mem", "current", instance="old:6003"), t, float(1 * GiB)
        yield C, _container(K2, "mem", "capacity", instance="old:6003"), t, float(4 * GiB)
        # K4: stopped reporting long ago
        if i <= 13:
            yield C, _container(K4, "mem", "current"), t, float(GiB)
        # K5: awkward id
        yield C, _container(K5, "mem", "current"), t, float(GiB)
        yield C, _container(K5, "mem", "capacity"), t, float(2 * GiB)
        # agents
        yield D, _device("agent-1", "cpu_util", "0", "current"), t, 7500.0 * i
        yield D, _device("agent-1", "cpu_util", "0", "capacity"), t, 15000.0
        yield D, _device("agent-1", "cpu_util", "1", "current"), t, 3750.0 * i
        yield D, _device("agent-1", "cpu_util", "1", "capacity"), t, 15000.0
        yield D, _device("agent-1", "mem", "root", "current"), t, float(20 * GiB)
        yield D, _device("agent-1", "mem", "root", "capacity"), t, float(64 * GiB)
        yield D, _device("agent-1", "disk", "/dev/nvme0n1p2", "current"), t, 400e9
        yield D, _device("agent-1", "disk", "/dev/nvme0n1p2", "capacity"), t, 1000e9
        yield D, _device("agent-1", "net_rx", "node", "current"), t, 1875003.75 * i
        yield D, _device("agent-1", "cuda_util", "0", "current"), t, 40.0
        yield D, _device("agent-1", "cuda_util", "0", "capacity"), t, 100.0
        yield D, _device("agent-1", "cuda_util", "1", "current"), t, 60.0
        yield D, _device("agent-1", "cuda_util", "1", "capacity"), t, 100.0
        yield D, _device("agent-2", "mem", "root", "current"), t, float(8 * GiB)
        yield D, _device("agent-2", "mem", "root", "capacity"), t, float(16 * GiB)
    # K3: exactly one sample
    t = T0 + 600
    yield C, _container(K3, "cpu_util", "current"), t, 15000.0
    yield C, _container(K3, "cpu_util", "capacity"), t, 1000.0
    yield C, _container(K3, "mem", "current"), t, float(GiB)
    yield C, _container(K3, "mem", "capacity"), t, float(2 * GiB)


def scenario_openmetrics() -> str:
    """The scenario as OpenMetrics text for ``promtool tsdb create-blocks-from openmetrics``."""
    return openmetrics_text(samples())


def _m(current: str, capacity: str, pct: str, unit: str, **stats: str) -> dict[str, str]:
    out = {"current": current, "capacity": capacity, "pct": pct, "unit_hint": unit}
    for key in ("max", "avg", "rate"):
        if key in stats:
            out[f"stats.{key}"] = stats[key]
    return out


EXPECTED_KERNELS: dict[str, dict[str, Any] | None] = {
    K1: {
        "cpu_util": _m("1000", "1000", "100", "millicores", max="1000", avg="1000"),
        "cpu_used": _m("600000", SENTINEL, "0", "msec"),
        "mem": _m("4294967296", "8589934592", "50", "bytes", max="4294967296"),
        "io_read": _m("2457600", SENTINEL, "0", "bytes", rate="4096"),
        "io_write": _m("614400", SENTINEL, "0", "bytes", rate="1024"),
        "net_rx": _m("125000", SENTINEL, "0", "bps"),
        "net_tx": _m("2500.5", SENTINEL, "0", "bps"),
        "io_scratch_size": _m("0", "0", "0.00", "bytes", max="0"),
        "npu_util": _m("80", "200", "40", "percent", max="80", avg="60"),
        "npu_mem": _m("1610612736", "17179869184", "9.38", "bytes", max="1610612736"),
    },
    K2: {
        # no rate series: rate() over 135 s (4 x 30 s + 15 s). The step whose last two samples
        # are the reset is 0 (legacy's diff 0); later windows holding the reset count the
        # post-reset 7500 as increase: 127500 per 135 s = 944.4 on the steps, 112500 / 120 s =
        # 937.5 at AT; avg over the 20 steps (15 x 1000, 0, 4 x 944.4) = 938.889
        "cpu_util": _m("937.5", "1000", "93.75", "millicores", max="1000", avg="938.889"),
        # max over the duplicate, never the sum: capacity 4 GiB, not 8 GiB
        "mem": _m("2147483648", "4294967296", "50", "bytes", max="2147483648"),
    },
    K3: {
        # a single sample: rate 0, never the raw counter (15000)
        "cpu_util": _m("0", "1000", "0", "millicores", max="0", avg="0"),
        "mem": _m("1073741824", "2147483648", "50", "bytes", max="1073741824"),
    },
    K4: None,
    K5: {"mem": _m("1073741824", "2147483648", "50", "bytes", max="1073741824")},
    K6: None,
    K7: None,
}


def _n(current: str, capacity: str | None, pct: str, unit: str, **stats: str) -> dict[str, Any]:
    out: dict[str, Any] = {"current": current, "capacity": capacity, "pct": pct, "unit_hint": unit}
    for key in ("max", "avg", "rate"):
        if key in stats:
            out[f"stats.{key}"] = stats[key]
    return out


EXPECTED_AGENTS: dict[str, dict[str, Any] | None] = {
    "agent-1": {
        "node": {
            # msec of CPU per 15 s interval summed over cores: pct is % of one core x cores
            "cpu_util": _n("11250", "15000", "75", "msec"),
            "mem": _n("21474836480", "68719476736", "31.25", "bytes", max="21474836480"),
            "disk": _n("400000000000", "1000000000000", "40", "bytes"),
            "net_rx": _n("125000.25", None, "0.00", "bps"),
            "cuda_util": _n("100", "200", "50", "percent", max="100", avg="100"),
        },
        "devices": {
            "cpu_util": {
                "0": _n("7500", "15000", "50", "msec"),
                "1": _n("3750", "15000", "25", "msec"),
            },
            "mem": {"root": _n("21474836480", "68719476736", "31.25", "bytes", max="21474836480")},
            "disk": {"/dev/nvme0n1p2": _n("400000000000", "1000000000000", "40", "bytes")},
            "net_rx": {"node": _n("125000.25", None, "0.00", "bps")},
            "cuda_util": {
                "0": _n("40", "100", "40", "percent", max="40", avg="40"),
                "1": _n("60", "100", "60", "percent", max="60", avg="60"),
            },
        },
    },
    "agent-2": {
        "node": {"mem": _n("8589934592", "17179869184", "50", "bytes", max="8589934592")},
        "devices": {
            "mem": {"root": _n("8589934592", "17179869184", "50", "bytes", max="8589934592")}
        },
    },
    "agent-none": None,
}
