"""Decode a large instant-vector response: promstat's typed msgspec decoders vs ``json.loads``.

The body imitates ``sum by (kernel_id, container_metric_name, value_type) (...)`` from
Prometheus: ``n_series`` series with a UUID ``kernel_id``, a ``container_metric_name`` and a
``value_type``, values as strings, generated from a fixed seed. Decoders compared:

* ``json``: :func:`json.loads` (dicts and lists, what most clients do);
* ``typed_dict``: :func:`promstat.wire.vector_decoder` with ``dict[str, str]`` labels;
* ``typed_struct``: the same with a label Struct (what the planner uses);
* ``union_struct``: :func:`promstat.wire.query_decoder` (``resultType`` tagged union) with the
  label Struct, to show the union costs nothing against the vector-only envelope.

Run ``python -m benchmarks.bench_decode [--series N] [--repeats R]``; :func:`run` returns the
numbers for the benchmark harness. Times are the best of ``repeats`` runs (least noisy).
"""

from __future__ import annotations

import argparse
import json
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from promstat.wire import query_decoder, vector_decoder

__all__ = ["SEED", "LiveStatLabels", "make_body", "run"]

SEED = 20240601
METRICS = ("cpu_util", "cpu_used", "mem", "net_rx", "net_tx", "io_read", "io_write", "cuda_util")
VALUE_TYPES = ("current", "capacity", "pct")


class LiveStatLabels(msgspec.Struct, frozen=True, gc=False):
    """The labels a live-stat row needs."""

    kernel_id: str
    container_metric_name: str
    value_type: str


def make_body(n_series: int, *, seed: int = SEED) -> bytes:
    """Return a Prometheus vector response body with ``n_series`` series (deterministic)."""
    rng = random.Random(seed)
    at = 1_700_000_000.123
    result = []
    for i in range(n_series):
        kernel = uuid.UUID(int=rng.getrandbits(128), version=4)
        metric = {
            "kernel_id": str(kernel),
            "container_metric_name": METRICS[i % len(METRICS)],
            "value_type": VALUE_TYPES[i % len(VALUE_TYPES)],
        }
        value = repr(round(rng.uniform(0, 1e6), rng.randint(0, 6)))
        result.append({"metric": metric, "value": [at, value]})
    payload = {"status": "success", "data": {"resultType": "vector", "result": result}}
    return json.dumps(payload, separators=(",", ":")).encode()


def _best(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def run(n_series: int = 30_000, repeats: int = 7) -> dict[str, Any]:
    """Measure each decoder on one body.

    Args:
        n_series: series in the body.
        repeats: runs per decoder; the best is kept.

    Returns:
        ``{"n_series", "body_bytes", "seed", "seconds": {name: best}, "ratio_json_over_typed"}``
        where the ratio is ``json`` time divided by ``typed_struct`` time.
    """
    body = make_body(n_series)
    struct_decoder = vector_decoder(LiveStatLabels)
    dict_decoder = vector_decoder()
    union_decoder = query_decoder(LiveStatLabels)
    # Sanity: every decoder sees the same series.
    assert len(json.loads(body)["data"]["result"]) == n_series
    env = struct_decoder.decode(body)
    assert env.data is not None and len(env.data.result) == n_series
    cases: dict[str, Callable[[], Any]] = {
        "json": lambda: json.loads(body),
        "typed_dict": lambda: dict_decoder.decode(body),
        "typed_struct": lambda: struct_decoder.decode(body),
        "union_struct": lambda: union_decoder.decode(body),
    }
    seconds = {name: _best(fn, repeats) for name, fn in cases.items()}
    return {
        "n_series": n_series,
        "body_bytes": len(body),
        "seed": SEED,
        "seconds": seconds,
        "ratio_json_over_typed": seconds["json"] / seconds["typed_struct"],
    }


def main() -> None:
    """Print the measurements as a small table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=30_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    result = run(args.series, args.repeats)
    print(
        f"{result['n_series']} series, {result['body_bytes'] / 1e6:.2f} MB body, "
        f"seed {result['seed']}, best of {args.repeats}"
    )
    for name, secs in result["seconds"].items():
        print(f"  {name:<13} {secs * 1e3:8.2f} ms")
    print(f"  json.loads / typed_struct = {result['ratio_json_over_typed']:.2f}x")


if __name__ == "__main__":
    main()
