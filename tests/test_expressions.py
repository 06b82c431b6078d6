"""Tests for promstat.expressions: syntax, exact text, and values on a real Prometheus."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import promql_parser
import pytest

from promstat.catalog import DEFAULT_CATALOG, Catalog, Kind, MetricSpec
from promstat.conventions import STATS, SeriesNames
from promstat.errors import ConfigError, QueryBuildError
from promstat.expressions import KERNEL_STATS, LiveStatExpressions
from promstat.generate.rule_tests import SCENARIO
from promstat.promql import set_matcher
from promstat.testing import lab
from promstat.testing.fake import openmetrics_text

K = "kernel_id, container_metric_name"
M = "backendai_container_utilization"
RC = 'container_metric_name=~"cpu_util|net_rx|net_tx"'


def _rate_of(names: str) -> str:
    """The rate construction: the agent's rate series, else rate() unless just reset."""
    cur = f'{M}{{value_type="current",{names}}}'
    return (
        f'(max by ({K}) ({M}{{value_type="rate",{names}}}) or '
        f"max by ({K}) (rate({cur}[135s]) unless idelta({cur}[135s]) < 0))"
    )


CURRENT = (
    f'max by ({K}) ({M}{{value_type="current",container_metric_name!~"cpu_util|net_rx|net_tx"}})'
    f" or ({_rate_of(RC)}"
    f' and on ({K}) max by ({K}) ({M}{{value_type="current",{RC}}}))'
    f' or max by ({K}) ({M}{{value_type="current",{RC}}}) * 0'
)
CAPACITY = f'max by ({K}) ({M}{{value_type="capacity"}})'
IO = 'container_metric_name=~"io_read|io_write"'
RATE = (
    f"({_rate_of(IO)}"
    f' and on ({K}) max by ({K}) ({M}{{value_type="current",{IO}}}))'
    f' or max by ({K}) ({M}{{value_type="current",{IO}}}) * 0'
)
CPU = 'container_metric_name="cpu_util"'
CPU_RATE = (
    f"({_rate_of(CPU)}"
    f' and on ({K}) max by ({K}) ({M}{{value_type="current",{CPU}}}))'
    f' or max by ({K}) ({M}{{value_type="current",{CPU}}}) * 0'
)
MAX = (
    f'max_over_time((max by ({K}) ({M}{{value_type="current",'
    'container_metric_name=~"io_scratch_size|mem|tt_n300_power|.+_mem|.+_util|.+_power",'
    f'container_metric_name!="cpu_util"}}) or {CPU_RATE})[5m:15s])'
)
AVG = (
    f'avg_over_time((max by ({K}) ({M}{{value_type="current",'
    'container_metric_name=~".+_util",container_metric_name!="cpu_util"}) '
    f"or {CPU_RATE})[5m:15s])"
)
REC = "kernel_metric:backendai_container_utilization:live_stat"


def _all_expressions(ex: LiveStatExpressions, matchers: str = "") -> list[str]:
    out: list[str | None] = []
    for stat in KERNEL_STATS:
        out += [ex.kernel(stat, matchers=matchers), ex.device(stat, matchers=matchers)]
        out += [ex.node_raw(stat, matchers=matchers), ex.node(stat)]
    for stat in ("max", "avg"):
        out += [ex.kernel_recorded_window(stat), ex.device_recorded_window(stat)]
    return [e for e in out if e is not None]


def test_stats_match_conventions() -> None:
    """The stats the expressions know are exactly the conventions' ``stat`` values."""
    assert set(KERNEL_STATS) == set(STATS)


@pytest.mark.parametrize(
    "catalog",
    [
        DEFAULT_CATALOG,
        Catalog.from_yaml(
            "metrics:\n"
            "  - name: tpu_util\n    kind: gauge\n    stats: [avg, max]\n"
            '  - pattern: "npu\\\\d*_(mem|temp)"\n    stats: [max]\n    node_capacity: max\n'
            "  - name: gpu_energy\n    kind: accumulating_counter\n    stats: [rate]\n"
        ),
    ],
    ids=["default", "custom"],
)
@pytest.mark.parametrize("matchers", ["", 'kernel_id=~"a|b",agent_id="x\\"y"'])
def test_every_expression_parses(catalog: Catalog, matchers: str) -> None:
    """Every expression of every level and stat parses with promql-parser."""
    ex = LiveStatExpressions(catalog=catalog)
    exprs = _all_expressions(ex, matchers)
    assert len(exprs) >= 20
    for expr in exprs:
        promql_parser.parse(expr)


@pytest.mark.parametrize(
    ("stat", "expected"),
    [("current", CURRENT), ("capacity", CAPACITY), ("rate", RATE), ("max", MAX), ("avg", AVG)],
)
def test_kernel_expression_text(stat: str, expected: str) -> None:
    """The raw kernel expressions are exactly the documented PromQL."""
    assert LiveStatExpressions().kernel(stat) == expected


def test_kernel_recorded_window_text() -> None:
    """The rules' window stats read the recorded current, restricted to publishing metrics."""
    ex = LiveStatExpressions()
    assert ex.kernel_recorded_window("max") == (
        f'max by ({K}) (max_over_time({REC}{{stat="current",'
        'container_metric_name=~"cpu_util|io_scratch_size|mem|tt_n300_power|.+_mem|.+_util|'
        '.+_power"}[5m]))'
    )
    assert ex.kernel_recorded_window("avg") == (
        f'max by ({K}) (avg_over_time({REC}{{stat="current",'
        'container_metric_name=~"cpu_util|.+_util"}[5m]))'
    )


def test_node_expression_text() -> None:
    """Node stats sum recorded devices, temperatures take the hottest device; cpu_util and
    temperature capacities are a max, not a sum."""
    ex = LiveStatExpressions()
    dev = "agent_device_metric:backendai_device_utilization:live_stat"
    by = "agent_id, device_metric_name"
    temp = 'device_metric_name=~".+_temperature"'
    assert ex.node("current") == (
        f'max by ({by}) ({dev}{{stat="current",{temp}}}) or sum by ({by}) ({dev}{{stat="current"}})'
    )
    assert ex.node("capacity") == (
        f'max by ({by}) ({dev}{{stat="capacity",device_metric_name=~"cpu_util|.+_temperature"}})'
        f' or sum by ({by}) ({dev}{{stat="capacity"}})'
    )


def test_device_cpu_util_is_usage_per_interval() -> None:
    """Device cpu_util current is rate * capacity / 1000, falling back to the plain rate."""
    cur = LiveStatExpressions().device("current")
    assert cur is not None
    assert "/ 1000 or (max by (agent_id, device_id, device_metric_name) (backendai_device" in cur
    assert "* on (agent_id, device_id, device_metric_name) max by" in cur


def test_matchers_go_into_every_selector() -> None:
    """The caller's matchers appear in every raw selector, and only there."""
    ex = LiveStatExpressions()
    m = set_matcher("kernel_id", ["b", "a"])
    for stat in KERNEL_STATS:
        expr = ex.kernel(stat, matchers=m)
        assert expr is not None
        assert expr.count(f"{M}{{") == expr.count(f"{M}{{{m},") > 0


def test_stats_nobody_publishes_are_none() -> None:
    """With a catalog that publishes no rate/max/avg, those expressions are None."""
    bare = Catalog(exact={"mem": MetricSpec()})
    ex = LiveStatExpressions(catalog=bare)
    assert ex.kernel("rate") is None
    assert ex.kernel("max") is None
    assert ex.node("avg") is None
    assert ex.node_raw("rate") is None
    assert ex.kernel("current") == f'max by ({K}) ({M}{{value_type="current"}})'
    with pytest.raises(QueryBuildError, match="publishes"):
        ex.kernel_recorded_window("max")


def test_shadowed_exact_names_are_excluded_from_pattern_stats() -> None:
    """An exact entry without stats.max is excluded even though a max pattern matches it."""
    catalog = DEFAULT_CATALOG.extended({"quiet_util": MetricSpec(unit_hint="percent")})
    ex = LiveStatExpressions(catalog=catalog)
    assert 'container_metric_name!="quiet_util"' in ex.kernel_recorded_window("max")
    raw = ex.kernel("max")
    assert raw is not None
    assert 'container_metric_name!~"cpu_util|quiet_util"' in raw


def test_pattern_with_alternation_is_grouped() -> None:
    """A catalog pattern holding '|' is wrapped in (?:...) so it cannot swallow neighbours."""
    catalog = DEFAULT_CATALOG.extended(patterns=[("a_(x|y)", MetricSpec(stats=("max",)))])
    assert "|(?:a_(x|y))|" in LiveStatExpressions(catalog=catalog).kernel_recorded_window("max")


def test_custom_names_are_used() -> None:
    """Metric and label names come from SeriesNames."""
    names = SeriesNames(container_metric="c_util", kernel_label="kid", value_type_label="vt")
    expr = LiveStatExpressions(names=names).kernel("capacity")
    assert expr == 'max by (kid, container_metric_name) (c_util{vt="capacity"})'


def test_rate_counter_catalog_drives_regex() -> None:
    """A new exact rate counter joins the irate part of current."""
    catalog = DEFAULT_CATALOG.extended({"ib_rx": MetricSpec(kind=Kind.RATE_COUNTER)})
    cur = LiveStatExpressions(catalog=catalog).kernel("current")
    assert cur is not None
    assert 'container_metric_name!~"cpu_util|ib_rx|net_rx|net_tx"' in cur


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": "30s"}, "4 x interval"),
        ({"interval": "1m", "window": "3m"}, "4 x interval"),
        ({"lookback": "20s"}, "2 x interval"),
        ({"window": "5 minutes"}, "invalid duration"),
    ],
)
def test_bad_durations_rejected(kwargs: dict[str, str], message: str) -> None:
    """Windows shorter than 4 intervals, short lookbacks and bad durations are errors."""
    durations = {"lookback": "5m", "window": "5m", "interval": "15s", **kwargs}
    with pytest.raises(ConfigError, match=message):
        LiveStatExpressions(
            lookback=durations["lookback"],
            window=durations["window"],
            interval=durations["interval"],
        )


def test_unknown_stat_rejected() -> None:
    """An unknown stat is a QueryBuildError, not None."""
    with pytest.raises(QueryBuildError, match="unknown stat"):
        LiveStatExpressions().kernel("pct")


# --- real Prometheus ---------------------------------------------------------------------------

T0 = 1_700_000_100.0  # a multiple of 15 s, so subquery steps land on samples


def _values(
    result: list[dict[str, object]], labels: tuple[str, ...]
) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for row in result:
        metric = row["metric"]
        value = row["value"]
        assert isinstance(metric, dict) and isinstance(value, list)
        assert set(metric) == set(labels), metric  # exactly the level's labels
        out[tuple(metric[k] for k in labels)] = float(value[1])
    return out


def _expected(
    table: Mapping[tuple[str, ...], Mapping[str, float]], stat: str
) -> dict[tuple[str, ...], float]:
    return {k: float(v[stat]) for k, v in table.items() if stat in v}


@pytest.mark.slow
def test_raw_expressions_on_prometheus(
    start_prometheus: Callable[..., lab.PrometheusProcess],
) -> None:
    """Raw kernel/device/node expressions give the scenario's hand-computed values."""
    prom = start_prometheus(openmetrics=openmetrics_text(SCENARIO.samples(T0)))
    ex = LiveStatExpressions()
    at = T0 + SCENARIO.eval_time
    kernels = SCENARIO.without_stale(SCENARIO.kernel)
    km = set_matcher("kernel_id", sorted({k[0] for k in kernels}))
    am = set_matcher("agent_id", sorted({k[0] for k in SCENARIO.node}))
    levels: list[
        tuple[
            Callable[..., str | None],
            str,
            Mapping[tuple[str, ...], Mapping[str, float]],
            tuple[str, ...],
        ]
    ] = [
        (ex.kernel, km, kernels, ("kernel_id", "container_metric_name")),
        (ex.device, am, SCENARIO.device, ("agent_id", "device_id", "device_metric_name")),
        (ex.node_raw, am, SCENARIO.node, ("agent_id", "device_metric_name")),
    ]
    for build, matchers, table, labels in levels:
        for stat in KERNEL_STATS:
            expr = build(stat, matchers=matchers)
            expected = _expected(table, stat)
            if expr is None:
                assert not expected
                continue
            got = _values(prom.query(expr, at=at), labels)
            assert got.keys() == expected.keys(), (stat, expr)
            for key, value in expected.items():
                assert math.isclose(got[key], value, rel_tol=1e-12), (stat, key, got[key])
