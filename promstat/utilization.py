"""Session utilization for the idle checker and per-kernel pct for autoscaling, in one query.

Backend.AI's utilization idle checker (``manager/idle.py``,
``UtilizationIdleChecker.get_current_utilization``) does one Valkey ``GET`` per kernel of a
session, reads ``{resource}.pct`` of each threshold resource, averages over the kernels that
reported it (a resource no kernel reported is ``None``: excluded from the decision), and adds
``mem.current / occupied mem slot * 100`` per kernel to the ``mem`` sum. Deployment autoscaling's
``KERNEL`` metric source MGETs kernel stats and averages ``{metric}.pct`` over the kernels of a
deployment's sessions. :class:`Utilization` answers both for many sessions (or kernels) with
one vectorized query per chunk of ids, from the recorded series (``pct`` is computed from
``current`` and ``capacity`` in the query, as pages do: the rules record no pct family)::

    kernel_metric:backendai_container_utilization:live_stat{kernel_id, container_metric_name,
                                                            stat="current"|"capacity"}

The recorded series carry no ``session_id``; the raw series do, so sessions are joined in::

    avg by (session_id, container_metric_name) (
        PCT * on (kernel_id) group_left (session_id)
        group by (kernel_id, session_id) (backendai_container_utilization{session_id=~"..."}))

(If the rules kept ``session_id`` on the recorded families the join would go away; that is a
change to :mod:`promstat.generate.rules`.) ``PCT`` is ``current / capacity * 100``, or ``0`` for a
metric
with a current value but no positive capacity (legacy's ``"0.00"``). Three parts come back in one
answer, told apart by a ``promstat_part`` label: the per-resource mean pct, the mean ``mem``
current per kernel, and the number of kernels.

``mem``, exactly as ``idle.py`` computes it (:attr:`MemRule.UPSTREAM`, default): the sum over
kernels of ``mem.pct`` *plus* ``mem.current / slot * 100`` (when the slot is positive),
divided by the kernels that reported ``mem.pct`` — i.e. ``mean(mem.pct) + mean(mem.current) /
slot * 100``. The code comment says it meant to *replace* ``mem.pct`` by the slot-based value;
:attr:`MemRule.OCCUPIED_SLOT` does that (falling back to ``mean(mem.pct)`` without a slot).

With ``window`` every part is averaged over the window with a subquery
(``avg_over_time(part[window:step])``), the way the idle checker averages its per-interval
readings over its ``time_window`` (readings where a resource was missing are skipped); ``mem``
stays exact because it is linear in the averaged parts.

Kernels are those with series at the evaluation time; a terminated kernel's frozen series
count until the agent removes them (its detention), where the idle checker asks the database
for live kernels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

from promstat.api import PrometheusAPI
from promstat.conventions import SeriesNames
from promstat.errors import ConfigError, check_seconds
from promstat.expressions import LiveStatExpressions
from promstat.promql import duration, set_matcher
from promstat.shapes import ID_PLACEHOLDER, chunk_ids

__all__ = [
    "MemRule",
    "Utilization",
    "autoscaling_kernel_average",
    "idle_checker_utilization",
]

_PART: Final = "promstat_part"


class MemRule(StrEnum):
    """How ``mem`` utilization is computed (see the module docstring)."""

    UPSTREAM = "upstream"
    OCCUPIED_SLOT = "occupied_slot"


@dataclass(slots=True)
class _Parts:
    """One session's answer, accumulated from the tagged series."""

    pct: dict[str, float]
    mem_current: float | None = None
    kernels: int = 0


class Utilization:
    """Batched utilization queries over the recorded (or raw) series.

    Args:
        client: the :class:`~promstat.api.PrometheusAPI` to query.
        names: metric and label names.
        use_recorded: read the recorded families (default); ``False`` computes current and
            capacity from the raw series with :class:`~promstat.expressions.LiveStatExpressions`
            (no rules needed, costlier). Ignored for ``expressions`` with
            ``rates="exporter"``: those rules record no kernel current or capacity, and the
            exporter's series are read as they are (as cheap as the recorded ones).
        expressions: the raw-series definitions (its lookback/window/interval, ``rates``).
        mem_rule: :class:`MemRule`.
        max_query_bytes: query text budget per chunk (VictoriaMetrics' 16 KiB default).
        max_alternatives: ids per set matcher.
        concurrency: chunks in flight.
        clock: what "now" is (Unix seconds) for calls without ``at``; ``None`` lets the server
            decide. Replays and tests pin it to a time inside their data.
    """

    def __init__(
        self,
        client: PrometheusAPI,
        *,
        names: SeriesNames = SeriesNames(),  # noqa: B008 - frozen, immutable default
        use_recorded: bool = True,
        expressions: LiveStatExpressions | None = None,
        mem_rule: MemRule = MemRule.UPSTREAM,
        max_query_bytes: int = 16 * 1024,
        max_alternatives: int = 256,
        concurrency: int = 8,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, not {concurrency}")
        self.client = client
        self.names = names
        self.expressions = expressions or LiveStatExpressions(names=names)
        self.use_recorded = use_recorded and self.expressions.records_kernel_values
        self.mem_rule = MemRule(mem_rule)
        self.max_query_bytes = max_query_bytes
        self.max_alternatives = max_alternatives
        self._semaphore = asyncio.Semaphore(concurrency)
        self.clock = clock

    # -- query text ---------------------------------------------------------------------------

    def _pct(self, metrics: Sequence[str], extra: str) -> str:
        """Per-kernel pct of ``metrics``, ``0`` where there is no positive capacity."""
        n = self.names
        by = f"{n.kernel_label}, {n.container_metric_label}"
        names = set_matcher(n.container_metric_label, metrics)
        if self.use_recorded:
            # max by: drops the stat label (and a duplicate frozen series, as pages do).
            cur = f"max by ({by}) ({self._recorded('current', names, extra)})"
            cap = f"max by ({by}) ({self._recorded('capacity', names, extra)})"
        else:
            matchers = names + extra
            cur = self._raw("current", matchers)
            cap = self._raw("capacity", matchers)
        pct = f"({cur}) / on ({by}) (({cap}) > 0) * 100"
        return f"({pct}) or on ({by}) ({cur}) * 0"

    def _recorded(self, stat: str, names: str, extra: str) -> str:
        n = self.names
        return f'{n.kernel_live_stat}{{{n.stat_label}="{stat}",{names}{extra}}}'

    def _raw(self, stat: str, matchers: str) -> str:
        expr = self.expressions.kernel(stat, matchers=matchers)
        if expr is None:  # pragma: no cover - current and capacity always exist
            raise ConfigError(f"the catalog defines no kernel {stat!r}")
        return expr

    def _mem_current(self, extra: str) -> str:
        n = self.names
        by = f"{n.kernel_label}, {n.container_metric_label}"
        names = set_matcher(n.container_metric_label, ["mem"])
        if self.use_recorded:
            return f"max by ({by}) ({self._recorded('current', names, extra)})"
        return self._raw("current", names + extra)

    @staticmethod
    def _windowed(expr: str, window: float | None, step: float | None, func: str) -> str:
        if window is None:
            return expr
        res = "" if step is None else duration(step)
        return f"{func}(({expr})[{duration(window)}:{res}])"

    def session_query(
        self,
        session_ids: Sequence[str],
        resources: Sequence[str],
        *,
        window: float | None = None,
        step: float | None = None,
    ) -> str:
        """The PromQL of :meth:`sessions` for one chunk of session ids."""
        if not resources:
            raise ConfigError("give at least one resource (e.g. cpu_util, mem)")
        n = self.names
        _check_window(window, step)
        sessions = (
            f"group by ({n.kernel_label}, {n.session_label}) "
            f"({n.container_metric}{{{set_matcher(n.session_label, session_ids)}}})"
        )

        def joined(expr: str) -> str:
            return f"({expr}) * on ({n.kernel_label}) group_left ({n.session_label}) {sessions}"

        def tag(expr: str, part: str) -> str:
            return f'label_replace({expr}, "{_PART}", "{part}", "{n.session_label}", ".*")'

        by = f"{n.session_label}, {n.container_metric_label}"
        pct = f"avg by ({by}) ({joined(self._pct(resources, ''))})"
        parts = [tag(self._windowed(pct, window, step, "avg_over_time"), "pct")]
        if "mem" in resources:
            mem = f"avg by ({n.session_label}) ({joined(self._mem_current(''))})"
            parts.append(tag(self._windowed(mem, window, step, "avg_over_time"), "mem_current"))
        kernels = f"count by ({n.session_label}) ({sessions})"
        parts.append(tag(self._windowed(kernels, window, step, "max_over_time"), "kernels"))
        return " or ".join(parts)

    def kernel_query(
        self,
        kernel_ids: Sequence[str],
        metrics: Sequence[str],
        *,
        window: float | None = None,
        step: float | None = None,
    ) -> str:
        """The PromQL of :meth:`kernels` for one chunk of kernel ids."""
        if not metrics:
            raise ConfigError("give at least one metric (e.g. cpu_util)")
        _check_window(window, step)
        extra = "," + set_matcher(self.names.kernel_label, kernel_ids)
        return self._windowed(self._pct(metrics, extra), window, step, "avg_over_time")

    # -- execution ----------------------------------------------------------------------------

    def _chunks(self, template: str, label: str, ids: Sequence[str]) -> list[tuple[str, ...]]:
        # The template spells the matcher label="placeholder"; chunk_ids counts the label
        # and its =~"..." itself, so keep only the placeholder.
        template = template.replace(f'{label}="{ID_PLACEHOLDER}"', ID_PLACEHOLDER)
        return chunk_ids(template, label, ids, self)

    async def _run(self, query: str, at: float | None) -> list[Any]:
        if at is None and self.clock is not None:
            at = self.clock()
        async with self._semaphore:
            result = await self.client.query_vector(query, labels=dict[str, str], time=at)
        return list(result.series)

    async def sessions(
        self,
        occupied_mem: Mapping[str, float | int | str | Decimal | None],
        resources: Sequence[str],
        *,
        at: float | None = None,
        window: float | None = None,
        step: float | None = None,
    ) -> dict[str, dict[str, float | None] | None]:
        """What the idle checker computes, for many sessions at once.

        Args:
            occupied_mem: session id -> the session's occupied ``mem`` slot in bytes
                (``occupied_slots["mem"]``; ``0``/``None`` when unknown).
            resources: the threshold resources, e.g. ``["cpu_util", "mem", "cuda_util"]``.
            at: evaluation time (default: the server's now).
            window: average each reading over this many seconds (e.g. ``600``), or ``None``.
            step: the window's resolution in seconds (default: the server's evaluation
                interval).

        Returns:
            session id -> ``{resource: percent or None (excluded)}``, or ``None`` for a session
            without any series (the idle checker skips it).
        """
        slots = {str(s): v for s, v in occupied_mem.items()}
        ids = list(slots)
        if not ids:
            return {}
        template = self.session_query([ID_PLACEHOLDER], resources, window=window, step=step)
        chunks = self._chunks(template, self.names.session_label, ids)
        answers = await asyncio.gather(
            *(
                self._run(self.session_query(chunk, resources, window=window, step=step), at)
                for chunk in chunks
            )
        )
        parts: dict[str, _Parts] = {}
        label = self.names.session_label
        metric_label = self.names.container_metric_label
        for series in (s for answer in answers for s in answer):
            session = series.metric.get(label)
            if session is None:
                continue
            p = parts.setdefault(session, _Parts({}))
            value = float(series.value[1])
            part = series.metric.get(_PART)
            if part == "pct":
                p.pct[series.metric.get(metric_label, "")] = value
            elif part == "mem_current":
                p.mem_current = value
            elif part == "kernels":
                p.kernels = int(value)
        out: dict[str, dict[str, float | None] | None] = {}
        for session in ids:
            found = parts.get(session)
            if found is None or found.kernels == 0:
                out[session] = None
                continue
            p = found
            slot = _as_float(slots[session])
            values: dict[str, float | None] = {}
            for resource in resources:
                values[resource] = p.pct.get(resource)
            if "mem" in resources:
                values["mem"] = self._mem(p, slot)
            out[session] = values
        return out

    def _mem(self, p: _Parts, slot: float) -> float | None:
        pct = p.pct.get("mem")
        by_slot = p.mem_current / slot * 100 if slot > 0 and p.mem_current is not None else None
        if self.mem_rule is MemRule.OCCUPIED_SLOT:
            return by_slot if by_slot is not None else pct
        if pct is None:
            return None  # no kernel reported mem.pct: excluded, whatever the slot
        return pct + (by_slot or 0.0)

    async def kernels(
        self,
        kernel_ids: Sequence[str],
        metrics: Sequence[str],
        *,
        at: float | None = None,
        window: float | None = None,
        step: float | None = None,
    ) -> dict[str, dict[str, float]]:
        """Per-kernel ``pct`` of ``metrics`` (the autoscaling KERNEL source's input).

        Returns:
            kernel id -> ``{metric: pct}``; kernels and metrics without data are absent.
            Average them with :func:`autoscaling_kernel_average`.
        """
        ids = list(dict.fromkeys(str(k) for k in kernel_ids))
        if not ids:
            return {}
        template = self.kernel_query([ID_PLACEHOLDER], metrics, window=window, step=step)
        chunks = self._chunks(template, self.names.kernel_label, ids)
        answers = await asyncio.gather(
            *(
                self._run(self.kernel_query(chunk, metrics, window=window, step=step), at)
                for chunk in chunks
            )
        )
        out: dict[str, dict[str, float]] = {}
        label, metric_label = self.names.kernel_label, self.names.container_metric_label
        for series in (s for answer in answers for s in answer):
            kernel_id, metric = series.metric.get(label), series.metric.get(metric_label)
            if kernel_id is not None and metric is not None:
                out.setdefault(kernel_id, {})[metric] = float(series.value[1])
        return out


def _check_window(window: float | None, step: float | None) -> None:
    # Seconds, like every duration in promstat's API; duration() refuses what Prometheus
    # cannot spell (below a millisecond).
    check_seconds("window", window, positive=True, optional=True)
    check_seconds("step", step, positive=True, optional=True)
    if step is not None and window is None:
        raise ConfigError("step needs a window")
    for value in (window, step):
        if value is not None:
            duration(value)


def _as_float(value: float | int | str | Decimal | None) -> float:
    if value is None:
        return 0.0
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"occupied mem slot {value!r} is not a number") from exc


# ---------------------------------------------------------------------------- references


def _nmget(payload: Mapping[str, Any], path: str, default: Any = None) -> Any:
    # ai.backend.common.utils.nmget with the "." delimiter
    node: Any = payload
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def idle_checker_utilization(
    live_stats: Sequence[Mapping[str, Any] | None],
    resources: Sequence[str],
    occupied_slots: Mapping[str, Any],
) -> dict[str, float | None] | None:
    """``UtilizationIdleChecker.get_current_utilization`` of Backend.AI, on legacy payloads.

    The reference :class:`Utilization` is tested against: ``live_stats`` are the kernels'
    ``get_kernel_statistics`` answers (``None`` when missing).
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    kernels = 0
    for live_stat in live_stats:
        if live_stat is None:
            continue
        for resource in resources:
            value = _nmget(live_stat, f"{resource}.pct")
            if value is None:
                continue
            sums[resource] = sums.get(resource, 0.0) + float(value)
            counts[resource] = counts.get(resource, 0) + 1
        mem_slots = float(occupied_slots.get("mem", 0))
        mem_current = float(_nmget(live_stat, "mem.current", 0.0))
        if mem_slots > 0:
            sums["mem"] = sums.get("mem", 0.0) + mem_current / mem_slots * 100
        kernels += 1
    if kernels == 0:
        return None
    return {r: (sums[r] / counts[r] if counts.get(r) else None) for r in resources}


def autoscaling_kernel_average(
    kernel_stats: Sequence[Mapping[str, Any] | None], metric: str
) -> Decimal | None:
    """The autoscaling ``KERNEL`` source's aggregation: mean ``{metric}.pct``, or ``None``.

    Works on legacy payloads (``kernel_stat[metric]["pct"]``) and on :meth:`Utilization.kernels`
    rows (``{metric: pct}`` floats) alike.
    """
    total, found = Decimal(0), 0
    for stat in kernel_stats:
        if not stat or metric not in stat:
            continue
        value = stat[metric]
        pct = value.get("pct", 0) if isinstance(value, Mapping) else value
        total += Decimal(str(pct))
        found += 1
    return total / Decimal(found) if found else None
