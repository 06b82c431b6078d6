"""PromQL text builders: string literals, label matchers, set matchers, chunking, durations.

Pure functions, no I/O. Everything promstat sends to Prometheus is spelled here, so the escaping
rules live in one place:

* A label value goes into a double-quoted PromQL string literal. :func:`escape_string` escapes
  ``\\``, ``"``, newline, carriage return and tab, and also U+FFFD: Prometheus' lexer decodes
  runes one by one and rejects a *literal* U+FFFD as "invalid UTF-8 rune" (measured on 2.42), so
  it is written as the escape ``\\uFFFD``. Everything else is literal UTF-8.
* A value inside a regex matcher is first escaped like Go's ``regexp.QuoteMeta``
  (:func:`quote_meta`), then like any string literal. ``re.escape`` must not be used: it escapes
  ``-``, and ``\\-`` makes Prometheus compile the regex instead of taking the set-matcher fast
  path for ``a|b|c`` lists (much slower for UUID lists; see ``benchmarks/README.md``).
* :func:`set_matcher` sorts and de-duplicates, so equal sets give byte-identical queries (cache
  keys, request logs) and a single value becomes an equality matcher.
* :func:`chunk_values` splits a large value set so each query stays within a byte budget
  (VictoriaMetrics rejects queries over 16 KiB) and within 256 alternatives (Prometheus'
  ``maxSetMatches``: above it the TSDB scans every value of the label).

Prometheus semantics worth knowing: a matcher that matches the empty string (``l=""``,
``l=~"|a"``) also selects series that do not have the label at all.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from promstat.errors import ConfigError, QueryBuildError

__all__ = [
    "chunk_values",
    "duration",
    "eq",
    "escape_string",
    "matcher_bytes",
    "neq",
    "not_set_matcher",
    "parse_duration",
    "quote_meta",
    "selector",
    "set_matcher",
]

_STRING_ESCAPES = str.maketrans(
    {
        "\\": "\\\\",
        '"': '\\"',
        "\n": "\\n",
        "\r": "\\r",
        "\t": "\\t",
        "\ufffd": "\\uFFFD",
    }
)
# Go regexp.QuoteMeta's set (special = `\.+*?()|[]{}^$`), nothing more.
_META_ESCAPES = str.maketrans({c: "\\" + c for c in "\\.+*?()|[]{}^$"})
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def escape_string(value: str) -> str:
    """Return the body of a double-quoted PromQL string literal holding ``value``.

    Args:
        value: any string that is valid UTF-8 (Prometheus label values are).

    Returns:
        The escaped text, without the surrounding quotes.

    Raises:
        QueryBuildError: ``value`` holds a lone surrogate (not encodable as UTF-8).
    """
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise QueryBuildError(
                f"value {value!r} is not valid UTF-8 (lone surrogate at {exc.start})"
            ) from exc
    return value.translate(_STRING_ESCAPES)


def quote_meta(value: str) -> str:
    """Escape regex metacharacters exactly like Go's ``regexp.QuoteMeta``.

    Only ``\\.+*?()|[]{}^$`` are escaped, so a UUID passes unchanged and Prometheus keeps its
    set-matcher fast path.

    Args:
        value: a literal string.

    Returns:
        An RE2 pattern matching exactly ``value`` (Prometheus anchors matchers).
    """
    return value.translate(_META_ESCAPES)


def _check_label(label: str) -> None:
    if _LABEL_NAME.fullmatch(label) is None:
        raise QueryBuildError(f"invalid label name {label!r}")


def eq(label: str, value: str) -> str:
    """Return the equality matcher ``label="value"``.

    Raises:
        QueryBuildError: ``label`` is not a valid label name, or ``value`` is not UTF-8.
    """
    _check_label(label)
    return f'{label}="{escape_string(value)}"'


def neq(label: str, value: str) -> str:
    """Return the inequality matcher ``label!="value"``.

    Raises:
        QueryBuildError: ``label`` is not a valid label name, or ``value`` is not UTF-8.
    """
    _check_label(label)
    return f'{label}!="{escape_string(value)}"'


def _sorted_unique(values: Iterable[str]) -> list[str]:
    if isinstance(values, str):
        # A bare string is an iterable of characters: almost certainly a caller bug.
        raise QueryBuildError(f"expected a collection of values, got the string {values!r}")
    return sorted(set(values))


def _alternation(values: list[str]) -> str:
    return escape_string("|".join(quote_meta(v) for v in values))


def set_matcher(label: str, values: Iterable[str]) -> str:
    """Return a matcher selecting series whose ``label`` is any of ``values``.

    Values are sorted and de-duplicated, so equal sets give byte-identical text. One value gives
    an equality matcher; more give ``label=~"a|b|c"`` with each value ``quote_meta``-escaped.

    Args:
        label: label name.
        values: label values (any order, duplicates allowed).

    Returns:
        The matcher text.

    Raises:
        QueryBuildError: ``values`` is empty, or the label/values are invalid.
    """
    unique = _sorted_unique(values)
    if not unique:
        raise QueryBuildError(f"set matcher on {label!r} needs at least one value")
    if len(unique) == 1:
        return eq(label, unique[0])
    _check_label(label)
    return f'{label}=~"{_alternation(unique)}"'


def not_set_matcher(label: str, values: Iterable[str]) -> str:
    """Return a matcher selecting series whose ``label`` is none of ``values``.

    The negative counterpart of :func:`set_matcher` (``!=`` for one value, ``!~`` for more).

    Raises:
        QueryBuildError: ``values`` is empty, or the label/values are invalid.
    """
    unique = _sorted_unique(values)
    if not unique:
        raise QueryBuildError(f"negative set matcher on {label!r} needs at least one value")
    if len(unique) == 1:
        return neq(label, unique[0])
    _check_label(label)
    return f'{label}!~"{_alternation(unique)}"'


def selector(metric: str | None, *matchers: str) -> str:
    """Return a vector selector ``metric{m1,m2}`` from prebuilt matchers.

    Args:
        metric: metric name, or ``None`` for a bare ``{...}`` selector.
        matchers: matcher texts from :func:`eq`, :func:`set_matcher`, ...

    Returns:
        ``metric{...}``, or just ``metric`` when there are no matchers.

    Raises:
        QueryBuildError: invalid metric name, or neither a metric nor a matcher.
    """
    if metric is not None and _METRIC_NAME.fullmatch(metric) is None:
        raise QueryBuildError(f"invalid metric name {metric!r}")
    if not matchers:
        if metric is None:
            raise QueryBuildError("a selector needs a metric name or at least one matcher")
        return metric
    return f"{metric or ''}{{{','.join(matchers)}}}"


def matcher_bytes(label: str, values: Iterable[str]) -> int:
    """Return the UTF-8 length of ``set_matcher(label, values)``.

    Raises:
        QueryBuildError: as :func:`set_matcher`.
    """
    return len(set_matcher(label, values).encode("utf-8"))


def chunk_values(
    values: Iterable[str],
    *,
    fixed_bytes: int,
    max_bytes: int = 16384,
    max_alternatives: int = 256,
    repeats: int = 1,
    label: str = "",
) -> list[tuple[str, ...]]:
    """Split values into chunks whose set-matcher queries fit a byte and alternative budget.

    Values are sorted and de-duplicated first, then packed greedily in order, so the result is
    deterministic and concatenating the chunks gives the sorted set.

    The cost of a chunk is ``fixed_bytes + repeats * len(matcher)`` in UTF-8 bytes of the
    escaped query text, where ``matcher`` is exactly what :func:`set_matcher` returns for the
    chunk (``label=~"a|b"``, or ``label="a"`` for one value).

    Args:
        values: label values.
        fixed_bytes: UTF-8 length of the rest of the query (everything except the ``repeats``
            matchers built from the chunk).
        max_bytes: upper bound for the whole query text.
        max_alternatives: upper bound for the values per chunk (Prometheus' set-matcher fast
            path handles at most 256).
        repeats: how many times the matcher appears in the query.
        label: the label name; with ``""`` its bytes must be counted in ``fixed_bytes``.

    Returns:
        Non-empty tuples of values; an empty list for no values.

    Raises:
        QueryBuildError: a budget is invalid, or one value alone does not fit (the message names
            its length and the budget).
    """
    if fixed_bytes < 0 or repeats < 1 or max_alternatives < 1 or max_bytes < 1:
        raise QueryBuildError(
            f"invalid chunk budget: fixed_bytes={fixed_bytes}, max_bytes={max_bytes}, "
            f"max_alternatives={max_alternatives}, repeats={repeats}"
        )
    if label:
        _check_label(label)
    unique = _sorted_unique(values)
    label_bytes = len(label.encode("utf-8"))
    # Per-matcher budget left after the fixed part, divided among the repeats.
    budget = (max_bytes - fixed_bytes) // repeats
    eq_overhead = label_bytes + 3  # label="..."
    re_overhead = label_bytes + 4  # label=~"..."
    chunks: list[tuple[str, ...]] = []
    current: list[str] = []
    body = 0  # bytes of the escaped alternation of ``current``
    for value in unique:
        piece = len(escape_string(quote_meta(value)).encode("utf-8"))
        if current and len(current) < max_alternatives and re_overhead + body + 1 + piece <= budget:
            current.append(value)
            body += 1 + piece
            continue
        if current:
            chunks.append(tuple(current))
        # A single value is emitted as an equality matcher (no regex escaping).
        single = eq_overhead + len(escape_string(value).encode("utf-8"))
        if single > budget:
            raise QueryBuildError(
                f"a value of {len(value.encode('utf-8'))} bytes needs a {single}-byte matcher "
                f"(x{repeats}) but the query budget leaves {max(budget, 0)} bytes per matcher "
                f"(max_bytes={max_bytes}, fixed_bytes={fixed_bytes})"
            )
        current = [value]
        body = piece
    if current:
        chunks.append(tuple(current))
    return chunks


_DURATION_UNITS: tuple[tuple[str, int], ...] = (
    ("y", 365 * 24 * 3600 * 1000),
    ("w", 7 * 24 * 3600 * 1000),
    ("d", 24 * 3600 * 1000),
    ("h", 3600 * 1000),
    ("m", 60 * 1000),
    ("s", 1000),
    ("ms", 1),
)
_DURATION_RE = re.compile(
    r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?", re.ASCII
)


def duration(seconds: float) -> str:
    """Format seconds as a Prometheus duration using the largest unit that divides it.

    ``300 -> "5m"``, ``15 -> "15s"``, ``1.5 -> "1500ms"``, ``5400 -> "90m"``, ``0 -> "0s"``.
    Units used: ``d``, ``h``, ``m``, ``s``, ``ms`` (``y``/``w`` are avoided for readability).

    Raises:
        ConfigError: negative, not finite, or not a whole number of milliseconds.
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"duration must be a finite non-negative number, got {seconds!r}")
    ms = round(seconds * 1000)
    if abs(seconds * 1000 - ms) > 1e-6 * max(1.0, abs(ms)):
        raise ConfigError(f"duration {seconds!r}s is not a whole number of milliseconds")
    if ms == 0:
        return "0s"
    for unit, size in _DURATION_UNITS[2:]:
        if ms % size == 0:
            return f"{ms // size}{unit}"
    raise AssertionError("unreachable: 1ms divides every whole number of milliseconds")


def parse_duration(text: str) -> float:
    """Parse a Prometheus duration (``"1h30m"``, ``"15s"``, ``"250ms"``, ``"2d"``) to seconds.

    Same grammar as Prometheus ``model.ParseDuration``: integer amounts of ``y w d h m s ms``
    in that order, at least one, or the bare ``"0"``.

    Raises:
        ConfigError: not a string or not a valid duration.
    """
    if not isinstance(text, str):
        raise ConfigError(f"duration must be a string like '5m', got {text!r}")
    if text == "0":
        return 0.0
    match = _DURATION_RE.fullmatch(text)
    if not text or match is None or not any(match.groups()):
        raise ConfigError(
            f"invalid duration {text!r}: use integers with units y, w, d, h, m, s, ms "
            "in that order, e.g. '1h30m', '15s', '250ms'"
        )
    ms = sum(
        int(g) * size for g, (_, size) in zip(match.groups(), _DURATION_UNITS, strict=True) if g
    )
    return ms / 1000
