"""Grafana dashboards generated from the metric catalog and the recorded series names.

Four dashboards, each a Grafana dashboard JSON model with a stable ``uid``, a ``datasource``
variable (every panel and target points at ``${datasource}``) and template variables read
with ``label_values`` from the raw ``backendai_container_utilization`` series (the only series
carrying ``user_id``, ``project_id`` and ``session_id``)::

    promstat-fleet.json    fleet overview: kernel/agent/user counts, top kernels by CPU,
                           memory and accelerator utilisation, agents' node utilisation,
                           firing alerts
    promstat-kernel.json   kernel drill-down: utilisation in percent of capacity, then one
                           panel per catalog metric (current, capacity, window max/avg, rate)
    promstat-agent.json    agent drill-down: node utilisation, one node panel and one
                           per-device panel per catalog metric
    promstat-self.json     promstat itself: queries, errors, latency, response bytes, series,
                           cache hits, plans, retries, chunk splits, data age, refresh failures

Kernel panels read ``kernel_metric:...:live_stat`` and keep only the kernels the variables
select with ``and on (kernel_id)`` against the raw series (the recorded series carry only
``kernel_id``). Percentages are ``current / ignoring (stat) capacity * 100`` of the recorded
stats. Catalog metrics become one panel each: exact names as they are, patterns (``.+_util``,
...) as regex matchers minus the exact names and earlier patterns that take precedence, the
way :meth:`~promstat.catalog.Catalog.lookup` resolves a name.

Grafana is not needed to generate or test them: :func:`write_dashboards` also writes
``provisioning/`` files (a dashboard provider and a datasource example) an operator copies into
Grafana's provisioning directory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from promstat.catalog import DEFAULT_CATALOG, Capacity, Catalog, Kind, MetricSpec, NodeCurrent
from promstat.conventions import SeriesNames
from promstat.errors import RuleError
from promstat.expressions import WINDOW_STATS, LiveStatExpressions, RateSource
from promstat.generate._common import dump_yaml, version
from promstat.generate.alerts import accelerator_util_matchers
from promstat.generate.grafana import Dashboard, Panel, Row, Target, Variable
from promstat.promql import escape_string, quote_meta, set_matcher

__all__ = [
    "DASHBOARD_FILES",
    "MetricFamily",
    "build_dashboards",
    "catalog_families",
    "iter_targets",
    "render_dashboards",
    "write_dashboards",
]

_DEFAULT_NAMES: Final = SeriesNames()
#: Catalog unit hints -> Grafana units.
_UNITS: Final = {
    "bytes": "bytes",
    "bps": "Bps",
    "msec": "ms",
    "percent": "percent",
    "watts": "watt",
    "celsius": "celsius",
    "count": "short",
}


# -------------------------------------------------------------------------------------------
# Catalog families


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """One catalog entry as panels see it: an exact name or a pattern, with its spec.

    ``exclude`` lists what a pattern must not select because an exact entry or an earlier
    pattern takes precedence in :meth:`~promstat.catalog.Catalog.lookup`.
    """

    title: str
    spec: MetricSpec
    exact: str | None = None
    pattern: str | None = None
    exclude: tuple[str, ...] = field(default=())

    def matchers(self, label: str) -> str:
        """PromQL matchers selecting this family on ``label``."""
        if self.exact is not None:
            return f'{label}="{escape_string(self.exact)}"'
        assert self.pattern is not None
        out = f'{label}=~"{escape_string(self.pattern)}"'
        if self.exclude:
            out += f', {label}!~"{escape_string("|".join(self.exclude))}"'
        return out


def catalog_families(catalog: Catalog = DEFAULT_CATALOG) -> tuple[MetricFamily, ...]:
    """Every exact entry (sorted), then every pattern in lookup order."""
    out = [MetricFamily(name, spec, exact=name) for name, spec in sorted(catalog.exact.items())]
    earlier: list[str] = []
    for pattern, spec in catalog.patterns:
        rx = re.compile(pattern)
        shadowed = [quote_meta(n) for n in sorted(catalog.exact) if rx.fullmatch(n)]
        exclude = tuple(shadowed + [f"(?:{p})" if "|" in p else p for p in earlier])
        out.append(MetricFamily(pattern, spec, pattern=pattern, exclude=exclude))
        earlier.append(pattern)
    return tuple(out)


def _unit(hint: str) -> str:
    return _UNITS.get(hint.lower(), "short")


def _current_unit(spec: MetricSpec, *, node: bool) -> tuple[str, str]:
    """Grafana unit and a title suffix for a metric's ``current`` values."""
    hint = spec.unit_hint_node if node else spec.unit_hint
    if spec.kind is Kind.RATE_COUNTER:
        # cpu_util: msec of CPU per second ("millicores" since Backend.AI 26.9, "percent" before)
        if hint.lower() in ("percent", "millicores"):
            return "short", "msec/s"
        if node and spec.node_current is NodeCurrent.INTERVAL_DIFF:
            return "ms", "msec per interval"
    return _unit(hint), hint


# -------------------------------------------------------------------------------------------
# Query building blocks


@dataclass(frozen=True, slots=True)
class _Q:
    """PromQL fragments shared by the dashboards."""

    n: SeriesNames
    catalog: Catalog
    owner_metric: str
    rates: RateSource = RateSource.BOTH

    def owners(self) -> str:
        """The raw ownership selector filtered by the template variables (one row per kernel)."""
        n = self.n
        ms = [
            f'{n.container_metric_label}="{escape_string(self.owner_metric)}"',
            f'{n.value_type_label}="{n.current_value}"',
            f'{n.agent_label}=~"$agent"',
            f'{n.user_label}=~"$user"',
            f'{n.project_label}=~"$project"',
            f'{n.session_label}=~"$session"',
            f'{n.kernel_label}=~"$kernel"',
        ]
        return f"{n.container_metric}{{{', '.join(ms)}}}"

    def selected(self, expr: str) -> str:
        """``expr`` restricted to the kernels the variables select."""
        k = self.n.kernel_label
        return f"{expr} and on ({k}) group by ({k}) ({self.owners()})"

    def kernel(self, stat: str, *extra: str) -> str:
        """The recorded kernel family at one ``stat`` (a regex when it holds ``|``).

        With ``rates="exporter"`` rules (which record only ``max``/``avg`` for kernels),
        current/capacity/rate come from the exporter's series, labelled with the same
        ``stat`` so panels read both the same way.
        """
        n = self.n
        stats = stat.split("|")
        if self.rates is RateSource.BOTH:
            op = "=~" if len(stats) > 1 else "="
            ms = [*extra, f'{n.stat_label}{op}"{stat}"']
            return f"{n.kernel_live_stat}{{{', '.join(ms)}}}"
        ex = LiveStatExpressions(names=n, catalog=self.catalog, rates=self.rates)
        parts: list[str] = []
        windows = [x for x in stats if x in WINDOW_STATS]
        if windows:
            m = set_matcher(n.stat_label, windows)
            parts.append(f"{n.kernel_live_stat}{{{', '.join([*extra, m])}}}")
        for x in stats:
            if x not in WINDOW_STATS:
                raw = ex.kernel_source(x, matchers=", ".join(extra))
                parts.append(f'label_replace({raw}, "{n.stat_label}", "{x}", "", "")')
        return parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")"

    def device(self, stat: str, *extra: str, node: bool = False) -> str:
        """The recorded device (or node) family at one ``stat``, for the selected agents."""
        op = "=~" if "|" in stat else "="
        ms = [*extra, f'{self.n.agent_label}=~"$agent"', f'{self.n.stat_label}{op}"{stat}"']
        family = self.n.agent_live_stat if node else self.n.device_live_stat
        return f"{family}{{{', '.join(ms)}}}"

    def kernel_pct(self, *extra: str) -> str:
        """current / capacity * 100 per kernel and metric (no series without a capacity)."""
        cur, cap = self.kernel("current", *extra), self.kernel("capacity", *extra)
        return f"{cur} / ignoring ({self.n.stat_label}) ({cap} > 0) * 100"

    def device_pct(self, *extra: str, node: bool = False) -> str:
        """current / capacity * 100 per device (or node) and metric."""
        cur, cap = (
            self.device("current", *extra, node=node),
            self.device("capacity", *extra, node=node),
        )
        return f"{cur} / ignoring ({self.n.stat_label}) ({cap} > 0) * 100"

    def accel(self, label: str) -> str:
        """Matchers of the catalog's accelerator-utilisation metrics on ``label``."""
        return ", ".join(accelerator_util_matchers(self.catalog, label=label))

    def node_cpu_pct(self) -> str:
        """Node CPU in percent of all cores: node cpu_util pct divided by the core count."""
        n = self.n
        cpu = f'{n.device_metric_label}="cpu_util"'
        cores = f"count by ({n.agent_label}) ({self.device('current', cpu)})"
        return f"({self.device_pct(cpu, node=True)}) / on ({n.agent_label}) group_left {cores}"


def _stat_regex(stats: Sequence[str]) -> str:
    return "|".join(stats)


# -------------------------------------------------------------------------------------------
# The dashboards


def _variables(q: _Q) -> tuple[Variable, ...]:
    n = q.n
    raw = n.container_metric
    chain = [
        ("agent", "Agent", n.agent_label),
        ("user", "User", n.user_label),
        ("project", "Project", n.project_label),
        ("session", "Session", n.session_label),
        ("kernel", "Kernel", n.kernel_label),
    ]
    out: list[Variable] = []
    filters: list[str] = [f'{n.value_type_label}="{n.current_value}"']
    for name, label, label_name in chain:
        out.append(
            Variable(name, label, f"label_values({raw}{{{', '.join(filters)}}}, {label_name})")
        )
        filters.append(f'{label_name}=~"${name}"')
    return tuple(out)


def _fleet(q: _Q, description: str) -> Dashboard:
    n = q.n
    k, a = n.kernel_label, n.agent_label
    cm, dm = n.container_metric_label, n.device_metric_label
    cpu, mem = f'{cm}="cpu_util"', f'{cm}="{escape_string(q.owner_metric)}"'
    accel = q.accel(cm)
    owners = q.owners()

    def top(title: str, expr: str, description: str) -> Panel:
        return Panel(
            title,
            (Target(f"topk(10, {q.selected(expr)})", f"{{{{{k}}}}}", instant=True),),
            kind="bargauge",
            unit="percent",
            description=description,
            width=8,
            height=10,
        )

    def stat(title: str, expr: str, description: str) -> Panel:
        return Panel(
            title, (Target(expr),), kind="stat", width=4, height=4, description=description
        )

    allocated = f"group by ({k}) ({q.kernel('capacity', accel)} > 0)"
    recorded = f"group by ({k}) ({q.kernel('current', mem)})"
    counts = (
        stat(
            "Kernels",
            f"count({q.selected(recorded)})",
            "Kernels with recorded live stats, for the selection.",
        ),
        stat(
            "Kernels with accelerators",
            f"count({q.selected(allocated)})",
            "Kernels with an accelerator capacity (allocated accelerators).",
        ),
        stat("Agents", f"count(group by ({a}) ({owners}))", "Agents running selected kernels."),
        stat(
            "Sessions",
            f"count(group by ({n.session_label}) ({owners}))",
            "Sessions of the selection.",
        ),
        stat(
            "Users",
            f"count(group by ({n.user_label}) ({owners}))",
            "Users owning selected kernels.",
        ),
        stat(
            "Projects",
            f"count(group by ({n.project_label}) ({owners}))",
            "Projects of the selection.",
        ),
    )
    tops = (
        top(
            "Top kernels by CPU (% of one core)",
            q.kernel_pct(cpu),
            "cpu_util current / capacity: 100 % is one core busy.",
        ),
        top(
            "Top kernels by memory (% of limit)",
            q.kernel_pct(mem),
            "Memory used / the kernel's limit.",
        ),
        top(
            "Top kernels by accelerator utilisation (%)",
            f"max by ({k}) ({q.kernel_pct(accel)})",
            "The busiest accelerator metric per kernel, in percent of its capacity.",
        ),
    )
    per_agent = (
        Panel(
            "Kernels per agent",
            (Target(f"count by ({a}) (group by ({a}, {k}) ({owners}))", f"{{{{{a}}}}}"),),
            description="Kernels reporting on each agent, for the selection.",
        ),
        Panel(
            "Alerts (firing and pending)",
            (
                Target(
                    'sum by (alertname, alertstate) (ALERTS{alertname=~"BackendAI.+|Promstat.+"})',
                    "{{alertname}} {{alertstate}}",
                ),
            ),
            description="promstat's generated alerts (promstat alerts render).",
        ),
    )
    nodes = (
        Panel(
            "Node CPU (% of all cores)",
            (Target(q.node_cpu_pct(), f"{{{{{a}}}}}"),),
            unit="percent",
            width=8,
            description="Node cpu_util (CPU time per collection interval summed over cores) "
            "divided by the interval and the number of cores.",
        ),
        Panel(
            "Node memory (% of capacity)",
            (Target(q.device_pct(f'{dm}="mem"', node=True), f"{{{{{a}}}}}"),),
            unit="percent",
            width=8,
        ),
        Panel(
            "Node accelerator utilisation (% of capacity)",
            (Target(q.device_pct(q.accel(dm), node=True), f"{{{{{a}}}}} {{{{{dm}}}}}"),),
            unit="percent",
            width=8,
        ),
    )
    return Dashboard(
        uid="promstat-fleet",
        title="Backend.AI fleet overview (promstat)",
        description=description,
        variables=_variables(q),
        rows=(
            Row("Fleet", counts + per_agent),
            Row("Top kernels", tops),
            Row("Agents: node utilisation", nodes),
        ),
    )


def _kernel(q: _Q, families: Sequence[MetricFamily], description: str) -> Dashboard:
    n = q.n
    k, cm = n.kernel_label, n.container_metric_label
    overview = (
        Panel(
            "Utilisation (% of capacity)",
            (Target(q.selected(q.kernel_pct()), f"{{{{{k}}}}} {{{{{cm}}}}}"),),
            unit="percent",
            width=24,
            description="current / capacity * 100 for every metric with a capacity (legacy pct).",
        ),
    )
    panels: list[Panel] = []
    for fam in families:
        spec = fam.spec
        stats = ["current"]
        if spec.capacity is Capacity.SERIES:
            stats.append("capacity")
        stats += [s for s in ("max", "avg") if s in spec.stats]
        unit, suffix = _current_unit(spec, node=False)
        sel = fam.matchers(cm)
        panels.append(
            Panel(
                f"{fam.title} ({suffix})",
                (
                    Target(
                        q.selected(q.kernel(_stat_regex(stats), sel)),
                        f"{{{{{k}}}}} {{{{{cm}}}}} {{{{{n.stat_label}}}}}",
                    ),
                ),
                unit=unit,
                width=8,
                description=f"{' / '.join(stats)} of {fam.title} (catalog: {spec.kind.value}, "
                f"unit {spec.unit_hint}).",
            )
        )
        if "rate" in spec.stats:
            panels.append(
                Panel(
                    f"{fam.title} rate (per second)",
                    (Target(q.selected(q.kernel("rate", sel)), f"{{{{{k}}}}} {{{{{cm}}}}}"),),
                    unit="Bps" if spec.unit_hint == "bytes" else "short",
                    width=8,
                    description=f"stats.rate of {fam.title}: per-second rate of the counter.",
                )
            )
    return Dashboard(
        uid="promstat-kernel",
        title="Backend.AI kernel drill-down (promstat)",
        description=description,
        variables=_variables(q),
        rows=(Row("Utilisation", overview), Row("Live stats per metric", tuple(panels))),
        time_from="now-3h",
    )


def _agent(q: _Q, families: Sequence[MetricFamily], description: str) -> Dashboard:
    n = q.n
    a, dm, d = n.agent_label, n.device_metric_label, n.device_label
    overview = (
        Panel(
            "Node utilisation (% of capacity)",
            (Target(q.device_pct(node=True), f"{{{{{a}}}}} {{{{{dm}}}}}"),),
            unit="percent",
            description="Node current / capacity * 100; node cpu_util is percent of one core, "
            "summed over cores (legacy).",
        ),
        Panel(
            "Node CPU (% of all cores)", (Target(q.node_cpu_pct(), f"{{{{{a}}}}}"),), unit="percent"
        ),
        Panel(
            "Device utilisation (% of capacity)",
            (Target(q.device_pct(), f"{{{{{a}}}}} {{{{{dm}}}}} {{{{{d}}}}}"),),
            unit="percent",
            width=24,
        ),
    )
    node: list[Panel] = []
    device: list[Panel] = []
    for fam in families:
        spec = fam.spec
        sel = fam.matchers(dm)
        stats = ["current", "capacity", *(s for s in ("max", "avg") if s in spec.stats_node)]
        unit, suffix = _current_unit(spec, node=True)
        node.append(
            Panel(
                f"Node {fam.title} ({suffix})",
                (
                    Target(
                        q.device(_stat_regex(stats), sel, node=True),
                        f"{{{{{a}}}}} {{{{{dm}}}}} {{{{{n.stat_label}}}}}",
                    ),
                ),
                unit=unit,
                width=8,
                description=f"Devices summed per agent: {' / '.join(stats)}.",
            )
        )
        device.append(
            Panel(
                f"Devices: {fam.title} ({suffix})",
                (Target(q.device("current", sel), f"{{{{{a}}}}} {{{{{d}}}}}"),),
                unit=unit,
                width=8,
                description=f"current of {fam.title} per device.",
            )
        )
    return Dashboard(
        uid="promstat-agent",
        title="Backend.AI agent drill-down (promstat)",
        description=description,
        variables=(Variable("agent", "Agent", f"label_values({n.device_metric}, {a})"),),
        rows=(
            Row("Node", overview),
            Row("Node metrics", tuple(node)),
            Row("Per device", tuple(device), collapsed=True),
        ),
        time_from="now-3h",
    )


def _self(description: str) -> Dashboard:
    sel = 'job=~"$job", instance=~"$instance"'
    r = "$__rate_interval"

    def rate(metric: str, by: str = "instance") -> str:
        return f"sum by ({by}) (rate({metric}{{{sel}}}[{r}]))"

    def quantiles(metric: str) -> tuple[Target, ...]:
        return tuple(
            Target(
                f"histogram_quantile({qq}, sum by (instance, le) "
                f"(rate({metric}_bucket{{{sel}}}[{r}])))",
                f"{{{{instance}}}} p{int(float(qq) * 100)}",
            )
            for qq in ("0.5", "0.9", "0.99")
        )

    panels = (
        Panel("Queries/s", (Target(rate("promstat_queries_total"), "{{instance}}"),), unit="reqps"),
        Panel(
            "Query errors/s by type",
            (
                Target(
                    rate("promstat_query_errors_total", "instance, error_type"),
                    "{{instance}} {{error_type}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Error ratio",
            (
                Target(
                    f"{rate('promstat_query_errors_total')} / {rate('promstat_queries_total')}",
                    "{{instance}}",
                ),
            ),
            unit="percentunit",
        ),
        Panel("Query latency", quantiles("promstat_query_duration_seconds"), unit="s"),
        Panel(
            "Response bytes/s",
            (Target(rate("promstat_response_bytes_total"), "{{instance}}"),),
            unit="Bps",
        ),
        Panel(
            "Series decoded/s",
            (Target(rate("promstat_series_total"), "{{instance}}"),),
            unit="short",
        ),
        Panel(
            "Cache hit ratio",
            (
                Target(
                    f"{rate('promstat_cache_hits_total')} / ({rate('promstat_cache_hits_total')} + "
                    f"{rate('promstat_cache_misses_total')})",
                    "{{instance}}",
                ),
            ),
            unit="percentunit",
        ),
        Panel(
            "Cache hits and misses/s",
            (
                Target(rate("promstat_cache_hits_total"), "{{instance}} hits"),
                Target(rate("promstat_cache_misses_total"), "{{instance}} misses"),
            ),
        ),
        Panel(
            "Plans chosen/s",
            (Target(rate("promstat_plans_total", "instance, plan"), "{{instance}} {{plan}}"),),
        ),
        Panel(
            "Retries and chunk splits/s",
            (
                Target(rate("promstat_retries_total"), "{{instance}} retries"),
                Target(rate("promstat_chunk_splits_total"), "{{instance}} chunk splits"),
            ),
        ),
        Panel(
            "Data age of served live stats",
            quantiles("promstat_data_age_seconds"),
            unit="s",
            description="How old the values pages received were (promstat_data_age_seconds).",
        ),
        Panel(
            "Refresh failures/s",
            (Target(rate("promstat_refresh_failures_total"), "{{instance}}"),),
            description="Background refreshes of watched ids that failed.",
        ),
    )
    return Dashboard(
        uid="promstat-self",
        title="promstat: queries, cache and freshness",
        description=description,
        variables=(
            Variable("job", "Job", "label_values(promstat_queries_total, job)"),
            Variable(
                "instance",
                "Instance",
                'label_values(promstat_queries_total{job=~"$job"}, instance)',
            ),
        ),
        rows=(Row("Queries", panels[:6]), Row("Cache, plans and freshness", panels[6:])),
    )


#: Generated file names, by dashboard uid.
DASHBOARD_FILES: Final = {
    "promstat-fleet": "promstat-fleet.json",
    "promstat-kernel": "promstat-kernel.json",
    "promstat-agent": "promstat-agent.json",
    "promstat-self": "promstat-self.json",
}


def build_dashboards(
    *,
    names: SeriesNames = _DEFAULT_NAMES,
    catalog: Catalog = DEFAULT_CATALOG,
    owner_metric: str = "mem",
    rates: RateSource | str = RateSource.BOTH,
) -> tuple[Dashboard, ...]:
    """Build the four dashboards as typed values.

    Args:
        names: metric and label names.
        catalog: metric catalog (one panel per entry; which metrics are accelerators).
        owner_metric: a container metric every kernel reports, used to filter by owner.

    Raises:
        ConfigError: the catalog has no accelerator utilisation metric.
    """
    q = _Q(names, catalog, owner_metric, RateSource.parse(rates))
    families = catalog_families(catalog)
    note = (
        f"Generated by promstat {version()} (promstat dashboards render); do not edit, regenerate."
    )
    boards = (_fleet(q, note), _kernel(q, families, note), _agent(q, families, note), _self(note))
    return tuple(
        Dashboard(
            b.uid, b.title, b.description, b.variables, b.rows, DASHBOARD_FILES[b.uid], b.time_from
        )
        for b in boards
    )


def iter_targets(model: Mapping[str, Any]) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """``(panel, target)`` pairs of a dashboard JSON model, collapsed rows included."""
    for panel in model.get("panels", []):
        for inner in (panel, *panel.get("panels", [])):
            for target in inner.get("targets", []):
                yield inner, target


def _provisioning() -> dict[str, str]:
    provider = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "promstat",
                "orgId": 1,
                "folder": "Backend.AI",
                "folderUid": "promstat",
                "type": "file",
                "disableDeletion": False,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 60,
                "options": {"path": "/var/lib/grafana/dashboards/promstat"},
            }
        ],
    }
    datasource = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "type": "prometheus",
                "uid": "prometheus",
                "access": "proxy",
                "url": "http://prometheus:9090",
                "isDefault": True,
                # POST keeps long kernel_id regexes out of the URL; timeInterval = scrape
                # interval, so $__rate_interval spans at least four scrapes.
                "jsonData": {"httpMethod": "POST", "timeInterval": "15s"},
            }
        ],
    }
    head = f"# Generated by promstat {version()} (promstat dashboards render). DO NOT EDIT.\n"
    return {
        "provisioning/dashboards/promstat.yaml": head
        + "# Copy the JSON dashboards to options.path and this file to Grafana's "
        "provisioning/dashboards/.\n" + dump_yaml(provider),
        "provisioning/datasources/prometheus.example.yaml": head
        + "# An example: point url at your Prometheus (or VictoriaMetrics/Thanos/Mimir) and copy "
        "it to Grafana's provisioning/datasources/.\n" + dump_yaml(datasource),
    }


def render_dashboards(
    *,
    names: SeriesNames = _DEFAULT_NAMES,
    catalog: Catalog = DEFAULT_CATALOG,
    rates: RateSource | str = RateSource.BOTH,
) -> dict[str, str]:
    """Render the dashboards and provisioning files: ``{relative path: text}``.

    ``rates``: as the recording rules were rendered (``promstat rules render --rates``).
    """
    out = {
        b.filename: json.dumps(b.to_dict(), indent=2, ensure_ascii=False) + "\n"
        for b in build_dashboards(names=names, catalog=catalog, rates=rates)
    }
    out.update(_provisioning())
    return out


def write_dashboards(
    output_dir: str | Path,
    *,
    names: SeriesNames = _DEFAULT_NAMES,
    catalog: Catalog = DEFAULT_CATALOG,
    rates: RateSource | str = RateSource.BOTH,
) -> list[Path]:
    """Write the dashboards and provisioning files under ``output_dir`` (``rates``: as the
    recording rules were rendered).

    Returns:
        The written paths, sorted.

    Raises:
        RuleError: a file could not be written.
    """
    out = Path(output_dir)
    written: list[Path] = []
    try:
        files = render_dashboards(names=names, catalog=catalog, rates=rates)
        for rel, text in sorted(files.items()):
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    except OSError as exc:
        raise RuleError(f"cannot write dashboards to {str(out)!r}: {exc}") from exc
    return written
