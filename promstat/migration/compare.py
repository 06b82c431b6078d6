"""``promstat compare``: diff legacy Valkey live stats against promstat's, field by field.

The shadow comparison an operator runs while a fleet dual-publishes
(:mod:`promstat.migration.publisher`): it reads the same kernels (and with ``--agents`` the same
agents) from Valkey/redis and from Prometheus through :class:`~promstat.service.LiveStats`,
compares every field of every metric, and prints per metric and field how many agree, the
worst difference and examples. Ids missing on one side are counted apart; so are fields whose
difference is known and intended.

Fields are judged by kind, with tolerances (:mod:`promstat.migration.tolerances`);
:mod:`promstat.migration.report` prints the result.

The gate: every counted ``metric.field`` is judged on its own. Its agreement is the share of
its values that agree among all of its values of ids on both sides, where a value present on
one side only (a metric or field the other side lacks) counts as a disagreement; it must reach
the field's threshold (``fields.<path>.min_agreement``, else its kind's, else the global
``min_agreement``). A systematic error in one field of one metric therefore fails the gate
however many other fields agree: 10 of 200 kernels with ``mem.current`` 1.5x off is 95% for
``mem.current``, below 99%, even though all comparisons together agree at 99.8%. Known
differences are reported apart and never gate. Ids missing on one side are gated together
against ``max_missing``.

Exit status: 0 when every field and the missing ids are within their thresholds, 3 when not
(the report names the failing fields, and
:func:`~promstat.migration.report.failing_fields` lists them), 1 on errors
(unreachable servers), 2 on usage errors.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, DecimalException
from typing import Any, Final

import msgspec

from promstat.catalog import DEFAULT_CATALOG, Catalog
from promstat.conventions import SeriesNames
from promstat.errors import TransportError
from promstat.migration.tolerances import FieldKind, Tolerance, Tolerances, classify

__all__ = [
    "COMPARE_EXIT_DISAGREE",
    "CompareOptions",
    "FieldStats",
    "LegacyRead",
    "Report",
    "compare_payloads",
    "read_legacy",
    "run_compare",
]

#: Exit status when a field is below its threshold (or too many ids are missing).
COMPARE_EXIT_DISAGREE: Final = 3
_EXAMPLES: Final = 3


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
    min_agreement: float = 0.99

    @property
    def path(self) -> str:
        """``metric.field``, as tolerance files and the gate name it."""
        return f"{self.metric}.{self.name}"

    @property
    def agreement(self) -> float:
        """Share of comparisons that agree (1.0 with none)."""
        return self.agreed / self.compared if self.compared else 1.0

    @property
    def values(self) -> int:
        """Values of this field among ids on both sides: compared, or on one side only."""
        return self.compared + self.missing_legacy + self.missing_promstat

    @property
    def gated_agreement(self) -> float:
        """Share of :attr:`values` that agree: one-sided values count as disagreements."""
        return self.agreed / self.values if self.values else 1.0

    @property
    def ok(self) -> bool:
        """Whether this field passes the gate (known differences always do)."""
        return self.kind is FieldKind.KNOWN or self.gated_agreement >= self.min_agreement

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
            "gated_agreement": self.gated_agreement,
            "min_agreement": self.min_agreement,
            "ok": self.ok,
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
    def failing(self) -> list[FieldStats]:
        """Counted fields below their own threshold, sorted by ``metric.field``."""
        return sorted((f for f in self.counted if not f.ok), key=lambda f: (f.metric, f.name))

    @property
    def missing_ok(self) -> bool:
        """Whether the ids on one side only are within ``max_missing``."""
        return self.missing_fraction <= self.max_missing

    @property
    def ok(self) -> bool:
        """Whether every counted field passes on its own and missing ids are within bounds.

        The overall :attr:`agreement` is reported, never gated: thousands of agreeing
        comparisons must not hide one field that is systematically wrong.
        """
        return self.missing_ok and not self.failing

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
            "failing": [f.path for f in self.failing],
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
                    threshold = rule.min_agreement
                    if threshold is None:
                        threshold = tol.min_agreement
                    stats = report.fields[metric_path, name] = FieldStats(
                        metric_path, name, kind, min_agreement=threshold
                    )
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
                    # ValkeyStatClient: unpackb(raw=False, strict_map_key=False).
                    value = msgspec.msgpack.decode(raw)
                except msgspec.DecodeError:
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
    from promstat.loader import CacheConfig
    from promstat.planner import PlannerConfig
    from promstat.profile import RuleProfile
    from promstat.service import LiveStats

    at = time.time() if options.at is None else options.at
    catalog = options.catalog
    if options.backendai_version is not None:
        # Both sides must use the fleet's unit hints: promstat renders with them and the
        # exact unit_hint field is judged with them.
        catalog = catalog.for_backendai(options.backendai_version)
    config = PlannerConfig(use_recorded=options.use_recorded)
    profile = RuleProfile.parse(
        catalog=catalog, interval=options.interval, window=options.window
    )
    reports: list[Report] = []
    async with PrometheusClient(options.prom_url, timeout=options.timeout) as prom:
        stats = LiveStats(prom, profile=profile, planner=config, cache=CacheConfig(ttl=0))
        levels = [("kernel", options.ids)]
        if options.agents:
            levels.append(("agent", options.agent_ids))
        for level, given in levels:
            ids = list(dict.fromkeys(given)) or await _live_ids(prom, profile.names, level, at)
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
