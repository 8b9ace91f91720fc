"""Property-based fuzzing of the message decoder: any bytes, any JSON shape, never a crash;
and what it accepts never fails later (at a checkpoint, at publish)."""

from __future__ import annotations

import json
import math

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import lenient_messages, messages

from stream_detector.errors import InvalidRecord
from stream_detector.metrics import INVALID_REASONS
from stream_detector.records import iso
from stream_detector.source import TS_MAX, TS_MIN, Decoder

DECODERS = [
    Decoder(1, max_bytes=4096),
    Decoder(3, max_bytes=4096),
    Decoder(2, record_mode=True, feature_names=["a", "b"], max_bytes=4096),
]


def _check(value: bytes | None, key: bytes | None, ts: float | None) -> None:
    for dec in DECODERS:
        try:
            r = dec.decode(value, key, ts)
        except InvalidRecord as exc:
            assert exc.reason in INVALID_REASONS
            # the service's fast path refuses exactly what decode refuses, for the same reason
            try:
                dec.decode_point(value, key, ts)
                raise AssertionError(f"decode_point accepted what decode refused: {exc}")
            except InvalidRecord as fast_exc:
                assert fast_exc.reason == exc.reason
            continue
        fk, fts, fv = dec.decode_point(value, key, ts)
        assert (fk, fts) == (r.key, r.ts)
        np.testing.assert_array_equal(np.asarray(fv, np.float32).reshape(-1), r.values)
        assert isinstance(r.key, str) and r.key
        assert math.isfinite(r.ts)
        assert r.values.shape == (dec.n_features,) and r.values.dtype == np.float32
        assert np.isfinite(r.values).all()
        # what later stages do with an accepted reading: none of it may raise
        r.key.encode()  # Kafka key of events and of the changelog
        iso(r.ts)  # the event's ts / window_start / window_end
        orjson.dumps({"key": r.key, "ts": iso(r.ts)})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.one_of(st.none(), st.binary(max_size=20)),
       st.one_of(st.none(), st.floats()))
def test_arbitrary_bytes_never_escape_as_an_exception(value, key, ts):
    if ts is not None and not math.isfinite(ts):
        ts = None  # the Kafka client only hands out finite integer milliseconds
    _check(value, key, ts)


@settings(max_examples=600, deadline=None)
@given(messages, st.one_of(st.none(), st.text(max_size=10).map(str.encode)))
def test_arbitrary_json_shapes_are_decoded_or_rejected_with_a_reason(doc, key):
    _check(json.dumps(doc).encode(), key, 1_767_225_600.0)


@settings(max_examples=800, deadline=None)
@given(lenient_messages, st.one_of(st.none(), st.binary(max_size=8)),
       st.one_of(st.none(), st.integers(min_value=1, max_value=2**63 - 1).map(lambda ms: ms / 1000)))
def test_what_only_the_lenient_parser_reads_is_decoded_or_rejected_and_never_fails_later(
        raw, key, kafka_ts):
    _check(raw, key, kafka_ts)


@given(st.integers(min_value=4097, max_value=200_000))
@settings(max_examples=20, deadline=None)
def test_one_huge_message_is_rejected_by_size(size):
    big = b'{"key": "k", "value": 1.0, "pad": "' + b"x" * size + b'"}'
    for dec in DECODERS:
        try:
            dec.decode(big, None, None)
        except InvalidRecord as exc:
            assert exc.reason == "oversize"
        else:
            raise AssertionError("an oversize message was accepted")


def _short(raw: bytes | None) -> str:
    return "None" if raw is None else repr(raw[:24]) + (f"+{len(raw)}B" if len(raw) > 24 else "")


def _reason(raw: bytes | None, key: bytes | None = None, kafka_ts: float | None = None,
            dec: Decoder = DECODERS[0]) -> str | None:
    """The reason ``dec`` refuses ``raw`` for (checking the fast path agrees), None if not."""
    try:
        dec.decode(raw, key, kafka_ts)
    except InvalidRecord as exc:
        with pytest.raises(InvalidRecord) as fast:
            dec.decode_point(raw, key, kafka_ts)
        assert fast.value.reason == exc.reason
        assert exc.detail and len(exc.detail) < 300
        return exc.reason
    return None


def test_non_finite_literals_are_reported_as_non_finite():
    for raw in (b'{"key":"k","ts":1,"value":NaN}', b'{"key":"k","ts":1,"value":Infinity}',
                b'{"key":"k","ts":1,"value":-Infinity}', b'{"key":"k","ts":1,"values":[NaN]}'):
        assert _reason(raw) == "non_finite", raw


@pytest.mark.parametrize("raw", [
    b'{"key":"k","ts":1,"value":1e400}',  # json reads it as inf; still a number, too big
    b'{"key":"k","ts":1,"value":-1e400}',
    b'{"key":"k","ts":1,"value":1e39}',  # finite in float64, inf in float32
    b'{"key":"k","ts":1,"value":-1e39}',
    b'{"key":"k","ts":1,"value":3.4028235677973366e+38}',
    b'{"key":"k","ts":1,"value":123456789012345678901234567890123456789012}',
    b'{"key":"k","ts":1,"value":' + b"9" * 400 + b'}',  # an integer beyond float64
    b'{"key":"k","ts":1,"values":[1.0, 1e39, 2.0]}',
], ids=_short)
def test_numbers_beyond_float32_are_out_of_range(raw):
    dec = DECODERS[1] if b"values" in raw else DECODERS[0]
    assert _reason(raw, dec=dec) == "value_out_of_range"


def test_numbers_beyond_float32_in_record_features_are_out_of_range():
    dec = DECODERS[2]
    assert _reason(b'{"key":"k","ts":1,"features":{"a":1,"b":1e39}}', dec=dec) == \
        "value_out_of_range"
    assert _reason(b'{"key":"k","ts":1,"features":[1e400, 1]}', dec=dec) == "value_out_of_range"


def test_the_largest_float32_is_a_value():
    r = DECODERS[0].decode(b'{"key":"k","ts":1,"value":3.4028234663852886e+38}', None, None)
    assert np.isfinite(r.values).all()


@pytest.mark.parametrize("ts", [
    b"1e20", b"-1e20", b"1e400", b"-1e11", b"253402300800", b"-62135596801",
    b"9" * 400,  # an integer beyond float64
    b'"99999-01-01T00:00:00Z"', b'"9999-12-31T23:59:59-01:00"', b'"0001-01-01T00:00:00+01:00"',
    b'"1e300"', b'"-1e300"', b'"253402300800"', b'"NaN"', b'"\\ud800"', b'"' + b"9" * 1000 + b'"',
    b"NaN", b"Infinity", b"true", b"[1]", b"{}",
], ids=_short)
def test_timestamps_datetime_cannot_hold_are_bad(ts):
    assert _reason(b'{"key":"k","ts":' + ts + b',"value":1.0}') == "bad_timestamp"


@pytest.mark.parametrize("ts", [TS_MIN, TS_MAX, 0.0, -1.0, 1_767_225_600.5])
def test_timestamps_at_the_ends_of_datetime_are_accepted(ts):
    raw = orjson.dumps({"key": "k", "ts": ts, "value": 1.0})
    r = DECODERS[0].decode(raw, None, None)
    assert r.ts == ts
    iso(r.ts)
    assert DECODERS[0].decode_point(raw, None, None)[1] == ts
    iso_text = iso(ts).replace("Z", "+00:00")
    raw = orjson.dumps({"key": "k", "ts": iso_text, "value": 1.0})
    iso(DECODERS[0].decode(raw, None, None).ts)


@pytest.mark.parametrize("kafka_ts", [1e12, 9.2e15, 253402300800.0])
def test_a_message_timestamp_datetime_cannot_hold_is_bad(kafka_ts):
    # without a ts field the Kafka timestamp is used; a producer may set any int64 ms
    assert _reason(b'{"key":"k","value":1.0}', kafka_ts=kafka_ts) == "bad_timestamp"


@pytest.mark.parametrize("raw", [
    b'{"key":"\\ud800","ts":1,"value":1.0}',  # a lone high surrogate
    b'{"key":"a\\udc00b","ts":1,"value":1.0}',  # a lone low surrogate
    b'{"key":"\\udc00\\ud800","ts":1,"value":1.0}',  # a pair in the wrong order
    b'{"key":"\xed\xa0\x80","ts":1,"value":1.0}',  # an encoded surrogate (CESU-8)
    b'{"key":"k\\ud800","ts":1,"value":NaN}',  # the key is judged before the value
], ids=_short)
def test_keys_that_do_not_encode_to_utf8_are_bad(raw):
    assert _reason(raw) == "bad_key"


def test_message_keys_that_are_not_utf8_are_bad():
    assert _reason(b'{"ts":1,"value":1.0}', key=b"\xff\xfe") == "bad_key"
    assert _reason(b'{"ts":1,"value":1.0}', key=b"\xed\xa0\x80") == "bad_key"


def test_a_surrogate_pair_escape_is_a_valid_key():
    r = DECODERS[0].decode(b'{"key":"\\ud83d\\ude00","ts":1,"value":1.0}', None, None)
    assert r.key == "\U0001F600" and r.key.encode()


def test_overlong_keys_are_oversize():
    assert _reason(orjson.dumps({"key": "k" * 1025, "ts": 1, "value": 1.0})) == "oversize"
    assert _reason(b'{"ts":1,"value":1.0}', key=b"k" * 5000) == "oversize"
    assert _reason(orjson.dumps({"key": "k" * 1024, "ts": 1, "value": 1.0})) is None


@pytest.mark.parametrize("raw,reason", [
    (None, "not_json"),  # a null value (tombstone)
    (b"", "not_json"),
    (b"null", "not_object"),
    (b'{"key":"k","ts":1,"value":null}', "missing_value"),
    (b"[" * 100_000 + b"]" * 100_000, "not_json"),  # nesting beyond both parsers
    (b"[" * 900 + b"]" * 900, "not_object"),
    (b'{"a":' * 5000 + b"1" + b"}" * 5000, "not_json"),
    (b'{"key":"k","ts":1,"value":1.0,"x":' + b"[" * 900 + b"]" * 900 + b"}", None),
], ids=lambda x: x if isinstance(x, str) else _short(x))
def test_null_values_and_deep_nesting(raw, reason):
    dec = Decoder(1, max_bytes=1 << 20)
    assert _reason(raw, dec=dec) == reason


def test_utf16_json_is_read_and_its_key_is_checked():
    # Python's json reads UTF-16/32 (orjson does not): the same checks apply
    doc = '{"key":"k","ts":1,"value":1.0}'
    assert DECODERS[0].decode(doc.encode("utf-16"), None, None).key == "k"
    bad = '{"key":"\ud800","ts":1,"value":1.0}'.encode("utf-16", "surrogatepass")
    assert _reason(bad) in ("bad_key", "not_json")
