"""Tests for promstat.renderer: legacy number formatting and the live_stat wire shape."""

from __future__ import annotations

import json
from decimal import Decimal, DecimalException

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from promstat.catalog import DEFAULT_CATALOG, SENTINEL_CAPACITY, Kind, MetricSpec
from promstat.renderer import (
    STATS_ORDER,
    format_decimal,
    format_decimal_reference,
    format_integral,
    format_integral_reference,
    format_pct,
    format_pct_reference,
    render_agent,
    render_kernel,
    to_json,
    to_msgpack,
)

# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # reference section 1.3
        ("4294967296", "4294967296"),
        ("500.01133333333337", "500.011"),
        ("12.500", "12.5"),
        ("0.000", "0"),
        ("0", "0"),
        # half-even ties at the 4th decimal, and just above them
        ("0.0005", "0"),
        ("0.0015", "0.002"),
        ("0.0025", "0.002"),
        ("0.00250000001", "0.003"),
        ("2.4995", "2.5"),
        ("1.2345", "1.234"),
        ("1.2355", "1.236"),
        ("1.23450", "1.234"),
        # carries
        ("9.9996", "10"),
        ("99.9995", "100"),
        ("0.9995", "1"),
        ("0.0996", "0.1"),
        ("19.9999", "20"),
        # normalisation
        ("007", "7"),
        ("007.100", "7.1"),
        ("1.10", "1.1"),
        ("100", "100"),
        ("100.0", "100"),
        # negative numbers
        ("-5", "-5"),
        ("-1.2345", "-1.234"),
        ("-1.2355", "-1.236"),
        ("-9.9996", "-10"),
        ("-0.0001", "0"),
        ("-0.0005", "0"),
        ("-0", "0"),
        # what Prometheus sends beyond 'f' formatting (abs < 1e-6 or >= 1e21)
        ("1.5e-07", "0"),
        ("-1.5e-07", "0"),
        ("1e+21", "1000000000000000000000"),
        ("1.2345678e+22", "12345678000000000000000"),
        # beyond 28 digits legacy's quantize fails and falls back to str(Decimal)
        ("1e+26", "1E+26"),
        ("123456789012345678901234567890", "123456789012345678901234567890"),
        # non-finite: str(Decimal(...))
        ("NaN", "NaN"),
        ("+Inf", "Infinity"),
        ("-Inf", "-Infinity"),
        # not a number at all: passed through (legacy's str fallback), never an exception
        ("garbage", "garbage"),
    ],
)
def test_format_decimal_table(raw: str, expected: str) -> None:
    """Raw Prometheus strings format exactly like legacy _to_serializable_value."""
    assert format_decimal(raw) == expected
    assert format_decimal_reference(raw) == expected


def test_format_decimal_floats_use_repr() -> None:
    """Floats are read through repr, as if Prometheus had sent them."""
    assert format_decimal(0.1 + 0.2) == "0.3"
    assert format_decimal(0.0005) == "0"  # the exact binary value is just above the tie
    assert format_decimal(1e16) == "10000000000000000"
    assert format_decimal(float("nan")) == "NaN"
    assert format_decimal(float("inf")) == "Infinity"
    assert format_decimal(7) == "7"


def test_format_decimal_other_quantum() -> None:
    """The quantum argument selects how many decimals survive."""
    assert format_decimal("27.499", quantum=2) == "27.5"
    assert format_decimal("0.125", quantum=2) == "0.12"
    assert format_decimal("0.135", quantum=2) == "0.14"
    assert format_decimal("2.5", quantum=0) == "2"
    assert format_decimal("1.23456789", quantum=7) == "1.2345679"


_DECIMAL_TEXT = st.from_regex(r"-?[0-9]{1,30}(\.[0-9]{1,25})?", fullmatch=True)
_TIE_TEXT = st.builds(
    lambda sign, whole, kept, tail: f"{sign}{whole}.{kept}5{tail}",
    st.sampled_from(["", "-"]),
    st.integers(0, 10**12),
    st.from_regex(r"[0-9]{3}", fullmatch=True),
    st.sampled_from(["", "0", "000", "0001", "9"]),
)


def _go_format(value: float) -> str:
    """Go's strconv.FormatFloat(v, 'f', -1, 64): shortest digits, no exponent."""
    return format(Decimal(repr(value)), "f")


@given(
    st.one_of(
        _DECIMAL_TEXT,
        _TIE_TEXT,
        st.decimals(allow_nan=True, allow_infinity=True).map(str),
        st.floats().map(repr),
        st.floats(allow_nan=False, allow_infinity=False).map(_go_format),
        st.from_regex(r"[+-]?[0-9_]*\.?[0-9]*([eE][+-]?[0-9]{1,3})?", fullmatch=True),
    )
)
@example("9" * 24 + ".9996")
@example("9" * 25 + ".9996")
@example("9" * 26 + ".9996")
@example("9" * 21 + ".99999999")
@example("9" * 22 + ".9999999")
def test_format_decimal_fast_path_matches_reference(text: str) -> None:
    """The string fast path agrees with the Decimal implementation on any decimal string."""
    assert format_decimal(text) == format_decimal_reference(text)
    for quantum in (0, 2, 6, 9):
        assert format_decimal(text, quantum=quantum) == format_decimal_reference(
            text, quantum=quantum
        )


@given(st.floats())
def test_format_decimal_floats_match_reference(value: float) -> None:
    """Float input agrees with the reference (both read repr(value))."""
    assert format_decimal(value) == format_decimal_reference(value)


def _legacy_to_serializable_value(value: Decimal) -> str:
    """Backend.AI agent/stats.py _to_serializable_value + utils.remove_exponent, verbatim."""
    try:
        num = value.quantize(Decimal("0.000"))
        return str(num.quantize(Decimal(1)) if num == num.to_integral() else num.normalize())
    except DecimalException:
        return str(value)


@given(st.one_of(_DECIMAL_TEXT, st.decimals(allow_nan=True, allow_infinity=True).map(str)))
def test_format_decimal_matches_legacy_code(text: str) -> None:
    """The result is legacy's code verbatim, except that "-0" is shown as "0"."""
    legacy = _legacy_to_serializable_value(Decimal(text))
    assert format_decimal(text) == ("0" if legacy == "-0" else legacy)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("4294967296", "4294967296"),
        ("1181116006.4", "1181116006"),
        ("1181116006.5", "1181116006"),  # tie to even
        ("1181116007.5", "1181116008"),
        ("1181116006.5000001", "1181116007"),
        ("2.5004", "3"),  # rounded once, not 2.500 first
        ("0.4", "0"),
        ("-0.4", "0"),
        ("-2.6", "-3"),
        ("1e+21", "1000000000000000000000"),
        ("1e+26", "100000000000000000000000000"),
        ("1.5e-07", "0"),
        ("NaN", "0"),
        ("+Inf", "0"),
        ("-Inf", "0"),
        ("garbage", "0"),
        (SENTINEL_CAPACITY, SENTINEL_CAPACITY),
    ],
)
def test_format_integral_table(raw: str, expected: str) -> None:
    """Integral fields are half-even integer strings that int() accepts."""
    assert format_integral(raw) == expected
    int(format_integral(raw))


@given(
    st.one_of(
        _DECIMAL_TEXT,
        _TIE_TEXT,
        st.decimals().map(str),
        st.floats().map(repr),
    )
)
def test_format_integral_fast_path_matches_reference(text: str) -> None:
    """The integral fast path agrees with Decimal rounding and always int()-parses."""
    assert format_integral(text) == format_integral_reference(text)
    int(format_integral(text))


@pytest.mark.parametrize(
    ("current", "capacity", "expected"),
    [
        # reference section 1.3 / 1.7 / 1.8
        ("500.01133333333337", "1000", "50"),
        ("1181116006", "4294967296", "27.5"),
        ("2046.356", "1048576", "0.2"),
        ("34359738368", "85520809984", "40.18"),
        ("96000.5", "30012", "319.87"),
        ("1832800.358", "1290.608", "142010.61"),
        ("314773504", "176128", "178718.6"),
        # the literal "0.00": no capacity, zero, negative, not normal
        ("5", None, "0.00"),
        ("5", "0", "0.00"),
        ("5", "0.000", "0.00"),
        ("5", "-100", "0.00"),
        ("5", "NaN", "0.00"),
        ("5", "+Inf", "0.00"),
        ("5", "1e-1000000", "0.00"),
        ("5", "garbage", "0.00"),
        # a zero percentage is "0", not "0.00"
        ("0", "100", "0"),
        ("1832800.358", SENTINEL_CAPACITY, "0"),
        # ties at the 2nd decimal (exact in Decimal, inexact in floats)
        ("1", "32", "3.12"),
        ("3", "32", "9.38"),
        ("1", "8", "12.5"),
        ("0.0125", "100", "0.01"),
        ("0.0135", "100", "0.01"),
        # negative and non-finite current
        ("-1", "3", "-33.33"),
        ("-0.001", "100", "0"),
        ("NaN", "100", "NaN"),
        ("+Inf", "100", "Infinity"),
        ("-Inf", "100", "-Infinity"),
    ],
)
def test_format_pct_table(current: str, capacity: str | None, expected: str) -> None:
    """pct rounds to 2 decimals and strips zeros, or is the literal "0.00"."""
    assert format_pct(current, capacity) == expected
    assert format_pct_reference(current, capacity) == expected


_PCT_NUMBER = st.one_of(
    _DECIMAL_TEXT,
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.floats().map(repr),
    st.integers(0, 10**20).map(str),
)


@given(_PCT_NUMBER, st.one_of(st.none(), _PCT_NUMBER))
@example("1", "32")
@example("125", "1000000")
@example("1e+12", "1e-300")
def test_format_pct_fast_path_matches_reference(current: str, capacity: str | None) -> None:
    """The float fast path never disagrees with the exact Decimal computation."""
    assert format_pct(current, capacity) == format_pct_reference(current, capacity)


@given(st.integers(0, 10**6), st.integers(1, 10**6), st.integers(0, 4))
def test_format_pct_ties_from_rationals(numerator: int, denominator: int, shift: int) -> None:
    """Ratios of small integers (many exact ties) agree with the Decimal computation."""
    current = str(Decimal(numerator).scaleb(-shift))
    assert format_pct(current, str(denominator)) == format_pct_reference(current, str(denominator))


# ----------------------------------------------------------------------------- kernels

# Reference section 1.7 (an agent before 26.9: kernel cpu_util's unit_hint "percent"), keys in
# legacy's order within each metric.
PRE_26_9 = DEFAULT_CATALOG.for_backendai("26.4")
LEGACY_KERNEL: dict[str, dict[str, str]] = {
    "cpu_util": {
        "current": "500.011",
        "capacity": "1000",
        "pct": "50",
        "unit_hint": "percent",
        "stats.max": "1832800.358",
        "stats.avg": "917045.483",
    },
    "cpu_used": {
        "current": "1832800.358",
        "capacity": "1290.608",
        "pct": "142010.61",
        "unit_hint": "msec",
    },
    "mem": {
        "current": "1181116006",
        "capacity": "4294967296",
        "pct": "27.5",
        "unit_hint": "bytes",
        "stats.max": "1610612736",
    },
    "io_read": {
        "current": "58720256",
        "capacity": "3387392",
        "pct": "1733.49",
        "unit_hint": "bytes",
        "stats.rate": "34924.477",
    },
    "io_write": {
        "current": "314773504",
        "capacity": "176128",
        "pct": "178718.6",
        "unit_hint": "bytes",
        "stats.rate": "69848.955",
    },
    "net_rx": {"current": "2046.356", "capacity": "1048576", "pct": "0.2", "unit_hint": "bps"},
    "net_tx": {"current": "477.483", "capacity": "524288", "pct": "0.09", "unit_hint": "bps"},
    "io_scratch_size": {
        "current": "0",
        "capacity": "0",
        "pct": "0.00",
        "unit_hint": "bytes",
        "stats.max": "0",
    },
    "cuda_mem": {
        "current": "34359738368",
        "capacity": "85520809984",
        "pct": "40.18",
        "unit_hint": "bytes",
        "stats.max": "42949672960",
    },
    "cuda_util": {
        "current": "87",
        "capacity": "100",
        "pct": "87",
        "unit_hint": "percent",
        "stats.max": "100",
        "stats.avg": "63.417",
    },
}

# What Prometheus would send for that kernel: unrounded strings, the legacy capacities as
# capacity series, no capacity for io_scratch_size, and no window stats where legacy had none.
RAW_KERNEL: dict[str, dict[str, str]] = {
    "cpu_util": {
        "current": "500.01133333333337",
        "capacity": "1000",
        "max": "1832800.3581",
        "avg": "917045.48266666",
    },
    "cpu_used": {"current": "1832800.358", "capacity": "1290.608"},
    "mem": {"current": "1181116006", "capacity": "4294967296", "max": "1610612736"},
    "io_read": {"current": "58720256", "capacity": "3387392", "rate": "34924.4771"},
    "io_write": {"current": "314773504", "capacity": "176128", "rate": "69848.95466"},
    "net_rx": {"current": "2046.3561", "capacity": "1048576"},
    "net_tx": {"current": "477.48316", "capacity": "524288"},
    "io_scratch_size": {"current": "0"},
    "cuda_mem": {"current": "34359738368", "capacity": "85520809984", "max": "42949672960"},
    "cuda_util": {"current": "87", "capacity": "100", "max": "100", "avg": "63.41666666666666"},
}


def test_render_kernel_rebuilds_legacy_example() -> None:
    """Raw per-metric values render to the legacy kernel payload of section 1.7."""
    rendered = render_kernel(RAW_KERNEL, catalog=PRE_26_9)
    assert rendered == LEGACY_KERNEL
    assert rendered is not None
    assert list(rendered) == sorted(LEGACY_KERNEL)  # metrics sorted by name
    for name, expected in LEGACY_KERNEL.items():
        assert list(rendered[name]) == list(expected)  # key order within a metric


def test_render_kernel_json_is_graphene_jsonstring() -> None:
    """to_json gives json.dumps defaults, so clients json.loads it back unchanged."""
    rendered = render_kernel(RAW_KERNEL, catalog=PRE_26_9)
    text = to_json(rendered)
    assert text == json.dumps(rendered)
    assert text is not None
    assert text.startswith('{"cpu_used": {"current": "1832800.358", "capacity": "1290.608"')
    assert json.loads(text) == LEGACY_KERNEL
    assert to_json(None) is None
    assert to_json({"x": {"unit_hint": "°C"}}) == '{"x": {"unit_hint": "\\u00b0C"}}'


def test_unit_hints_follow_the_backendai_version() -> None:
    """Kernel cpu_util: "millicores" from 26.9 (the default), "percent" for older agents."""
    raw = {"cpu_util": {"current": "500", "capacity": "1000"}}
    assert DEFAULT_CATALOG.backendai_version == "26.9"
    for version, hint in (("26.9", "millicores"), ("26.9.6", "millicores"), ("27.1", "millicores"),
                          ("26.4.4", "percent"), ("25.15", "percent")):  # fmt: skip
        rendered = render_kernel(raw, catalog=DEFAULT_CATALOG.for_backendai(version))
        assert rendered is not None
        assert rendered["cpu_util"]["unit_hint"] == hint, version
    agent = render_agent({}, {"cpu_util": {"0": raw["cpu_util"]}}, catalog=PRE_26_9)
    assert agent is not None
    assert agent["devices"]["cpu_util"]["0"]["unit_hint"] == "msec"  # node hint never changed
    # A hint set by the operator is not a versioned one: it stays.
    custom = DEFAULT_CATALOG.extended(
        {"cpu_util": MetricSpec(kind=Kind.RATE_COUNTER, unit_hint="m")}
    )
    assert custom.for_backendai("26.4").lookup("cpu_util").unit_hint == "m"
    assert DEFAULT_CATALOG.for_backendai("26.4").for_backendai("26.9") == DEFAULT_CATALOG


def test_render_kernel_empty_is_none() -> None:
    """A kernel without data renders None (GraphQL null), as a missing Valkey key did."""
    assert render_kernel({}) is None
    assert render_kernel({"mem": {"capacity": "100"}}) is None


def test_render_kernel_skips_metric_without_current() -> None:
    """Only metrics with a current value are live."""
    rendered = render_kernel({"mem": {"capacity": "100"}, "cuda_mem": {"current": "5"}})
    assert rendered is not None
    assert list(rendered) == ["cuda_mem"]


def test_render_kernel_missing_capacity_and_stats() -> None:
    """Missing capacity: sentinel or "0"; missing max/avg repeat current; missing rate is 0."""
    rendered = render_kernel(
        {
            "cpu_used": {"current": "1300.19"},
            "io_read": {"current": "1024"},
            "net_rx": {"current": "10.5"},
            "cpu_util": {"current": "1.6041", "capacity": "1000"},
            "mem": {"current": "1048576.7", "capacity": "4294967296"},
            "tt_n300_power": {"current": "31.25"},
        }
    )
    assert rendered == {
        "cpu_used": {
            "current": "1300.19",
            "capacity": SENTINEL_CAPACITY,
            "pct": "0",
            "unit_hint": "msec",
        },
        "cpu_util": {
            "current": "1.604",
            "capacity": "1000",
            "pct": "0.16",
            "unit_hint": "millicores",
            "stats.max": "1.604",
            "stats.avg": "1.604",
        },
        "io_read": {
            "current": "1024",
            "capacity": SENTINEL_CAPACITY,
            "pct": "0",
            "unit_hint": "bytes",
            "stats.rate": "0",
        },
        "mem": {
            "current": "1048577",
            "capacity": "4294967296",
            "pct": "0.02",
            "unit_hint": "bytes",
            "stats.max": "1048577",
        },
        "net_rx": {
            "current": "10.5",
            "capacity": SENTINEL_CAPACITY,
            "pct": "0",
            "unit_hint": "bps",
        },
        "tt_n300_power": {
            "current": "31.25",
            "capacity": "0",
            "pct": "0.00",
            "unit_hint": "watts",
            "stats.max": "31.25",
        },
    }


def test_render_kernel_integral_fields_are_integer_strings() -> None:
    """current, capacity and stats.max of integral metrics always int()-parse."""
    rendered = render_kernel(
        {
            "mem": {"current": "1e+21", "capacity": "4294967296.5", "max": "1610612736.75"},
            "cuda_mem": {"current": "NaN", "capacity": "85520809984"},
            "io_write": {"current": "314773504.4", "rate": "69848.95466"},
        }
    )
    assert rendered is not None
    for name in ("mem", "cuda_mem", "io_write"):
        entry = rendered[name]
        int(entry["current"])
        int(entry["capacity"])
        if "stats.max" in entry:
            int(entry["stats.max"])
    assert rendered["mem"]["current"] == "1000000000000000000000"
    assert rendered["mem"]["capacity"] == "4294967296"
    assert rendered["mem"]["stats.max"] == "1610612737"
    assert rendered["io_write"]["stats.rate"] == "69848.955"  # rates stay decimal
    assert rendered["cuda_mem"]["pct"] == "NaN"


def test_render_kernel_nan_and_inf() -> None:
    """Non-integral fields show NaN/Infinity the way Decimal spells them."""
    rendered = render_kernel({"cuda_util": {"current": "NaN", "capacity": "+Inf", "max": "-Inf"}})
    assert rendered == {
        "cuda_util": {
            "current": "NaN",
            "capacity": "Infinity",
            "pct": "0.00",
            "unit_hint": "percent",
            "stats.max": "-Infinity",
            "stats.avg": "NaN",
        }
    }


def test_render_kernel_accelerator_families_by_pattern() -> None:
    """Metrics outside the built-in names get the catalog pattern's unit hint and stats."""
    rendered = render_kernel(
        {
            "npu_util": {"current": "37.5", "capacity": "200", "max": "90", "avg": "40.123456"},
            "foo_mem": {"current": "2048.6", "capacity": "8192"},
            "foo_power": {"current": "250.5"},
            "foo_temperature": {"current": "61", "capacity": "120"},
            "something_else": {"current": "3"},
        }
    )
    assert rendered == {
        "foo_mem": {
            "current": "2049",
            "capacity": "8192",
            "pct": "25.01",
            "unit_hint": "bytes",
            "stats.max": "2049",
        },
        "foo_power": {
            "current": "250.5",
            "capacity": "0",
            "pct": "0.00",
            "unit_hint": "Watts",
            "stats.max": "250.5",
        },
        "foo_temperature": {
            "current": "61",
            "capacity": "120",
            "pct": "50.83",
            "unit_hint": "Celsius",
        },
        "npu_util": {
            "current": "37.5",
            "capacity": "200",
            "pct": "18.75",
            "unit_hint": "percent",
            "stats.max": "90",
            "stats.avg": "40.123",
        },
        "something_else": {"current": "3", "capacity": "0", "pct": "0.00", "unit_hint": "count"},
    }


def test_render_kernel_custom_catalog() -> None:
    """An extended catalog changes the rendering, and layouts are cached per catalog."""
    custom = DEFAULT_CATALOG.extended(
        {"mem": MetricSpec(unit_hint="MiB", stats=("avg", "max", "rate"), integral=False)}
    )
    raw = {"mem": {"current": "1.5", "capacity": "3", "avg": "1.25", "rate": "0.5"}}
    assert render_kernel(raw, catalog=custom) == {
        "mem": {
            "current": "1.5",
            "capacity": "3",
            "pct": "50",
            "unit_hint": "MiB",
            "stats.max": "1.5",
            "stats.avg": "1.25",
            "stats.rate": "0.5",
        }
    }
    default = render_kernel(raw)
    assert default is not None
    assert default["mem"]["current"] == "2"  # the default catalog still rounds bytes


def test_stats_order_is_legacy_order() -> None:
    """stats keys follow MovingStatistics' order (max before avg before rate)."""
    assert STATS_ORDER == ("max", "avg", "rate")


def test_render_kernel_values_are_strings() -> None:
    """Every kernel value is a string (capacity is never null for kernels)."""
    rendered = render_kernel({name: {"current": "1.5"} for name in ("a", "cpu_used", "mem")})
    assert rendered is not None
    assert all(isinstance(v, str) for entry in rendered.values() for v in entry.values())


# ----------------------------------------------------------------------------- agents

LEGACY_NODE: dict[str, dict[str, str | None]] = {
    "cpu_util": {"current": "96000.5", "capacity": "30012", "pct": "319.87", "unit_hint": "msec"},
    "mem": {
        "current": "20615843840",
        "capacity": "67108864000",
        "pct": "30.72",
        "unit_hint": "bytes",
        "stats.max": "25769803776",
    },
    "disk": {
        "current": "412316860416",
        "capacity": "982820896768",
        "pct": "41.95",
        "unit_hint": "bytes",
    },
    "net_rx": {"current": "125000.25", "capacity": None, "pct": "0.00", "unit_hint": "bps"},
    "net_tx": {"current": "48000.5", "capacity": None, "pct": "0.00", "unit_hint": "bps"},
    "cuda_mem": {
        "current": "34359738368",
        "capacity": "85520809984",
        "pct": "40.18",
        "unit_hint": "bytes",
        "stats.max": "42949672960",
    },
    "cuda_util": {
        "current": "87",
        "capacity": "100",
        "pct": "87",
        "unit_hint": "percent",
        "stats.max": "100",
        "stats.avg": "41.2",
    },
}


def test_render_agent_rebuilds_legacy_example() -> None:
    """Node and device values render to the legacy agent payload of section 1.8."""
    node = {
        "cpu_util": {"current": "96000.5", "capacity": "30012"},
        "mem": {"current": "20615843840", "capacity": "67108864000", "max": "25769803776"},
        "disk": {"current": "412316860416", "capacity": "982820896768"},
        "net_rx": {"current": "125000.25"},
        "net_tx": {"current": "48000.5"},
        "cuda_mem": {"current": "34359738368", "capacity": "85520809984", "max": "42949672960"},
        "cuda_util": {"current": "87", "capacity": "100", "max": "100", "avg": "41.2"},
    }
    devices = {
        "cpu_util": {
            str(core): {"current": "24010.2", "capacity": "30012"} for core in (10, 2, 1, 0)
        },
        "mem": {"root": node["mem"]},
        "net_rx": {"node": {"current": "125000.25"}},
    }
    rendered = render_agent(node, devices)
    assert rendered is not None
    assert rendered["node"] == LEGACY_NODE
    assert list(rendered["node"]) == sorted(LEGACY_NODE)
    for name, expected in LEGACY_NODE.items():
        assert list(rendered["node"][name]) == list(expected)
    assert list(rendered["devices"]) == ["cpu_util", "mem", "net_rx"]
    assert list(rendered["devices"]["cpu_util"]) == ["0", "1", "2", "10"]  # natural order
    assert rendered["devices"]["cpu_util"]["0"] == {
        "current": "24010.2",
        "capacity": "30012",
        "pct": "80",
        "unit_hint": "msec",
    }
    assert rendered["devices"]["mem"]["root"] == LEGACY_NODE["mem"]
    assert rendered["devices"]["net_rx"]["node"] == LEGACY_NODE["net_rx"]
    text = to_json(rendered)
    assert text is not None
    assert '"net_rx": {"current": "125000.25", "capacity": null, "pct": "0.00"' in text


def test_render_agent_empty_is_none() -> None:
    """An agent without data renders None."""
    assert render_agent({}, {}) is None
    assert render_agent({}, {"mem": {}}) is None


def test_render_agent_devices_only() -> None:
    """Devices without node values still render, with an empty node dict."""
    rendered = render_agent({}, {"cuda_mem": {"0": {"current": "1"}}})
    assert rendered == {
        "node": {},
        "devices": {
            "cuda_mem": {
                "0": {
                    "current": "1",
                    "capacity": None,
                    "pct": "0.00",
                    "unit_hint": "bytes",
                    "stats.max": "1",
                }
            }
        },
    }


def test_render_agent_and_kernel_layouts_do_not_mix() -> None:
    """The same metric renders with kernel and node settings in turn (separate caches)."""
    raw = {"cpu_util": {"current": "500", "capacity": "1000", "max": "600", "avg": "550"}}
    kernel = render_kernel(raw)
    agent = render_agent(raw, {})
    assert kernel is not None
    assert agent is not None
    assert kernel["cpu_util"]["unit_hint"] == "millicores"
    assert "stats.max" in kernel["cpu_util"]
    assert agent["node"]["cpu_util"] == {
        "current": "500",
        "capacity": "1000",
        "pct": "50",
        "unit_hint": "msec",
    }
    assert render_kernel(raw) == kernel


def test_catalog_kinds_do_not_affect_rendering() -> None:
    """Rendering depends on unit hint, stats, capacity and integral only, not on kind."""
    spec = DEFAULT_CATALOG.lookup("net_rx")
    assert spec.kind is Kind.RATE_COUNTER
    rendered = render_kernel({"net_rx": {"current": "1.0005", "rate": "9"}})
    assert rendered is not None
    assert "stats.rate" not in rendered["net_rx"]  # legacy stats_filter for net_* was empty


def test_formatting_memos_stay_bounded_and_agree_with_formatting() -> None:
    """The per-text memos behind rendering never outgrow their limit, nor change a result."""
    from promstat import renderer as live_stat

    limit = live_stat._MEMO_LIMIT
    for i in range(limit + 10):
        text = f"{i}.12345"
        assert live_stat._fmt_decimal(text) == format_decimal(text)
        assert live_stat._fmt_integral(text) == format_integral(text)
    assert len(live_stat._DECIMAL_MEMO) <= limit
    assert len(live_stat._INTEGRAL_MEMO) <= limit
    assert live_stat._fmt_decimal("1.0005") == "1" == format_decimal("1.0005")


# Short text (fixstr, str8) and two-byte characters long enough for str16 and str32 headers.
_TEXT = st.text(max_size=300) | st.sampled_from([31, 32, 255, 256, 65_535, 65_536]).map("é".__mul__)
_LEAF = st.dictionaries(st.text(max_size=40), st.none() | _TEXT, max_size=8)
_NESTED = _LEAF | st.dictionaries(st.text(), _LEAF)
_PAYLOAD = st.dictionaries(st.text(max_size=20), _NESTED, max_size=6)


@given(_PAYLOAD)
def test_to_msgpack_writes_the_bytes_the_agent_writes(payload: dict[str, object]) -> None:
    """to_msgpack (msgspec) gives msgpack.packb(use_bin_type=True)'s bytes, frozen or not,
    for every string length class (fixstr, str8, str16, str32) and map size."""
    import msgpack

    from promstat.payload import freeze

    expected = msgpack.packb(payload, use_bin_type=True)
    assert to_msgpack(payload) == expected
    assert to_msgpack(freeze(payload)) == expected
    assert msgpack.unpackb(expected, raw=False, strict_map_key=False) == payload


def test_to_msgpack_of_a_rendered_payload_round_trips() -> None:
    """A rendered, read-only kernel payload packs to bytes that unpack to the same dict."""
    import msgpack

    payload = render_kernel({"mem": {"current": "1024", "capacity": "4096"}}, frozen=True)
    assert payload is not None
    data = to_msgpack(payload)
    assert data == msgpack.packb(dict(payload), use_bin_type=True)
    assert msgpack.unpackb(data, raw=False) == payload
