"""The maintainer's patch, contrib/backendai-26.9.6.patch, applied to the installed manager.

``contrib/backendai-26.9.6.patch`` is applied to a copy of the installed ``ai.backend.manager``
and a child interpreter runs the patched resolver, service, repository and dependency
provider over a real Prometheus (kernel live_stat) and a real VictoriaMetrics (the new idle
checker's session utilization): see ``_support/backendai_patched.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _support.backendai_patched import session_openmetrics
from _support.planner_data import AT, EXPECTED_KERNELS, K1, K2, K3, scenario_openmetrics

from promstat.testing import lab

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
PATCH = REPO / "contrib" / "backendai-26.9.6.patch"

pytestmark = [pytest.mark.slow, pytest.mark.backendai]


def _manager_package() -> Path:
    try:
        import ai.backend.manager as manager
    except ImportError as exc:  # pragma: no cover - the message is the point
        pytest.fail(
            f"Backend.AI 26.9.6 is not installed ({exc}): ./dev setup installs it into the "
            "3.13 test venv (requirements/backendai-26.9.txt)"
        )
    return Path(manager.__file__).resolve().parent


def _changed_lines(patch: str) -> int:
    return sum(
        1
        for line in patch.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    )


def test_the_patch_is_small() -> None:
    """The maintainer's diff against 26.9.6 changes fewer than 30 lines."""
    assert 0 < _changed_lines(PATCH.read_text()) < 30


@pytest.fixture(scope="module")
def patched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the installed manager package with the patch applied (``patch -p1``)."""
    root = tmp_path_factory.mktemp("patched")
    target = root / "ai" / "backend" / "manager"
    shutil.copytree(
        _manager_package(), target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    done = subprocess.run(
        ["patch", "-p1", "--forward", "--batch", "-i", str(PATCH)],
        cwd=root, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "promstat" in (target / "api" / "gql_legacy" / "kernel.py").read_text()
    return root


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, str]]:
    """A Prometheus with the planner scenario and a VictoriaMetrics with 1,000 sessions."""
    with lab.start_prometheus(openmetrics=scenario_openmetrics()) as prom:
        vm = lab.start_victoria_metrics(openmetrics=session_openmetrics(AT))
        try:
            yield prom.url, vm.url
        finally:
            vm.stop()


@pytest.fixture(scope="module")
def seen(patched: Path, servers: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """What the patched manager's code answered, from a child interpreter."""
    prom_url, vm_url = servers
    out = tmp_path_factory.mktemp("seen") / "seen.json"
    env = dict(os.environ)
    # The patched copy first, so its ai.backend.manager shadows the installed one (ai and
    # ai.backend are namespace packages); then the repository and the test helpers.
    env["PYTHONPATH"] = os.pathsep.join([str(patched), str(REPO), str(TESTS)])
    done = subprocess.run(
        [sys.executable, "-m", "_support.backendai_patched", prom_url, vm_url, repr(AT),
         str(out), f"{K1},{K2}", f"{K1},{K2},{K3}"],
        env=env, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


def test_the_child_runs_the_patched_manager(seen: Any, patched: Path) -> None:
    """The resolver that ran is the patched copy's, not the installed one."""
    assert seen["kernel"]["module"].startswith(str(patched))


def test_the_resolver_answers_the_agents_payloads_for_the_ids_the_check_passed(
    seen: Any,
) -> None:
    """The patched legacy resolver returns the agent's Valkey shape from promstat for the ids
    the processor passed, and nothing for an id it did not pass, though that id is cached."""
    kernel = seen["kernel"]
    assert kernel["passed"] == [[K1, K2]]
    assert kernel["resolver"] == [EXPECTED_KERNELS[K1], EXPECTED_KERNELS[K2], None]


def test_the_unpatched_converter_still_works_on_promstats_result(seen: Any) -> None:
    """26.9's LegacyLiveStatConverter builds its superset shape from promstat's values."""
    converted = seen["kernel"]["converter"][K1]
    for metric in ("mem", "cpu_util"):
        assert converted[metric]["current"] == EXPECTED_KERNELS[K1][metric]["current"]
        assert "stats.version" in converted[metric]  # the converter's keys, not the agent's


def test_the_stat_client_reads_live_stats_from_promstat_and_the_rest_from_valkey(
    seen: Any,
) -> None:
    """While promstat runs, live-stat reads are promstat's; other reads and every read after
    shut-down are Valkey's."""
    kernel = seen["kernel"]
    assert kernel["stat_batch"] == [EXPECTED_KERNELS[K1], EXPECTED_KERNELS[K2]]
    assert kernel["stat_other"] == "valkey:AKIA"
    assert kernel["stat_batch_after"] == ["valkey", "valkey"]
    assert kernel["current_started"] and not kernel["current_after"]


def test_promstat_starts_and_stops_with_the_managers_prometheus_client(
    seen: Any, servers: tuple[str, str]
) -> None:
    """The patched dependency provider starts one LiveStats on the manager's Prometheus and
    closes it when the manager shuts down."""
    life = seen["lifecycle"]
    assert life["wrapped"] == "PromstatPrometheusClient"
    assert life["started"] and life["url"] == servers[0]
    assert life["stopped"] and life["closed"]


def test_session_utilization_is_answered_in_chunks_where_26_9_fails(seen: Any) -> None:
    """1,000 sessions in one regex are rejected by VictoriaMetrics (26.9 answers nothing);
    chunked, as the patched repository runs it, every session gets its value."""
    util = seen["utilization"]
    assert util["unchunked"] == 0
    assert util["chunked"] == util["patched"] == 1000
    assert util["chunked_values"] == [str(v) for v in range(7)]
