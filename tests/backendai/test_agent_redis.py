"""The same comparison through real servers: the real ``ValkeyStatClient`` (valkey-glide) and
promstat's publisher (redis-py) write to a real redis-server; keys, bytes and TTLs read back
must agree. Checks what :class:`backendai.harness.FakeValkey` assumes about glide's commands."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

pytestmark = [pytest.mark.backendai, pytest.mark.slow]


async def test_real_clients_write_the_same_keys_bytes_and_ttls(
    backendai: Any, monkeypatch: pytest.MonkeyPatch, redis_server: Any
) -> None:
    from ai.backend.common.clients.valkey_client.valkey_stat.client import ValkeyStatClient
    from ai.backend.common.types import ValkeyTarget
    from redis.asyncio import from_url

    from backendai.harness import AgentRig, Container

    port = int(redis_server.url.rsplit(":", 1)[1])
    # Own databases and unique names: the server is shared by the session.
    real_db, ours_db = 5, 6
    rig = AgentRig(monkeypatch, agent_id=f"i-{uuid.uuid4().hex[:12]}")
    client = await ValkeyStatClient.create(
        ValkeyTarget(addr=f"127.0.0.1:{port}"), db_id=real_db, human_readable_name="bai-test"
    )
    ours = from_url(f"{redis_server.url}/{ours_db}")
    real = from_url(f"{redis_server.url}/{real_db}")
    rig.agent.valkey_stat_client = client
    rig.publisher.redis = ours
    try:
        cids = [uuid.uuid4().hex * 2 for _ in range(2)]
        first = Container(cpu_ns=10**9, mem=1 << 30, processes={9: (1.0, 1, 0, 0)})
        rig.start_kernel(cids[0], first)
        await rig.collect(1000.0)
        rig.start_kernel(cids[1], Container(cpu_ns=5 * 10**8, mem_limit=0, rx=None))
        rig.containers[cids[0]].cpu_ns = 31 * 10**8
        await rig.collect(1030.0)
        keys = [*rig.exporter.kernel_ids(), rig.agent_id, *cids[:1]]
        for key in keys:
            real_value, ours_value = await real.get(key), await ours.get(key)
            assert real_value is not None, key
            assert ours_value == real_value, key
            real_ttl, ours_ttl = await real.ttl(key), await ours.ttl(key)
            assert abs(real_ttl - ours_ttl) <= 1, (key, real_ttl, ours_ttl)
        assert 86399 <= await real.ttl(keys[0]) <= 86400
        assert 119 <= await real.ttl(rig.agent_id) <= 120
        assert 119 <= await real.ttl(cids[0]) <= 120
        assert await real.get(cids[1]) is None  # no process measured there: no process key
        assert await ours.get(cids[1]) is None
    finally:
        await client.close()
        await real.delete(*[k for k in (*rig.exporter.kernel_ids(), rig.agent_id, *cids)])
        await ours.delete(*[k for k in (*rig.exporter.kernel_ids(), rig.agent_id, *cids)])
        await real.aclose()
        await ours.aclose()
        await rig.close()
