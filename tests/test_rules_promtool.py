"""The generated rules pass promtool's lint and their generated unit tests (Prometheus 2.42)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from promstat.conventions import SeriesNames
from promstat.errors import RuleError
from promstat.generate.rules import check_rules, write_rules
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


@pytest.mark.slow
@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_lint(path: Path) -> None:
    """`promtool check rules --lint=all --lint-fatal` accepts every generated file."""
    proc = _promtool("check", "rules", "--lint=all", "--lint-fatal", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


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
    write_rules(tmp_path, names=names)
    assert len(check_rules(tmp_path)) == 4


def test_sharded_rules_pass_lint_and_the_unit_tests(tmp_path: Path) -> None:
    """With the kernel group split in four, promtool lint and the scenario's unit tests pass:
    the recorded values are the same."""
    written = write_rules(tmp_path, kernel_shards=4)
    assert any(p.parent.name == "tests" for p in written)
    assert "shard3of4" in (tmp_path / "promstat-kernel.rules.yml").read_text()
    assert len(check_rules(tmp_path)) == 4
