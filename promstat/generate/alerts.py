"""Alerting-rule generation: catalog + names + :class:`AlertSettings` -> one Prometheus rule file.

The alerts read the same series the recording rules write (``kernel_metric:...:live_stat``)
and the agent's raw series, so they follow :class:`~promstat.conventions.SeriesNames` and the
catalog (which metrics are accelerator utilisation). Each alert carries ``summary``,
``description`` and ``runbook`` annotations (and ``runbook_url`` when a base URL is set)::

    promstat.alerts.yaml
      promstat.alerts.kernel    BackendAIKernelMemoryNearLimit, BackendAIKernelAcceleratorIdle
      promstat.alerts.agent     BackendAIAgentNotReporting
      promstat.alerts.rules     PromstatRuleGroupFailing, PromstatRuleGroupSlow
      promstat.alerts.service   PromstatQueryErrors, PromstatDataStale, PromstatRefreshFailing

Kernel alerts carry the kernel's ``agent_id``, ``session_id``, ``user_id`` and ``project_id``
(joined from the raw series, one ownership row per kernel) so a notification names whom to
call. Percentages are ``current / capacity * 100`` of the recorded stats, never a recorded
``pct`` series.

Their promtool unit tests (one per alert) are :mod:`promstat.generate.alert_tests`. The files
use the ``.yaml`` suffix so the recording-rule drift test (which globs ``rules/**/*.yml``)
does not see them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from promstat.catalog import DEFAULT_CATALOG, Catalog, Kind, rated_counters
from promstat.conventions import SeriesNames
from promstat.errors import ConfigError, RuleError
from promstat.expressions import RateSource
from promstat.generate._common import (
    ALERT_TESTS_FILE,
    ALERTS_FILE,
    dump_yaml,
    promtool,
    render_generated,
    run_promtool,
    write_files,
)
from promstat.generate.rules import RuleGroup
from promstat.promql import duration, escape_string, parse_duration, quote_meta

__all__ = [
    "ALERTS_FILE",
    "ALERT_TESTS_FILE",
    "AlertRule",
    "AlertSettings",
    "accelerator_util_matchers",
    "alerts_command",
    "build_alert_groups",
    "check_alerts",
    "demo_settings",
    "render_alerts",
    "write_alerts",
]


_DEFAULT_NAMES: Final = SeriesNames()
_VALUE: Final = "{value}"


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """Thresholds and durations of the generated alerts (all durations are PromQL durations).

    Attributes:
        interval: evaluation interval of the alert groups.
        memory_pct: kernel memory use, in percent of its limit, that counts as near the limit.
        memory_for: how long memory must stay above ``memory_pct`` (OOM risk, not a spike).
        memory_metric: the container metric holding the cgroup memory use and limit.
        idle_util_pct: accelerator utilisation (percent of capacity) below which it is idle.
        idle_window: the averaging window of accelerator utilisation (as the idle checker's
            ``time-window``).
        idle_for: how long the average must stay below ``idle_util_pct``.
        agent_metric: a device metric every agent reports (its heartbeat).
        agent_lookback: how far back an agent counts as known; the alert resolves by itself
            this long after the agent's last sample (a decommissioned agent stops alerting).
        agent_for: how long an agent must be silent.
        rates_missing_for: how long an agent must export counters without their
            ``value_type="rate"`` series (a plain upstream agent) before it is reported.
        rule_group_regex: RE2 pattern of the rule-group names watched (after the ``file;``).
        rule_failures_window: window of ``increase()`` over rule-evaluation failures.
        rule_failures_for: how long a group must keep failing.
        rule_slow_ratio: last evaluation duration / group interval above which a group is slow.
        rule_slow_for: how long a group must stay slow.
        error_ratio: share of promstat's Prometheus calls failing that counts as an outage.
        service_window: ``rate()`` window of promstat's counters.
        error_for: how long the error ratio must stay above ``error_ratio``.
        data_age_seconds: age of served live stats above which they count as stale.
        data_age_quantile: the quantile of ``promstat_data_age_seconds`` compared.
        stale_for: how long the data must stay stale.
        refresh_for: how long background refreshes must keep failing.
        runbook_url: base URL of a runbook page; each alert gets ``runbook_url`` =
            ``<base>#<alertname in lower case>`` when set.
        rates: how the recording rules were rendered (``promstat rules render --rates``).
            With ``exporter`` they record no kernel current or capacity, so the kernel alerts
            read the exporter's series (memory and accelerator utilisation are gauges: their
            ``value_type="current"`` series is the live_stat current).
    """

    interval: str = "15s"
    memory_pct: float = 90.0
    memory_for: str = "15m"
    memory_metric: str = "mem"
    idle_util_pct: float = 5.0
    idle_window: str = "1h"
    idle_for: str = "1h"
    agent_metric: str = "mem"
    agent_lookback: str = "1h"
    agent_for: str = "5m"
    rates_missing_for: str = "15m"
    rule_group_regex: str = r"promstat\..+"
    rule_failures_window: str = "5m"
    rule_failures_for: str = "10m"
    rule_slow_ratio: float = 1.0
    rule_slow_for: str = "10m"
    error_ratio: float = 0.05
    service_window: str = "5m"
    error_for: str = "10m"
    data_age_seconds: float = 120.0
    data_age_quantile: float = 0.9
    stale_for: str = "10m"
    refresh_for: str = "10m"
    runbook_url: str | None = None
    rates: str = "both"

    def __post_init__(self) -> None:
        RateSource.parse(self.rates)  # raises ConfigError listing the choices
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _DURATIONS:
                parse_duration(value)  # raises ConfigError naming the value
            elif f.type == "float" and not (isinstance(value, int | float) and value >= 0):
                raise ConfigError(f"alert setting {f.name} must be a number >= 0, got {value!r}")
        for name in ("memory_metric", "agent_metric"):
            if not getattr(self, name):
                raise ConfigError(f"alert setting {name} must name a metric, got an empty string")
        if not parse_duration(self.interval) > 0:
            raise ConfigError(f"alert setting interval must be > 0, got {self.interval!r}")
        if not 0 < self.data_age_quantile <= 1:
            raise ConfigError(
                f"alert setting data_age_quantile must be in (0, 1], got {self.data_age_quantile!r}"
            )
        try:
            re.compile(self.rule_group_regex)
        except re.error as exc:
            raise ConfigError(f"alert setting rule_group_regex is not a regex: {exc}") from exc

    @classmethod
    def from_pairs(
        cls, pairs: Sequence[str], *, base: AlertSettings | None = None
    ) -> AlertSettings:
        """Return ``base`` (default: the defaults) with ``NAME=VALUE`` pairs applied.

        Raises:
            ConfigError: an unknown name, a pair without ``=``, or a value of the wrong type.
        """
        base = base or cls()
        kinds = {f.name: f.type for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for pair in pairs:
            name, sep, text = pair.partition("=")
            if not sep or name not in kinds:
                raise ConfigError(
                    f"invalid alert setting {pair!r}: use NAME=VALUE with NAME one of "
                    f"{sorted(kinds)}"
                )
            if kinds[name] == "float":
                try:
                    changes[name] = float(text)
                except ValueError:
                    raise ConfigError(
                        f"alert setting {name} needs a number, got {text!r}"
                    ) from None
            elif name == "runbook_url":
                changes[name] = text or None
            else:
                changes[name] = text
        return dataclasses.replace(base, **changes)


_DURATIONS: Final = frozenset(
    f.name
    for f in dataclasses.fields(AlertSettings)
    if f.name.endswith(("_for", "_window", "_lookback")) or f.name == "interval"
)


def demo_settings(interval: str) -> AlertSettings:
    """Settings with every duration a few ``interval``s long, for the demo's short runs.

    Thresholds are lowered where the simulated fleet never crosses the production ones
    (memory stays at 10..90 % of the limit), so a demo shows alerts firing.
    """
    seconds = parse_duration(interval)
    short = _duration(max(4 * seconds, 10.0))
    longer = _duration(max(15 * seconds, 30.0))
    return AlertSettings(
        interval=interval,
        memory_pct=80.0,
        memory_for=short,
        idle_util_pct=20.0,
        idle_window=longer,
        idle_for=short,
        agent_lookback=longer,
        agent_for=short,
        rates_missing_for=short,
        rule_failures_window=longer,
        rule_failures_for=short,
        rule_slow_for=short,
        service_window=longer,
        error_for=short,
        stale_for=short,
        refresh_for=short,
    )


def _duration(seconds: float) -> str:
    return duration(math.ceil(seconds))


# -------------------------------------------------------------------------------------------
# Typed alerts


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One ``alert:`` rule.

    ``annotations`` are texts with ``$label`` and ``$value`` placeholders: they
    become Go templates in the rule file (:meth:`to_dict`) and expected texts in the unit tests
    (:meth:`expand`), so both come from one string.
    """

    alert: str
    expr: str
    for_: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    value_format: str = "%.1f"

    def to_dict(self) -> dict[str, Any]:
        """Return the rule-file mapping (``alert``, ``expr``, ``for``, labels, annotations)."""
        return {
            "alert": self.alert,
            "expr": self.expr,
            "for": self.for_,
            "labels": dict(self.labels),
            "annotations": {
                k: _go_template(v, self.value_format) for k, v in self.annotations.items()
            },
        }

    def expand(self, labels: Mapping[str, str], value: float) -> dict[str, str]:
        """The annotations as Prometheus renders them for an alert with ``labels`` and ``value``."""
        text = _go_value(value, self.value_format)
        values = {**labels, "value": text}
        return {
            k: _PLACEHOLDER.sub(lambda m: values[m.group(1)], v)
            for k, v in self.annotations.items()
        }


_PLACEHOLDER = re.compile(r"\$([a-z_]+)")


def _go_template(text: str, value_format: str) -> str:
    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "value":
            if value_format == "percentage":
                return "{{ $value | humanizePercentage }}"
            return f'{{{{ $value | printf "{value_format}" }}}}'
        return f"{{{{ $labels.{name} }}}}"

    return _PLACEHOLDER.sub(sub, text)


def _go_value(value: float, value_format: str) -> str:
    if value_format == "percentage":
        # Prometheus' humanizePercentage: fmt.Sprintf("%.4g%%", v*100)
        return f"{value * 100:.4g}%"
    return value_format % value


#: A group of alerts evaluated every ``interval`` (the recording rules' group type). Build
#: groups with ``RuleGroup(...)``: calling the subscripted alias trips a Python 3.11 bug with
#: frozen slotted generic dataclasses (setting ``__orig_class__`` raises TypeError).
AlertGroup = RuleGroup[AlertRule]


def accelerator_util_matchers(
    catalog: Catalog = DEFAULT_CATALOG, *, label: str = _DEFAULT_NAMES.container_metric_label
) -> tuple[str, ...]:
    """Matchers selecting accelerator-utilisation metrics of the catalog.

    Those are the gauges whose unit hint is ``percent`` (exact names and patterns, such as
    ``.+_util``), minus exact names a pattern would catch whose own spec is not such a gauge
    (``cpu_util`` is a rate counter).

    Raises:
        ConfigError: the catalog has no such metric.
    """

    def util(kind: Kind, unit: str) -> bool:
        return kind is Kind.GAUGE and unit.lower() == "percent"

    exact = sorted(n for n, s in catalog.exact.items() if util(s.kind, s.unit_hint))
    patterns = [p for p, s in catalog.patterns if util(s.kind, s.unit_hint)]
    if not exact and not patterns:
        raise ConfigError("the catalog has no accelerator utilisation metric (percent gauges)")
    alternatives = [quote_meta(n) for n in exact] + [
        f"(?:{p})" if "|" in p else p for p in patterns
    ]
    compiled = [re.compile(p) for p in patterns]
    shadowed = sorted(
        n
        for n, s in catalog.exact.items()
        if not util(s.kind, s.unit_hint) and any(rx.fullmatch(n) for rx in compiled)
    )
    out = [f'{label}=~"{escape_string("|".join(alternatives))}"']
    if shadowed:
        out.append(f'{label}!~"{escape_string("|".join(quote_meta(n) for n in shadowed))}"')
    return tuple(out)


def _owner_join(n: SeriesNames, metric: str) -> str:
    """``* on (kernel) group_left (agent, session, user, project)`` one ownership row per kernel.

    A kernel relabelled from the agent's ``"undefined"`` ownership has two rows for a while
    (a many-to-one join would fail on it): rows with a known session win, and
    ``topk by (kernel) (1, ...)`` keeps one row whatever happens.
    """
    owners = f"{n.agent_label}, {n.session_label}, {n.user_label}, {n.project_label}"
    raw = (
        f'{n.container_metric}{{{n.container_metric_label}="{escape_string(metric)}", '
        f'{n.value_type_label}="{n.current_value}"}}'
    )
    known = raw.replace("}", f', {n.session_label}!="undefined"}}')
    rows = f"group by ({n.kernel_label}, {owners})"
    # Rows with a known session first; "undefined" rows only for kernels that have no other.
    return (
        f" * on ({n.kernel_label}) group_left ({owners}) topk by ({n.kernel_label}) "
        f"(1, {rows} ({known}) or on ({n.kernel_label}) {rows} ({raw}))"
    )


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _kernel_alerts(n: SeriesNames, catalog: Catalog, s: AlertSettings) -> tuple[AlertRule, ...]:
    k, st, cur_v, cap_v = n.kernel_live_stat, n.stat_label, "current", "capacity"
    if RateSource.parse(s.rates) is RateSource.EXPORTER:
        # Those rules record only the window stats; both metrics here are gauges, whose
        # exporter series are the live_stat current and capacity themselves.
        k, st = n.container_metric, n.value_type_label
        cur_v, cap_v = n.current_value, n.capacity_value
    mem = escape_string(s.memory_metric)
    by = n.kernel_label
    cur = f'{k}{{{n.container_metric_label}="{mem}", {st}="{cur_v}"}}'
    cap = f'{k}{{{n.container_metric_label}="{mem}", {st}="{cap_v}"}}'
    memory = AlertRule(
        alert="BackendAIKernelMemoryNearLimit",
        expr=(
            f"(max by ({by}) ({cur}) / max by ({by}) ({cap} > 0) * 100 > {_num(s.memory_pct)})"
            + _owner_join(n, s.memory_metric)
        ),
        for_=s.memory_for,
        labels={"severity": "warning"},
        annotations={
            "summary": f"Kernel ${by} is close to its memory limit ($value%)",
            "description": (
                f"Kernel ${by} of session ${n.session_label} (user ${n.user_label}, project "
                f"${n.project_label}) on agent ${n.agent_label} has used more than "
                f"{_num(s.memory_pct)}% of its memory limit for {s.memory_for} (now $value%). "
                "The kernel's processes will be OOM-killed when it reaches the limit."
            ),
            "runbook": (
                "Tell the session owner: save work and restart the session with a larger memory "
                "slot, or reduce the working set (batch size, data loaded in memory). Check the "
                "kernel drill-down dashboard for a steady climb (leak) versus a plateau. Nothing "
                "breaks until the limit is reached; the agent does not raise the limit by itself."
            ),
        },
    )
    accel = ", ".join(accelerator_util_matchers(catalog, label=n.container_metric_label))
    keys = f"{by}, {n.container_metric_label}"
    acur = f'{k}{{{accel}, {st}="{cur_v}"}}'
    acap = f'{k}{{{accel}, {st}="{cap_v}"}}'
    idle = AlertRule(
        alert="BackendAIKernelAcceleratorIdle",
        expr=(
            f"(max by ({keys}) (avg_over_time({acur}[{s.idle_window}])) / max by ({keys}) "
            f"({acap} > 0) * 100 < {_num(s.idle_util_pct)})" + _owner_join(n, s.memory_metric)
        ),
        for_=s.idle_for,
        labels={"severity": "info"},
        annotations={
            "summary": (
                f"Kernel ${by} holds accelerators it does not use "
                f"(${n.container_metric_label} $value%)"
            ),
            "description": (
                f"Kernel ${by} of session ${n.session_label} (user ${n.user_label}, project "
                f"${n.project_label}) on agent ${n.agent_label} has accelerators allocated, but "
                f"its ${n.container_metric_label} averaged $value% over {s.idle_window}, below "
                f"{_num(s.idle_util_pct)}%, for {s.idle_for}. This is what Backend.AI's "
                "utilisation idle checker looks for."
            ),
            "runbook": (
                "Ask the owner whether the session is still needed; idle accelerators block "
                "other users' sessions. If the idle checker is configured with a utilisation "
                "threshold it will terminate the session; otherwise terminate it by hand or "
                "agree on a smaller allocation. A training job waiting on data loading shows "
                "low accelerator and high CPU or I/O on the kernel dashboard."
            ),
        },
    )
    return memory, idle


def _rates_missing(n: SeriesNames, catalog: Catalog, s: AlertSettings) -> AlertRule:
    a, k, c = n.agent_label, n.kernel_label, n.container_metric_label
    counters = "|".join(quote_meta(m) for m in rated_counters(catalog))
    current = (
        f'{n.container_metric}{{{n.value_type_label}="{n.current_value}", '
        f'{c}=~"{escape_string(counters)}"}}'
    )
    rate = f'{n.container_metric}{{{n.value_type_label}="{n.rate_value}"}}'
    return AlertRule(
        alert="PromstatRateSeriesMissing",
        expr=f"count by ({a}) ({current} unless on ({k}, {c}) {rate})",
        for_=s.rates_missing_for,
        labels={"severity": "warning"},
        annotations={
            "summary": f"Agent ${a} exports $value counters without their rate series",
            "description": (
                f"Agent ${a} exports raw counters (cpu_util, net_*, io_*) but not promstat's "
                'value_type="rate" series: it is not running promstat\'s exporter. With rules '
                "rendered --rates both its kernels' rates come from rate() of the raw counters "
                "(within about C / (W - S) of legacy's, not exact); with --rates exporter they "
                "have no cpu_util, net_* or io_* rate at all."
            ),
            "runbook": (
                "Upgrade the agent to publish through promstat's exporter (publish_rates on, "
                "the default), or render the rules with --rates both while the fleet is mixed."
            ),
        },
        value_format="%.0f",
    )


def _agent_alerts(n: SeriesNames, catalog: Catalog, s: AlertSettings) -> tuple[AlertRule, ...]:
    a = n.agent_label
    raw = (
        f'{n.device_metric}{{{n.device_metric_label}="{escape_string(s.agent_metric)}", '
        f'{n.value_type_label}="{n.current_value}"}}'
    )
    return (
        AlertRule(
            alert="BackendAIAgentNotReporting",
            expr=(
                f"group by ({a}) (max_over_time({raw}[{s.agent_lookback}])) unless on ({a}) "
                f"group by ({a}) ({raw})"
            ),
            for_=s.agent_for,
            labels={"severity": "warning"},
            annotations={
                "summary": f"Agent ${a} stopped reporting utilisation",
                "description": (
                    f"Agent ${a} exported {s.agent_metric} within the last {s.agent_lookback} "
                    f"but not for {s.agent_for}: its kernels' live stats are frozen or gone and "
                    "the scheduler may still place sessions on it."
                ),
                "runbook": (
                    "Check the agent process and its host (systemctl status backendai-agent, "
                    "agent logs), then Prometheus' target page for a scrape error (network, TLS, "
                    "a changed port). A decommissioned agent resolves by itself after the "
                    "lookback; mark it lost in the manager meanwhile."
                ),
            },
            value_format="%.0f",
        ),
        _rates_missing(n, catalog, s),
    )


def _rule_alerts(s: AlertSettings) -> tuple[AlertRule, ...]:
    group = f'rule_group=~".+;{escape_string(s.rule_group_regex)}"'
    ratio = "" if s.rule_slow_ratio == 1 else f" * {_num(s.rule_slow_ratio)}"
    return (
        AlertRule(
            alert="PromstatRuleGroupFailing",
            expr=(
                f"increase(prometheus_rule_evaluation_failures_total{{{group}}}"
                f"[{s.rule_failures_window}]) > 0"
            ),
            for_=s.rule_failures_for,
            labels={"severity": "critical"},
            annotations={
                "summary": "Rule group $rule_group is failing",
                "description": (
                    f"$rule_group on $instance had $value failed rule evaluations in the last "
                    f"{s.rule_failures_window}, for {s.rule_failures_for}. Recorded live stats "
                    "(and alerts reading them) are missing or stale; promstat falls back to raw "
                    "queries."
                ),
                "runbook": (
                    "Read the rule error on Prometheus' /rules page or in its log (a query "
                    "timeout, a many-to-many match after a relabelling, a sample limit). "
                    "Regenerate the rules with `promstat rules render` for the running version "
                    "and check them with `promstat rules check`."
                ),
            },
            value_format="%.0f",
        ),
        AlertRule(
            alert="PromstatRuleGroupSlow",
            expr=(
                f"prometheus_rule_group_last_duration_seconds{{{group}}} > "
                f"prometheus_rule_group_interval_seconds{{{group}}}{ratio}"
            ),
            for_=s.rule_slow_for,
            labels={"severity": "warning"},
            annotations={
                "summary": "Rule group $rule_group runs longer than its interval",
                "description": (
                    f"The last evaluation of $rule_group on $instance took $value s, longer "
                    f"than {_num(s.rule_slow_ratio)} x its interval, for {s.rule_slow_for}: "
                    "evaluations are skipped and recorded live stats lag."
                ),
                "runbook": (
                    "Look at prometheus_rule_group_iterations_missed_total and the per-rule "
                    "durations on /rules. Raise the group interval (`promstat rules render "
                    "--interval`, with the scrape interval), give Prometheus more CPU, or shard "
                    "the fleet across Prometheus servers."
                ),
            },
        ),
    )


def _service_alerts(s: AlertSettings) -> tuple[AlertRule, ...]:
    w = s.service_window
    return (
        AlertRule(
            alert="PromstatQueryErrors",
            expr=(
                f"sum by (instance, job) (rate(promstat_query_errors_total[{w}])) / "
                f"sum by (instance, job) (rate(promstat_queries_total[{w}])) "
                f"> {_num(s.error_ratio)}"
            ),
            for_=s.error_for,
            labels={"severity": "critical"},
            annotations={
                "summary": "promstat on $instance fails $value of its Prometheus queries",
                "description": (
                    f"$value of the Prometheus HTTP API calls promstat made on $instance "
                    f"(job $job) failed over {w}, above {_num(s.error_ratio)}, for "
                    f"{s.error_for}: live_stat fields on list pages come back null or as errors."
                ),
                "runbook": (
                    "See promstat_query_errors_total by error_type on the promstat dashboard: "
                    "timeout (Prometheus overloaded: check its CPU and the recorded plan), "
                    "unavailable or connection errors (Prometheus down or unreachable), "
                    "bad_data (a version mismatch between promstat and the rules)."
                ),
            },
            value_format="percentage",
        ),
        AlertRule(
            alert="PromstatDataStale",
            expr=(
                f"histogram_quantile({_num(s.data_age_quantile)}, sum by (instance, job, le) "
                f"(rate(promstat_data_age_seconds_bucket[{w}]))) > {_num(s.data_age_seconds)}"
            ),
            for_=s.stale_for,
            labels={"severity": "warning"},
            annotations={
                "summary": "promstat on $instance serves live stats $value s old",
                "description": (
                    f"The {_num(s.data_age_quantile)} quantile of the age of live stats promstat "
                    f"served on $instance (job $job) was $value s over {w}, above "
                    f"{_num(s.data_age_seconds)} s, for {s.stale_for}."
                ),
                "runbook": (
                    "Stale data comes from failing background refreshes (see "
                    "PromstatRefreshFailing), slow Prometheus queries, or agents that stopped "
                    "reporting. Check the promstat and fleet dashboards; restart promstat only "
                    "after Prometheus answers again."
                ),
            },
            value_format="%.0f",
        ),
        AlertRule(
            alert="PromstatRefreshFailing",
            expr=f"sum by (instance, job) (rate(promstat_refresh_failures_total[{w}])) > 0",
            for_=s.refresh_for,
            labels={"severity": "warning"},
            annotations={
                "summary": "promstat on $instance cannot refresh live stats",
                "description": (
                    f"promstat's background refresh on $instance (job $job) failed continuously "
                    f"for {s.refresh_for} ($value failures/s): pages get older values until the "
                    "cache entries expire, then query Prometheus themselves."
                ),
                "runbook": (
                    "Check promstat's log for the refresh error and "
                    "promstat_query_errors_total by error_type; most often Prometheus is "
                    "overloaded or unreachable."
                ),
            },
            value_format="%.3f",
        ),
    )


def build_alert_groups(
    *,
    names: SeriesNames = _DEFAULT_NAMES,
    catalog: Catalog = DEFAULT_CATALOG,
    settings: AlertSettings = AlertSettings(),
) -> tuple[AlertGroup, ...]:
    """Build the alert groups as typed values.

    Raises:
        ConfigError: the catalog has no accelerator utilisation metric.
    """
    groups: tuple[AlertGroup, ...] = (
        RuleGroup(
            "promstat.alerts.kernel", settings.interval, _kernel_alerts(names, catalog, settings)
        ),
        RuleGroup(
            "promstat.alerts.agent", settings.interval, _agent_alerts(names, catalog, settings)
        ),
        RuleGroup("promstat.alerts.rules", settings.interval, _rule_alerts(settings)),
        RuleGroup("promstat.alerts.service", settings.interval, _service_alerts(settings)),
    )
    if settings.runbook_url:
        base = settings.runbook_url
        groups = tuple(
            dataclasses.replace(
                g,
                rules=tuple(
                    dataclasses.replace(
                        r, annotations={**r.annotations, "runbook_url": f"{base}#{r.alert.lower()}"}
                    )
                    for r in g.rules
                ),
            )
            for g in groups
        )
    return groups


# -------------------------------------------------------------------------------------------
# Rendering


def _changed(settings: AlertSettings) -> list[str]:
    default = AlertSettings()
    return [
        f"--set {f.name}={getattr(settings, f.name)}"
        for f in dataclasses.fields(settings)
        if getattr(settings, f.name) != getattr(default, f.name)
    ]


def alerts_command(settings: AlertSettings, catalog_file: str | None = None) -> str:
    """The ``promstat alerts render`` command line that renders ``settings`` (for headers)."""
    parts = ["promstat alerts render", *_changed(settings)]
    if catalog_file:
        parts.append(f"--catalog {catalog_file}")
    return " ".join(parts)


def render_alerts(
    *,
    names: SeriesNames = _DEFAULT_NAMES,
    catalog: Catalog = DEFAULT_CATALOG,
    settings: AlertSettings = AlertSettings(),
    catalog_file: str | None = None,
) -> dict[str, str]:
    """Render the alert rule file: ``{ALERTS_FILE: YAML text}``.

    Raises:
        ConfigError: as :func:`build_alert_groups`.
    """
    groups = build_alert_groups(names=names, catalog=catalog, settings=settings)
    body = dump_yaml({"groups": [g.to_dict() for g in groups]})
    command = alerts_command(settings, catalog_file)
    return {ALERTS_FILE: render_generated("alerts.yaml.j2", command=command, body=body)}


def write_alerts(
    output_dir: str | Path,
    *,
    names: SeriesNames = _DEFAULT_NAMES,
    catalog: Catalog = DEFAULT_CATALOG,
    settings: AlertSettings = AlertSettings(),
    catalog_file: str | None = None,
) -> list[Path]:
    """Write the alert rule file, and its promtool unit tests when
    :func:`~promstat.generate.alert_tests.alert_tests_apply`.

    Returns:
        The written paths, sorted.

    Raises:
        ConfigError: as :func:`build_alert_groups`.
        RuleError: a file could not be written.
    """
    # The unit tests build on this module's alerts: imported here, not at the top.
    from promstat.generate.alert_tests import alert_tests_apply, render_alert_tests

    files = render_alerts(
        names=names, catalog=catalog, settings=settings, catalog_file=catalog_file
    )
    if alert_tests_apply(catalog=catalog, settings=settings):
        files.update(render_alert_tests(names=names, catalog=catalog, settings=settings))
    return write_files(output_dir, files, "alert files")


def check_alerts(directory: str | Path) -> list[str]:
    """Run ``promtool check rules --lint=all --lint-fatal`` and ``promtool test rules``.

    Args:
        directory: a directory holding ``*.alerts.yaml`` (and ``tests/*.test.yaml``).

    Returns:
        The files checked or tested.

    Raises:
        BinaryNotFoundError: promtool is missing.
        RuleError: no alert files, or promtool failed (its output is in the message).
    """
    root = Path(directory)
    files = sorted(str(p) for p in root.glob("*.alerts.yaml"))
    if not files:
        raise RuleError(f"no *.alerts.yaml files in {str(root)!r}")
    binary = promtool()
    done = run_promtool(binary, ["check", "rules", "--lint=all", "--lint-fatal"], files)
    tests = sorted(str(p) for p in (root / "tests").glob("*.test.yaml"))
    if tests:
        done += run_promtool(binary, ["test", "rules"], tests)
    return done


