"""Tests for session utilization (idle checker) and per-kernel pct (autoscaling) in one query.

Known data: recorded series written as OpenMetrics for three sessions, checked against a port
of the idle checker's ``get_current_utilization`` on the legacy payloads of the same numbers;
and the raw path on a backfilled simulated fleet, checked against the same formula on
``LiveStats`` payloads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from promstat.client import PrometheusClient
from promstat.errors import ConfigError
from promstat.expressions import LiveStatExpressions
from promstat.generate.rules import write_rules
from promstat.profile import RuleProfile
from promstat.renderer import format_pct
from promstat.service import LiveStats
from promstat.testing import lab
from promstat.testing.sim import FleetConfig, SimulatedFleet, fleet_openmetrics
from promstat.testing.stub import StubAPI
from promstat.utilization import (
    MemRule,
    Utilization,
    autoscaling_kernel_average,
    idle_checker_utilization,
)

GIB = 1 << 30
T0 = 1_700_000_010  # a multiple of the step: subquery steps land on samples
STEP = 15
TIMES = [T0 + i * STEP for i in range(5)]
AT = TIMES[-1]
RESOURCES = ["cpu_util", "mem", "cuda_util", "cuda_mem"]

# kernel -> (session, {metric: (current per tick, capacity)}); cpu_util current is already
# the rate (msec/s), as the recorded current is.
KERNELS: dict[str, tuple[str, dict[str, tuple[list[float], float]]]] = {
    "k1": ("s1", {
        "cpu_util": ([400, 200, 400, 200, 400], 1000),
        "mem": ([2 * GIB] * 5, 8 * GIB),
        "cuda_util": ([80, 90, 70, 80, 80], 100),
    }),
    "k2": ("s1", {
        "cpu_util": ([600] * 5, 1000),
        "mem": ([GIB, GIB, 3 * GIB, GIB, GIB], 8 * GIB),
    }),
    "k3": ("s2", {
        "cpu_util": ([100] * 5, 1000),
        "mem": ([GIB] * 5, 2 * GIB),
        "cuda_mem": ([5 * GIB] * 5, 0),  # no positive capacity: legacy pct "0.00"
    }),
}  # fmt: skip
SLOTS = {"s1": 4 * GIB, "s2": 2 * GIB, "s3": GIB}


def _recorded_openmetrics() -> str:
    rec = "kernel_metric:backendai_container_utilization"
    lines: list[str] = []
    for kernel_id, (session, metrics) in KERNELS.items():
        raw = (
            f'backendai_container_utilization{{container_metric_name="mem",agent_id="a",'
            f'kernel_id="{kernel_id}",session_id="{session}",user_id="u",project_id="p",'
            f'value_type="current"}}'
        )
        lines += [f"{raw} 1 {t}" for t in TIMES]
        for metric, (currents, capacity) in metrics.items():
            labels = f'kernel_id="{kernel_id}",container_metric_name="{metric}"'
            lines += [
                f'{rec}:live_stat{{{labels},stat="current"}} {c} {t}'
                for c, t in zip(currents, TIMES, strict=True)
            ]
            lines += [f'{rec}:live_stat{{{labels},stat="capacity"}} {capacity} {t}' for t in TIMES]
    return "\n".join(lines) + "\n# EOF\n"


def _legacy_payload(kernel_id: str, tick: int) -> dict[str, Any]:
    metrics = KERNELS[kernel_id][1]
    return {
        metric: {
            "current": str(currents[tick]),
            "capacity": str(capacity),
            "pct": format_pct(str(currents[tick]), str(capacity)),
        }
        for metric, (currents, capacity) in metrics.items()
    }


def _expected(session: str, tick: int) -> dict[str, float | None] | None:
    payloads = [_legacy_payload(k, tick) for k, (s, _) in KERNELS.items() if s == session]
    return idle_checker_utilization(payloads, RESOURCES, {"mem": SLOTS[session]})


def _close(got: dict[str, float | None] | None, want: dict[str, float | None] | None) -> None:
    assert (got is None) == (want is None), (got, want)
    if got is None or want is None:
        return
    assert got.keys() == want.keys()
    for key in want:
        if want[key] is None:
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(want[key], abs=0.01), key  # legacy pct: 2 decimals


@pytest.fixture(scope="module")
def recorded() -> Iterator[lab.PrometheusProcess]:
    with lab.start_prometheus(openmetrics=_recorded_openmetrics()) as prom:
        yield prom


def test_reference_port_follows_idle_py() -> None:
    payloads = [_legacy_payload("k1", 0), _legacy_payload("k2", 0), None]
    got = idle_checker_utilization(payloads, RESOURCES, {"mem": 4 * GIB})
    assert got == {
        "cpu_util": 50.0,
        # idle.py adds mem.pct *and* current/slot*100 per kernel, divided by the kernels
        # that reported mem.pct: (25 + 12.5)/2 + (2 + 1)/2 GiB / 4 GiB * 100
        "mem": pytest.approx(18.75 + 37.5),
        "cuda_util": 80.0,  # one kernel reported it: averaged over that one
        "cuda_mem": None,  # nobody reported it: excluded
    }
    assert idle_checker_utilization([None], RESOURCES, {}) is None


@pytest.mark.slow
async def test_sessions_in_one_query_match_the_idle_checker(
    recorded: lab.PrometheusProcess,
) -> None:
    async with PrometheusClient(recorded.url) as prom:
        util = Utilization(prom)
        got = await util.sessions(SLOTS, RESOURCES, at=AT)
        assert set(got) == {"s1", "s2", "s3"}
        for session in ("s1", "s2", "s3"):
            _close(got[session], _expected(session, 4))
        assert got["s2"] is not None and got["s2"]["cuda_mem"] == 0.0  # capacity 0 -> 0
        assert got["s3"] is None  # no series at all: skipped, as with no live_stat
        slot_rule = Utilization(prom, mem_rule=MemRule.OCCUPIED_SLOT)
        s1 = (await slot_rule.sessions({"s1": 4 * GIB}, ["mem"], at=AT))["s1"]
        assert s1 == {"mem": pytest.approx(37.5)}  # current / slot only
        no_slot = (await util.sessions({"s1": None}, ["mem"], at=AT))["s1"]
        assert no_slot == {"mem": pytest.approx(18.75)}  # mem.pct alone without a slot


@pytest.mark.slow
async def test_window_averages_the_readings_like_the_util_series(
    recorded: lab.PrometheusProcess,
) -> None:
    async with PrometheusClient(recorded.url) as prom:
        got = await Utilization(prom).sessions(SLOTS, RESOURCES, at=AT, window=55.0, step=15.0)
    # 55s: the subquery reads the 4 ticks AT-45 .. AT whether the range is left-closed
    # (Prometheus 2) or left-open (3); the idle checker averages its readings, skipping None.
    for session in ("s1", "s2"):
        readings = [_expected(session, tick) for tick in (1, 2, 3, 4)]
        want: dict[str, float | None] = {}
        for resource in RESOURCES:
            values = [r[resource] for r in readings if r and r[resource] is not None]
            want[resource] = sum(values) / len(values) if values else None
        _close(got[session], want)
    assert got["s1"] is not None and got["s1"]["cpu_util"] == pytest.approx(45)


@pytest.mark.slow
async def test_many_sessions_are_chunked(recorded: lab.PrometheusProcess) -> None:
    many = {**SLOTS, **{f"x{i:03d}-{'y' * 40}": GIB for i in range(300)}}
    async with PrometheusClient(recorded.url) as prom:
        util = Utilization(prom, max_query_bytes=4096)
        assert (
            len(
                util._chunks(
                    util.session_query(["__PROMSTAT_IDS__"], RESOURCES), "session_id", list(many)
                )
            )
            > 1
        )
        got = await util.sessions(many, RESOURCES, at=AT)
    assert len(got) == len(many)
    _close(got["s1"], _expected("s1", 4))


@pytest.mark.slow
async def test_kernel_pct_for_autoscaling(recorded: lab.PrometheusProcess) -> None:
    async with PrometheusClient(recorded.url) as prom:
        got = await Utilization(prom).kernels(["k1", "k2", "k9"], ["cpu_util", "cuda_util"], at=AT)
    assert got == {
        "k1": {"cpu_util": pytest.approx(40), "cuda_util": pytest.approx(80)},
        "k2": {"cpu_util": pytest.approx(60)},
    }
    legacy = [_legacy_payload("k1", 4), _legacy_payload("k2", 4), None]
    for metric in ("cpu_util", "cuda_util"):
        want = autoscaling_kernel_average(legacy, metric)
        have = autoscaling_kernel_average([got.get(k) for k in ("k1", "k2", "k9")], metric)
        assert want is not None and have is not None
        assert have == pytest.approx(want)
    assert autoscaling_kernel_average([None, {}], "cpu_util") is None


def test_bad_arguments_are_config_errors() -> None:
    util = Utilization(StubAPI())
    with pytest.raises(ConfigError, match="at least one resource"):
        util.session_query(["s"], [])
    with pytest.raises(ConfigError, match="step needs a window"):
        util.kernel_query(["k"], ["cpu_util"], step=15.0)
    with pytest.raises(ConfigError, match=r"window must be > 0 seconds.*a number"):
        util.session_query(["s"], ["mem"], window="10m")  # type: ignore[arg-type]
    assert "[10m:15s]" in util.session_query(["s"], ["mem"], window=600.0, step=15.0)


# ---------------------------------------------------------------------------- raw path


@pytest.mark.slow
async def test_raw_path_on_a_simulated_fleet_matches_live_stat_payloads() -> None:
    config = FleetConfig(agents=3, kernels_per_agent=4, churn=None, epoch=T0, seed=11)
    fleet = SimulatedFleet(config, clock=lambda: float(AT))
    at = T0 + 600
    with lab.start_prometheus(openmetrics=fleet_openmetrics(config, T0, at, STEP)) as prom_proc:
        async with PrometheusClient(prom_proc.url) as prom:
            stats = LiveStats(prom, clock=lambda: at)
            kernel_ids = fleet.kernel_ids(at)
            payloads = dict(
                zip(kernel_ids, await stats.load_kernels(kernel_ids, at=at), strict=True)
            )
            sessions = {fleet.kernel(k).session_id: k for k in kernel_ids}
            slots = {s: fleet.kernel(k).mem_limit // 2 for s, k in sessions.items()}
            util = Utilization(prom, use_recorded=False, expressions=LiveStatExpressions())
            got = await util.sessions(slots, RESOURCES, at=at)
            per_kernel = await util.kernels(kernel_ids, ["cpu_util", "cuda_util"], at=at)
    for session, kernel_id in sessions.items():
        payload = payloads[kernel_id]
        assert isinstance(payload, dict)
        _close(
            got[session], idle_checker_utilization([payload], RESOURCES, {"mem": slots[session]})
        )
    gpu = [k for k in kernel_ids if fleet.kernel(k).gpus]
    assert gpu and all("cuda_util" in per_kernel[k] for k in gpu)
    for kernel_id in kernel_ids:
        rate = fleet.expected_rate(kernel_id, "cpu_util")
        assert per_kernel[kernel_id]["cpu_util"] == pytest.approx(rate / 10)  # of 1000 msec/s
        want = Decimal(payloads[kernel_id]["cpu_util"]["pct"])  # type: ignore[index]
        assert per_kernel[kernel_id]["cpu_util"] == pytest.approx(float(want), abs=0.01)


@pytest.mark.slow
async def test_recorded_and_raw_paths_agree_on_a_scraped_fleet_with_rules(
    tmp_path: Path, start_prometheus: Callable[..., lab.PrometheusProcess]
) -> None:
    """The pct from the generated rules' current and capacity, joined to sessions, equals
    the raw computation."""
    rule_files = write_rules(tmp_path / "rules", RuleProfile.parse(interval="1s", window="4s"))
    config = FleetConfig(
        agents=2,
        kernels_per_agent=4,
        churn=None,
        exposition_timestamps=True,
        seed=3,
        measure_interval=1,  # measured as often as scraped: the 4s window holds 4 measurements
    )
    pct = (  # the recorded cpu_util rate, positive once two measurements were scraped
        'kernel_metric:backendai_container_utilization:live_stat{container_metric_name="cpu_util"'
        ',stat="current"}'
    )
    async with SimulatedFleet(config) as fleet:
        prom = start_prometheus(
            scrape_targets=fleet.targets,
            scrape_interval="1s",
            rule_files=[p for p in rule_files if "test" not in p.name],
        )
        kernel_ids = fleet.kernel_ids()
        async with PrometheusClient(prom.url) as client:
            at = 0.0
            for _ in range(900):  # generous: the machine is shared
                res = await client.query(f"count(min_over_time({pct}[3s]) > 0)")
                if res.vector and res.vector[0].value[1] == str(len(kernel_ids)):
                    stamp = await client.query(f"max(timestamp({pct}))")
                    at = float(stamp.vector[0].value[1])
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the recorded cpu_util did not settle within 90 s")
            slots = {fleet.kernel(k).session_id: fleet.kernel(k).mem_limit for k in kernel_ids}
            recorded = await Utilization(client).sessions(slots, RESOURCES, at=at)
            expressions = LiveStatExpressions(interval="1s", window="4s")
            raw_util = Utilization(client, use_recorded=False, expressions=expressions)
            raw = await raw_util.sessions(slots, RESOURCES, at=at)
            stats = LiveStats(client, profile=RuleProfile(interval=1.0, window=4.0))
            payloads = await stats.load_kernels(kernel_ids, at=at)
    for kernel_id, payload in zip(kernel_ids, payloads, strict=True):
        session = fleet.kernel(kernel_id).session_id
        assert isinstance(payload, dict)
        want = idle_checker_utilization([payload], RESOURCES, {"mem": slots[session]})
        _close(recorded[session], want)
        _close(raw[session], recorded[session])
        got = recorded[session]
        assert got is not None and got["cpu_util"] == pytest.approx(
            fleet.expected_rate(kernel_id, "cpu_util") / 10, rel=1e-3
        )
