"""``promstat serve``'s rows: running kernels only, not terminated ones the agents still export.

An agent keeps a terminated kernel's series, frozen, for its detention (600 s), so counting
the kernels with series listed them as RUNNING: against the demo's churning fleet serve
counted 1,730 kernels where the demo (its fleet's own schedule) counted 1,000.
:class:`~promstat.apps.registry.PrometheusRegistry` lists the kernels whose values still
change; this test terminates kernels of a real fleet scraped by a real Prometheus and waits
until the registry lists exactly the running ones while their frozen series are still there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from promstat.apps.registry import DEFAULT_LIVE_WINDOW, PrometheusRegistry
from promstat.apps.serve import load_serve_options
from promstat.client import PrometheusClient
from promstat.errors import ConfigError
from promstat.testing import lab
from promstat.testing.sim import FleetConfig, SimulatedFleet


async def _kernel_ids(registry: PrometheusRegistry) -> list[str]:
    page = await registry.list_kernels(limit=1000, offset=0)
    assert page.total_count == len(page.items)
    return sorted(row.id for row in page.items)


@pytest.mark.slow
async def test_detained_kernels_are_not_listed_as_running(
    start_prometheus: Callable[..., lab.PrometheusProcess],
) -> None:
    """Kernels terminated (frozen, still exported) leave the list once their values stopped
    changing for the live window; the kernels with series still include them."""
    fleet = SimulatedFleet(
        FleetConfig(agents=2, kernels_per_agent=4, churn=None, measure_interval=1.0, seed=7)
    )
    await fleet.start()
    try:
        prom = await asyncio.to_thread(
            start_prometheus, scrape_targets=fleet.targets, scrape_interval="1s"
        )
        every_id = sorted(fleet.kernel_ids())
        ended = set()
        for agent_id in fleet.agent_ids():
            kernel_id = fleet.kernel_ids(agent_id=agent_id)[0]
            assert fleet.exporters[agent_id].terminate_kernel(kernel_id)
            ended.add(kernel_id)
        running = sorted(set(every_id) - ended)
        async with PrometheusClient(prom.url) as client:
            # 1 s measurements, 1 s scrapes: one measurement and two scrapes fit in 3 s.
            registry = PrometheusRegistry(client, ttl=0, live_window=3.0)
            with_series = PrometheusRegistry(client, ttl=0, live_window=None)
            deadline = time.monotonic() + 60
            while True:  # poll until the frozen kernels have aged out of the live window
                listed, exported = await _kernel_ids(registry), await _kernel_ids(with_series)
                if listed == running and exported == every_id:
                    break
                assert time.monotonic() < deadline, (listed, exported, running)
                await asyncio.sleep(0.2)
            # Stable: the running kernels keep changing, the frozen ones stay out.
            for _ in range(3):
                await asyncio.sleep(1.0)
                assert await _kernel_ids(registry) == running
    finally:
        await fleet.stop()


def test_serve_sizes_the_live_window_from_its_intervals() -> None:
    """serve's window is one measurement plus two scrapes; defaults are Backend.AI's."""
    options = load_serve_options(None, {"url": "http://prom:9090"})
    assert options.live_window() == DEFAULT_LIVE_WINDOW == 60.0
    demo = load_serve_options(
        None, {"url": "http://prom:9090", "interval": "2s", "collect_interval": "4s"}
    )
    assert demo.live_window() == 8.0
    with pytest.raises(ConfigError, match="collect_interval"):
        load_serve_options(None, {"url": "http://prom:9090", "collect_interval": "0s"})
    with pytest.raises(ConfigError, match="live_window"):
        PrometheusRegistry(object(), live_window=0)  # type: ignore[arg-type]
