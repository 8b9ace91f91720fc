"""Deciders: score range, monotonicity, 0.5 at the boundary, batch-cut invariance,
export/restore, bounded state, and the spec plumbing (train -> artifact -> score/run)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream_detector.decision import (
    DECIDERS,
    DEFAULT_DECISION,
    StaticThreshold,
    decision_spec,
    log10_normal_tail,
    make_decider,
    method_params,
    normal_tail_quantile,
    resolve_spec,
)
from stream_detector.season import detect_period
from stream_detector.threshold import Thresholds

THR = Thresholds(global_=1.0, per_key={"a": 0.8})
# small histories and warm-ups so the statistics take over within a short test stream
SPECS = {
    "adaptive": {"method": "adaptive", "warmup": 40, "tail": 12, "horizon": 200},
    "adaptive-nosuppress": {"method": "adaptive", "warmup": 40, "suppress": "off"},
    "pot": {"method": "pot", "history": 200, "warmup": 40},
    "pot-nosuppress": {"method": "pot", "history": 200, "warmup": 40, "suppress": 0},
    "likelihood": {"method": "likelihood", "history": 200, "warmup": 40, "suppress": 0},
    "likelihood-suppress": {"method": "likelihood", "history": 150, "warmup": 30, "short": 5},
    "normalized": {"method": "normalized", "history": 200, "warmup": 40, "suppress": 0},
    "dynamic": {"method": "dynamic", "history": 200, "warmup": 40, "every": 20, "suppress": 0},
    "dynamic-suppress": {"method": "dynamic", "history": 120, "warmup": 30, "every": 7},
}
STATEFUL = [s for s in SPECS]


def errors(n: int, seed: int = 0) -> np.ndarray:
    """Lognormal reconstruction errors with a few bursts, as float32 like the model's."""
    rng = np.random.default_rng(seed)
    x = rng.lognormal(-1.0, 0.3, n)
    for start in rng.choice(max(n - 20, 1), size=n // 400, replace=False):
        x[start : start + 10] *= rng.uniform(2, 6)
    return x.astype(np.float32).astype(np.float64)


def decide_in_chunks(decider, key, x, cuts, other=None):
    """Feed ``x`` for ``key`` in pieces; interleave another key's windows in each batch."""
    outs = []
    bounds = [0, *sorted(cuts), len(x)]
    rng = np.random.default_rng(1)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi <= lo:
            continue
        keys = [key] * (hi - lo)
        scores = list(x[lo:hi])
        if other is not None:  # windows of another key in the same batch, at random places
            extra = int(rng.integers(0, 4))
            for _ in range(extra):
                at = int(rng.integers(0, len(keys) + 1))
                keys.insert(at, "zz-other")
                scores.insert(at, float(rng.lognormal(-1, 0.3)))
        thr, a, f, *_ = decider.decide(keys, np.asarray(scores))
        mine = np.array([k == key for k in keys])
        outs.append((thr[mine], a[mine], f[mine]))
    return tuple(np.concatenate(parts) for parts in zip(*outs))


@pytest.mark.parametrize("name", STATEFUL)
def test_batch_cuts_and_other_keys_do_not_change_a_single_decision(name: str) -> None:
    x = errors(900, seed=3)
    whole = make_decider(THR, SPECS[name]).decide(["a"] * len(x), x)
    rng = np.random.default_rng(7)
    for trial in range(3):
        cuts = rng.choice(np.arange(1, len(x)), size=[1, 30, 300][trial], replace=False)
        got = decide_in_chunks(make_decider(THR, SPECS[name]), "a", x, cuts, other=True)
        for w, g in zip(whole, got):
            np.testing.assert_array_equal(w, g)


@pytest.mark.parametrize("name", STATEFUL)
def test_export_restore_resumes_identically(name: str) -> None:
    x = errors(700, seed=4)
    first, rest = x[:433], x[433:]
    d1 = make_decider(THR, SPECS[name])
    d1.decide(["a"] * len(first), first)
    raw = d1.export("a")
    assert isinstance(raw, bytes)
    d2 = make_decider(THR, SPECS[name])
    d2.restore("a", raw)
    assert d2.export("a") == raw
    for w, g in zip(d1.decide(["a"] * len(rest), rest), d2.decide(["a"] * len(rest), rest)):
        np.testing.assert_array_equal(w, g)


@pytest.mark.parametrize("name", STATEFUL)
def test_state_is_bounded_and_forgotten(name: str) -> None:
    d = make_decider(THR, SPECS[name])
    sizes = []
    for n in (10, 300, 5000):
        d.decide(["a"] * n, errors(n, seed=n))
        sizes.append(len(d.export("a") or b""))
    assert sizes[1] <= sizes[2] <= d.state_bytes()  # type: ignore[attr-defined]
    assert d.state_bytes() <= 16 + 5 * 1100  # type: ignore[attr-defined]
    d.forget("a")
    assert d.export("a") is None
    assert d.export("never-seen") is None


@pytest.mark.parametrize("name", STATEFUL)
def test_score_range_monotone_and_one_half_at_the_threshold(name: str) -> None:
    """For a fixed state (restored each time), the score rises with the error, stays in
    [0, 1], and crosses 0.5 at the reported threshold, where the flag switches."""
    spec = SPECS[name]
    d = make_decider(THR, spec)
    hist = errors(500, seed=5)
    d.decide(["a"] * len(hist), hist)
    raw = d.export("a")
    assert raw is not None

    def one(score: float) -> tuple[float, float, bool]:
        fresh = make_decider(THR, spec)
        fresh.restore("a", raw)
        t, a, f, *_ = fresh.decide(["a"], np.array([score]))
        return float(t[0]), float(a[0]), bool(f[0])

    grid = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 400)])
    res = [one(s) for s in grid]
    a = np.array([r[1] for r in res])
    flags = np.array([r[2] for r in res])
    assert np.all((a >= 0) & (a <= 1))
    assert np.all(np.diff(a) >= 0), "anomaly score must not fall as the error rises"
    np.testing.assert_array_equal(flags, a > 0.5)
    thr = {r[0] for r in res}
    assert len(thr) == 1, "the threshold depends on the state only"
    t = thr.pop()
    assert math.isfinite(t) and t > 0
    assert grid[flags].min() > t * (1 - 1e-6) if flags.any() else True
    assert not one(t * (1 - 1e-4))[2] and one(t * (1 + 1e-4))[2]
    if spec.get("suppress", 64) == 0:
        assert one(float(np.float32(t)))[1] == pytest.approx(0.5, abs=1e-4)


def test_suppression_flags_the_onset_of_an_excursion_once() -> None:
    x = np.full(400, 0.3) + np.random.default_rng(0).normal(0, 0.01, 400)
    x[300:340] = 5.0  # one sustained excursion
    _, a, f, *_ = make_decider(THR, {"method": "pot", "history": 200, "warmup": 40}).decide(
        ["a"] * len(x), x
    )
    assert f[300] and f[300:340].sum() == 1
    _, a0, f0, *_ = make_decider(
        THR, {"method": "pot", "history": 200, "warmup": 40, "suppress": 0}
    ).decide(["a"] * len(x), x)
    assert f0[300:310].all() and f0[300:340].sum() > 1
    assert a[301] <= 0.5 < a0[301]


def test_warmup_uses_the_static_rule_then_statistics_take_over() -> None:
    x = errors(200, seed=9)
    spec = {"method": "pot", "history": 100, "warmup": 50, "suppress": 0}
    thr, a, f, *_ = make_decider(THR, spec).decide(["a"] * len(x), x)
    st_thr, st_a, st_f, *_ = StaticThreshold(THR).decide(["a"] * 50, x[:50])
    np.testing.assert_allclose(a[:50], st_a)
    np.testing.assert_allclose(thr[:50], st_thr)
    np.testing.assert_array_equal(f[:50], st_f)
    assert not np.allclose(thr[50:], 0.8)


def test_a_key_unseen_in_training_uses_the_global_threshold_while_warming_up() -> None:
    thr, _, _, *_ = make_decider(THR, {"method": "pot"}).decide(["a", "b"], np.array([0.1, 0.1]))
    assert thr.tolist() == pytest.approx([0.8, 1.0])


def test_static_is_the_seed_rule() -> None:
    x = errors(50)
    d = make_decider(THR, {"method": "static"})
    for got, want in zip(d.decide(["a"] * 50, x), THR.decide(["a"] * 50, x)):
        np.testing.assert_array_equal(got, want)
    assert d.export("a") is None
    assert isinstance(make_decider(THR, None), StaticThreshold)


def test_specs_are_complete_typed_and_checked() -> None:
    assert DEFAULT_DECISION in DECIDERS and "static" in DECIDERS
    spec = decision_spec("pot", {"suppress": "0", "risk": "1e-5"})
    assert spec == {**method_params("pot"), "method": "pot", "suppress": 0, "risk": 1e-5}
    assert decision_spec("static") == {"method": "static"}
    with pytest.raises(ValueError, match="unknown decision method"):
        decision_spec("magic")
    with pytest.raises(ValueError, match="no parameter 'bogus'"):
        decision_spec("pot", {"bogus": 1})
    with pytest.raises(ValueError, match="expected a number"):
        decision_spec("pot", {"risk": "high"})
    with pytest.raises(ValueError):
        decision_spec("pot", {"risk": 2})
    with pytest.raises(ValueError, match="unknown decision method"):
        make_decider(THR, {"method": "magic"})


def test_resolve_spec_overrides_method_and_params() -> None:
    stored = decision_spec("pot", {"suppress": 10})
    assert resolve_spec(stored) == stored
    assert resolve_spec(None) is None
    assert resolve_spec(stored, params={"risk": "0.01"}) == {**stored, "risk": 0.01}
    assert resolve_spec(stored, "pot", {"risk": 0.01})["suppress"] == 10
    assert resolve_spec(stored, "likelihood") == decision_spec("likelihood")
    assert resolve_spec(None, "static") == {"method": "static"}
    assert resolve_spec(None, params={}) is None


def test_restore_refuses_foreign_or_damaged_state() -> None:
    d = make_decider(THR, SPECS["pot"])
    d.decide(["a"] * 100, errors(100))
    raw = d.export("a")
    assert raw is not None
    with pytest.raises(ValueError):
        make_decider(THR, SPECS["likelihood"]).restore("a", raw)
    with pytest.raises(ValueError):
        make_decider(THR, SPECS["pot"]).restore("a", raw[:-3])
    with pytest.raises(ValueError):
        make_decider(THR, SPECS["pot"]).restore("a", b"xx")


def test_normal_tail_helpers() -> None:
    z = np.array([0.0, 1.0, 1.959964, 5.0, 10.0, 36.9, 37.1, 100.0])
    lt = log10_normal_tail(z)
    assert np.all(np.diff(lt) < 0)
    assert lt[2] == pytest.approx(math.log10(0.025), abs=1e-6)
    assert lt[4] == pytest.approx(math.log10(7.619853024160527e-24), rel=1e-9)
    np.testing.assert_allclose(normal_tail_quantile(lt[1:]), z[1:], rtol=1e-9)
    # continuous and decreasing across the switch to the asymptotic series at z = 37
    below, above = log10_normal_tail(np.array([37.0 - 1e-7, 37.0 + 1e-7]))
    assert 0 < below - above < 1e-5


def test_dynamic_default_margin_ignores_a_small_level_shift_but_not_a_large_one() -> None:
    """The pruning margin: a smoothed error must clear the largest normal one by 30 %
    (default ``prune`` 0.3); telemanom's 0.13 flags a 20 % rise of a flat error."""
    rng = np.random.default_rng(3)
    base = 1.0 + 0.01 * rng.standard_normal(1200)

    def flags(x: np.ndarray, **params: object) -> int:
        spec = {"method": "dynamic", "suppress": 0, **params}
        return int(make_decider(THR, spec).decide(["k"] * len(x), x)[2][1000:].sum())

    small = base.copy()
    small[1000:] *= 1.2
    large = base.copy()
    large[1000:] *= 1.6
    assert method_params("dynamic")["prune"] == 0.3
    assert flags(small) == 0
    assert flags(small, prune=0.13) > 0
    assert flags(large) > 0


# -- range: values the key has never shown ------------------------------------------------

RANGE = {"method": "pot", "history": 200, "warmup": 40}  # pot's default range 0.05


def _newest(v: np.ndarray) -> np.ndarray:
    """Each window's newest point: one per window, one feature."""
    return np.asarray(v, dtype=np.float32).reshape(-1, 1, 1)


def test_range_flags_a_level_never_reached_whatever_the_error() -> None:
    rng = np.random.default_rng(5)
    n = 400
    v = rng.uniform(0.0, 1.0, n)  # the key's values stay in [0, 1] ...
    v[300] = 1.2  # ... but one leaves it by 13 % of the range
    v[350] = 1.06  # and one by 4 %: inside the 5 % tolerance
    v[20] = -0.5  # and one during the warm-up: it only widens the range (to 1.5)
    x = np.full(n, 0.3)  # an error that never stands out
    thr, a, f, *_ = make_decider(THR, RANGE).decide(["a"] * n, x, _newest(v))
    assert np.flatnonzero(f).tolist() == [300]
    assert a[300] == 1.0 and thr[300] == thr[299]  # the error's threshold is unchanged
    # the same errors without the values, or with range 0: nothing
    assert not make_decider(THR, RANGE).decide(["a"] * n, x)[2].any()
    off = make_decider(THR, {**RANGE, "range": 0})
    assert not off.wants_values
    assert not off.decide(["a"] * n, x, _newest(v))[2].any()
    # every stateful method checks by default; the seed's static rule does not
    assert all(method_params(m)["range"] == 0.05 for m in DECIDERS if m != "static")
    assert not make_decider(THR, {"method": "static"}).wants_values


def test_range_is_per_feature_and_per_key() -> None:
    n = 200
    rng = np.random.default_rng(6)
    lo = rng.uniform(0, 1, (n, 2))
    lo[:, 1] *= 100  # the second feature spans 0..100
    lo[:4] = [[0, 0], [0, 0], [1, 100], [1, 100]]  # both keys see both ends first
    hi = lo + 0.01
    lo[150, 1] = -10  # 10 % below the second feature's range: flagged
    hi[160, 0] = 1.02  # 2 % above the first's: not
    keys = ["a" if i % 2 else "b" for i in range(n)]
    newest = np.stack([lo, hi], axis=1)  # two new points per window: (n, 2, features)
    _, _, f, *_ = make_decider(THR, {**RANGE, "warmup": 10}).decide(keys, np.full(n, 0.3), newest)
    assert np.flatnonzero(f).tolist() == [150]


def test_range_decisions_survive_batch_cuts_and_restarts() -> None:
    rng = np.random.default_rng(7)
    n = 900
    v = np.cumsum(rng.normal(0, 1, n))  # a random walk: new extremes now and then
    x = errors(n, seed=8)
    whole = make_decider(THR, RANGE).decide(["a"] * n, x, _newest(v))
    assert whole[2].sum() > 2 and (whole[1] == 1.0).sum() > 2
    d = make_decider(THR, RANGE)
    parts = []
    for lo, hi in [(0, 7), (7, 333), (333, 334), (334, 610), (610, n)]:
        parts.append(d.decide(["a"] * (hi - lo), x[lo:hi], _newest(v[lo:hi])))
        raw = d.export("a")
        assert raw is not None
        d = make_decider(THR, RANGE)  # a restart after every batch
        d.restore("a", raw)
        assert d.export("a") == raw
    for w, g in zip(whole, (np.concatenate(p) for p in zip(*parts))):
        np.testing.assert_array_equal(w, g)


def test_state_written_without_a_range_restores_and_starts_one() -> None:
    x = errors(300, seed=9)
    old = make_decider(THR, {**RANGE, "range": 0})
    old.decide(["a"] * 300, x)
    raw = old.export("a")
    assert raw is not None
    d = make_decider(THR, RANGE)
    d.restore("a", raw)  # e.g. the state of a service that ran before range existed
    # the new range checks once it spans the warm-up: a climb is news only after that
    v = np.r_[np.linspace(0, 1, 50), 1.5]
    _, a, f, *_ = d.decide(["a"] * 51, np.full(51, 0.3), _newest(v))
    assert f[-1] and a[-1] == 1.0 and not f[:-1].any()
    with pytest.raises(ValueError, match="wrong length"):
        make_decider(THR, RANGE).restore("a", (d.export("a") or b"") + b"\0" * 8)


def test_a_trained_key_starts_from_its_training_range() -> None:
    v = np.r_[np.linspace(0.4, 0.6, 60), 0.75, 1.2]  # 0.75: past the stream's own range
    x = np.full(len(v), 0.3)
    fresh = make_decider(THR, RANGE).decide(["a"] * len(v), x, _newest(v))[2]
    assert np.flatnonzero(fresh).tolist() == [60, 61]
    # trained on values in [0, 1]: 0.75 is old news, 1.2 is not
    trained = make_decider(THR, RANGE, {"a": ([0.0], [1.0])})
    assert np.flatnonzero(trained.decide(["a"] * len(v), x, _newest(v))[2]).tolist() == [61]
    # a range of another shape (features) is ignored
    other = make_decider(THR, RANGE, {"a": ([0.0, 0.0], [1.0, 1.0])})
    assert np.flatnonzero(other.decide(["a"] * len(v), x, _newest(v))[2]).tolist() == [60, 61]


# -- season: a cycle that breaks its period -------------------------------------------------

PERIOD = 24
SEASON = {"method": "pot", "history": 300, "warmup": 50, "range": 0, "season_span": 12}


def _cycles(n: int, seed: int = 0, period: int = PERIOD) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sin(2 * np.pi * np.arange(n) / period) + rng.normal(0, 0.05, n)


def test_detect_period_finds_a_season_and_none_in_noise() -> None:
    rng = np.random.default_rng(1)
    for period in (12, 24, 50):
        assert detect_period(_cycles(40 * period, seed=period, period=period)) == period
    # two features on the same season (rows x features), one of them flat
    both = np.c_[_cycles(600), np.full(600, 3.0)]
    assert detect_period(both) == PERIOD
    assert detect_period(rng.normal(0, 1, 2000)) == 0  # white noise
    assert detect_period(np.cumsum(rng.normal(0, 1, 2000))) == 0  # a random walk
    assert detect_period(np.full(500, 7.0)) == 0
    assert detect_period(_cycles(40)) == 0  # not two full periods... nearly; too short
    assert detect_period(np.r_[_cycles(300), np.nan]) == PERIOD  # gaps are dropped


def test_season_flags_a_cycle_that_skips_its_swing() -> None:
    """The errors say nothing (the same noise throughout); the values go flat for one
    period where they usually swing. Only the seasonal check sees it."""
    n = 1500
    v = _cycles(n)
    v[1000 : 1000 + PERIOD] = 0.0  # a day without its rise and fall
    x = errors(n, seed=3)
    d = make_decider(THR, SEASON, periods={"a": PERIOD})
    assert d.wants_values
    _, a, f, *_ = d.decide(["a"] * n, x, _newest(v))
    blind = make_decider(THR, {**SEASON, "season": "off"}).decide(["a"] * n, x, _newest(v))
    hits = np.flatnonzero(f & ~blind[2])
    during = hits[(hits >= 1000) & (hits < 1000 + PERIOD + SEASON["season_span"])]
    assert during.size and during[0] < 1000 + PERIOD // 4  # found as it starts
    assert a[during[0]] > 0.5
    assert len(hits) - len(during) <= 3  # the noise of 1500 windows: a rare false alarm
    # a key without a period (or another key) is not checked; `off` checks nothing
    other = make_decider(THR, SEASON, periods={"b": PERIOD})
    np.testing.assert_array_equal(other.decide(["a"] * n, x, _newest(v))[2], blind[2])
    assert not make_decider(THR, {**SEASON, "season": "off"}, periods={"a": PERIOD}).wants_values
    # a fixed period applies to every key
    fixed = make_decider(THR, {**SEASON, "season": str(PERIOD)})
    np.testing.assert_array_equal(fixed.decide(["a"] * n, x, _newest(v))[2], f)
    with pytest.raises(ValueError, match="bad parameters"):
        make_decider(THR, {**SEASON, "season": "weekly"})


def test_season_decisions_survive_batch_cuts_and_restarts() -> None:
    n = 900
    v = _cycles(n, seed=4)
    v[600:640] = 0.0
    x = errors(n, seed=5)
    periods = {"a": PERIOD}
    whole = make_decider(THR, SEASON, periods=periods).decide(["a"] * n, x, _newest(v))
    assert whole[2][600:].any()
    d = make_decider(THR, SEASON, periods=periods)
    parts = []
    for lo, hi in [(0, 5), (5, 30), (30, 31), (31, 400), (400, 401), (401, 650), (650, n)]:
        parts.append(d.decide(["a"] * (hi - lo), x[lo:hi], _newest(v[lo:hi])))
        raw = d.export("a")
        assert raw is not None
        d = make_decider(THR, SEASON, periods=periods)  # a restart after every batch
        d.restore("a", raw)
        assert d.export("a") == raw
    for w, g in zip(whole, (np.concatenate(p) for p in zip(*parts))):
        np.testing.assert_array_equal(w, g)
    # several new points per window (hop 3): the same values, cut differently
    hop = make_decider(THR, SEASON, periods=periods)
    got = hop.decide(["a"] * (n // 3), x[2::3], v[: n // 3 * 3].reshape(-1, 3, 1))
    assert got[2].any()


def test_state_without_a_season_restores_and_starts_one() -> None:
    n = 700
    v = _cycles(n, seed=6)
    x = errors(n, seed=7)
    old = make_decider(THR, {**SEASON, "season": "off"})
    old.decide(["a"] * 400, x[:400], _newest(v[:400]))
    raw = old.export("a")
    assert raw is not None
    d = make_decider(THR, SEASON, periods={"a": PERIOD})
    d.restore("a", raw)  # e.g. the state of a service that ran before seasons existed
    d.decide(["a"] * 300, x[400:], _newest(v[400:]))
    grown = d.export("a")
    assert grown is not None and len(grown) > len(raw)
    again = make_decider(THR, SEASON, periods={"a": PERIOD})
    again.restore("a", grown)
    assert again.export("a") == grown
    with pytest.raises(ValueError, match="wrong length"):
        make_decider(THR, SEASON, periods={"a": PERIOD}).restore("a", grown[:20] + grown[-20:])


# -- adaptive, the default -------------------------------------------------------------
def _wave(n: int, period: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (np.sin(2 * np.pi * t / period) + 0.1 * rng.normal(size=n)).astype(np.float32)


def test_adaptive_is_the_default_and_its_state_is_at_most_256_bytes() -> None:
    assert DEFAULT_DECISION == "adaptive"
    d = make_decider(THR, {"method": "adaptive"}, periods={"a": 24})
    n = 3000
    d.decide(["a"] * n, errors(n, seed=2), _wave(n).reshape(n, 1, 1))
    d.decide(["b"] * n, errors(n, seed=3), _wave(n, 31).reshape(n, 1, 1))
    for key in ("a", "b"):
        raw = d.export(key)
        assert raw is not None and len(raw) <= 256
    assert len(d.export("a") or b"") == d.state_bytes(1, 24)  # type: ignore[attr-defined]


def test_adaptive_decides_keys_in_rounds_with_values_whatever_the_batch() -> None:
    """Several keys interleaved, values and a season: one call, per-key calls and random
    batch cuts give the same decisions."""
    n = 1200
    keys = ["a", "b", "c"]
    data = {k: (errors(n, seed=i), _wave(n, 20 + 3 * i, seed=i)) for i, k in enumerate(keys)}
    order = [k for i in range(n) for k in keys]
    rng = np.random.default_rng(0)
    rng.shuffle(order[600:])  # keep each key's own order: reassign positions per key
    pos = {k: 0 for k in keys}
    x_all, v_all = [], []
    for k in order:
        x_all.append(data[k][0][pos[k]])
        v_all.append(data[k][1][pos[k]])
        pos[k] += 1
    x_all_a, v_all_a = np.array(x_all), np.array(v_all, np.float32).reshape(-1, 1, 1)
    periods = {"a": 20, "b": 23, "c": 26}
    whole = make_decider(THR, {"method": "adaptive"}, periods=periods).decide(
        order, x_all_a, v_all_a)
    d = make_decider(THR, {"method": "adaptive"}, periods=periods)
    cuts = [0, *sorted(rng.choice(np.arange(1, len(order)), 40, replace=False)), len(order)]
    parts = [d.decide(order[lo:hi], x_all_a[lo:hi], v_all_a[lo:hi])
             for lo, hi in zip(cuts[:-1], cuts[1:])]
    for i, field in enumerate(whole):
        np.testing.assert_array_equal(field, np.concatenate([p[i] for p in parts]))
    single = make_decider(THR, {"method": "adaptive"}, periods=periods)
    mine = np.array([k == "b" for k in order])
    alone = single.decide(["b"] * n, data["b"][0], data["b"][1].reshape(n, 1, 1))
    for i, field in enumerate(whole):
        np.testing.assert_array_equal(field[mine], alone[i])


def test_adaptive_thresholds_are_finite_whatever_the_errors() -> None:
    d = make_decider(THR, {"method": "adaptive", "warmup": 10})
    n = 400
    x = np.concatenate([np.full(200, 1e-3), np.geomspace(1e-3, 1e30, 200)])
    thr, a, *_ = d.decide(["a"] * n, x, np.zeros((n, 1, 1), np.float32))
    assert np.all(np.isfinite(thr)) and np.all(thr > 0)
    assert np.all((a >= 0) & (a <= 1))
    const = make_decider(THR, {"method": "adaptive", "warmup": 10})
    thr, *_ = const.decide(["c"] * n, np.full(n, 0.25), np.zeros((n, 1, 1), np.float32))
    assert np.all(np.isfinite(thr))


def test_adaptive_flags_a_flat_line_and_a_level_never_seen() -> None:
    n = 1500
    v = _wave(n, 30, seed=4)
    v[1000:1100] = v[1000]  # stuck
    v[1300] = 8.0  # far outside the range
    x = errors(n, seed=5) * 0.1  # the model reconstructs both well
    d = make_decider(THR, {"method": "adaptive"})
    _, _, flag, _, reason = d.decide(["a"] * n, x, v.reshape(n, 1, 1))
    flat = np.flatnonzero(flag & (reason & 8 > 0))
    assert len(flat) and 1000 <= flat[0] < 1064
    assert flag[1300] and reason[1300] & 2
    assert not flag[200:1000].any()


def test_adaptive_refuses_another_methods_state() -> None:
    pot = make_decider(THR, SPECS["pot"])
    pot.decide(["a"] * 100, errors(100))
    with pytest.raises(ValueError):
        make_decider(THR, {"method": "adaptive"}).restore("a", pot.export("a") or b"")
    d = make_decider(THR, {"method": "adaptive"})
    d.decide(["a"] * 100, errors(100), np.zeros((100, 1, 1), np.float32))
    raw = d.export("a") or b""
    for cut in range(len(raw)):
        with pytest.raises(ValueError):
            make_decider(THR, {"method": "adaptive"}).restore("a", raw[:cut])
