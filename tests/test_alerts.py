"""Tests for promstat.generate.alerts: generated files, settings, promtool unit tests, vmalert."""

from __future__ import annotations

import io
import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from promstat.apps.demo import DemoOptions, alert_summary, run_demo
from promstat.catalog import Catalog
from promstat.cli import build_parser
from promstat.conventions import SeriesNames
from promstat.errors import ConfigError, RuleError
from promstat.generate.alert_tests import alert_tests_apply, render_alert_tests
from promstat.generate.alerts import (
    ALERT_TESTS_FILE,
    ALERTS_FILE,
    AlertSettings,
    accelerator_util_matchers,
    build_alert_groups,
    check_alerts,
    demo_settings,
    render_alerts,
    write_alerts,
)
from promstat.promql import parse_duration
from promstat.testing import lab
from promstat.testing.fake import openmetrics_text

ALERTS_DIR = Path(__file__).resolve().parent.parent / "rules" / "alerts"
ALERT_NAMES = [
    "BackendAIKernelMemoryNearLimit",
    "BackendAIKernelAcceleratorIdle",
    "BackendAIAgentNotReporting",
    "PromstatRateSeriesMissing",
    "PromstatRuleGroupFailing",
    "PromstatRuleGroupSlow",
    "PromstatQueryErrors",
    "PromstatDataStale",
    "PromstatRefreshFailing",
]


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text(encoding="utf-8")
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _rules(settings: AlertSettings | None = None) -> dict[str, Any]:
    groups = build_alert_groups(settings=settings or AlertSettings())
    return {r.alert: r for g in groups for r in g.rules}


def test_committed_alerts_match_generator(tmp_path: Path) -> None:
    """rules/alerts/ is byte-identical to a fresh render (no hand edits, no stale output)."""
    write_alerts(tmp_path)
    hint = "rules/alerts/ is out of date: run `promstat alerts render --output rules/alerts`"
    assert _tree(tmp_path) == _tree(ALERTS_DIR), hint


def test_every_alert_has_annotations_labels_and_a_duration() -> None:
    """Each alert has summary, description, runbook, a severity and a `for` from the settings."""
    doc = yaml.safe_load(render_alerts()[ALERTS_FILE])
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert [r["alert"] for r in rules] == ALERT_NAMES
    for rule in rules:
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, rule["alert"]
        assert all(len(v) > 20 for v in rule["annotations"].values()), rule["alert"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert parse_duration(rule["for"]) > 0
        promql_parser.parse(rule["expr"])
    assert {g["name"] for g in doc["groups"]} == {
        "promstat.alerts.kernel",
        "promstat.alerts.agent",
        "promstat.alerts.rules",
        "promstat.alerts.service",
    }


def test_alerts_never_read_the_recorded_pct_series() -> None:
    """pct is computed as current / capacity; the recorded pct family is going away."""
    text = render_alerts()[ALERTS_FILE]
    assert SeriesNames().kernel_pct not in text
    assert ":pct" not in text


def test_settings_change_thresholds_and_durations() -> None:
    """Settings flow into expressions, `for` and the annotation texts."""
    settings = AlertSettings.from_pairs(["memory_pct=85", "memory_for=30m", "idle_window=2h"])
    rules = _rules(settings)
    memory = rules["BackendAIKernelMemoryNearLimit"]
    assert "> 85)" in memory.expr and memory.for_ == "30m"
    assert "more than 85% of its memory limit for 30m" in memory.annotations["description"]
    assert "[2h]" in rules["BackendAIKernelAcceleratorIdle"].expr
    slow = _rules(AlertSettings(rule_slow_ratio=0.8))["PromstatRuleGroupSlow"]
    assert slow.expr.endswith("* 0.8")


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        (["memory_for=soon"], "invalid duration 'soon'"),
        (["nope=1"], "invalid alert setting 'nope=1'"),
        (["memory_pct"], "invalid alert setting"),
        (["memory_pct=high"], "memory_pct needs a number"),
        (["memory_pct=-1"], "memory_pct must be a number >= 0"),
        (["data_age_quantile=2"], r"data_age_quantile must be in \(0, 1\]"),
        (["rule_group_regex=("], "rule_group_regex is not a regex"),
        (["interval=0s"], "interval must be > 0"),
        (["agent_metric="], "agent_metric must name a metric"),
    ],
)
def test_invalid_settings_are_config_errors(pairs: list[str], match: str) -> None:
    """Bad names, numbers, durations and regexes are ConfigErrors naming the setting."""
    with pytest.raises(ConfigError, match=match):
        AlertSettings.from_pairs(pairs)


def test_runbook_url_adds_an_anchor_per_alert() -> None:
    """With a runbook base URL every alert links to its own anchor."""
    settings = AlertSettings.from_pairs(["runbook_url=https://wiki.example/promstat"])
    for name, rule in _rules(settings).items():
        assert rule.annotations["runbook_url"] == f"https://wiki.example/promstat#{name.lower()}"
    assert alert_tests_apply(settings=settings)  # the scenario ignores the URL


def test_accelerator_matchers_follow_the_catalog() -> None:
    """Percent gauges (patterns and exact names) are accelerators; cpu_util is excluded."""
    assert accelerator_util_matchers() == (
        'container_metric_name=~".+_util"',
        'container_metric_name!~"cpu_util"',
    )
    catalog = Catalog.from_yaml(
        "metrics:\n  - name: tpu_duty\n    kind: gauge\n    unit_hint: percent\n"
    )
    assert accelerator_util_matchers(catalog, label="m")[0] == 'm=~"tpu_duty|.+_util"'
    bare = Catalog(exact={})
    with pytest.raises(ConfigError, match="no accelerator utilisation metric"):
        accelerator_util_matchers(bare)


def test_unit_tests_only_for_default_settings(tmp_path: Path) -> None:
    """The hand-computed scenario needs the defaults: other settings write the rules only."""
    settings = AlertSettings(memory_pct=95)
    assert not alert_tests_apply(settings=settings)
    assert [p.name for p in write_alerts(tmp_path, settings=settings)] == [ALERTS_FILE]
    with pytest.raises(RuleError, match="default alert settings"):
        render_alert_tests(settings=settings)
    header = render_alerts(settings=settings)[ALERTS_FILE].splitlines()[0]
    assert "(promstat alerts render --set memory_pct=95)" in header


def test_generated_unit_tests_cover_every_alert_firing_and_quiet() -> None:
    """One promtool test per alert, with a quiet evaluation and one with firing alerts."""
    doc = yaml.safe_load(render_alert_tests()[ALERT_TESTS_FILE])
    assert doc["rule_files"] == [f"../{ALERTS_FILE}"]
    by_alert = {t["name"]: t for t in doc["tests"]}
    assert list(by_alert) == ALERT_NAMES
    for name, test in by_alert.items():
        checks = test["alert_rule_test"]
        assert {c["alertname"] for c in checks} == {name}
        assert any(c["exp_alerts"] == [] for c in checks), name
        firing = [c for c in checks if c["exp_alerts"]]
        assert firing, name
        for check in firing:
            for alert in check["exp_alerts"]:
                assert set(alert["exp_annotations"]) == {"summary", "description", "runbook"}
                assert "{{" not in json.dumps(alert["exp_annotations"])  # expanded, not templates


def test_demo_settings_are_short_and_valid() -> None:
    """Demo durations are a few intervals; every alert still renders and parses."""
    settings = demo_settings("2s")
    assert parse_duration(settings.memory_for) <= 30
    assert settings.interval == "2s"
    for rule in _rules(settings).values():
        assert parse_duration(rule.for_) <= 60
        promql_parser.parse(rule.expr)


def test_cli_render_and_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`alerts render` writes the committed files; --set changes a setting and notes the tests."""
    parser = build_parser()
    args = parser.parse_args(["alerts", "render", "--output", str(tmp_path / "a")])
    assert args.handler(args) == 0
    assert _tree(tmp_path / "a") == _tree(ALERTS_DIR)
    out = tmp_path / "b"
    args = parser.parse_args(["alerts", "render", "--output", str(out), "--set", "memory_pct=70"])
    assert args.handler(args) == 0
    assert "only generated for the default settings" in capsys.readouterr().out
    assert "> 70)" in (out / ALERTS_FILE).read_text(encoding="utf-8")
    args = parser.parse_args(["alerts", "render", "--output", str(out), "--set", "x=1"])
    with pytest.raises(ConfigError):
        args.handler(args)


# ------------------------------------------------------------------------ promtool


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [lab.require_binary("promtool"), *args], capture_output=True, text=True, check=False
    )


@pytest.mark.slow
def test_promtool_lint_and_unit_tests_pass() -> None:
    """`promtool check rules --lint=all --lint-fatal` and `promtool test rules` pass."""
    done = check_alerts(ALERTS_DIR)
    assert [Path(p).name for p in done] == [ALERTS_FILE, Path(ALERT_TESTS_FILE).name]


@pytest.mark.slow
def test_promstat_alerts_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`promstat alerts check DIR` passes on the committed files and fails on an empty dir."""
    from promstat.cli import main

    assert main(["alerts", "check", str(ALERTS_DIR)]) == 0
    assert f"ok {ALERTS_DIR / ALERTS_FILE}" in capsys.readouterr().out
    assert main(["alerts", "check", str(tmp_path)]) == 1
    assert "no *.alerts.yaml files" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("old", "new", "alert"),
    [
        ("* 100 > 90)", "* 100 > 99)", "BackendAIKernelMemoryNearLimit"),
        ("* 100 < 5)", "* 100 < 1)", "BackendAIKernelAcceleratorIdle"),
        ("[1h])) unless", "[10m])) unless", "BackendAIAgentNotReporting"),
        (
            "unless on (kernel_id, container_metric_name)",
            "and on (kernel_id, container_metric_name)",
            "PromstatRateSeriesMissing",
        ),
        ("[5m]) > 0\n", "[5m]) > 100\n", "PromstatRuleGroupFailing"),
        ("last_duration_seconds{", "interval_seconds{", "PromstatRuleGroupSlow"),
        ("> 0.05\n", "> 0.5\n", "PromstatQueryErrors"),
        ("> 120\n", "> 600\n", "PromstatDataStale"),
        ('!="undefined"', '="undefined"', "BackendAIKernelMemoryNearLimit"),
    ],
)
def test_unit_tests_catch_a_broken_alert(tmp_path: Path, old: str, new: str, alert: str) -> None:
    """A changed threshold or selector makes that alert's promtool test fail."""
    write_alerts(tmp_path)
    path = tmp_path / ALERTS_FILE
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    proc = _promtool("test", "rules", str(tmp_path / ALERT_TESTS_FILE))
    assert proc.returncode != 0
    assert f"name: {alert}," in proc.stdout + proc.stderr


@pytest.mark.slow
def test_unit_tests_catch_a_late_alert(tmp_path: Path) -> None:
    """A longer `for` than the settings say makes the firing checks fail."""
    write_alerts(tmp_path)
    path = tmp_path / ALERTS_FILE
    path.write_text(
        path.read_text(encoding="utf-8").replace("for: 15m", "for: 25m"), encoding="utf-8"
    )
    with pytest.raises(RuleError, match="BackendAIKernelMemoryNearLimit"):
        check_alerts(tmp_path)


# ------------------------------------------------------------------------ vmalert


@pytest.mark.slow
def test_vmalert_dry_run_accepts_the_rules() -> None:
    """vmalert -dryRun validates the committed alert file (MetricsQL + templates)."""
    proc = subprocess.run(
        [lab.require_binary("vmalert"), "-dryRun", f"-rule={ALERTS_DIR / ALERTS_FILE}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


@pytest.mark.slow
def test_vmalert_fires_the_kernel_alerts_with_owner_labels(
    tmp_path: Path,
    start_victoria_metrics: Callable[..., lab.VictoriaMetricsProcess],
    start_vmalert: Callable[..., lab.ManagedProcess],
) -> None:
    """Under vmalert + VictoriaMetrics the memory and idle alerts fire with expanded texts."""
    n = SeriesNames()
    now = time.time()
    samples: list[tuple[str, dict[str, str], float, float]] = []
    for kid, mem, util in (("k-oom", 950.0, 50.0), ("k-ok", 100.0, 2.0)):
        owner = {
            n.kernel_label: kid,
            n.agent_label: "ag1",
            n.session_label: f"s-{kid}",
            n.user_label: "u1",
            n.project_label: "p1",
            n.container_metric_label: "mem",
            n.value_type_label: "current",
        }
        for i in range(20):
            t = now - 300 + 15 * i
            samples.append((n.container_metric, owner, t, 1.0))
            for metric, stat, value in (
                ("mem", "current", mem),
                ("mem", "capacity", 1000.0),
                ("cuda_util", "current", util),
                ("cuda_util", "capacity", 100.0),
            ):
                labels = {n.kernel_label: kid, n.container_metric_label: metric, n.stat_label: stat}
                samples.append((n.kernel_live_stat, labels, t, value))
    vm = start_victoria_metrics(
        openmetrics=openmetrics_text(samples),
        # the last sample stays "current" however slowly vmalert starts on a busy machine
        extra_flags=["-search.latencyOffset=1s", "-search.maxStalenessInterval=1h"],
    )
    settings = AlertSettings(memory_for="0s", idle_for="0s", idle_window="5m", interval="1s")
    (rule_file,) = write_alerts(tmp_path, settings=settings)
    vmalert = start_vmalert(
        datasource_url=vm.url,
        remote_write_url=vm.url,
        rule_files=[rule_file],
        evaluation_interval="1s",
        # vmalert refuses alerting rules without a notifier; nothing listens there
        extra_flags=[f"-notifier.url=http://127.0.0.1:{lab.free_port()}"],
    )
    wanted = {"BackendAIKernelMemoryNearLimit": "k-oom", "BackendAIKernelAcceleratorIdle": "k-ok"}
    deadline = time.monotonic() + 60
    alerts: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        alerts = _get_json(f"{vmalert.url}/api/v1/alerts")["data"]["alerts"] or []
        if {a["name"] for a in alerts} >= set(wanted):
            break
        time.sleep(0.5)
    fired = sorted((a["name"], a["labels"][n.kernel_label]) for a in alerts)
    assert fired == sorted(wanted.items()), alerts  # and nothing for the other kernel
    got = {a["name"]: a for a in alerts}
    for name, kid in wanted.items():
        alert = got[name]
        assert alert["labels"][n.kernel_label] == kid
        assert alert["labels"][n.session_label] == f"s-{kid}"
        assert alert["labels"][n.agent_label] == "ag1"
        assert f"Kernel {kid} " in alert["annotations"]["summary"]
    assert "(95.0%)" in got["BackendAIKernelMemoryNearLimit"]["annotations"]["summary"]
    assert "cuda_util 2.0%" in got["BackendAIKernelAcceleratorIdle"]["annotations"]["summary"]


# ------------------------------------------------------------------------ demo


@pytest.mark.slow
async def test_demo_loads_the_alerts_and_shows_them() -> None:
    """The demo's Prometheus evaluates the alert groups and each refresh shows an alert line."""
    out = io.StringIO()
    options = DemoOptions(duration=12, agents=1, kernels_per_agent=2, interval="1s", refresh=1)
    assert await run_demo(options, out) == 0
    text = out.getvalue()
    lines = [line for line in text.splitlines() if line.startswith("alerts: ")]
    assert lines, text
    assert all(re.fullmatch(r"alerts: \d+ firing.*, \d+ pending.*", line) for line in lines)


async def test_alert_summary_when_the_server_fails(unused_tcp_port: int) -> None:
    """A server that cannot be reached gives a one-line 'unavailable' summary, no exception."""
    from promstat.client import PrometheusClient

    async with PrometheusClient(f"http://127.0.0.1:{unused_tcp_port}", timeout=2) as client:
        summary = await alert_summary(client)
    assert summary.startswith("alerts: unavailable (")
    assert "\n" not in summary
