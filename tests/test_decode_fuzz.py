"""Property-based fuzzing of the message decoder: any bytes, any JSON shape, never a crash."""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_detector.errors import InvalidRecord
from stream_detector.metrics import INVALID_REASONS
from stream_detector.source import Decoder

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda c: st.one_of(
    st.lists(c, max_size=5), st.dictionaries(st.text(max_size=8), c, max_size=5)), max_leaves=20)
messages = st.fixed_dictionaries(
    {}, optional={"key": json_values, "ts": st.one_of(json_values, st.floats(), st.text()),
                  "value": st.one_of(json_values, st.floats()),
                  "values": st.one_of(json_values, st.lists(st.floats(), max_size=4)),
                  "features": json_values})

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


def test_non_finite_literals_are_reported_as_non_finite():
    dec = DECODERS[0]
    for raw in (b'{"key":"k","ts":1,"value":NaN}', b'{"key":"k","ts":1,"value":Infinity}',
                b'{"key":"k","ts":1,"value":1e400}',
                b'{"key":"k","ts":1,"value":3.4028235677973366e+38}',  # finite, not in float32
                b'{"key":"k","ts":1,"value":123456789012345678901234567890123456789012}'):
        try:
            dec.decode(raw, None, None)
        except InvalidRecord as exc:
            assert exc.reason == "non_finite", raw
        else:
            raise AssertionError(raw)
