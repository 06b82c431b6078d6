"""The legacy ``live_stat`` wire shape, byte for byte (reference section 1).

Backend.AI agents wrote per-kernel and per-agent dicts of *strings* to Valkey; clients parse them
by key and some ``int()`` them. This module turns raw Prometheus sample strings into exactly
those dicts:

* numbers go through legacy ``_to_serializable_value``: quantize to 3 decimals (half-even, the
  default :mod:`decimal` context, 28 digits), integral values as plain integers, others with
  trailing zeros stripped (:func:`format_decimal`);
* ``pct`` is ``current / capacity * 100`` rounded to 2 decimals the same way, or the literal
  ``"0.00"`` when the capacity is missing, zero, negative or not a normal number
  (:func:`format_pct`);
* only the ``stats.*`` keys the metric's ``stats_filter`` published are emitted, in legacy's
  order (``max``, ``avg``, ``rate``), after ``current``, ``capacity``, ``pct``, ``unit_hint``.

Decisions where Prometheus data has no legacy counterpart (documented, tested):

* Prometheus sends values as Go shortest-round-trip strings, ``'e'`` form below 1e-6 and from
  1e21 (``"1.5e-07"``, ``"1e+21"``), and ``"NaN"``, ``"+Inf"``, ``"-Inf"``. They are read with
  ``Decimal(text)``, as legacy read its values. Floats are read as ``Decimal(repr(f))`` (what
  Prometheus would have sent), not as their exact binary value.
* NaN renders ``"NaN"``; infinities render ``"Infinity"`` / ``"-Infinity"`` (legacy's fallback
  ``str(value)`` after ``quantize`` fails). Values too large to quantize within 28 digits
  (``>= 1e25``) also fall back to ``str(Decimal(text))``, e.g. ``"1E+26"``. A string that is not
  a number at all is passed through unchanged (the same fallback, never an exception).
* Negative zero renders ``"0"``, not legacy's ``"-0"`` (a negative value rounding to zero).
* Integral fields (:attr:`MetricSpec.integral`: ``current``, ``capacity``, ``stats.max``) are
  rounded once, half-even, to an integer string; NaN/infinite/garbage give ``"0"`` there, so
  ``int()`` never fails in a consumer.
* A missing ``stats.max``/``stats.avg`` (a kernel with a single sample has no window yet)
  repeats ``current``; a missing ``stats.rate`` is ``"0"`` (legacy's rate with < 2 samples).
* A metric without a ``current`` value is left out (it is not live). Metrics are emitted sorted
  by name (legacy used plugin order; consumers read by key). Devices are sorted naturally
  (``"2"`` before ``"10"``), the order the agent listed CPU cores in.
* Kernel capacity without a capacity series: :data:`SENTINEL_CAPACITY` for
  :attr:`Capacity.SENTINEL` metrics, else ``"0"``. Node/device capacity without a series is
  ``None`` (JSON ``null``), as legacy.

:func:`to_json` gives what Graphene's ``JSONString`` puts on the wire (``json.dumps`` with
default separators and ``ensure_ascii=True``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal, DecimalException
from typing import Any, cast

import msgspec

from promstat.catalog import DEFAULT_CATALOG, SENTINEL_CAPACITY, Capacity, Catalog, MetricSpec
from promstat.payload import frozen as _frozen

__all__ = [
    "STATS_ORDER",
    "format_decimal",
    "format_decimal_reference",
    "format_integral",
    "format_integral_reference",
    "format_pct",
    "format_pct_reference",
    "render_agent",
    "render_kernel",
    "to_json",
    "to_msgpack",
]

#: The order legacy emitted ``stats.*`` keys in (``MovingStatistics.to_serializable_dict``:
#: min, max, sum, avg, diff, rate; promstat computes max, avg and rate).
STATS_ORDER: tuple[str, ...] = ("max", "avg", "rate")

# Python's default decimal context (prec 28, ROUND_HALF_EVEN), fixed here so a caller that
# changes the thread's context cannot change the wire format.
_CTX = Context()
_ONE = Decimal(1)
_QUANTA: dict[int, Decimal] = {q: Decimal(1).scaleb(-q) for q in range(7)}
# format_integral's string path handles integer parts up to this many digits; longer ones go
# through Decimal (and int() of huge digit strings is limited anyway).
_FAST_MAX_INT_DIGITS = 24
_INF = float("inf")


# --------------------------------------------------------------------------- reference


def _to_decimal_text(value: str | float) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _quantum(quantum: int) -> Decimal:
    exponent = _QUANTA.get(quantum)
    return exponent if exponent is not None else Decimal(1).scaleb(-quantum)


def _serialize_decimal(number: Decimal, *, quantum: int) -> str:
    """Legacy ``_to_serializable_value`` of a Decimal, with ``-0`` shown as ``0``."""
    try:
        q = number.quantize(_quantum(quantum), context=_CTX)
        out = str(q.quantize(_ONE, context=_CTX) if q == q.to_integral() else q.normalize(_CTX))
    except DecimalException:
        out = str(number)  # legacy fallback: more than 28 digits, infinities
    return "0" if out == "-0" else out


def format_decimal_reference(value: str | float, *, quantum: int = 3) -> str:
    """Legacy ``_to_serializable_value`` with :class:`~decimal.Decimal`, for tests and odd input.

    Semantics are those of :func:`format_decimal`, which must agree with this for every input.
    """
    text = _to_decimal_text(value)
    try:
        number = Decimal(text)
    except DecimalException:
        return text
    return _serialize_decimal(number, quantum=quantum)


def format_integral_reference(value: str | float) -> str:
    """:func:`format_integral` with :class:`~decimal.Decimal`, for tests and odd input."""
    try:
        number = Decimal(_to_decimal_text(value))
    except DecimalException:
        return "0"
    if not number.is_finite():
        return "0"
    out = str(int(number.to_integral_value(rounding=ROUND_HALF_EVEN)))
    return "0" if out == "-0" else out


def format_pct_reference(current: str | float, capacity: str | float | None) -> str:
    """Legacy ``pct`` with :class:`~decimal.Decimal`, for tests and odd input."""
    if capacity is None:
        return "0.00"
    try:
        cap = Decimal(_to_decimal_text(capacity))
        cur = Decimal(_to_decimal_text(current))
    except DecimalException:
        return "0.00"
    if not (cap.is_normal(_CTX) and cap > 0):
        return "0.00"
    try:
        ratio = _CTX.multiply(_CTX.divide(cur, cap), Decimal(100))
    except DecimalException:
        return "0.00"
    return _serialize_decimal(ratio, quantum=2)


# --------------------------------------------------------------------------- fast paths


def _split_simple(text: str) -> tuple[bool, str, str] | None:
    """Split ``-?\\d+(\\.\\d+)?`` (ASCII) into (negative, int digits, frac digits), else None."""
    negative = text.startswith("-")
    body = text[1:] if negative else text
    int_part, dot, frac_part = body.partition(".")
    if not (int_part.isascii() and int_part.isdigit()):
        return None
    if dot and not (frac_part.isascii() and frac_part.isdigit()):
        return None
    if len(int_part) > _FAST_MAX_INT_DIGITS:
        return None
    return negative, int_part, frac_part


def _round_digits(int_part: str, frac_part: str, quantum: int) -> tuple[str, str]:
    """Round the decimal ``int_part.frac_part`` half-even to ``quantum`` decimals.

    Returns (integer digits without leading zeros or "0", fraction digits without trailing
    zeros, possibly empty).
    """
    if len(frac_part) <= quantum:
        return int_part.lstrip("0") or "0", frac_part.rstrip("0")
    kept = frac_part[:quantum]
    rest = frac_part[quantum:]
    first = rest[0]
    if first > "5":
        up = True
    elif first < "5":
        up = False
    elif rest.rstrip("0") != "5":
        up = True  # above the half
    else:
        up = (kept or int_part)[-1] in "13579"  # exact tie: round to even
    if not up:
        return int_part.lstrip("0") or "0", kept.rstrip("0")
    digits = str(int(int_part + kept) + 1)
    if quantum == 0:
        return digits, ""
    digits = digits.rjust(quantum + 1, "0")
    return digits[:-quantum], digits[-quantum:].rstrip("0")


def format_decimal(value: str | float, *, quantum: int = 3) -> str:
    """Format a sample value like legacy ``_to_serializable_value``.

    Quantize to ``quantum`` decimals (half-even), then an integer string if integral, else the
    shortest decimal (``"500.01133333333337" -> "500.011"``, ``"12.500" -> "12.5"``,
    ``"9.9996" -> "10"``, ``"-0.0001" -> "0"``). A pure-string path handles the plain decimal
    strings Prometheus sends; anything else goes through Decimal (see the module docstring for
    NaN, infinities and huge values).

    Args:
        value: the raw Prometheus value string, or a float (read as ``repr(value)``).
        quantum: decimals to keep (the string path covers 0-6; others use Decimal).

    Returns:
        The legacy string.
    """
    text = value if isinstance(value, str) else _to_decimal_text(value)
    if text.isdigit() and text.isascii() and len(text) <= 21 and text[0] != "0":
        return text  # the common case first: a plain integer such as "4294967296"
    # Inlined _split_simple: this runs for every value of every page.
    negative = text.startswith("-")
    int_part, dot, frac_part = (text[1:] if negative else text).partition(".")
    if (
        not (int_part.isascii() and int_part.isdigit())
        or (dot and not (frac_part.isascii() and frac_part.isdigit()))
        # Within 28 digits after quantizing (and a carry), or Decimal's fallback applies.
        or len(int_part) + quantum > 27
        or not 0 <= quantum <= 6
    ):
        return format_decimal_reference(text, quantum=quantum)
    if not frac_part and int_part[0] != "0":
        return text  # the common case: a plain integer such as "4294967296"
    digits, frac = _round_digits(int_part, frac_part, quantum)
    if frac:
        return f"-{digits}.{frac}" if negative else f"{digits}.{frac}"
    if negative and digits != "0":
        return "-" + digits
    return digits


def format_integral(value: str | float) -> str:
    """Format a value as an integer string (half-even), for fields consumers ``int()``.

    Rounded once from the raw value (no 3-decimal step first). NaN, infinities and non-numbers
    give ``"0"``, so the result is always ``int()``-parseable.

    Args:
        value: the raw Prometheus value string, or a float.

    Returns:
        An integer string such as ``"4294967296"``.
    """
    text = value if isinstance(value, str) else _to_decimal_text(value)
    if text.isdigit() and text.isascii() and len(text) <= _FAST_MAX_INT_DIGITS and text[0] != "0":
        return text  # a plain integer, the common case
    parts = _split_simple(text)
    if parts is None:
        return format_integral_reference(text)
    negative, int_part, frac_part = parts
    if not frac_part and int_part[0] != "0":
        return text
    digits, _ = _round_digits(int_part, frac_part, 0)
    if negative and digits != "0":
        return "-" + digits
    return digits


def format_pct(current: str | float, capacity: str | float | None) -> str:
    """Legacy ``pct``: ``current / capacity * 100`` rounded to 2 decimals, or ``"0.00"``.

    ``"0.00"`` (a literal, unlike every other zero) when ``capacity`` is ``None``, zero,
    negative or not a normal number. Otherwise the percentage as :func:`format_decimal` with
    2 decimals: ``"50"``, ``"27.5"``, ``"40.18"``. It can exceed 100.

    A float fast path is used when it provably rounds like the exact Decimal computation
    (the result is not within float error of a rounding tie); otherwise Decimal decides.

    Args:
        current: raw current value.
        capacity: raw capacity value, or ``None``.

    Returns:
        The legacy ``pct`` string.
    """
    if capacity is None or capacity == "0":
        return "0.00"
    try:
        cap = float(capacity)
        cur = float(current)
    except ValueError:
        return format_pct_reference(current, capacity)
    if not (1e-300 < cap < _INF):
        return format_pct_reference(current, capacity)
    scaled = cur / cap * 10000.0  # pct in hundredths
    if not (-1e13 < scaled < 1e13):
        return format_pct_reference(current, capacity)
    hundredths = round(scaled)
    # Four roundings (two parses, divide, multiply) err by < 5e-16 relative; the margin is far
    # wider, so outside it the float rounds like the exact (28-digit) Decimal computation.
    if 0.5 - abs(scaled - hundredths) <= abs(scaled) * 1e-14:
        return format_pct_reference(current, capacity)  # too close to a tie for floats
    if hundredths == 0:
        return "0"
    # |hundredths| < 1e13 < 2**53 / 100, so "%.2f" of hundredths/100 shows exactly its digits.
    return f"{hundredths / 100:.2f}".rstrip("0").rstrip(".")


# --------------------------------------------------------------------------- rendering

_Formatter = Callable[[str], str]

# Memos of formatted values, one per formatter: a page repeats many value texts (capacities,
# "0", steady gauges whose max/avg equal current), and a dict lookup is much cheaper than
# formatting (see benchmarks/README.md). Bounded: cleared when full (a cache of a pure
# function; races only re-format).
_MEMO_LIMIT = 1 << 16
_DECIMAL_MEMO: dict[str, str] = {}
_INTEGRAL_MEMO: dict[str, str] = {}


def _fmt_decimal(value: str) -> str:
    out = _DECIMAL_MEMO.get(value)
    if out is None:
        out = format_decimal(value)
        if len(_DECIMAL_MEMO) >= _MEMO_LIMIT:
            _DECIMAL_MEMO.clear()
        _DECIMAL_MEMO[value] = out
    return out


def _fmt_integral(value: str) -> str:
    out = _INTEGRAL_MEMO.get(value)
    if out is None:
        out = format_integral(value)
        if len(_INTEGRAL_MEMO) >= _MEMO_LIMIT:
            _INTEGRAL_MEMO.clear()
        _INTEGRAL_MEMO[value] = out
    return out


def _no_pct(current: str) -> str:
    return "0.00"


# |current| below this many integer digits is under 0.005% of SENTINEL_CAPACITY: pct "0".
_SENTINEL_ZERO_DIGITS = len(str(int(SENTINEL_CAPACITY) // 100 // 200)) - 1


def _sentinel_pct(current: str) -> str:
    """``format_pct(current, SENTINEL_CAPACITY)``, without float work for plain numbers.

    Every metric with a sentinel capacity and no capacity series (network, I/O, CPU time)
    takes this path; a plain decimal below 1e14 is under 0.005% of the sentinel and rounds to
    ``"0"``, so only huge or unusual texts (NaN, exponents) need the full computation.
    """
    if len(current) <= _SENTINEL_ZERO_DIGITS and current.isdigit():
        return "0"  # the common case: a plain integer (bytes, msec) of up to 14 digits
    int_part, _, frac_part = (current[1:] if current[:1] == "-" else current).partition(".")
    if (
        len(int_part) <= _SENTINEL_ZERO_DIGITS
        and int_part.isdigit()
        and (not frac_part or frac_part.isdigit())
    ):
        return "0"
    return format_pct(current, SENTINEL_CAPACITY)


@dataclass(frozen=True, slots=True)
class _Layout:
    fmt: _Formatter  # current and capacity
    unit_hint: str
    missing_capacity: str | None  # already formatted
    missing_pct: _Formatter  # pct of a current value when there is no capacity series
    # (output key, input key, formatter, missing value repeats current) per published stat;
    # plain tuples: unpacking them is the cheapest read in the per-metric loop.
    stats: tuple[tuple[str, str, _Formatter, bool], ...]


def _layout(spec: MetricSpec, *, node: bool) -> _Layout:
    value_fmt: _Formatter = _fmt_integral if spec.integral else _fmt_decimal
    published = spec.stats_node if node else spec.stats
    slots = tuple(
        (f"stats.{stat}", stat, value_fmt if stat == "max" else _fmt_decimal, stat != "rate")
        for stat in STATS_ORDER
        if stat in published
    )
    # Without a capacity series: node/device capacity None, kernel capacity the sentinel
    # or "0"; format_pct gives "0.00" for None and "0".
    missing: str | None = None
    missing_pct: _Formatter = _no_pct
    if not node:
        if spec.capacity is Capacity.SENTINEL:
            missing, missing_pct = SENTINEL_CAPACITY, _sentinel_pct
        else:
            missing = "0"
    return _Layout(
        fmt=value_fmt,
        unit_hint=spec.unit_hint_node if node else spec.unit_hint,
        missing_capacity=missing,
        missing_pct=missing_pct,
        stats=slots,
    )


# Per catalog (by identity; Catalog is not hashable) and per level: metric name -> layout.
_LAYOUTS: dict[tuple[int, bool], tuple[Catalog, dict[str, _Layout]]] = {}
_MAX_CATALOGS = 32


def _layouts(catalog: Catalog, *, node: bool) -> dict[str, _Layout]:
    entry = _LAYOUTS.get((id(catalog), node))
    if entry is not None and entry[0] is catalog:
        return entry[1]
    if len(_LAYOUTS) >= _MAX_CATALOGS:
        _LAYOUTS.clear()
    table: dict[str, _Layout] = {}
    _LAYOUTS[(id(catalog), node)] = (catalog, table)
    return table


def _render_one(layout: _Layout, raw: Mapping[str, str]) -> dict[str, Any] | None:
    current = raw.get("current")
    if current is None:
        return None
    capacity_raw = raw.get("capacity")
    fmt = layout.fmt
    shown_current = fmt(current)
    if capacity_raw is None:
        capacity = layout.missing_capacity
        pct = layout.missing_pct(current)
    else:
        capacity = fmt(capacity_raw)
        pct = format_pct(current, capacity_raw)
    out: dict[str, Any] = {
        "current": shown_current,
        "capacity": capacity,
        "pct": pct,
        "unit_hint": layout.unit_hint,
    }
    for key, source, slot_fmt, repeat_current in layout.stats:
        value = raw.get(source)
        if value is not None:
            out[key] = slot_fmt(value)
        elif repeat_current:
            out[key] = shown_current if slot_fmt is fmt else slot_fmt(current)
        else:
            out[key] = "0"
    return out


def _render_metrics(
    values: Mapping[str, Mapping[str, str]], catalog: Catalog, *, node: bool, frozen: bool
) -> dict[str, dict[str, Any]]:
    table = _layouts(catalog, node=node)
    result: dict[str, dict[str, Any]] = {}
    for name in sorted(values):
        layout = table.get(name)
        if layout is None:
            layout = table[name] = _layout(catalog.lookup(name), node=node)
        rendered = _render_one(layout, values[name])
        if rendered is not None:
            # Built read-only here rather than copied by payload.freeze later: one C-level
            # copy of a finished leaf instead of a second pass over the whole payload.
            # Sealed: strings only, so off the collector's list (see promstat.payload).
            result[name] = _frozen(rendered) if frozen else rendered
    return result


def render_kernel(
    values: Mapping[str, Mapping[str, str]],
    *,
    catalog: Catalog = DEFAULT_CATALOG,
    frozen: bool = False,
) -> dict[str, dict[str, str]] | None:
    """Render one kernel's legacy ``live_stat`` dict.

    Args:
        values: metric name -> ``{"current": s, "capacity": s?, "max": s?, "avg": s?,
            "rate": s?}`` with raw Prometheus value strings.
        catalog: metric specs (unit hints, published stats, capacity fallback, integral).
        frozen: build read-only :class:`~promstat.payload.FrozenDict` values at every level
            (what :func:`~promstat.payload.freeze` would make of the plain result, equal to
            it and serialised identically, at a fraction of the cost).

    Returns:
        ``{metric: {"current", "capacity", "pct", "unit_hint", "stats.*"...}}`` with string
        values, metrics sorted by name; ``None`` when no metric has a current value.
    """
    result = _render_metrics(values, catalog, node=False, frozen=frozen)
    if not result:
        return None
    # Kernel capacities are never None, so every value is a string.
    return cast("dict[str, dict[str, str]]", _frozen(result) if frozen else result)


def _natural_key(device_id: str) -> tuple[tuple[int, int, str], ...]:
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in _DIGIT_RUNS.findall(device_id)
    )


_DIGIT_RUNS = re.compile(r"\d+|\D+", re.ASCII)


def render_agent(
    node: Mapping[str, Mapping[str, str]],
    devices: Mapping[str, Mapping[str, Mapping[str, str]]],
    *,
    catalog: Catalog = DEFAULT_CATALOG,
    frozen: bool = False,
) -> dict[str, Any] | None:
    """Render one agent's legacy ``live_stat`` dict (``node`` + ``devices``).

    Node and device entries use the catalog's node unit hints and node stats; a missing
    capacity is ``None`` (JSON ``null``) with ``pct`` ``"0.00"``.

    Args:
        node: metric name -> raw values, as for :func:`render_kernel`.
        devices: metric name -> device id -> raw values.
        catalog: metric specs.
        frozen: build read-only :class:`~promstat.payload.FrozenDict` values at every level,
            as for :func:`render_kernel`.

    Returns:
        ``{"node": {metric: {...}}, "devices": {metric: {device_id: {...}}}}`` (metrics sorted
        by name, devices in natural order), or ``None`` when neither has any current value.
    """
    rendered_node = _render_metrics(node, catalog, node=True, frozen=frozen)
    table = _layouts(catalog, node=True)
    rendered_devices: dict[str, dict[str, dict[str, Any]]] = {}
    for name in sorted(devices):
        layout = table.get(name)
        if layout is None:
            layout = table[name] = _layout(catalog.lookup(name), node=True)
        per_device = devices[name]
        out: dict[str, dict[str, Any]] = {}
        for device_id in sorted(per_device, key=_natural_key):
            rendered = _render_one(layout, per_device[device_id])
            if rendered is not None:
                out[device_id] = _frozen(rendered) if frozen else rendered
        if out:
            rendered_devices[name] = _frozen(out) if frozen else out
    if not rendered_node and not rendered_devices:
        return None
    if frozen:
        return _frozen({"node": _frozen(rendered_node), "devices": _frozen(rendered_devices)})
    return {"node": rendered_node, "devices": rendered_devices}


def to_json(payload: Mapping[str, Any] | None) -> str | None:
    """Serialize like Graphene ``JSONString`` (``json.dumps`` defaults); ``None`` stays ``None``.

    Args:
        payload: a dict from :func:`render_kernel` / :func:`render_agent`, or ``None``.

    Returns:
        The JSON text (``", "``/``": "`` separators, non-ASCII as ``\\uXXXX``), or ``None``.
    """
    if payload is None:
        return None
    return json.dumps(payload)


# One encoder for the process: msgspec's encoders are reusable and thread-safe.
_MSGPACK = msgspec.msgpack.Encoder()


def to_msgpack(payload: Mapping[str, Any]) -> bytes:
    """Pack a payload as the agent writes it to Valkey (``msgpack.packb(..., use_bin_type=True)``).

    ``msgspec.msgpack`` picks the same shortest encodings as ``msgpack`` for the maps, strings
    and ``None`` a payload holds, so the bytes are identical to the agent's (tested), without
    the ``msgpack`` package; read-only :class:`~promstat.payload.FrozenDict` payloads pack as
    the plain dicts they compare equal to.
    """
    return _MSGPACK.encode(payload)
