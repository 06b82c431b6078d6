"""promtool unit tests of the recording rules, from one fixed scenario.

:func:`render_rule_tests` generates ``promtool test rules`` files from :data:`SCENARIO`
(steady load, a counter reset, a one-sample kernel, a duplicate frozen series from a second
instance, a metric without capacity, accelerator families matched by pattern, a stale series)
with hand-computed expected values. Each file checks every recorded stat and the raw
expressions (the planner's fallback) against the same values, so both paths must agree; the
real-server tests reuse the scenario.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from promstat.catalog import DEFAULT_CATALOG
from promstat.conventions import SeriesNames
from promstat.errors import RuleError
from promstat.expressions import RateSource
from promstat.generate._common import (
    AGENT_RULES_FILE,
    DEFAULT_INTERVAL,
    KERNEL_RULES_FILE,
    dump_yaml,
    render_generated,
    rules_command,
)
from promstat.profile import RuleProfile
from promstat.promql import set_matcher

__all__ = [
    "SCENARIO",
    "Scenario",
    "ScenarioSeries",
    "render_rule_tests",
    "rule_tests_apply",
]

_DEFAULT_NAMES: Final = SeriesNames()

_N: Final = 41  # samples at 0s, 15s, ..., 600s
_EVAL: Final = 600.0  # seconds after the first sample
_STEP: Final = 15.0

Value = float | None | Literal["stale"]


def _ramp(start: float, step: float, n: int = _N) -> tuple[Value, ...]:
    return tuple(start + step * i for i in range(n))


def _const(value: float, n: int = _N) -> tuple[Value, ...]:
    return (value,) * n


def _stairs(start: float, step: float, repeat: int, n: int = _N) -> tuple[Value, ...]:
    """A counter measured every ``repeat`` samples: each value stored ``repeat`` times."""
    return tuple(start + step * (i // repeat) for i in range(n))


def _missing(n: int) -> tuple[Value, ...]:
    return (None,) * n


@dataclass(frozen=True, slots=True)
class ScenarioSeries:
    """One raw input series of the scenario, one value per 15 s (``None`` = no sample).

    ``entity`` is ``(kernel_id,)`` for container series and ``(agent_id, device_id)`` for
    device series.
    """

    level: Literal["kernel", "device"]
    entity: tuple[str, ...]
    metric: str
    value_type: Literal["current", "capacity", "rate"]
    values: tuple[Value, ...]
    instance: str = "agent-a:6003"

    def labels(self, names: SeriesNames) -> dict[str, str]:
        """The series' labels (without ``__name__``)."""
        if self.level == "kernel":
            out = {
                names.kernel_label: self.entity[0],
                names.container_metric_label: self.metric,
                names.agent_label: "ag1",
            }
        else:
            out = {
                names.agent_label: self.entity[0],
                names.device_label: self.entity[1],
                names.device_metric_label: self.metric,
            }
        out[names.value_type_label] = {
            "current": names.current_value,
            "capacity": names.capacity_value,
            "rate": names.rate_value,
        }[self.value_type]
        out["instance"] = self.instance
        out["job"] = "backendai-agent"
        return out

    def metric_name(self, names: SeriesNames) -> str:
        """The raw metric name."""
        return names.container_metric if self.level == "kernel" else names.device_metric

    @property
    def has_stale(self) -> bool:
        """Whether the series holds a staleness marker (not expressible in OpenMetrics)."""
        return "stale" in self.values


Expected = Mapping[tuple[str, ...], Mapping[str, float]]


@dataclass(frozen=True, slots=True)
class Scenario:
    """Input series and hand-computed expected values at ``eval_time`` (seconds from start).

    ``kernel``: ``(kernel_id, metric) -> {stat: value}``; ``device``: ``(agent_id,
    device_id, metric) -> {stat: value}``; ``node``: ``(agent_id, metric) -> {stat: value}``.
    A stat not listed has no series.
    ``stale_only`` lists kernels whose values exist only in Prometheus' staleness-aware
    evaluation (promtool), not in backfilled/imported data.
    """

    series: tuple[ScenarioSeries, ...]
    kernel: Expected
    device: Expected
    node: Expected
    stale_only: tuple[str, ...]
    eval_time: float = _EVAL
    step: float = _STEP

    def samples(
        self, start: float, *, names: SeriesNames = _DEFAULT_NAMES, include_stale: bool = False
    ) -> list[tuple[str, dict[str, str], float, float]]:
        """``(metric, labels, unix seconds, value)`` samples starting at ``start``.

        Series with a staleness marker are left out unless ``include_stale`` (then the marker
        and the gaps are simply dropped).
        """
        out: list[tuple[str, dict[str, str], float, float]] = []
        for s in self.series:
            if s.has_stale and not include_stale:
                continue
            labels = s.labels(names)
            for i, v in enumerate(s.values):
                if isinstance(v, float | int):
                    out.append((s.metric_name(names), labels, start + i * self.step, float(v)))
        return out

    def without_stale(self, table: Expected) -> dict[tuple[str, ...], Mapping[str, float]]:
        """``table`` without the stale-only kernels."""
        return {k: v for k, v in table.items() if k[0] not in self.stale_only}


# Shape of k1/mem and k5/npu_util: the sample on the window's left edge (t=300s) equals the
# average of the 20 samples after it, so avg_over_time is the same whether the window includes
# its left edge (Prometheus 2.x: 21 samples) or not (VictoriaMetrics, Prometheus 3: 20).
_MEM_K1 = (*_const(110.0, 21), *_const(100.0, 19), 300.0)  # avg (110+19*100+300)/21 = 110
_NPU_K5 = (*_const(150.0, 20), 165.0, *_const(150.0, 9), 450.0, *_const(150.0, 10))  # avg 165

SCENARIO: Final = Scenario(
    series=(
        # k1: steady load. cpu_util +15000 msec per 15 s = 1000 msec/s; net_rx 2000 B/s with no
        # capacity; io_read cumulative with stats.rate 100 B/s; cpu_used cumulative.
        ScenarioSeries("kernel", ("k1",), "cpu_util", "current", _ramp(0, 15000)),
        ScenarioSeries("kernel", ("k1",), "cpu_util", "capacity", _const(1000)),
        ScenarioSeries("kernel", ("k1",), "mem", "current", _MEM_K1),
        ScenarioSeries("kernel", ("k1",), "mem", "capacity", _const(1000)),
        ScenarioSeries("kernel", ("k1",), "net_rx", "current", _ramp(0, 30000)),
        ScenarioSeries("kernel", ("k1",), "io_read", "current", _ramp(0, 1500)),
        ScenarioSeries("kernel", ("k1",), "cpu_used", "current", _ramp(0, 15000)),
        ScenarioSeries("kernel", ("k1",), "io_scratch_size", "current", _const(0)),
        # k2: counter reset between the last two samples (1170000 -> 30000): the rate is 0, as
        # legacy's diff (BA-3926), not Prometheus' reset-corrected 30000 / 15 s.
        ScenarioSeries("kernel", ("k2",), "net_rx", "current", (*_ramp(0, 30000, 40), 30000)),
        # k7: an agent that exports its own rate (promstat's exporter): taken as is, even
        # where the raw counter's window says otherwise (stored twice per measurement).
        ScenarioSeries("kernel", ("k7",), "cpu_util", "current", _stairs(0, 30000, 2)),
        ScenarioSeries("kernel", ("k7",), "cpu_util", "rate", _const(1000)),
        ScenarioSeries("kernel", ("k7",), "cpu_util", "capacity", _const(1000)),
        ScenarioSeries("kernel", ("k7",), "io_read", "current", _stairs(0, 3000, 2)),
        ScenarioSeries("kernel", ("k7",), "io_read", "rate", _const(100)),
        # k3: a kernel with a single sample: rate counters show 0, never the raw counter.
        ScenarioSeries("kernel", ("k3",), "cpu_util", "current", (*_missing(40), 5000)),
        ScenarioSeries("kernel", ("k3",), "cpu_util", "capacity", (*_missing(40), 1000)),
        ScenarioSeries("kernel", ("k3",), "mem", "current", (*_missing(40), 42)),
        # k4: the same kernel also exported by a second instance with frozen values: max, not
        # sum (sum would double the capacity and add the frozen memory).
        ScenarioSeries("kernel", ("k4",), "cpu_util", "current", _ramp(0, 15000)),
        ScenarioSeries("kernel", ("k4",), "cpu_util", "capacity", _const(1000)),
        ScenarioSeries("kernel", ("k4",), "mem", "current", _const(100)),
        ScenarioSeries("kernel", ("k4",), "mem", "capacity", _const(1000)),
        ScenarioSeries("kernel", ("k4",), "cpu_util", "current", _const(7000), "agent-b:6003"),
        ScenarioSeries("kernel", ("k4",), "cpu_util", "capacity", _const(1000), "agent-b:6003"),
        ScenarioSeries("kernel", ("k4",), "mem", "current", _const(50), "agent-b:6003"),
        ScenarioSeries("kernel", ("k4",), "mem", "capacity", _const(1000), "agent-b:6003"),
        # k5: accelerator families matched by catalog patterns (.+_util, .+_mem).
        ScenarioSeries("kernel", ("k5",), "npu_util", "current", _NPU_K5),
        ScenarioSeries("kernel", ("k5",), "npu_util", "capacity", _const(200)),
        ScenarioSeries("kernel", ("k5",), "foo_mem", "current", _ramp(0, 10)),
        ScenarioSeries("kernel", ("k5",), "foo_mem", "capacity", _const(8000)),
        # k6: went stale at 555 s: no current (no rate from a dead series), capacity gone too;
        # max/avg still cover the window's earlier samples.
        ScenarioSeries(
            "kernel", ("k6",), "cpu_util", "current", (*_ramp(0, 15000, 37), "stale", *_missing(3))
        ),
        ScenarioSeries(
            "kernel", ("k6",), "cpu_util", "capacity", (*_const(1000, 37), "stale", *_missing(3))
        ),
        # ag1: two cores (500 and 1000 msec/s) with interval capacities 15000 and 15010 msec:
        # device current = irate * capacity / 1000 (msec per interval); node capacity = max.
        ScenarioSeries("device", ("ag1", "0"), "cpu_util", "current", _ramp(0, 7500)),
        ScenarioSeries("device", ("ag1", "0"), "cpu_util", "capacity", _const(15000)),
        ScenarioSeries("device", ("ag1", "1"), "cpu_util", "current", _ramp(0, 15000)),
        ScenarioSeries("device", ("ag1", "1"), "cpu_util", "capacity", _const(15010)),
        ScenarioSeries("device", ("ag1", "root"), "mem", "current", _const(4096)),
        ScenarioSeries("device", ("ag1", "root"), "mem", "capacity", _const(8192)),
        ScenarioSeries("device", ("ag1", "node"), "net_rx", "current", _ramp(0, 30000)),
        ScenarioSeries("device", ("ag1", "0"), "npu_util", "current", _const(50)),
        ScenarioSeries("device", ("ag1", "0"), "npu_util", "capacity", _const(100)),
        ScenarioSeries("device", ("ag1", "1"), "npu_util", "current", _const(70)),
        ScenarioSeries("device", ("ag1", "1"), "npu_util", "capacity", _const(100)),
        # ag1 node aggregation per kind: power adds up over devices, temperature is the
        # hottest device (a sum of temperatures means nothing), capacity the per-device limit.
        ScenarioSeries("device", ("ag1", "0"), "npu_power", "current", _const(100)),
        ScenarioSeries("device", ("ag1", "0"), "npu_power", "capacity", _const(300)),
        ScenarioSeries("device", ("ag1", "1"), "npu_power", "current", _const(150)),
        ScenarioSeries("device", ("ag1", "1"), "npu_power", "capacity", _const(300)),
        ScenarioSeries("device", ("ag1", "0"), "npu_temperature", "current", _const(60)),
        ScenarioSeries("device", ("ag1", "0"), "npu_temperature", "capacity", _const(120)),
        ScenarioSeries("device", ("ag1", "1"), "npu_temperature", "current", _const(75)),
        ScenarioSeries("device", ("ag1", "1"), "npu_temperature", "capacity", _const(120)),
        # ag2: a core with one sample (0), a core without capacity (plain rate), and a frozen
        # duplicate memory series from a second instance.
        ScenarioSeries("device", ("ag2", "0"), "cpu_util", "current", (*_missing(40), 3000)),
        ScenarioSeries("device", ("ag2", "0"), "cpu_util", "capacity", (*_missing(40), 15000)),
        ScenarioSeries("device", ("ag2", "1"), "cpu_util", "current", _ramp(0, 15000)),
        ScenarioSeries("device", ("ag2", "root"), "mem", "current", _const(2048)),
        ScenarioSeries("device", ("ag2", "root"), "mem", "capacity", _const(8192)),
        ScenarioSeries("device", ("ag2", "root"), "mem", "current", _const(1024), "agent-b:6003"),
        ScenarioSeries("device", ("ag2", "root"), "mem", "capacity", _const(8192), "agent-b:6003"),
    ),
    kernel={
        ("k1", "cpu_util"): {"current": 1000, "capacity": 1000, "max": 1000, "avg": 1000},
        ("k1", "mem"): {"current": 300, "capacity": 1000, "max": 300},
        ("k1", "net_rx"): {"current": 2000},
        ("k1", "io_read"): {"current": 60000, "rate": 100},
        ("k1", "cpu_used"): {"current": 600000},
        ("k1", "io_scratch_size"): {"current": 0, "max": 0},
        ("k2", "net_rx"): {"current": 0},
        ("k7", "cpu_util"): {"current": 1000, "capacity": 1000, "max": 1000, "avg": 1000},
        ("k7", "io_read"): {"current": 60000, "rate": 100},
        ("k3", "cpu_util"): {"current": 0, "capacity": 1000, "max": 0, "avg": 0},
        ("k3", "mem"): {"current": 42, "max": 42},
        ("k4", "cpu_util"): {"current": 1000, "capacity": 1000, "max": 1000, "avg": 1000},
        ("k4", "mem"): {"current": 100, "capacity": 1000, "max": 100},
        ("k5", "npu_util"): {"current": 150, "capacity": 200, "max": 450, "avg": 165},
        ("k5", "foo_mem"): {"current": 400, "capacity": 8000, "max": 400},
        ("k6", "cpu_util"): {"max": 1000, "avg": 1000},
    },
    device={
        ("ag1", "0", "cpu_util"): {"current": 7500, "capacity": 15000},
        ("ag1", "1", "cpu_util"): {"current": 15010, "capacity": 15010},
        ("ag1", "root", "mem"): {"current": 4096, "capacity": 8192, "max": 4096},
        ("ag1", "node", "net_rx"): {"current": 2000},
        ("ag1", "0", "npu_util"): {"current": 50, "capacity": 100, "max": 50, "avg": 50},
        ("ag1", "1", "npu_util"): {"current": 70, "capacity": 100, "max": 70, "avg": 70},
        ("ag1", "0", "npu_power"): {"current": 100, "capacity": 300, "max": 100},
        ("ag1", "1", "npu_power"): {"current": 150, "capacity": 300, "max": 150},
        ("ag1", "0", "npu_temperature"): {"current": 60, "capacity": 120},
        ("ag1", "1", "npu_temperature"): {"current": 75, "capacity": 120},
        ("ag2", "0", "cpu_util"): {"current": 0, "capacity": 15000},
        ("ag2", "1", "cpu_util"): {"current": 1000},
        ("ag2", "root", "mem"): {"current": 2048, "capacity": 8192, "max": 2048},
    },
    node={
        ("ag1", "cpu_util"): {"current": 22510, "capacity": 15010},
        ("ag1", "mem"): {"current": 4096, "capacity": 8192, "max": 4096},
        ("ag1", "net_rx"): {"current": 2000},
        ("ag1", "npu_util"): {"current": 120, "capacity": 200, "max": 120, "avg": 120},
        ("ag1", "npu_power"): {"current": 250, "capacity": 600, "max": 250},
        ("ag1", "npu_temperature"): {"current": 75, "capacity": 120},
        ("ag2", "cpu_util"): {"current": 1000, "capacity": 15000},
        ("ag2", "mem"): {"current": 2048, "capacity": 8192, "max": 2048},
    },
    stale_only=("k6",),
)


def rule_tests_apply(profile: RuleProfile | None = None) -> bool:
    """Whether the hand-computed scenario holds for ``profile``: the default durations,
    ``rates="both"`` and the built-in specs of the scenario's metrics.

    Custom names are fine (the tests use them), and so is any ``kernel_shards``; a custom
    catalog is fine as long as every scenario metric still resolves to its built-in spec. The
    scenario's agents mostly export raw counters only, so it holds for ``rates="both"`` only.
    """
    profile = profile if profile is not None else RuleProfile()
    default = RuleProfile()
    if profile.rates is not RateSource.BOTH or any(
        getattr(profile, f) != getattr(default, f)
        for f in ("interval", "window", "lookback", "collect_interval")
    ):
        return False
    metrics = {s.metric for s in SCENARIO.series}
    return all(profile.catalog.lookup(m) == DEFAULT_CATALOG.lookup(m) for m in metrics)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _series_values(values: Sequence[Value]) -> str:
    """promtool ``values`` text, runs compressed (``axn``, ``a+bxn``, ``_xn``)."""
    out: list[str] = []
    i = 0
    while i < len(values):
        v = values[i]
        if v is None or v == "stale":
            j = i
            while j < len(values) and values[j] == v:
                j += 1
            token = "_" if v is None else "stale"
            out.append(f"_x{j - i}" if v is None and j - i > 1 else token)
            if v == "stale":
                j = i + 1
            i = j
            continue
        j = i + 1
        if j < len(values) and isinstance(values[j], float | int):
            nxt = values[j]
            assert isinstance(nxt, float | int)
            step = nxt - v
            while (
                j + 1 < len(values)
                and isinstance(values[j + 1], float | int)
                and values[j + 1] - values[j] == step  # type: ignore[operator]
            ):
                j += 1
            if j - i >= 2:
                sign = "+" if step >= 0 else "-"
                body = (
                    f"{_fmt(v)}x{j - i}"
                    if step == 0
                    else f"{_fmt(v)}{sign}{_fmt(abs(step))}x{j - i}"
                )
                out.append(body)
                i = j + 1
                continue
        out.append(_fmt(v))
        i += 1
    return " ".join(out)


def _series_text(metric: str, labels: Mapping[str, str]) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{metric}{{{inner}}}"


def _samples(
    table: Expected, label_names: Sequence[str], stat: str, *, metric: str, stat_label: str | None
) -> list[dict[str, Any]]:
    out = []
    for key, stats in sorted(table.items()):
        if stat not in stats:
            continue
        labels = dict(zip(label_names, key, strict=True))
        if stat_label is not None:
            labels[stat_label] = stat
        out.append(
            {
                "labels": _series_text(metric, labels) if metric else _series_text("", labels),
                "value": stats[stat],
            }
        )
    return out


def _expr_test(expr: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"expr": expr, "eval_time": f"{int(SCENARIO.eval_time)}s", "exp_samples": samples}


def render_rule_tests(profile: RuleProfile | None = None) -> dict[str, str]:
    """Render ``promtool test rules`` files for the rules of the default durations.

    Each file feeds :data:`SCENARIO` and checks, at 600 s, every recorded stat and the raw
    expressions (:class:`~promstat.expressions.LiveStatExpressions`, the planner's fallback)
    against the same hand-computed values: both paths must agree.

    Returns:
        ``{"tests/<name>.test.yml": YAML text}`` (paths relative to the rules directory).

    Raises:
        RuleError: the scenario does not hold for ``profile`` (see :func:`rule_tests_apply`).
    """
    profile = profile if profile is not None else RuleProfile()
    if not rule_tests_apply(profile):
        raise RuleError(
            "the rule-test scenario needs the default durations, rates='both' and the "
            "built-in specs of its metrics"
        )
    ex = profile.expressions
    n = profile.names
    k_labels = (n.kernel_label, n.container_metric_label)
    d_labels = (n.agent_label, n.device_label, n.device_metric_label)
    a_labels = (n.agent_label, n.device_metric_label)
    stats = ("current", "capacity", "rate", "max", "avg")

    def inputs(level: str) -> list[dict[str, str]]:
        return [
            {
                "series": _series_text(s.metric_name(n), s.labels(n)),
                "values": _series_values(s.values),
            }
            for s in SCENARIO.series
            if s.level == level
        ]

    def recorded(
        family: str, table: Mapping[Any, Any], labels: tuple[str, ...]
    ) -> list[dict[str, Any]]:
        # one test per stat: the recorded family, selected by its `stat` label
        return [
            _expr_test(
                f'{family}{{{n.stat_label}="{s}"}}',
                _samples(table, labels, s, metric=family, stat_label=n.stat_label),
            )
            for s in stats
        ]

    kernels = sorted({k[0] for k in SCENARIO.kernel})
    kernel_tests = recorded(n.kernel_live_stat, SCENARIO.kernel, k_labels)
    matchers = set_matcher(n.kernel_label, kernels)
    for s in stats:
        raw = ex.kernel(s, matchers=matchers)
        if raw is not None:
            kernel_tests.append(
                _expr_test(raw, _samples(SCENARIO.kernel, k_labels, s, metric="", stat_label=None))
            )

    agents = sorted({k[0] for k in SCENARIO.node})
    agent_tests = recorded(n.device_live_stat, SCENARIO.device, d_labels) + recorded(
        n.agent_live_stat, SCENARIO.node, a_labels
    )
    matchers = set_matcher(n.agent_label, agents)
    for s in stats:
        raw = ex.device(s, matchers=matchers)
        if raw is not None:
            agent_tests.append(
                _expr_test(raw, _samples(SCENARIO.device, d_labels, s, metric="", stat_label=None))
            )
        raw = ex.node_raw(s, matchers=matchers)
        if raw is not None:
            agent_tests.append(
                _expr_test(raw, _samples(SCENARIO.node, a_labels, s, metric="", stat_label=None))
            )

    def doc(rule_file: str, tests: list[dict[str, Any]], level: str) -> dict[str, Any]:
        return {
            "rule_files": [f"../{rule_file}"],
            "evaluation_interval": DEFAULT_INTERVAL,
            "tests": [
                {
                    "interval": DEFAULT_INTERVAL,
                    "input_series": inputs(level),
                    "promql_expr_test": tests,
                }
            ],
        }

    # The header names the defaults: the expected values hold for them only.
    command = rules_command(RuleProfile())
    return {
        "tests/promstat-kernel.test.yml": render_generated(
            "rule_tests.yml.j2",
            command=command,
            body=dump_yaml(doc(KERNEL_RULES_FILE, kernel_tests, "kernel")),
        ),
        "tests/promstat-agent.test.yml": render_generated(
            "rule_tests.yml.j2",
            command=command,
            body=dump_yaml(doc(AGENT_RULES_FILE, agent_tests, "device")),
        ),
    }
