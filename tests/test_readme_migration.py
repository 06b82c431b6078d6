"""The README's "Migrating off Valkey" section, run: every command and snippet in it.

Commands and snippets are extracted from between the ``migration-begin``/``migration-end``
markers and run against a dual-publishing simulated fleet (real Prometheus and redis) with the
placeholder URLs replaced. Mirrored, not verbatim, in two documented ways: ``promstat
compare`` gets ``--time`` (the fleet's data is historical), and ``Utilization(prom)`` gets
``use_recorded=False`` and a clock at the data's time (the backfilled fleet has no recording
rules and lies in the past).
"""

from __future__ import annotations

import ast
import inspect
import re
import shlex
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from dual_fleet import DualFleet, dual_fleet, fleet_config
from redis.asyncio import from_url

from promstat.agent.exporter import UtilizationExporter
from promstat.cli import main
from promstat.client import PrometheusClient
from promstat.service import LiveStats

README = Path(__file__).resolve().parents[1] / "README.md"
REDIS, PROM = "redis://valkey:6379/0", "http://prometheus:9090"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- migration-begin -->(.*?)<!-- migration-end -->", text, re.S)
    assert match, "README lost its migration markers"
    return match.group(1)


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", _section(), re.S)


def test_the_section_has_what_the_migration_needs() -> None:
    section = _section()
    for step in ("Dual publish", "Compare on the real fleet", "Switch the resolvers",
                 "Stop Valkey publishing", "Watch promstat afterwards"):  # fmt: skip
        assert step in section
    assert len(_blocks("python")) == 4 and len(_blocks("sh")) == 2 and len(_blocks("yaml")) == 1


@pytest.fixture(scope="module")
def fleet() -> Iterator[DualFleet]:
    with dual_fleet(fleet_config(2, 4)) as running:
        yield running


@pytest.mark.slow
def test_every_shell_command_runs(
    fleet: DualFleet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tolerance.yml").write_text(_blocks("yaml")[0])
    lines = [ln for block in _blocks("sh") for ln in block.splitlines() if ln.strip()]
    sample_output = ""
    assert sum(ln.startswith("promstat compare") for ln in lines) == 3
    for line in lines:
        line = line.replace(REDIS, fleet.redis.url).replace(PROM, fleet.prometheus.url)
        argv = shlex.split(line)
        target = None
        if ">" in argv:
            at = argv.index(">")
            argv, target = argv[:at], argv[at + 1]
        assert argv[0] == "promstat"
        if argv[1] == "compare":
            argv += ["--time", str(fleet.at)]
        code = main(argv[1:])
        out = capsys.readouterr().out
        assert code == 0, (line, out)
        if target is not None:
            (tmp_path / target).write_text(out)
        if argv[1] == "compare" and "--sample" in argv:
            sample_output = out
    assert '"ok": true' in (tmp_path / "compare.json").read_text()
    # The sample summary in the README has the shape the command prints today.
    shown = [ln for ln in _blocks("text")[0].splitlines() if ln.strip()]
    printed = {_shape(ln) for ln in sample_output.splitlines()}
    assert shown and all(_shape(ln) in printed for ln in shown), shown


def _shape(line: str) -> str:
    return re.sub(r"\d+(\.\d+)?", "N", line)


async def _run(source: str, namespace: dict[str, Any]) -> None:
    code = compile(source, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if inspect.iscoroutine(result):
        await result


@pytest.mark.slow
async def test_every_python_snippet_runs(fleet: DualFleet) -> None:
    blocks = [b.replace(REDIS, fleet.redis.url) for b in _blocks("python")]
    publish, consumers, utilization, stop = blocks
    kernel_ids = fleet.fleet.kernel_ids(fleet.at)
    sessions = [
        types.SimpleNamespace(
            id=fleet.fleet.kernel(k).session_id,
            occupied_slots={"mem": fleet.fleet.kernel(k).mem_limit},
        )
        for k in kernel_ids
    ]
    readme_kernel = str(uuid.uuid4())
    async with PrometheusClient(fleet.prometheus.url) as prom:
        ns: dict[str, Any] = {
            "exporter": UtilizationExporter(f"i-readme-{readme_kernel[:8]}"),
            "stats": LiveStats(prom, clock=lambda: fleet.at),
            "prom": prom,
            "kernel_id": kernel_ids[0],
            "kernel_ids": kernel_ids,
            "agent_ids": fleet.fleet.agent_ids(),
            "sessions": sessions,
            "metric_name": "cpu_util",
        }
        await _run(publish, ns)
        exporter: UtilizationExporter = ns["exporter"]
        exporter.add_kernel(readme_kernel)
        exporter.observe_container(readme_kernel, "mem", 512, 1024)

        await _run(consumers, ns)
        assert ns["live_stat"]["mem"]["capacity"] == str(
            fleet.fleet.kernel(kernel_ids[0]).mem_limit
        )
        assert len(ns["rows"]) == len(kernel_ids) and all(ns["rows"])
        assert msgpack.unpackb(ns["raw"][0], raw=False) == ns["rows"][0]
        assert all(row and {"node", "devices"} <= set(row) for row in ns["agent_rows"])

        mirrored = utilization.replace(
            "Utilization(prom)", "Utilization(prom, use_recorded=False, clock=lambda: at)"
        )
        assert mirrored != utilization
        ns["at"] = fleet.at
        await _run(mirrored, ns)
        assert set(ns["current"]) == {s.id for s in sessions}
        assert all(v is not None and v["cpu_util"] is not None for v in ns["current"].values())
        assert ns["value"] is not None and ns["value"] > 0

        await _run(stop, ns)  # writes what the exporter measured above
    client = from_url(fleet.redis.url)
    try:
        raw = await client.get(readme_kernel)
    finally:
        await client.aclose()
    assert raw is not None
    assert msgpack.unpackb(raw, raw=False)["mem"]["pct"] == "50"
