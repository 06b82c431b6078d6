"""What promstat's readers need of a Prometheus client: the protocol, its results, time.

:class:`PrometheusAPI` is the one client protocol of the planner, history, refresh-ahead,
final stats, utilization and :class:`~promstat.service.LiveStats`;
:class:`~promstat.client.PrometheusClient` implements it, and so can a wrapper or a test
double. :class:`QueryObserver` is the self-observability hook a client reports each call to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, Literal, Protocol, TypeVar

from promstat.errors import ConfigError
from promstat.wire import Labels, MatrixSeries, RuleGroup, Sample, VectorSeries

__all__ = [
    "MatrixResult",
    "PrometheusAPI",
    "QueryObserver",
    "QueryResult",
    "TimeArg",
    "VectorResult",
    "format_duration",
    "format_time",
]

L = TypeVar("L")

#: A point in time: Unix seconds, or a datetime (naive datetimes are taken as UTC).
TimeArg = float | int | datetime



class QueryObserver(Protocol):
    """Self-observability hook: called once per logical client call (after any retries).

    ``error_type`` is the Prometheus ``errorType`` (or ``http_<status>``) for API errors,
    ``client_timeout`` for the client deadline, ``transport`` for connection failures and
    ``decode`` for bodies that are not the expected envelope; ``None`` on success.
    """

    def on_request(
        self,
        *,
        endpoint: str,
        seconds: float,
        response_bytes: int,
        series: int,
        ok: bool,
        error_type: str | None,
        retries: int,
    ) -> None:
        """Record one call; must not raise (exceptions are swallowed and not retried)."""


class PrometheusAPI(Protocol):
    """Everything promstat's readers (planner, history, refresh-ahead, final stats,
    utilization, :class:`~promstat.service.LiveStats`) need of a client.

    :class:`PrometheusClient` is the implementation; a wrapper (pinning the evaluation time,
    counting queries) or a test double implements the same five members.
    """

    @property
    def timeout(self) -> float:
        """The client's deadline per call, in seconds (sizes the planner's page deadline)."""
        ...

    async def query_vector(
        self, query: str, *, labels: type[L], time: TimeArg | None = None
    ) -> VectorResult[L]:
        """Run an instant query and decode a vector with typed labels."""
        ...

    async def query_range(
        self, query: str, *, start: TimeArg, end: TimeArg, step: float | str, labels: type[L]
    ) -> MatrixResult[L]:
        """Run a range query and decode a matrix with typed labels."""
        ...

    async def rules(self, type: Literal["record", "alert"] | None = None) -> list[RuleGroup]:
        """The rule groups the server evaluates (``/api/v1/rules``)."""
        ...

    async def aclose(self) -> None:
        """Release connections; idempotent."""
        ...


@dataclass(frozen=True, slots=True)
class VectorResult(Generic[L]):
    """An instant vector with its annotations.

    Attributes:
        series: one entry per series (order is the server's: unspecified unless sorted).
        warnings: ``warnings`` of the response (e.g. Thanos partial responses).
        infos: ``infos`` of the response (e.g. ``PossibleNonCounterInfo``).
        response_bytes: body size as received *after* gzip decompression.
    """

    series: list[VectorSeries[L]]
    warnings: tuple[str, ...] = ()
    infos: tuple[str, ...] = ()
    response_bytes: int = 0


@dataclass(frozen=True, slots=True)
class MatrixResult(Generic[L]):
    """A range vector with its annotations (see :class:`VectorResult` for the fields)."""

    series: list[MatrixSeries[L]]
    warnings: tuple[str, ...] = ()
    infos: tuple[str, ...] = ()
    response_bytes: int = 0


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Any instant-query answer; exactly one payload field matches ``result_type``.

    Attributes:
        result_type: ``"vector"``, ``"matrix"``, ``"scalar"`` or ``"string"``.
        vector: series when ``result_type == "vector"``, else empty.
        matrix: series when ``result_type == "matrix"``, else empty.
        scalar: the sample when ``result_type == "scalar"``, else ``None``.
        string: the sample when ``result_type == "string"``, else ``None``.
        warnings: ``warnings`` of the response.
        infos: ``infos`` of the response.
        response_bytes: body size as received after gzip decompression.
    """

    result_type: str
    vector: list[VectorSeries[Labels]] = field(default_factory=list)
    matrix: list[MatrixSeries[Labels]] = field(default_factory=list)
    scalar: Sample | None = None
    string: Sample | None = None
    warnings: tuple[str, ...] = ()
    infos: tuple[str, ...] = ()
    response_bytes: int = 0


def format_time(value: TimeArg) -> str:
    """Format a point in time as Unix seconds for the API.

    Args:
        value: Unix seconds, or a datetime (naive means UTC).

    Returns:
        Decimal seconds with millisecond precision, trailing zeros dropped (``"1700000000.5"``).

    Raises:
        ConfigError: ``value`` is neither a number nor a datetime.
    """
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        seconds = aware.timestamp()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigError(f"time must be Unix seconds or a datetime, got {value!r}")
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def format_duration(seconds: float) -> str:
    """Format seconds as a Prometheus duration (``"27s"``, ``"2700ms"``; at least ``"1ms"``).

    Raises:
        ConfigError: ``seconds`` is negative or not finite.
    """
    if not seconds >= 0 or seconds == float("inf"):
        raise ConfigError(f"duration must be a finite number >= 0, got {seconds!r}")
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"
