"""The generated rules pass promtool's lint and their generated unit tests (Prometheus 2.42)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from promstat.catalog import DEFAULT_CATALOG
from promstat.conventions import SeriesNames
from promstat.errors import RuleError
from promstat.generate.rules import check_rules, write_rules
from promstat.profile import RuleProfile
from promstat.testing import lab

RULES_DIR = Path(__file__).resolve().parent.parent / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.rules.yml"))
TEST_FILES = sorted((RULES_DIR / "tests").glob("*.test.yml"))


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = lab.require_binary("promtool")
    return subprocess.run([promtool, *args], capture_output=True, text=True, check=False)


def test_committed_files_exist() -> None:
    """rules/ holds both rule files and both unit-test files."""
    assert [p.name for p in RULE_FILES] == ["promstat-agent.rules.yml", "promstat-kernel.rules.yml"]
    assert [p.name for p in TEST_FILES] == ["promstat-agent.test.yml", "promstat-kernel.test.yml"]


#: The kernel file writes ``stat="current"`` from two rules (gauges; rate counters) on
#: purpose, which promtool's duplicate-rules lint cannot tell from a mistake:
#: :func:`test_rules_recording_one_stat_write_disjoint_metrics` checks it instead.
_SPLIT_STATS = {"promstat-kernel.rules.yml"}


@pytest.mark.slow
@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_lint(path: Path) -> None:
    """`promtool check rules --lint=all --lint-fatal` accepts every generated file (the
    kernel file without the duplicate-rules lint, checked below)."""
    lint = "--lint=none" if path.name in _SPLIT_STATS else "--lint=all"
    proc = _promtool("check", "rules", lint, "--lint-fatal", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


_NAME_MATCHER = re.compile(r'container_metric_name(=~|!~|=|!=)"((?:[^"\\]|\\.)*)"')


def _written_metrics(expr: str, candidates: list[str]) -> set[str]:
    """Metric names a kernel rule can write: those every ``container_metric_name`` matcher
    of some selector of ``expr`` accepts (selectors without one accept every name)."""
    out: set[str] = set()
    for body in re.findall(r"\{([^{}]*)\}", expr):
        matchers = _NAME_MATCHER.findall(body)
        for name in candidates:
            ok = True
            for op, value in matchers:
                value = value.replace("\\\\", "\\")
                hit = re.fullmatch(value, name) is not None if "~" in op else name == value
                ok = ok and (hit if op in ("=~", "=") else not hit)
            if ok:
                out.add(name)
    return out


def test_rules_recording_one_stat_write_disjoint_metrics() -> None:
    """Rules of one group recording the same name and labels select disjoint metric names,
    so no series is written twice (stricter than promtool's duplicate-rules lint, which
    forbids the split outright); at least one stat is split."""
    doc = yaml.safe_load((RULES_DIR / "promstat-kernel.rules.yml").read_text(encoding="utf-8"))
    candidates = sorted({*DEFAULT_CATALOG.exact, "npu_util", "foo_mem", "cuda_util", "x_power"})
    split = 0
    for group in doc["groups"]:
        by_key: dict[tuple[str, str], list[set[str]]] = {}
        for rule in group["rules"]:
            if "container_metric_name" not in rule["expr"] and ":live_stat" not in rule["record"]:
                continue  # the profile rule (vector(1)) writes no metric
            key = (rule["record"], repr(sorted(rule.get("labels", {}).items())))
            by_key.setdefault(key, []).append(_written_metrics(rule["expr"], candidates))
        for sets in by_key.values():
            if len(sets) > 1:
                split += 1
            for i, a in enumerate(sets):
                assert a, "a rule that writes no metric"
                for b in sets[i + 1 :]:
                    assert not a & b, a & b
    assert split >= 1


@pytest.mark.slow
@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests(path: Path) -> None:
    """`promtool test rules` passes the generated scenario tests (rules and raw expressions)."""
    proc = _promtool("test", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_check_rules_runs_lint_and_tests() -> None:
    """check_rules() runs both promtool commands on a directory."""
    done = check_rules(RULES_DIR)
    assert [Path(p).name for p in done] == [p.name for p in (*RULE_FILES, *TEST_FILES)]


@pytest.mark.slow
def test_generated_tests_catch_a_wrong_value(tmp_path: Path) -> None:
    """The unit tests really compare values: a changed expectation makes promtool fail."""
    write_rules(tmp_path)
    test_file = tmp_path / "tests" / "promstat-kernel.test.yml"
    text = test_file.read_text(encoding="utf-8")
    assert "value: 165\n" in text
    test_file.write_text(text.replace("value: 165\n", "value: 166\n"), encoding="utf-8")
    with pytest.raises(RuleError, match="promtool test rules failed"):
        check_rules(tmp_path)


@pytest.mark.slow
def test_generated_tests_catch_a_sum_instead_of_max(tmp_path: Path) -> None:
    """Summing duplicates (upstream's bug) fails the duplicate-series expectations."""
    write_rules(tmp_path)
    rules = tmp_path / "promstat-kernel.rules.yml"
    text = rules.read_text(encoding="utf-8")
    rules.write_text(
        text.replace(
            "expr: max by (kernel_id, container_metric_name) (backendai",
            "expr: sum by (kernel_id, container_metric_name) (backendai",
        ),
        encoding="utf-8",
    )
    with pytest.raises(RuleError, match="promtool test rules failed"):
        check_rules(tmp_path)


@pytest.mark.slow
def test_custom_names_pass_promtool(tmp_path: Path) -> None:
    """Rules and tests rendered with custom names also pass lint and unit tests."""
    names = SeriesNames(
        container_metric="ctr_util",
        device_metric="dev_util",
        kernel_label="kid",
        agent_label="node",
        device_label="dev",
        stat_label="kind",
    )
    write_rules(tmp_path, RuleProfile.parse(names=names))
    assert len(check_rules(tmp_path)) == 4


def test_sharded_rules_pass_lint_and_the_unit_tests(tmp_path: Path) -> None:
    """With the kernel group split in four, promtool lint and the scenario's unit tests pass:
    the recorded values are the same."""
    written = write_rules(tmp_path, RuleProfile.parse(kernel_shards=4))
    assert any(p.parent.name == "tests" for p in written)
    assert "shard3of4" in (tmp_path / "promstat-kernel.rules.yml").read_text()
    assert len(check_rules(tmp_path)) == 4
