"""The agent half of the maintainer's patch, read through real Prometheus scrapes.

``contrib/backendai-agent-26.9.6.patch`` (two lines: ``StatContext.__init__`` calls
:func:`promstat.agent.collector.install_rate_collector`) is applied to a copy of the installed
``ai.backend.agent``. A child interpreter (``_support/backendai_agent_child.py``) runs the
patched agent's real ``StatContext`` and plugins and serves its registry through the agent's
own ``/metrics``; two real Prometheus servers scrape it, one every 1.5 s and one every 2 s,
while the agent measures every 3 s: the agent's 30 s measurement against 15 s and 20 s
scrapes, 10x faster. Kernels start, one resets its counters, one stops.

After every measurement promstat's reader (``--rates exporter`` profile, the exporter layout
an operator can render once every agent runs the patch) answers every rate field of every
kernel and of the node exactly as the real agent's Valkey payload of that measurement, once a
scrape has seen it; before that, it answers the previous measurement's value, never a blend.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from _support.waiting import poll_until

from promstat.client import PrometheusClient
from promstat.planner import Planner, PlannerConfig
from promstat.profile import RuleProfile
from promstat.testing import lab

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
MANAGER_PATCH = REPO / "contrib" / "backendai-26.9.6.patch"
AGENT_PATCH = REPO / "contrib" / "backendai-agent-26.9.6.patch"
#: The agent's measurement interval and the two scrape intervals, 10x compressed.
MEASURE = 3.0
SCRAPES = ("1500ms", "2s")
STEPS = 9
#: (metric, payload field) that carry the rate between the agent's last two measurements.
RATE_FIELDS = (
    ("cpu_util", "current"),
    ("net_rx", "current"),
    ("net_tx", "current"),
    ("io_read", "stats.rate"),
    ("io_write", "stats.rate"),
)

pytestmark = [pytest.mark.slow, pytest.mark.backendai]


def _changed_lines(patch: str) -> int:
    return sum(
        1 for line in patch.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))
    )


def test_the_whole_patch_is_small() -> None:
    """Manager and agent together change fewer than 30 lines of 26.9.6."""
    agent = _changed_lines(AGENT_PATCH.read_text())
    assert agent == 2
    assert _changed_lines(MANAGER_PATCH.read_text()) + agent < 30


def _agent_package() -> Path:
    try:
        import ai.backend.agent as agent
    except ImportError as exc:  # pragma: no cover - the message is the point
        pytest.fail(
            f"Backend.AI 26.9.6 is not installed ({exc}): ./dev setup installs it into the "
            "3.13 test venv (requirements/backendai-26.9.txt)"
        )
    return Path(agent.__file__).resolve().parent


@pytest.fixture(scope="module")
def patched_agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the installed agent package with the agent patch applied (``patch -p1``)."""
    root = tmp_path_factory.mktemp("patched-agent")
    target = root / "ai" / "backend" / "agent"
    shutil.copytree(_agent_package(), target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run(
        ["patch", "-p1", "--forward", "--batch", "-i", str(AGENT_PATCH)],
        cwd=root, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "install_rate_collector" in (target / "stats.py").read_text()
    return root


class Agent:
    """The child interpreter running the patched agent, one JSON line each way."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr

    async def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout=120)
        assert line, f"the agent child exited: {self.stderr.read_text()[-4000:]}"
        doc: dict[str, Any] = json.loads(line)
        return doc

    async def send(self, doc: Mapping[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(doc) + "\n").encode())
        await self.proc.stdin.drain()


@asynccontextmanager
async def agent_child(patched: Path, tmp_path: Path) -> AsyncIterator[tuple[Agent, dict[str, Any]]]:
    """Start the child; yield it and its hello line; quit it at the end."""
    env = dict(os.environ)
    # The patched copy first, so its ai.backend.agent shadows the installed one (ai and
    # ai.backend are namespace packages); then the repository and the test helpers.
    env["PYTHONPATH"] = os.pathsep.join([str(patched), str(REPO), str(TESTS)])
    stderr = tmp_path / "agent-child.stderr"
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "_support.backendai_agent_child",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
            env=env, cwd=str(TESTS),
        )  # fmt: skip
    agent = Agent(proc, stderr)
    try:
        hello = await agent.read()
        yield agent, hello
    finally:
        if proc.returncode is None:
            try:
                await agent.send({"op": "quit"})
                await asyncio.wait_for(proc.wait(), timeout=30)
            except (TimeoutError, ConnectionError):
                proc.kill()
                await proc.wait()


def _kernel_fields(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {
        f"{metric}.{name}": payload[metric][name]
        for metric, name in RATE_FIELDS
        if name in payload.get(metric, {})
    }


def _node_fields(payload: Mapping[str, Any]) -> dict[str, Any]:
    out = {
        f"node.{metric}.{name}": payload["node"][metric][name]
        for metric, name in RATE_FIELDS
        if name in payload.get("node", {}).get(metric, {})
    }
    for metric, name in RATE_FIELDS:
        for device, stats in payload.get("devices", {}).get(metric, {}).items():
            if name in stats:
                out[f"devices.{metric}.{device}.{name}"] = stats[name]
    return out


def _rate_fields(
    kernels: Mapping[str, Any], agent_id: str, node: Mapping[str, Any]
) -> dict[str, Any]:
    """Every rate field of a measurement, keyed ``owner/field``."""
    out = {
        f"{kid}/{field}": value
        for kid, payload in kernels.items()
        for field, value in _kernel_fields(payload).items()
    }
    out.update({f"{agent_id}/{f}": v for f, v in _node_fields(node).items()})
    return out


async def _promstat_fields(
    planner: Planner, kernel_ids: list[str], agent_id: str, at: float
) -> dict[str, Any]:
    kernels = await planner.kernels(kernel_ids, at=at)
    agents = await planner.agents([agent_id], at=at)
    got: dict[str, Any] = {}
    for kid in kernel_ids:
        payload = kernels.payloads.get(kid)
        if isinstance(payload, dict):
            got.update({f"{kid}/{f}": v for f, v in _kernel_fields(payload).items()})
    node = agents.payloads.get(agent_id)
    if isinstance(node, dict):
        got.update({f"{agent_id}/{f}": v for f, v in _node_fields(node).items()})
    return got


def _scraped_after(wall: float) -> Callable[[Any], bool]:
    def done(result: Any) -> bool:
        return bool(result.vector) and all(float(s.value[1]) > wall for s in result.vector)

    return done


@pytest.fixture
def two_scrapers(
    start_prometheus: Callable[..., lab.PrometheusProcess],
) -> Iterator[Callable[[int], list[lab.PrometheusProcess]]]:
    def start(port: int) -> list[lab.PrometheusProcess]:
        return [
            start_prometheus(scrape_targets=[f"127.0.0.1:{port}"], scrape_interval=s)
            for s in SCRAPES
        ]

    yield start


async def test_the_patched_agents_rates_read_through_real_scrapes_equal_its_payloads(
    patched_agent: Path,
    tmp_path: Path,
    two_scrapers: Callable[[int], list[lab.PrometheusProcess]],
) -> None:
    profile = RuleProfile.parse(interval="1500ms", collect_interval="3s", rates="exporter")
    async with agent_child(patched_agent, tmp_path) as (agent, hello):
        assert hello["stats_module"].startswith(str(patched_agent)), hello  # the patched copy
        assert hello["installed"] is True  # the patch, not the test, attached the collector
        servers = two_scrapers(hello["port"])
        clients = [PrometheusClient(p.url) for p in servers]
        planners = [Planner(c, PlannerConfig(use_recorded=False), profile=profile) for c in clients]
        previous: dict[str, Any] = {}
        compared = blends_checked = 0
        try:
            for n in range(STEPS):
                await agent.send({"op": "step", "n": n})
                measured = await agent.read()
                wall, agent_id = measured["wall"], measured["agent_id"]
                truth = _rate_fields(measured["kernels"], agent_id, measured["node"])
                kernel_ids = sorted(measured["kernels"])
                assert truth, measured
                for planner, client, scrape in zip(planners, clients, SCRAPES, strict=True):
                    if previous:
                        # Before a scrape has seen this measurement: the last one, not a blend.
                        early = await _promstat_fields(planner, kernel_ids, agent_id, time.time())
                        for key, value in early.items():
                            assert value in (truth.get(key), previous.get(key)), (scrape, n, key)
                            blends_checked += 1
                    await poll_until(
                        lambda c=client: c.query('timestamp(up{job="promstat"})'),
                        _scraped_after(wall),
                        timeout=30,
                        what=f"a {scrape} scrape after measurement {n}",
                    )
                    got = await _promstat_fields(planner, kernel_ids, agent_id, time.time())
                    diff = {k: (v, got.get(k)) for k, v in truth.items() if got.get(k) != v}
                    assert not diff, (scrape, n, diff)
                    compared += len(truth)
                previous = truth
                # behaviour, not synchronisation: the agent measures on its own timer
                await asyncio.sleep(max(0.0, wall + MEASURE - time.time()))
        finally:
            for planner in planners:
                await planner.aclose()
            for client in clients:
                await client.aclose()
    # 2-3 kernels x 5 fields + the node's, on both scrape grids, every step
    print(f"rate fields compared: {compared}, before-scrape answers checked: {blends_checked}")
    assert compared > STEPS * 2 * 10, compared
    assert blends_checked > 0
