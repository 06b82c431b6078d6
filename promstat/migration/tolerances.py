"""The field kinds of ``promstat compare`` and their tolerances, defaults and overrides.

Field kinds and their default tolerances (a numeric pair agrees when
``|legacy - promstat| <= abs + rel * max(|legacy|, |promstat|)``):

========== =============================================== ============ =====================
kind       fields                                          default      why
========== =============================================== ============ =====================
``string`` ``unit_hint``, anything non-numeric             exact        same catalog
``gauge``  ``current``/``capacity``/``pct`` of gauges and  exact        one measurement, two
           of accumulating counters (cumulative values),                formats of it
           node/device capacities (``null`` included)
``rate``   ``current``/``pct`` of rate counters            rel 1 %,     agent: last two
           (``cpu_util``, ``net_*``, node ``cpu_util``     abs 0.01     measurements; Prom-
           diff), ``stats.rate``/``stats.diff``                         etheus: last two
                                                                        scraped samples
``window`` ``stats.max``/``stats.avg`` of gauges           rel 25 %,    agent: lifetime of its
                                                           abs 0.01     process; promstat:
                                                                        the rules' window
``known``  kernel ``capacity``/``pct`` of metrics legacy   not counted  legacy artefacts
           had no capacity for (``cpu_used``, ``io_*``,                 (reference 1.4-1.5)
           ``net_*``: first raw value vs the sentinel),
           ``stats.*`` of rate counters (legacy's are over
           the raw counter, upstream #4126)
========== =============================================== ============ =====================

Rates: with promstat's exporter promstat reads the agent's own rate (``value_type="rate"``,
between its last two measurements, as legacy computes it), exact at any scrape interval;
without it the rate bound holds when every measurement is scraped (the agent's collection
interval equals or is a multiple of the scrape interval, or the exporter stamps its samples).
The window bound is a sanity bound (it catches unit and scale errors, not history differences:
a lifetime maximum is never below a window maximum, and ``stats.avg`` is a mean per
measurement on the agent but per subquery step in promstat, equal only over a full window
where every measurement covers as many steps). Override any of it with
``--tolerance FILE`` (YAML or JSON)::

    min_agreement: 0.995     # default threshold of every field (default 0.99)
    max_missing: 0.01        # share of ids allowed on one side only (default 0.01)
    kinds:
      rate: {rel: 0.05, abs: 0.01, min_agreement: 0.98}
    fields:                  # per "metric.field" ("node.cpu_util.current" for agents)
      cuda_util.stats.avg: {kind: known}
      mem.stats.max: {rel: 0.5, min_agreement: 0.9}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final

import yaml

from promstat.catalog import Capacity, Catalog, Kind
from promstat.errors import ConfigError

__all__ = ["FieldKind", "FieldOverride", "Tolerance", "Tolerances", "classify"]


class FieldKind(StrEnum):
    """How a field is compared (see the module docstring)."""

    STRING = "string"
    GAUGE = "gauge"
    RATE = "rate"
    WINDOW = "window"
    KNOWN = "known"


@dataclass(frozen=True, slots=True)
class Tolerance:
    """``|a - b| <= abs + rel * max(|a|, |b|)``; ``min_agreement`` is the field's threshold.

    ``min_agreement`` ``None`` means the global threshold (:attr:`Tolerances.min_agreement`).
    """

    rel: float = 0.0
    abs: float = 0.0
    min_agreement: float | None = None

    def accepts(self, a: float, b: float) -> bool:
        """Whether two numbers agree within this tolerance."""
        return abs(a - b) <= self.abs + self.rel * max(abs(a), abs(b))


@dataclass(frozen=True, slots=True)
class FieldOverride:
    """A per-field entry of a tolerance file: what it sets (``None``: the kind's value)."""

    rel: float | None = None
    abs: float | None = None
    kind: FieldKind | None = None
    min_agreement: float | None = None


_DEFAULT_KINDS: Final[Mapping[FieldKind, Tolerance]] = {
    FieldKind.STRING: Tolerance(),
    FieldKind.GAUGE: Tolerance(),
    FieldKind.RATE: Tolerance(rel=0.01, abs=0.01),
    FieldKind.WINDOW: Tolerance(rel=0.25, abs=0.01),
    FieldKind.KNOWN: Tolerance(),
}


@dataclass(frozen=True, slots=True)
class Tolerances:
    """Per-kind tolerances, per-field overrides and the pass thresholds."""

    kinds: Mapping[FieldKind, Tolerance] = field(default_factory=lambda: dict(_DEFAULT_KINDS))
    fields: Mapping[str, FieldOverride] = field(default_factory=dict)
    min_agreement: float = 0.99
    max_missing: float = 0.01

    @classmethod
    def from_file(cls, path: str | Path) -> Tolerances:
        """Read a YAML/JSON tolerance file (format in the module docstring).

        Raises:
            ConfigError: unreadable file, unknown key, bad number or kind; names the entry.
        """
        try:
            doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read tolerance file {str(path)!r}: {exc}") from exc
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise ConfigError(f"tolerance file {str(path)!r} must hold a mapping")
        unknown = set(doc) - {"min_agreement", "max_missing", "kinds", "fields"}
        if unknown:
            raise ConfigError(f"tolerance file: unknown key(s) {sorted(unknown)}")
        kinds = dict(_DEFAULT_KINDS)
        for name, entry in (doc.get("kinds") or {}).items():
            try:
                kind = FieldKind(name)
            except ValueError:
                choices = [k.value for k in FieldKind]
                raise ConfigError(
                    f"tolerance file: unknown kind {name!r}; choose from {choices}"
                ) from None
            given = _override(entry, f"kinds.{name}", kind_allowed=False)
            kinds[kind] = _merge(kinds[kind], given)
        fields = {
            str(name): _override(entry, f"fields.{name}", kind_allowed=True)
            for name, entry in (doc.get("fields") or {}).items()
        }
        thresholds = {"min_agreement": 0.99, "max_missing": 0.01}
        for key in thresholds:
            if key in doc:
                value = doc[key]
                if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                    raise ConfigError(f"tolerance file: {key} must be in [0, 1], not {value!r}")
                thresholds[key] = float(value)
        return cls(
            kinds=kinds,
            fields=fields,
            min_agreement=thresholds["min_agreement"],
            max_missing=thresholds["max_missing"],
        )

    def for_field(self, path: str, kind: FieldKind) -> tuple[FieldKind, Tolerance]:
        """The kind and tolerance of ``path`` (``"metric.field"``), overrides applied."""
        override = self.fields.get(path)
        if override is None:
            return kind, self.kinds[kind]
        kind = override.kind or kind
        return kind, _merge(self.kinds[kind], override)


def _merge(base: Tolerance, override: FieldOverride) -> Tolerance:
    return Tolerance(
        rel=base.rel if override.rel is None else override.rel,
        abs=base.abs if override.abs is None else override.abs,
        min_agreement=(
            base.min_agreement if override.min_agreement is None else override.min_agreement
        ),
    )


def _override(entry: object, where: str, *, kind_allowed: bool) -> FieldOverride:
    if not isinstance(entry, dict):
        raise ConfigError(f"tolerance file: {where} must be a mapping like {{rel: 0.01}}")
    allowed = {"rel", "abs", "min_agreement", *(["kind"] if kind_allowed else [])}
    unknown = set(entry) - allowed
    if unknown:
        raise ConfigError(f"tolerance file: {where}: unknown key(s) {sorted(unknown)}")
    threshold = None
    if "min_agreement" in entry:
        value = entry["min_agreement"]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise ConfigError(f"tolerance file: {where}.min_agreement must be in [0, 1]")
        threshold = float(value)
    values: dict[str, float] = {}
    for key in ("rel", "abs"):
        if key in entry:
            value = entry[key]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ConfigError(f"tolerance file: {where}.{key} must be a number >= 0")
            values[key] = float(value)
    kind = None
    if "kind" in entry:
        try:
            kind = FieldKind(entry["kind"])
        except ValueError:
            raise ConfigError(
                f"tolerance file: {where}.kind {entry['kind']!r} is unknown"
            ) from None
    return FieldOverride(
        rel=values.get("rel"), abs=values.get("abs"), kind=kind, min_agreement=threshold
    )


def classify(catalog: Catalog, metric: str, name: str, *, node: bool) -> FieldKind:
    """The :class:`FieldKind` of field ``name`` of ``metric`` (kernel, or node/device level)."""
    spec = catalog.lookup(metric)
    rate_counter = spec.kind is Kind.RATE_COUNTER
    if name == "unit_hint":
        return FieldKind.STRING
    if name in ("capacity", "pct") and not node and spec.capacity is Capacity.SENTINEL:
        return FieldKind.KNOWN
    if name in ("current", "pct"):
        return FieldKind.RATE if rate_counter else FieldKind.GAUGE
    if name == "capacity":
        return FieldKind.GAUGE
    if name in ("stats.rate", "stats.diff"):
        return FieldKind.RATE
    if name.startswith("stats."):
        return FieldKind.KNOWN if rate_counter else FieldKind.WINDOW
    return FieldKind.STRING
