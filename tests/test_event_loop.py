"""A cold 5,000-kernel page keeps the event loop free: decoding and rendering run in slices.

Against a real Prometheus holding recorded series for 5,000 kernels, the page takes the
fleet-wide plan (one ~6 MB answer). A ticker task on the same loop must keep getting turns
while the answer is decoded (in parts) and demultiplexed and rendered (in slices).
The longest callback is measured with :class:`benchmarks.loopwatch.LoopWatch` and printed; its
duration is a benchmark figure, not asserted here (the machine is shared).
"""

from __future__ import annotations

import asyncio
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from _support.waiting import loop_turns

from benchmarks.loopwatch import LoopWatch
from promstat.client import PrometheusClient, _decode_in_slices
from promstat.planner import Planner, PlannerConfig
from promstat.selfmetrics import PromstatMetrics
from promstat.testing import lab
from promstat.testing.fake import openmetrics_text
from promstat.testing.stub import StubAPI
from promstat.wire import series_decoder, vector_decoder

pytestmark = pytest.mark.slow

T0 = 1_700_000_040
AT = T0 + 607
N = 5000
IDS = [str(uuid.UUID(int=i + 1, version=4)) for i in range(N)]


def _recorded() -> str:
    rows = []
    for i, kid in enumerate(IDS):
        for metric, current in (("cpu_util", 100.0 + i), ("mem", 1.5e9 + i)):
            base = {"kernel_id": kid, "container_metric_name": metric}
            for stat, value in (("current", current), ("capacity", 4e9), ("max", current * 2),
                                ("avg", current / 3)):
                rows.append(("kernel_metric:backendai_container_utilization:live_stat",
                             {**base, "stat": stat}, T0 + 600, value))
    return openmetrics_text(rows)


@pytest.fixture(scope="module")
def fleet_prometheus() -> Iterator[lab.PrometheusProcess]:
    """A real Prometheus with 40,000 recorded series (5,000 kernels)."""
    with lab.start_prometheus(openmetrics=_recorded()) as proc:
        yield proc


class _Ticker:
    """Counts the turns a task on the same loop gets while something else runs."""

    def __init__(self) -> None:
        self.ticks = 0
        self._done = False
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._done:
            self.ticks += 1
            await asyncio.sleep(0)  # behaviour, not synchronisation: one tick per loop turn

    async def __aenter__(self) -> _Ticker:
        self._task = asyncio.create_task(self._run())
        await loop_turns(1)  # let it start
        self.ticks = 0
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._done = True
        assert self._task is not None
        await self._task


class _Replay(StubAPI):
    """A query executor answering from answers fetched earlier: no I/O during the page."""

    def __init__(self, client: PrometheusClient) -> None:
        self.client = client
        self.answers: dict[str, Any] = {}

    async def query_vector(self, query: str, **kw: Any) -> Any:
        if query not in self.answers:
            self.answers[query] = await self.client.query_vector(query, **kw)
        return self.answers[query]


async def test_a_cold_5000_kernel_page_yields_to_the_loop(
    fleet_prometheus: lab.PrometheusProcess,
) -> None:
    """Demux and render of a 5,000-kernel answer give the loop a turn every slice."""
    metrics = PromstatMetrics()
    async with PrometheusClient(fleet_prometheus.url, compress=False, observer=metrics) as c:
        replay = _Replay(c)
        planner = Planner(replay, PlannerConfig(use_recorded=True, fleet_fraction=0.5))
        first = await planner.kernels(IDS, at=AT)  # fetches the answer once
        assert first.plan == "recorded/fleet" and first.queries == 1
        # With the answer in memory the page does no I/O: every turn the ticker gets is a
        # slice boundary of demux or render (one blocking pass would give it none).
        with LoopWatch() as watch:
            async with _Ticker() as ticker:
                out = await planner.kernels(IDS, at=AT)
        print("loop during the page:", watch.summary(), "ticks:", ticker.ticks)
        assert ticker.ticks >= N // 256 - 1, ticker.ticks

        # The filtered plan's answers are small (decoded whole, rendered in one slice each
        # batch): the payloads must be the same.
        chunked = Planner(c, PlannerConfig(use_recorded=True, fleet_fraction=None))
        reference = await chunked.kernels(IDS, at=AT)
    assert reference.plan == "recorded/filtered"
    assert out.payloads == reference.payloads == first.payloads
    payload = out.payloads[IDS[0]]
    assert isinstance(payload, dict) and payload["cpu_util"]["current"] == "100"


async def test_a_large_answer_is_decoded_in_parts(fleet_prometheus: lab.PrometheusProcess) -> None:
    """A real 6 MB answer decodes part by part with the loop free between parts, to the same
    series as one whole decode."""
    planner = Planner(PrometheusClient(fleet_prometheus.url), PlannerConfig(use_recorded=True))
    labels = planner._kernel_recorded[0].labels
    query = planner.queries("kernel", IDS, recorded=True, fleet=True)[0]
    form = urllib.parse.urlencode({"query": query, "time": str(AT)}).encode()

    def fetch() -> bytes:
        with urllib.request.urlopen(fleet_prometheus.url + "/api/v1/query", form) as resp:
            return bytes(resp.read())

    body = await asyncio.to_thread(fetch)
    assert len(body) > 4 * 1024 * 1024
    decoder = vector_decoder(labels)
    async with _Ticker() as ticker:
        env = await _decode_in_slices(decoder, series_decoder(labels), body)
    assert env is not None and env.data is not None
    whole = decoder.decode(body).data
    assert whole is not None and env.data.result == whole.result
    assert len(whole.result) == 8 * N
    # ~1 MiB parts: the ticker ran between every two of them.
    assert ticker.ticks >= len(body) // (1024 * 1024) - 2, ticker.ticks
