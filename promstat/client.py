"""PrometheusClient: an async client for the Prometheus HTTP API (aiohttp + yarl + msgspec).

What it does that the usual Python clients do not:

* POSTs form bodies by default (query text never lands in a URL a proxy may cap); GET is opt-in.
  ``/api/v1/label/<name>/values`` is GET-only in Prometheus, so its ``match[]`` goes in the URL.
* Decodes with typed msgspec decoders, optionally into a label Struct naming only the labels
  you read (:meth:`PrometheusClient.query_vector`).
* Raises one typed error per failure (:mod:`promstat.errors`); no aiohttp or msgspec exception
  escapes a public method.
* Keeps ``warnings`` and ``infos`` on every result, and the body size.
* Sends a server-side ``timeout`` smaller than its own deadline, so the server gives up (and says
  so) before the client does.
* Retries only what is worth retrying (connection refused/reset, 502/503/504, errorType
  ``unavailable``, Prometheus' plain-text "starting/stopping" 503) with full-jitter exponential
  backoff inside the deadline; never ``bad_data``, ``execution``, server ``timeout`` or 4xx.
* Reports each logical call to a :class:`QueryObserver` (``promstat.selfmetrics`` implements it).
* Bounds the response bytes it holds: per response (``max_response_bytes``, 64 MiB) and across
  all concurrent responses (``max_buffered_bytes``, a :class:`BodyBudget` of 128 MiB: at most
  budget + one response, 192 MiB, of bodies at once; reads past it wait within their deadline).

The base URL may carry a path prefix: ``http://vm:8428/prometheus``,
``http://vmselect:8481/select/0/prometheus`` or ``http://mimir/prometheus`` all work.

Example::

    async with PrometheusClient("http://127.0.0.1:9090") as prom:
        result = await prom.query_vector("up", labels=dict[str, str])
        for series in result.series:
            print(series.metric, parse_value(series.value[1]))
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import ipaddress
import random
import re
import ssl
import traceback
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, TypeVar, cast, overload

import aiohttp
import msgspec
import yarl

from promstat.api import (
    MatrixResult,
    QueryObserver,
    QueryResult,
    TimeArg,
    VectorResult,
    format_duration,
    format_time,
)
from promstat.budget import DEFAULT_MAX_BUFFERED_BYTES, BodyBudget
from promstat.errors import (
    APIError,
    ClosedError,
    ConfigError,
    PromstatError,
    QueryTimeoutError,
    RequestTimeoutError,
    ResponseDecodeError,
    ResponseTooLargeError,
    TransportError,
    UnavailableError,
    api_error_for,
    check_seconds,
)
from promstat.wire import (
    BuildInfo,
    Envelope,
    ErrorEnvelope,
    Labels,
    MatrixData,
    MetricMetadata,
    QueryData,
    RuleGroup,
    RulesData,
    ScalarData,
    StringData,
    VectorData,
    VectorSeries,
    decoder_for,
    matrix_decoder,
    query_decoder,
    series_decoder,
    vector_decoder,
    vector_parts,
)

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "ClientConfig",
    "PrometheusClient",
    "RetryPolicy",
]

L = TypeVar("L")
T = TypeVar("T")

_FORM: Final = "application/x-www-form-urlencoded"

# Form-encoded long values (query texts), as urllib.parse.quote_plus gives them: a polled page
# or a background refresh sends the same chunk queries every interval, and quoting a long
# query character by character is a measurable share of a warm page. Cleared when full (a
# pure function).
_QUOTED: dict[str, str] = {}
_QUOTED_LIMIT: Final = 256
_QUOTE_CACHED_FROM: Final = 256  # characters; shorter values are quoted directly


def _quote(value: str) -> str:
    """``urllib.parse.quote_plus(value)``, memoised for long values."""
    if len(value) < _QUOTE_CACHED_FROM:
        return urllib.parse.quote_plus(value)
    out = _QUOTED.get(value)
    if out is None:
        out = urllib.parse.quote_plus(value)
        if len(_QUOTED) >= _QUOTED_LIMIT:
            _QUOTED.clear()
        _QUOTED[value] = out
    return out


_ERROR_DECODER: Final = msgspec.json.Decoder(ErrorEnvelope)
# Share of the client deadline given to the server as its own `timeout`, so that the server's
# "query timed out" answer (a typed QueryTimeoutError) arrives before the client gives up.
_SERVER_TIMEOUT_SHARE: Final = 0.9
# Statuses whose non-JSON bodies still mean something precise: a proxy or Prometheus itself is
# not ready (502/503/504), or the request was too large for someone on the way (413/414/431).
_PLAIN_TEXT_API_STATUSES: Final = frozenset({413, 414, 431, 502, 503, 504})
_RETRY_STATUSES: Final = frozenset({502, 503, 504})
_RETRY_ERRNOS: Final = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.EPIPE,
                                  errno.ECONNABORTED})

#: Default cap of one response body (after gzip decompression), in bytes: 64 MiB.
#:
#: The largest answer promstat itself asks for is a fleet-wide recorded kernel page
#: (``max by (kernel_id, container_metric_name, stat)``); the default leaves generous headroom
#: over its measured size for a 10,000-kernel, GPU-heavy fleet (``benchmarks/README.md``,
#: "Figures the code's design relies on") and still stops a runaway answer (an unfiltered
#: query, a misconfigured proxy) long before it costs the manager hundreds of MiB.
DEFAULT_MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024

# Vector answers above this size are decoded in parts of about _DECODE_SLICE_BYTES, with the
# event loop free in between (wire.vector_slices): a part decodes well inside a loop callback's
# budget, a fleet-wide answer at once would not (benchmarks/README.md, "The event loop").
_SLICED_DECODE_BYTES: Final = 2 * 1024 * 1024
_DECODE_SLICE_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries with full-jitter exponential backoff (AWS architecture blog's "full jitter").

    The n-th retry (n = 0, 1, ...) sleeps ``uniform(0, min(max_delay, base_delay * 2**n))``.
    Retries never outlive the call's deadline: a retry whose sleep would pass it is not made.

    Attributes:
        attempts: total attempts including the first (1 disables retries).
        base_delay: backoff base in seconds.
        max_delay: cap of a single sleep in seconds.
        jitter: source of uniform [0, 1) numbers (tests pin it).
    """

    attempts: int = 3
    base_delay: float = 0.05
    max_delay: float = 1.0
    jitter: Callable[[], float] = field(default=random.random, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ConfigError("RetryPolicy delays must be >= 0")

    def delay(self, retry: int) -> float:
        """Return the sleep before retry number ``retry`` (0-based), in seconds."""
        return min(self.max_delay, self.base_delay * (2.0**retry)) * self.jitter()


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """How :class:`~promstat.service.LiveStats` builds its client from a URL.

    Every field is the :class:`PrometheusClient` argument of the same name (see there);
    durations are seconds. A client built elsewhere is passed to ``LiveStats`` itself
    instead (it is then borrowed: never closed by ``LiveStats``).

    Attributes:
        timeout: client deadline per logical call (retries included), seconds.
        server_timeout: server-side ``timeout`` to request (capped at 90% of ``timeout``).
        auth: HTTP basic auth ``(login, password)``.
        bearer_token: sent as ``Authorization: Bearer ...`` (not together with ``auth``).
        headers: extra headers on every request (``X-Scope-OrgID`` for Mimir/Cortex).
        ca_file: PEM bundle to verify the server certificate with.
        verify_tls: ``False`` disables certificate verification.
        params: extra parameters on every request (``dedup``, ``partial_response``).
        retry: retry policy.
        max_connections: connection pool size.
        method: ``"POST"`` (form bodies) or ``"GET"``.
        compress: ask for gzip (``None``: off for loopback hosts, on otherwise).
        max_response_bytes: cap of one response body after decompression (``None``: none).

    Raises:
        ConfigError: a field is invalid (the message names it).
    """

    timeout: float = 30.0
    server_timeout: float | None = None
    auth: tuple[str, str] | None = None
    bearer_token: str | None = field(default=None, repr=False)
    # hash=False: read-only mappings do not hash; the config still compares by them.
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    ca_file: str | None = None
    verify_tls: bool = True
    params: Mapping[str, str] = field(default_factory=dict, hash=False)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_connections: int = 32
    method: Literal["POST", "GET"] = "POST"
    compress: bool | None = None
    max_response_bytes: int | None = DEFAULT_MAX_RESPONSE_BYTES

    def __post_init__(self) -> None:
        check_seconds("ClientConfig.timeout", self.timeout, positive=True)
        check_seconds(
            "ClientConfig.server_timeout", self.server_timeout, positive=True, optional=True
        )
        if self.auth is not None and self.bearer_token is not None:
            raise ConfigError("ClientConfig: pass either auth or bearer_token, not both")
        if self.method not in ("POST", "GET"):
            raise ConfigError(f"ClientConfig.method must be 'POST' or 'GET', not {self.method!r}")
        if self.max_connections < 1:
            raise ConfigError(
                f"ClientConfig.max_connections must be >= 1, not {self.max_connections}"
            )
        if self.max_response_bytes is not None and self.max_response_bytes < 1:
            raise ConfigError(
                "ClientConfig.max_response_bytes must be >= 1 or None, "
                f"not {self.max_response_bytes}"
            )
        # Read-only copies: a frozen config must not change through the caller's dict.
        object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def build(
        self, url: str | yarl.URL, *, observer: QueryObserver | None = None
    ) -> PrometheusClient:
        """A new :class:`PrometheusClient` for ``url`` with these settings (the caller owns it).

        Raises:
            ConfigError: a bad URL or an unreadable CA file.
        """
        return PrometheusClient(
            url,
            timeout=self.timeout,
            server_timeout=self.server_timeout,
            auth=self.auth,
            bearer_token=self.bearer_token,
            headers=self.headers,
            ca_file=self.ca_file,
            verify_tls=self.verify_tls,
            params=self.params,
            retry=self.retry,
            max_connections=self.max_connections,
            method=self.method,
            observer=observer,
            compress=self.compress,
            max_response_bytes=self.max_response_bytes,
        )


def _format_step(step: float | str) -> str:
    if isinstance(step, str):
        return step
    if not step > 0:
        raise ConfigError(f"step must be > 0, got {step!r}")
    return f"{float(step):.3f}".rstrip("0").rstrip(".")


def _retryable_cause(cause: BaseException | None) -> bool:
    """Whether a transport failure is worth another attempt (refused/reset, not TLS/DNS)."""
    if isinstance(cause, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return True
    if isinstance(cause, aiohttp.ClientSSLError | aiohttp.ClientConnectorDNSError):
        return False
    if isinstance(cause, ConnectionError):
        return True
    if isinstance(cause, aiohttp.ClientOSError | OSError):
        return cause.errno in _RETRY_ERRNOS
    return False


def _retryable(exc: PromstatError) -> bool:
    if isinstance(exc, RequestTimeoutError):
        return False  # the deadline is spent
    if isinstance(exc, TransportError):
        return _retryable_cause(exc.__cause__)
    # A JSON 503 `timeout` means the server gave up on this query: repeating it within the same
    # deadline rarely helps, and the planner reacts by splitting instead.
    # errorType "unavailable" (TSDB not ready) comes with HTTP 500 from Prometheus itself.
    return (
        isinstance(exc, UnavailableError)
        and not isinstance(exc, QueryTimeoutError)
        and (exc.status in _RETRY_STATUSES or exc.error_type == "unavailable")
    )


def _error_kind(exc: PromstatError) -> str:
    if isinstance(exc, APIError):
        return exc.error_type or f"http_{exc.status}"
    if isinstance(exc, RequestTimeoutError):
        return "client_timeout"
    if isinstance(exc, TransportError):
        return "transport"
    if isinstance(exc, ResponseDecodeError):
        return "decode"
    return type(exc).__name__


def _wants_gzip(compress: bool | None, host: str) -> bool:
    """``compress``, or when it is ``None``: gzip unless the host is this machine."""
    if compress is not None:
        return compress
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return True  # a name: assume it is across a network


_LEADING_SPACE: Final = re.compile(rb"\s*")


def _looks_like_json(body: bytes | bytearray) -> bool:
    # Without lstrip(): it copies the whole body, 50 MB for a large garbage answer.
    start = _LEADING_SPACE.match(body)
    i = start.end() if start is not None else 0
    return body[i : i + 1] == b"{"


class PrometheusClient:
    """Async client for one Prometheus-compatible HTTP API endpoint.

    Use as an async context manager (``async with PrometheusClient(url) as prom:``) or call
    :meth:`aclose`. A session passed in is borrowed and never closed; otherwise the client owns
    one with a connection limit of ``max_connections``.

    Args:
        url: base URL, optionally with a path prefix (``/prometheus``, ``/select/0/prometheus``).
        session: an aiohttp session to borrow.
        timeout: client deadline per logical call (all retries included), in seconds.
        server_timeout: server-side ``timeout`` to request; always capped at 90% of the deadline.
        auth: HTTP basic auth: ``(login, password)`` or an :class:`aiohttp.BasicAuth`
            (deprecated by aiohttp 3.14 but accepted). Sent as an ``Authorization`` header.
        bearer_token: sent as ``Authorization: Bearer ...`` (not together with ``auth``).
        headers: extra headers on every request (e.g. ``X-Scope-OrgID`` for Mimir/Cortex).
        ca_file: PEM bundle to verify the server certificate with.
        verify_tls: ``False`` disables certificate verification.
        ssl_context: the :class:`ssl.SSLContext` to connect with (aiohttp's ``ssl=``), for
            client certificates or an internal CA that Python 3.13's stricter default
            verification rejects: ``ssl.create_default_context()`` there sets
            ``VERIFY_X509_STRICT``, which refuses CA certificates without the RFC 5280
            extensions many internal CAs lack (e.g. a critical ``basicConstraints``). Relax only
            that flag rather than verification::

                ctx = ssl.create_default_context(cafile="internal-ca.pem")
                ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
                PrometheusClient("https://prometheus.internal:9090", ssl_context=ctx)

            Not together with ``ca_file`` or ``verify_tls=False`` (the context decides both).
        params: extra parameters on every request (``dedup``, ``partial_response``, ``nocache``).
        retry: retry policy.
        max_connections: connection pool size of an owned session.
        method: ``"POST"`` (default: form bodies) or ``"GET"`` (parameters in the URL).
        observer: called once per logical call.
        compress: ask for gzip responses. ``None`` (default) decides by host: off for a
            loopback host (``localhost``, ``127.0.0.0/8``, ``::1``), on otherwise. Measured on
            the benchmark fleet over loopback, gzip made a cold 1,000-kernel page cost
            Prometheus ~18% more CPU (200 vs 170 ms), the client ~15% more (90 vs 78 ms) and
            the page ~30 ms slower, with nothing saved; across a network the smaller transfer
            (gzip shrinks a live_stat answer ~10x) usually wins. Pass ``False`` when the manager
            runs next to Prometheus on a fast LAN, ``True`` to force it.
        max_response_bytes: cap of one response body after decompression (default
            :data:`DEFAULT_MAX_RESPONSE_BYTES`, 64 MiB: a fleet-wide 10,000-kernel answer is
            about 25 MiB). Enforced while the body streams in: the read stops at the cap, the
            connection is dropped and :class:`~promstat.errors.ResponseTooLargeError` (a
            ``QueryTooLargeError``, so the planner splits the chunk) is raised. ``None``: no cap.
        max_buffered_bytes: bound of the response bytes held at once over all concurrent
            calls of this client (default :data:`DEFAULT_MAX_BUFFERED_BYTES`, 128 MiB), or a
            :class:`BodyBudget` shared with other clients of the process. A body read that
            would pass it waits, within its deadline, until others are decoded; the body read
            first never waits, so at most ``max_buffered_bytes + max_response_bytes`` of
            bodies (192 MiB by default) are held at once. Decoded results are not counted:
            they are what the caller keeps. ``None``: no bound.

    Raises:
        ConfigError: an argument is invalid (bad URL, both auth kinds, unreadable CA file,
            ssl_context together with ca_file or verify_tls).
    """

    def __init__(
        self,
        url: str | yarl.URL,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        server_timeout: float | None = None,
        auth: aiohttp.BasicAuth | tuple[str, str] | None = None,
        bearer_token: str | None = None,
        headers: Mapping[str, str] | None = None,
        ca_file: str | None = None,
        verify_tls: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        params: Mapping[str, str] | None = None,
        retry: RetryPolicy = RetryPolicy(),  # frozen, so sharing the default is safe
        max_connections: int = 32,
        method: Literal["POST", "GET"] = "POST",
        observer: QueryObserver | None = None,
        compress: bool | None = None,
        max_response_bytes: int | None = DEFAULT_MAX_RESPONSE_BYTES,
        max_buffered_bytes: int | BodyBudget | None = DEFAULT_MAX_BUFFERED_BYTES,
    ) -> None:
        base = yarl.URL(url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ConfigError(f"url must be an absolute http(s) URL, got {str(url)!r}")
        if base.query_string or base.fragment:
            raise ConfigError(f"url must not carry a query or fragment, got {str(url)!r}")
        # Normalise the prefix to end without "/" so "api/v1/..." joins below it.
        self._base = base.with_path(base.path.rstrip("/"))
        if not timeout > 0:
            raise ConfigError(f"timeout must be > 0, got {timeout!r}")
        if server_timeout is not None and not server_timeout > 0:
            raise ConfigError(f"server_timeout must be > 0, got {server_timeout!r}")
        if auth is not None and bearer_token is not None:
            raise ConfigError("pass either auth or bearer_token, not both")
        if method not in ("POST", "GET"):
            raise ConfigError(f"method must be 'POST' or 'GET', got {method!r}")
        if max_connections < 1:
            raise ConfigError(f"max_connections must be >= 1, got {max_connections}")
        if max_response_bytes is not None and max_response_bytes < 1:
            raise ConfigError(f"max_response_bytes must be >= 1 or None, got {max_response_bytes}")
        self._max_response_bytes = max_response_bytes
        self._budget: BodyBudget | None = (
            BodyBudget(max_buffered_bytes)
            if isinstance(max_buffered_bytes, int)
            else max_buffered_bytes
        )
        self._timeout = float(timeout)
        self._server_timeout = server_timeout
        self._retry = retry
        self._method = method
        self._observer = observer
        self._params = dict(params or {})
        self._max_connections = max_connections
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self._headers: dict[str, str] = {
            "Accept": "application/json",
            # gzip saves bandwidth across a network; on loopback or a fast LAN, compressing
            # a multi-megabyte page costs Prometheus more CPU than the transfer saves.
            "Accept-Encoding": "gzip" if _wants_gzip(compress, base.host) else "identity",
            "User-Agent": "promstat",
        }
        if bearer_token is not None:
            self._headers["Authorization"] = f"Bearer {bearer_token}"
        elif auth is not None:
            self._headers["Authorization"] = _basic_auth_header(auth)
        self._headers.update(headers or {})
        self._ssl: ssl.SSLContext | bool = True
        if ssl_context is not None:
            if ca_file is not None or not verify_tls:
                raise ConfigError(
                    "pass either ssl_context or ca_file/verify_tls: the context decides both"
                )
            self._ssl = ssl_context
        elif not verify_tls:
            self._ssl = False
        elif ca_file is not None:
            try:
                self._ssl = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load CA file {ca_file!r}: {exc}") from exc

    @property
    def url(self) -> yarl.URL:
        """The base URL (with its path prefix, without a trailing slash)."""
        return self._base

    @property
    def timeout(self) -> float:
        """The deadline of one logical call (retries included), in seconds."""
        return self._timeout

    async def __aenter__(self) -> PrometheusClient:
        self._get_session()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the owned session (a borrowed session is left open). Idempotent.

        A call after ``aclose()`` raises :class:`ClosedError`: opening a new session there
        would leave one nobody closes (aiohttp's "Unclosed client session").
        """
        self._closed = True
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def close(self) -> None:
        """The same as :meth:`aclose` (aiohttp's spelling)."""
        await self.aclose()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClosedError(what="PrometheusClient")
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections)
            # No aiohttp timeout: the per-call deadline (asyncio.timeout_at) governs.
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None)
            )
        return self._session

    # ------------------------------------------------------------------ endpoints

    async def query(
        self,
        query: str,
        *,
        time: TimeArg | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - deadline incl. retries
        limit: int | None = None,
        params: Mapping[str, str] | None = None,
    ) -> QueryResult:
        """Run an instant query and return whatever ``resultType`` it yields (all labels).

        Args:
            query: PromQL expression.
            time: evaluation time (default: the server's now).
            timeout: client deadline for this call (default: the client's); the server-side
                ``timeout`` is derived from it.
            limit: maximum number of series (Prometheus >= 3.2; ignored by older servers).
            params: extra parameters for this call (override client-wide ones).

        Returns:
            A :class:`QueryResult`.

        Raises:
            PromstatError: a subclass per failure (see :mod:`promstat.errors`).
        """
        pairs = self._query_pairs(query, time=time, limit=limit, timeout=timeout)
        decoder: msgspec.json.Decoder[Envelope[QueryData[Labels]]] = query_decoder(Labels)
        env, size = await self._call(
            "query", "api/v1/query", pairs, decoder, query=query,
            timeout=timeout, params=params, count=_count_query,
        )
        data = env.data
        kw: dict[str, Any] = {
            "warnings": env.warnings, "infos": env.infos, "response_bytes": size,
        }
        if isinstance(data, VectorData):
            return QueryResult("vector", vector=data.result, **kw)
        if isinstance(data, MatrixData):
            return QueryResult("matrix", matrix=data.result, **kw)
        if isinstance(data, ScalarData):
            return QueryResult("scalar", scalar=data.result, **kw)
        if isinstance(data, StringData):
            return QueryResult("string", string=data.result, **kw)
        return QueryResult("vector", **kw)  # success without data: nothing matched

    @overload
    async def query_vector(
        self, query: str, *, time: TimeArg | None = ..., timeout: float | None = ...,  # noqa: ASYNC109
        limit: int | None = ..., params: Mapping[str, str] | None = ...,
    ) -> VectorResult[Labels]: ...

    @overload
    async def query_vector(
        self, query: str, *, labels: type[L], time: TimeArg | None = ...,
        timeout: float | None = ..., limit: int | None = ...,  # noqa: ASYNC109
        params: Mapping[str, str] | None = ...,
    ) -> VectorResult[L]: ...

    async def query_vector(
        self,
        query: str,
        *,
        labels: Any = Labels,
        time: TimeArg | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - deadline incl. retries
        limit: int | None = None,
        params: Mapping[str, str] | None = None,
    ) -> VectorResult[Any]:
        """Run an instant query that must yield a vector, decoding labels into ``labels``.

        Args:
            query: PromQL expression.
            labels: ``dict[str, str]`` (default) or a msgspec Struct with the labels you need
                (``msgspec.field(name=...)`` maps a label to another attribute name).
            time: evaluation time (default: the server's now).
            timeout: client deadline for this call.
            limit: maximum number of series (Prometheus >= 3.2).
            params: extra parameters for this call.

        Returns:
            A :class:`VectorResult`.

        Raises:
            ResponseDecodeError: the result is not a vector, or a series lacks a required label.
            PromstatError: a subclass per other failure.
        """
        pairs = self._query_pairs(query, time=time, limit=limit, timeout=timeout)
        env, size = await self._call(
            "query", "api/v1/query", pairs, vector_decoder(labels), query=query,
            timeout=timeout, params=params, count=_count_result,
            parts=series_decoder(labels),
        )
        series = env.data.result if env.data is not None else []
        return VectorResult(series, env.warnings, env.infos, size)

    @overload
    async def query_range(
        self, query: str, *, start: TimeArg, end: TimeArg, step: float | str,
        timeout: float | None = ..., limit: int | None = ...,  # noqa: ASYNC109
        params: Mapping[str, str] | None = ...,
    ) -> MatrixResult[Labels]: ...

    @overload
    async def query_range(
        self, query: str, *, start: TimeArg, end: TimeArg, step: float | str, labels: type[L],
        timeout: float | None = ..., limit: int | None = ...,  # noqa: ASYNC109
        params: Mapping[str, str] | None = ...,
    ) -> MatrixResult[L]: ...

    async def query_range(
        self,
        query: str,
        *,
        start: TimeArg,
        end: TimeArg,
        step: float | str,
        labels: Any = Labels,
        timeout: float | None = None,  # noqa: ASYNC109 - deadline incl. retries
        limit: int | None = None,
        params: Mapping[str, str] | None = None,
    ) -> MatrixResult[Any]:
        """Run a range query.

        Args:
            query: PromQL expression.
            start: first evaluation time.
            end: last evaluation time.
            step: resolution in seconds, or a Prometheus duration string (``"15s"``).
            labels: label type, as for :meth:`query_vector`.
            timeout: client deadline for this call.
            limit: maximum number of series (Prometheus >= 3.2).
            params: extra parameters for this call.

        Returns:
            A :class:`MatrixResult` (series sorted by labels, samples oldest first).

        Raises:
            PromstatError: a subclass per failure.
        """
        pairs = self._query_pairs(query, time=None, limit=limit, timeout=timeout)
        pairs += [("start", format_time(start)), ("end", format_time(end)),
                  ("step", _format_step(step))]
        env, size = await self._call(
            "query_range", "api/v1/query_range", pairs, matrix_decoder(labels), query=query,
            timeout=timeout, params=params, count=_count_result,
        )
        series = env.data.result if env.data is not None else []
        return MatrixResult(series, env.warnings, env.infos, size)

    async def series(
        self,
        match: Sequence[str],
        *,
        start: TimeArg | None = None,
        end: TimeArg | None = None,
        limit: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - deadline incl. retries
        params: Mapping[str, str] | None = None,
    ) -> list[dict[str, str]]:
        """Return the label sets of series matching any of ``match`` (``/api/v1/series``).

        Args:
            match: series selectors (at least one).
            start: start of the time range.
            end: end of the time range.
            limit: maximum number of series (newer servers).
            timeout: client deadline for this call.
            params: extra parameters for this call.

        Raises:
            ConfigError: ``match`` is empty.
            PromstatError: a subclass per failure.
        """
        if isinstance(match, str) or not match:
            raise ConfigError("series() needs a non-empty sequence of selectors")
        pairs = _range_pairs(match, start, end, limit)
        env, _ = await self._call(
            "series", "api/v1/series", pairs, decoder_for(list[dict[str, str]]), query=None,
            timeout=timeout, params=params, count=_count_len,
        )
        return env.data or []

    async def labels(
        self,
        *,
        match: Sequence[str] = (),
        start: TimeArg | None = None,
        end: TimeArg | None = None,
        limit: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - deadline incl. retries
        params: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Return label names (``/api/v1/labels``), optionally only of series matching ``match``.

        Raises:
            PromstatError: a subclass per failure.
        """
        pairs = _range_pairs(_selectors(match), start, end, limit)
        env, _ = await self._call(
            "labels", "api/v1/labels", pairs, decoder_for(list[str]), query=None,
            timeout=timeout, params=params, count=_count_len,
        )
        return env.data or []

    async def label_values(
        self,
        name: str,
        *,
        match: Sequence[str] = (),
        start: TimeArg | None = None,
        end: TimeArg | None = None,
        limit: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - deadline incl. retries
        params: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Return the values of label ``name`` (``/api/v1/label/<name>/values``).

        This endpoint is GET-only in Prometheus, so ``match[]`` goes in the URL query string
        (a body on a GET is silently ignored by Go's ``ParseForm``).

        Raises:
            ConfigError: ``name`` is empty or contains ``/``.
            PromstatError: a subclass per failure.
        """
        if not name or "/" in name:
            raise ConfigError(f"invalid label name {name!r}")
        pairs = _range_pairs(_selectors(match), start, end, limit)
        env, _ = await self._call(
            "label_values", f"api/v1/label/{name}/values", pairs,
            decoder_for(list[str]), query=None, timeout=timeout, params=params,
            count=_count_len, method="GET",
        )
        return env.data or []

    async def metadata(
        self, metric: str | None = None, limit: int | None = None, *,
        timeout: float | None = None,  # noqa: ASYNC109 - deadline incl. retries
    ) -> dict[str, list[MetricMetadata]]:
        """Return metric metadata (``/api/v1/metadata``), keyed by metric name.

        Raises:
            PromstatError: a subclass per failure.
        """
        pairs: list[tuple[str, str]] = []
        if metric is not None:
            pairs.append(("metric", metric))
        if limit is not None:
            pairs.append(("limit", str(limit)))
        env, _ = await self._call(
            "metadata", "api/v1/metadata", pairs, decoder_for(dict[str, list[MetricMetadata]]),
            query=None, timeout=timeout, params=None, count=_count_len, method="GET",
        )
        return env.data or {}

    async def rules(
        self, type: Literal["record", "alert"] | None = None, *,  # the API's own parameter name
        timeout: float | None = None,  # noqa: ASYNC109 - deadline incl. retries
    ) -> list[RuleGroup]:
        """Return the rule groups the server evaluates (``/api/v1/rules``).

        Args:
            type: only recording (``"record"``) or alerting (``"alert"``) rules.
            timeout: client deadline for this call.

        Raises:
            PromstatError: a subclass per failure.
        """
        pairs: list[tuple[str, str]] = [("type", type)] if type is not None else []
        env, _ = await self._call(
            "rules", "api/v1/rules", pairs, decoder_for(RulesData), query=None,
            timeout=timeout, params=None, count=_count_groups, method="GET",
        )
        return env.data.groups if env.data is not None else []

    async def build_info(self, *, timeout: float | None = None) -> BuildInfo:  # noqa: ASYNC109
        """Return ``/api/v1/status/buildinfo`` (VictoriaMetrics always claims ``2.24.0``).

        Raises:
            PromstatError: a subclass per failure.
        """
        env, _ = await self._call(
            "buildinfo", "api/v1/status/buildinfo", [], decoder_for(BuildInfo), query=None,
            timeout=timeout, params=None, count=_count_none, method="GET",
        )
        return env.data if env.data is not None else BuildInfo()

    # ------------------------------------------------------------------ machinery

    def _query_pairs(
        self, query: str, *, time: TimeArg | None, limit: int | None, timeout: float | None
    ) -> list[tuple[str, str]]:
        deadline = self._timeout if timeout is None else timeout
        if not deadline > 0:
            raise ConfigError(f"timeout must be > 0, got {timeout!r}")
        server = deadline * _SERVER_TIMEOUT_SHARE
        if self._server_timeout is not None:
            server = min(server, self._server_timeout)
        pairs = [("query", query), ("timeout", format_duration(server))]
        if time is not None:
            pairs.append(("time", format_time(time)))
        if limit is not None:
            pairs.append(("limit", str(int(limit))))
        return pairs

    async def _call(
        self,
        endpoint: str,
        path: str,
        pairs: list[tuple[str, str]],
        decoder: msgspec.json.Decoder[Envelope[T]],
        *,
        query: str | None,
        timeout: float | None,  # noqa: ASYNC109 - deadline incl. retries
        params: Mapping[str, str] | None,
        count: Callable[[Any], int],
        method: str | None = None,
        parts: msgspec.json.Decoder[list[VectorSeries[Any]]] | None = None,
    ) -> tuple[Envelope[T], int]:
        """One logical call: attempts with retries inside one deadline, then the observer.

        ``parts`` (vector answers only) lets a large body be decoded in slices.
        """
        deadline_s = self._timeout if timeout is None else timeout
        if not deadline_s > 0:
            raise ConfigError(f"timeout must be > 0, got {timeout!r}")
        extra = {**self._params, **(params or {})}
        if extra:
            # Extra parameters win over the ones promstat sets (e.g. a caller's own timeout).
            pairs = [(k, v) for k, v in pairs if k not in extra] + list(extra.items())
        url = self._base / path
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + deadline_s
        retries = 0
        size = 0
        try:
            while True:
                try:
                    env, size = await self._attempt(
                        method or self._method, url, pairs, decoder, query=query,
                        deadline=deadline, deadline_s=deadline_s, parts=parts,
                    )
                    break
                except PromstatError as exc:
                    if retries + 1 >= self._retry.attempts or not _retryable(exc):
                        raise
                    delay = self._retry.delay(retries)
                    if loop.time() + delay >= deadline:
                        raise
                    await asyncio.sleep(delay)
                    retries += 1
        except PromstatError as exc:
            self._observe(endpoint, loop.time() - started, size, 0, _error_kind(exc), retries)
            raise
        self._observe(endpoint, loop.time() - started, size, count(env.data), None, retries)
        return env, size

    def _observe(
        self, endpoint: str, seconds: float, size: int, series: int, error: str | None,
        retries: int,
    ) -> None:
        if self._observer is None:
            return
        # An observer bug must not fail (or retry) the query it observes.
        with contextlib.suppress(Exception):
            self._observer.on_request(
                endpoint=endpoint, seconds=seconds, response_bytes=size, series=series,
                ok=error is None, error_type=error, retries=retries,
            )

    async def _attempt(
        self,
        method: str,
        url: yarl.URL,
        pairs: list[tuple[str, str]],
        decoder: msgspec.json.Decoder[Envelope[T]],
        *,
        query: str | None,
        deadline: float,
        deadline_s: float,
        parts: msgspec.json.Decoder[list[VectorSeries[Any]]] | None = None,
    ) -> tuple[Envelope[T], int]:
        """One HTTP exchange: send, read the whole body, decode or raise the typed error."""
        session = self._get_session()
        encoded = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in pairs)
        headers = self._headers
        body: bytes | None = None
        if method == "POST":
            body = encoded.encode()
            headers = {**headers, "Content-Type": _FORM}
        elif encoded:
            # Encode the query string ourselves ("+" -> %2B, space -> "+"), the way Go's
            # ParseQuery reads it, instead of relying on yarl's quoting rules.
            url = yarl.URL(f"{url}?{encoded}", encoded=True)
        holder = object()  # this attempt's share of the body budget
        try:
            return await self._exchange(session, method, url, body, headers, decoder,
                                        query=query, deadline=deadline,
                                        deadline_s=deadline_s, parts=parts, holder=holder)
        except PromstatError as exc:
            # The error lives on (a page keeps it per id); through its traceback's frames it
            # would keep the whole body alive too: 8 failed 50 MB answers held 430 MiB.
            _clear_frames(exc)
            raise
        finally:
            # Given back once decoded (or failed): until then the bytes are alive.
            if self._budget is not None:
                self._budget.give_back(holder)

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: yarl.URL,
        body: bytes | None,
        headers: Mapping[str, str],
        decoder: msgspec.json.Decoder[Envelope[T]],
        *,
        query: str | None,
        deadline: float,
        deadline_s: float,
        parts: msgspec.json.Decoder[list[VectorSeries[Any]]] | None,
        holder: object,
    ) -> tuple[Envelope[T], int]:
        try:
            async with asyncio.timeout_at(deadline):
                async with session.request(
                    method, url, data=body, headers=headers, ssl=self._ssl,
                ) as resp:
                    raw = await self._read_body(resp, url=url, query=query, holder=holder)
                    status = resp.status
                    content_type = resp.headers.get("Content-Type", "")
                    stopping = resp.headers.get("X-Prometheus-Stopping")
        except TimeoutError as exc:  # our deadline, or a borrowed session's own timeout
            raise RequestTimeoutError(url=str(url.with_query(None)), timeout=deadline_s) from exc
        except ValueError as exc:  # aiohttp rejects e.g. a header value with a newline
            raise ConfigError(f"invalid request to {url.with_query(None)}: {exc}") from exc
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            # RuntimeError: aiohttp's "Session is closed" (a borrowed session closed under us).
            raise TransportError(
                f"{type(exc).__name__}: {exc}", url=str(url.with_query(None))
            ) from exc
        if parts is not None and 200 <= status < 300 and len(raw) > _SLICED_DECODE_BYTES:
            sliced = await _decode_in_slices(decoder, parts, raw)
            if sliced is not None:
                return sliced, len(raw)
        return _decode(decoder, raw, status, content_type, stopping,
                       url=str(url.with_query(None)), query=query), len(raw)

    async def _read_body(
        self, resp: aiohttp.ClientResponse, *, url: yarl.URL, query: str | None, holder: object
    ) -> bytes | bytearray:
        """Read the (decompressed) body, stopping as soon as it passes the size cap.

        Every chunk is taken from the body budget before it is kept (see :class:`BodyBudget`).
        """
        limit = self._max_response_bytes
        budget = self._budget
        if limit is None and budget is None:
            return await resp.read()
        # A declared length over the cap fails before anything is read; without gzip the
        # declared length is the body's own.
        declared = resp.content_length
        if (limit is not None and declared is not None and declared > limit
                and not resp.headers.get("Content-Encoding")):
            resp.close()
            raise ResponseTooLargeError(limit=limit, url=str(url.with_query(None)), query=query,
                                        status=resp.status)
        body = bytearray()
        content = resp.content
        while True:
            chunk = await content.readany()
            if not chunk:
                return body  # msgspec decodes a bytearray without copying it
            if budget is not None:
                await budget.take(holder, len(chunk))
            body += chunk
            if limit is not None and len(body) > limit:
                # Drop the connection: the rest of the body is never read, let alone kept.
                resp.close()
                raise ResponseTooLargeError(limit=limit, url=str(url.with_query(None)),
                                            query=query, status=resp.status)


def _clear_frames(exc: BaseException) -> None:
    """Drop the locals of the finished frames in ``exc``'s traceback and its chained causes."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)  # skips frames still running
        todo += (e.__cause__, e.__context__)


async def _decode_in_slices(
    decoder: msgspec.json.Decoder[Envelope[T]],
    parts: msgspec.json.Decoder[list[VectorSeries[Any]]],
    raw: bytes | bytearray,
) -> Envelope[T] | None:
    """Decode a large vector answer part by part, yielding to the event loop in between.

    Returns ``None`` when the body cannot be cut or a part does not decode: the caller then
    decodes the whole body, which gives the precise error (or the right answer).
    """
    body = raw if isinstance(raw, bytearray) else bytearray(raw)
    pieces = vector_parts(body, _DECODE_SLICE_BYTES)
    if pieces is None:
        return None
    series: list[VectorSeries[Any]] = []
    env: Envelope[Any] | None = None
    try:
        for is_envelope, piece in pieces:
            if is_envelope:
                env = decoder.decode(piece)
            else:
                series += parts.decode(piece)
                await asyncio.sleep(0)
    except msgspec.DecodeError:
        return None
    finally:
        pieces.close()  # restores the body's patched bytes
    if env is None or env.status != "success" or not isinstance(env.data, VectorData):
        return None
    series += env.data.result
    return cast("Envelope[T]", msgspec.structs.replace(env, data=VectorData(series)))


def _decode(
    decoder: msgspec.json.Decoder[Envelope[T]],
    raw: bytes | bytearray,
    status: int,
    content_type: str,
    stopping: str | None,
    *,
    url: str,
    query: str | None,
) -> Envelope[T]:
    """Turn a status and body into an envelope, or raise the error they describe."""
    if 200 <= status < 300:
        try:
            env = decoder.decode(raw)
        except msgspec.DecodeError as exc:
            reason = str(exc) if _looks_like_json(raw) else "not a JSON envelope"
            raise ResponseDecodeError(status=status, body=bytes(raw), url=url,
                                      content_type=content_type, reason=reason) from exc
        if env.status != "success":
            raise api_error_for(status=status, error_type=env.error_type, error=env.error,
                                url=url, query=query, warnings=env.warnings)
        return env
    if _looks_like_json(raw):
        try:
            err = _ERROR_DECODER.decode(raw)
        except msgspec.DecodeError:
            pass  # fall through: treat it as an opaque body
        else:
            raise api_error_for(status=status, error_type=err.error_type, error=err.error,
                                url=url, query=query, warnings=err.warnings)
    if status in _PLAIN_TEXT_API_STATUSES:
        text = raw[:200].decode("utf-8", "replace").strip()
        if stopping is not None:
            text = f"{text} (X-Prometheus-Stopping: {stopping})"
        raise api_error_for(status=status, error=text, url=url, query=query)
    raise ResponseDecodeError(status=status, body=bytes(raw), url=url,
                              content_type=content_type,
                              reason="error status without a JSON envelope")


def _basic_auth_header(auth: aiohttp.BasicAuth | tuple[str, str]) -> str:
    if isinstance(auth, aiohttp.BasicAuth):
        login, password, encoding = auth.login, auth.password, auth.encoding
    else:
        (login, password), encoding = auth, "utf-8"
    if ":" in login:
        raise ConfigError("a basic-auth login must not contain ':' (RFC 7617)")
    token = base64.b64encode(f"{login}:{password}".encode(encoding)).decode("ascii")
    return f"Basic {token}"


def _selectors(match: Sequence[str]) -> Sequence[str]:
    if isinstance(match, str):
        raise ConfigError("match must be a sequence of selectors, not a single string")
    return match


def _range_pairs(
    match: Sequence[str], start: TimeArg | None, end: TimeArg | None, limit: int | None
) -> list[tuple[str, str]]:
    pairs = [("match[]", m) for m in match]
    if start is not None:
        pairs.append(("start", format_time(start)))
    if end is not None:
        pairs.append(("end", format_time(end)))
    if limit is not None:
        pairs.append(("limit", str(int(limit))))
    return pairs


def _count_query(data: Any) -> int:
    if isinstance(data, VectorData | MatrixData):
        return len(data.result)
    return 0 if data is None else 1


def _count_result(data: Any) -> int:
    return 0 if data is None else len(data.result)


def _count_len(data: Any) -> int:
    return 0 if data is None else len(data)


def _count_groups(data: Any) -> int:
    return 0 if data is None else sum(len(g.rules) for g in data.groups)


def _count_none(data: Any) -> int:
    return 0
