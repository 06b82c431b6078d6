"""Tests for promstat.promql: escaping, matchers, chunking and durations (pure)."""

from __future__ import annotations

import itertools
import re
import uuid

import promql_parser
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from promstat.errors import ConfigError, QueryBuildError
from promstat.promql import (
    chunk_values,
    duration,
    eq,
    escape_string,
    matcher_bytes,
    neq,
    not_set_matcher,
    parse_duration,
    quote_meta,
    selector,
    set_matcher,
)

# Valid UTF-8 text: every code point except surrogates.
_TEXT = st.text(st.characters(exclude_categories=["Cs"]))
_TRICKY = st.sampled_from(
    ['"', "\\", "\n", "\r", "\t", "|", ".*", "(", ")", "[a]", "{1}", "^$", "+?", "-", "\ufffd"]
)
_VALUE = st.one_of(_TEXT, _TRICKY, st.lists(st.one_of(_TRICKY, _TEXT), max_size=5).map("".join))


def _parsed_matchers(expr: str) -> list[tuple[str, str, str]]:
    parsed = promql_parser.parse(expr)
    assert isinstance(parsed, promql_parser.VectorSelector)
    return [(m.name, str(m.op), m.value) for m in parsed.matchers.matchers]


# ----------------------------------------------------------------------------- escaping


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("", ""),
        ('a"b', 'a\\"b'),
        ("a\\b", "a\\\\b"),
        ("a\nb", "a\\nb"),
        ("a\rb", "a\\rb"),
        ("a\tb", "a\\tb"),
        ("a\ufffdb", "a\\uFFFDb"),  # Prometheus' lexer rejects a literal U+FFFD
        ("ümlaut ✓ 😀", "ümlaut ✓ 😀"),
        ("\x00\x7f\u2028", "\x00\x7f\u2028"),
        ("'single'", "'single'"),
        ("a.*|(b)", "a.*|(b)"),
    ],
)
def test_escape_string_table(value: str, expected: str) -> None:
    """String literals escape only what PromQL needs."""
    assert escape_string(value) == expected


def test_escape_string_rejects_lone_surrogate() -> None:
    """A lone surrogate is not UTF-8, so it cannot be a label value."""
    with pytest.raises(QueryBuildError, match="UTF-8"):
        escape_string("a\ud800b")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0005a3f2-7c1e-4b6e-9d2a-1f3e5c7b9a01", "0005a3f2-7c1e-4b6e-9d2a-1f3e5c7b9a01"),
        (r"\.+*?()|[]{}^$", r"\\\.\+\*\?\(\)\|\[\]\{\}\^\$"),
        ("a-b_c:d/e#f%g&h=i,j<k>l!m@n~o`p'q\"r s", "a-b_c:d/e#f%g&h=i,j<k>l!m@n~o`p'q\"r s"),
        ("ü.😀", "ü\\.😀"),
    ],
)
def test_quote_meta_table(value: str, expected: str) -> None:
    """quote_meta escapes exactly Go's QuoteMeta set (never '-', unlike re.escape)."""
    assert quote_meta(value) == expected


@given(_VALUE)
def test_quote_meta_matches_literal(value: str) -> None:
    """A quote_meta'd value is a regex that matches exactly that literal."""
    assert re.fullmatch(quote_meta(value), value, flags=re.DOTALL) is not None


# ----------------------------------------------------------------------------- matchers


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (eq("kernel_id", "k1"), 'kernel_id="k1"'),
        (eq("l", 'a"b\\c\nd'), 'l="a\\"b\\\\c\\nd"'),
        (neq("l", "x"), 'l!="x"'),
        (set_matcher("l", ["b", "a", "b"]), 'l=~"a|b"'),
        (set_matcher("l", ["only"]), 'l="only"'),
        (set_matcher("l", ["a.b", "c|d"]), 'l=~"a\\\\.b|c\\\\|d"'),
        (set_matcher("l", ['q"', "x\\y"]), 'l=~"q\\"|x\\\\\\\\y"'),
        (set_matcher("l", ("a\nb", "c")), 'l=~"a\\nb|c"'),
        (set_matcher("l", iter(["z", "y"])), 'l=~"y|z"'),
        (not_set_matcher("l", ["b", "a"]), 'l!~"a|b"'),
        (not_set_matcher("l", ["a"]), 'l!="a"'),
        (selector("up"), "up"),
        (selector("up", eq("job", "x")), 'up{job="x"}'),
        (
            selector("m:rec:sum", eq("a", "1"), set_matcher("b", ["2", "3"])),
            'm:rec:sum{a="1",b=~"2|3"}',
        ),
        (selector(None, eq("__name__", "up")), '{__name__="up"}'),
        (
            set_matcher(
                "kernel_id",
                ["0005a3f2-7c1e-4b6e-9d2a-1f3e5c7b9a01", "0005a3f2-7c1e-4b6e-9d2a-1f3e5c7b9a00"],
            ),
            'kernel_id=~"0005a3f2-7c1e-4b6e-9d2a-1f3e5c7b9a00|0005a3f2-7c1e-4b6e-9d2a-1f3e5c7b9a01"',
        ),
    ],
)
def test_builders_table(built: str, expected: str) -> None:
    """Each builder call gives exactly the expected text, and it parses as PromQL."""
    assert built == expected
    promql_parser.parse(built if "{" in built or built.isidentifier() else f"m{{{built}}}")


@pytest.mark.parametrize(
    "call",
    [
        lambda: set_matcher("l", []),
        lambda: not_set_matcher("l", []),
        lambda: set_matcher("l", "abc"),
        lambda: eq("bad-label", "x"),
        lambda: eq("0abc", "x"),
        lambda: set_matcher("a b", ["x", "y"]),
        lambda: selector("bad-metric"),
        lambda: selector(None),
    ],
)
def test_builders_reject_bad_input(call: object) -> None:
    """Empty sets, bare strings, invalid names raise QueryBuildError."""
    assert callable(call)
    with pytest.raises(QueryBuildError):
        call()


def test_set_matcher_equal_sets_identical_bytes() -> None:
    """Equal sets in any order and with duplicates give byte-identical text."""
    ids = [str(uuid.UUID(int=i)) for i in range(50)]
    assert set_matcher("kernel_id", ids) == set_matcher("kernel_id", [*reversed(ids), *ids])


def test_set_matcher_uuids_take_prometheus_fast_path() -> None:
    """UUID alternatives are plain literals: QuoteMeta(alt) == alt for every alternative."""
    ids = [str(uuid.uuid4()) for _ in range(20)]
    ((_, _, body),) = _parsed_matchers(f"m{{{set_matcher('kernel_id', ids)}}}")
    assert all(quote_meta(alt) == alt for alt in body.split("|"))
    assert "\\" not in body


@given(_VALUE)
@example("\ufffd")
@example('\\"')
def test_eq_roundtrips_through_parser(value: str) -> None:
    """The parser reads back exactly the value from an equality matcher."""
    assert _parsed_matchers(selector("m", eq("l", value))) == [("l", "MatchOp.Equal", value)]
    assert _parsed_matchers(selector("m", neq("l", value))) == [("l", "MatchOp.NotEqual", value)]


@given(st.lists(_VALUE, min_size=1, max_size=20))
def test_set_matcher_roundtrips_through_parser(values: list[str]) -> None:
    """The parsed regex matches exactly the given values, using Python's regex as a model."""
    expr = selector("m", set_matcher("l", values))
    ((name, op, regex),) = _parsed_matchers(expr)
    assert name == "l"
    unique = sorted(set(values))
    if len(unique) == 1:
        assert (op, regex) == ("MatchOp.Equal", unique[0])
        return
    assert op == "MatchOp.Re"
    compiled = re.compile(regex, flags=re.DOTALL)
    for value in unique:
        assert compiled.fullmatch(value) is not None
    for value in values:
        for probe in (value + "x", "x" + value, value[:-1], value + "\n"):
            assert (compiled.fullmatch(probe) is not None) == (probe in unique)


@given(st.lists(_VALUE, min_size=1, max_size=10))
def test_not_set_matcher_roundtrips_through_parser(values: list[str]) -> None:
    """The negative set matcher parses to != / !~ with the same body."""
    ((_, op, body),) = _parsed_matchers(selector("m", not_set_matcher("l", values)))
    ((_, _, positive),) = _parsed_matchers(selector("m", set_matcher("l", values)))
    assert body == positive
    assert op == ("MatchOp.NotEqual" if len(set(values)) == 1 else "MatchOp.NotRe")


def test_matcher_bytes_counts_utf8() -> None:
    """matcher_bytes is the UTF-8 size of the set matcher."""
    assert matcher_bytes("l", ["ü"]) == len('l="ü"'.encode())
    assert matcher_bytes("l", ["a", "b"]) == len('l=~"a|b"')


# ----------------------------------------------------------------------------- chunking


def _query_bytes(chunk: tuple[str, ...], fixed: int, repeats: int) -> int:
    return fixed + repeats * matcher_bytes("kernel_id", chunk)


@given(
    values=st.lists(st.one_of(_VALUE, st.uuids().map(str)), max_size=300),
    # fixed + 3 x the largest single-value matcher (92 bytes) stays under the smallest budget,
    # so every generated case is feasible; infeasible values have their own test
    fixed=st.integers(0, 400),
    max_bytes=st.integers(700, 5000),
    max_alternatives=st.integers(1, 300),
    repeats=st.integers(1, 3),
)
def test_chunk_values_respects_budgets(
    values: list[str], fixed: int, max_bytes: int, max_alternatives: int, repeats: int
) -> None:
    """Every chunk fits both budgets and the chunks concatenate to the sorted set."""
    values = [v for v in values if len(escape_string(v).encode()) < 80]
    chunks = chunk_values(
        values,
        fixed_bytes=fixed,
        max_bytes=max_bytes,
        max_alternatives=max_alternatives,
        repeats=repeats,
        label="kernel_id",
    )
    assert [v for chunk in chunks for v in chunk] == sorted(set(values))
    for chunk in chunks:
        assert 1 <= len(chunk) <= max_alternatives
        assert _query_bytes(chunk, fixed, repeats) <= max_bytes
        promql_parser.parse(selector("m", set_matcher("kernel_id", chunk)))


@given(st.lists(st.uuids().map(str), min_size=1, max_size=2000))
def test_chunk_values_packs_greedily(values: list[str]) -> None:
    """Chunks are full: adding the next value to a chunk would break a budget."""
    chunks = chunk_values(values, fixed_bytes=200, max_bytes=4096, label="kernel_id")
    for chunk, following in itertools.pairwise(chunks):
        bigger = (*chunk, following[0])
        assert len(bigger) > 256 or _query_bytes(bigger, 200, 1) > 4096


def test_chunk_values_without_label_counts_wrapper() -> None:
    """With label="" the label name is part of fixed_bytes; the result stays in budget."""
    ids = [str(uuid.UUID(int=i)) for i in range(1000)]
    fixed = len('max by (kernel_id) (m{,stat="current"})') + len("kernel_id")
    chunks = chunk_values(ids, fixed_bytes=fixed, max_bytes=16384)
    for chunk in chunks:
        query = f'max by (kernel_id) (m{{{set_matcher("kernel_id", chunk)},stat="current"}})'
        assert len(query.encode()) <= 16384
        promql_parser.parse(query)
    assert sum(map(len, chunks)) == 1000
    assert max(map(len, chunks)) == 256  # the alternatives budget binds first for UUIDs


def test_chunk_values_stable_and_deterministic() -> None:
    """The same set in any order gives the same chunks; an empty input gives no chunks."""
    ids = [str(uuid.UUID(int=i * 7919)) for i in range(600)]
    first = chunk_values(ids, fixed_bytes=100, max_bytes=8000, max_alternatives=100)
    again = chunk_values(reversed(ids + ids), fixed_bytes=100, max_bytes=8000, max_alternatives=100)
    assert first == again
    assert chunk_values([], fixed_bytes=100) == []


def test_chunk_values_single_value_too_large() -> None:
    """A value that cannot fit alone raises, naming its length and the budget."""
    with pytest.raises(QueryBuildError, match=r"value of 5000 bytes.*max_bytes=4096"):
        chunk_values(["x" * 5000], fixed_bytes=100, max_bytes=4096)
    with pytest.raises(QueryBuildError, match="value of 3 bytes"):
        chunk_values(["abc"], fixed_bytes=20, max_bytes=20)


def test_chunk_values_single_value_uses_equality_cost() -> None:
    """A lone value is costed as an equality matcher, which needs no regex escaping."""
    value = "." * 10  # 10 bytes as eq, 30 bytes as an escaped regex
    budget = 100 + len(f'l="{value}"')
    assert chunk_values([value], fixed_bytes=100, max_bytes=budget, label="l") == [(value,)]


def test_chunk_values_repeats_multiply_cost() -> None:
    """A matcher used twice in the query costs twice."""
    ids = [str(uuid.UUID(int=i)) for i in range(100)]
    once = chunk_values(ids, fixed_bytes=0, max_bytes=2000, label="k")
    twice = chunk_values(ids, fixed_bytes=0, max_bytes=2000, label="k", repeats=2)
    assert len(twice) > len(once)
    assert all(2 * matcher_bytes("k", c) <= 2000 for c in twice)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fixed_bytes": -1},
        {"fixed_bytes": 0, "repeats": 0},
        {"fixed_bytes": 0, "max_alternatives": 0},
        {"fixed_bytes": 0, "max_bytes": 0},
        {"fixed_bytes": 0, "label": "bad label"},
    ],
)
def test_chunk_values_rejects_bad_budgets(kwargs: dict[str, object]) -> None:
    """Nonsensical budgets raise QueryBuildError."""
    with pytest.raises(QueryBuildError):
        chunk_values(["a"], **kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (300, "5m"),
        (15, "15s"),
        (1.5, "1500ms"),
        (0.25, "250ms"),
        (0, "0s"),
        (5400, "90m"),
        (3600, "1h"),
        (86400, "1d"),
        (7 * 86400, "7d"),
        (0.1 + 0.2, "300ms"),
        (61, "61s"),
    ],
)
def test_duration_table(seconds: float, text: str) -> None:
    """Seconds format with the largest unit that divides them."""
    assert duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)
    promql_parser.parse(f"rate(m[{text}])" if seconds else "m")


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), 0.0005, 1.0001])
def test_duration_rejects(bad: float) -> None:
    """Negative, non-finite and sub-millisecond durations raise ConfigError."""
    with pytest.raises(ConfigError):
        duration(bad)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1h30m", 5400),
        ("15s", 15),
        ("250ms", 0.25),
        ("1m500ms", 60.5),
        ("2d", 172800),
        ("1w", 604800),
        ("1y", 31536000),
        ("0", 0),
        ("0s", 0),
        ("1y2w3d4h5m6s7ms", 31536000 + 2 * 604800 + 3 * 86400 + 4 * 3600 + 5 * 60 + 6.007),
    ],
)
def test_parse_duration_table(text: str, seconds: float) -> None:
    """Prometheus durations parse to seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5", "1.5s", "5M", "30m1h", " 5m", "5m ", "-5m", "ms", "1x"])
def test_parse_duration_rejects(bad: str) -> None:
    """Malformed durations raise ConfigError naming the input."""
    with pytest.raises(ConfigError, match="invalid duration"):
        parse_duration(bad)


def test_parse_duration_rejects_non_string() -> None:
    """A number instead of a duration string raises ConfigError."""
    with pytest.raises(ConfigError):
        parse_duration(5)  # type: ignore[arg-type]


@given(st.integers(1, 10**12))
def test_duration_roundtrip(ms: int) -> None:
    """duration and parse_duration are inverse on whole milliseconds."""
    text = duration(ms / 1000)
    assert round(parse_duration(text) * 1000) == ms
    if ms < 2**32:  # promql_parser overflows on larger counts of one unit ("4294967296ms")
        assert promql_parser.parse_duration(text) is not None
