"""``promstat compare``: diff legacy Valkey live stats against promstat's, field by field.

The shadow comparison an operator runs while a fleet dual-publishes
(:mod:`promstat.migration.publisher`): it reads the same kernels (and with ``--agents`` the same
agents) from Valkey/redis and from Prometheus through :class:`~promstat.service.LiveStats`,
compares every field of every metric, and prints per metric and field how many agree, the
worst difference and examples. Ids missing on one side are counted apart; so are fields whose
difference is known and intended.

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

    min_agreement: 0.995     # share of counted comparisons that must agree (default 0.99)
    max_missing: 0.01        # share of ids, and of field values, allowed on one side only
    kinds:
      rate: {rel: 0.05, abs: 0.01}
    fields:                  # per "metric.field" ("node.cpu_util.current" for agents)
      cuda_util.stats.avg: {kind: known}
      mem.stats.max: {rel: 0.5}

Exit status: 0 when agreement and missing ids are within the thresholds, 3 when not, 1 on
errors (unreachable servers), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, DecimalException
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

import yaml

from promstat.catalog import DEFAULT_CATALOG, Capacity, Catalog, Kind
from promstat.conventions import SeriesNames
from promstat.errors import ConfigError, TransportError

if TYPE_CHECKING:
    from promstat.cli import Subparsers

__all__ = [
    "COMPARE_EXIT_DISAGREE",
    "CompareOptions",
    "FieldKind",
    "FieldOverride",
    "FieldStats",
    "LegacyRead",
    "Report",
    "Tolerance",
    "Tolerances",
    "add_compare_cli",
    "classify",
    "compare_payloads",
    "format_report",
    "read_legacy",
    "run_compare",
]

#: Exit status when agreement is below the threshold (or too many ids are missing).
COMPARE_EXIT_DISAGREE: Final = 3
_EXAMPLES: Final = 3


class FieldKind(StrEnum):
    """How a field is compared (see the module docstring)."""

    STRING = "string"
    GAUGE = "gauge"
    RATE = "rate"
    WINDOW = "window"
    KNOWN = "known"


@dataclass(frozen=True, slots=True)
class Tolerance:
    """``|a - b| <= abs + rel * max(|a|, |b|)``."""

    rel: float = 0.0
    abs: float = 0.0

    def accepts(self, a: float, b: float) -> bool:
        """Whether two numbers agree within this tolerance."""
        return abs(a - b) <= self.abs + self.rel * max(abs(a), abs(b))


@dataclass(frozen=True, slots=True)
class FieldOverride:
    """A per-field entry of a tolerance file: what it sets (``None``: the kind's value)."""

    rel: float | None = None
    abs: float | None = None
    kind: FieldKind | None = None


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
    )


def _override(entry: object, where: str, *, kind_allowed: bool) -> FieldOverride:
    if not isinstance(entry, dict):
        raise ConfigError(f"tolerance file: {where} must be a mapping like {{rel: 0.01}}")
    unknown = set(entry) - ({"rel", "abs", "kind"} if kind_allowed else {"rel", "abs"})
    if unknown:
        raise ConfigError(f"tolerance file: {where}: unknown key(s) {sorted(unknown)}")
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
    return FieldOverride(rel=values.get("rel"), abs=values.get("abs"), kind=kind)


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


@dataclass(slots=True)
class FieldStats:
    """Agreement of one ``metric.field`` over all compared ids."""

    metric: str
    name: str
    kind: FieldKind
    compared: int = 0
    agreed: int = 0
    worst_abs: float = 0.0
    worst_rel: float = 0.0
    worst_id: str | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)
    missing_legacy: int = 0
    missing_promstat: int = 0

    @property
    def agreement(self) -> float:
        """Share of comparisons that agree (1.0 with none)."""
        return self.agreed / self.compared if self.compared else 1.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "metric": self.metric,
            "field": self.name,
            "kind": self.kind.value,
            "compared": self.compared,
            "agreed": self.agreed,
            "agreement": self.agreement,
            "worst_abs": self.worst_abs,
            "worst_rel": self.worst_rel,
            "worst_id": self.worst_id,
            "examples": self.examples,
            "missing_legacy": self.missing_legacy,
            "missing_promstat": self.missing_promstat,
        }


@dataclass(slots=True)
class Report:
    """The outcome of one comparison (one level: kernels or agents)."""

    level: str
    ids: int = 0
    both: int = 0
    missing_legacy: list[str] = field(default_factory=list)
    missing_promstat: list[str] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)
    stale_legacy: list[str] = field(default_factory=list)
    fields: dict[tuple[str, str], FieldStats] = field(default_factory=dict)
    min_agreement: float = 0.99
    max_missing: float = 0.01

    @property
    def counted(self) -> list[FieldStats]:
        """Field statistics that count towards agreement (not known differences)."""
        return [f for f in self.fields.values() if f.kind is not FieldKind.KNOWN]

    @property
    def known(self) -> list[FieldStats]:
        """Field statistics of known differences (reported apart)."""
        return [f for f in self.fields.values() if f.kind is FieldKind.KNOWN]

    @property
    def compared(self) -> int:
        """Counted comparisons."""
        return sum(f.compared for f in self.counted)

    @property
    def agreed(self) -> int:
        """Counted comparisons that agree."""
        return sum(f.agreed for f in self.counted)

    @property
    def agreement(self) -> float:
        """Share of counted comparisons that agree (1.0 with none)."""
        return self.agreed / self.compared if self.compared else 1.0

    @property
    def missing_fraction(self) -> float:
        """Share of ids missing (or undecodable) on either side."""
        missing = len(self.missing_legacy) + len(self.missing_promstat) + len(self.undecodable)
        return missing / self.ids if self.ids else 0.0

    @property
    def missing_values(self) -> int:
        """Counted field values present on one side only (a metric or field the other lacks)."""
        return sum(f.missing_legacy + f.missing_promstat for f in self.counted)

    @property
    def missing_value_fraction(self) -> float:
        """:attr:`missing_values` among all counted field values of ids on both sides."""
        total = self.compared + self.missing_values
        return self.missing_values / total if total else 0.0

    @property
    def ok(self) -> bool:
        """Whether agreement, missing ids and missing field values are within the thresholds."""
        return (
            self.agreement >= self.min_agreement
            and self.missing_fraction <= self.max_missing
            and self.missing_value_fraction <= self.max_missing
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``fields`` sorted by metric and field)."""
        return {
            "level": self.level,
            "ids": self.ids,
            "compared_ids": self.both,
            "missing_legacy": self.missing_legacy,
            "missing_promstat": self.missing_promstat,
            "undecodable": self.undecodable,
            "stale_legacy": self.stale_legacy,
            "missing_values": self.missing_values,
            "comparisons": self.compared,
            "agreed": self.agreed,
            "agreement": self.agreement,
            "min_agreement": self.min_agreement,
            "max_missing": self.max_missing,
            "ok": self.ok,
            "fields": [self.fields[k].to_json() for k in sorted(self.fields)],
        }


def _number(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        number = float(Decimal(value))
    except (DecimalException, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _entries(payload: Mapping[str, Any], level: str) -> dict[tuple[str, str], Mapping[str, Any]]:
    """``(metric path, entity suffix) -> MetricValue``; agents flatten node and devices."""
    if level == "kernel":
        return {(m, ""): v for m, v in payload.items() if isinstance(v, Mapping)}
    out: dict[tuple[str, str], Mapping[str, Any]] = {}
    for metric, value in (payload.get("node") or {}).items():
        if isinstance(value, Mapping):
            out[f"node.{metric}", ""] = value
    for metric, per_device in (payload.get("devices") or {}).items():
        if isinstance(per_device, Mapping):
            for device, value in per_device.items():
                if isinstance(value, Mapping):
                    out[f"devices.{metric}", f"/{device}"] = value
    return out


def compare_payloads(
    legacy: Mapping[str, Mapping[str, Any] | None],
    promstat: Mapping[str, Mapping[str, Any] | None],
    *,
    level: str = "kernel",
    catalog: Catalog = DEFAULT_CATALOG,
    tolerances: Tolerances | None = None,
    undecodable: Sequence[str] = (),
    stale: Sequence[str] = (),
) -> Report:
    """Compare legacy and promstat payloads of the same ids.

    Args:
        legacy: id -> decoded Valkey value or ``None`` (no key).
        promstat: id -> promstat payload or ``None`` (no series).
        level: ``"kernel"`` or ``"agent"`` (``{"node", "devices"}`` payloads).
        catalog: classifies fields (see :func:`classify`).
        tolerances: kinds, overrides and thresholds (defaults in the module docstring).
        undecodable: ids whose Valkey value could not be decoded (counted as missing).
        stale: ids whose Valkey value is no longer refreshed (reported apart, not compared).

    Returns:
        The :class:`Report`.
    """
    tol = tolerances or Tolerances()
    report = Report(level=level, min_agreement=tol.min_agreement, max_missing=tol.max_missing)
    bad = set(undecodable) | set(stale)
    report.undecodable = sorted(set(undecodable))
    report.stale_legacy = sorted(set(stale))
    ids = list(dict.fromkeys([*legacy, *promstat, *bad]))
    report.ids = len(ids)
    node_level = level != "kernel"
    for key in ids:
        if key in bad:
            continue
        old, new = legacy.get(key), promstat.get(key)
        if old is None or new is None:
            if old is None:
                report.missing_legacy.append(key)
            if new is None:
                report.missing_promstat.append(key)
            continue
        report.both += 1
        old_entries, new_entries = _entries(old, level), _entries(new, level)
        for entry in dict.fromkeys([*old_entries, *new_entries]):
            metric_path, suffix = entry
            metric = metric_path.split(".", 1)[1] if node_level else metric_path
            a, b = old_entries.get(entry), new_entries.get(entry)
            names = dict.fromkeys([*(a or {}), *(b or {})])
            for name in names:
                kind, rule = tol.for_field(
                    f"{metric_path}.{name}", classify(catalog, metric, name, node=node_level)
                )
                stats = report.fields.get((metric_path, name))
                if stats is None:
                    stats = report.fields[metric_path, name] = FieldStats(metric_path, name, kind)
                if a is None or name not in a:
                    stats.missing_legacy += 1
                    continue
                if b is None or name not in b:
                    stats.missing_promstat += 1
                    continue
                _compare_one(stats, rule, key + suffix, a[name], b[name])
    return report


def _compare_one(stats: FieldStats, rule: Tolerance, key: str, a: object, b: object) -> None:
    stats.compared += 1
    x, y = _number(a), _number(b)
    if x is not None and y is not None:
        ok = rule.accepts(x, y) if stats.kind is not FieldKind.STRING else a == b
        diff = abs(x - y)
        rel = diff / max(abs(x), abs(y)) if diff else 0.0
        if diff > stats.worst_abs or (stats.worst_id is None and not ok):
            stats.worst_abs, stats.worst_id = diff, key
        stats.worst_rel = max(stats.worst_rel, rel)
    else:
        ok = a == b
    if ok:
        stats.agreed += 1
    elif len(stats.examples) < _EXAMPLES:
        stats.examples.append({"id": key, "legacy": a, "promstat": b})


# ---------------------------------------------------------------------------- I/O


@dataclass(slots=True)
class LegacyRead:
    """What :func:`read_legacy` found: values, undecodable ids, and stale ids."""

    values: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    undecodable: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)


async def read_legacy(
    redis_url: str,
    ids: Sequence[str],
    *,
    key_ttl: int | None = None,
    stale_after: float = 120.0,
    chunk: int = 1000,
) -> LegacyRead:
    """MGET ``ids`` from Valkey/redis and unpack them as ``ValkeyStatClient`` does.

    With ``key_ttl`` (the TTL the writer sets, 86400 for kernel keys) a key whose remaining
    TTL says it was written more than ``stale_after`` seconds ago is *stale*: nothing collects
    that kernel any more (it terminated; the agent stops writing but the key lives on for a
    day), so its frozen rates would not compare with a live series.

    Raises:
        TransportError: redis could not be reached.
    """
    import msgpack
    from redis.asyncio import from_url
    from redis.exceptions import RedisError

    out = LegacyRead()
    client = from_url(redis_url)
    try:
        for start in range(0, len(ids), chunk):
            part = list(ids[start : start + chunk])
            pipe = client.pipeline(transaction=False)
            pipe.mget(part)
            if key_ttl is not None:
                for key in part:
                    pipe.ttl(key)
            values, *ttls = await pipe.execute()
            for i, (key, raw) in enumerate(zip(part, values, strict=True)):
                if raw is None:
                    out.values[key] = None
                    continue
                if ttls and key_ttl is not None and 0 <= ttls[i] < key_ttl - stale_after:
                    out.stale.append(key)
                    continue
                try:
                    value = msgpack.unpackb(raw, raw=False, strict_map_key=False)
                except (ValueError, msgpack.UnpackException):
                    value = None
                if isinstance(value, dict):
                    out.values[key] = value
                else:
                    out.undecodable.append(key)
    except (RedisError, OSError) as exc:
        raise TransportError(f"reading legacy live stats failed: {exc}", url=redis_url) from exc
    finally:
        await client.aclose()
    return out


async def _live_ids(prom: Any, names: SeriesNames, level: str, at: float) -> list[str]:
    if level == "kernel":
        label, metric = names.kernel_label, names.container_metric
    else:
        label, metric = names.agent_label, names.device_metric
    expr = f'group by ({label}) ({metric}{{{names.value_type_label}="{names.current_value}"}})'
    result = await prom.query_vector(expr, time=at)
    return sorted({s.metric[label] for s in result.series if s.metric.get(label)})


@dataclass(frozen=True, slots=True)
class CompareOptions:
    """What :func:`run_compare` reads and how it judges it."""

    redis_url: str
    prom_url: str
    ids: tuple[str, ...] = ()
    agent_ids: tuple[str, ...] = ()
    sample: int | None = None
    agents: bool = False
    at: float | None = None
    seed: int = 0
    interval: str = "15s"
    window: str = "5m"
    use_recorded: bool | None = None
    timeout: float = 30.0
    tolerances: Tolerances = field(default_factory=Tolerances)
    catalog: Catalog = DEFAULT_CATALOG
    #: The fleet's Backend.AI version, when its unit hints differ from ``catalog``'s
    #: (``"26.4"``: kernel ``cpu_util`` in ``"percent"``); ``None`` keeps ``catalog`` as is.
    backendai_version: str | None = None
    kernel_ttl: int | None = 86400
    stale_after: float = 120.0


async def run_compare(options: CompareOptions) -> tuple[float, list[Report]]:
    """Read both sides and compare: kernels, and agents with ``options.agents``.

    Ids: the given ones; otherwise every id with a raw series in Prometheus at the time (the
    live fleet, what pages show), or ``options.sample`` of them chosen with ``options.seed``.

    Returns:
        ``(evaluation time, [kernel report, agent report?])``.
    """
    import time

    from promstat.client import PrometheusClient
    from promstat.planner import PlannerConfig
    from promstat.service import LiveStats

    at = time.time() if options.at is None else options.at
    catalog = options.catalog
    if options.backendai_version is not None:
        # Both sides must use the fleet's unit hints: promstat renders with them and the
        # exact unit_hint field is judged with them.
        catalog = catalog.for_backendai(options.backendai_version)
    config = PlannerConfig(
        catalog=catalog,
        interval=options.interval,
        window=options.window,
        use_recorded=options.use_recorded,
    )
    reports: list[Report] = []
    async with PrometheusClient(options.prom_url, timeout=options.timeout) as prom:
        stats = LiveStats(prom, config, cache_ttl=0)
        levels = [("kernel", options.ids)]
        if options.agents:
            levels.append(("agent", options.agent_ids))
        for level, given in levels:
            ids = list(dict.fromkeys(given)) or await _live_ids(prom, config.names, level, at)
            if options.sample is not None and not given and options.sample < len(ids):
                ids = sorted(random.Random(options.seed).sample(ids, options.sample))
            # Legacy first: Valkey only has "now", Prometheus can be asked for any time.
            ttl = options.kernel_ttl if level == "kernel" else None
            legacy = await read_legacy(
                options.redis_url, ids, key_ttl=ttl, stale_after=options.stale_after
            )
            loaded = await (
                stats.load_agents(ids, at=at)
                if level == "agent"
                else stats.load_kernels(ids, at=at)
            )
            promstat: dict[str, Mapping[str, Any] | None] = {}
            for key, value in zip(ids, loaded, strict=True):
                if isinstance(value, BaseException):
                    raise value
                promstat[key] = value
            reports.append(
                compare_payloads(
                    legacy.values,
                    promstat,
                    level=level,
                    catalog=catalog,
                    tolerances=options.tolerances,
                    undecodable=legacy.undecodable,
                    stale=legacy.stale,
                )
            )
    return at, reports


# ---------------------------------------------------------------------------- output


def _num(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e6 or abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.4g}"


def format_report(report: Report, out: TextIO) -> None:
    """Print a report as the aligned text ``promstat compare`` shows."""
    what = "kernels" if report.level == "kernel" else "agents"
    verdict = "OK" if report.ok else "BELOW THRESHOLD"
    out.write(
        f"{what}: {report.ids} ids, {report.both} on both sides, "
        f"{len(report.missing_legacy)} missing in legacy, "
        f"{len(report.missing_promstat)} missing in promstat, "
        f"{len(report.undecodable)} undecodable, "
        f"{len(report.stale_legacy)} stale in legacy (not compared)\n"
        f"agreement: {report.agreement:.2%} of {report.compared} field comparisons "
        f"(threshold {report.min_agreement:.2%}; missing ids {report.missing_fraction:.2%}, "
        f"values on one side only {report.missing_value_fraction:.2%}, "
        f"allowed {report.max_missing:.2%}): {verdict}\n"
    )
    header = ["metric", "field", "kind", "agree", "compared", "%", "worst abs", "worst rel",
              "missing L/P", "example"]  # fmt: skip
    for title, rows in (("", report.counted), ("known differences (not counted)", report.known)):
        if not rows:
            continue
        if title:
            out.write(f"{title}:\n")
        table = [header]
        for f in sorted(rows, key=lambda r: (r.metric, r.name)):
            example = ""
            if f.examples:
                e = f.examples[0]
                example = f"{e['id']}: {e['legacy']!r} vs {e['promstat']!r}"
            table.append([
                f.metric, f.name, f.kind.value, str(f.agreed), str(f.compared),
                f"{f.agreement:.1%}", _num(f.worst_abs), _num(f.worst_rel),
                f"{f.missing_legacy}/{f.missing_promstat}", example,
            ])  # fmt: skip
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for row in table:
            cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
            out.write("  ".join(cells).rstrip() + "\n")
    for side, ids in (("legacy", report.missing_legacy), ("promstat", report.missing_promstat)):
        if ids:
            shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
            out.write(f"missing in {side}: {shown}\n")


# ---------------------------------------------------------------------------- CLI


def add_compare_cli(subparsers: Subparsers) -> None:
    """Register ``promstat compare``."""
    from promstat.cli import _add_url_option, parse_time

    p = subparsers.add_parser(
        "compare",
        help="diff legacy Valkey live stats against Prometheus, field by field",
        description="Read the same kernels (and agents) from Valkey/redis and Prometheus, "
        "compare every field and report agreement per metric and field. Exit 3 when "
        "agreement is below the threshold.",
    )
    p.add_argument("ids", metavar="ID", nargs="*", help="kernel ids (default: the live fleet)")
    p.add_argument("--redis", required=True, metavar="URL", help="redis://host:port/db of Valkey")
    _add_url_option(p)
    p.add_argument(
        "--time",
        type=parse_time,
        default=None,
        help="Prometheus evaluation time (default: now; Valkey is always now)",
    )
    p.add_argument(
        "--sample",
        type=int,
        default=None,
        metavar="N",
        help="compare N kernels (and agents) chosen at random from the live fleet",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    p.add_argument("--agents", action="store_true", help="compare agents too")
    p.add_argument(
        "--agent-id",
        action="append",
        default=[],
        metavar="ID",
        help="compare this agent (repeatable; default: all live agents)",
    )
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.add_argument(
        "--tolerance",
        metavar="FILE",
        default=None,
        help="YAML/JSON tolerances and thresholds (see the docs)",
    )
    p.add_argument("--interval", default="15s", help="scrape/rule interval (default 15s)")
    p.add_argument("--window", default="5m", help="stats.max/avg window (default 5m)")
    p.add_argument(
        "--plan",
        choices=("auto", "recorded", "raw"),
        default="auto",
        help="recorded series, raw fallback, or detect (default)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="query deadline in seconds")
    p.add_argument(
        "--stale-after",
        type=float,
        default=120.0,
        metavar="S",
        help="a kernel key written more than S seconds ago is stale: reported "
        "apart, not compared (default 120 = 4 x the 30 s collection interval)",
    )
    p.set_defaults(handler=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    from promstat.cli import resolve_url

    if args.sample is not None and args.sample < 1:
        raise ConfigError(f"--sample must be >= 1, not {args.sample}")
    at: float | None = None
    if args.time is not None:
        at = args.time.timestamp() if isinstance(args.time, datetime) else float(args.time)
    tolerances = Tolerances.from_file(args.tolerance) if args.tolerance else Tolerances()
    options = CompareOptions(
        redis_url=args.redis,
        prom_url=resolve_url(args.url),
        ids=tuple(args.ids),
        agent_ids=tuple(args.agent_id),
        sample=args.sample,
        agents=args.agents or bool(args.agent_id),
        at=at,
        seed=args.seed,
        interval=args.interval,
        window=args.window,
        use_recorded={"auto": None, "recorded": True, "raw": False}[args.plan],
        timeout=args.timeout,
        tolerances=tolerances,
        stale_after=args.stale_after,
    )
    evaluated, reports = asyncio.run(run_compare(options))
    if args.json:
        json.dump(
            {"time": evaluated, "reports": [r.to_json() for r in reports]}, sys.stdout, indent=2
        )
        sys.stdout.write("\n")
    else:
        stamp = datetime.fromtimestamp(evaluated, UTC).isoformat().replace("+00:00", "Z")
        sys.stdout.write(
            f"promstat compare at {stamp} ({options.redis_url} vs {options.prom_url})\n"
        )
        for report in reports:
            sys.stdout.write("\n")
            format_report(report, sys.stdout)
    return 0 if all(r.ok for r in reports) else COMPARE_EXIT_DISAGREE
