"""Wire types of the Prometheus HTTP API, decoded with msgspec.

Every response is the same envelope (``docs/querying/api.md``)::

    {"status": "success" | "error", "data": ..., "errorType": ..., "error": ...,
     "warnings": [...], "infos": [...]}

:class:`Envelope` is generic over its ``data`` type, so each endpoint gets one typed decoder and
msgspec builds the result objects directly from the bytes, with no intermediate dicts. Query
results are generic over the *label type* ``L``: either ``dict[str, str]`` (all labels) or a
user :class:`msgspec.Struct` that names only the labels a caller reads. A label Struct skips
every other label without allocating it, which is what makes the typed decode about twice as
fast as :func:`json.loads` on large vectors::

    class KernelLabels(msgspec.Struct, frozen=True, gc=False):
        kernel_id: str
        metric: str = msgspec.field(name="container_metric_name")   # rename a label

A label the Struct requires but a series lacks is a decode error; give such fields a default.

Sample values are ``(timestamp, value text)``: Prometheus sends values as JSON
strings because JSON has no NaN/Inf, and msgspec's lax float parsing rejects ``"+Inf"``.
:func:`parse_value` converts the text. Native-histogram samples (``"histogram"`` instead of
``"value"``) are kept, typed, in :attr:`VectorSeries.histogram`; their ``value`` is
:data:`NO_VALUE`.

Decoders are cached: one :class:`msgspec.json.Decoder` per (response shape, label type), built on
first use (:func:`query_decoder`, :func:`vector_decoder`, :func:`matrix_decoder`,
:func:`decoder_for`).
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator
from typing import Any, Final, Generic, Literal, TypeAlias, TypeVar, cast, overload

import msgspec

__all__ = [
    "NO_VALUE",
    "BuildInfo",
    "Envelope",
    "ErrorEnvelope",
    "HistogramValue",
    "Labels",
    "MatrixData",
    "MatrixSeries",
    "MetricMetadata",
    "QueryData",
    "Rule",
    "RuleAlert",
    "RuleGroup",
    "RulesData",
    "Sample",
    "SampleValue",
    "ScalarData",
    "StringData",
    "VectorData",
    "VectorSeries",
    "decoder_for",
    "matrix_decoder",
    "parse_value",
    "query_decoder",
    "series_decoder",
    "vector_decoder",
    "vector_parts",
]

L = TypeVar("L")
D = TypeVar("D")
T = TypeVar("T")

#: All labels of a series, as Prometheus sends them.
Labels: TypeAlias = dict[str, str]

#: ``(unix timestamp seconds, value text)``; convert the text with :func:`parse_value`.
Sample: TypeAlias = tuple[float, str]


class SampleValue(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The sample of an instant-vector series: ``(timestamp, value text)``, tuple-like.

    It indexes, unpacks and compares like the ``tuple[float, str]`` it replaces
    (``series.value[1]``, ``ts, text = series.value``, ``series.value == (ts, "1")``). It is a
    Struct rather than a tuple because the garbage collector does not track it: a large page
    decodes tens of thousands of samples, and as tuples they alone triggered young-generation
    collections by the hundred per page, which in turn triggered the full collections that
    held the event loop (figures: ``benchmarks/README.md``).
    """

    timestamp: float
    text: str

    @overload
    def __getitem__(self, index: Literal[0]) -> float: ...
    @overload
    def __getitem__(self, index: Literal[1]) -> str: ...
    @overload
    def __getitem__(self, index: int) -> float | str: ...

    def __getitem__(self, index: int) -> float | str:
        """``value[0]`` is the timestamp, ``value[1]`` the value text."""
        return (self.timestamp, self.text)[index]

    def __iter__(self) -> Iterator[float | str]:
        """Unpack as ``timestamp, text``."""
        return iter((self.timestamp, self.text))

    def __len__(self) -> int:
        """Always 2, like the pair it stands for."""
        return 2

    def __eq__(self, other: object) -> bool:
        """Equal to a SampleValue or a ``(timestamp, text)`` tuple with the same items."""
        if isinstance(other, SampleValue):
            other = (other.timestamp, other.text)
        if isinstance(other, tuple):
            return (self.timestamp, self.text) == other
        return NotImplemented

    def __hash__(self) -> int:
        """The hash of the equivalent tuple."""
        return hash((self.timestamp, self.text))


#: ``value`` of a series that carries a native histogram instead of a float sample.
NO_VALUE: Final[SampleValue] = SampleValue(float("nan"), "NaN")


def parse_value(s: str) -> float:
    """Convert a Prometheus sample value string to a float.

    Args:
        s: the value text, e.g. ``"0.25"``, ``"NaN"``, ``"+Inf"``, ``"-Inf"``.

    Returns:
        The float (``math.nan``/``math.inf`` for the special values).

    Raises:
        ValueError: ``s`` is not a number.
    """
    # Python's float() accepts every spelling Prometheus emits ("NaN", "+Inf", "-Inf", "1e+06");
    # msgspec's lax float does not accept "+Inf", which is why samples are decoded as text.
    return float(s)


class HistogramValue(msgspec.Struct, frozen=True, gc=False):
    """A native histogram sample: count, sum and buckets (all numbers as text).

    ``buckets`` items are ``(boundary rule, lower, upper, count)``.
    """

    count: str
    sum: str
    buckets: tuple[tuple[int, str, str, str], ...] = ()


class VectorSeries(msgspec.Struct, Generic[L], frozen=True, gc=False):
    """One series of an instant vector: labels and its sample.

    ``histogram`` is set (and ``value`` is :data:`NO_VALUE`) for native-histogram samples.
    """

    metric: L
    value: SampleValue = NO_VALUE
    histogram: tuple[float, HistogramValue] | None = None


class MatrixSeries(msgspec.Struct, Generic[L], frozen=True, gc=False):
    """One series of a range vector: labels and its samples, oldest first."""

    metric: L
    values: list[Sample] = []
    histograms: list[tuple[float, HistogramValue]] = []


class VectorData(msgspec.Struct, Generic[L], frozen=True, gc=False, tag_field="resultType",
                 tag="vector"):
    """``data`` of a query whose ``resultType`` is ``vector``."""

    result: list[VectorSeries[L]]


class MatrixData(msgspec.Struct, Generic[L], frozen=True, gc=False, tag_field="resultType",
                 tag="matrix"):
    """``data`` of a query whose ``resultType`` is ``matrix``."""

    result: list[MatrixSeries[L]]


class ScalarData(msgspec.Struct, frozen=True, gc=False, tag_field="resultType", tag="scalar"):
    """``data`` of a query whose ``resultType`` is ``scalar``."""

    result: Sample


class StringData(msgspec.Struct, frozen=True, gc=False, tag_field="resultType", tag="string"):
    """``data`` of a query whose ``resultType`` is ``string``."""

    result: Sample


#: ``data`` of ``/api/v1/query``: a union tagged on ``resultType``.
QueryData: TypeAlias = VectorData[L] | MatrixData[L] | ScalarData | StringData


class Envelope(msgspec.Struct, Generic[D], frozen=True, gc=False):
    """The response envelope, generic over the ``data`` type of the endpoint.

    ``data`` is ``None`` on error envelopes; ``warnings`` and ``infos`` (Prometheus >= 2.54) are
    empty when the server sent none.
    """

    status: str
    data: D | None = None
    error_type: str = msgspec.field(default="", name="errorType")
    error: str = ""
    warnings: tuple[str, ...] = ()
    infos: tuple[str, ...] = ()


class ErrorEnvelope(msgspec.Struct, frozen=True, gc=False):
    """The envelope without ``data``: used to read error answers, whatever data they carry."""

    status: str = ""
    error_type: str = msgspec.field(default="", name="errorType")
    error: str = ""
    warnings: tuple[str, ...] = ()
    infos: tuple[str, ...] = ()


class MetricMetadata(msgspec.Struct, frozen=True, gc=False):
    """One metadata entry of ``/api/v1/metadata``."""

    type: str = ""
    help: str = ""
    unit: str = ""


class RuleAlert(msgspec.Struct, frozen=True, gc=False):
    """An active alert of an alerting rule (``/api/v1/rules``)."""

    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    state: str = ""
    active_at: str = msgspec.field(default="", name="activeAt")
    value: str = ""


class Rule(msgspec.Struct, frozen=True, gc=False):
    """A recording or alerting rule; ``type`` is ``"recording"`` or ``"alerting"``.

    Alerting-only fields (``state``, ``duration``, ``annotations``, ``alerts``) keep their
    defaults on recording rules.
    """

    name: str
    query: str
    type: str
    health: str = ""
    last_error: str = msgspec.field(default="", name="lastError")
    labels: dict[str, str] = {}
    evaluation_time: float = msgspec.field(default=0.0, name="evaluationTime")
    last_evaluation: str = msgspec.field(default="", name="lastEvaluation")
    state: str = ""
    duration: float = 0.0
    annotations: dict[str, str] = {}
    alerts: list[RuleAlert] = []


class RuleGroup(msgspec.Struct, frozen=True, gc=False):
    """A rule group of ``/api/v1/rules``; ``interval`` is in seconds."""

    name: str
    file: str = ""
    rules: list[Rule] = []
    interval: float = 0.0
    limit: int = 0
    evaluation_time: float = msgspec.field(default=0.0, name="evaluationTime")
    last_evaluation: str = msgspec.field(default="", name="lastEvaluation")


class RulesData(msgspec.Struct, frozen=True, gc=False):
    """``data`` of ``/api/v1/rules``."""

    groups: list[RuleGroup] = []


class BuildInfo(msgspec.Struct, frozen=True, gc=False):
    """``data`` of ``/api/v1/status/buildinfo``.

    VictoriaMetrics always reports version ``2.24.0`` here, so do not sniff backends with it.
    """

    version: str = ""
    revision: str = ""
    branch: str = ""
    build_user: str = msgspec.field(default="", name="buildUser")
    build_date: str = msgspec.field(default="", name="buildDate")
    go_version: str = msgspec.field(default="", name="goVersion")


_decoders: dict[object, msgspec.json.Decoder[Any]] = {}
_decoders_lock = threading.Lock()


def decoder_for(data_type: type[T]) -> msgspec.json.Decoder[Envelope[T]]:
    """Return the cached decoder of ``Envelope[data_type]``.

    Args:
        data_type: the ``data`` type, e.g. ``list[str]`` or ``VectorData[MyLabels]``.

    Returns:
        A :class:`msgspec.json.Decoder` built once per ``data_type`` and reused.
    """
    decoder = _decoders.get(data_type)
    if decoder is None:
        # Building a decoder compiles the type; do it once. The lock only guards the rare
        # first build when threads race (msgspec decoders are themselves thread-safe).
        with _decoders_lock:
            decoder = _decoders.get(data_type)
            if decoder is None:
                decoder = msgspec.json.Decoder(Envelope[data_type])  # type: ignore[valid-type]
                _decoders[data_type] = decoder
    return cast("msgspec.json.Decoder[Envelope[T]]", decoder)


@overload
def query_decoder() -> msgspec.json.Decoder[Envelope[QueryData[Labels]]]: ...
@overload
def query_decoder(labels: type[L]) -> msgspec.json.Decoder[Envelope[QueryData[L]]]: ...


def query_decoder(labels: Any = Labels) -> msgspec.json.Decoder[Envelope[QueryData[Any]]]:
    """Return the cached decoder for ``/api/v1/query`` answers of any ``resultType``.

    Args:
        labels: the label type, ``dict[str, str]`` (default) or a label Struct.
    """
    key = ("query", labels)
    decoder = _decoders.get(key)
    if decoder is None:
        data_type: Any = VectorData[labels] | MatrixData[labels] | ScalarData | StringData
        decoder = decoder_for(data_type)
        _decoders[key] = decoder
    return cast("msgspec.json.Decoder[Envelope[QueryData[Any]]]", decoder)


@overload
def vector_decoder() -> msgspec.json.Decoder[Envelope[VectorData[Labels]]]: ...
@overload
def vector_decoder(labels: type[L]) -> msgspec.json.Decoder[Envelope[VectorData[L]]]: ...


def vector_decoder(labels: Any = Labels) -> msgspec.json.Decoder[Envelope[VectorData[Any]]]:
    """Return the cached decoder for instant queries that must yield a ``vector``.

    Any other ``resultType`` fails to decode (msgspec checks the tag).

    Args:
        labels: the label type, ``dict[str, str]`` (default) or a label Struct.
    """
    data_type: Any = VectorData[labels]
    return decoder_for(data_type)


@overload
def matrix_decoder() -> msgspec.json.Decoder[Envelope[MatrixData[Labels]]]: ...
@overload
def matrix_decoder(labels: type[L]) -> msgspec.json.Decoder[Envelope[MatrixData[L]]]: ...


def matrix_decoder(labels: Any = Labels) -> msgspec.json.Decoder[Envelope[MatrixData[Any]]]:
    """Return the cached decoder for range queries (``resultType`` ``matrix``).

    Args:
        labels: the label type, ``dict[str, str]`` (default) or a label Struct.
    """
    data_type: Any = MatrixData[labels]
    return decoder_for(data_type)


def series_decoder(labels: Any = Labels) -> msgspec.json.Decoder[list[VectorSeries[Any]]]:
    """Return the cached decoder of a bare JSON array of vector series (see :func:`vector_slices`).

    Args:
        labels: the label type, ``dict[str, str]`` (default) or a label Struct.
    """
    key = ("series", labels)
    decoder = _decoders.get(key)
    if decoder is None:
        with _decoders_lock:
            decoder = _decoders.get(key)
            if decoder is None:
                decoder = msgspec.json.Decoder(list[VectorSeries[labels]])
                _decoders[key] = decoder
    return cast("msgspec.json.Decoder[list[VectorSeries[Any]]]", decoder)


_RESULT_START: Final = b'"result":['
# Between two series of a vector result. It cannot occur inside a JSON string (a quote in a
# string is escaped), nor anywhere else in a vector answer: a label called "metric" follows
# "{" or ",", never ",{".
_SERIES_BOUNDARY: Final = b',{"metric":'


def vector_parts(
    body: bytearray, slice_bytes: int
) -> Generator[tuple[bool, memoryview], None, None] | None:
    """Cut a large vector answer into separately decodable parts, in place, without parsing it.

    Decoding a fleet-wide answer in one go is one long call that nothing can interrupt (see
    ``benchmarks/README.md``); its parts can be decoded one at a time with the event loop free
    in between. The result array is cut at
    series boundaries about every ``slice_bytes``. Each part is a JSON array of series
    (decode it with :func:`series_decoder`); the last one (``True`` in the pair) is the
    envelope holding the last series, ``warnings`` and ``infos`` (:func:`vector_decoder`).
    The series of the parts, in order, followed by the envelope's, are exactly the answer's.

    No part is copied: the bytes around a cut are patched in ``body`` (``,`` -> ``[``/``]``;
    the envelope's prefix is written over the end of the previous part) while its part is
    out, and every patched byte is restored when the iterator finishes or is closed. Decode
    each view before taking the next.

    Args:
        body: the response body (patched temporarily, restored afterwards).
        slice_bytes: target size of a part.

    Returns:
        An iterator of ``(is_envelope, view)``, or ``None`` when the body is small or not laid
        out like Prometheus' (and VictoriaMetrics') compact JSON: decode it whole then. A wrong
        cut makes a part fail to decode; callers then decode the whole (restored) body, which
        reports the real error.
    """
    start = body.find(_RESULT_START, 0, 200)
    if start < 0 or len(body) <= 2 * slice_bytes:
        return None
    start += len(_RESULT_START)  # first byte of the first series
    cuts = []  # positions of the "," between two series where a part ends
    boundary = body.find(_SERIES_BOUNDARY, start + slice_bytes)
    while boundary >= 0:
        cuts.append(boundary)
        boundary = body.find(_SERIES_BOUNDARY, boundary + 1 + slice_bytes)
    if not cuts:
        return None
    return _parts(body, start, cuts)


def _parts(
    body: bytearray, start: int, cuts: list[int]
) -> Generator[tuple[bool, memoryview], None, None]:
    view = memoryview(body)
    prefix = bytes(body[:start])
    last = cuts[-1] + 1  # the envelope's series start here
    saved_prefix_area = bytes(body[last - len(prefix) : last])
    try:
        begin = start - 1  # the "[" (then the "," of the previous cut) opening this part
        for cut in cuts:
            body[begin] = 0x5B  # "["
            body[cut] = 0x5D  # "]"
            yield False, view[begin : cut + 1]
            body[cut] = 0x2C  # "," again, in case the next part's "[" is not written over it
            begin = cut
        body[last - len(prefix) : last] = prefix
        yield True, view[last - len(prefix) :]
    finally:
        body[last - len(prefix) : last] = saved_prefix_area
        body[start - 1] = 0x5B
        for cut in cuts:
            body[cut] = 0x2C
        view.release()
