"""Tests for ``promstat live-stat`` against a real Prometheus with the planner scenario."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from _support.planner_data import (
    AT,
    EXPECTED_AGENTS,
    EXPECTED_KERNELS,
    K1,
    K2,
    K7,
    scenario_openmetrics,
)

from promstat.cli import main
from promstat.testing import lab

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prom() -> Iterator[lab.PrometheusProcess]:
    """A real Prometheus holding the backfilled planner scenario."""
    with lab.start_prometheus(openmetrics=scenario_openmetrics()) as proc:
        yield proc


def test_kernel_ids_print_one_json_object(
    prom: lab.PrometheusProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """Kernel ids print {id: payload or null} exactly as the planner renders them."""
    ids = list(EXPECTED_KERNELS)
    code = main(["live-stat", "--url", prom.url, "--time", str(AT), "--plan", "raw", *ids])
    assert code == 0
    assert json.loads(capsys.readouterr().out) == EXPECTED_KERNELS


def test_agent_ids_with_rfc3339_time(
    prom: lab.PrometheusProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """--agent switches to agent payloads; --time accepts RFC 3339."""
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(AT, UTC).isoformat().replace("+00:00", "Z")
    code = main(["live-stat", "--agent", "--url", prom.url, "--time", when, *EXPECTED_AGENTS])
    assert code == 0
    assert json.loads(capsys.readouterr().out) == EXPECTED_AGENTS


def test_thousands_of_ids_on_one_command_line(prom: lab.PrometheusProcess) -> None:
    """5,000 ids as arguments of one real process are all answered."""
    ids = [K1] + [str(uuid.UUID(int=i + 1, version=4)) for i in range(4999)]
    done = subprocess.run(
        [sys.executable, "-m", "promstat", "live-stat", "--url", prom.url, "--time", str(AT), *ids],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert len(out) == 5000
    assert out[K1] == EXPECTED_KERNELS[K1]
    assert sum(v is None for v in out.values()) == 4999


def test_ids_from_stdin(prom: lab.PrometheusProcess) -> None:
    """--ids-from - reads one id per line from standard input."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "promstat",
            "live-stat",
            "--url",
            prom.url,
            "--time",
            str(AT),
            "--ids-from",
            "-",
        ],
        input=f"{K1}\n\n{K1}\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {K1: EXPECTED_KERNELS[K1]}


def test_unreachable_server_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A server that refuses connections gives one error line on stderr and exit code 1."""
    url = f"http://127.0.0.1:{lab.free_port()}"
    code = main(["live-stat", "--url", url, "--timeout", "2", K1])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("promstat: error: ")


def test_no_ids_is_one_line_and_exit_1(
    prom: lab.PrometheusProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """No ids at all is a usage error reported as one line."""
    code = main(["live-stat", "--url", prom.url])
    captured = capsys.readouterr()
    assert code == 1
    assert "give at least one id" in captured.err


def test_wrong_ids_are_named_with_the_reason(
    prom: lab.PrometheusProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ids without data that look wrong are named on stderr with why; all are counted; the
    JSON still answers every id (null), exit 0."""
    other = "3467e9c9-0c47-4825-af52-bd94bb872211"  # has letters, unlike the scenario's ids
    undashed = other.replace("-", "")
    ids = [other[:8], other.upper(), undashed, f"{K1},{K2}", "agent-1", "i-0abc1234", K7]
    code = main(["live-stat", "--url", prom.url, "--time", str(AT), *ids])
    captured = capsys.readouterr()
    assert code == 0
    assert json.loads(captured.out) == dict.fromkeys(ids)
    err = captured.err.splitlines()
    assert err == [
        f"promstat: warning: kernel id {other[:8]!r} is an 8-character prefix (as the demo's table "
        "shows): give the whole kernel id, 36 characters like "
        "3467e9c9-0c47-4825-af52-bd94bb872211",
        f"promstat: warning: kernel id {other.upper()!r} is an uppercase UUID: kernel ids are "
        f"lowercase and dashed, try {other}",
        f"promstat: warning: kernel id {undashed!r} is an undashed UUID: kernel ids are lowercase "
        f"and dashed, try {other}",
        f"promstat: warning: kernel id {K1 + ',' + K2!r} is one argument with commas: give the ids "
        "as separate arguments (a b, not a,b)",
        "promstat: warning: kernel id 'agent-1' is an agent id (Prometheus has agent series "
        "for it): add --agent",
        "promstat: warning: kernel id 'i-0abc1234' looks like an agent id (i-...): add --agent",
        f"promstat: note: 7 of 7 kernel ids had no data (null): {other[:8]}, {other.upper()}, "
        f"{undashed}, ... (4 more); 6 of them look wrong (above)",
    ]


def test_kernel_id_given_with_agent_is_named(
    prom: lab.PrometheusProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kernel id passed with --agent: "drop --agent"; a right agent id: no note at all."""
    code = main(["live-stat", "--agent", "--url", prom.url, "--time", str(AT), K1])
    err = capsys.readouterr().err
    assert code == 0
    assert "kernel id (Prometheus has kernel series for it): drop --agent" in err
    assert "1 of 1 agent ids had no data" in err and "1 of them looks wrong" in err
    assert main(["live-stat", "--agent", "--url", prom.url, "--time", str(AT), "agent-1"]) == 0
    assert capsys.readouterr().err == ""


def test_ids_without_data_are_counted(
    prom: lab.PrometheusProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """Well-formed ids without data are only counted, with what that can mean."""
    code = main(["live-stat", "--url", prom.url, "--time", str(AT), K1, K7])
    (line,) = capsys.readouterr().err.splitlines()
    assert code == 0
    assert line == (
        f"promstat: note: 1 of 2 kernel ids had no data (null): {K7} (not running at that "
        "time, or not exported to this Prometheus)"
    )


def test_plan_recorded_without_the_rules_is_an_error(
    prom: lab.PrometheusProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """--plan recorded against a Prometheus without the rules: one line, load the rules."""
    code = main(["live-stat", "--url", prom.url, "--time", str(AT), "--plan", "recorded", K1])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("promstat: error: --plan recorded: ")
    assert "has no recorded series kernel_metric:backendai_container_utilization:live_stat" in line
    assert "load the rules (promstat rules render" in line


def test_closed_pipe_ends_quietly(prom: lab.PrometheusProcess) -> None:
    """`promstat live-stat ... | head -c 100`: no BrokenPipeError traceback, exit 141."""
    ids = [str(uuid.UUID(int=i + 1, version=4)) for i in range(5000)]  # ~250 KB of JSON
    proc = subprocess.Popen(
        [sys.executable, "-m", "promstat", "live-stat", "--url", prom.url, "--time", str(AT),
         "--indent", "2", *ids],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    head = proc.stdout.read(100)  # what `head -c 100` reads before it exits
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141, err
    assert head.startswith(b"{\n  ")
    assert err == ""
