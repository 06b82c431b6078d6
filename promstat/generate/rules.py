"""Recording-rule generation: catalog + names + interval + window -> Prometheus rule files.

Rules are built as typed values (:class:`RecordingRule`, :class:`RuleGroup`,
:class:`RuleFile`) whose expressions come from :mod:`promstat.expressions` (the same PromQL
the planner's raw fallback uses), then emitted as YAML through pyyaml; a jinja2 template in
``promstat/templates/`` adds the "Code generated ... DO NOT EDIT." header. Two files::

    promstat-kernel.rules.yml   group promstat.kernel.live_stat
        kernel_metric:<container metric>:live_stat{kernel_id, container_metric_name, stat}
    promstat-agent.rules.yml    group promstat.agent.live_stat
        agent_device_metric:<device metric>:live_stat{agent_id, device_id, device_metric_name, stat}
        agent_metric:<device metric>:live_stat{agent_id, device_metric_name, stat}

Rules of one group run sequentially at the same timestamp, so each group lists the base stats
(``current``, ``capacity``, ``rate``) before what reads their recorded series (``max``/``avg``
over the recorded ``current``, node sums over the recorded device series). The group
``interval`` is the scrape interval; ``collect_interval`` (how often agents measure) sizes the
``rate()`` window used for agents without a rate series. No ``pct`` series is recorded:
pages compute ``pct`` from ``current`` and ``capacity`` and nothing read it. With
``kernel_shards=N`` the kernel group is split into N groups by the first hex digit of
``kernel_id`` (:func:`kernel_shard_matchers`), which Prometheus evaluates concurrently.

:func:`render_rule_tests` generates ``promtool test rules`` files from one fixed scenario
(:data:`SCENARIO`: steady load, a counter reset, a one-sample kernel, a duplicate frozen series
from a second instance, a metric without capacity, accelerator families matched by pattern, a
stale series) with hand-computed expected values; the real-server tests reuse the scenario.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Generic, Literal, Protocol, TypeVar

import jinja2
import yaml

from promstat.catalog import DEFAULT_CATALOG, Catalog
from promstat.conventions import SeriesNames
from promstat.errors import BinaryNotFoundError, ConfigError, QueryBuildError, RuleError
from promstat.expressions import LiveStatExpressions, RateSource
from promstat.promql import parse_duration, set_matcher

__all__ = [
    "AGENT_RULES_FILE",
    "DEFAULT_COLLECT_INTERVAL",
    "DEFAULT_INTERVAL",
    "DEFAULT_LOOKBACK",
    "DEFAULT_WINDOW",
    "KERNEL_RULES_FILE",
    "KERNEL_SHARDS",
    "SCENARIO",
    "RecordingRule",
    "RuleFile",
    "RuleGroup",
    "Scenario",
    "ScenarioSeries",
    "add_cli",
    "build_rule_files",
    "check_rules",
    "cmd_rules_check",
    "cmd_rules_render",
    "kernel_shard_matchers",
    "render_rule_tests",
    "render_rules",
    "rule_tests_apply",
    "write_rules",
]

DEFAULT_INTERVAL: Final = "15s"
DEFAULT_WINDOW: Final = "5m"
DEFAULT_LOOKBACK: Final = "5m"
#: Backend.AI agents measure every 30 s by default (``[agent.utilization-metric]``, 26.4.4).
DEFAULT_COLLECT_INTERVAL: Final = "30s"

_DEFAULT_NAMES: Final = SeriesNames()

KERNEL_RULES_FILE: Final = "promstat-kernel.rules.yml"
AGENT_RULES_FILE: Final = "promstat-agent.rules.yml"

_TEMPLATES = Path(__file__).parent / "templates"
_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_TEMPLATES),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,  # YAML, not HTML
)


# -------------------------------------------------------------------------------------------
# Typed rules


@dataclass(frozen=True, slots=True)
class RecordingRule:
    """One ``record:`` rule."""

    record: str
    expr: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the rule-file mapping (``record``, ``expr``, optional ``labels``)."""
        out: dict[str, Any] = {"record": self.record, "expr": self.expr}
        if self.labels:
            out["labels"] = dict(self.labels)
        return out


class _Rule(Protocol):
    """What a group holds: a rule that renders its own rule-file mapping."""

    def to_dict(self) -> dict[str, Any]:
        """Return the rule-file mapping."""
        ...


_R = TypeVar("_R", bound=_Rule)


@dataclass(frozen=True, slots=True)
class RuleGroup(Generic[_R]):
    """A rule group: its rules run sequentially, every ``interval``.

    Recording rules here, alerting rules in :mod:`promstat.generate.alerts` .
    """

    name: str
    interval: str
    rules: tuple[_R, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the rule-file mapping of the group."""
        return {
            "name": self.name,
            "interval": self.interval,
            "rules": [r.to_dict() for r in self.rules],
        }


@dataclass(frozen=True, slots=True)
class RuleFile:
    """One generated rule file."""

    filename: str
    groups: tuple[RuleGroup[RecordingRule], ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the rule-file document (``groups: [...]``)."""
        return {"groups": [g.to_dict() for g in self.groups]}


def _expressions(
    names: SeriesNames,
    catalog: Catalog,
    interval: str,
    window: str,
    lookback: str,
    collect_interval: str = DEFAULT_COLLECT_INTERVAL,
    rates: RateSource | str = RateSource.BOTH,
) -> LiveStatExpressions:
    # LiveStatExpressions validates the durations; say which operation the error belongs to.
    try:
        return LiveStatExpressions(
            names=names,
            catalog=catalog,
            lookback=lookback,
            window=window,
            interval=interval,
            collect_interval=collect_interval,
            rates=RateSource.parse(rates),
        )
    except ConfigError as exc:
        raise ConfigError(f"cannot generate rules: {exc}") from exc


_HEX: Final = "0123456789abcdef"
#: Shard counts the kernel group can be split into (each takes whole first hex digits).
KERNEL_SHARDS: Final = (1, 2, 4, 8, 16)


def kernel_shard_matchers(names: SeriesNames, shards: int) -> list[str]:
    """``kernel_id`` matchers splitting kernels into ``shards`` disjoint, covering groups.

    Kernel ids are random UUIDs, so their first hex digit is a stable, uniform hash: shard
    ``i`` takes ``16 / shards`` digits; the last one also takes every id that does not start
    with a lowercase hex digit (and the empty id), so no kernel is left out.

    Raises:
        ConfigError: ``shards`` is not one of :data:`KERNEL_SHARDS`.
    """
    if shards not in KERNEL_SHARDS:
        raise ConfigError(f"kernel_shards must be one of {list(KERNEL_SHARDS)}, not {shards!r}")
    if shards == 1:
        return [""]
    size = len(_HEX) // shards
    out = []
    for i in range(shards):
        digits = _HEX[i * size : (i + 1) * size]
        regex = f"[{digits}].*"
        if i == shards - 1:
            regex += "|[^0-9a-f].*|"
        out.append(f'{names.kernel_label}=~"{regex}"')
    return out


def build_rule_files(
    *,
    names: SeriesNames = _DEFAULT_NAMES,
    catalog: Catalog = DEFAULT_CATALOG,
    interval: str = DEFAULT_INTERVAL,
    window: str = DEFAULT_WINDOW,
    lookback: str = DEFAULT_LOOKBACK,
    collect_interval: str = DEFAULT_COLLECT_INTERVAL,
    kernel_shards: int = 1,
    rates: RateSource | str = RateSource.BOTH,
) -> tuple[RuleFile, ...]:
    """Build the kernel and agent rule files as typed values.

    Args:
        names: metric and label names.
        catalog: metric catalog (which stats each metric publishes).
        interval: group interval (use the scrape interval).
        window: ``max``/``avg`` window, at least 4 x ``interval``.
        lookback: the instant-query lookback (5m).
        collect_interval: the agents' measurement interval (sizes the raw-counter rate window).
        kernel_shards: split the kernel group into this many groups by the first hex digit of
            ``kernel_id`` (:func:`kernel_shard_matchers`). Prometheus evaluates groups
            concurrently and a group's rules one after another, so a large fleet's kernel
            rules take ``1 / kernel_shards`` of the wall time per group; the recorded series
            are the same.
        rates: where counter rates come from (:class:`~promstat.expressions.RateSource`):
            ``"both"`` (the agent's rate series, else ``rate()`` of the raw counter) or
            ``"exporter"`` (the rate series only: every agent runs promstat's exporter). With
            ``"exporter"`` the kernel group records ``max``/``avg`` only, from the raw series:
            readers take ``current``/``capacity``/``rate`` from the exporter's series
            (:attr:`~promstat.expressions.LiveStatExpressions.records_kernel_values`).

    Returns:
        ``(kernel file, agent file)``.

    Raises:
        ConfigError: invalid durations, ``window < 4 x interval``, ``lookback < 2 x interval``.
    """
    ex = _expressions(names, catalog, interval, window, lookback, collect_interval, rates)
    stat = names.stat_label

    def rule(record: str, s: str, expr: str | None) -> list[RecordingRule]:
        return [] if expr is None else [RecordingRule(record, expr, {stat: s})]

    kernel_groups: list[RuleGroup[RecordingRule]] = []
    shard_matchers = kernel_shard_matchers(names, kernel_shards)
    for i, matchers in enumerate(shard_matchers):
        # rates=exporter: current/capacity/rate are the exporter's own series; readers take
        # them raw and only the window stats are recorded (RateSource).
        kernel = [
            RecordingRule(names.kernel_live_stat, expr, {stat: s})
            for s, expr in ex.kernel_rules(matchers=matchers)
        ]
        name = "promstat.kernel.live_stat"
        if kernel_shards > 1:
            name += f".shard{i}of{kernel_shards}"
        kernel_groups.append(RuleGroup(name, interval, tuple(kernel)))

    agent: list[RecordingRule] = []
    for s in ("current", "capacity", "rate"):
        agent += rule(names.device_live_stat, s, ex.device(s))
    for s in ("max", "avg"):
        agent += rule(names.device_live_stat, s, _or_none(ex.device_recorded_window, s))
    for s in ("current", "capacity", "rate", "max", "avg"):
        agent += rule(names.agent_live_stat, s, ex.node(s))

    return (
        RuleFile(KERNEL_RULES_FILE, tuple(kernel_groups)),
        RuleFile(
            AGENT_RULES_FILE,
            (RuleGroup("promstat.agent.live_stat", interval, tuple(agent)),),
        ),
    )


def _or_none(build: Callable[[str], str], stat: str) -> str | None:
    # A window stat that no catalog metric publishes (custom catalog) gets no rule.
    try:
        return build(stat)
    except QueryBuildError:
        return None


# -------------------------------------------------------------------------------------------
# Rendering


def _version() -> str:
    try:
        return importlib.metadata.version("promstat")
    except importlib.metadata.PackageNotFoundError:
        pass
    # Running from a source tree: the version lives in pyproject.toml.
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        with pyproject.open("rb") as fh:
            return str(tomllib.load(fh)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def _command(
    interval: str,
    window: str,
    lookback: str,
    catalog_file: str | None,
    collect_interval: str = DEFAULT_COLLECT_INTERVAL,
    kernel_shards: int = 1,
    rates: RateSource | str = RateSource.BOTH,
) -> str:
    parts = ["promstat rules render", f"--interval {interval}", f"--window {window}"]
    if collect_interval != DEFAULT_COLLECT_INTERVAL:
        parts.append(f"--collect-interval {collect_interval}")
    source = RateSource.parse(rates)
    if source is not RateSource.BOTH:
        parts.append(f"--rates {source.value}")
    if kernel_shards != 1:
        parts.append(f"--kernel-shards {kernel_shards}")
    if lookback != DEFAULT_LOOKBACK:
        parts.append(f"--lookback {lookback}")
    if catalog_file:
        parts.append(f"--catalog {catalog_file}")
    return " ".join(parts)


def _dump(doc: Any) -> str:
    # One expression per line however long: folded plain scalars are hard to read and diff.
    return yaml.safe_dump(
        doc, sort_keys=False, width=math.inf, allow_unicode=True, default_flow_style=False
    )


def _render(template: str, **context: Any) -> str:
    return _ENV.get_template(template).render(version=_version(), **context)


def render_rules(
    *,
    names: SeriesNames = _DEFAULT_NAMES,
    catalog: Catalog = DEFAULT_CATALOG,
    interval: str = DEFAULT_INTERVAL,
    window: str = DEFAULT_WINDOW,
    lookback: str = DEFAULT_LOOKBACK,
    catalog_file: str | None = None,
    collect_interval: str = DEFAULT_COLLECT_INTERVAL,
    kernel_shards: int = 1,
    rates: RateSource | str = RateSource.BOTH,
) -> dict[str, str]:
    """Render the rule files.

    Args:
        names, catalog, interval, window, lookback, collect_interval, kernel_shards, rates: as
            :func:`build_rule_files`.
        catalog_file: the catalog file name to record in the header's command line.

    Returns:
        ``{filename: YAML text}``.

    Raises:
        ConfigError: as :func:`build_rule_files`.
    """
    files = build_rule_files(
        names=names,
        catalog=catalog,
        interval=interval,
        window=window,
        lookback=lookback,
        collect_interval=collect_interval,
        kernel_shards=kernel_shards,
        rates=rates,
    )
    # Built first: build_rule_files validates every option (rates included) and says so.
    command = _command(
        interval, window, lookback, catalog_file, collect_interval, kernel_shards, rates
    )
    return {
        f.filename: _render("rules.yml.j2", command=command, body=_dump(f.to_dict())) for f in files
    }


def write_rules(
    output_dir: str | Path,
    *,
    names: SeriesNames = _DEFAULT_NAMES,
    catalog: Catalog = DEFAULT_CATALOG,
    interval: str = DEFAULT_INTERVAL,
    window: str = DEFAULT_WINDOW,
    lookback: str = DEFAULT_LOOKBACK,
    catalog_file: str | None = None,
    collect_interval: str = DEFAULT_COLLECT_INTERVAL,
    kernel_shards: int = 1,
    rates: RateSource | str = RateSource.BOTH,
) -> list[Path]:
    """Write the rule files, and their promtool unit tests under ``tests/`` when they apply.

    Unit tests are written when :func:`rule_tests_apply` (default durations, and the scenario's
    metrics keep their built-in catalog specs); otherwise only the rules are written.

    Returns:
        The written paths, sorted.

    Raises:
        ConfigError: as :func:`build_rule_files`.
        RuleError: a file could not be written.
    """
    out = Path(output_dir)
    files = render_rules(
        names=names,
        catalog=catalog,
        interval=interval,
        window=window,
        lookback=lookback,
        catalog_file=catalog_file,
        collect_interval=collect_interval,
        kernel_shards=kernel_shards,
        rates=rates,
    )
    if rule_tests_apply(
        catalog=catalog,
        interval=interval,
        window=window,
        lookback=lookback,
        collect_interval=collect_interval,
        rates=rates,
    ):
        files.update(render_rule_tests(names=names, catalog=catalog))
    written: list[Path] = []
    try:
        for rel, text in sorted(files.items()):
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    except OSError as exc:
        raise RuleError(f"cannot write rule files to {str(out)!r}: {exc}") from exc
    return written


# -------------------------------------------------------------------------------------------
# The unit-test scenario

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


def rule_tests_apply(
    *,
    catalog: Catalog = DEFAULT_CATALOG,
    interval: str = DEFAULT_INTERVAL,
    window: str = DEFAULT_WINDOW,
    lookback: str = DEFAULT_LOOKBACK,
    collect_interval: str = DEFAULT_COLLECT_INTERVAL,
    rates: RateSource | str = RateSource.BOTH,
) -> bool:
    """Whether the hand-computed scenario holds: default durations and built-in specs.

    Custom names are fine (the tests use them); a custom catalog is fine as long as every
    scenario metric still resolves to its built-in spec. The scenario's agents mostly export
    raw counters only, so it holds for ``rates="both"`` only.
    """
    if (
        RateSource.parse(rates) is not RateSource.BOTH
        or parse_duration(interval) != parse_duration(DEFAULT_INTERVAL)
        or parse_duration(window) != parse_duration(DEFAULT_WINDOW)
        or parse_duration(lookback) != parse_duration(DEFAULT_LOOKBACK)
        or parse_duration(collect_interval) != parse_duration(DEFAULT_COLLECT_INTERVAL)
    ):
        return False
    metrics = {s.metric for s in SCENARIO.series}
    return all(catalog.lookup(m) == DEFAULT_CATALOG.lookup(m) for m in metrics)


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


def render_rule_tests(
    *, names: SeriesNames = _DEFAULT_NAMES, catalog: Catalog = DEFAULT_CATALOG
) -> dict[str, str]:
    """Render ``promtool test rules`` files for the rules of the default durations.

    Each file feeds :data:`SCENARIO` and checks, at 600 s, every recorded stat and the raw
    expressions (:class:`~promstat.expressions.LiveStatExpressions`, the planner's fallback)
    against the same hand-computed values: both paths must agree.

    Returns:
        ``{"tests/<name>.test.yml": YAML text}`` (paths relative to the rules directory).

    Raises:
        RuleError: the scenario does not hold for ``catalog`` (see :func:`rule_tests_apply`).
    """
    if not rule_tests_apply(catalog=catalog):
        raise RuleError("the rule-test scenario needs the built-in specs of its metrics")
    ex = _expressions(names, catalog, DEFAULT_INTERVAL, DEFAULT_WINDOW, DEFAULT_LOOKBACK)
    n = names
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

    command = _command(DEFAULT_INTERVAL, DEFAULT_WINDOW, DEFAULT_LOOKBACK, None)
    return {
        "tests/promstat-kernel.test.yml": _render(
            "rule_tests.yml.j2",
            command=command,
            body=_dump(doc(KERNEL_RULES_FILE, kernel_tests, "kernel")),
        ),
        "tests/promstat-agent.test.yml": _render(
            "rule_tests.yml.j2",
            command=command,
            body=_dump(doc(AGENT_RULES_FILE, agent_tests, "device")),
        ),
    }


# -------------------------------------------------------------------------------------------
# promtool and the CLI


def _promtool() -> str:
    try:
        from promstat.testing.lab import require_binary
    except ImportError:  # pragma: no cover - lab ships with promstat
        path = shutil.which("promtool")
        if path is None:
            raise BinaryNotFoundError(binary="promtool", package="prometheus") from None
        return path
    return require_binary("promtool")


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)


def check_rules(directory: str | Path) -> list[str]:
    """Run ``promtool check rules --lint=all --lint-fatal`` and ``promtool test rules``.

    Files with sharded kernel groups are checked without the duplicate-rules lint (their
    shards record the same names for disjoint kernels).

    Args:
        directory: a directory holding ``*.rules.yml`` (and optionally ``tests/*.test.yml``).

    Returns:
        The files checked or tested.

    Raises:
        BinaryNotFoundError: promtool is missing.
        RuleError: no rule files, or promtool failed (its output is in the message).
    """
    root = Path(directory)
    rule_files = sorted(str(p) for p in root.glob("*.rules.yml"))
    if not rule_files:
        raise RuleError(f"no *.rules.yml files in {str(root)!r}")
    promtool = _promtool()
    # Sharded kernel groups, and a stat split into one rule per metric kind, record the same
    # series names and labels on purpose (each for its own, disjoint series), which
    # promtool's only lint, duplicate-rules, cannot tell from a mistake.
    sharded = [f for f in rule_files if _records_twice(Path(f))]
    lintable = [f for f in rule_files if f not in sharded]
    done: list[str] = []
    if lintable:
        done += _check(promtool, ["check", "rules", "--lint=all", "--lint-fatal"], lintable)
    if sharded:
        done += _check(promtool, ["check", "rules", "--lint=none"], sharded)
    test_files = sorted(str(p) for p in (root / "tests").glob("*.test.yml"))
    if test_files:
        done += _check(promtool, ["test", "rules"], test_files)
    return done


def _records_twice(path: Path) -> bool:
    """Whether two rules of ``path`` record the same name with the same labels."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return False  # promtool reports what is wrong with the file
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for group in doc.get("groups") or ():
        for rule in group.get("rules") or ():
            if "record" not in rule:
                continue
            key = (str(rule["record"]), tuple(sorted((rule.get("labels") or {}).items())))
            if key in seen:
                return True
            seen.add(key)
    return False


def _check(promtool: str, args: list[str], files: list[str]) -> list[str]:
    proc = _run([promtool, *args, *files])
    if proc.returncode != 0:
        raise RuleError(
            f"promtool {' '.join(args)} failed (exit {proc.returncode}):\n"
            f"{proc.stdout}{proc.stderr}".rstrip()
        )
    return files


def cmd_rules_render(args: argparse.Namespace) -> int:
    """Handler of ``promstat rules render``: write the rule files (and unit tests).

    Raises:
        ConfigError: invalid options or catalog.
        RuleError: the files could not be written.
    """
    catalog = Catalog.from_yaml(Path(args.catalog)) if args.catalog else DEFAULT_CATALOG
    paths = write_rules(
        args.output,
        catalog=catalog,
        interval=args.interval,
        window=args.window,
        lookback=args.lookback,
        catalog_file=args.catalog,
        collect_interval=args.collect_interval,
        kernel_shards=args.kernel_shards,
        rates=args.rates,
    )
    for path in paths:
        print(path)
    if not any(p.parent.name == "tests" for p in paths):
        print(
            "note: promtool unit tests are only generated for the default durations, catalog "
            "and --rates both"
        )
    return 0


def cmd_rules_check(args: argparse.Namespace) -> int:
    """Handler of ``promstat rules check``: promtool lint + unit tests.

    Raises:
        RuleError: a check failed.
        BinaryNotFoundError: promtool is missing.
    """
    for path in check_rules(args.directory):
        print(f"ok {path}")
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``rules render`` and ``rules check`` on an argparse ``add_subparsers()`` object.

    Each leaf parser sets ``handler`` (``(args) -> exit code``), as promstat.cli expects.

    Returns:
        The ``rules`` parser.
    """
    rules = subparsers.add_parser("rules", help="generate and check recording rules")
    sub = rules.add_subparsers(dest="rules_command", required=True)
    render = sub.add_parser("render", help="write the recording-rule files")
    render.add_argument("--output", required=True, help="directory to write into")
    render.add_argument("--interval", default=DEFAULT_INTERVAL, help="group interval (scrape)")
    render.add_argument("--window", default=DEFAULT_WINDOW, help="max/avg window (>= 4x interval)")
    render.add_argument("--lookback", default=DEFAULT_LOOKBACK, help="instant-query lookback")
    render.add_argument(
        "--collect-interval",
        default=DEFAULT_COLLECT_INTERVAL,
        help="how often agents measure (sizes the rate window of raw counters; Backend.AI: 30s)",
    )
    render.add_argument(
        "--kernel-shards",
        type=int,
        default=1,
        choices=KERNEL_SHARDS,
        help="split the kernel rules into groups by kernel_id (evaluated concurrently)",
    )
    render.add_argument(
        "--rates",
        default=RateSource.BOTH.value,
        choices=[r.value for r in RateSource],
        help="counter rates from the agents' rate series and else rate() of the raw counter "
        "(both, the default), or from the rate series only (exporter: every agent runs "
        "promstat's exporter; much cheaper to evaluate)",
    )
    render.add_argument("--catalog", default=None, help="catalog YAML extending the built-in one")
    render.set_defaults(handler=cmd_rules_render)
    check = sub.add_parser("check", help="promtool check rules --lint=all + promtool test rules")
    check.add_argument("directory", help="directory with *.rules.yml (and tests/*.test.yml)")
    check.set_defaults(handler=cmd_rules_check)
    parser: argparse.ArgumentParser = rules
    return parser
