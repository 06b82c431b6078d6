"""Query shapes and the accumulator that groups their answers by id.

A :class:`QueryShape` is one query of a plan: a PromQL expression with
:data:`ID_PLACEHOLDER` where each chunk's id matcher goes, the labels its rows are decoded
into, and which stat a row stands for. A :class:`RowAccumulator` keeps a load's decoded
answers and demultiplexes them by id in slices, yielding to the event loop between slices;
:class:`~promstat.planner.Planner` renders payloads from what it grouped.
"""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from promstat.promql import chunk_values, set_matcher
from promstat.wire import SampleValue

__all__ = [
    "DEMUX_SLICE",
    "ID_PLACEHOLDER",
    "ChunkBudget",
    "QueryShape",
    "RowAccumulator",
    "chunk_ids",
    "value_text",
]

#: Placeholder the planner substitutes with each chunk's id matcher.
ID_PLACEHOLDER = "__PROMSTAT_IDS__"


class ChunkBudget(Protocol):
    """What bounds one chunk's query (``PlannerConfig``, ``Utilization``)."""

    @property
    def max_query_bytes(self) -> int:
        """Query text budget per chunk, bytes."""
        ...

    @property
    def max_alternatives(self) -> int:
        """Ids per set matcher."""
        ...


def chunk_ids(
    template: str, id_label: str, ids: Sequence[str], budget: ChunkBudget
) -> list[tuple[str, ...]]:
    """Split ``ids`` so ``template`` with each chunk's matcher fits ``budget``.

    Args:
        template: the query with :data:`ID_PLACEHOLDER` wherever the id matcher goes (maybe
            several times: each occurrence costs the matcher's bytes).
        id_label: the label the matcher applies to.
        ids: the values, sorted and de-duplicated by the caller or not.
        budget: ``max_query_bytes`` and ``max_alternatives``.
    """
    repeats = template.count(ID_PLACEHOLDER)
    return chunk_values(
        ids,
        fixed_bytes=len(template.encode()) - repeats * len(ID_PLACEHOLDER),
        max_bytes=budget.max_query_bytes,
        max_alternatives=budget.max_alternatives,
        repeats=repeats,
        label=id_label,
    )


@dataclass(frozen=True, slots=True)
class QueryShape:
    """One query shape: an expression with an id placeholder and how to read its rows."""

    expr: str  # contains ID_PLACEHOLDER where the chunk's id matcher goes
    fleet: str  # the same query without an id filter (fleet-wide plan)
    id_label: str  # label the id matcher applies to
    labels: type[Any]  # msgspec Struct with fields id/metric/stat/device as needed
    stat: str | None  # fixed stat for raw shapes; None when rows carry a `stat` label
    node: bool = False  # agent plans: node rows (no device label)
    # The exporter-rates kernel shape: raw rows carry `value_type` instead of `stat`, and
    # this maps (value_type, metric) to the stat they stand for ("" for a row not shown).
    stat_of: Callable[[str, str], str] | None = field(default=None, compare=False)

    def text(self, chunk: tuple[str, ...] | None) -> str:
        """The query for one chunk of ids (``None``: the fleet-wide query)."""
        return (
            self.fleet
            if chunk is None
            else self.expr.replace(ID_PLACEHOLDER, set_matcher(self.id_label, chunk))
        )


# Demultiplexing runs in parts of about this many rows, yielding to the event loop between
# parts: a fleet-wide answer grouped at once would hold the loop for far longer than a
# callback should (figures: benchmarks/README.md, "The event loop and garbage collection").
DEMUX_SLICE = 4096


# One kept answer: its shape, its series cut into parts, the ids to keep (None: all).
_Pending = tuple[QueryShape, list[Sequence[Any]], Mapping[str, object] | None]


class RowAccumulator:
    """Rows demultiplexed by id: kernel rows as metric -> stat -> value string, agent rows as
    (device or None) -> metric -> stat -> value string.

    :meth:`add` only keeps the decoded series, cut into parts; :meth:`demux` groups them
    later, one part per slice, so a query task finishing never holds the event loop for a
    whole answer, and each part's rows are freed in their own slice once grouped (releasing a
    fleet-wide answer's decoded series at once would hold the loop as long).
    """

    __slots__ = ("_pending", "agents", "kernels")

    def __init__(self) -> None:
        self._pending: list[_Pending] = []
        # Dicts of strings only: CPython does not track them for garbage collection, so a
        # page's many values do not make the collector walk them (lists would).
        self.kernels: dict[str, dict[str, dict[str, str]]] = {}
        self.agents: dict[str, dict[str | None, dict[str, dict[str, str]]]] = {}

    def add(
        self, shape: QueryShape, series: Sequence[Any], wanted: Mapping[str, object] | None
    ) -> None:
        """Keep one answer's decoded series for :meth:`demux` (``wanted``: the ids to keep,
        ``None`` when every row belongs to the batch).

        The caller should drop its own reference to ``series`` afterwards: the parts then
        hold the only references, and :meth:`demux` frees them part by part.
        """
        parts = [series[i : i + DEMUX_SLICE] for i in range(0, len(series), DEMUX_SLICE)]
        parts.reverse()  # demux pops from the end: rows are still grouped in answer order
        self._pending.append((shape, parts, wanted))

    async def demux(self) -> None:
        """Group every kept series by id, one part (``DEMUX_SLICE`` rows) per loop turn."""
        pending, self._pending = self._pending, []
        first = True
        for shape, parts, wanted in pending:
            kernel_rows = not shape.node and "device" not in shape.labels.__struct_fields__
            add_rows = self._add_kernel_rows if kernel_rows else self._add_agent_rows
            while parts:
                if not first:
                    await asyncio.sleep(0)
                first = False
                add_rows(shape, parts.pop(), wanted)  # the part is freed as this returns

    def _add_kernel_rows(
        self, shape: QueryShape, series: Sequence[Any], wanted: Mapping[str, object] | None
    ) -> None:
        # The hot loop of a page (one pass per returned series): plain locals, one dict per
        # kernel and one per metric, no per-row attribute probing. ``wanted`` is None for an
        # id chunk's answer (its matcher already selected exactly the chunk's ids; the caller
        # renders only those), so the membership test runs for fleet-wide answers only.
        # The exporter-rates shape's raw rows carry no stat: theirs comes from the row's
        # (value_type, metric) through shape.stat_of (memoised), "" for a row not shown.
        kernels = self.kernels
        fixed = shape.stat
        stat_of = shape.stat_of
        text_of = value_text(series)
        for s in series:
            lab = s.metric
            ident = lab.id
            if wanted is not None and ident not in wanted:
                continue
            metric = lab.metric
            key = fixed or lab.stat
            if not key and stat_of is not None:
                key = stat_of(lab.vt, metric)
                if not key:
                    continue
            per_id = kernels.get(ident)
            if per_id is None:
                per_id = kernels[ident] = {}
            per_metric = per_id.get(metric)
            if per_metric is None:
                per_metric = per_id[metric] = {}
            per_metric[key] = text_of(s.value)

    def _add_agent_rows(
        self, shape: QueryShape, series: Sequence[Any], wanted: Mapping[str, object] | None
    ) -> None:
        rows = self.agents
        fixed = shape.stat
        text_of = value_text(series)
        with_device = not shape.node and "device" in shape.labels.__struct_fields__
        for s in series:
            lab = s.metric
            ident = lab.id
            if wanted is not None and ident not in wanted:
                continue
            per_id = rows.get(ident)
            if per_id is None:
                per_id = rows[ident] = {}
            device = lab.device if with_device else None
            per_dev = per_id.get(device)
            if per_dev is None:
                per_dev = per_id[device] = {}
            metric = lab.metric
            per_metric = per_dev.get(metric)
            if per_metric is None:
                per_metric = per_dev[metric] = {}
            per_metric[fixed or lab.stat] = text_of(s.value)


_SAMPLE_TEXT = operator.attrgetter("text")
_PAIR_TEXT = operator.itemgetter(1)


def value_text(series: Sequence[Any]) -> Callable[[Any], str]:
    """How to read the value text of an answer's samples.

    Decoded answers hold :class:`~promstat.wire.SampleValue` samples: reading ``.text`` is a
    slot read, while ``value[1]`` is a Python-level ``__getitem__`` (slower, per sample). An
    executor of one's own may answer with ``(timestamp, text)`` pairs instead.
    """
    if series and not isinstance(series[0].value, SampleValue):
        return _PAIR_TEXT
    return _SAMPLE_TEXT
