"""Tests for ``promstat live-stat`` against a real Prometheus with the planner scenario."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from planner_data import AT, EXPECTED_AGENTS, EXPECTED_KERNELS, K1, scenario_openmetrics

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
