"""Tests for promstat.payload: cached payloads nobody can corrupt, and that still serialise.

The cross-caller guarantee runs on a real Prometheus through :class:`LiveStats` (two requests
share one cached payload; one of them tries to change it). GraphQL serialisation runs through
graphene's ``JSONString`` and strawberry schemas.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import pickle
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import graphene
import msgspec
import pytest
import strawberry
from _support.planner_data import AT, EXPECTED_AGENTS, EXPECTED_KERNELS, K1, scenario_openmetrics
from _support.waiting import loop_turns

from promstat import payload
from promstat import renderer as live_stat
from promstat.apps.schema import json_string
from promstat.client import PrometheusClient
from promstat.payload import (
    FrozenDict,
    afreeze_values,
    freeze,
    freeze_values,
    frozen,
    thaw,
    untrack_payloads,
)
from promstat.planner import PlannerConfig
from promstat.refresh import RefreshConfig
from promstat.service import LiveStats
from promstat.testing import lab

KERNEL = freeze(EXPECTED_KERNELS[K1])
AGENT = freeze(next(p for p in EXPECTED_AGENTS.values() if p is not None))

MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], object]]] = [
    ("setitem", lambda d: d.__setitem__("status", "TERMINATED")),
    ("delitem", lambda d: d.__delitem__(next(iter(d)))),
    ("update", lambda d: d.update(version=2)),
    ("setdefault", lambda d: d.setdefault("version", 2)),
    ("pop", lambda d: d.pop(next(iter(d)))),
    ("popitem", lambda d: d.popitem()),
    ("clear", lambda d: d.clear()),
    ("ior", lambda d: d.__ior__({"version": 2})),
]


@pytest.mark.parametrize(("name", "mutate"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_every_mutator_raises_a_typeerror_that_says_how_to_copy(
    name: str, mutate: Callable[[dict[str, Any]], object]
) -> None:
    """Top-level and nested dicts of kernel and agent payloads refuse every mutation."""
    nested = [
        KERNEL,
        KERNEL["cpu_util"],
        AGENT,
        AGENT["node"],
        next(iter(AGENT["node"].values())),
    ]
    for target in nested:
        before = thaw(target)
        with pytest.raises(TypeError, match=r"read-only live_stat payload.*thaw"):
            mutate(target)
        assert target == before


def test_frozen_payloads_read_and_compare_like_plain_dicts() -> None:
    """Equality, isinstance, json, msgspec, pickle and deepcopy all behave as for a dict."""
    plain = EXPECTED_KERNELS[K1]
    assert plain == KERNEL and isinstance(KERNEL, dict) and isinstance(KERNEL, FrozenDict)
    assert json.dumps(KERNEL) == json.dumps(plain)
    assert msgspec.json.decode(msgspec.json.encode(KERNEL)) == plain
    assert pickle.loads(pickle.dumps(KERNEL)) == KERNEL
    deep = copy.deepcopy(KERNEL)
    assert deep == KERNEL and isinstance(deep["cpu_util"], FrozenDict)
    assert FrozenDict.fromkeys(["a"], 1) == {"a": 1}
    assert freeze(KERNEL) is KERNEL  # freezing twice costs nothing
    assert freeze([{"a": 1}]) == ({"a": 1},)


def test_copies_are_the_callers_own() -> None:
    """A shallow copy takes new keys, thaw() copies all the way down; the original is unchanged."""
    mine = {**KERNEL, "status": "TERMINATED"}
    assert "status" not in KERNEL and type(mine) is dict
    union = KERNEL | {"version": 2}
    assert type(union) is dict and "version" not in KERNEL
    deep = thaw(AGENT)
    metric = next(iter(deep["node"]))
    deep["node"][metric]["current"] = "changed"
    assert AGENT["node"][metric]["current"] != "changed"
    assert type(KERNEL.copy()) is dict


CPYTHON = sys.implementation.name == "cpython"
EXPECTED_KERNELS_RAW = {
    "cpu_util": {"current": "12.5", "capacity": "400", "max": "80", "avg": "10"},
    "mem": {"current": "1073741824", "capacity": "4294967296", "max": "2147483648"},
    "net_rx": {"current": "1234", "rate": "12"},
    "io_scratch_size": {"current": "0"},
}
AGENT_RAW = (
    {"cpu_util": {"current": "150", "capacity": "800"}, "mem": {"current": "1024"}},
    {"cpu_util": {"0": {"current": "75", "capacity": "100"}, "1": {"current": "75"}}},
)


def _walk(value: Any) -> Iterator[FrozenDict[Any, Any]]:
    if isinstance(value, FrozenDict):
        yield value
        for item in value.values():
            yield from _walk(item)


@pytest.fixture
def untracking() -> Iterator[None]:
    """Opt in to untracking payloads for one test, and out again after it."""
    untrack_payloads(True)
    try:
        yield
    finally:
        untrack_payloads(False)


def test_payloads_stay_tracked_unless_the_application_opts_in() -> None:
    """Untracking is off by default: a rendered payload is an ordinary tracked container."""
    kernel = live_stat.render_kernel(EXPECTED_KERNELS_RAW, frozen=True)
    assert isinstance(kernel, FrozenDict)
    assert all(gc.is_tracked(level) for level in _walk(kernel))


@pytest.mark.skipif(not CPYTHON, reason="untracking is CPython's PyObject_GC_UnTrack")
def test_rendered_payloads_are_untracked_and_hold_only_strings_and_untracked_dicts(
    untracking: None,
) -> None:
    """Opted in, rendered kernel and agent payloads are off the collector's list at every
    level, and every level holds only what makes that safe: strings, None and such dicts."""
    kernel = live_stat.render_kernel(EXPECTED_KERNELS_RAW, frozen=True)
    agent = live_stat.render_agent(*AGENT_RAW, frozen=True)
    assert kernel == live_stat.render_kernel(EXPECTED_KERNELS_RAW)
    levels = [*_walk(kernel), *_walk(agent)]
    assert len(levels) > 10
    for level in levels:
        assert not gc.is_tracked(level)
        for key, item in level.items():
            assert type(key) is str
            assert item is None or type(item) is str or isinstance(item, FrozenDict), item
    # A plain (unfrozen) rendering is an ordinary dict, tracked or not as CPython decides.
    assert not isinstance(live_stat.render_kernel(EXPECTED_KERNELS_RAW), FrozenDict)


@pytest.mark.skipif(not CPYTHON, reason="untracking is CPython's PyObject_GC_UnTrack")
def test_only_string_keys_and_atomic_values_are_untracked(untracking: None) -> None:
    """freeze() and frozen() untrack a dict of str keys and atomic values only: a non-string
    key, a tuple value or a tracked dict value keeps the collector watching it."""
    out = freeze({"m": {"current": "1", "n": 2, "x": None}, "t": {"items": [1, 2]}})
    assert not gc.is_tracked(out["m"])
    assert gc.is_tracked(out["t"])  # holds a tuple: the collector keeps watching it
    assert gc.is_tracked(out)  # holds a tracked dict
    assert gc.is_tracked(frozen({1: "x"}))  # a key that is not a str
    assert gc.is_tracked(frozen({"a": FrozenDict(b=[1])}))
    assert not gc.is_tracked(frozen({"a": frozen({"b": "1"})}))


@pytest.mark.skipif(not CPYTHON, reason="untracking is CPython's PyObject_GC_UnTrack")
def test_an_untracked_payload_is_freed_by_reference_counting_and_still_copies(
    untracking: None,
) -> None:
    """An untracked dict is freed without a collection, and pickles, copies and compares."""
    import weakref

    leaf = frozen({"a": "1"})
    assert not gc.is_tracked(leaf)
    assert pickle.loads(pickle.dumps(leaf)) == leaf == copy.deepcopy(leaf) == {"a": "1"}

    class Probe(FrozenDict[str, str]):
        """A weak-referenceable FrozenDict, so its release can be observed."""

        __slots__ = ("__weakref__",)

    holder = payload._seal(Probe(a="x"))
    assert not gc.is_tracked(holder)
    gone = weakref.ref(holder)
    del holder  # no collection needed: reference counting frees the untracked dict
    assert gone() is None


def test_freeze_values_passes_errors_and_none_through() -> None:
    """A batch's errors and Nones are not wrapped; payloads are frozen in a new outer dict."""
    err = ValueError("x")
    batch: dict[str, Any] = {"a": {"m": {"current": "1"}}, "b": None, "c": err}
    out = freeze_values(batch)
    assert isinstance(out["a"], FrozenDict) and isinstance(out["a"]["m"], FrozenDict)
    assert out["b"] is None and out["c"] is err and type(batch["a"]) is dict


async def test_afreeze_values_yields_to_the_loop_between_slices() -> None:
    """The async form freezes the same way and lets other callbacks run every slice."""
    batch: dict[str, Any] = {
        f"k{i}": ({"m": {"current": str(i)}} if i % 7 else None) for i in range(1000)
    }
    batch["err"] = err = ValueError("x")
    ticks = 0

    async def other_work() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)  # behaviour, not synchronisation: one tick per loop turn

    task = asyncio.create_task(other_work())
    await loop_turns(1)
    started = ticks
    out = await afreeze_values(batch, slice_size=100)
    task.cancel()
    assert out == freeze_values(batch) and out["err"] is err
    assert all(isinstance(v, FrozenDict) for v in out.values() if isinstance(v, dict))
    # 1,001 values in slices of 100: the other task ran at least once per slice
    assert ticks - started >= 10


def test_graphene_jsonstring_serialises_a_frozen_payload() -> None:
    """graphene's JSONString (json.dumps) gives the same wire string as for a plain dict."""

    class Query(graphene.ObjectType):
        live_stat = graphene.JSONString()

        @staticmethod
        def resolve_live_stat(root: object, info: graphene.ResolveInfo) -> dict[str, Any]:
            return KERNEL

    result = graphene.Schema(query=Query, auto_camelcase=False).execute("{ live_stat }")
    assert result.errors is None
    assert result.data == {"live_stat": json.dumps(EXPECTED_KERNELS[K1])}
    assert json_string(AGENT) == json.dumps(thaw(AGENT))


def test_strawberry_serialises_a_frozen_payload() -> None:
    """strawberry's JSON scalar and promstat's JSONString text both accept frozen payloads."""

    @strawberry.type
    class Query:
        @strawberry.field
        def live_stat(self) -> strawberry.scalars.JSON:
            return KERNEL

        @strawberry.field
        def live_stat_text(self) -> str | None:
            return json_string(KERNEL)

    result = strawberry.Schema(query=Query).execute_sync("{ liveStat liveStatText }")
    assert result.errors is None and result.data is not None
    assert result.data["liveStat"] == EXPECTED_KERNELS[K1]
    assert json.loads(result.data["liveStatText"]) == EXPECTED_KERNELS[K1]


@pytest.fixture(scope="module")
def prom() -> Iterator[lab.PrometheusProcess]:
    """A real Prometheus holding the backfilled planner scenario."""
    with lab.start_prometheus(openmetrics=scenario_openmetrics()) as proc:
        yield proc


@pytest.fixture(params=[True, False], ids=["refresh-ahead", "shared-cache-only"])
async def stats(
    prom: lab.PrometheusProcess, request: pytest.FixtureRequest
) -> AsyncIterator[LiveStats]:
    """LiveStats on the scenario, with and without refresh-ahead (both caches hand out)."""
    async with PrometheusClient(prom.url) as client:
        config = PlannerConfig(use_recorded=False, fleet_fraction=None)
        live = LiveStats(
            client,
            planner=config,
            clock=lambda: AT,
            refresh=RefreshConfig(enabled=request.param),
        )
        yield live
        await live.aclose()


@pytest.mark.slow
async def test_a_caller_cannot_change_the_payload_other_requests_get(stats: LiveStats) -> None:
    """Request A's attempt to add a key fails; request B gets the untouched payload."""
    first, second = stats.kernel_loader(), stats.kernel_loader()
    a = await first.load(K1)
    assert a is not None
    with pytest.raises(TypeError, match="read-only"):
        a["status"] = "TERMINATED"  # legacy's destroy path did this to last_stat
    with pytest.raises(TypeError, match="read-only"):
        a["cpu_util"]["current"] = "0"
    mine = {**a, "status": "TERMINATED"}  # the supported way
    b = await second.load(K1)
    assert b is a  # the same cached object, served without a query
    assert b == EXPECTED_KERNELS[K1] and "status" not in b and mine["status"] == "TERMINATED"
    agents = await stats.load_agents(list(EXPECTED_AGENTS))
    assert all(p is None or isinstance(p, FrozenDict) for p in agents)
    await loop_turns(1)
