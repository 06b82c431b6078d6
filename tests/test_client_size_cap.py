"""The client's response size cap (``max_response_bytes``): enforced while the body streams.

A real streaming HTTP server sends bodies far larger than the cap (plain and gzip), so the test
can see how much the server managed to send before the client hung up, and how much memory the
client allocated meanwhile. A real Prometheus checks the cap on genuine answers, and that the
planner splits a chunk whose answer is too large, as it does for any ``QueryTooLargeError``.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from aiohttp import web

from promstat.client import DEFAULT_MAX_RESPONSE_BYTES, PrometheusClient
from promstat.errors import ConfigError, QueryTooLargeError, ResponseTooLargeError
from promstat.planner import Planner, PlannerConfig
from promstat.selfmetrics import PromstatMetrics
from promstat.testing import lab
from promstat.testing.fake import openmetrics_text

MiB = 1024 * 1024
T0 = 1_700_000_040


@dataclass
class Streamer:
    """What the streaming server sent, per request."""

    url: str = ""
    sent: int = 0  # body bytes written to the socket (compressed bytes for gzip)
    finished: bool = False


def _series_chunk(n: int, start: int) -> bytes:
    rows = (
        json.dumps({"metric": {"kernel_id": f"k{i:08d}", "stat": "current"},
                    "value": [T0, "1.5"]})
        for i in range(start, start + n)
    )
    return ",".join(rows).encode()


@pytest.fixture
async def streamer() -> AsyncIterator[Streamer]:
    """A real HTTP server whose ``/api/v1/query`` streams ~200 MiB of valid vector JSON.

    ``?gzip=1`` in the path prefix (``/gz``) sends it gzip-compressed; ``/len`` declares a
    ``Content-Length`` of 200 MiB up front.
    """
    state = Streamer()
    total = 200 * MiB

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        zipper = None
        if request.path.startswith("/gz/"):
            resp.headers["Content-Encoding"] = "gzip"
            zipper = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing
        head = b'{"status":"success","data":{"resultType":"vector","result":['
        if request.path.startswith("/len/"):
            resp.content_length = total
        await resp.prepare(request)
        produced, start = 0, 0
        piece = head
        try:
            while produced < total:
                data = zipper.compress(piece) if zipper is not None else piece
                await resp.write(data)
                # behaviour, not synchronisation: a streaming server yields to its reader
                await asyncio.sleep(0)  # the client shares this loop: let it read
                state.sent += len(data)
                produced += len(piece)
                piece = (b"," if start else b"") + _series_chunk(500, start)
                start += 500
        except (ConnectionResetError, ConnectionError):
            return resp  # the client hung up: what the test wants to see
        state.finished = True
        return resp

    app = web.Application()
    for prefix in ("", "/gz", "/len"):
        app.router.add_post(f"{prefix}/api/v1/query", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("prefix", ["", "/gz"])
async def test_a_body_past_the_cap_stops_streaming(streamer: Streamer, prefix: str) -> None:
    """The read stops at the cap: typed error naming it, server cut off, memory ~ the cap."""
    cap = 4 * MiB
    async with PrometheusClient(streamer.url + prefix, max_response_bytes=cap) as prom:
        tracemalloc.start()
        try:
            with pytest.raises(ResponseTooLargeError) as info:
                await prom.query_vector("up", time=T0)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    err = info.value
    assert isinstance(err, QueryTooLargeError)  # the planner splits on it
    assert err.limit == cap and err.query == "up"
    assert err.url.endswith("/api/v1/query")
    assert f"max_response_bytes={cap}" in str(err)
    assert not streamer.finished
    # The server could write at most what fits in socket buffers after the client stopped
    # (a few MiB, however compressible), never the 200 MiB body.
    assert streamer.sent < 40 * MiB
    # The client kept about the cap (bytearray growth doubles it at worst), not the body.
    assert peak < 3 * cap + 4 * MiB, peak


async def test_a_declared_length_past_the_cap_fails_before_reading(streamer: Streamer) -> None:
    """A ``Content-Length`` above the cap is refused without reading the body."""
    async with PrometheusClient(streamer.url + "/len", max_response_bytes=MiB) as prom:
        with pytest.raises(ResponseTooLargeError) as info:
            await prom.query_vector("up", time=T0)
    assert info.value.limit == MiB
    assert not streamer.finished


def test_the_cap_is_validated() -> None:
    """A cap below one byte is a configuration error; ``None`` disables it."""
    with pytest.raises(ConfigError, match="max_response_bytes"):
        PrometheusClient("http://127.0.0.1:9090", max_response_bytes=0)
    PrometheusClient("http://127.0.0.1:9090", max_response_bytes=None)
    assert DEFAULT_MAX_RESPONSE_BYTES >= 10_000 * 2618  # a fleet-wide 10,000-kernel answer


@pytest.mark.slow
async def test_real_prometheus_answers_under_and_over_the_cap(
    prometheus_empty: lab.PrometheusProcess,
) -> None:
    """A genuine answer decodes under the cap and fails with the typed error above it."""
    query = 'label_replace(vector(1), "promstat_cap", "x", "", "")'
    async with PrometheusClient(prometheus_empty.url, max_response_bytes=4096) as prom:
        res = await prom.query_vector(query, time=T0)
        assert [s.metric for s in res.series] == [{"promstat_cap": "x"}]
        size = res.response_bytes
    assert 0 < size < 4096
    async with PrometheusClient(prometheus_empty.url, max_response_bytes=size - 1) as prom:
        with pytest.raises(ResponseTooLargeError) as info:
            await prom.query_vector(query, time=T0)
    assert info.value.limit == size - 1 and info.value.query == query


def _recorded(n: int) -> str:
    rows = []
    for i in range(n):
        base = {"kernel_id": str(uuid.UUID(int=i + 1, version=4)),
                "container_metric_name": "cpu_util"}
        for stat, value in (("current", 500.0), ("capacity", 1000.0)):
            rows.append(("kernel_metric:backendai_container_utilization:live_stat",
                         {**base, "stat": stat}, T0 + 600, value))
    return openmetrics_text(rows)


@pytest.mark.slow
async def test_the_planner_splits_a_chunk_whose_answer_is_too_large(
    start_prometheus: Callable[..., lab.PrometheusProcess],
) -> None:
    """A 64-kernel chunk over the cap is halved until each answer fits; every id is served."""
    prom = start_prometheus(openmetrics=_recorded(64))
    ids = [str(uuid.UUID(int=i + 1, version=4)) for i in range(64)]
    metrics = PromstatMetrics()
    # One kernel's two rows are ~200 bytes: 64 kernels do not fit in 4 KiB, 16 do.
    async with PrometheusClient(prom.url, max_response_bytes=4096, observer=metrics) as client:
        planner = Planner(client, PlannerConfig(use_recorded=True, fleet_fraction=None),
                          metrics=metrics)
        out = await planner.kernels(ids, at=T0 + 607)
    assert metrics.snapshot().chunk_splits >= 2
    assert all(isinstance(out.payloads[i], dict) for i in ids), out.payloads
    assert out.payloads[ids[0]]["cpu_util"]["pct"] == "50"  # type: ignore[index]


@pytest.mark.parametrize(
    ("url", "compress", "encoding"),
    [
        ("http://127.0.0.1:9090", None, "identity"),
        ("http://localhost:9090", None, "identity"),
        ("http://[::1]:9090", None, "identity"),
        ("http://10.0.0.5:9090", None, "gzip"),
        ("http://prometheus:9090", None, "gzip"),
        ("http://127.0.0.1:9090", True, "gzip"),
        ("http://prometheus:9090", False, "identity"),
    ],
)
def test_compression_defaults_to_off_on_loopback(
    url: str, compress: bool | None, encoding: str
) -> None:
    """gzip is asked for across a network, not from a Prometheus on this machine."""
    client = PrometheusClient(url, compress=compress)
    assert client._headers["Accept-Encoding"] == encoding
