"""Tests for promstat.catalog: lookups, kinds, extension and YAML loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from promstat.catalog import (
    DEFAULT_CATALOG,
    SENTINEL_CAPACITY,
    Capacity,
    Catalog,
    Kind,
    MetricSpec,
    NodeCurrent,
)
from promstat.errors import ConfigError


def test_sentinel_is_int64_max() -> None:
    """The sentinel capacity is upstream's 2**63-1, an integer string."""
    assert int(SENTINEL_CAPACITY) == 2**63 - 1


@pytest.mark.parametrize(
    ("name", "kind", "unit_hint", "stats", "capacity", "integral"),
    [
        ("cpu_util", Kind.RATE_COUNTER, "millicores", {"avg", "max"}, Capacity.SERIES, False),
        ("cpu_used", Kind.ACCUMULATING_COUNTER, "msec", set(), Capacity.SENTINEL, False),
        ("mem", Kind.GAUGE, "bytes", {"max"}, Capacity.SERIES, True),
        ("io_read", Kind.ACCUMULATING_COUNTER, "bytes", {"rate"}, Capacity.SENTINEL, True),
        ("io_write", Kind.ACCUMULATING_COUNTER, "bytes", {"rate"}, Capacity.SENTINEL, True),
        ("net_rx", Kind.RATE_COUNTER, "bps", set(), Capacity.SENTINEL, False),
        ("net_tx", Kind.RATE_COUNTER, "bps", set(), Capacity.SENTINEL, False),
        ("io_scratch_size", Kind.GAUGE, "bytes", {"max"}, Capacity.SERIES, True),
        ("tt_n300_power", Kind.GAUGE, "watts", {"max"}, Capacity.SERIES, False),
        ("disk", Kind.GAUGE, "bytes", set(), Capacity.SERIES, True),
    ],
)
def test_lookup_exact(
    name: str,
    kind: Kind,
    unit_hint: str,
    stats: set[str],
    capacity: Capacity,
    integral: bool,
) -> None:
    """Built-in names carry legacy's unit hint, stats filter and capacity rule (section 5)."""
    spec = DEFAULT_CATALOG.lookup(name)
    assert spec.kind is kind
    assert spec.unit_hint == unit_hint
    assert set(spec.stats) == stats
    assert spec.capacity is capacity
    assert spec.integral is integral


def test_cpu_util_node_overrides() -> None:
    """Node cpu_util is msec per interval without stats, capacity is the max over cores."""
    spec = DEFAULT_CATALOG.lookup("cpu_util")
    assert spec.unit_hint_node == "msec"
    assert spec.stats_node == ()
    assert spec.node_current is NodeCurrent.INTERVAL_DIFF
    assert spec.node_capacity == "max"
    mem = DEFAULT_CATALOG.lookup("mem")
    assert mem.unit_hint_node == "bytes"
    assert mem.stats_node == ("max",)
    assert mem.node_current is NodeCurrent.VALUE


@pytest.mark.parametrize(
    ("name", "unit_hint", "stats", "integral"),
    [
        ("cuda_mem", "bytes", {"max"}, True),
        ("cuda_util", "percent", {"avg", "max"}, False),
        ("rocm_mem", "bytes", {"max"}, True),
        ("gaudi2_util", "percent", {"avg", "max"}, False),
        ("atom_plus_mem", "bytes", {"max"}, True),
        ("npu_util", "percent", {"avg", "max"}, False),
        ("foo_mem", "bytes", {"max"}, True),
        ("cuda_power", "Watts", {"max"}, False),
        ("cuda_temperature", "Celsius", set(), False),
    ],
)
def test_lookup_pattern(name: str, unit_hint: str, stats: set[str], integral: bool) -> None:
    """Accelerator families, known or not, match by pattern and are gauges."""
    spec = DEFAULT_CATALOG.lookup(name)
    assert spec.kind is Kind.GAUGE
    assert spec.unit_hint == unit_hint
    assert set(spec.stats) == stats
    assert spec.integral is integral


@pytest.mark.parametrize("name", ["something", "_mem", "_util", "mem_x", "util", "cpu"])
def test_lookup_default(name: str) -> None:
    """Names matching nothing (patterns need a non-empty prefix) get the default spec."""
    assert DEFAULT_CATALOG.lookup(name) == MetricSpec()
    assert DEFAULT_CATALOG.lookup(name).unit_hint == "count"


def test_lookup_is_cached_and_stable() -> None:
    """Repeated lookups return the same spec object."""
    assert DEFAULT_CATALOG.lookup("npu_util") is DEFAULT_CATALOG.lookup("npu_util")
    assert DEFAULT_CATALOG.lookup("mem") is DEFAULT_CATALOG.lookup("mem")


def test_names_of_kind_and_counters() -> None:
    """Counters are listed by exact name, sorted, for PromQL set matchers."""
    assert DEFAULT_CATALOG.names_of_kind(Kind.RATE_COUNTER) == ("cpu_util", "net_rx", "net_tx")
    assert DEFAULT_CATALOG.names_of_kind(Kind.ACCUMULATING_COUNTER) == (
        "cpu_used",
        "io_read",
        "io_write",
    )
    assert DEFAULT_CATALOG.counters == (
        "cpu_used",
        "cpu_util",
        "io_read",
        "io_write",
        "net_rx",
        "net_tx",
    )
    gauges = DEFAULT_CATALOG.names_of_kind(Kind.GAUGE)
    assert list(gauges) == sorted(gauges)
    assert "mem" in gauges
    assert "cpu_util" not in gauges


def test_extended_overrides_and_precedence() -> None:
    """New exact entries replace old ones; new patterns are tried before the built-ins."""
    tpu = MetricSpec(unit_hint="percent", stats=("max",))
    custom = DEFAULT_CATALOG.extended(
        {"mem": MetricSpec(unit_hint="MiB"), "tpu_util": tpu},
        [(r"cuda_.+", MetricSpec(unit_hint="gpu"))],
    )
    assert custom.lookup("mem").unit_hint == "MiB"
    assert custom.lookup("tpu_util") is tpu
    assert custom.lookup("cuda_mem").unit_hint == "gpu"
    assert custom.lookup("rocm_mem").unit_hint == "bytes"  # built-in pattern still applies
    assert DEFAULT_CATALOG.lookup("mem").unit_hint == "bytes"  # the original is unchanged
    assert DEFAULT_CATALOG.lookup("cuda_mem").unit_hint == "bytes"


def test_extended_counter_by_name() -> None:
    """A new counter listed by exact name shows up in names_of_kind."""
    custom = DEFAULT_CATALOG.extended({"gpu_energy": MetricSpec(kind=Kind.ACCUMULATING_COUNTER)})
    assert "gpu_energy" in custom.names_of_kind(Kind.ACCUMULATING_COUNTER)
    assert "gpu_energy" in custom.counters


def test_counter_by_pattern_rejected() -> None:
    """Counters cannot be declared by pattern: the rate PromQL must name them."""
    with pytest.raises(ConfigError, match="counters must be listed by exact name"):
        DEFAULT_CATALOG.extended(patterns=[(r".+_energy", MetricSpec(kind=Kind.RATE_COUNTER))])


def test_invalid_pattern_rejected() -> None:
    """A pattern that is not a regular expression names itself in the error."""
    with pytest.raises(ConfigError, match=r"invalid metric pattern '\('"):
        Catalog(exact={}, patterns=(("(", MetricSpec()),))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stats": ("min",)}, "unsupported stats key"),
        ({"node_stats": ("sum",)}, "unsupported stats key"),
        ({"node_capacity": "avg"}, "node_capacity"),
    ],
)
def test_metric_spec_validation(kwargs: dict[str, object], message: str) -> None:
    """MetricSpec rejects stats keys promstat cannot compute and bad node_capacity."""
    with pytest.raises(ConfigError, match=message):
        MetricSpec(**kwargs)  # type: ignore[arg-type]


GOOD_YAML = """\
metrics:
  - name: tpu_util
    kind: gauge
    unit_hint: percent
    stats: [avg, max]
  - name: gpu_energy
    kind: accumulating_counter
    unit_hint: joules
    capacity: sentinel
  - pattern: "npu\\\\d*_mem"
    unit_hint: bytes
    stats: [max]
    integral: true
  - name: cpu_util
    kind: rate_counter
    unit_hint: percent
    stats: [max]
    node_unit_hint: msec
    node_stats: []
    node_current: interval_diff
    node_capacity: max
"""


def _check_good(catalog: Catalog) -> None:
    tpu = catalog.lookup("tpu_util")
    assert (tpu.kind, tpu.unit_hint, tpu.stats) == (Kind.GAUGE, "percent", ("avg", "max"))
    energy = catalog.lookup("gpu_energy")
    assert energy.kind is Kind.ACCUMULATING_COUNTER
    assert energy.capacity is Capacity.SENTINEL
    assert "gpu_energy" in catalog.counters
    npu = catalog.lookup("npu2_mem")
    assert (npu.unit_hint, npu.stats, npu.integral) == ("bytes", ("max",), True)
    assert catalog.lookup("npu_mem").integral is True
    cpu = catalog.lookup("cpu_util")
    assert cpu.stats == ("max",)
    assert cpu.stats_node == ()
    assert cpu.node_current is NodeCurrent.INTERVAL_DIFF
    assert catalog.lookup("mem").unit_hint == "bytes"  # built-ins kept


def test_from_yaml_text() -> None:
    """YAML text extends the built-in catalog."""
    _check_good(Catalog.from_yaml(GOOD_YAML))


def test_from_yaml_file(tmp_path: Path) -> None:
    """A YAML file (as Path or str) extends the built-in catalog."""
    path = tmp_path / "catalog.yaml"
    path.write_text(GOOD_YAML, encoding="utf-8")
    _check_good(Catalog.from_yaml(path))
    _check_good(Catalog.from_yaml(str(path)))


def test_from_yaml_custom_base() -> None:
    """from_yaml extends the given base catalog instead of the default."""
    base = Catalog(exact={"only": MetricSpec(unit_hint="x")})
    catalog = Catalog.from_yaml("metrics:\n  - name: other\n    unit_hint: y\n", base=base)
    assert catalog.lookup("only").unit_hint == "x"
    assert catalog.lookup("other").unit_hint == "y"
    assert catalog.lookup("mem") == MetricSpec()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("metrics: [\n", "not valid YAML"),
        ("- a\n- b\n", "must be a mapping with a 'metrics' list"),
        ("metrics:\n  foo: bar\n", "must be a mapping with a 'metrics' list"),
        ("metrics:\n  - just a string\n", r"metrics\[0\]: expected a mapping"),
        ("metrics:\n  - unit_hint: bytes\n", r"metrics\[0\]: give exactly one of"),
        (
            "metrics:\n  - name: a\n    pattern: b\n",
            r"metrics\[0\]: give exactly one of",
        ),
        (
            "metrics:\n  - name: ok\n  - name: tpu_util\n    colour: red\n",
            r"metrics\[1\] \(tpu_util\): unknown field\(s\) \['colour'\]",
        ),
        (
            "metrics:\n  - name: tpu_util\n    kind: histogram\n",
            r"metrics\[0\] \(tpu_util\):.*histogram",
        ),
        (
            "metrics:\n  - name: tpu_util\n    capacity: infinite\n",
            r"metrics\[0\] \(tpu_util\):.*infinite",
        ),
        (
            "metrics:\n  - name: tpu_util\n    node_current: sometimes\n",
            r"metrics\[0\] \(tpu_util\):.*sometimes",
        ),
        (
            "metrics:\n  - name: tpu_util\n    stats: [min]\n",
            r"metrics\[0\] \(tpu_util\): unsupported stats key",
        ),
        (
            "metrics:\n  - name: tpu_util\n    stats: max\n",
            r"metrics\[0\] \(tpu_util\)\.stats: expected a list of strings",
        ),
        (
            "metrics:\n  - name: tpu_util\n    node_capacity: avg\n",
            r"metrics\[0\] \(tpu_util\):.*node_capacity",
        ),
        (
            'metrics:\n  - pattern: ".+_energy"\n    kind: accumulating_counter\n',
            r"pattern '\.\+_energy': counters must be listed by exact name",
        ),
        ('metrics:\n  - pattern: "(unclosed"\n', r"invalid metric pattern '\(unclosed'"),
    ],
)
def test_from_yaml_bad_documents(text: str, message: str) -> None:
    """Every invalid catalog raises ConfigError naming the offending entry."""
    with pytest.raises(ConfigError, match=message):
        Catalog.from_yaml(text)


def test_from_yaml_missing_file(tmp_path: Path) -> None:
    """A missing file raises ConfigError naming the path."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read catalog file"):
        Catalog.from_yaml(missing)
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        Catalog.from_yaml(str(missing))


def test_from_yaml_null_stats() -> None:
    """`stats: null` is a ConfigError naming the entry, not a TypeError."""
    with pytest.raises(ConfigError, match=r"metrics\[0\]"):
        Catalog.from_yaml("metrics:\n  - name: tpu_util\n    stats: null\n")


@pytest.mark.parametrize(
    "field", ["integral: 'yes'", "unit_hint: 5", "node_unit_hint: [a]", "integral: 1"]
)
def test_from_yaml_scalar_types(field: str) -> None:
    """Scalar fields of the wrong type are ConfigErrors naming the entry."""
    with pytest.raises(ConfigError, match=r"metrics\[0\]"):
        Catalog.from_yaml(f"metrics:\n  - name: tpu_util\n    {field}\n")


def test_from_yaml_one_line_text() -> None:
    """Flow-style YAML on one line is YAML text, not a path."""
    catalog = Catalog.from_yaml("metrics: [{name: tpu_util, unit_hint: percent}]")
    assert catalog.lookup("tpu_util").unit_hint == "percent"


def test_backendai_version_must_parse() -> None:
    """A version that is not "YY.N[.P]" is a configuration error, not a silent default."""
    for bad in ("", "26", "x.9", "latest"):
        with pytest.raises(ConfigError, match="backendai_version"):
            DEFAULT_CATALOG.for_backendai(bad)
    yaml_based = Catalog.from_yaml("metrics: []", base=DEFAULT_CATALOG.for_backendai("26.4"))
    assert yaml_based.backendai_version == "26.4"
    assert yaml_based.lookup("cpu_util").unit_hint == "percent"
