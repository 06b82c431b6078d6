"""Tests for promstat.loader: the per-request DataLoader and the cross-request SharedLoader."""

from __future__ import annotations

import asyncio
import gc

import pytest
from _support.waiting import loop_turns

from promstat.errors import BatchSizeMismatchError, ClosedError, PromstatError
from promstat.loader import DataLoader, FetchResult, SharedLoader


class Recorder:
    """A batch function that records its calls and answers from a table."""

    def __init__(self, answers: dict[str, object] | None = None, delay: float = 0.0) -> None:
        self.calls: list[list[str]] = []
        self.answers = answers or {}
        self.delay = delay
        self.started = asyncio.Event()

    async def __call__(self, keys: list[str]) -> list[object]:
        self.calls.append(list(keys))
        self.started.set()
        if self.delay:
            await asyncio.sleep(self.delay)  # behaviour, not synchronisation: a slow batch
        return [self.answers.get(k, f"v:{k}") for k in keys]


class Hanging:
    """A batch function that hangs until cancelled (while ``hang``), recording its calls."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.hang = True
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()

    async def __call__(self, keys: list[str]) -> list[object]:
        self.calls.append(list(keys))
        self.started.set()
        if self.hang:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                self.stopped.set()
                raise
        return list(keys)


async def test_loads_in_one_tick_form_one_deduplicated_batch() -> None:
    """Loads made in the same tick are sent as one batch with each key once."""
    fn = Recorder()
    loader: DataLoader[str, object] = DataLoader(fn)
    got = await asyncio.gather(loader.load("a"), loader.load("b"), loader.load("a"))
    assert got == ["v:a", "v:b", "v:a"]
    assert fn.calls == [["a", "b"]]


async def test_max_batch_size_splits_batches() -> None:
    """A batch larger than max_batch_size is split into several calls."""
    fn = Recorder()
    loader: DataLoader[str, object] = DataLoader(fn, max_batch_size=2)
    await loader.load_many(["a", "b", "c", "d", "e"])
    assert fn.calls == [["a", "b"], ["c", "d"], ["e"]]


async def test_values_are_cached_per_loader() -> None:
    """A second load of a key in a later tick is served from the loader's cache."""
    fn = Recorder()
    loader: DataLoader[str, object] = DataLoader(fn)
    assert await loader.load("a") == "v:a"
    assert await loader.load("a") == "v:a"
    assert fn.calls == [["a"]]
    loader.clear("a")
    await loader.load("a")
    assert fn.calls == [["a"], ["a"]]


async def test_per_key_errors_reject_only_their_key_and_are_not_cached() -> None:
    """An exception in one slot rejects that key only, and a later load retries it."""
    fn = Recorder({"bad": PromstatError("boom"), "none": None})
    loader: DataLoader[str, object] = DataLoader(fn)
    results = await asyncio.gather(
        loader.load("ok"), loader.load("bad"), loader.load("none"), return_exceptions=True
    )
    assert results[0] == "v:ok"
    assert isinstance(results[1], PromstatError)
    assert results[2] is None
    fn.answers["bad"] = "fixed"
    assert await loader.load("bad") == "fixed"
    assert fn.calls == [["ok", "bad", "none"], ["bad"]]


async def test_whole_batch_failure_rejects_and_evicts_every_key() -> None:
    """When the batch function raises, every key fails and none stays cached."""
    calls = 0

    async def failing(keys: list[str]) -> list[object]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise PromstatError("down")
        return list(keys)

    loader: DataLoader[str, object] = DataLoader(failing)
    results = await asyncio.gather(loader.load("a"), loader.load("b"), return_exceptions=True)
    assert all(isinstance(r, PromstatError) for r in results)
    assert await loader.load_many(["a", "b"]) == ["a", "b"]


async def test_wrong_result_count_is_a_typed_error() -> None:
    """A batch function returning the wrong number of values fails with BatchSizeMismatchError."""

    async def short(keys: list[str]) -> list[object]:
        return [1]

    loader: DataLoader[str, object] = DataLoader(short)
    with pytest.raises(BatchSizeMismatchError, match="returned 1 results for 2 keys"):
        await loader.load_many(["a", "b"])


async def test_batch_is_skipped_when_every_caller_cancelled_before_dispatch() -> None:
    """Loads cancelled before the batch is dispatched never reach the batch function."""
    fn = Recorder()
    loader: DataLoader[str, object] = DataLoader(fn)
    pending = loader.load("a")  # registers the key; the batch goes out on the next tick
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    # A later load's batch goes out after the cancelled one would have: had that one been
    # sent, it would be in the calls before this one. The cancelled key was not cached.
    assert await loader.load("a") == "v:a"
    assert fn.calls == [["a"]]


async def test_in_flight_batch_is_cancelled_when_its_last_caller_goes() -> None:
    """Cancelling every caller of an in-flight batch cancels the batch function."""
    slow = Hanging()
    loader: DataLoader[str, object] = DataLoader(slow)
    task = asyncio.ensure_future(loader.load_many(["a", "b"]))
    await slow.started.wait()
    task.cancel()
    await asyncio.wait_for(slow.stopped.wait(), 5)


async def test_one_cancelled_caller_does_not_fail_the_others() -> None:
    """A cancelled caller leaves other callers of the same key with their value."""
    fn = Recorder(delay=0.05)
    loader: DataLoader[str, object] = DataLoader(fn)
    first = asyncio.ensure_future(loader.load("a"))
    second = asyncio.ensure_future(loader.load("a"))
    await fn.started.wait()
    first.cancel()
    assert await second == "v:a"
    assert fn.calls == [["a"]]


async def test_cancelled_waiter_leaves_at_once_and_the_last_one_stops_the_batch() -> None:
    """A waiter's own cancel() takes it off the key at once; the other waiter still counts.

    The batch is cancelled only when the second (last) caller of its key goes, and a later
    load of the key is answered by a new batch (the cancelled one was not cached).
    """
    slow = Hanging()
    loader: DataLoader[str, object] = DataLoader(slow)
    first, second = loader.load("a"), loader.load("a")
    assert first is not second
    await slow.started.wait()
    assert first.cancel() is True
    assert first.cancel() is False  # a second cancel is a no-op, as on any future
    await loop_turns(5)  # a cancel reaches the batch within a turn or two, if it ever does
    assert not slow.stopped.is_set() and not second.done()
    second.cancel()
    await asyncio.wait_for(slow.stopped.wait(), 5)
    slow.hang = False
    assert await loader.load("a") == "a"
    assert slow.calls == [["a"], ["a"]]


async def test_without_cache_each_tick_gets_its_own_batch_answer() -> None:
    """With cache=False a key loaded in two ticks has two batches; each caller gets its own."""
    count = 0
    first_in_flight, release_first = asyncio.Event(), asyncio.Event()

    async def numbered(keys: list[str]) -> list[object]:
        nonlocal count
        count += 1
        mine = count
        if mine == 1:  # the first batch lands last
            first_in_flight.set()
            await release_first.wait()
        return [f"{k}#{mine}" for k in keys]

    loader: DataLoader[str, object] = DataLoader(numbered, cache=False)
    first = loader.load("a")
    await first_in_flight.wait()
    second = loader.load("a")
    assert await second == "a#2"
    assert not first.done()  # the second batch's answer did not go to the first caller
    release_first.set()
    assert await first == "a#1"


async def test_a_pending_load_keeps_few_objects_for_the_collector() -> None:
    """A page's loads are cheap for the garbage collector: at most 3 tracked objects each.

    Each load used to add two done-callbacks (a copied Context, a partial, a bound method
    and a tuple each) and a list: ~15 tracked objects per key, and with 50 pages in flight
    full collections over 750,000 objects took two thirds of a polling process' CPU.
    """
    release = asyncio.Event()

    async def held(keys: list[str]) -> list[object]:
        await release.wait()
        return list(keys)

    loader: DataLoader[str, object] = DataLoader(held)
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        waiters = [loader.load(f"k{i}") for i in range(1000)]
        after = len(gc.get_objects())
    finally:
        gc.enable()
    assert after - before <= 3 * 1000, after - before
    await loop_turns(1)
    release.set()
    assert await asyncio.gather(*waiters) == [f"k{i}" for i in range(1000)]


async def test_a_failed_key_reaches_every_caller_and_leaves_nothing_unretrieved() -> None:
    """Every caller of a failed key gets the error; a caller that never awaits is not
    reported by asyncio (the waiter's exception is marked retrieved when it is set)."""
    reports: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reports.append(ctx))
    loader: DataLoader[str, object] = DataLoader(Recorder({"a": PromstatError("no a")}))
    one, two, dropped = loader.load("a"), loader.load("a"), loader.load("a")
    for fut in (one, two):
        with pytest.raises(PromstatError, match="no a"):
            await fut
    del dropped
    gc.collect()
    assert reports == []


async def test_prime_answers_without_a_batch() -> None:
    """A primed key is answered from the cache without calling the batch function."""
    fn = Recorder()
    loader: DataLoader[str, object] = DataLoader(fn)
    loader.prime("a", "primed")
    assert await loader.load("a") == "primed"
    assert fn.calls == []


class Clock:
    """A manually advanced monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Gate:
    """Holds fetches until released; ``started`` is set when the first one begins."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()


def fetcher(
    answers: dict[str, object] | None = None,
    *,
    gate: Gate | None = None,
    uncacheable: set[str] | None = None,
) -> tuple[list[list[str]], object]:
    """A SharedLoader fetch function that records calls (and waits at ``gate``, if given)."""
    calls: list[list[str]] = []

    async def fetch(keys: list[str]) -> FetchResult[str, object]:
        calls.append(list(keys))
        if gate is not None:
            gate.started.set()
            await gate.release.wait()
        values = {k: (answers or {}).get(k, f"v:{k}") for k in keys}
        return FetchResult(values, set(uncacheable or ()) & set(keys))  # type: ignore[arg-type]

    return calls, fetch


async def test_shared_loader_single_flight_across_concurrent_requests() -> None:
    """Two requests loading overlapping keys at once share one fetch per key."""
    gate = Gate()
    calls, fetch = fetcher(gate=gate)
    shared: SharedLoader[str, object] = SharedLoader(fetch, ttl=10)  # type: ignore[arg-type]
    both = asyncio.gather(shared.batch_load(["k1", "k2"]), shared.batch_load(["k2", "k3"]))
    await gate.started.wait()
    await loop_turns(5)  # both requests have asked before any fetch answers
    assert shared.inflight == 3
    gate.release.set()
    a, b = await both
    assert a == ["v:k1", "v:k2"] and b == ["v:k2", "v:k3"]
    assert sorted(k for call in calls for k in call) == ["k1", "k2", "k3"]


async def test_shared_loader_ttl_cache_hits_and_expiry() -> None:
    """Values are reused within the TTL and fetched again after it."""
    clock = Clock()
    calls, fetch = fetcher()
    shared: SharedLoader[str, object] = SharedLoader(fetch, ttl=15, clock=clock)  # type: ignore[arg-type]
    await shared.batch_load(["a"])
    clock.now += 14.9
    await shared.batch_load(["a"])
    assert calls == [["a"]]
    clock.now += 0.2
    await shared.batch_load(["a"])
    assert calls == [["a"], ["a"]]
    snap = shared.metrics.snapshot()
    assert (snap.cache_hits, snap.cache_misses) == (1, 2)


async def test_shared_loader_never_caches_errors_or_warned_values() -> None:
    """Errors and values that came with warnings are answered but not kept."""
    calls, fetch = fetcher({"bad": PromstatError("x")}, uncacheable={"warned"})
    shared: SharedLoader[str, object] = SharedLoader(fetch, ttl=60)  # type: ignore[arg-type]
    first = await shared.batch_load(["ok", "bad", "warned"])
    assert first[0] == "v:ok" and isinstance(first[1], PromstatError) and first[2] == "v:warned"
    await shared.batch_load(["ok", "bad", "warned"])
    assert calls == [["ok", "bad", "warned"], ["bad", "warned"]]


async def test_shared_loader_caches_none_results() -> None:
    """A key with no data (None) is a real answer and is cached like a value."""
    calls, fetch = fetcher({"gone": None})
    shared: SharedLoader[str, object] = SharedLoader(fetch, ttl=60)  # type: ignore[arg-type]
    assert await shared.batch_load(["gone"]) == [None]
    assert await shared.batch_load(["gone"]) == [None]
    assert calls == [["gone"]]


async def test_shared_loader_is_bounded() -> None:
    """The cache evicts least recently used entries beyond max_entries."""
    calls, fetch = fetcher()
    shared: SharedLoader[str, object] = SharedLoader(fetch, ttl=60, max_entries=2)  # type: ignore[arg-type]
    await shared.batch_load(["a", "b", "c"])
    assert len(shared) == 2
    await shared.batch_load(["a"])  # evicted, fetched again
    assert calls[-1] == ["a"]


async def test_shared_fetch_failure_answers_every_key_with_the_error() -> None:
    """A fetch that raises gives every key the error and caches nothing."""
    attempts = 0

    async def fetch(keys: list[str]) -> FetchResult[str, object]:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise PromstatError("unreachable")
        return FetchResult({k: k for k in keys})

    shared: SharedLoader[str, object] = SharedLoader(fetch, ttl=60)
    out = await shared.batch_load(["a", "b"])
    assert all(isinstance(v, PromstatError) for v in out)
    assert await shared.batch_load(["a", "b"]) == ["a", "b"]


async def test_cancelled_caller_does_not_cancel_the_shared_fetch() -> None:
    """When one request is cancelled, another request waiting for the same keys still gets them."""
    gate = Gate()
    calls, fetch = fetcher(gate=gate)
    shared: SharedLoader[str, object] = SharedLoader(fetch, ttl=60)  # type: ignore[arg-type]
    first = asyncio.ensure_future(shared.batch_load(["a"]))
    await gate.started.wait()
    second = asyncio.ensure_future(shared.batch_load(["a"]))
    await loop_turns(1)
    first.cancel()
    await loop_turns(3)
    gate.release.set()
    assert await second == ["v:a"]
    assert calls == [["a"]]


async def test_dataloader_over_shared_loader_contract() -> None:
    """A per-request DataLoader can sit directly on SharedLoader.batch_load."""
    calls, fetch = fetcher()
    shared: SharedLoader[str, object] = SharedLoader(fetch, ttl=60)  # type: ignore[arg-type]
    req1: DataLoader[str, object] = DataLoader(shared.batch_load)  # type: ignore[arg-type]
    req2: DataLoader[str, object] = DataLoader(shared.batch_load)  # type: ignore[arg-type]
    await asyncio.gather(req1.load_many(["a", "b"]), req2.load_many(["b", "c"]))
    assert sorted(k for call in calls for k in call) == ["a", "b", "c"]


async def test_abandoned_callers_leave_no_unretrieved_exception() -> None:
    """Callers that give up on a failing fetch leave nothing for asyncio to report."""
    reports: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reports.append(ctx))

    gate, fetched = Gate(), []

    async def failing(keys: list[str]) -> FetchResult[str, object]:
        gate.started.set()
        await gate.release.wait()
        fetched.append(keys)
        return FetchResult({k: PromstatError(f"no {k}") for k in keys})

    shared: SharedLoader[str, object] = SharedLoader(failing, ttl=60)
    gone = [asyncio.ensure_future(shared.batch_load(["a", "b"])) for _ in range(3)]
    staying = asyncio.ensure_future(shared.batch_load(["b", "c"]))
    await gate.started.wait()
    await loop_turns(5)
    for task in gone:
        task.cancel()
    await asyncio.gather(*gone, return_exceptions=True)
    gate.release.set()  # the abandoned keys' fetch fails after its callers left
    out = await staying
    assert [str(e) for e in out] == ["no b", "no c"]
    await loop_turns(10)  # the abandoned keys' fetch has answered too (it was released)
    assert shared.inflight == 0
    del gone
    gc.collect()
    assert reports == []


async def test_aclose_answers_waiters_and_rejects_new_loads() -> None:
    """aclose() cancels fetches in flight: waiters get ClosedError; later loads raise it."""
    gate = Gate()  # never released: only aclose() ends the fetch
    _, fetch = fetcher(gate=gate)
    shared: SharedLoader[str, object] = SharedLoader(fetch, ttl=60, name="test loader")  # type: ignore[arg-type]
    waiting = asyncio.ensure_future(shared.batch_load(["a", "b"]))
    await gate.started.wait()
    assert shared.inflight == 2
    await shared.aclose()
    out = await waiting
    assert all(isinstance(v, ClosedError) and "test loader is closed" in str(v) for v in out)
    assert shared.inflight == 0 and shared.closed
    with pytest.raises(ClosedError):
        await shared.batch_load(["a"])
    await shared.aclose()  # idempotent


async def test_reading_an_entry_does_not_extend_its_life() -> None:
    """Entries expire one TTL after they were written, however often they are read."""
    clock = Clock()
    calls, fetch = fetcher()
    shared: SharedLoader[str, object] = SharedLoader(fetch, ttl=15, clock=clock)  # type: ignore[arg-type]
    await shared.batch_load(["a", "b"])
    clock.now += 10
    await shared.batch_load(["a"])  # a hit
    await shared.batch_load(["c"])  # written later
    clock.now += 5
    await shared.batch_load(["c"])  # a hit; a and b expired and were dropped
    assert len(shared) == 1
    assert calls == [["a", "b"], ["c"]]
