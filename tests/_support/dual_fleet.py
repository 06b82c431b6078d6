"""A dual-publishing simulated fleet on real servers, shared by the compat/compare tests.

Prometheus holds the fleet's raw series (backfilled from
:func:`~promstat.testing.sim.fleet_openmetrics`,
the same value functions the live exporters serve); redis holds what the legacy agent wrote,
produced by a :class:`~promstat.testing.sim.SimulatedFleet` stepped through the same sample times
with
a :class:`~promstat.migration.publisher.ValkeyPublisher` listening to its exporters. Both come from
one measurement per step, so the comparison is exact where the semantics are the same.

Times: the agents measure on their own timers (per-agent phases from the seed) every ``STEP``
seconds, which is also their node interval and the backfill's scrape step, so every sample
holds one measurement and every measurement is in one sample, as when an agent's collection
interval equals the scrape interval. The epoch and the step are aligned so the raw plan's
window subquery (``[window:interval]``) evaluates exactly the steps the publisher saw. The
publisher's first step also observes the measurement before it (the fleet catches up so its
first rate is there), so it starts one step after ``at - window``: its lifetime statistics
cover the same 21 measurements as the window (Prometheus 2 ranges include their left end).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from promstat.migration.publisher import ValkeyPublisher, replay
from promstat.testing import lab
from promstat.testing.sim import FleetConfig, SimulatedFleet, fleet_openmetrics

EPOCH = 1_700_000_010  # a multiple of the step, so subquery steps fall on samples
STEP = 15
AT = EPOCH + 900
#: Steps the publisher replays: ``AT - 5m + STEP`` .. ``AT``; with the measurement before the
#: first, the 21 measurements of the 5m window at a 15s step.
LEGACY_TIMES = [AT - 300 + i * STEP for i in range(1, 21)]


@dataclass
class DualFleet:
    """Running servers and the fleet model behind them."""

    prometheus: lab.PrometheusProcess
    redis: lab.ManagedProcess
    fleet: SimulatedFleet
    config: FleetConfig
    at: float = AT


def fleet_config(agents: int, kernels_per_agent: int, **kwargs: object) -> FleetConfig:
    """A fleet without churn (terminated kernels' frozen legacy keys are another test).

    By default the agents measure every step (their node interval too); ``kwargs`` override.
    """
    # the node interval the agents measure at, on their own timers: one step, one scrape
    kwargs.setdefault("node_interval", STEP)
    kwargs.setdefault("measure_interval", kwargs["node_interval"])
    return FleetConfig(
        agents=agents,
        kernels_per_agent=kernels_per_agent,
        epoch=EPOCH,
        churn=None,
        **kwargs,  # type: ignore[arg-type]
    )


@contextmanager
def dual_fleet(
    config: FleetConfig,
    *,
    tamper: Callable[[str], str] | None = None,
) -> Iterator[DualFleet]:
    """Start Prometheus (backfilled) and redis (replayed legacy payloads) for ``config``.

    Args:
        config: the fleet.
        tamper: rewrites the OpenMetrics text before the backfill (a broken new pipeline).
    """
    text = fleet_openmetrics(config, AT - 900, AT, STEP)
    if tamper is not None:
        text = tamper(text)
    with lab.start_prometheus(openmetrics=text) as prom, lab.start_redis() as redis:
        now = [0.0]
        publisher = ValkeyPublisher.from_url(redis.url, node_interval=STEP, auto_flush=False)
        fleet = SimulatedFleet(config, clock=lambda: now[0], listeners=[publisher])

        async def publish() -> None:
            for t in LEGACY_TIMES:
                now[0] = t
                await replay(fleet, publisher, [t])
            await publisher.close()

        asyncio.run(publish())
        yield DualFleet(prometheus=prom, redis=redis, fleet=fleet, config=config)
