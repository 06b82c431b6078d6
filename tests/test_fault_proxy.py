"""The fault proxy itself: each fault looks as it should to a client, switches are immediate.

Upstream is a FakePrometheus here (fast, no real server); tests/test_fault_matrix.py runs the
same proxy in front of a real Prometheus.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from promstat.client import PrometheusClient, RetryPolicy
from promstat.errors import (
    InternalError,
    PromstatError,
    RequestTimeoutError,
    ResponseDecodeError,
    TransportError,
    UnavailableError,
)
from promstat.testing.fake import FakePrometheus, Reply
from promstat.testing.proxy import FAULTS, Fault, FaultProxy

NO_RETRY = RetryPolicy(attempts=1)


@pytest.fixture
async def proxied(aiohttp_server: Any) -> AsyncIterator[tuple[FaultProxy, FakePrometheus]]:
    """A proxy in front of a FakePrometheus answering one vector row."""
    fake = FakePrometheus()
    fake.set_reply("query", Reply.vector([({"kernel_id": "k1"}, 2.5)], at=1700000000))
    server = await aiohttp_server(fake.app)
    async with FaultProxy(str(server.make_url(""))) as proxy:
        yield proxy, fake


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault.REFUSED, TransportError),
        (Fault.RESET, TransportError),
        (Fault.HANG, RequestTimeoutError),
        (Fault.BAD_GATEWAY_HTML, UnavailableError),
        (Fault.UNAVAILABLE_TEXT, UnavailableError),
        (Fault.TRUNCATED_JSON, ResponseDecodeError),
        (Fault.GARBAGE, ResponseDecodeError),
        (Fault.WRONG_SHAPE, ResponseDecodeError),
        (Fault.ERROR_ENVELOPE, InternalError),
        (Fault.BAD_GZIP, TransportError),
        (Fault.HUGE_GARBAGE, ResponseDecodeError),
    ],
    ids=[f.value for f in FAULTS],
)
async def test_each_fault_then_healthy(
    proxied: tuple[FaultProxy, FakePrometheus], fault: Fault, expected: type[PromstatError]
) -> None:
    """The fault gives its typed error and nothing reaches upstream; healthy forwards again."""
    proxy, fake = proxied
    async with PrometheusClient(proxy.url, retry=NO_RETRY, timeout=0.5) as prom:
        assert len((await prom.query_vector("up")).series) == 1  # a kept-alive connection
        await proxy.switch(fault)
        with pytest.raises(expected) as caught:
            await prom.query_vector("up")
        assert type(caught.value) is not RequestTimeoutError or fault is Fault.HANG
        assert len(fake.requests) == 1 and proxy.upstream_requests == 1
        await proxy.switch(Fault.HEALTHY)
        result = await prom.query_vector("up")
    assert result.series[0].metric == {"kernel_id": "k1"}
    assert len(fake.requests) == 2 and proxy.upstream_requests == 2
    if fault is not Fault.REFUSED:
        assert proxy.requests[fault] == 1


async def test_refused_closes_the_port_and_healthy_reopens_it(
    proxied: tuple[FaultProxy, FakePrometheus],
) -> None:
    """While refusing nothing listens on the port; healthy listens on the same port again."""
    proxy, _ = proxied
    port = proxy.port
    await proxy.switch(Fault.REFUSED)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
    await proxy.switch(Fault.HEALTHY)
    assert proxy.port == port
    socket.create_connection(("127.0.0.1", port)).close()


async def test_reset_is_a_connection_reset(proxied: tuple[FaultProxy, FakePrometheus]) -> None:
    """A reset is an RST (ECONNRESET), not an orderly close."""
    proxy, _ = proxied
    await proxy.switch(Fault.RESET)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientOSError) as caught:
            async with session.post(f"{proxy.url}/api/v1/query", data=b"query=up"):
                pass
    assert "reset" in str(caught.value).lower()
