"""The client path of a cold recorded-plan page: streamed rendering, read-only payloads.

A single-shape plan (the recorded kernel plan) renders each chunk's kernels as soon as that
chunk's answer arrives, straight into read-only payloads. These tests pin what must not change
with that: the payloads (``==``, ``json.dumps`` and key order) are those of rendering every
row in one pass with :func:`promstat.renderer.render_kernel`, whatever order the answers come
in, with splits, failures and the fleet-wide plan; and the first chunk's kernels really are
rendered while a later chunk is still out. Data comes from a real Prometheus; the executor
wrappers only delay, hold or fail answers (fault injection).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any
from urllib.parse import urlencode

import pytest
from _support.waiting import until
from hypothesis import given
from hypothesis import strategies as st
from test_event_loop import _Ticker  # counts the loop turns another task gets

from promstat import renderer as live_stat
from promstat.catalog import SENTINEL_CAPACITY
from promstat.client import PrometheusClient, _quote
from promstat.errors import ExecutionError, QueryTooLargeError
from promstat.payload import FrozenDict, afreeze_values, freeze
from promstat.planner import Planner, PlannerConfig
from promstat.service import LiveStats
from promstat.testing import lab
from promstat.testing.fake import openmetrics_text
from promstat.testing.stub import StubAPI

pytestmark = pytest.mark.slow

T0 = 1_700_000_040
AT = T0 + 607
N = 300
IDS = [str(uuid.UUID(int=i + 1, version=4)) for i in range(N)]
assert sorted(IDS) == IDS  # fixed-width hex: the planner's chunk order is this order
GONE = str(uuid.UUID(int=10**9, version=4))  # asked for, never seen: None
FAMILY = "kernel_metric:backendai_container_utilization:live_stat"
# Small chunks, so a page of N ids is several queries of one shape.
CHUNK = 64


def _value(i: int, k: int) -> float:
    """Varied sample values: integers, decimals with ties and carries, huge numbers, NaN.

    Prometheus sends each back as its shortest round-trip text ("12.0035", "NaN").
    """
    pick = (i * 7 + k) % 9
    if pick == 0:
        return float(i * 1000 + k)
    if pick == 1:
        return float(f"{i}.{k:03d}5")  # a half-even tie at 3 decimals
    if pick == 2:
        return float(f"{i}.9996")  # carries into the integer part
    if pick == 3:
        return 4e15 + i  # 0.04% of the sentinel capacity: a non-zero pct
    if pick == 4:
        return float("nan")
    return i / 7 + k


def _recorded() -> str:
    rows: list[tuple[str, Mapping[str, str], float, float]] = []
    for i, kid in enumerate(IDS):
        metrics: dict[str, tuple[str, ...]] = {
            "cpu_util": ("current", "capacity", "max", "avg"),
            "mem": ("current", "capacity", "max"),
            "net_rx": ("current", "rate"),  # sentinel capacity, no capacity series
            "io_scratch_size": ("current",),
        }
        if i % 5 == 0:
            metrics["cuda_mem"] = ("capacity",)  # no current: left out of the payload
        for k, (metric, stats) in enumerate(metrics.items()):
            base = {"kernel_id": kid, "container_metric_name": metric}
            for j, stat in enumerate(stats):
                rows.append((FAMILY, {**base, "stat": stat}, T0 + 600, _value(i, k * 5 + j)))
    return openmetrics_text(rows)


@pytest.fixture(scope="module")
def recorded_prometheus() -> Iterator[lab.PrometheusProcess]:
    """A real Prometheus with recorded live_stat series of N kernels."""
    with lab.start_prometheus(openmetrics=_recorded()) as proc:
        yield proc


@pytest.fixture
async def client(recorded_prometheus: lab.PrometheusProcess) -> AsyncIterator[PrometheusClient]:
    """A client on the recorded Prometheus."""
    async with PrometheusClient(recorded_prometheus.url) as c:
        yield c


async def _one_pass(client: PrometheusClient) -> dict[str, dict[str, Any] | None]:
    """The reference: every row in one unfiltered query, rendered in one pass as plain dicts."""
    answer = await client.query_vector(
        f"max by (kernel_id, container_metric_name, stat) ({FAMILY})", time=AT
    )
    rows: dict[str, dict[str, dict[str, str]]] = {}
    for s in answer.series:
        lab_ = s.metric
        rows.setdefault(lab_["kernel_id"], {}).setdefault(lab_["container_metric_name"], {})[
            lab_["stat"]
        ] = s.value[1]
    return {
        kid: live_stat.render_kernel(rows[kid]) if kid in rows else None for kid in [*IDS, GONE]
    }


def _assert_same_payloads(
    got: Mapping[str, object], expected: Mapping[str, dict[str, Any] | None]
) -> None:
    """Equal, serialised byte for byte alike (key order included), read-only at every level."""
    assert list(got) == list(expected)
    for kid, want in expected.items():
        payload = got[kid]
        assert payload == want, kid
        assert json.dumps(payload) == json.dumps(want), kid
        if want is not None:
            assert isinstance(payload, FrozenDict), kid
            assert all(isinstance(leaf, FrozenDict) for leaf in payload.values()), kid
            assert freeze(payload) is payload  # nothing left for the cache to copy


def _chunk_of(query: str) -> int:
    """Which CHUNK-sized slice of the sorted ids a query's matcher starts in (-1: the
    fleet-wide page query, -2: plan detection).

    The planner cuts the sorted ids greedily into chunks of ``max_alternatives`` (CHUNK) ids.
    """
    if query.startswith("count("):
        return -2
    if "kernel_id=" not in query:
        return -1
    return min(i for i, kid in enumerate(IDS) if kid in query) // CHUNK


class _Gated(StubAPI):
    """Forwards to the real client; lets a test delay, hold or fail (once) chosen queries, or
    replay the first answer to each query (``replay``: a page without I/O)."""

    def __init__(self, inner: PrometheusClient, *, replay: bool = False) -> None:
        self.inner = inner
        self.answers: dict[str, Any] | None = {} if replay else None
        self.queries: list[str] = []
        self.delay: dict[int, float] = {}
        self.hold: dict[int, asyncio.Event] = {}
        self.fail_once: dict[int, Exception] = {}

    async def query_vector(self, query: str, **kwargs: Any) -> Any:
        self.queries.append(query)
        chunk = _chunk_of(query)
        error = self.fail_once.pop(chunk, None)
        if error is not None:
            raise error
        if self.answers is None:
            answer = await self.inner.query_vector(query, **kwargs)
        elif query in self.answers:
            answer = self.answers[query]
        else:
            answer = self.answers[query] = await self.inner.query_vector(query, **kwargs)
        await asyncio.sleep(self.delay.get(chunk, 0.0))  # behaviour: a chunk's latency
        if chunk in self.hold:
            await self.hold[chunk].wait()
        return answer


def _config(**kwargs: Any) -> PlannerConfig:
    return PlannerConfig(use_recorded=True, max_alternatives=CHUNK, **kwargs)


async def test_chunks_answering_in_any_order_render_the_one_pass_payloads(
    client: PrometheusClient,
) -> None:
    """Chunk answers arriving last-first give exactly the one-pass, plain-dict rendering."""
    expected = await _one_pass(client)
    assert sum(p is not None for p in expected.values()) == N  # the data is all there
    gated = _Gated(client)
    n_chunks = -(-N // CHUNK)
    gated.delay = {c: 0.05 * (n_chunks - c) for c in range(n_chunks)}
    planner = Planner(gated, _config(fleet_fraction=None))
    out = await planner.kernels([*IDS, GONE], at=AT)
    assert out.plan == "recorded/filtered"
    assert out.queries == len(gated.queries) == n_chunks
    _assert_same_payloads(out.payloads, expected)


async def test_the_first_chunks_are_rendered_while_a_later_one_is_still_out(
    client: PrometheusClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the last chunk's answer held back, every other chunk's kernels are rendered."""
    expected = {k: v for k, v in (await _one_pass(client)).items() if k != GONE}
    calls = 0
    original = live_stat.render_kernel

    def counting(values: Mapping[str, Mapping[str, str]], **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1  # one call per kernel with rows
        return original(values, **kwargs)

    monkeypatch.setattr(live_stat, "render_kernel", counting)
    gated = _Gated(client)
    last = (N - 1) // CHUNK
    early = last * CHUNK  # ids in the chunks before the held one
    gated.hold = {last: asyncio.Event()}
    planner = Planner(gated, _config(fleet_fraction=None))
    page = asyncio.create_task(planner.kernels(IDS, at=AT))
    await until(
        lambda: calls >= early or page.done(),
        timeout=30,  # generous: a busy machine
        what="the chunks before the held one rendered",
    )
    rendered_before_release = calls
    assert not page.done()  # the held chunk is still out
    gated.hold[last].set()
    out = await asyncio.wait_for(page, 60)
    assert rendered_before_release == early
    assert calls == N
    _assert_same_payloads(out.payloads, expected)


async def test_a_failed_chunk_and_a_split_chunk_keep_their_semantics(
    client: PrometheusClient,
) -> None:
    """A failing chunk gives its own ids its error; a too-large chunk is halved; the rest
    renders exactly as in one pass."""
    expected = await _one_pass(client)
    boom = ExecutionError(status=422, error_type="execution", error="boom")
    gated = _Gated(client)
    gated.fail_once = {1: boom, 2: QueryTooLargeError(status=413, error="too large")}
    planner = Planner(gated, _config(fleet_fraction=None))
    out = await planner.kernels([*IDS, GONE], at=AT)
    failed_ids = set(IDS[CHUNK : 2 * CHUNK])
    assert {k for k, v in out.payloads.items() if v is boom} == failed_ids
    assert out.queries == -(-N // CHUNK) + 2  # chunk 2 again, as two halves
    assert all(len(q) < 16384 for q in gated.queries)
    _assert_same_payloads(
        {k: v for k, v in out.payloads.items() if k not in failed_ids},
        {k: v for k, v in expected.items() if k not in failed_ids},
    )


async def test_fleet_wide_plan_and_its_fallback_to_chunks_render_the_same(
    client: PrometheusClient,
) -> None:
    """The fleet-wide plan (one query, no chunks cut) and its fallback to id chunks when that
    query is too large give the one-pass payloads."""
    expected = {k: v for k, v in (await _one_pass(client)).items() if k != GONE}
    gated = _Gated(client)
    planner = Planner(gated, _config(fleet_fraction=0.5))
    out = await planner.kernels(IDS, at=AT)
    assert out.plan == "recorded/fleet" and out.queries == 1
    _assert_same_payloads(out.payloads, expected)

    gated = _Gated(client)
    gated.fail_once = {-1: QueryTooLargeError(status=413, error="too large")}  # fleet query
    planner = Planner(gated, _config(fleet_fraction=0.5))
    out = await planner.kernels(IDS, at=AT)
    assert out.plan == "recorded/fleet"
    assert out.queries == 1 + -(-N // CHUNK)
    _assert_same_payloads(out.payloads, expected)


async def test_repeated_and_changing_pages_send_the_queries_a_fresh_planner_sends(
    client: PrometheusClient,
) -> None:
    """Kept chunkings and query texts never leak from one batch into another."""
    gated = _Gated(client)
    planner = Planner(gated, _config(fleet_fraction=None))
    fresh = Planner(gated, _config(fleet_fraction=None))
    pages = [IDS[:200], IDS[100:], IDS[:200], IDS[:199], list(reversed(IDS[:200]))]
    for page in pages * 2:
        gated.queries.clear()
        out = await planner.kernels(page, at=AT)
        assert sorted(gated.queries) == sorted(fresh.queries("kernel", page, recorded=True))
        assert list(out.payloads) == page


async def test_a_slow_render_still_gives_the_loop_a_turn_every_few_milliseconds(
    client: PrometheusClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Render slices end after a few milliseconds, not only every 256 kernels: with kernels
    that take 2 ms each (a busy machine), another task keeps getting turns."""
    planner = Planner(_Gated(client, replay=True), _config(fleet_fraction=0.5))
    reference = await planner.kernels(IDS, at=AT)  # fetches the one fleet-wide answer
    assert reference.plan == "recorded/fleet"
    original = live_stat.render_kernel

    def slow(values: Mapping[str, Mapping[str, str]], **kwargs: Any) -> Any:
        time.sleep(0.002)  # behaviour, not synchronisation: a render that blocks 2 ms
        return original(values, **kwargs)

    monkeypatch.setattr(live_stat, "render_kernel", slow)
    async with _Ticker() as ticker:
        out = await planner.kernels(IDS, at=AT)  # no I/O: every tick is a slice boundary
    ticks = ticker.ticks
    # 300 kernels x 2 ms = 0.6 s of rendering; 256-kernel slices alone would give ~3 turns,
    # 4 ms slices ~100. Generous bound for a loaded machine.
    print("ticks during a slow render:", ticks)
    assert ticks >= 30, ticks
    assert out.payloads == reference.payloads


async def test_live_stats_hands_out_the_rendered_payloads_read_only(
    client: PrometheusClient,
) -> None:
    """Through LiveStats (the cache's freeze included) payloads stay equal and read-only."""
    expected = await _one_pass(client)
    stats = LiveStats(client, planner=PlannerConfig(use_recorded=True), clock=lambda: AT)
    got = await stats.load_kernels([*IDS[:10], GONE])
    for kid, payload in zip([*IDS[:10], GONE], got, strict=True):
        assert payload == expected[kid]
        if payload is not None:
            assert isinstance(payload, dict)
            with pytest.raises(TypeError, match="read-only"):
                payload["status"] = "TERMINATED"
            with pytest.raises(TypeError, match="read-only"):
                payload["cpu_util"]["pct"] = "1"
    await stats.aclose()


# --------------------------------------------------------------------------- rendering units


RAW = {
    "cpu_util": {"current": "12.3455", "capacity": "400", "max": "20", "avg": "7.0005"},
    "mem": {"current": "1073741824", "capacity": "4294967296"},
    "net_rx": {"current": "5e20", "rate": "1.5"},
    "io_read": {"current": "461168601842738800"},
    "cuda_mem": {"capacity": "8"},
}


def test_frozen_rendering_equals_freezing_the_plain_rendering() -> None:
    """render_kernel/render_agent(frozen=True) give what freeze() makes of the plain dicts."""
    plain = live_stat.render_kernel(RAW)
    frozen = live_stat.render_kernel(RAW, frozen=True)
    assert plain is not None and type(plain) is dict
    assert frozen == plain == freeze(plain)
    assert json.dumps(frozen) == json.dumps(plain)
    assert type(frozen) is FrozenDict and all(type(v) is FrozenDict for v in frozen.values())
    with pytest.raises(TypeError):
        frozen["mem"]["current"] = "0"

    devices = {"cuda_mem": {"1": {"current": "3"}, "0": {"current": "4", "capacity": "8"}}}
    plain_agent = live_stat.render_agent(RAW, devices)
    frozen_agent = live_stat.render_agent(RAW, devices, frozen=True)
    assert plain_agent is not None and frozen_agent is not None
    assert frozen_agent == plain_agent == freeze(plain_agent)
    assert json.dumps(frozen_agent) == json.dumps(plain_agent)
    assert freeze(frozen_agent) is frozen_agent
    with pytest.raises(TypeError):
        frozen_agent["devices"]["cuda_mem"]["0"]["pct"] = "1"
    assert live_stat.render_kernel({"mem": {"capacity": "1"}}, frozen=True) is None


@pytest.mark.parametrize(
    "current",
    [
        "0",
        "-0",
        "7",
        "12.5",
        "99999999999999",
        "99999999999999.999",
        "461168601842737",
        "461168601842738",
        "461168601842739",
        "-461168601842739",
        "1e14",
        "5e20",
        "NaN",
        "+Inf",
        "0.0000001",
        "",
        "abc",
        "\u0661\u0662",
    ],
)
def test_pct_of_the_sentinel_capacity_is_the_reference_pct(current: str) -> None:
    """A kernel metric without a capacity series shows the pct of the sentinel capacity."""
    rendered = live_stat.render_kernel({"net_rx": {"current": current}})
    assert rendered is not None
    assert rendered["net_rx"]["capacity"] == SENTINEL_CAPACITY
    assert rendered["net_rx"]["pct"] == live_stat.format_pct_reference(current, SENTINEL_CAPACITY)


@pytest.mark.parametrize(
    "text",
    [
        "0",
        "00",
        "007",
        "1",
        "4294967296",
        "9" * 21,
        "9" * 22,
        "1" + "0" * 23,
        "9" * 25,
        "\u0661\u0662",
        "-5",
        "12.5",
    ],
)
def test_plain_integer_texts_format_like_the_reference(text: str) -> None:
    """The early return for plain integers agrees with the Decimal reference."""
    assert live_stat.format_decimal(text) == live_stat.format_decimal_reference(text)
    assert live_stat.format_integral(text) == live_stat.format_integral_reference(text)


async def test_freezing_an_already_frozen_page_passes_every_payload_through() -> None:
    """The service's freeze of planner payloads returns each one as is, without loop turns."""
    frozen = live_stat.render_kernel(RAW, frozen=True)
    batch: dict[str, Any] = {f"k{i}": frozen if i % 3 else None for i in range(1000)}
    batch["err"] = err = ExecutionError(status=422, error="boom")
    batch["plain"] = {"mem": {"current": "1"}}  # one plain payload still gets frozen
    async with _Ticker() as ticker:
        out = await afreeze_values(batch, slice_size=100)
    ran = ticker.ticks
    assert list(out) == list(batch)
    assert all(out[k] is batch[k] for k in batch if k != "plain")
    assert out["err"] is err
    assert type(out["plain"]) is FrozenDict and out["plain"] == batch["plain"]
    assert ran <= 1  # at most the slice holding the one plain payload yielded


@given(
    st.lists(
        st.tuples(st.text(max_size=8), st.text(max_size=400) | st.sampled_from(["", "a b+c&d=é"])),
        max_size=4,
    )
)
def test_form_encoding_is_urlencode_with_long_values_memoised(
    pairs: list[tuple[str, str]],
) -> None:
    """The client's form body is byte for byte ``urllib.parse.urlencode``, memo or not."""
    for _ in range(2):  # the second pass reads long values from the memo
        assert "&".join(f"{_quote(k)}={_quote(v)}" for k, v in pairs) == urlencode(pairs)
