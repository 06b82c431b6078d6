"""The benchmark's ``upstream_real`` contender runs the installed 26.9.6 code, and the port agrees.

``benchmarks.contenders.Upstream`` re-implements 26.9's query builder and converter;
``benchmarks.upstream_real.RealUpstream`` runs the installed ones. On the same fleet and page
they must send the same number of queries and build the same payloads, except where the port
predates 26.9 (the ``cpu_util`` unit hint: ``"millicores"`` since upstream PR #14642).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from bai_manager import require
from dual_fleet import DualFleet, dual_fleet, fleet_config

from benchmarks.contenders import OPTIONAL_CONTENDERS, Upstream, make_contender
from benchmarks.upstream_real import RealUpstream

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fleet() -> Iterator[DualFleet]:
    # 300 kernels: three DataLoader batches of at most 128 ids
    with dual_fleet(fleet_config(3, 100, gpu_agent_ratio=0.34)) as running:
        yield running


def test_the_real_upstream_and_the_port_build_the_same_pages(fleet: DualFleet) -> None:
    require("ai.backend.manager.clients.prometheus.client")
    ids = fleet.fleet.kernel_ids(fleet.at)
    assert len(ids) == 300

    async def run() -> None:
        real = make_contender(
            "upstream_real",
            prom_url=fleet.prometheus.url,
            redis_url=fleet.redis.url,
            at=fleet.at,
            per_kernel_cap=None,
        )
        assert isinstance(real, RealUpstream) and "upstream_real" in OPTIONAL_CONTENDERS
        port = Upstream(fleet.prometheus.url, fleet.at)
        await real.start()
        await port.start()
        try:
            real_page, port_page = await real.load(ids), await port.load(ids)
            assert real_page.found == port_page.found == len(ids)
            assert real_page.errors == port_page.errors == 0
            assert real_page.queries == port_page.queries == 6 * 3
            # the same PromQL text: the same answers, byte for byte
            assert real_page.response_bytes == port_page.response_bytes > 0
            real_payloads = await real.payloads(ids)
            port_payloads = await port._batch(ids[:128]) + await port._batch(ids[128:256])
            port_payloads += await port._batch(ids[256:])
            for kernel_id, mine, theirs in zip(ids, port_payloads, real_payloads, strict=True):
                assert mine is not None and theirs is not None
                assert theirs["cpu_util"]["unit_hint"] == "millicores"
                assert mine["cpu_util"]["unit_hint"] == "percent"  # the port predates 26.9
                theirs["cpu_util"]["unit_hint"] = "percent"
                assert dict(mine) == {m: dict(v) for m, v in theirs.items()}, kernel_id
        finally:
            await real.close()
            await port.close()

    asyncio.run(run())
