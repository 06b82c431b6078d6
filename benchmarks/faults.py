"""The fault matrix: every fault kind, cold and warm, during the fault and right after it.

Usage::

    python -m benchmarks.faults                 # 300 kernels on 10 agents, every fault kind
    python -m benchmarks.faults --faults reset,hang --json /tmp/faults.json

A real Prometheus holds a backfilled simulated fleet; a
:class:`~promstat.testing.proxy.FaultProxy` sits in front of it. For each fault kind and each
mode one fresh :class:`~promstat.service.LiveStats` (over the proxy) loads every kernel id (and
two ids that do not exist) and every agent id, concurrently, as one page showing both would:

* **during**: with the proxy switched to the fault;
* **after**: the moment the proxy is switched back to healthy, the same ids again.

Modes:

* ``cold``: nothing cached, nothing detected; the first load the instance makes is during the
  fault (a manager that starts while Prometheus is down, or whose plan detection expired).
* ``warm``: one healthy load first (plan detected, cache filled), then the cache entries
  expire (a ``cache_ttl`` of 0.2 s, waited out) before the fault, so the load during the fault
  has to ask the server. A warm cache that is still fresh would answer from memory and never
  see the fault; expiry is the case where pages meet the outage.

Per phase the row gives the ids answered (every requested id must get a value, ``None`` or its
own :class:`~promstat.errors.PromstatError`), how many were errors and values, the requests that
reached the upstream Prometheus, and the wall time. ``tests/test_fault_matrix.py`` runs the same
cases and asserts: during a fault every id is answered and nothing that was an error is cached;
right after it every id has its value and the queries reached the upstream. The harness itself
never asserts; it exits non-zero only when it breaks (a server does not start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from promstat.client import ClientConfig, RetryPolicy
from promstat.errors import PromstatError
from promstat.loader import CacheConfig
from promstat.planner import PlannerConfig
from promstat.refresh import RefreshConfig
from promstat.service import LiveStats
from promstat.testing import lab
from promstat.testing.proxy import FAULTS, Fault, FaultProxy
from promstat.testing.sim import FleetConfig, SimulatedFleet, fleet_openmetrics

__all__ = [
    "AT",
    "MODES",
    "CaseResult",
    "FaultFleet",
    "PhaseResult",
    "format_table",
    "load_phase",
    "make_stats",
    "run_case",
    "start_fleet",
]

EPOCH: Final = 1_700_000_010  # a multiple of the 15 s step, as in tests/_support/dual_fleet.py
STEP: Final = 15
AT: Final = EPOCH + 900
#: Ids no kernel has: they must come back ``None`` (no data), never an error, when healthy.
UNKNOWN_IDS: Final = ("00000000-0000-4000-8000-00000000dead", "not-a-kernel")
MODES: Final = ("cold", "warm")
#: Client deadline of the matrix: a hung server costs one page deadline (6 s) per load. A
#: healthy load of the 312 ids is 35 queries, 0.4 s on an idle 2-core machine but up to 3.6 s
#: measured at a load average of 9 right after a 50 MB-body fault; a shorter deadline would
#: make healthy loads fail for want of CPU, not because of a fault.
CLIENT_TIMEOUT: Final = 5.0
#: Cache TTL of the matrix's LiveStats: short, so ``warm`` can wait it out.
CACHE_TTL: Final = 0.2
_RETRY: Final = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)


@dataclass(frozen=True, slots=True)
class FaultFleet:
    """The fleet's ids (the Prometheus is the caller's to stop)."""

    prometheus: lab.PrometheusProcess
    kernel_ids: tuple[str, ...]
    agent_ids: tuple[str, ...]


def start_fleet(agents: int = 10, kernels_per_agent: int = 30) -> FaultFleet:
    """Start a Prometheus backfilled with a simulated fleet (15 minutes at a 15 s step)."""
    config = FleetConfig(
        agents=agents,
        kernels_per_agent=kernels_per_agent,
        epoch=EPOCH,
        churn=None,
        node_interval=STEP,
        measure_interval=STEP,
    )
    prom = lab.start_prometheus(openmetrics=fleet_openmetrics(config, AT - 900, AT, STEP))
    fleet = SimulatedFleet(config, clock=lambda: AT)
    return FaultFleet(prom, tuple(fleet.kernel_ids(AT)), tuple(fleet.agent_ids()))


def make_stats(url: str, *, cache_ttl: float = CACHE_TTL, **kwargs: Any) -> LiveStats:
    """The matrix's LiveStats over ``url``: plan detection on, refresh-ahead off.

    Refresh-ahead is off so every request the proxy counts comes from the loads themselves.
    """
    return LiveStats(
        url,
        planner=PlannerConfig(),
        cache=CacheConfig(ttl=cache_ttl),
        refresh=RefreshConfig(enabled=False),
        client=ClientConfig(timeout=CLIENT_TIMEOUT, retry=_RETRY),
        clock=lambda: AT,
        **kwargs,
    )


@dataclass(slots=True)
class PhaseResult:
    """One load of every id (kernels and agents together).

    Attributes:
        ids: ids requested.
        answered: ids that got a value, ``None`` or a PromstatError (anything else is a bug).
        values: ids with a payload.
        nones: ids answered ``None`` (no data).
        errors: ids answered with a PromstatError.
        error_types: error class names and how many ids got each.
        upstream: requests that reached the upstream Prometheus during the load.
        requests: requests the proxy read during the load.
        seconds: wall time of the load.
        cached: kernel and agent cache entries right after the load.
        wrong_values: kernel/agent ids whose payload differs from the healthy reference.
    """

    ids: int = 0
    answered: int = 0
    values: int = 0
    nones: int = 0
    errors: int = 0
    error_types: dict[str, int] = field(default_factory=dict)
    upstream: int = 0
    requests: int = 0
    seconds: float = 0.0
    cached: int = 0
    wrong_values: int = 0


@dataclass(slots=True)
class CaseResult:
    """One fault kind in one mode."""

    fault: str
    mode: str
    during: PhaseResult
    after: PhaseResult


async def load_phase(
    stats: LiveStats,
    proxy: FaultProxy | None,
    kernels: Sequence[str],
    agents: Sequence[str],
    reference: dict[str, Any] | None = None,
) -> tuple[PhaseResult, dict[str, Any]]:
    """Load ``kernels`` and ``agents`` at once; classify every answer.

    Returns:
        The phase's counts and the answers by id (agents prefixed ``agent:``).
    """
    before = proxy.count() if proxy is not None else (0, 0)
    started = time.perf_counter()
    k_answers, a_answers = await asyncio.gather(
        stats.load_kernels(kernels), stats.load_agents(agents)
    )
    seconds = time.perf_counter() - started
    after = proxy.count() if proxy is not None else (0, 0)
    answers: dict[str, Any] = dict(zip(kernels, k_answers, strict=True))
    answers.update({f"agent:{a}": v for a, v in zip(agents, a_answers, strict=True)})
    out = PhaseResult(ids=len(answers), seconds=seconds)
    out.requests, out.upstream = after[0] - before[0], after[1] - before[1]
    kinds: Counter[str] = Counter()
    for key, value in answers.items():
        if isinstance(value, PromstatError):
            out.errors += 1
            kinds[type(value).__name__] += 1
        elif value is None:
            out.nones += 1
        elif isinstance(value, dict):
            out.values += 1
            if reference is not None and reference.get(key) != value:
                out.wrong_values += 1
        else:
            continue  # not answered: neither a value, None nor a PromstatError
        out.answered += 1
    out.error_types = dict(kinds)
    sizes = stats.cache_sizes()
    out.cached = sizes["kernels"] + sizes["agents"]
    return out, answers


async def run_case(
    fleet: FaultFleet,
    fault: Fault,
    mode: str,
    reference: dict[str, Any] | None = None,
) -> CaseResult:
    """Run one cell of the matrix: a fresh proxy and LiveStats, the fault, then healthy."""
    kernels = [*fleet.kernel_ids, *UNKNOWN_IDS]
    agents = list(fleet.agent_ids)
    async with FaultProxy(fleet.prometheus.url) as proxy, make_stats(proxy.url) as stats:
        if mode == "warm":
            await load_phase(stats, proxy, kernels, agents)
            # Wait the cache TTL out: the warm entries expire, the detected plan does not.
            await asyncio.sleep(CACHE_TTL * 1.5)
        elif mode != "cold":
            raise ValueError(f"unknown mode {mode!r}")
        await proxy.switch(fault)
        during, _ = await load_phase(stats, proxy, kernels, agents, reference)
        await proxy.switch(Fault.HEALTHY)
        after, _ = await load_phase(stats, proxy, kernels, agents, reference)
    return CaseResult(fault.value, mode, during, after)


async def reference_answers(fleet: FaultFleet) -> dict[str, Any]:
    """What a healthy path answers for every id (the values the matrix expects after a fault)."""
    async with FaultProxy(fleet.prometheus.url) as proxy, make_stats(proxy.url) as stats:
        _, answers = await load_phase(
            stats, proxy, [*fleet.kernel_ids, *UNKNOWN_IDS], list(fleet.agent_ids)
        )
    return answers


def _errors(p: PhaseResult) -> str:
    return ",".join(f"{k}:{v}" for k, v in sorted(p.error_types.items())) or "-"


def format_table(results: Sequence[CaseResult]) -> str:
    """The matrix as an aligned text table (one row per fault kind and mode)."""
    header = ["fault", "mode", "phase", "answered", "errors", "values", "none", "upstream",
              "seconds", "error types"]  # fmt: skip
    rows = [header]
    for r in results:
        for phase, p in (("during", r.during), ("after", r.after)):
            rows.append([
                r.fault, r.mode, phase, f"{p.answered}/{p.ids}", str(p.errors), str(p.values),
                str(p.nones), str(p.upstream), f"{p.seconds:.2f}", _errors(p),
            ])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]  # fmt: skip
    return "\n".join(lines)


async def _run(
    faults: Sequence[Fault], modes: Sequence[str], fleet: FaultFleet
) -> list[CaseResult]:
    reference = await reference_answers(fleet)
    return [await run_case(fleet, f, m, reference) for f in faults for m in modes]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the matrix and print the table (and write JSON with ``--json``)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__)
    parser.add_argument("--faults", default=",".join(f.value for f in FAULTS),
                        help="comma-separated fault kinds (default: all)")
    parser.add_argument("--modes", default=",".join(MODES), help="cold,warm (default both)")
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--kernels-per-agent", type=int, default=30)
    parser.add_argument("--json", metavar="FILE", default=None)
    args = parser.parse_args(argv)
    # The table is the output: one WARNING per failed query (tests/test_quiet.py) would bury it.
    logging.getLogger("promstat").setLevel(logging.ERROR)
    faults = [Fault(f) for f in args.faults.split(",") if f]
    modes = [m for m in args.modes.split(",") if m]
    fleet = start_fleet(args.agents, args.kernels_per_agent)
    try:
        results = asyncio.run(_run(faults, modes, fleet))
    finally:
        fleet.prometheus.stop()
    print(format_table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump([asdict(r) for r in results], fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
