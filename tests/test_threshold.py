"""Thresholds: anomaly_score shape, calibration, per-key values with a global fallback."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_detector.threshold import MIN_WINDOWS_PER_KEY, Thresholds, anomaly_score, calibrate

finite = st.floats(0.0, 1e6, allow_nan=False)


@given(a=finite, b=finite, t=st.floats(1e-6, 1e6))
def test_anomaly_score_is_monotone_and_in_unit_interval(a: float, b: float, t: float) -> None:
    lo, hi = sorted((a, b))
    s = anomaly_score(np.array([lo, hi]), np.array([t, t]))
    assert 0.0 <= s[0] <= s[1] <= 1.0


@pytest.mark.parametrize("t", [1e-6, 0.3, 1.0, 42.0])
def test_anomaly_score_is_one_half_at_the_threshold(t: float) -> None:
    assert anomaly_score(np.array([t]), np.array([t]))[0] == pytest.approx(0.5)
    below, above = anomaly_score(np.array([t * 0.9, t * 1.1]), np.array([t, t]))
    assert below < 0.5 < above


def test_anomaly_score_of_zero_error_is_zero() -> None:
    assert anomaly_score(np.array([0.0]), np.array([1.0]))[0] == 0.0


def test_per_key_threshold_with_global_fallback() -> None:
    th = Thresholds(global_=1.0, per_key={"a": 2.0})
    assert th.for_key("a") == 2.0 and th.for_key("unseen") == 1.0
    np.testing.assert_array_equal(th.for_keys(["a", "b", "a"]), [2.0, 1.0, 2.0])
    thr, a, flag = th.decide(["a", "b", "a"], np.array([1.5, 1.5, 2.5]))
    np.testing.assert_array_equal(thr, [2.0, 1.0, 2.0])
    np.testing.assert_array_equal(flag, [False, True, True])
    assert a[0] < 0.5 < a[1] and a[2] > 0.5


def test_decision_is_strictly_above_the_threshold() -> None:
    _, a, flag = Thresholds(global_=1.0).decide(["k"], np.array([1.0]))
    assert not flag[0] and a[0] == pytest.approx(0.5)


def test_calibrate_quantile_times_factor_per_key_when_enough_windows() -> None:
    rng = np.random.default_rng(0)
    big = MIN_WINDOWS_PER_KEY * 4
    errors = np.concatenate(
        [
            rng.uniform(0, 1, big),
            rng.uniform(0, 10, big),
            rng.uniform(0, 100, MIN_WINDOWS_PER_KEY - 1),
        ]
    )
    keys = np.array(["a"] * big + ["b"] * big + ["few"] * (MIN_WINDOWS_PER_KEY - 1), dtype=object)
    th = calibrate(errors, keys, quantile=0.99, factor=1.5)
    assert th.global_ == pytest.approx(np.quantile(errors, 0.99) * 1.5)
    assert th.per_key["a"] == pytest.approx(np.quantile(errors[:big], 0.99) * 1.5)
    assert th.per_key["b"] == pytest.approx(np.quantile(errors[big : 2 * big], 0.99) * 1.5)
    assert "few" not in th.per_key  # too few windows for a quantile: the global value
    assert th.for_key("few") == th.global_
    assert (th.quantile, th.factor) == (0.99, 1.5)


def test_calibrate_single_key_has_only_a_global_threshold() -> None:
    th = calibrate(np.linspace(0, 1, 101), np.array(["k"] * 101, dtype=object), quantile=0.5)
    assert th.global_ == pytest.approx(0.5) and th.per_key == {}


def test_calibrate_refuses_a_bad_quantile() -> None:
    with pytest.raises(ValueError):
        calibrate(np.ones(3), np.array(["k"] * 3, dtype=object), quantile=0.0)


def test_calibrate_all_zero_errors_gives_a_positive_threshold() -> None:
    th = calibrate(np.zeros(10), np.array(["k"] * 10, dtype=object), quantile=0.99)
    assert th.global_ > 0.0


def test_thresholds_round_trip_through_a_dict() -> None:
    th = Thresholds(global_=1.25, per_key={"a": 2.5}, quantile=0.99, factor=1.5)
    assert Thresholds.from_dict(th.to_dict()) == th
