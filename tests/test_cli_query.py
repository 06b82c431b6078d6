"""Tests for ``promstat query`` (promstat.cli) against a real Prometheus with backfilled data."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from promstat.cli import COMMANDS, build_parser, main, parse_time
from promstat.testing import lab
from promstat.testing.fake import openmetrics_text

pytestmark = pytest.mark.slow

T0 = 1_700_000_000
RFC3339_T0 = "2023-11-14T22:13:20Z"
METRIC = "promstat_cli_test"


@pytest.fixture(scope="module")
def prom_url() -> Iterator[str]:
    """A Prometheus with two series of METRIC backfilled up to T0."""
    samples = [
        (METRIC, {"kernel_id": "k-long-name", "container_metric_name": "cpu_util"}, T0 - 15, 1.0),
        (METRIC, {"kernel_id": "k-long-name", "container_metric_name": "cpu_util"}, T0, 12.5),
        (METRIC, {"kernel_id": "k2", "container_metric_name": "mem"}, T0, 1048576.0),
    ]
    with lab.start_prometheus(openmetrics=openmetrics_text(samples)) as proc:
        yield proc.url


def test_table_output_is_aligned(prom_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A vector prints as a header plus one aligned row per series, sorted."""
    code = main(["query", METRIC, "--url", prom_url, "--time", str(T0)])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines() == [
        "__name__           container_metric_name  kernel_id    value",
        "promstat_cli_test  cpu_util               k-long-name  12.5",
        "promstat_cli_test  mem                    k2           1048576",
    ]


def test_rfc3339_time_equals_unix_seconds(
    prom_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--time in RFC 3339 evaluates at the same instant as the Unix seconds form."""
    main(["query", METRIC, "--url", prom_url, "--time", str(T0), "--json"])
    unix = json.loads(capsys.readouterr().out)
    main(["query", METRIC, "--url", prom_url, "--time", RFC3339_T0, "--json"])
    rfc = json.loads(capsys.readouterr().out)
    assert unix == rfc
    assert parse_time(RFC3339_T0) == parse_time("2023-11-14T22:13:20")  # no offset = UTC


def test_json_output(prom_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints resultType, result in the Prometheus shape, warnings and infos."""
    code = main(
        ["query", f'{METRIC}{{kernel_id="k2"}}', "--url", prom_url, "--time", str(T0), "--json"]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {
        "resultType": "vector",
        "result": [
            {
                "metric": {"__name__": METRIC, "kernel_id": "k2", "container_metric_name": "mem"},
                "value": [T0, "1048576"],
            }
        ],
        "warnings": [],
        "infos": [],
    }


def test_scalar_and_matrix_output(prom_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Scalars print their value; range vectors print one row per sample with its timestamp."""
    assert main(["query", "1 + 1", "--url", prom_url, "--time", str(T0)]) == 0
    assert capsys.readouterr().out == "2\n"
    expr = f'{METRIC}{{kernel_id="k-long-name"}}[1m]'
    assert main(["query", expr, "--url", prom_url, "--time", str(T0)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "__name__",
        "container_metric_name",
        "kernel_id",
        "timestamp",
        "value",
    ]
    assert [line.split()[-2:] for line in lines[1:]] == [
        ["1699999985", "1"],
        ["1700000000", "12.5"],
    ]


def test_env_url_is_the_default(
    prom_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --url, $PROMSTAT_URL is used."""
    monkeypatch.setenv("PROMSTAT_URL", prom_url)
    assert main(["query", "1 + 1", "--time", str(T0)]) == 0
    assert capsys.readouterr().out == "2\n"


def test_server_error_is_one_line_exit_1(prom_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad query prints exactly one `promstat: error:` line on stderr and exits 1."""
    assert main(["query", "sum(", "--url", prom_url]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("promstat: error: bad_data (HTTP 400)")
    assert "parse error" in line


def test_unreachable_server_is_one_line_exit_1(
    unused_tcp_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Connection refused is a promstat error too: one line, exit 1, no traceback."""
    assert main(["query", "up", "--url", f"http://127.0.0.1:{unused_tcp_port}"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("promstat: error: ") and str(unused_tcp_port) in line


@pytest.mark.parametrize(
    "argv",
    [
        ["query"],
        ["query", "up", "--time", "yesterday"],
        ["query", "up", "--timeout", "0"],
        ["nope"],
        [],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """argparse usage errors exit with code 2."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert "usage: promstat" in capsys.readouterr().err


def test_subcommands_are_registered_through_commands() -> None:
    """The parser is built from COMMANDS, so other modules can add subcommands."""
    assert len(COMMANDS) >= 1
    args = build_parser().parse_args(["query", "up"])
    assert (args.command, args.expr, args.json) == ("query", "up", False)
    assert callable(args.handler)


def test_module_entry_point(prom_url: str) -> None:
    """`python -m promstat.cli query ...` runs as a process and exits 0."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "promstat.cli",
            "query",
            "1 + 1",
            "--url",
            prom_url,
            "--time",
            str(T0),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "2\n", "")
