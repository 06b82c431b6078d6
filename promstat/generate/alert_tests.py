"""promtool unit tests of the alerting rules: one test per alert.

:func:`render_alert_tests` writes ``promtool test rules`` cases for every alert of
:mod:`promstat.generate.alerts`, each with a time at which nothing fires yet (pending, or below
the threshold) and a time at which exactly the expected series fire; the expected annotation
texts are expanded in Python from the same templates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from promstat.catalog import DEFAULT_CATALOG, Catalog, Kind
from promstat.conventions import SeriesNames
from promstat.errors import RuleError
from promstat.generate._common import ALERT_TESTS_FILE, ALERTS_FILE, dump_yaml, render_generated
from promstat.generate.alerts import AlertSettings, alerts_command, build_alert_groups

__all__ = ["alert_tests_apply", "render_alert_tests"]

_DEFAULT_NAMES: Final = SeriesNames()
_DEFAULT_SETTINGS: Final = AlertSettings()


def alert_tests_apply(
    *,
    catalog: Catalog = DEFAULT_CATALOG,
    settings: AlertSettings = _DEFAULT_SETTINGS,
) -> bool:
    """Whether the unit-test scenario holds: default settings and ``cuda_util`` an accelerator."""
    if dataclasses.replace(settings, runbook_url=None) != AlertSettings():
        return False
    spec = catalog.lookup("cuda_util")
    return spec.kind is Kind.GAUGE and spec.unit_hint.lower() == "percent"


# -- the unit-test scenario (one promtool test per alert) ------------------------------------


@dataclass(frozen=True, slots=True)
class _Case:
    """Input series (name, labels, promtool values) and the alerts expected at two times."""

    alert: str
    series: tuple[tuple[str, Mapping[str, str], str], ...]
    quiet_at: str
    firing_at: str
    firing: tuple[tuple[Mapping[str, str], float], ...]
    extra_quiet: tuple[str, ...] = field(default=())


def _series_text(metric: str, labels: Mapping[str, str]) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{metric}{{{inner}}}"


def _cases(n: SeriesNames) -> tuple[_Case, ...]:
    k = n.kernel_live_stat
    owners = {
        n.agent_label: "ag1",
        n.session_label: "s1",
        n.user_label: "u1",
        n.project_label: "p1",
    }

    def kernel(kid: str, metric: str, stat: str, values: str) -> tuple[str, dict[str, str], str]:
        return (
            k,
            {n.kernel_label: kid, n.container_metric_label: metric, n.stat_label: stat},
            values,
        )

    def owner(kid: str, metric: str, **over: str) -> tuple[str, dict[str, str], str]:
        labels = {
            **owners,
            **over,
            n.kernel_label: kid,
            n.container_metric_label: metric,
            n.value_type_label: n.current_value,
            "instance": "ag1:6003",
            "job": "backendai-agent",
        }
        return n.container_metric, labels, "1x180"

    def counter(
        kid: str, agent: str, metric: str, value_type: str, values: str
    ) -> tuple[str, dict[str, str], str]:
        labels = {
            n.kernel_label: kid,
            n.agent_label: agent,
            n.container_metric_label: metric,
            n.value_type_label: {"current": n.current_value, "rate": n.rate_value}[value_type],
            "instance": f"{agent}:6003",
            "job": "backendai-agent",
        }
        return n.container_metric, labels, values

    def who(kid: str, **over: str) -> dict[str, str]:
        return {**owners, **over, n.kernel_label: kid}

    def rule_series(metric: str, group: str, values: str) -> tuple[str, dict[str, str], str]:
        labels = {"instance": "prom:9090", "job": "prometheus", "rule_group": group}
        return metric, labels, values

    kgroup = "/etc/prometheus/rules/promstat-kernel.rules.yml;promstat.kernel.live_stat"
    agroup = "/etc/prometheus/rules/promstat-agent.rules.yml;promstat.agent.live_stat"
    other = "/etc/prometheus/rules/node.rules.yml;node.rules"
    rgroup = {"instance": "prom:9090", "job": "prometheus"}

    def svc(metric: str, inst: str, values: str, **labels: str) -> tuple[str, dict[str, str], str]:
        return metric, {"instance": inst, "job": "manager", **labels}, values

    buckets = ("1", "5", "15", "30", "60", "120", "300", "+Inf")

    def histogram(inst: str, first: str) -> list[tuple[str, dict[str, str], str]]:
        # every observation falls in the bucket whose bound is `first` and above
        out = []
        for le in buckets:
            above = le == "+Inf" or float(le) >= float(first)
            out.append(
                svc("promstat_data_age_seconds_bucket", inst, "0+10x60" if above else "0x60", le=le)
            )
        return out

    device = {
        n.device_metric_label: "mem",
        n.device_label: "root",
        n.value_type_label: n.current_value,
        "instance": "ag:6003",
        "job": "backendai-agent",
    }
    return (
        _Case(
            "BackendAIKernelMemoryNearLimit",
            (
                # k-oom: 95 % for 30m; k-ok: 50 %; k-late: above only from 10m; k-nocap: no limit
                kernel("k-oom", "mem", "current", "950x30"),
                kernel("k-oom", "mem", "capacity", "1000x30"),
                owner("k-oom", "mem"),
                # a relabelled kernel: the agent's "undefined" ownership row next to the real one
                owner(
                    "k-oom",
                    "mem",
                    **{
                        n.session_label: "undefined",
                        n.user_label: "undefined",
                        n.project_label: "undefined",
                        n.agent_label: "ag0",
                    },
                ),
                kernel("k-ok", "mem", "current", "500x30"),
                kernel("k-ok", "mem", "capacity", "1000x30"),
                owner("k-ok", "mem"),
                kernel("k-late", "mem", "current", "100x9 990x20"),
                kernel("k-late", "mem", "capacity", "1000x30"),
                owner("k-late", "mem"),
                kernel("k-nocap", "mem", "current", "990x30"),
                kernel("k-nocap", "mem", "capacity", "0x30"),
                owner("k-nocap", "mem"),
                # another metric above its capacity is not memory
                kernel("k-ok", "cuda_mem", "current", "990x30"),
                kernel("k-ok", "cuda_mem", "capacity", "1000x30"),
            ),
            quiet_at="10m",
            firing_at="20m",
            firing=((who("k-oom"), 95.0),),
        ),
        _Case(
            "BackendAIKernelAcceleratorIdle",
            (
                # k-idle: 2 % for 3h; k-busy: 60 %; k-recent: idle only from 100m; k-cpu: CPU only
                kernel("k-idle", "cuda_util", "current", "2x180"),
                kernel("k-idle", "cuda_util", "capacity", "100x180"),
                owner("k-idle", "mem"),
                kernel("k-busy", "cuda_util", "current", "60x180"),
                kernel("k-busy", "cuda_util", "capacity", "100x180"),
                owner("k-busy", "mem"),
                kernel("k-recent", "cuda_util", "current", "60x100 0x80"),
                kernel("k-recent", "cuda_util", "capacity", "100x180"),
                owner("k-recent", "mem"),
                kernel("k-cpu", "cpu_util", "current", "0x180"),
                kernel("k-cpu", "cpu_util", "capacity", "1000x180"),
                owner("k-cpu", "mem"),
            ),
            quiet_at="30m",
            firing_at="150m",
            firing=(({**who("k-idle"), n.container_metric_label: "cuda_util"}, 2.0),),
        ),
        _Case(
            "BackendAIAgentNotReporting",
            (
                (n.device_metric, {**device, n.agent_label: "ag-up"}, "1x100"),
                (n.device_metric, {**device, n.agent_label: "ag-gone"}, "1x20 stale"),
                # an agent without the heartbeat metric's series is not watched
                (
                    n.device_metric,
                    {**device, n.device_metric_label: "disk", n.agent_label: "ag-x"},
                    "1x20 stale",
                ),
            ),
            quiet_at="24m",
            firing_at="35m",
            firing=(({n.agent_label: "ag-gone"}, 1.0),),
            # the lookback (1h) after the last sample (20m) has passed: resolved
            extra_quiet=("90m",),
        ),
        _Case(
            "PromstatRateSeriesMissing",
            (
                # ag-plain: a plain upstream agent (raw counters only); ag-prom: promstat's
                # exporter; ag-late: plain only from 20m on (rate series went away)
                counter("k-plain", "ag-plain", "cpu_util", "current", "0+15000x60"),
                counter("k-plain", "ag-plain", "net_rx", "current", "0+1000x60"),
                counter("k-plain", "ag-plain", "mem", "current", "100x60"),
                counter("k-prom", "ag-prom", "cpu_util", "current", "0+15000x60"),
                counter("k-prom", "ag-prom", "cpu_util", "rate", "1000x60"),
                counter("k-prom", "ag-prom", "net_rx", "current", "0+1000x60"),
                counter("k-prom", "ag-prom", "net_rx", "rate", "66x60"),
                counter("k-late", "ag-late", "cpu_util", "current", "0+15000x60"),
                counter("k-late", "ag-late", "cpu_util", "rate", "1000x20 stale"),
            ),
            quiet_at="10m",
            firing_at="40m",
            firing=(({n.agent_label: "ag-late"}, 1.0), ({n.agent_label: "ag-plain"}, 2.0)),
        ),
        _Case(
            "PromstatRuleGroupFailing",
            (
                rule_series("prometheus_rule_evaluation_failures_total", kgroup, "0+1x60"),
                rule_series("prometheus_rule_evaluation_failures_total", agroup, "3x60"),
                rule_series("prometheus_rule_evaluation_failures_total", other, "0+1x60"),
            ),
            quiet_at="5m",
            firing_at="20m",
            firing=(({**rgroup, "rule_group": kgroup}, 5.0),),
        ),
        _Case(
            "PromstatRuleGroupSlow",
            (
                rule_series("prometheus_rule_group_last_duration_seconds", kgroup, "20x60"),
                rule_series("prometheus_rule_group_interval_seconds", kgroup, "15x60"),
                rule_series("prometheus_rule_group_last_duration_seconds", agroup, "2x60"),
                rule_series("prometheus_rule_group_interval_seconds", agroup, "15x60"),
                rule_series("prometheus_rule_group_last_duration_seconds", other, "99x60"),
                rule_series("prometheus_rule_group_interval_seconds", other, "15x60"),
            ),
            quiet_at="5m",
            firing_at="20m",
            firing=(({**rgroup, "rule_group": kgroup}, 20.0),),
        ),
        _Case(
            "PromstatQueryErrors",
            (
                svc("promstat_queries_total", "m1:8080", "0+100x60"),
                svc("promstat_query_errors_total", "m1:8080", "0+10x60", error_type="timeout"),
                svc("promstat_queries_total", "m2:8080", "0+100x60"),
                svc("promstat_query_errors_total", "m2:8080", "0+1x60", error_type="timeout"),
            ),
            quiet_at="5m",
            firing_at="20m",
            firing=(({"instance": "m1:8080", "job": "manager"}, 0.1),),
        ),
        _Case(
            "PromstatDataStale",
            (*histogram("m1:8080", "300"), *histogram("m2:8080", "15")),
            quiet_at="5m",
            firing_at="20m",
            firing=(({"instance": "m1:8080", "job": "manager"}, 282.0),),
        ),
        _Case(
            "PromstatRefreshFailing",
            (
                svc("promstat_refresh_failures_total", "m1:8080", "0+6x60"),
                svc("promstat_refresh_failures_total", "m2:8080", "4x60"),
            ),
            quiet_at="5m",
            firing_at="20m",
            firing=(({"instance": "m1:8080", "job": "manager"}, 0.1),),
        ),
    )


def render_alert_tests(
    *,
    names: SeriesNames = _DEFAULT_NAMES,
    catalog: Catalog = DEFAULT_CATALOG,
    settings: AlertSettings = _DEFAULT_SETTINGS,
) -> dict[str, str]:
    """Render the ``promtool test rules`` file for the alerts of the default settings.

    Every alert has one test: before its ``for`` has elapsed nothing fires; later exactly the
    expected series fire, with labels and annotation texts checked, while the series below
    the threshold (or outside the selection) stay quiet.

    Returns:
        ``{ALERT_TESTS_FILE: YAML text}``.

    Raises:
        RuleError: the scenario does not hold for ``catalog``/``settings``.
    """
    if not alert_tests_apply(catalog=catalog, settings=settings):
        raise RuleError("the alert-test scenario needs the default alert settings")
    rules = {
        r.alert: r
        for g in build_alert_groups(names=names, catalog=catalog, settings=settings)
        for r in g.rules
    }
    tests: list[dict[str, Any]] = []
    for case in _cases(names):
        rule = rules[case.alert]
        firing = [
            {
                "exp_labels": {**labels, **rule.labels},
                "exp_annotations": rule.expand(labels, value),
            }
            for labels, value in case.firing
        ]
        checks: list[dict[str, Any]] = [
            {"eval_time": t, "alertname": case.alert, "exp_alerts": []}
            for t in (case.quiet_at, *case.extra_quiet)
        ]
        checks.insert(
            1, {"eval_time": case.firing_at, "alertname": case.alert, "exp_alerts": firing}
        )
        tests.append(
            {
                "name": case.alert,
                "interval": "1m",
                "input_series": [
                    {"series": _series_text(m, labels), "values": values}
                    for m, labels, values in case.series
                ],
                "alert_rule_test": checks,
            }
        )
    doc: dict[str, Any] = {
        "rule_files": [f"../{ALERTS_FILE}"],
        "evaluation_interval": "1m",
        "tests": tests,
    }
    command = alerts_command(settings)
    return {
        ALERT_TESTS_FILE: render_generated(
            "alert_tests.yaml.j2", command=command, body=dump_yaml(doc)
        )
    }
