"""Faults that heal, heal at once: every fault kind between two loads, and a Prometheus restart.

A real Prometheus holds a simulated fleet (300 kernels on 10 agents); a
:class:`~promstat.testing.proxy.FaultProxy` in front of it is switched to a fault, one
:class:`~promstat.service.LiveStats` loads every kernel id (plus two unknown ones) and every
agent id, then the proxy is switched back to healthy and the same ids are loaded again
(:mod:`benchmarks.faults` runs the cases and prints them as a table).

* During the fault every id is answered: a value, ``None`` or its own PromstatError of the
  type the fault means; nothing that was an error is cached.
* Right after it, every id has its healthy value (the same payload a healthy path gives),
  unknown ids are ``None``, and the queries reached the upstream: a recovered server is asked
  at once, not answered with a remembered failure.

Modes: ``cold`` (the first load of the instance meets the fault: nothing cached, no plan
detected) and ``warm`` (a healthy load first, then the cache entries expire, so the load during
the fault must ask the server; the detected plan is still valid). A cache that is still fresh
would never see the fault.

The restart tests stop the real Prometheus process (SIGTERM) and start it again on the same
port and data directory (:func:`promstat.testing.lab.restart_prometheus`) while pages keep
arriving every 100 ms; the first page after it is ready must be whole.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks.faults import (
    CACHE_TTL,
    MODES,
    UNKNOWN_IDS,
    FaultFleet,
    PhaseResult,
    format_table,
    load_phase,
    make_stats,
    reference_answers,
    run_case,
    start_fleet,
)
from promstat.errors import (
    InternalError,
    PromstatError,
    RequestTimeoutError,
    ResponseDecodeError,
    TransportError,
    UnavailableError,
)
from promstat.testing import lab
from promstat.testing.proxy import FAULTS, Fault

#: The errors ids get during each fault (subclasses included; RequestTimeoutError is a
#: TransportError, PageDeadlineError a RequestTimeoutError).
EXPECTED: dict[Fault, tuple[type[PromstatError], ...]] = {
    Fault.REFUSED: (TransportError,),
    Fault.RESET: (TransportError,),
    Fault.HANG: (RequestTimeoutError,),
    Fault.BAD_GATEWAY_HTML: (UnavailableError,),
    Fault.UNAVAILABLE_TEXT: (UnavailableError,),
    Fault.TRUNCATED_JSON: (ResponseDecodeError,),
    Fault.GARBAGE: (ResponseDecodeError,),
    Fault.WRONG_SHAPE: (ResponseDecodeError,),
    Fault.ERROR_ENVELOPE: (InternalError,),
    Fault.BAD_GZIP: (TransportError,),  # aiohttp cannot inflate it: a payload error
    # 35 queries x 50 MB: what does not fit in the page deadline ends with its timeout.
    Fault.HUGE_GARBAGE: (ResponseDecodeError, RequestTimeoutError),
}


@pytest.fixture(scope="module")
def fleet() -> Iterator[FaultFleet]:
    """The backfilled fleet the matrix runs against (one Prometheus for the module)."""
    running = start_fleet()
    try:
        yield running
    finally:
        running.prometheus.stop()


@pytest.fixture(scope="module")
def reference(fleet: FaultFleet) -> dict[str, Any]:
    """Every id's answer over a healthy path."""
    answers = asyncio.run(reference_answers(fleet))
    assert sum(isinstance(v, dict) for v in answers.values()) == len(answers) - len(UNKNOWN_IDS)
    return answers


def assert_answered(phase: PhaseResult, expected: tuple[type[PromstatError], ...]) -> None:
    """Every id got a value, None or a PromstatError; nothing that was an error is cached."""
    assert phase.answered == phase.ids, phase
    # Every value and None this load produced is cached; an error never is.
    assert phase.cached == phase.values + phase.nones, phase
    allowed = set().union(*(_names(cls) for cls in expected))
    assert set(phase.error_types) <= allowed, phase


def assert_healed(phase: PhaseResult, ids: int) -> None:
    """Every id has its healthy value (unknown ids None) and the upstream was asked."""
    assert phase.ids == ids, phase
    assert (phase.errors, phase.error_types) == (0, {}), phase
    assert phase.nones == len(UNKNOWN_IDS), phase
    assert phase.values == ids - len(UNKNOWN_IDS), phase
    assert phase.wrong_values == 0, phase
    assert phase.upstream > 0, phase


def _names(cls: type[PromstatError]) -> set[str]:
    out = {cls.__name__}
    for sub in cls.__subclasses__():
        out |= _names(sub)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", FAULTS, ids=[f.value for f in FAULTS])
async def test_a_fault_heals_on_the_next_load(
    fleet: FaultFleet, reference: dict[str, Any], fault: Fault, mode: str
) -> None:
    """During the fault: every id answered, errors of the fault's type, none cached.
    Right after it: every id its value, from queries that reached Prometheus."""
    result = await run_case(fleet, fault, mode, reference)
    print(f"\n{format_table([result])}")
    during, after = result.during, result.after
    assert_answered(during, EXPECTED[fault])
    # The proxy answers every request with the fault: nothing can have reached Prometheus,
    # and no id can have a value.
    assert during.upstream == 0 and during.values == 0, during
    assert_answered(after, ())
    assert_healed(after, len(reference))


def _query_requests(prom: lab.PrometheusProcess) -> int:
    """``/api/v1/query`` requests this Prometheus process has served (its own counter)."""
    with urllib.request.urlopen(f"{prom.url}/metrics", timeout=10) as resp:
        body = resp.read()
    found = re.findall(
        rb'^prometheus_http_requests_total\{code="\d+",handler="/api/v1/query"\} (\S+)$',
        body,
        re.M,
    )
    return int(sum(float(v) for v in found))


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
async def test_a_prometheus_restart_heals_on_the_first_page_after_it(
    tmp_path: Any, mode: str
) -> None:
    """SIGTERM, pages every 100 ms while it is down, restart on the same port and data dir:
    the first page after ``/-/ready`` is whole and was answered by the restarted process."""
    fleet = await asyncio.to_thread(start_fleet, 3, 10)
    prom = fleet.prometheus
    try:
        reference = await reference_answers(fleet)
        kernels, agents = [*fleet.kernel_ids, *UNKNOWN_IDS], list(fleet.agent_ids)
        async with make_stats(prom.url) as stats:
            if mode == "warm":
                warm, _ = await load_phase(stats, None, kernels, agents, reference)
                assert warm.values == len(reference) - len(UNKNOWN_IDS), warm
            await asyncio.to_thread(prom.stop, keep_data_dir=True)
            if mode == "warm":
                # behaviour, not synchronisation: the cache's TTL expires on the real clock
                await asyncio.sleep(CACHE_TTL * 1.5)  # the warm entries expire: pages ask
            # One page while it is surely down, before the restart begins: a fast restart
            # must not race the page that is to see the outage.
            first, _ = await load_phase(stats, None, kernels, agents, reference)
            down: list[PhaseResult] = [first]
            restarting = asyncio.create_task(asyncio.to_thread(lab.restart_prometheus, prom))
            for _ in range(600):  # at most a minute of pages while Prometheus starts
                if restarting.done():
                    break
                phase, _ = await load_phase(stats, None, kernels, agents, reference)
                down.append(phase)
                await asyncio.sleep(0.1)
            prom = await restarting
            assert prom.port == fleet.prometheus.port
            assert down, "Prometheus restarted before a single page met the outage"
            for phase in down:
                # Refused while down; 503 "not ready" and timeouts while it starts.
                assert_answered(phase, (TransportError, UnavailableError))
            assert any(p.errors == p.ids for p in down), down  # the outage was seen
            after, _ = await load_phase(stats, None, kernels, agents, reference)
            # No proxy here: the restarted process' own counter (0 when it started). A page
            # that met the restart half-way may have answered (and cached) some ids already.
            after.upstream = _query_requests(prom)
            print(f"\nrestart ({mode}): {len(down)} pages during the outage, after: {after}")
            assert_healed(after, len(reference))
    finally:
        prom.stop()
