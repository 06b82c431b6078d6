"""The metric catalog: what each Backend.AI metric means and how legacy rendered it.

One table drives the rule generator, the planner and the legacy renderer. For each metric it
says:

* ``kind`` — how the raw ``value_type="current"`` series behaves (section 5 of the reference):
  a ``gauge`` (latest value is the answer), a ``rate_counter`` (cumulative; live_stat shows the
  per-second rate from the last two samples: ``cpu_util`` in msec/s, ``net_*`` in B/s) or an
  ``accumulating_counter`` (cumulative; live_stat shows the cumulative value: ``cpu_used``,
  ``io_*``);
* ``unit_hint`` — the string legacy put in ``unit_hint`` (for the newest supported Backend.AI:
  :data:`BACKENDAI_VERSION`; :meth:`Catalog.for_backendai` gives older agents' hints, e.g.
  kernel ``cpu_util`` is ``"millicores"`` from 26.9 and ``"percent"`` before);
* ``stats`` — which ``stats.*`` keys legacy published for kernels (its ``stats_filter``);
* ``capacity`` — what a kernel's ``capacity`` is when the agent exports no capacity series;
* ``integral`` — whether consumers ``int()`` the values, so they must be integer strings;
* node-level overrides for the agent payload, including how devices combine into the node
  value (``node_aggregate``: sum, or max for temperatures) and capacity (``node_capacity``).

Accelerator families (``cuda_*``, ``rocm_*``, ``ipu_*``, ``gaudi*_*``, ``rngd_*``, ``atom*_*``,
``{slot}_mem``, ``{slot}_util``, ``*_power`` ...) are matched by pattern, so an unknown plugin's
``foo_util`` still renders sensibly. Counters must be named exactly (not by pattern) because the
PromQL that rates them lists them by name.

Extend it in code with :meth:`Catalog.extended` or from YAML with :meth:`Catalog.from_yaml`::

    metrics:
      - name: tpu_util          # exact name ...
        kind: gauge
        unit_hint: percent
        stats: [avg, max]
      - pattern: "npu\\d*_mem"  # ... or a regular expression matched against the whole name
        kind: gauge
        unit_hint: bytes
        stats: [max]
        integral: true
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from promstat.errors import ConfigError

__all__ = [
    "BACKENDAI_VERSION",
    "DEFAULT_CATALOG",
    "SENTINEL_CAPACITY",
    "UNIT_HINT_CHANGES",
    "Capacity",
    "Catalog",
    "Kind",
    "MetricSpec",
    "NodeCurrent",
    "rated_counters",
    "unit_hint_for",
]

#: Upstream's capacity for metrics that have none (``2**63-1``): keeps ``pct`` near zero and
#: keeps ``capacity`` an integer string.
SENTINEL_CAPACITY = "9223372036854775807"

#: The newest Backend.AI whose payloads the built-in catalog reproduces (the default).
BACKENDAI_VERSION = "26.9"

#: Kernel ``unit_hint`` changes by Backend.AI version: metric -> ((first version, hint), ...),
#: oldest first; before the first entry the hint was ``"percent"``. 26.9 (upstream PR #14642,
#: agent ``docker/intrinsic.py``, manager ``CONTAINER_METRIC_UNIT_HINTS``) names kernel and
#: process ``cpu_util`` by its unit, msec of CPU per second: ``"millicores"``.
UNIT_HINT_CHANGES: Mapping[str, tuple[tuple[tuple[int, int], str], ...]] = {
    "cpu_util": (((26, 9), "millicores"),),
}
_HINT_BEFORE_CHANGES = "percent"


def _parse_version(version: str) -> tuple[int, int]:
    """``"26.9"``, ``"26.9.6"``, ``"26.4.4rc1"`` -> (year, minor)."""
    parts = version.strip().split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or "x")
    except (IndexError, ValueError):
        raise ConfigError(
            f"backendai_version must look like '26.9' or '26.9.6', not {version!r}"
        ) from None


def unit_hint_for(metric: str, version: str) -> str | None:
    """The kernel ``unit_hint`` Backend.AI ``version`` wrote for ``metric``, if it changed
    across versions (see :data:`UNIT_HINT_CHANGES`); ``None`` for metrics that never changed."""
    changes = UNIT_HINT_CHANGES.get(metric)
    if not changes:
        return None
    wanted = _parse_version(version)
    hint = _HINT_BEFORE_CHANGES
    for since, changed in changes:
        if wanted >= since:
            hint = changed
    return hint


#: ``stats.*`` keys promstat can compute (legacy's ``min``/``sum``/``diff`` were lifetime
#: artefacts of one agent process and no consumer reads them).
_STAT_KEYS = ("max", "avg", "rate")


class Kind(StrEnum):
    """How a raw ``current`` series behaves."""

    GAUGE = "gauge"
    RATE_COUNTER = "rate_counter"
    ACCUMULATING_COUNTER = "accumulating_counter"


class Capacity(StrEnum):
    """A kernel metric's ``capacity`` when no capacity series exists.

    ``series``: the capacity series, or ``"0"`` without one (``pct`` is then ``"0.00"``).
    ``sentinel``: the capacity series, or :data:`SENTINEL_CAPACITY` without one.
    """

    SERIES = "series"
    SENTINEL = "sentinel"


class NodeCurrent(StrEnum):
    """How a node/device ``current`` is derived from device series.

    ``value``: like the container (latest gauge, rate for rate counters).
    ``interval_diff``: a rate counter shown as usage during one collection interval, i.e.
    ``rate * capacity / 1000`` where ``capacity`` is the interval in msec (node ``cpu_util``:
    msec of CPU per interval, so ``pct`` is percent of one core summed over cores, as legacy).
    """

    VALUE = "value"
    INTERVAL_DIFF = "interval_diff"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """Everything promstat needs to know about one metric (or one family, by pattern)."""

    kind: Kind = Kind.GAUGE
    unit_hint: str = "count"
    stats: tuple[str, ...] = ()
    capacity: Capacity = Capacity.SERIES
    integral: bool = False
    node_unit_hint: str | None = None
    node_stats: tuple[str, ...] | None = None
    node_current: NodeCurrent = NodeCurrent.VALUE
    #: How device capacities add up to the node capacity: ``sum`` (memory, GPUs) or ``max``
    #: (node ``cpu_util``: every core reports the same interval).
    node_capacity: str = "sum"
    #: How device values add up to the node value: ``sum`` (usage, counters, accelerator
    #: percent-sums) or ``max`` (temperature-like gauges: the node is as hot as its hottest
    #: device; a sum of temperatures means nothing). ``max`` is for gauges only.
    node_aggregate: str = "sum"

    def __post_init__(self) -> None:
        bad = [s for s in (*self.stats, *(self.node_stats or ())) if s not in _STAT_KEYS]
        if bad:
            raise ConfigError(f"unsupported stats key(s) {bad}; choose from {list(_STAT_KEYS)}")
        if self.node_capacity not in ("sum", "max"):
            raise ConfigError(f"node_capacity must be 'sum' or 'max', not {self.node_capacity!r}")
        if self.node_aggregate not in ("sum", "max"):
            raise ConfigError(f"node_aggregate must be 'sum' or 'max', not {self.node_aggregate!r}")
        if self.node_aggregate == "max" and self.kind is not Kind.GAUGE:
            raise ConfigError(
                f"node_aggregate='max' is for gauges; a {self.kind.value} is summed over devices"
            )

    @property
    def unit_hint_node(self) -> str:
        """``unit_hint`` in the agent (node/device) payload."""
        return self.node_unit_hint if self.node_unit_hint is not None else self.unit_hint

    @property
    def stats_node(self) -> tuple[str, ...]:
        """``stats.*`` keys in the agent (node/device) payload."""
        return self.node_stats if self.node_stats is not None else self.stats


_BYTES_MAX = MetricSpec(unit_hint="bytes", stats=("max",), integral=True)
_UTIL = MetricSpec(unit_hint="percent", stats=("avg", "max"))

_BUILTIN_EXACT: dict[str, MetricSpec] = {
    "cpu_util": MetricSpec(
        kind=Kind.RATE_COUNTER,
        unit_hint="millicores",  # 26.9; Catalog.for_backendai("26.4") gives "percent"
        stats=("avg", "max"),
        node_unit_hint="msec",
        node_stats=(),
        node_current=NodeCurrent.INTERVAL_DIFF,
        node_capacity="max",
    ),
    "cpu_used": MetricSpec(
        kind=Kind.ACCUMULATING_COUNTER, unit_hint="msec", capacity=Capacity.SENTINEL
    ),
    "mem": _BYTES_MAX,
    "io_read": MetricSpec(
        kind=Kind.ACCUMULATING_COUNTER,
        unit_hint="bytes",
        stats=("rate",),
        capacity=Capacity.SENTINEL,
        integral=True,
    ),
    "io_write": MetricSpec(
        kind=Kind.ACCUMULATING_COUNTER,
        unit_hint="bytes",
        stats=("rate",),
        capacity=Capacity.SENTINEL,
        integral=True,
    ),
    "net_rx": MetricSpec(
        kind=Kind.RATE_COUNTER, unit_hint="bps", capacity=Capacity.SENTINEL, node_stats=()
    ),
    "net_tx": MetricSpec(
        kind=Kind.RATE_COUNTER, unit_hint="bps", capacity=Capacity.SENTINEL, node_stats=()
    ),
    "io_scratch_size": _BYTES_MAX,
    "disk": MetricSpec(unit_hint="bytes", integral=True),
    "tt_n300_power": MetricSpec(unit_hint="watts", stats=("max",)),
}

# Order matters: the first pattern that matches the whole name wins.
_BUILTIN_PATTERNS: tuple[tuple[str, MetricSpec], ...] = (
    (r".+_mem", _BYTES_MAX),
    (r".+_util", _UTIL),
    (r".+_power", MetricSpec(unit_hint="Watts", stats=("max",))),
    # Node temperature = the hottest device (capacity: the same per-device limit, e.g. 120).
    (
        r".+_temperature",
        MetricSpec(unit_hint="Celsius", node_aggregate="max", node_capacity="max"),
    ),
)


@dataclass(frozen=True, slots=True)
class Catalog:
    """Metric specs by exact name, then by pattern, then a default.

    Lookups are cached per name, so the renderer's per-metric lookup costs a dict hit.
    """

    exact: Mapping[str, MetricSpec]
    patterns: tuple[tuple[str, MetricSpec], ...] = ()
    default: MetricSpec = MetricSpec()
    #: The Backend.AI version whose payloads this catalog's unit hints match.
    backendai_version: str = BACKENDAI_VERSION
    _compiled: tuple[tuple[re.Pattern[str], MetricSpec], ...] = field(
        init=False, repr=False, compare=False
    )
    _cache: dict[str, MetricSpec] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        compiled = []
        for pattern, spec in self.patterns:
            if spec.kind is not Kind.GAUGE:
                raise ConfigError(
                    f"pattern {pattern!r}: counters must be listed by exact name, "
                    "because the PromQL that rates them names them"
                )
            try:
                compiled.append((re.compile(pattern), spec))
            except re.error as exc:
                raise ConfigError(f"invalid metric pattern {pattern!r}: {exc}") from exc
        object.__setattr__(self, "_compiled", tuple(compiled))

    def lookup(self, name: str) -> MetricSpec:
        """Return the spec for ``name``: exact entry, first matching pattern, or the default."""
        spec = self._cache.get(name)
        if spec is not None:
            return spec
        spec = self.exact.get(name)
        if spec is None:
            spec = next((s for rx, s in self._compiled if rx.fullmatch(name)), self.default)
        self._cache[name] = spec
        return spec

    def names_of_kind(self, kind: Kind) -> tuple[str, ...]:
        """Exact metric names of one kind, sorted (for PromQL set matchers)."""
        return tuple(sorted(n for n, s in self.exact.items() if s.kind is kind))

    @property
    def counters(self) -> tuple[str, ...]:
        """Every counter (rate and accumulating), sorted."""
        return tuple(sorted(n for n, s in self.exact.items() if s.kind is not Kind.GAUGE))

    def extended(
        self,
        exact: Mapping[str, MetricSpec] | None = None,
        patterns: Sequence[tuple[str, MetricSpec]] = (),
    ) -> Catalog:
        """Return a catalog with more exact entries and patterns.

        New exact entries replace old ones; new patterns are tried before the old ones.
        """
        return Catalog(
            exact={**self.exact, **(exact or {})},
            patterns=(*patterns, *self.patterns),
            default=self.default,
            backendai_version=self.backendai_version,
        )

    def for_backendai(self, version: str) -> Catalog:
        """Return this catalog with the kernel unit hints Backend.AI ``version`` wrote.

        The one setting for payloads that must match an agent fleet byte for byte: rendering,
        dual publishing and ``promstat compare`` all read unit hints from the catalog. Only
        hints listed in :data:`UNIT_HINT_CHANGES` move, and only where they still hold one of
        the versioned values, so a hint customised in code or YAML is kept::

            DEFAULT_CATALOG.for_backendai("26.4").lookup("cpu_util").unit_hint  # "percent"

        Raises:
            ConfigError: ``version`` is not ``"YY.N"`` or ``"YY.N.P"``.
        """
        _parse_version(version)
        exact = dict(self.exact)
        for metric, changes in UNIT_HINT_CHANGES.items():
            spec = exact.get(metric)
            versioned = {_HINT_BEFORE_CHANGES, *(hint for _, hint in changes)}
            hint = unit_hint_for(metric, version)
            if spec is not None and hint is not None and spec.unit_hint in versioned:
                exact[metric] = replace(spec, unit_hint=hint)
        return Catalog(
            exact=exact, patterns=self.patterns, default=self.default, backendai_version=version
        )

    @classmethod
    def from_yaml(cls, source: str | Path, *, base: Catalog | None = None) -> Catalog:
        """Extend ``base`` (default: the built-in catalog) with a YAML file or YAML text.

        Raises:
            ConfigError: the file is missing, not YAML, or an entry is invalid; the message
                names the entry.
        """
        # A str is a path unless it looks like YAML text (a newline or a "key:" in it).
        if isinstance(source, Path) or ("\n" not in source and ":" not in source):
            path = Path(source)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read catalog file {str(path)!r}: {exc}") from exc
        else:
            text = source
        import yaml  # only catalog files need it: `import promstat` stays free of PyYAML

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"catalog is not valid YAML: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("metrics"), list):
            raise ConfigError("catalog YAML must be a mapping with a 'metrics' list")
        exact: dict[str, MetricSpec] = {}
        patterns: list[tuple[str, MetricSpec]] = []
        for i, entry in enumerate(doc["metrics"]):
            where = f"metrics[{i}]"
            if not isinstance(entry, dict):
                raise ConfigError(f"{where}: expected a mapping, got {entry!r}")
            name, pattern = entry.pop("name", None), entry.pop("pattern", None)
            if (name is None) == (pattern is None):
                raise ConfigError(f"{where}: give exactly one of 'name' or 'pattern'")
            spec = _spec_from_mapping(entry, where=f"{where} ({name or pattern})")
            if name is not None:
                exact[str(name)] = spec
            else:
                patterns.append((str(pattern), spec))
        return (base or DEFAULT_CATALOG).extended(exact, patterns)


def _spec_from_mapping(entry: Mapping[str, Any], *, where: str) -> MetricSpec:
    known = set(MetricSpec.__dataclass_fields__)
    unknown = set(entry) - known
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    kwargs: dict[str, Any] = dict(entry)
    for key, kind in (
        ("unit_hint", str),
        ("node_unit_hint", (str, type(None))),
        ("integral", bool),
        ("node_capacity", str),
        ("node_aggregate", str),
    ):
        # YAML happily gives ints, lists or "yes" strings; a wrong type must not slip
        # through as a truthy value or a non-string unit.
        if key in kwargs and not isinstance(kwargs[key], kind):
            raise ConfigError(f"{where}.{key}: expected {_type_name(kind)}, got {kwargs[key]!r}")
    if "stats" in kwargs and kwargs["stats"] is None:
        raise ConfigError(f"{where}.stats: expected a list of strings (use [] for none), got null")
    try:
        if "kind" in kwargs:
            kwargs["kind"] = Kind(kwargs["kind"])
        if "capacity" in kwargs:
            kwargs["capacity"] = Capacity(kwargs["capacity"])
        if "node_current" in kwargs:
            kwargs["node_current"] = NodeCurrent(kwargs["node_current"])
        for key in ("stats", "node_stats"):
            if key in kwargs and kwargs[key] is not None:
                kwargs[key] = _as_str_tuple(kwargs[key], where=f"{where}.{key}")
        return replace(MetricSpec(), **kwargs)
    except ValueError as exc:  # a bad enum value, or a ConfigError from __post_init__
        raise ConfigError(f"{where}: {exc}") from exc


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def _as_str_tuple(value: object, *, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    return tuple(str(v) for v in value)


#: The built-in catalog: Backend.AI's intrinsic and accelerator metrics (reference section 5).
DEFAULT_CATALOG = Catalog(exact=_BUILTIN_EXACT, patterns=_BUILTIN_PATTERNS)


def rated_counters(catalog: Catalog) -> tuple[str, ...]:
    """Counters whose per-second rate live_stat shows, sorted: rate counters (``cpu_util``,
    ``net_*``: their ``current``) and accumulating counters publishing ``stats.rate``
    (``io_*``). promstat's exporter publishes a ``value_type="rate"`` series for each."""
    out = []
    for name, spec in catalog.exact.items():
        accumulating_with_rate = spec.kind is Kind.ACCUMULATING_COUNTER and "rate" in (
            *spec.stats,
            *spec.stats_node,
        )
        if spec.kind is Kind.RATE_COUNTER or accumulating_with_rate:
            out.append(name)
    return tuple(sorted(out))
