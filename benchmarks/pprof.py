"""Where a running Prometheus spends its CPU: its own pprof CPU profile, decoded.

The rule-cost benchmark asks Prometheus for ``/debug/pprof/profile`` while only the rules and
the scrapes run, and reports the share of CPU samples in rule evaluation, in the head index's
postings sort and in the garbage collector (:func:`cpu_breakdown`). Those shares say why a rule
costs what it costs: on Prometheus before 2.54 every selection sorts the series it selects by
their full label sets, because the fan-out storage wraps the local TSDB and the (empty) remote
storage in a merge that needs sorted input (upstream commit fbca054, "storage: don't wrap single
querier in merge-queriers"), so a selection's cost grows with the series it matches, whatever
function reads them.

The profile is pprof's ``profile.proto``, gzipped. Decoding its few fields by hand (varints and
length-delimited records) keeps a protobuf runtime and Go's ``pprof`` tool out of the benchmark
for five numbers.
"""

from __future__ import annotations

import collections
import functools
import gzip
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["CATEGORIES", "CpuProfile", "cpu_breakdown", "fetch_cpu_profile", "parse_profile"]

#: Category -> frame substrings; a sample counts in a category when any frame of its stack
#: contains one of them (a sample may count in several: a rule's allocation that assists
#: the garbage collector counts in both).
CATEGORIES: dict[str, tuple[str, ...]] = {
    # Rule evaluation, with the selections it starts: the merge querier selects from each
    # storage in a goroutine of its own, whose stack no longer shows the rule.
    "rules": ("rules.(*Group).Eval", "storage.(*mergeGenericQuerier).Select.func"),
    "postings_sort": ("tsdb.(*headIndexReader).SortedPostings",),
    "gc": ("runtime.gcBgMarkWorker", "runtime.gcAssistAlloc", "runtime.bgsweep"),
    "scrape": ("scrape.(*scrapeLoop)",),
}


@dataclass(frozen=True)
class CpuProfile:
    """A decoded CPU profile: each distinct stack (leaf first) with its CPU nanoseconds."""

    stacks: tuple[tuple[tuple[str, ...], int], ...]
    duration_s: float

    @functools.cached_property
    def total_ns(self) -> int:
        """CPU nanoseconds sampled in all (the denominator of every share)."""
        return sum(ns for _, ns in self.stacks)

    @property
    def cpu_s(self) -> float:
        """CPU seconds sampled in all."""
        return self.total_ns / 1e9

    def share(self, substrings: Sequence[str]) -> float:
        """Fraction of the sampled CPU whose stack has a frame containing any of ``substrings``."""
        if not self.total_ns:
            return 0.0
        hit = sum(ns for frames, ns in self.stacks
                  if any(s in f for f in frames for s in substrings))
        return hit / self.total_ns

    def top(self, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` functions with the most CPU of their own (leaf frames), as shares."""
        total = self.total_ns or 1
        flat: collections.Counter[str] = collections.Counter()
        for frames, ns in self.stacks:
            if frames:
                flat[frames[0]] += ns
        return [(name, ns / total) for name, ns in flat.most_common(n)]


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """``(field number, value)`` of one protobuf message: ints for varints, bytes otherwise."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i : i + size], i + size
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"pprof: unsupported protobuf wire type {wire}")
        if i > len(buf):
            raise ValueError("pprof: truncated profile")
        yield number, value


def _ints(value: int | bytes) -> list[int]:
    """A repeated integer field's entries: one varint, or a packed run of them."""
    if isinstance(value, int):
        return [value]
    out, i = [], 0
    while i < len(value):
        x, i = _varint(value, i)
        out.append(x)
    return out


def parse_profile(data: bytes) -> CpuProfile:
    """Decode a (gzipped) pprof CPU profile.

    Only what the breakdown needs: samples (location ids, the last value: CPU nanoseconds in a
    Go CPU profile), locations (their functions, inlined ones first), function names and the
    duration.

    Raises:
        ValueError: ``data`` is not a profile.proto message.
    """
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    strings: list[str] = []
    samples: list[tuple[list[int], int]] = []
    locations: dict[int, list[int]] = {}
    functions: dict[int, int] = {}
    duration_ns = 0
    try:
        for number, value in _fields(data):
            if number == 6 and isinstance(value, bytes):  # string_table
                strings.append(value.decode("utf-8", "replace"))
            elif number == 2 and isinstance(value, bytes):  # sample
                ids: list[int] = []
                values: list[int] = []
                for n2, v2 in _fields(value):
                    if n2 == 1:
                        ids += _ints(v2)
                    elif n2 == 2:
                        values += _ints(v2)
                if values:
                    samples.append((ids, values[-1]))
            elif number == 4 and isinstance(value, bytes):  # location
                loc_id, funcs = 0, []
                for n2, v2 in _fields(value):
                    if n2 == 1 and isinstance(v2, int):
                        loc_id = v2
                    elif n2 == 4 and isinstance(v2, bytes):  # line
                        funcs += [v3 for n3, v3 in _fields(v2) if n3 == 1 and isinstance(v3, int)]
                locations[loc_id] = funcs
            elif number == 5 and isinstance(value, bytes):  # function
                fields = dict(_fields(value))
                fid, name_index = fields.get(1, 0), fields.get(2, 0)
                if isinstance(fid, int) and isinstance(name_index, int):
                    functions[fid] = name_index
            elif number == 10 and isinstance(value, int):  # duration_nanos
                duration_ns = value
    except IndexError as exc:
        raise ValueError("pprof: truncated profile") from exc

    def function_name(function_id: int) -> str:
        index = functions.get(function_id)
        return strings[index] if index is not None and index < len(strings) else "?"

    merged: collections.Counter[tuple[str, ...]] = collections.Counter()
    for ids, ns in samples:
        merged[tuple(function_name(f) for loc in ids for f in locations.get(loc, ()))] += ns
    return CpuProfile(tuple(merged.items()), duration_ns / 1e9)


def fetch_cpu_profile(url: str, seconds: int) -> CpuProfile:
    """Profile the Go server at ``url`` for ``seconds`` (its ``/debug/pprof/profile``)."""
    with urllib.request.urlopen(
        f"{url}/debug/pprof/profile?seconds={seconds}", timeout=seconds + 60
    ) as resp:
        return parse_profile(resp.read())


def cpu_breakdown(profile: CpuProfile) -> dict[str, float]:
    """CPU seconds per second of the profile, and each :data:`CATEGORIES` share of it."""
    out = {"cpu_s_per_s": round(profile.cpu_s / profile.duration_s, 4) if profile.duration_s
           else 0.0}
    for name, substrings in CATEGORIES.items():
        out[f"{name}_share"] = round(profile.share(substrings), 4)
    return out
