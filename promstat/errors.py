"""The one error tree of promstat.

Every exception a public promstat call raises is a :class:`PromstatError`; no aiohttp or
msgspec exception escapes. Where a builtin meaning fits, the class also derives from the
builtin (``except TimeoutError`` and ``except ValueError`` keep working), the way aiohttp's
``ServerTimeoutError`` is also an ``asyncio.TimeoutError``::

    PromstatError
    ├── ConfigError(ValueError)              bad option, bad catalog file, bad CLI argument
    ├── QueryBuildError(ValueError)          PromQL that cannot be built (empty set, tiny budget)
    ├── TransportError                       could not talk to the server (refused, reset, DNS, TLS)
    │   └── RequestTimeoutError(TimeoutError)    the client-side deadline passed
    │       └── PageDeadlineError                a load's page deadline passed (detection, waiting
    │                                            for a query slot, retries and splits included)
    ├── APIError                             the server answered with an error
    │   ├── BadDataError(ValueError)             errorType bad_data (400): never retried
    │   ├── ExecutionError                       errorType execution (422), e.g. too many samples
    │   ├── QueryTimeoutError(TimeoutError)      errorType timeout (503): the server gave up
    │   ├── QueryCanceledError                   errorType canceled (499)
    │   ├── InternalError                        errorType internal (500)
    │   ├── NotFoundError                        errorType not_found (404)
    │   ├── NotAcceptableError                   errorType not_acceptable (406)
    │   ├── UnavailableError                     unavailable, plain-text 503 while starting or
    │   │                                        stopping, 502/504 from a proxy: retried
    │   └── QueryTooLargeError                   413/414/431, or VictoriaMetrics' "too long query":
    │       │                                    the planner splits the chunk and tries again
    │       └── ResponseTooLargeError            the body passed the client's max_response_bytes
    │                                            while streaming: split and retried the same way
    ├── ResponseDecodeError                  a body that is not the JSON envelope (a proxy's HTML
    │                                        page, Prometheus' plain-text 503): status + first bytes
    ├── RuleError                            recording-rule generation or verification failed
    ├── ClosedError(RuntimeError)            a LiveStats (or its loaders) used after aclose()
    ├── EventLoopMismatchError(RuntimeError) a LiveStats/Planner used from a second event loop
    ├── LabError                             a managed local server failed to start or stop
    │   └── BinaryNotFoundError(FileNotFoundError)   a binary is missing: says how to install
    └── BatchSizeMismatchError               a batch function returned the wrong number of results

Each class builds its message from keyword fields, so the message always names what was wrong,
and keeps those fields as attributes for callers that want to branch on them.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "APIError",
    "BadDataError",
    "BatchSizeMismatchError",
    "BinaryNotFoundError",
    "ClosedError",
    "ConfigError",
    "EventLoopMismatchError",
    "ExecutionError",
    "InternalError",
    "LabError",
    "NotAcceptableError",
    "NotFoundError",
    "PageDeadlineError",
    "PromstatError",
    "QueryBuildError",
    "QueryCanceledError",
    "QueryTimeoutError",
    "QueryTooLargeError",
    "RequestTimeoutError",
    "ResponseDecodeError",
    "ResponseTooLargeError",
    "RuleError",
    "TransportError",
    "UnavailableError",
    "api_error_for",
    "check_seconds",
]


class PromstatError(Exception):
    """Root of every error promstat raises."""


class ConfigError(PromstatError, ValueError):
    """A configuration value, catalog entry or command-line argument is invalid."""


class QueryBuildError(PromstatError, ValueError):
    """A PromQL expression could not be built from the given values."""


class TransportError(PromstatError):
    """The request did not reach the server or its answer did not come back.

    Raised ``from`` the underlying aiohttp/OS error; ``url`` names the endpoint.
    """

    def __init__(self, message: str, *, url: str = "") -> None:
        self.url = url
        super().__init__(f"{message} (url={url})" if url else message)


class RequestTimeoutError(TransportError, TimeoutError):
    """The client-side deadline passed before the server answered."""

    def __init__(self, *, url: str = "", timeout: float | None = None) -> None:
        self.timeout = timeout
        what = f"no answer within {timeout:g}s" if timeout is not None else "request timed out"
        super().__init__(what, url=url)


class PageDeadlineError(RequestTimeoutError):
    """One load (a page's batch) ran out of its page deadline.

    The deadline covers everything the load waits for: plan detection, a free query slot,
    the client's retries and the planner's splits. Each key the load could not answer in time
    gets this error (keys that were answered keep their values).

    Attributes:
        timeout: the page deadline in seconds.
        stage: what the load was waiting for when it passed (``"detection"``,
            ``"a query slot"``, ``"the query"``).
        detail: the plan shape that was cut short (plan, level, shape, ids).
    """

    def __init__(self, *, timeout: float, stage: str, detail: str = "", url: str = "") -> None:
        self.timeout = timeout
        self.stage = stage
        self.detail = detail
        where = f" ({detail})" if detail else ""
        TransportError.__init__(
            self, f"page deadline of {timeout:g}s passed while waiting for {stage}{where}", url=url
        )


class APIError(PromstatError):
    """The server answered with an error envelope or an error status.

    Attributes:
        status: HTTP status code.
        error_type: Prometheus ``errorType`` (``""`` when the body was not an envelope).
        error: the server's error text.
        url: the endpoint that answered.
        query: the PromQL expression, when the call had one.
        warnings: ``warnings`` that came with the error envelope.
    """

    def __init__(
        self,
        *,
        status: int,
        error_type: str = "",
        error: str = "",
        url: str = "",
        query: str | None = None,
        warnings: Sequence[str] = (),
    ) -> None:
        self.status = status
        self.error_type = error_type
        self.error = error
        self.url = url
        self.query = query
        self.warnings = tuple(warnings)
        parts = [f"{error_type or 'HTTP error'} (HTTP {status})"]
        if error:
            parts.append(f": {error}")
        if url:
            parts.append(f" from {url}")
        if query is not None:
            shown = query if len(query) <= 200 else query[:200] + f"... [{len(query)} bytes]"
            parts.append(f" for query {shown!r}")
        super().__init__("".join(parts))


class BadDataError(APIError, ValueError):
    """``bad_data``: the query or a parameter is malformed. Retrying cannot help."""


class ExecutionError(APIError):
    """``execution``: evaluation failed, e.g. too many samples loaded into memory."""


class QueryTimeoutError(APIError, TimeoutError):
    """``timeout``: the server's own query timeout passed."""


class QueryCanceledError(APIError):
    """``canceled``: the server canceled the query (not :class:`asyncio.CancelledError`)."""


class InternalError(APIError):
    """``internal``: a storage or server error."""


class NotFoundError(APIError):
    """``not_found``: the endpoint or object does not exist."""


class NotAcceptableError(APIError):
    """``not_acceptable``: the server cannot produce an acceptable response."""


class UnavailableError(APIError):
    """The server is not ready: ``unavailable``, plain-text 503, or a proxy's 502/504."""


class QueryTooLargeError(APIError):
    """The request was too large for the server or a proxy in front of it.

    HTTP 413/414/431, or VictoriaMetrics' 422 "too long query" (``-search.maxQueryLen``).
    """


class ResponseTooLargeError(QueryTooLargeError):
    """The response body grew past the client's ``max_response_bytes`` while it streamed.

    The read stops at the cap (the rest is never buffered). It is a
    :class:`QueryTooLargeError`, so the planner halves the chunk and retries where it can.

    Attributes:
        limit: the cap in bytes that was passed.
    """

    def __init__(self, *, limit: int, url: str = "", query: str | None = None, status: int = 200):
        self.limit = limit
        super().__init__(
            status=status,
            error_type="response_too_large",
            error=f"response body exceeds max_response_bytes={limit}",
            url=url,
            query=query,
        )


_BY_ERROR_TYPE: dict[str, type[APIError]] = {
    "bad_data": BadDataError,
    "execution": ExecutionError,
    "timeout": QueryTimeoutError,
    "canceled": QueryCanceledError,
    "internal": InternalError,
    "not_found": NotFoundError,
    "not_acceptable": NotAcceptableError,
    "unavailable": UnavailableError,
}

_BY_STATUS: dict[int, type[APIError]] = {
    400: BadDataError,
    404: NotFoundError,
    406: NotAcceptableError,
    413: QueryTooLargeError,
    414: QueryTooLargeError,
    422: ExecutionError,
    431: QueryTooLargeError,
    499: QueryCanceledError,
    500: InternalError,
    502: UnavailableError,
    503: UnavailableError,
    504: UnavailableError,
}

_TOO_LONG_MARKERS = ("too long query", "maxquerylen", "request uri too long", "too large")


def api_error_for(
    *,
    status: int,
    error_type: str = "",
    error: str = "",
    url: str = "",
    query: str | None = None,
    warnings: Sequence[str] = (),
) -> APIError:
    """Return the typed :class:`APIError` for a status and a Prometheus ``errorType``.

    ``errorType`` wins over the status, except that any "too long" answer becomes
    :class:`QueryTooLargeError` whatever the server called it (VictoriaMetrics says
    ``errorType: "422"``), because the planner's reaction (split and retry) depends on it.
    """
    lowered = error.lower()
    cls: type[APIError]
    if status in (413, 414, 431) or any(m in lowered for m in _TOO_LONG_MARKERS):
        cls = QueryTooLargeError
    elif error_type in _BY_ERROR_TYPE:
        cls = _BY_ERROR_TYPE[error_type]
    else:
        cls = _BY_STATUS.get(status, APIError)
    return cls(
        status=status, error_type=error_type, error=error, url=url, query=query, warnings=warnings
    )


class ResponseDecodeError(PromstatError):
    """The response body is not the JSON envelope that was expected.

    The message shows the status, the content type and the first bytes of the body, so a
    proxy's HTML error page or Prometheus' plain-text 503 is recognisable at a glance.
    """

    def __init__(
        self,
        *,
        status: int,
        body: bytes,
        url: str = "",
        content_type: str = "",
        reason: str = "",
    ) -> None:
        self.status = status
        self.body_excerpt = body[:200]
        self.url = url
        self.content_type = content_type
        text = self.body_excerpt.decode("utf-8", "replace")
        more = f" ... [{len(body)} bytes]" if len(body) > 200 else ""
        why = f"{reason}; " if reason else ""
        super().__init__(
            f"cannot decode response (HTTP {status}, content-type {content_type or '?'}"
            f"{', from ' + url if url else ''}): {why}body starts {text!r}{more}"
        )


class RuleError(PromstatError):
    """Recording-rule generation, rendering or verification failed."""


class ClosedError(PromstatError, RuntimeError):
    """An object was used after its ``aclose()``: create a new one instead.

    Attributes:
        what: the closed object (``"LiveStats"``, ``"SharedLoader"``, ``"Planner"``,
            ``"PrometheusClient"``).
    """

    def __init__(self, *, what: str) -> None:
        self.what = what
        super().__init__(
            f"{what} is closed (its close()/aclose() was called); create a new {what} to "
            "load again"
        )


class EventLoopMismatchError(PromstatError, RuntimeError):
    """An object bound to one event loop was used from another.

    Its semaphore, locks and shared futures belong to the loop it was first used in; create
    one per event loop (per process, in a manager with one loop).
    """

    def __init__(self, *, what: str) -> None:
        self.what = what
        super().__init__(
            f"{what} is bound to the event loop it was first used in and was now used from "
            f"another one; create one {what} per event loop"
        )


class LabError(PromstatError):
    """A managed local server (Prometheus, VictoriaMetrics, vmalert, redis) failed."""


class BinaryNotFoundError(LabError, FileNotFoundError):
    """A required executable is missing; the message says how to install it."""

    def __init__(self, *, binary: str, package: str) -> None:
        self.binary = binary
        self.package = package
        super().__init__(
            f"{binary!r} was not found on PATH. Install it with "
            f"`apt-get update && apt-get install -y {package}` (Debian), "
            f"or run `./dev test` / `./dev demo`, which install it when run as root."
        )


class BatchSizeMismatchError(PromstatError):
    """A batch function returned a different number of results than keys it was given."""

    def __init__(self, *, expected: int, received: int) -> None:
        self.expected = expected
        self.received = received
        super().__init__(
            f"batch function returned {received} results for {expected} keys; "
            "it must return exactly one value, None or exception per key, in key order"
        )


def check_seconds(
    where: str, value: object, *, positive: bool = False, optional: bool = False
) -> None:
    """Raise :class:`ConfigError` naming ``where`` unless ``value`` is a number of seconds.

    Args:
        where: the setting, as the message names it (``"PlannerConfig.page_deadline"``).
        value: what was given.
        positive: require ``> 0`` (else ``>= 0``).
        optional: ``None`` is allowed.

    Raises:
        ConfigError: a string (``"15s"``: every duration in promstat's API is seconds), a
            bool, a negative, zero when ``positive``, or a NaN.
    """
    if value is None and optional:
        return
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        hint = " (durations are seconds, a number)" if isinstance(value, str) else ""
        raise ConfigError(f"{where} must be {bound} seconds, not {value!r}{hint}")
    if not (value > 0 if positive else value >= 0):
        raise ConfigError(f"{where} must be {bound} seconds, not {value!r}")
