"""The changelog record of one key (``stream_detector.state.encode``/``decode``): version 2
keeps timestamps compact and to the microsecond (so event times are unchanged), version 1
records still decode, and a damaged record gives one clear error, never a crash."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.records import iso
from stream_detector.state import DamagedStateRecord, KeyState, decode, encode, micros

W = 64
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
INCIDENT = ("0123456789abcdef", T0 + 60.0, T0 + 600.0, 3.5, 4, 1)
DECISION = bytes(range(200))
YEAR_1, YEAR_9999 = -62_135_596_800, 253_402_300_799  # datetime's range (iso's)


def _values(n: int, f: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, f)).astype(np.float32)


def _state(ts: np.ndarray, count: int | None = None, f: int = 1, incident: bool = True,
           decision: bool = True, feedback: bytes | None = None) -> KeyState:
    ts = np.asarray(ts, np.float64)
    if count is None:  # held = min(count, window): a full window has seen more points
        count = len(ts) + 100 if len(ts) == W else len(ts)
    return KeyState(count, 12345, _values(len(ts), f),
                    ts, INCIDENT if incident else None, DECISION if decision else None,
                    feedback)


def _encode_v1(state: KeyState, window: int) -> bytes:
    """A record as the version-1 encoder wrote it (float64 timestamps)."""
    flags = (1 if state.incident is not None else 0) | (2 if state.decision else 0)
    parts = [struct.pack("<BBBHHqq", 0x5D, 1, flags, window, state.values.shape[1],
                         state.count, state.last_offset),
             np.ascontiguousarray(state.values, "<f4").tobytes(),
             np.ascontiguousarray(state.ts, "<f8").tobytes()]
    if state.incident is not None:
        iid, started, ended, peak, windows, normal_run = state.incident
        parts.append(struct.pack("<8sdddii", bytes.fromhex(iid), started, ended, peak,
                                 windows, normal_run))
    if state.decision:
        parts += [struct.pack("<I", len(state.decision)), state.decision]
    return b"".join(parts)


def _same(a: KeyState, b: KeyState) -> None:
    assert (a.count, a.last_offset, a.incident, a.decision, a.feedback) == (
        b.count, b.last_offset, b.incident, b.decision, b.feedback)
    assert a.values.dtype == np.float32 and a.ts.dtype == np.float64
    assert np.array_equal(a.values, b.values)
    assert a.values.shape == b.values.shape and a.ts.shape == b.ts.shape


def _times_kept(got: np.ndarray, want: np.ndarray) -> None:
    """To the microsecond as datetime reads it, so every event time string is the same."""
    assert np.array_equal(micros(got), micros(want))
    assert [iso(t) for t in got] == [iso(t) for t in want]


REGULAR = T0 + 60.0 * np.arange(W)
IRREGULAR = REGULAR + np.where(np.arange(W) >= 10, 7.0, 0.0)  # one late point
MILLIS = np.round(IRREGULAR + np.random.default_rng(1).uniform(0, 1, W), 3)
MICROS = np.round(T0 + np.cumsum(np.random.default_rng(2).uniform(0.5, 30, W)), 6)
# microseconds, irregular, over 190 days: no int32 unit holds them, float64 (flagged)
LONG_SPAN = np.round(T0 + 86_400.0 * 3 * np.arange(W)
                     + np.random.default_rng(3).uniform(0, 1, W), 6)
CASES = {"regular": REGULAR, "irregular": IRREGULAR, "millis": MILLIS, "micros": MICROS,
         "long_span": LONG_SPAN}


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_keeps_every_event_time(name: str) -> None:
    st_ = _state(CASES[name])
    raw = encode(st_, W)
    back = decode(raw, W, 1)
    assert back is not None
    _same(back, st_)
    _times_kept(back.ts, st_.ts)
    assert encode(_state(CASES[name]), W) == raw, "deterministic"


def _feedback_state() -> bytes:
    """A key's feedback state as the detector exports it: one incident marked false."""
    from stream_detector.feedback import Feedback, FeedbackBook

    book = FeedbackBook()
    book.note({"type": "opened", "key": "k", "incident_id": INCIDENT[0], "score": 3.5,
               "threshold": 2.0, "window_end": iso(T0 + 60.0)})
    book.apply(Feedback(INCIDENT[0], "k", "false_positive"))
    raw = book.export("k")
    assert raw is not None
    return raw


FEEDBACK = _feedback_state()


@pytest.mark.parametrize("others", [True, False])
def test_feedback_state_round_trips_and_records_without_it_still_decode(others: bool) -> None:
    from stream_detector.feedback import FeedbackBook

    st_ = _state(IRREGULAR, incident=others, decision=others, feedback=FEEDBACK)
    raw = encode(st_, W)
    back = decode(raw, W, 1)
    assert back is not None and back.feedback == FEEDBACK
    _same(back, st_)
    without = encode(_state(IRREGULAR, incident=others, decision=others), W)
    assert len(raw) == len(without) + 4 + len(FEEDBACK)
    old = decode(without, W, 1)  # a record written before feedback existed
    assert old is not None and old.feedback is None
    # and what it carries mutes again once restored
    book = FeedbackBook()
    book.restore("k", back.feedback)
    assert book.level("k", T0 + 60.0) == pytest.approx(3.5 * 1.5)


def test_size_at_window_64_one_feature_with_incident_and_decision_state() -> None:
    sizes = {name: len(encode(_state(ts), W)) for name, ts in CASES.items()}
    v1 = len(_encode_v1(_state(REGULAR), W))
    assert v1 == 1035  # 23 header + 256 values + 512 timestamps + 40 incident + 204
    assert sizes["regular"] == v1 - 512 + 16  # the newest and the step
    for name in ("irregular", "millis", "micros"):
        assert sizes[name] == v1 - 512 + 8 + 4 * (W - 1), name  # int32 offsets
    assert max(sizes[n] for n in ("regular", "irregular", "millis", "micros")) <= 1024
    assert sizes["long_span"] == v1, "microseconds over 190 days: float64, flagged"


def test_partial_and_empty_windows() -> None:
    for held in (0, 1, 2, 5):
        st_ = _state(T0 + 60.0 * np.arange(held), count=held, incident=False,
                     decision=False)
        back = decode(encode(st_, W), W, 1)
        assert back is not None and back.values.shape == (held, 1)
        _same(back, st_)
        _times_kept(back.ts, st_.ts)
    st_ = _state(IRREGULAR[:20], f=3)
    back = decode(encode(st_, W), W, 3)
    assert back is not None and back.values.shape == (20, 3)
    assert decode(encode(st_, W), W, 1) is None  # another model's feature count


def test_timestamps_that_cannot_be_compact_stay_exact() -> None:
    for ts in (np.array([T0, np.nan, T0 + 60.0]), np.array([T0, np.inf, T0 + 1.0]),
               np.array([1e13, 1e13 + 1]), np.array([T0, T0 + 2.0**31 + 0.5])):
        back = decode(encode(_state(ts), W), W, 1)
        assert back is not None
        assert np.array_equal(back.ts, ts, equal_nan=True)


def test_timestamps_that_go_back_are_kept() -> None:
    ts = REGULAR.copy()
    ts[30] -= 3600.0  # a daylight-saving step back, accepted in arrival order
    ts[-1] = ts[-2] - 0.5  # the newest is before the one before it
    back = decode(encode(_state(ts), W), W, 1)
    assert back is not None
    _times_kept(back.ts, ts)


@settings(max_examples=300, deadline=None)
@given(start=st.integers(YEAR_1 + 10**9, YEAR_9999 - 10**9),
       unit=st.sampled_from([1, 1000, 1_000_000, 0]),
       gaps=st.lists(st.integers(-3600, 10**7), min_size=0, max_size=W - 1),
       frac=st.floats(0, 1))
def test_any_cadence_far_past_or_future_keeps_event_times(start: int, unit: int,
                                                         gaps: list[int], frac: float) -> None:
    """Whole seconds, milliseconds, microseconds or any float; cadences from regular to
    wild (steps back included), from year 1 to year 9999."""
    if unit:  # timestamps on a grid of 1/unit s, as a parser gives them
        ticks = start * unit + np.cumsum([0, *gaps]) * (unit // 10 or 1)
        ts = ticks / unit
    else:
        ts = start + frac + np.cumsum([0.0, *gaps]) / 7.0
    raw = encode(_state(ts), W)
    back = decode(raw, W, 1)
    assert back is not None
    _times_kept(back.ts, ts)


@pytest.mark.parametrize("name", sorted(CASES))
def test_version_1_records_still_decode(name: str) -> None:
    st_ = _state(CASES[name])
    back = decode(_encode_v1(st_, W), W, 1)
    assert back is not None
    _same(back, st_)
    assert np.array_equal(back.ts, st_.ts), "version 1: float64, exact"
    bare = _state(CASES[name][:7], count=7, incident=False, decision=False)
    back = decode(_encode_v1(bare, W), W, 1)
    assert back is not None
    _same(back, bare)


def _valid_records() -> list[bytes]:
    out = []
    for ts in CASES.values():
        out += [encode(_state(ts), W), _encode_v1(_state(ts), W)]
    out.append(encode(_state(REGULAR[:1], count=1, incident=False), W))
    out.append(encode(_state(IRREGULAR, feedback=FEEDBACK), W))
    out.append(encode(_state(REGULAR[:3], count=3, incident=False, decision=False,
                             feedback=FEEDBACK), W))
    return out


def test_every_cut_of_a_valid_record_is_damaged() -> None:
    for raw in _valid_records():
        assert decode(raw, W, 1) is not None
        assert decode(raw[:0], W, 1) is None  # empty: not this layout
        for cut in range(1, len(raw)):
            with pytest.raises(DamagedStateRecord):
                decode(raw[:cut], W, 1)
        with pytest.raises(DamagedStateRecord):
            decode(raw + b"\0", W, 1)


def test_records_of_another_layout_are_none() -> None:
    raw = encode(_state(REGULAR), W)
    assert decode(b"\0" * 64, W, 1) is None
    assert decode(b"{\"json\": 1}", W, 1) is None
    assert decode(raw, W + 1, 1) is None  # another model's window
    assert decode(raw[:1] + b"\x03" + raw[2:], W, 1) is None  # a later version
    assert decode(raw[:1] + b"\x03", W, 1) is None  # cut, but not ours to judge


@pytest.mark.parametrize("flags", [0x40, 0x80, 0x0C, 0x14, 0x28])
def test_impossible_flags_are_damaged(flags: int) -> None:
    raw = bytearray(encode(_state(REGULAR), W))
    raw[2] = flags | (raw[2] & 0x03)
    with pytest.raises(DamagedStateRecord):
        decode(bytes(raw), W, 1)


def test_damaged_is_a_value_error_with_a_reason() -> None:
    raw = encode(_state(REGULAR), W)
    with pytest.raises(ValueError, match="cut in its values"):
        decode(raw[:30], W, 1)
    with pytest.raises(ValueError, match="shorter|cut in its header"):
        decode(raw[:10], W, 1)


HEADER = struct.Struct("<BBBHHqq")


@settings(max_examples=500, deadline=None)
@given(version=st.sampled_from([1, 2]), flags=st.integers(0, 255),
       count=st.integers(-(2**63), 2**63 - 1), body=st.binary(max_size=1200))
def test_garbage_after_a_valid_header_never_raises_anything_else(
        version: int, flags: int, count: int, body: bytes) -> None:
    raw = HEADER.pack(0x5D, version, flags, W, 1, count, 7) + body
    try:
        got = decode(raw, W, 1)
    except DamagedStateRecord:
        return
    assert got is not None and got.values.shape == (min(count, W), 1)
    assert got.ts.shape == (min(count, W),)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=600))
def test_any_bytes_never_raise_anything_else(body: bytes) -> None:
    for raw in (body, b"\x5d" + body):
        try:
            decode(raw, W, 1)
        except DamagedStateRecord:
            pass
