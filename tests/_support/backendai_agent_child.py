"""Run in a child interpreter whose ``ai.backend.agent`` is the patched 26.9.6 copy.

``python -m _support.backendai_agent_child`` builds the real agent's ``StatContext`` and
plugins (:class:`backendai.harness.AgentRig`: docker, psutil and the clock faked at the edges),
whose patched ``__init__`` installs promstat's ``RateCollector`` in the agent's own registry,
and serves that registry through the agent's own root server (``build_root_server``: its
``/metrics``) on a free loopback port. It then obeys one JSON command per stdin line and
answers one JSON line on stdout each:

* first, unasked: ``{"port", "stats_module", "installed"}``;
* ``{"op": "step", "n": N}``: the scenario's step ``N`` (:func:`scenario`), one collection at
  agent time ``T0 + 30 N``; answers ``{"wall", "kernels": {id: payload}, "node": payload}``,
  the payloads the real agent wrote to Valkey, ``wall`` the time the collection finished;
* ``{"op": "quit"}``.

``tests/test_backendai_agent_patch.py`` is the parent (a child because the parent interpreter
already imported the unpatched agent).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

#: Agent time of step 0 (seconds of the agent's perf_counter, faked).
T0 = 1000.0
#: The agent's container/node interval (agent time).
INTERVAL = 30.0
CIDS = ("a" * 64, "b" * 64, "c" * 64)


def scenario(rig: Any, n: int) -> None:
    """Step ``n`` of the fleet: two kernels from the start, a third from step 3, a counter
    reset on the second at step 4, the first stopped after step 5 (the caller stops it)."""
    from backendai.harness import Container

    if n == 0:
        for cid in CIDS[:2]:
            rig.start_kernel(cid, Container(cpu_ns=10**9, io_read=4096, rx=1000, tx=10))
    if n == 3:
        rig.start_kernel(CIDS[2], Container(cpu_ns=5 * 10**8, io_write=512, rx=7, tx=3))
    for i, cid in enumerate(CIDS):
        c = rig.containers.get(cid)
        if c is None or n == 0:
            continue
        grow = (i + 1) * (n % 3 + 1)  # uneven growth: every rate changes between steps
        c.cpu_ns += grow * 7_500_000_000
        c.io_read += grow * 1_048_576
        c.io_write += grow * 65_536
        c.rx = (c.rx or 0) + grow * 60_000
        c.tx += grow * 1_500
        c.mem = grow << 26
        if i == 1 and n == 4:  # the container restarted its counters
            c.cpu_ns, c.io_read, c.io_write, c.rx, c.tx = 10**8, 0, 0, 5, 1
    rig.host.cores = [(u + 7.5 * (n % 2 + 1), s + 1.0) for u, s in rig.host.cores]
    rig.host.net_recv += 30_000 * (n % 4 + 1)
    rig.host.net_sent += 9_000 * (n % 2 + 1)


def _emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, default=str) + "\n")
    sys.stdout.flush()


async def main() -> None:
    """Serve the patched agent's registry and obey the parent's commands until ``quit``."""
    import ai.backend.agent.stats as bai_stats
    import pytest
    from ai.backend.agent.server import build_root_server
    from aiohttp import web
    from backendai.harness import AgentRig, unpack

    from promstat.agent.collector import RateCollector

    monkeypatch = pytest.MonkeyPatch()
    rig = AgentRig(monkeypatch)
    rig.now = T0
    installed = getattr(rig.observer, "_promstat_rate_collector", None)
    runner = web.AppRunner(build_root_server())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None and server.sockets  # type: ignore[attr-defined]
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    _emit(
        {
            "port": port,
            "stats_module": bai_stats.__file__,
            "installed": isinstance(installed, RateCollector),
        }
    )
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            cmd = json.loads(line)
            if cmd["op"] == "quit":
                break
            n = int(cmd["n"])
            if n == 6:
                await rig.stop_kernel(CIDS[0])
            scenario(rig, n)
            await rig.collect(T0 + INTERVAL * n)
            kernels = {
                str(kid): unpack(rig.valkey.store[str(kid)][0])
                for kid in rig._kernel_of.values()
                if str(kid) in rig.valkey.store
            }
            node = unpack(rig.valkey.store[str(rig.agent_id)][0])
            _emit({"wall": time.time(), "agent_id": str(rig.agent_id), "kernels": kernels,
                   "node": node})  # fmt: skip
    finally:
        await runner.cleanup()
        await rig.close()
        monkeypatch.undo()


if __name__ == "__main__":
    asyncio.run(main())
