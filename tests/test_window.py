"""WindowBuffer: ring order, hop, series_windows == push, eviction (LRU, tag, idle)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.window import BACKWARDS, NO_WINDOW, SKIPPED, WindowBuffer, series_windows


class Hook:
    """An eviction hook that records (key, cause) and the tag when the buffer passes one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.tags: list[int] = []

    def __call__(self, key: str, cause: str, *rest: Any) -> None:
        self.calls.append((key, cause))
        self.tags.extend(rest[:1])


def _add(buf: WindowBuffer, key: str, ts: float, value: float = 1.0, tag: int = 0,
         now: float = 0.0) -> int:
    """Push one point, without an offset (these tests never skip redeliveries)."""
    return buf.push(key, ts, np.array([value], np.float32), tag, -1, now)


def _count(buf: WindowBuffer, key: str) -> int:
    """Points the buffer has seen for ``key`` (0 if absent)."""
    exp = buf.export(key)
    return 0 if exp is None else exp[1]


def _window(buf: WindowBuffer, key: str) -> tuple[np.ndarray, float, float]:
    """The points ``key`` holds, oldest first, and their first and last timestamps (its
    current window once it holds ``window`` points)."""
    exp = buf.export(key)
    assert exp is not None
    return exp[3], float(exp[4][0]), float(exp[4][-1])


def _feed(
    buf: WindowBuffer, key: str, values: np.ndarray, start: int = 0
) -> list[tuple[int, np.ndarray, float, float]]:
    """Push point by point; return (index, window, start_ts, end_ts) of every due window."""
    out = []
    row = np.empty((buf.window, buf.n_features), np.float32)
    for i, v in enumerate(values, start=start):
        slot = buf.push(key, float(i), np.atleast_1d(v), 0, i, 0.0)
        if slot >= 0:
            t0, t1 = buf.copy_window(slot, row)
            out.append((i, row.copy(), t0, t1))
    return out


def test_windows_come_out_in_time_order_across_the_ring_wrap() -> None:
    buf = WindowBuffer(window=4)
    due = _feed(buf, "a", np.arange(10, dtype=np.float32))
    assert [i for i, *_ in due] == [3, 4, 5, 6, 7, 8, 9]
    for i, w, t0, t1 in due:
        np.testing.assert_array_equal(w[:, 0], np.arange(i - 3, i + 1))
        assert (t0, t1) == (i - 3, i)


def test_multivariate_points_keep_their_features() -> None:
    buf = WindowBuffer(window=3, n_features=2)
    pts = np.arange(12, dtype=np.float32).reshape(6, 2)
    due = _feed(buf, "a", pts)
    np.testing.assert_array_equal(due[-1][1], pts[3:6])


@pytest.mark.parametrize("hop", [1, 2, 3, 5])
def test_hop_makes_a_window_due_every_hop_points_once_full(hop: int) -> None:
    buf = WindowBuffer(window=4, hop=hop)
    due = _feed(buf, "a", np.arange(20, dtype=np.float32))
    assert [i for i, *_ in due] == list(range(3, 20, hop))


def test_keys_are_independent() -> None:
    buf = WindowBuffer(window=3)
    assert _add(buf, "a", 0, 1.0) == NO_WINDOW
    assert _add(buf, "b", 0, 10.0) == NO_WINDOW
    assert _add(buf, "a", 1, 2.0) == NO_WINDOW
    assert _add(buf, "a", 2, 3.0) >= 0
    assert _count(buf, "a") == 3 and _count(buf, "b") == 1 and _count(buf, "zz") == 0
    assert buf.last_ts("a") == 2.0 and buf.last_ts("zz") is None


@settings(max_examples=40, deadline=None)
@given(window=st.integers(1, 6), hop=st.integers(1, 4), n=st.integers(0, 40))
def test_series_windows_equal_pushing_point_by_point(window: int, hop: int, n: int) -> None:
    """The offline path's windows are the ones the service's buffer makes due for the same
    series: the same points, in order, with the same float32 values."""
    values = np.random.default_rng(n).normal(size=(n, 2))
    expected = _feed(WindowBuffer(window, 2, hop=hop), "k", values)
    windows, end = series_windows(values, window, hop)
    assert windows.shape == (len(end), window, 2) and windows.dtype == np.float32
    assert end.tolist() == [e[0] for e in expected]
    for w, (_, w_ref, _, _) in zip(windows, expected):
        np.testing.assert_array_equal(w, w_ref)


def test_lru_eviction_at_max_series_calls_the_hook() -> None:
    hook = Hook()
    evicted = hook.calls
    buf = WindowBuffer(window=2, max_series=2, on_evict=hook)
    _add(buf, "a", 0, 1.0)
    _add(buf, "b", 0, 1.0)
    _add(buf, "a", 1, 2.0)  # "a" is now the most recently seen
    _add(buf, "c", 0, 1.0)
    assert evicted == [("b", "max_series")]
    assert "a" in buf and "c" in buf and "b" not in buf and len(buf) == 2
    # "a" kept its points; a re-admitted "b" starts from nothing
    assert _count(buf, "a") == 2
    _add(buf, "b", 1, 1.0)
    assert evicted[-1] == ("a", "max_series")
    assert _count(buf, "b") == 1


def test_buffer_grows_past_its_initial_capacity() -> None:
    buf = WindowBuffer(window=2, initial_capacity=2)
    for k in range(10):
        _add(buf, f"k{k}", 0, float(k))
        _add(buf, f"k{k}", 1, float(k) + 0.5)
    assert len(buf) == 10
    for k in range(10):
        np.testing.assert_array_equal(_window(buf, f"k{k}")[0][:, 0], [k, k + 0.5])


def test_drop_tag_forgets_the_keys_of_one_partition() -> None:
    hook = Hook()
    evicted = hook.calls
    buf = WindowBuffer(window=2, on_evict=hook)
    _add(buf, "a", 0, 1.0, tag=0)
    _add(buf, "b", 0, 1.0, tag=1)
    _add(buf, "c", 0, 1.0, tag=1)
    _add(buf, "a", 1, 1.0, tag=1)  # the tag follows the latest point
    assert buf.drop_tag(0) == 0
    assert buf.drop_tag(1) == 3
    assert len(buf) == 0
    assert sorted(evicted) == [("a", "revoked"), ("b", "revoked"), ("c", "revoked")]
    assert all(t == 1 for t in hook.tags)  # the hook learns the tag the key was held under


def test_evict_idle_uses_the_injected_clock() -> None:
    hook = Hook()
    evicted = hook.calls
    buf = WindowBuffer(window=2, on_evict=hook)
    _add(buf, "old", 0, 1.0, now=100.0)
    _add(buf, "new", 0, 1.0, now=150.0)
    assert buf.evict_idle(60.0, now=155.0) == 0
    assert buf.evict_idle(60.0, now=161.0) == 1
    assert evicted == [("old", "idle")]
    assert "new" in buf and len(buf) == 1


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        WindowBuffer(window=0)
    with pytest.raises(ValueError):
        WindowBuffer(window=4, hop=0)


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.sampled_from([60.0, 60.0, 60.0, 0.0, 0.001, 59.5, 3600.0, 0.25]),
                  min_size=1, max_size=40),
    window=st.integers(1, 6),
)
def test_window_timestamps_are_exact_for_regular_and_irregular_series(
        gaps: list[float], window: int) -> None:
    """A key on a steady rhythm keeps no per-point timestamps; one that leaves it gets them.
    Either way every window reports its first and last points' timestamps exactly, through
    the live path and export/restore (exactly on a rhythm; off it, within the
    float32 resolution of an offset from the key's last point: 2**-23 of the span)."""
    ts = 1_767_225_600.0 + np.concatenate([[0.0], np.cumsum(gaps)])
    ts = np.round(ts * 1000) / 1000  # millisecond timestamps, as ISO strings carry them
    tol = 0.0 if len(set(gaps)) == 1 else 2e-7 * (ts[-1] - ts[0]) + 1e-6

    def same(a: Any, b: Any) -> None:
        np.testing.assert_allclose(a, b, rtol=0, atol=tol)

    buf = WindowBuffer(window=window)
    row = np.empty((window, 1), np.float32)
    for i, t in enumerate(ts):
        slot = buf.push("k", float(t), np.array([float(i)], np.float32), 0, i, 0.0)
        if slot >= 0:
            start, end = buf.copy_window(slot, row)
            same(start, ts[i - window + 1])
            assert end == t
            np.testing.assert_array_equal(row[:, 0], np.arange(i - window + 1, i + 1))
    exp = buf.export("k")
    assert exp is not None
    same(exp[4], ts[-min(len(ts), window):])
    again = WindowBuffer(window=window)
    again.restore("k", *exp)
    same(again.export("k")[4], exp[4])


def test_only_keys_off_their_rhythm_hold_timestamp_rows() -> None:
    buf = WindowBuffer(window=8)
    for i in range(20):
        buf.push("steady", 1000.0 + 60 * i, np.ones(1, np.float32), 0, i, 0.0)
        buf.push("jitter", 1000.0 + 60 * i + (i % 3) * 0.5, np.ones(1, np.float32), 0, i, 0.0)
    steady, jitter = buf._slots["steady"], buf._slots["jitter"]
    assert buf._ts_row[steady] == -1 and buf._ts_row[jitter] >= 0
    buf.drop(["jitter"])
    assert buf._ts_free, "an evicted key gives its timestamp row back"


def test_lru_eviction_stays_exact_over_many_keys() -> None:
    hook = Hook()
    buf = WindowBuffer(window=2, max_series=1000, on_evict=hook)
    for k in range(1000):
        _add(buf, f"k{k}", 0, 1.0)
    for k in range(0, 1000, 2):  # the even keys are seen again
        _add(buf, f"k{k}", 1, 1.0)
    for k in range(1000, 1600):
        _add(buf, f"k{k}", 0, 1.0)
    # 600 evictions: the 500 odd keys first (oldest first), then the even ones in order
    expected = [f"k{k}" for k in range(1, 1000, 2)] + [f"k{k}" for k in range(0, 200, 2)]
    assert [k for k, _ in hook.calls] == expected


def _state(buf: WindowBuffer) -> dict[str, Any]:
    """Everything a buffer holds, for comparing two buffers."""
    n = buf._values.shape[0]
    return {
        "slots": dict(buf._slots), "key_of": list(buf._key_of), "clock": buf._clock,
        "values": buf._values.copy(), "ts": buf._ts.copy(), "base": list(buf._base),
        "backwards": buf.backwards,
        **{name: list(getattr(buf, name))[:n] for name in (
            "_last_ts", "_prev_ts", "_step_us", "_ts_row", "_count", "_seen", "_touch", "_tag",
            "_offset", "_dirty")},
    }


def _rounds(points: list[tuple[str, float, float, int, int]]) -> list[list[Any]]:
    """Split a stream into runs in which no key repeats (what the service's loop does)."""
    out: list[list[Any]] = [[]]
    for p in points:
        if any(q[0] == p[0] for q in out[-1]):
            out.append([])
        out[-1].append(p)
    return out


@settings(max_examples=60, deadline=None)
@given(
    window=st.sampled_from([1, 3, 8]), hop=st.sampled_from([1, 2, 3]),
    max_series=st.sampled_from([None, 4]), skip_applied=st.booleans(),
    refuse_backwards=st.booleans(),
    points=st.lists(st.tuples(
        st.integers(0, 6),  # key
        st.sampled_from([60.0, 60.0, 60.0, 30.0, 0.0, -60.0, -3600.0, 0.37, 1e9]),  # step
        st.floats(-1e3, 1e3, allow_nan=False, width=32),  # value
        st.integers(0, 3),  # partition
        st.sampled_from([1, 1, 1, 0, -2]),  # offset step (redeliveries)
    ), min_size=1, max_size=120),
)
def test_push_round_equals_pushing_point_by_point(
    window: int, hop: int, max_series: int | None, skip_applied: bool, refuse_backwards: bool,
    points: list[tuple[int, float, float, int, int]],
) -> None:
    """The service's vectorised path leaves the same state, returns the same codes and
    the same windows as pushing each point on its own, whatever the stream: new keys,
    evictions, steps that break a rhythm, backwards and far-future timestamps (accepted or
    refused), redelivered offsets."""
    one = WindowBuffer(window, 1, hop, max_series, initial_capacity=2,
                       refuse_backwards=refuse_backwards)
    many = WindowBuffer(window, 1, hop, max_series, initial_capacity=2,
                        refuse_backwards=refuse_backwards)
    many._t0 = one._t0  # the same clock origin ("last seen" is kept relative to it)
    last: dict[int, float] = {}
    offset: dict[int, int] = {}
    stream = []
    for k, step, v, part, off_step in points:
        ts = last.get(k, 1_767_225_600.0) + step
        last[k] = ts
        offset[part] = offset.get(part, 0) + off_step
        stream.append((f"k{k}", ts, v, part, offset[part]))
    now = 5.0
    for rnd in _rounds(stream):
        expect = []
        for key, ts, v, part, off in rnd:
            expect.append(one.push(key, ts, v, part, off, now, skip_applied=skip_applied))
        codes = many.push_round(
            [p[0] for p in rnd], np.array([p[1] for p in rnd]),
            np.array([p[2] for p in rnd]).reshape(-1, 1), np.array([p[3] for p in rnd]),
            np.array([p[4] for p in rnd]), now, skip_applied=skip_applied)
        if codes is None:  # evictions: the service pushes such a round point by point
            codes = np.array([many.push(*p, now, skip_applied=skip_applied) for p in rnd])
        assert codes.tolist() == expect
        due = np.flatnonzero(codes >= 0)
        if due.size:
            windows, start, end = many.windows_of(codes[due])
            for j, i in enumerate(due):
                ref = np.empty((window, 1), np.float32)
                s, e = one.copy_window(int(codes[i]), ref)
                assert np.array_equal(windows[j], ref)
                assert (start[j], end[j]) == (s, e)
        a, b = _state(one), _state(many)
        for name in a:
            assert np.array_equal(a[name], b[name]) if isinstance(a[name], np.ndarray) \
                else a[name] == b[name], name


# -- timestamps that go back ------------------------------------------------------------


def _push(buf: WindowBuffer, ts: list[float], start_offset: int = 0, key: str = "k",
          skip_applied: bool = False) -> list[int]:
    return [buf.push(key, t, np.array([float(i)], np.float32), 0, start_offset + i, 0.0,
                     skip_applied=skip_applied) for i, t in enumerate(ts)]


# a regular key steps back an hour (a daylight-saving change) and goes on from there
DST = [0.0, 300.0, 600.0, 900.0, 900.0 - 3600.0, 1200.0 - 3600.0, 1500.0 - 3600.0]


def test_a_step_back_is_used_in_arrival_order_and_counted_by_default() -> None:
    buf = WindowBuffer(window=3)
    codes = _push(buf, DST)
    assert BACKWARDS not in codes and buf.backwards == 1
    assert codes[2:] == [buf._slots["k"]] * 5  # every point completes a window
    values, start, end = _window(buf, "k")
    np.testing.assert_array_equal(values[:, 0], [4, 5, 6])
    assert (start, end) == (DST[4], DST[6])
    # the window across the step: in arrival order, its start after its end
    buf2 = WindowBuffer(window=3)
    _push(buf2, DST[:5])
    row = np.empty((3, 1), np.float32)
    assert buf2.copy_window(buf2._slots["k"], row) == (DST[2], DST[4])
    assert DST[2] > DST[4]
    exp = buf2.export("k")
    assert exp is not None
    np.testing.assert_array_equal(exp[4], DST[2:5])


def test_a_key_that_only_goes_back_keeps_its_timestamps() -> None:
    """A steady rhythm may be negative (a file sorted newest first): the key keeps no
    timestamp row and every window, export and restore still has the exact times."""
    ts = [1e9 - 60.0 * i for i in range(6)]
    buf = WindowBuffer(window=4)
    codes = _push(buf, ts)
    assert buf.backwards == 5 and buf._ts_row[buf._slots["k"]] == -1
    wins, start, end = buf.windows_of(np.array([codes[-1]]))
    assert (start[0], end[0]) == (ts[2], ts[5])
    exp = buf.export("k")
    assert exp is not None
    np.testing.assert_array_equal(exp[4], ts[2:])
    again = WindowBuffer(window=4)
    again.restore("k", *exp)
    np.testing.assert_array_equal(again.export("k")[4], ts[2:])
    assert again.push("k", ts[-1] - 60.0, np.ones(1, np.float32), 0, 6, 0.0) >= 0
    assert again.backwards == 1


def test_refused_step_back_costs_one_point_not_the_hour_after_it() -> None:
    buf = WindowBuffer(window=3, refuse_backwards=True)
    codes = _push(buf, DST)
    assert codes[4] == BACKWARDS and buf.backwards == 1
    # the points after it go forward from it: used, though before the last used one
    assert codes[5] >= 0 and codes[6] >= 0
    values, start, end = _window(buf, "k")
    np.testing.assert_array_equal(values[:, 0], [3, 5, 6])
    assert (start, end) == (DST[3], DST[6])


def test_a_far_future_point_does_not_blind_its_key() -> None:
    future = 4e9  # the year 2096
    ts = [1e9 + 60.0 * i for i in range(10)]
    stream = ts[:5] + [future] + ts[5:]
    for refuse in (False, True):
        buf = WindowBuffer(window=3, refuse_backwards=refuse)
        codes = _push(buf, stream)
        assert buf.backwards == 1
        # refused: the one point after the far-future one (judged against it), no more
        assert codes.count(BACKWARDS) == (1 if refuse else 0)
        assert all(c >= 0 for c in codes[7:]), codes
        # windows after it report exact times again; the ones around it finite ones
        values, start, end = _window(buf, "k")
        assert (start, end) == (ts[7], ts[9])
    buf = WindowBuffer(window=3)
    row = np.empty((3, 1), np.float32)
    for i, t in enumerate(stream):
        code = buf.push("k", t, np.array([float(i)], np.float32), 0, i, 0.0)
        if code >= 0:
            start, end = buf.copy_window(code, row)
            assert np.isfinite(start) and end == t
            # the points before and after it keep their times to the millisecond
            held = buf.export("k")[4]
            normal = held[held < 3e9]
            expected = [x for x in stream[max(0, i - 2): i + 1] if x < 3e9]
            np.testing.assert_allclose(normal, expected, rtol=0, atol=1e-3)


def test_redelivery_is_told_by_offset_not_by_timestamp() -> None:
    for refuse in (False, True):
        buf = WindowBuffer(window=2, refuse_backwards=refuse)
        _push(buf, [0.0, 60.0, 120.0], skip_applied=True)
        # the same offsets again (a redelivery): skipped, not counted as going back
        assert _push(buf, [0.0, 60.0, 120.0], skip_applied=True) == [SKIPPED] * 3
        assert buf.backwards == 0
        # a new offset with an earlier timestamp is new data, not a redelivery
        (code,) = _push(buf, [30.0], start_offset=3, skip_applied=True)
        assert code == (BACKWARDS if refuse else buf._slots["k"]) and buf.backwards == 1
        (code,) = _push(buf, [90.0], start_offset=4, skip_applied=True)
        assert code not in (SKIPPED, BACKWARDS, NO_WINDOW)
        assert buf.last_offset("k") == 4


# -- redeliveries are told by partition and offset ----------------------------------------


def test_a_key_moved_to_a_partition_with_smaller_offsets_is_not_skipped() -> None:
    """After input partitions are added a key can move to a partition whose offsets are
    smaller than the last one it had: its points there are new, not redeliveries."""
    moves: dict[str, list[tuple[str, int]]] = {"one": [], "many": []}
    one = WindowBuffer(window=3, on_move=lambda k, t: moves["one"].append((k, t)))
    many = WindowBuffer(window=3, on_move=lambda k, t: moves["many"].append((k, t)))
    for buf in (one, many):
        for i in range(5):  # partition 0, offsets 1000..1004
            buf.push("k", float(i), np.array([1.0], np.float32), 0, 1000 + i, 0.0,
                     skip_applied=True)
        # the same partition again: a redelivery
        assert buf.push("k", 4.0, np.array([1.0], np.float32), 0, 1004, 0.0,
                        skip_applied=True) == SKIPPED
    got = [one.push("k", 5.0 + i, np.array([2.0], np.float32), 3, 7 + i, 0.0,
                    skip_applied=True) for i in range(3)]
    assert SKIPPED not in got and got == [one._slots["k"]] * 3
    for i in range(3):  # the vectorised path (with a second key, so the round is real)
        codes = many.push_round(["k", f"o{i}"], np.array([5.0 + i, 5.0 + i]),
                                np.array([[2.0], [0.0]]), np.array([3, 1]),
                                np.array([7 + i, i]), 0.0, skip_applied=True)
        assert codes is not None and codes[0] == many._slots["k"], codes
    assert _count(one, "k") == _count(many, "k") == 8
    assert one.last_offset("k") == many.last_offset("k") == 9
    # each path says once that the key left partition 0 (its state there is stale)
    assert moves["one"] == moves["many"] == [("k", 0)]
    # and a redelivery in the new partition is still skipped
    assert one.push("k", 7.0, np.array([2.0], np.float32), 3, 9, 0.0,
                    skip_applied=True) == SKIPPED
