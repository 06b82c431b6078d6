"""promstat's matchers select exactly the right series on a real Prometheus.

One Prometheus per module holds a corpus of series whose label ``v`` takes several hundred
tricky values: regex metacharacters, quotes, backslashes, control characters, U+FFFD, line
separators, combining marks, emoji, prefixes of one another. The corpus is generated
deterministically up front (a fixed seed, not Hypothesis draws, so the backfill happens once and
is the same on every run); Hypothesis then picks values and subsets from it, and also invents
values that are *not* in it, and every equality, inequality, set and negative set matcher that
promstat builds must select exactly the expected series.

The empty string is not in the corpus: Prometheus treats ``v=""`` as "no label ``v``", so a
series cannot carry it.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promstat.promql import (
    chunk_values,
    eq,
    neq,
    not_set_matcher,
    selector,
    set_matcher,
)
from promstat.testing import lab
from promstat.testing.fake import openmetrics_text

pytestmark = pytest.mark.slow

METRIC = "promstat_matcher_corpus"
LABEL = "v"
T = 1_700_000_000.0  # sample time; queries run a few seconds later, inside the lookback

_CURATED = [
    '"',
    '""',
    "\\",
    "\\\\",
    '\\"',
    '"\\',
    "\\n",
    "\n",
    "x\n",
    "\ny",
    "\r",
    "\r\n",
    "\t",
    " ",
    "  ",
    "|",
    "||",
    "a|b",
    "a",
    "b",
    "ab",
    "A",
    "a.",
    "a.*",
    ".*a",
    ".*",
    ".",
    ".+",
    "(",
    ")",
    "()",
    "(?i)A",
    "(a|b)",
    "[",
    "]",
    "[ab]",
    "{",
    "}",
    "a{2}",
    "aa",
    "^",
    "$",
    "^a$",
    "+",
    "?",
    "*",
    "-",
    "\\-",
    "a-b",
    "\\.",
    "\\d",
    "1",
    "%",
    "'",
    "`",
    "#",
    ",",
    "=",
    "~",
    '}"',
    "\ufffd",
    "\u2028",
    "\u2029",
    "\u0085",
    "\x01",
    "\x7f",
    "\u200b",
    "\ufeff",
    "é",  # NFC
    "e\u0301",  # NFD: a different label value
    "ß",
    "SS",
    "ǅ",
    "İ",
    "i̇",
    "Ω",
    "Ω",  # ohm sign vs omega
    "😀",
    'emoji 😀 and "quotes"',
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\U0010fffd",
    "日本語",
    "עברית",
    "0005a3f2-7c1e-4b6e-9d2a-1f3e5c7b9a01",
    "0005a3f2-7c1e-4b6e-9d2a-1f3e5c7b9a0",
    "0005a3f2-7c1e-4b6e-9d2a-1f3e5c7b9a011",
]

_META = list("\\.+*?()|[]{}^$-\"'\n\r\t ")


def _random_value(rng: random.Random) -> str:
    chars = []
    for _ in range(rng.randint(1, 12)):
        pick = rng.random()
        if pick < 0.35:
            chars.append(rng.choice(_META))
        elif pick < 0.65:
            chars.append(chr(rng.randint(0x20, 0x7E)))
        elif pick < 0.75:
            chars.append(chr(rng.randint(0x00, 0x1F)))
        elif pick < 0.9:
            code = rng.randint(0x80, 0xFFFF)
            chars.append(chr(code if not 0xD800 <= code <= 0xDFFF else 0xFFFD))
        else:
            chars.append(chr(rng.randint(0x10000, 0x10FFFF)))
    return "".join(chars)


def _build_corpus() -> list[str]:
    rng = random.Random(20240611)
    values = set(_CURATED)
    values.update(str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(50))
    while len(values) < 500:
        values.add(_random_value(rng))
    values.discard("")
    return sorted(values)


CORPUS = _build_corpus()
CORPUS_SET = frozenset(CORPUS)


@dataclass(frozen=True)
class Corpus:
    """The running server and the values it holds."""

    proc: lab.PrometheusProcess

    def select(self, *matchers: str) -> set[str]:
        """Return the ``v`` values of the corpus series the matchers select."""
        result = self.proc.query(selector(METRIC, *matchers), at=T + 5)
        values = [series["metric"][LABEL] for series in result]
        assert len(values) == len(set(values))
        return set(values)


@pytest.fixture(scope="module")
def corpus() -> Iterator[Corpus]:
    """A Prometheus holding one series per corpus value (backfilled through OpenMetrics)."""
    text = openmetrics_text(
        (METRIC, {LABEL: value, "i": str(i)}, T, float(i)) for i, value in enumerate(CORPUS)
    )
    with lab.start_prometheus(openmetrics=text) as proc:
        loaded = Corpus(proc)
        stored = {s["metric"][LABEL] for s in proc.query(METRIC, at=T + 5)}
        # The backfill must carry every value exactly, or the checks below prove nothing.
        assert stored == CORPUS_SET, sorted(stored ^ CORPUS_SET)
        yield loaded


# Any valid UTF-8 string (no surrogates), most of them absent from the corpus.
_ANY_TEXT = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12)
_CORPUS_VALUE = st.sampled_from(CORPUS)
_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_SETTINGS
@given(value=st.one_of(_CORPUS_VALUE, _ANY_TEXT))
def test_eq_and_neq_select_exactly(corpus: Corpus, value: str) -> None:
    """label="value" selects exactly the series with that value; != selects all the others."""
    expected = {value} & CORPUS_SET
    assert corpus.select(eq(LABEL, value)) == expected
    assert corpus.select(neq(LABEL, value)) == CORPUS_SET - expected


@_SETTINGS
@given(values=st.lists(st.one_of(_CORPUS_VALUE, _CORPUS_VALUE, _ANY_TEXT), min_size=1, max_size=80))
def test_set_matchers_select_exactly(corpus: Corpus, values: list[str]) -> None:
    """label=~"a|b|..." selects exactly the listed values; !~ selects exactly the rest."""
    expected = set(values) & CORPUS_SET
    assert corpus.select(set_matcher(LABEL, values)) == expected
    assert corpus.select(not_set_matcher(LABEL, values)) == CORPUS_SET - expected


@_SETTINGS
@given(
    values=st.lists(_CORPUS_VALUE, min_size=1, max_size=300, unique=True),
    max_alternatives=st.integers(1, 256),
)
def test_chunked_set_matchers_cover_exactly(
    corpus: Corpus, values: list[str], max_alternatives: int
) -> None:
    """Chunked set matchers, one query each, together select exactly the requested values."""
    fixed = len(f"{METRIC}{{}}")
    chunks = chunk_values(
        values,
        fixed_bytes=fixed,
        max_bytes=1024,
        max_alternatives=max_alternatives,
        label=LABEL,
    )
    selected: set[str] = set()
    for chunk in chunks:
        matcher = set_matcher(LABEL, chunk)
        assert len(selector(METRIC, matcher).encode()) <= 1024
        found = corpus.select(matcher)
        assert found == set(chunk)
        selected |= found
    assert selected == set(values)


def test_whole_corpus_in_one_set_matcher(corpus: Corpus) -> None:
    """All values at once (hundreds of alternatives, every tricky byte) select everything."""
    assert corpus.select(set_matcher(LABEL, CORPUS)) == CORPUS_SET
    assert corpus.select(not_set_matcher(LABEL, CORPUS)) == set()
