"""A fault-switching HTTP proxy for tests: a real upstream, and every way the path to it breaks.

:class:`FaultProxy` listens on ``127.0.0.1`` in front of a real Prometheus (or anything that
speaks HTTP/1.1) and can be switched at run time, between two loads of a test, to one of the
:class:`Fault` kinds: healthy pass-through, connection refused (the listener is closed), reset,
hang, an nginx ``502`` HTML page, a ``503`` text/plain answer, truncated JSON, garbage bytes,
wrong-shape JSON, a Prometheus error envelope, a bad gzip body and a 50 MB garbage body.

It counts what it saw (:attr:`FaultProxy.requests`, per fault kind) and what reached the upstream
(:attr:`FaultProxy.upstream_requests`: requests forwarded and answered by it), so a test can
tell "answered from memory" from "asked the server" and assert that a recovered path is used at
once.

Where :class:`~promstat.testing.fake.FakePrometheus` answers from canned replies, this proxy keeps
the answers real (a PromQL engine, a TSDB) and breaks only the transport or the bytes, the way a
load balancer, a restarting server or a broken middlebox does.

Example::

    async with FaultProxy(prometheus.url) as proxy:
        stats = LiveStats(proxy.url)
        proxy.set_fault(Fault.RESET)
        broken = await stats.load_kernels(ids)      # every id: its own PromstatError
        proxy.set_fault(Fault.HEALTHY)
        healed = await stats.load_kernels(ids)      # values again; proxy.upstream_requests > 0

The HTTP handling is deliberately small: requests are read with their ``Content-Length`` body
(chunked request bodies are not supported: promstat's client never sends them), answers are
written with a ``Content-Length`` and kept alive unless the client asks otherwise. Healthy
requests are forwarded with an aiohttp session that does not decompress, so the upstream's
bytes reach the client unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import Counter
from enum import StrEnum
from types import TracebackType
from typing import Final, Self

import aiohttp
import yarl

__all__ = ["FAULTS", "GARBAGE_BODY_BYTES", "Fault", "FaultProxy"]


class Fault(StrEnum):
    """What the proxy does with each request (``HEALTHY``: forward it)."""

    HEALTHY = "healthy"
    #: Nothing listens: the listener is closed and open connections are dropped.
    REFUSED = "refused"
    #: The connection is reset (TCP RST) once the request has been read.
    RESET = "reset"
    #: The request is read and never answered (a wedged server or proxy).
    HANG = "hang"
    #: ``502 Bad Gateway`` with nginx's HTML page.
    BAD_GATEWAY_HTML = "502_html"
    #: ``503 Service Unavailable``, text/plain.
    UNAVAILABLE_TEXT = "503_text"
    #: ``200`` with a JSON envelope cut in the middle.
    TRUNCATED_JSON = "truncated_json"
    #: ``200`` application/json with bytes that are not JSON.
    GARBAGE = "garbage"
    #: ``200`` with a success envelope of the wrong shape (a result that is not a list).
    WRONG_SHAPE = "wrong_shape"
    #: ``500`` with a Prometheus error envelope (``errorType: internal``).
    ERROR_ENVELOPE = "error_envelope"
    #: ``200`` with ``Content-Encoding: gzip`` and a body that is not gzip.
    BAD_GZIP = "bad_gzip"
    #: ``200`` application/json with 50 MB of garbage (under the client's 64 MiB cap).
    HUGE_GARBAGE = "huge_garbage"


#: Every fault kind except :attr:`Fault.HEALTHY`, in declaration order.
FAULTS: Final = tuple(f for f in Fault if f is not Fault.HEALTHY)

#: Size of the :attr:`Fault.HUGE_GARBAGE` body: 50 MB, under the client's 64 MiB per-response
#: cap, so it is read in full and fails only in decoding (the case that needs a memory bound
#: across concurrent responses, not per response).
GARBAGE_BODY_BYTES: Final = 50_000_000

_NGINX_502: Final = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.22.1</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
_WRONG_SHAPE: Final = b'{"status":"success","data":{"resultType":"vector","result":{"oops":1}}}'
_TRUNCATED: Final = (
    b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{"kernel_id":"'
)
_ERROR_ENVELOPE: Final = (
    b'{"status":"error","errorType":"internal","error":"fault proxy: injected internal error"}'
)
_GARBAGE_CHUNK: Final = bytes(range(256)) * 4096  # 1 MiB, starts with a NUL: never JSON
# Hop-by-hop headers (RFC 9110 7.6.1) and the ones this proxy sets itself.
_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
    "upgrade", "content-length", "host",
})  # fmt: skip
_MAX_HEAD: Final = 64 * 1024
_REASONS: Final = {200: "OK", 500: "Internal Server Error", 502: "Bad Gateway",
                   503: "Service Unavailable"}  # fmt: skip


class FaultProxy:
    """An HTTP/1.1 proxy on ``127.0.0.1`` whose behaviour is switched with :meth:`set_fault`.

    Args:
        upstream: base URL of the real server (``http://127.0.0.1:PORT``).
        port: port to listen on (default: a free one, kept across :attr:`Fault.REFUSED`).

    Attributes:
        fault: the current fault kind.
        requests: requests read from clients, per fault kind in force when each arrived.
        upstream_requests: requests forwarded to the upstream and answered by it.
        upstream_failures: healthy requests the upstream did not answer (the client's
            connection is reset, as a TCP proxy in front of a stopped server would).
    """

    def __init__(self, upstream: str, *, port: int = 0) -> None:
        self.upstream = yarl.URL(upstream)
        self.fault: Fault = Fault.HEALTHY
        self.requests: Counter[Fault] = Counter()
        self.upstream_requests = 0
        self.upstream_failures = 0
        self._port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._pending: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port the proxy listens on (also while it refuses connections)."""
        if not self._port:
            raise RuntimeError("FaultProxy is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL clients use (``http://127.0.0.1:PORT``)."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Self:
        """Listen, and open the session used to forward healthy requests."""
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
        )
        await self._listen()
        return self

    async def close(self) -> None:
        """Stop listening, drop every connection and close the forwarding session."""
        if self._pending is not None:
            await self._pending
        await self._unlisten()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def set_fault(self, fault: Fault | str) -> None:
        """Switch to ``fault``; requests read from now on get it.

        Every request is answered with the fault in force when it was read, so kept-alive
        connections see a switch at once and stay usable. Switching to :attr:`Fault.REFUSED`
        closes the listener and drops the open connections too (nothing listens any more);
        switching away from it listens again on the same port. Use :meth:`switch` to wait for
        the listener.
        """
        self.fault = Fault(fault)
        previous = self._pending
        self._pending = asyncio.get_running_loop().create_task(self._apply(previous))

    async def switch(self, fault: Fault | str) -> None:
        """:meth:`set_fault`, then wait until the listener is in the state the fault needs."""
        self.set_fault(fault)
        assert self._pending is not None
        await self._pending

    def count(self) -> tuple[int, int]:
        """``(requests read, requests answered by the upstream)`` so far, for differences."""
        return sum(self.requests.values()), self.upstream_requests

    # -- listener ---------------------------------------------------------------------------

    async def _apply(self, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await previous
        if self.fault is Fault.REFUSED:
            await self._unlisten()
        elif self._server is None:
            await self._listen()

    async def _listen(self) -> None:
        # reuse_address: the port was just released by this process; TIME_WAIT must not stop
        # the listener from coming back on it.
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self._port, reuse_address=True, limit=_MAX_HEAD
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        server, self._server = self._server, None
        self._drop_connections()
        if server is not None:
            server.close()
            await server.wait_closed()

    def _drop_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    # -- one client connection --------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client (or a switch) dropped the connection
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.transport.abort()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read and answer one request; return whether the connection stays open."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # a clean close between requests
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
        lowered = {k.lower(): v for k, v in headers}
        body = await reader.readexactly(int(lowered.get("content-length", "0")))
        keep_alive = lowered.get("connection", "").lower() != "close"
        fault = self.fault
        self.requests[fault] += 1
        if fault is Fault.HEALTHY:
            return await self._forward(writer, method, target, headers, body) and keep_alive
        if fault is Fault.REFUSED:
            # A request that raced the switch on an accepted connection: drop it, as a
            # server going away does.
            return False
        if fault is Fault.RESET:
            _reset(writer)
            return False
        if fault is Fault.HANG:
            # Read until the client gives up (EOF) or the proxy drops the connection.
            while await reader.read(65536):
                pass
            return False
        if fault is Fault.HUGE_GARBAGE:
            await self._huge(writer)
            return keep_alive
        status, ctype, extra, payload = _canned(fault)
        await _respond(writer, status, [("Content-Type", ctype), *extra], payload)
        return keep_alive

    async def _forward(
        self,
        writer: asyncio.StreamWriter,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> bool:
        assert self._session is not None
        url = self.upstream.join(yarl.URL(target, encoded=True))
        sent = [(k, v) for k, v in headers if k.lower() not in _HOP]
        try:
            async with self._session.request(
                method, url, headers=sent, data=body or None, allow_redirects=False
            ) as resp:
                payload = await resp.read()
                status = resp.status
                back = [(k, v) for k, v in resp.headers.items() if k.lower() not in _HOP]
        except (aiohttp.ClientError, OSError):
            self.upstream_failures += 1
            _reset(writer)
            return False
        self.upstream_requests += 1
        await _respond(writer, status, back, payload)
        return True

    async def _huge(self, writer: asyncio.StreamWriter) -> None:
        head = _head(200, [("Content-Type", "application/json")], GARBAGE_BODY_BYTES)
        writer.write(head)
        left = GARBAGE_BODY_BYTES
        while left > 0:
            piece = _GARBAGE_CHUNK[: min(left, len(_GARBAGE_CHUNK))]
            writer.write(piece)
            left -= len(piece)
            await writer.drain()  # backpressure: the proxy never buffers the whole body
        await writer.drain()


def _canned(fault: Fault) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """Status, content type, extra headers and body of a fault answered with bytes."""
    if fault is Fault.BAD_GATEWAY_HTML:
        return 502, "text/html", [("Server", "nginx/1.22.1")], _NGINX_502
    if fault is Fault.UNAVAILABLE_TEXT:
        return 503, "text/plain; charset=utf-8", [], b"Service Unavailable\n"
    if fault is Fault.TRUNCATED_JSON:
        return 200, "application/json", [], _TRUNCATED
    if fault is Fault.GARBAGE:
        return 200, "application/json", [], b"\x00\x9f\xfe garbage \xff\x00" * 64
    if fault is Fault.WRONG_SHAPE:
        return 200, "application/json", [], _WRONG_SHAPE
    if fault is Fault.ERROR_ENVELOPE:
        return 500, "application/json", [], _ERROR_ENVELOPE
    if fault is Fault.BAD_GZIP:
        return 200, "application/json", [("Content-Encoding", "gzip")], b"not gzip at all" * 8
    raise AssertionError(f"{fault} is not answered with canned bytes")


def _head(status: int, headers: list[tuple[str, str]], length: int) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _respond(
    writer: asyncio.StreamWriter, status: int, headers: list[tuple[str, str]], body: bytes
) -> None:
    writer.write(_head(status, headers, len(body)) + body)
    await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
