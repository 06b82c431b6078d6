"""Tests for promstat.wire: envelope decoding, label Structs, special values, decoder cache."""

from __future__ import annotations

import json
import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from promstat import wire
from promstat.wire import (
    NO_VALUE,
    BuildInfo,
    MatrixData,
    MetricMetadata,
    RulesData,
    ScalarData,
    StringData,
    VectorData,
    decoder_for,
    matrix_decoder,
    parse_value,
    query_decoder,
    vector_decoder,
)


class KernelLabels(msgspec.Struct, frozen=True, gc=False):
    """Labels a live-stat query needs; ``metric`` is renamed from ``container_metric_name``."""

    kernel_id: str
    metric: str = msgspec.field(name="container_metric_name")


VECTOR = (
    b'{"status":"success","data":{"resultType":"vector","result":['
    b'{"metric":{"kernel_id":"k1","container_metric_name":"cpu_util","agent_id":"a"},'
    b'"value":[1700000000.5,"12.5"]},'
    b'{"metric":{"kernel_id":"k2","container_metric_name":"mem"},"value":[1700000000.5,"NaN"]},'
    b'{"metric":{"kernel_id":"k3","container_metric_name":"mem"},"value":[1700000000.5,"+Inf"]},'
    b'{"metric":{"kernel_id":"k4","container_metric_name":"mem"},"value":[1700000000.5,"-Inf"]}'
    b']},"warnings":["partial response"],"infos":["PromQL info: metric might not be a counter"]}'
)


def test_parse_value_handles_special_values() -> None:
    """parse_value converts the special spellings Prometheus emits, including "+Inf"."""
    assert parse_value("1.5") == 1.5
    assert parse_value("1e+06") == 1_000_000.0
    assert math.isnan(parse_value("NaN"))
    assert parse_value("+Inf") == math.inf
    assert parse_value("-Inf") == -math.inf
    with pytest.raises(ValueError):
        parse_value("twelve")


def test_vector_with_dict_labels_keeps_all_labels_and_annotations() -> None:
    """A dict-labelled vector keeps every label, the value text, warnings and infos."""
    env = vector_decoder().decode(VECTOR)
    assert env.status == "success"
    assert isinstance(env.data, VectorData)
    first = env.data.result[0]
    assert first.metric == {"kernel_id": "k1", "container_metric_name": "cpu_util", "agent_id": "a"}
    assert first.value == (1700000000.5, "12.5")
    assert [s.value[1] for s in env.data.result] == ["12.5", "NaN", "+Inf", "-Inf"]
    assert env.warnings == ("partial response",)
    assert env.infos == ("PromQL info: metric might not be a counter",)


def test_vector_with_label_struct_renames_and_skips_labels() -> None:
    """A label Struct picks only its labels and honours msgspec.field(name=...)."""
    env = vector_decoder(KernelLabels).decode(VECTOR)
    assert env.data is not None
    labels = [s.metric for s in env.data.result]
    assert labels[0] == KernelLabels(kernel_id="k1", metric="cpu_util")
    values = [parse_value(s.value[1]) for s in env.data.result]
    assert values[0] == 12.5 and math.isnan(values[1])
    assert values[2:] == [math.inf, -math.inf]


def test_missing_required_label_is_a_validation_error() -> None:
    """A series without a label the Struct requires fails to decode (give it a default)."""
    body = (
        b'{"status":"success","data":{"resultType":"vector","result":'
        b'[{"metric":{"kernel_id":"k1"},"value":[1,"1"]}]}}'
    )
    with pytest.raises(msgspec.ValidationError, match="container_metric_name"):
        vector_decoder(KernelLabels).decode(body)


def test_vector_decoder_rejects_other_result_types() -> None:
    """The vector decoder checks the resultType tag instead of misreading a matrix."""
    body = b'{"status":"success","data":{"resultType":"matrix","result":[]}}'
    with pytest.raises(msgspec.ValidationError, match="resultType"):
        vector_decoder().decode(body)


def test_query_decoder_handles_every_result_type() -> None:
    """The union decoder dispatches on resultType to vector, matrix, scalar and string."""
    dec = query_decoder()
    vec = dec.decode(VECTOR).data
    assert isinstance(vec, VectorData)
    mat = dec.decode(
        b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"a":"b"},'
        b'"values":[[1,"1"],[2,"+Inf"]]}]}}'
    ).data
    assert isinstance(mat, MatrixData)
    assert mat.result[0].values == [(1.0, "1"), (2.0, "+Inf")]
    scalar = dec.decode(b'{"status":"success","data":{"resultType":"scalar","result":[5,"-Inf"]}}')
    assert isinstance(scalar.data, ScalarData) and scalar.data.result == (5.0, "-Inf")
    string = dec.decode(b'{"status":"success","data":{"resultType":"string","result":[5,"hi"]}}')
    assert isinstance(string.data, StringData) and string.data.result == (5.0, "hi")


def test_native_histogram_samples_are_tolerated() -> None:
    """A vector item with "histogram" instead of "value" decodes, with value NO_VALUE."""
    body = (
        b'{"status":"success","data":{"resultType":"vector","result":['
        b'{"metric":{"__name__":"h"},"histogram":[1700000000,{"count":"3","sum":"4.5",'
        b'"buckets":[[0,"0.5","1","2"],[0,"1","2","1"]]}]},'
        b'{"metric":{"__name__":"g"},"value":[1700000000,"1"]}]}}'
    )
    env = vector_decoder().decode(body)
    assert env.data is not None
    hist, gauge = env.data.result
    assert hist.value is NO_VALUE
    assert hist.histogram is not None
    assert hist.histogram[1].count == "3"
    assert hist.histogram[1].buckets[0] == (0, "0.5", "1", "2")
    assert gauge.histogram is None and gauge.value == (1700000000.0, "1")
    matrix = (
        b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},'
        b'"histograms":[[1,{"count":"1","sum":"1"}]]}]}}'
    )
    menv = matrix_decoder().decode(matrix)
    assert menv.data is not None
    assert menv.data.result[0].values == [] and len(menv.data.result[0].histograms) == 1


def test_error_envelope_decodes_without_data() -> None:
    """An error envelope decodes with data None and keeps errorType, error and warnings."""
    body = b'{"status":"error","errorType":"bad_data","error":"parse error","warnings":["w"]}'
    env = vector_decoder(KernelLabels).decode(body)
    assert env.data is None
    assert (env.status, env.error_type, env.error, env.warnings) == (
        "error",
        "bad_data",
        "parse error",
        ("w",),
    )


def test_metadata_rules_and_buildinfo_decode() -> None:
    """Metadata, rules and buildinfo payloads decode into their Structs with snake_case fields."""
    meta = decoder_for(dict[str, list[MetricMetadata]]).decode(
        b'{"status":"success","data":{"up":[{"type":"gauge","help":"Up.","unit":""}]}}'
    )
    assert meta.data == {"up": [MetricMetadata(type="gauge", help="Up.", unit="")]}
    rules = decoder_for(RulesData).decode(
        b'{"status":"success","data":{"groups":[{"name":"g","file":"/r.yml","interval":15,'
        b'"limit":0,"evaluationTime":0.001,"lastEvaluation":"2024-01-01T00:00:00Z","rules":['
        b'{"name":"r:x","query":"sum(x)","health":"ok","evaluationTime":0.0005,'
        b'"lastEvaluation":"2024-01-01T00:00:00Z","type":"recording"},'
        b'{"state":"inactive","name":"A","query":"x > 1","duration":60,"labels":{"s":"w"},'
        b'"annotations":{},"alerts":[],"health":"unknown","type":"alerting"}]}]}}'
    )
    assert rules.data is not None
    group = rules.data.groups[0]
    assert (group.name, group.interval, group.rules[0].type) == ("g", 15.0, "recording")
    assert group.rules[1].duration == 60.0 and group.rules[1].labels == {"s": "w"}
    info = decoder_for(BuildInfo).decode(
        b'{"status":"success","data":{"version":"2.42.0","revision":"r","branch":"b",'
        b'"buildUser":"u","buildDate":"d","goVersion":"go1.19"}}'
    )
    assert info.data == BuildInfo("2.42.0", "r", "b", "u", "d", "go1.19")


def test_decoders_are_cached_per_shape_and_label_type() -> None:
    """The same (shape, label type) returns the same Decoder object; others differ."""
    assert vector_decoder(KernelLabels) is vector_decoder(KernelLabels)
    assert vector_decoder() is vector_decoder(dict[str, str])
    assert query_decoder() is query_decoder(wire.Labels)
    assert id(vector_decoder(KernelLabels)) != id(vector_decoder())
    assert id(matrix_decoder(KernelLabels)) != id(vector_decoder(KernelLabels))
    assert decoder_for(list[str]) is decoder_for(list[str])


# ----------------------------------------------------------------------------- sliced decode


def _decode_by_parts(body: bytearray, slice_bytes: int) -> tuple[list[object], object] | None:
    parts = wire.vector_parts(body, slice_bytes)
    if parts is None:
        return None
    series: list[object] = []
    env = None
    for is_envelope, view in parts:
        if is_envelope:
            env = wire.vector_decoder().decode(view)
        else:
            series += wire.series_decoder().decode(view)
    assert env is not None
    return series + list(env.data.result), env  # type: ignore[union-attr]


# Label values that look like JSON structure, including the boundary text itself.
_NASTY = st.sampled_from(['},{"metric":', ',{"metric":{', '"]', "\\", "[", "]", ",", "é", "x"])


@given(
    st.lists(
        st.dictionaries(st.sampled_from(["metric", "kernel_id", "a"]),
                        st.lists(_NASTY, max_size=3).map("".join), max_size=3),
        min_size=0, max_size=60,
    ),
    st.integers(1, 400),
    st.lists(st.text(max_size=5), max_size=2),
)
def test_vector_parts_decode_to_the_same_answer(
    labels: list[dict[str, str]], slice_bytes: int, warnings: list[str]
) -> None:
    """Parts decode to exactly the whole answer, whatever the labels; the body is restored."""
    payload = {
        "status": "success",
        "data": {"resultType": "vector",
                 "result": [{"metric": m, "value": [1.5, str(i)]} for i, m in enumerate(labels)]},
        "warnings": warnings,
    }
    raw = json.dumps(payload, separators=(",", ":")).encode()
    body = bytearray(raw)
    whole = wire.vector_decoder().decode(raw)
    got = _decode_by_parts(body, slice_bytes)
    assert body == raw  # every patched byte is back
    if got is None:
        # Nothing to cut: small, or no series starts a whole part after the first one.
        first = raw.index(b'"result":[') + len(b'"result":[')
        assert len(raw) <= 2 * slice_bytes or raw.find(b',{"metric":', first + slice_bytes) < 0
        return
    series, env = got
    assert series == whole.data.result  # type: ignore[union-attr]
    assert env.warnings == whole.warnings  # type: ignore[attr-defined]


def test_vector_parts_skips_small_and_foreign_bodies() -> None:
    """Small bodies and bodies not laid out like Prometheus' JSON are decoded whole."""
    small = bytearray(b'{"status":"success","data":{"resultType":"vector","result":[]}}')
    assert wire.vector_parts(small, 1) is None
    spaced = bytearray(b'{ "status": "success", "data": { "result": [' + b" " * 100 + b"]}}")
    assert wire.vector_parts(spaced, 10) is None


def test_closing_the_parts_early_restores_the_body() -> None:
    """Abandoning the iteration (a part failed to decode) leaves the body as it was."""
    rows = ",".join(f'{{"metric":{{"a":"{i}"}},"value":[1,"1"]}}' for i in range(50))
    raw = f'{{"status":"success","data":{{"resultType":"vector","result":[{rows}]}}}}'.encode()
    body = bytearray(raw)
    parts = wire.vector_parts(body, 100)
    assert parts is not None
    _, first = next(parts)
    assert bytes(first).startswith(b"[") and bytes(first).endswith(b"]")
    assert body != raw
    parts.close()
    assert body == raw


def test_sample_values_behave_like_pairs_and_are_not_gc_tracked() -> None:
    """A vector sample indexes, unpacks, compares and encodes like ``(timestamp, text)``."""
    import gc

    body = b'{"status":"success","data":{"resultType":"vector","result":[' \
        b'{"metric":{"a":"1"},"value":[1700000000.5,"12.5"]}]}}'
    env = vector_decoder().decode(body)
    assert env.data is not None
    value = env.data.result[0].value
    assert value[0] == 1700000000.5 and value[1] == "12.5" and len(value) == 2
    ts, text = value
    assert (ts, text) == (1700000000.5, "12.5") and list(value) == [ts, text]
    assert value == (1700000000.5, "12.5") and value != (1700000000.5, "12")
    assert value == wire.SampleValue(1700000000.5, "12.5")
    assert hash(value) == hash((1700000000.5, "12.5"))
    assert msgspec.json.encode(value) == b'[1700000000.5,"12.5"]'
    assert not gc.is_tracked(value)  # why it is not a tuple: no collector work per sample
