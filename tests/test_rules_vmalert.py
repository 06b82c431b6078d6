"""The generated rules give the same numbers under vmalert + VictoriaMetrics (MetricsQL).

vmalert replays the rules over the scenario's imported data (``-replay.*``: range queries with
step = group interval, results remote-written back, rules of a group one after another), and
the recorded series at the scenario's evaluation time must equal the values that Prometheus'
own rule engine produces for the same input (``rules/tests/*.test.yml``, run by promtool in
``test_rules_promtool.py``). The raw expressions (the planner's fallback) are checked on
VictoriaMetrics too.
"""

from __future__ import annotations

import datetime as dt
import math
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from promstat.conventions import SeriesNames
from promstat.expressions import KERNEL_STATS, LiveStatExpressions
from promstat.generate.rule_tests import SCENARIO
from promstat.promql import set_matcher
from promstat.testing import lab
from promstat.testing.fake import openmetrics_text

RULES_DIR = Path(__file__).resolve().parent.parent / "rules"
T0 = 1_700_000_100.0  # a multiple of 15 s: evaluation steps land on samples
NAMES = SeriesNames()
Table = Mapping[tuple[str, ...], Mapping[str, float]]


def _rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _replay(vm: lab.VictoriaMetricsProcess) -> None:
    argv = [
        lab.require_binary("vmalert"),
        f"-datasource.url={vm.url}",
        f"-remoteWrite.url={vm.url}",
        *(f"-rule={p}" for p in sorted(RULES_DIR.glob("*.rules.yml"))),
        f"-replay.timeFrom={_rfc3339(T0)}",
        f"-replay.timeTo={_rfc3339(T0 + SCENARIO.eval_time + 60)}",
        # The default step (5m) would evaluate the rules only every 5 minutes in replay mode.
        "-datasource.queryStep=15s",
        # Chained rules (pct, max/avg, node) read what the previous rule wrote.
        "-replay.rulesDelay=2s",
        "-remoteWrite.flushInterval=100ms",
        "-replay.disableProgressBar",
        "-httpListenAddr=127.0.0.1:0",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    vm.force_flush()


def _rows(
    vm: lab.VictoriaMetricsProcess, expr: str, labels: tuple[str, ...]
) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for row in vm.query(expr, at=T0 + SCENARIO.eval_time):
        metric = {k: v for k, v in row["metric"].items() if k != "__name__"}
        assert set(metric) == set(labels), metric
        out[tuple(metric[k] for k in labels)] = float(row["value"][1])
    return out


def _check(got: Mapping[tuple[str, ...], float], table: Table, stat: str, what: str) -> None:
    expected = {k: float(v[stat]) for k, v in table.items() if stat in v}
    assert got.keys() == expected.keys(), (what, stat)
    for key, value in expected.items():
        assert math.isclose(got[key], value, rel_tol=1e-9, abs_tol=1e-9), (what, stat, key)


@pytest.mark.slow
def test_rules_on_vmalert_match_prometheus(
    start_victoria_metrics: Callable[..., lab.VictoriaMetricsProcess],
) -> None:
    """Recorded kernel/device/node stats under vmalert equal Prometheus' values."""
    vm = start_victoria_metrics(
        openmetrics=openmetrics_text(SCENARIO.samples(T0)),
        extra_flags=["-search.latencyOffset=1s"],
    )
    _replay(vm)
    n = NAMES
    kernels = SCENARIO.without_stale(SCENARIO.kernel)
    k_labels = (n.kernel_label, n.container_metric_label)
    d_labels = (n.agent_label, n.device_label, n.device_metric_label)
    a_labels = (n.agent_label, n.device_metric_label)
    levels: list[tuple[str, Table, tuple[str, ...]]] = [
        (n.kernel_live_stat, kernels, k_labels),
        (n.device_live_stat, SCENARIO.device, d_labels),
        (n.agent_live_stat, SCENARIO.node, a_labels),
    ]
    for record, table, labels in levels:
        for stat in KERNEL_STATS:
            got = _rows(vm, f'{record}{{{n.stat_label}="{stat}"}}', (*labels, n.stat_label))
            _check({k[:-1]: v for k, v in got.items()}, table, stat, record)
    assert vm.query(n.kernel_pct, at=T0 + SCENARIO.eval_time) == [], "no pct rule any more"

    # The planner's raw fallback on VictoriaMetrics: same numbers.
    ex = LiveStatExpressions(names=n)
    km = set_matcher(n.kernel_label, sorted({k[0] for k in kernels}))
    am = set_matcher(n.agent_label, sorted({k[0] for k in SCENARIO.node}))
    raw: list[tuple[Callable[..., str | None], str, Table, tuple[str, ...]]] = [
        (ex.kernel, km, kernels, k_labels),
        (ex.device, am, SCENARIO.device, d_labels),
        (ex.node_raw, am, SCENARIO.node, a_labels),
    ]
    for build, matchers, table, labels in raw:
        for stat in KERNEL_STATS:
            expr = build(stat, matchers=matchers)
            assert expr is not None
            _check(_rows(vm, expr, labels), table, stat, expr)
