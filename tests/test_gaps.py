"""Gaps in a key's timestamps: detected from its cadence, filled or restarting its window,
the same in the service's WindowBuffer and the offline path (score, train)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.gaps import RESTART, GapPolicy, gap_windows
from stream_detector.window import WindowBuffer, series_windows


def _push_all(buf: WindowBuffer, ts: np.ndarray, values: np.ndarray
              ) -> list[tuple[int, np.ndarray, float, float]]:
    """Push one key's points one by one: (row, window, start_ts, end_ts) of each due window."""
    out = []
    row = np.empty((buf.window, buf.n_features), np.float32)
    for i, (t, v) in enumerate(zip(ts.tolist(), values)):
        slot = buf.push("k", t, v, 0, i, 0.0)
        if slot >= 0:
            start, end = buf.copy_window(slot, row)
            out.append((i, row.copy(), start, end))
    return out


def _series(n: int, gaps: dict[int, int], step: float = 60.0, t0: float = 1.7e9
            ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points ``step`` apart, where ``gaps[i]`` points are missing before point i."""
    skip = np.zeros(n, dtype=np.int64)
    for i, k in gaps.items():
        skip[i] = k
    ts = t0 + step * (np.arange(n) + np.cumsum(skip))
    values = np.arange(n, dtype=np.float32).reshape(n, 1) * 2.0
    return ts, values


def test_the_cadence_decides_what_a_gap_is() -> None:
    g = GapPolicy("linear", max_fill=10)
    # 4 points held a minute apart: a 2-minute step is one missing point
    assert g.action(120.0, 180.0, 4, 8) == 1
    assert g.action(89.0, 180.0, 4, 8) == 0  # within 1.5 cadences: jitter, not a gap
    assert g.action(60.0 * 12, 180.0, 4, 8) == RESTART  # 11 missing > max_fill 10
    assert GapPolicy("restart").action(120.0, 180.0, 4, 8) == RESTART
    assert g.action(600.0, 60.0, 2, 8) == 0  # too few points held to know the cadence
    assert g.action(600.0, 0.0, 4, 8) == 0  # all at one time: no cadence
    assert g.action(-60.0, 180.0, 4, 8) == 0  # a step back is not a gap


@pytest.mark.parametrize("policy", ["previous", "linear"])
def test_a_filled_gap_keeps_the_window_on_its_rhythm(policy: str) -> None:
    ts, values = _series(8, {3: 2})  # two points missing before the 4th (value 6)
    buf = WindowBuffer(window=4, gaps=GapPolicy(policy))
    got = _push_all(buf, ts, values)
    assert (buf.gaps_filled, buf.points_filled, buf.gaps_restarted) == (0, 0, 0), \
        "3 points held: the cadence is not known yet at the gap"
    ts, values = _series(10, {5: 2})  # the gap after 5 points (values 0, 2, 4, 6, 8 | 10)
    buf = WindowBuffer(window=4, gaps=GapPolicy(policy))
    got = _push_all(buf, ts, values)
    assert (buf.gaps_filled, buf.points_filled, buf.gaps_restarted) == (1, 2, 0)
    # one window per real point once 4 are held, none at a filled point
    assert [i for i, *_ in got] == [3, 4, 5, 6, 7, 8, 9]
    i, window, start, end = got[2]  # the one ending at the point after the gap
    # previous: the last value repeated; linear: a straight line to the point after the gap
    fill = [8.0, 8.0] if policy == "previous" else [8.0 + 2 / 3, 8.0 + 4 / 3]
    assert window[:, 0] == pytest.approx([8.0, *fill, 10.0])
    assert end == ts[5] and start == ts[4], "filled at the key's cadence, the span kept"
    # the key stays on its rhythm: the next windows span 3 cadences too
    for _, _, s, e in got[3:]:
        assert e - s == 180.0


def test_restart_leaves_no_window_spanning_the_gap() -> None:
    ts, values = _series(20, {8: 5})
    buf = WindowBuffer(window=4, gaps=GapPolicy("restart"))
    got = _push_all(buf, ts, values)
    assert (buf.gaps_filled, buf.gaps_restarted) == (0, 1)
    ends = [i for i, *_ in got]
    assert ends == [3, 4, 5, 6, 7] + list(range(11, 20)), "4 new points before a window"
    for *_, s, e in got:
        assert not s < ts[8] <= e, "no window spans the gap"


def test_a_gap_longer_than_max_fill_restarts() -> None:
    ts, values = _series(20, {8: 5})
    buf = WindowBuffer(window=4, gaps=GapPolicy("linear", max_fill=4))
    _push_all(buf, ts, values)
    assert (buf.gaps_filled, buf.gaps_restarted) == (0, 1)
    buf = WindowBuffer(window=4, gaps=GapPolicy("linear", max_fill=5))
    _push_all(buf, ts, values)
    assert (buf.gaps_filled, buf.points_filled, buf.gaps_restarted) == (1, 5, 0)


def test_off_windows_the_points_as_if_adjacent() -> None:
    ts, values = _series(20, {8: 5})
    buf = WindowBuffer(window=4, gaps=GapPolicy("off"))
    got = _push_all(buf, ts, values)
    assert [i for i, *_ in got] == list(range(3, 20))
    assert (buf.gaps_filled, buf.gaps_restarted) == (0, 0)


def test_with_hop_a_window_is_scored_only_at_a_real_point() -> None:
    """hop 3: the filled points cross a hop boundary; the window comes at the real point
    after the gap, ending there."""
    ts, values = _series(12, {6: 2})
    buf = WindowBuffer(window=4, hop=3, gaps=GapPolicy("previous"))
    got = _push_all(buf, ts, values)
    # windows due at counts 4, 7, 10, 13; row 6 comes after 2 filled points (count 6 -> 9,
    # crossing 7): its window is due at it, ending at it
    assert [i for i, *_ in got] == [3, 6, 7, 10]
    assert all(e in ts for *_, e in got)


def test_a_restored_key_decides_the_next_gap_as_before() -> None:
    ts, values = _series(30, {10: 2, 20: 3})
    gaps = GapPolicy("linear")
    whole = WindowBuffer(window=6, gaps=gaps)
    want = _push_all(whole, ts, values)
    first = WindowBuffer(window=6, gaps=gaps)
    got = _push_all(first, ts[:15], values[:15])
    exp = first.export("k")
    assert exp is not None
    tag, count, offset, held, held_ts = exp
    again = WindowBuffer(window=6, gaps=gaps)
    again.restore("k", tag, count, offset, held, held_ts)
    for i in range(15, 30):
        slot = again.push("k", float(ts[i]), values[i], 0, i, 0.0)
        if slot >= 0:
            row = np.empty((6, 1), np.float32)
            s, e = again.copy_window(slot, row)
            got.append((i, row, s, e))
    assert [g[0] for g in got] == [w[0] for w in want]
    for (_, a, s1, e1), (_, b, s2, e2) in zip(got, want):
        assert np.array_equal(a, b) and (s1, e1) == (s2, e2)
    assert again.gaps_filled == 1 and first.gaps_filled == 1


@settings(max_examples=60, deadline=None)
@given(
    window=st.integers(1, 8), hop=st.integers(1, 4),
    policy=st.sampled_from(["previous", "linear", "restart"]), max_fill=st.integers(0, 6),
    steps=st.lists(st.sampled_from([60.0, 60.0, 60.0, 61.5, 58.0, 120.0, 180.0, 600.0, 0.0]),
                   min_size=1, max_size=60),
)
def test_score_makes_the_windows_run_makes(window: int, hop: int, policy: str, max_fill: int,
                                           steps: list[float]) -> None:
    """The offline path (series_windows with a gap policy) gives every window, in order,
    that pushing the points into a WindowBuffer makes due, and the same counts."""
    ts = 1.7e9 + np.cumsum([0.0, *steps])
    rng = np.random.default_rng(len(steps))
    values = rng.normal(size=(len(ts), 2)).astype(np.float32)
    gaps = GapPolicy(policy, max_fill=max_fill)
    buf = WindowBuffer(window, 2, hop=hop, gaps=gaps)
    want = _push_all(buf, ts, values)
    windows, end = series_windows(values, window, hop, ts=ts, gaps=gaps)
    assert end.tolist() == [i for i, *_ in want]
    for w, (_, b, _, _) in zip(windows, want):
        assert np.array_equal(w, b)
    got = gap_windows(ts, values, window, hop, gaps)
    assert (got.filled_gaps, got.filled_points, got.restarts) == (
        buf.gaps_filled, buf.points_filled, buf.gaps_restarted)


def test_rows_without_time_never_have_gaps() -> None:
    """wide input (ts = the position) and evenly spaced series: the windows of off."""
    values = np.arange(50, dtype=np.float32).reshape(-1, 1)
    ts = np.arange(50, dtype=np.float64)
    plain = series_windows(values, 8, 1)
    for policy in ("previous", "linear", "restart"):
        w, e = series_windows(values, 8, 1, ts=ts, gaps=GapPolicy(policy))
        assert np.array_equal(w, plain[0]) and np.array_equal(e, plain[1])
