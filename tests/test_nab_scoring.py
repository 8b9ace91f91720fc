"""Tests of the NAB scorer (stream_detector.evaluation.nab).

The published-figure tests need the staged NAB corpus under
``<repo>/../shared/data/nab`` (or ``$STREAM_DETECTOR_DATA/nab``) and skip
without it; the synthetic tests compare the vectorised sweep with a direct,
row-by-row port of NAB's ``Sweeper`` and run everywhere.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

from stream_detector.evaluation import nab

DATA_ROOT = Path(
    os.environ.get(
        "STREAM_DETECTOR_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
)
NAB_ROOT = DATA_ROOT / "nab"
needs_nab = pytest.mark.skipif(
    not (NAB_ROOT / "labels" / "combined_windows.json").is_file(),
    reason=f"NAB corpus not staged at {NAB_ROOT} (set STREAM_DETECTOR_DATA to the shared data folder)",
)

# Published NAB v1.1 scores (standard, reward_low_FP_rate, reward_low_FN_rate).
PUBLISHED = {
    "numenta": (70.10, 63.21, 74.32),
    "windowedGaussian": (39.65, 20.87, 47.41),
}

PROFILES = {
    "standard": nab.CostMatrix(tp_weight=1.0, fp_weight=0.11, fn_weight=1.0),
    "reward_low_FP_rate": nab.CostMatrix(tp_weight=1.0, fp_weight=0.22, fn_weight=1.0),
    "reward_low_FN_rate": nab.CostMatrix(tp_weight=1.0, fp_weight=0.11, fn_weight=2.0),
}


# ---------------------------------------------------------------------------
# A direct port of NAB's Sweeper (calcSweepScore + calcScoreByThreshold) and
# of the optimiser's pick, row by row, as the reference for the vectorised code.
# ---------------------------------------------------------------------------


def _ref_scaled_sigmoid(p: float) -> float:
    if p >= 3.0:
        return -1.0
    return 2 * (1 / (1 + math.exp(5 * p))) - 1.0


def _ref_sweep_rows(timestamps, scores, windows, name, cost, percent=0.15):
    timestamps = list(timestamps)
    windows = list(windows)
    max_tp = _ref_scaled_sigmoid(-1.0)
    probation = min(math.floor(percent * len(timestamps)), percent * 5000)
    rows = []
    cur = cur_name = cur_width = cur_right = None
    prev_width = prev_right = None
    for i, (ts, score) in enumerate(zip(timestamps, scores, strict=True)):
        if windows and ts == windows[0][0]:
            cur = windows.pop(0)
            cur_name = f"{name}|{cur[0]}"
            cur_right = timestamps.index(cur[1])
            cur_width = float(cur_right - timestamps.index(cur[0]) + 1)
        if cur is not None:
            weighted = (
                _ref_scaled_sigmoid(-(cur_right - i + 1) / cur_width) * cost.tp_weight / max_tp
            )
        else:
            p = 3.0 if prev_right is None else abs(prev_right - i) / float(prev_width - 1)
            weighted = _ref_scaled_sigmoid(p) * cost.fp_weight
        rows.append((score, weighted, cur_name if i >= probation else "probationary"))
        if cur is not None and ts == cur[1]:
            prev_right, prev_width = i, cur_width
            cur = cur_name = cur_width = cur_right = None
    return rows


def _ref_best(rows, cost):
    scorable = sorted((r for r in rows if r[2] != "probationary"), key=lambda r: r[0], reverse=True)
    parts = {"fp": 0.0}
    for _, _, window in scorable:
        if window is not None:
            parts[window] = -cost.fn_weight
    out = []
    threshold = 1.1
    for score, weighted, window in scorable:
        if score != threshold:
            out.append((threshold, sum(parts.values())))
            threshold = score
        if window is None:
            parts["fp"] += weighted
        else:
            parts[window] = max(parts[window], weighted)
    out.append((threshold, sum(parts.values())))
    return sorted(out, key=lambda t: t[1], reverse=True)[0]


# ---------------------------------------------------------------------------
# Synthetic corpus (runs without the staged data)
# ---------------------------------------------------------------------------


def _write_corpus(root: Path) -> tuple[Path, Path, Path, dict[str, list[str]], dict[str, list]]:
    """Three small files: two windows, a repeated timestamp, and no windows."""
    start = np.datetime64("2020-01-01T00:00")
    specs = {
        "catA/series_one.csv": (400, [(100, 140), (250, 300)]),
        "catA/series_two.csv": (300, [(60, 61), (200, 229)]),
        "catB/quiet.csv": (150, []),
    }
    timestamps: dict[str, list[str]] = {}
    labels: dict[str, list] = {}
    for name, (n, windows) in specs.items():
        ts = [str(start + np.timedelta64(5 * i, "m")).replace("T", " ") + ":00" for i in range(n)]
        if name == "catA/series_two.csv":
            ts[150] = ts[149]  # a repeated timestamp, as in NAB's daylight-saving files
        timestamps[name] = ts
        labels[name] = [[ts[a] + ".000000", ts[b] + ".000000"] for a, b in windows]
        path = root / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("timestamp,value\n" + "".join(f"{t},{i}\n" for i, t in enumerate(ts)))
    labels_path = root / "labels" / "combined_windows.json"
    labels_path.parent.mkdir(parents=True)
    labels_path.write_text(json.dumps(labels))
    profiles_path = root / "config" / "profiles.json"
    profiles_path.parent.mkdir(parents=True)
    profiles_path.write_text(
        json.dumps(
            {
                name: {
                    "CostMatrix": {
                        "tpWeight": c.tp_weight,
                        "fnWeight": c.fn_weight,
                        "fpWeight": c.fp_weight,
                        "tnWeight": 1.0,
                    }
                }
                for name, c in PROFILES.items()
            }
        )
    )
    return root / "data", labels_path, profiles_path, timestamps, labels


@pytest.fixture()
def synthetic(tmp_path):
    return _write_corpus(tmp_path)


def test_scaled_sigmoid_and_probation():
    assert nab.scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert nab.scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert nab.scaled_sigmoid(0.0) == pytest.approx(0.0, abs=1e-12)
    assert nab.scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert nab.scaled_sigmoid(3.0) == -1.0
    assert nab.MAX_TP == pytest.approx(0.98661, abs=1e-5)
    assert nab.probationary_length(4032) == 604
    assert nab.probationary_length(5000) == 750
    assert nab.probationary_length(22695) == 750
    assert nab.probationary_length(100) == 15


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("decimals", [1, 3, None])
def test_matches_row_by_row_reference(synthetic, seed, decimals):
    data_dir, labels_path, _, timestamps, labels = synthetic
    corpus = nab.NABCorpus.from_paths(data_dir, labels_path)
    rng = np.random.default_rng(seed)
    scores = {}
    for name, ts in timestamps.items():
        values = rng.random(len(ts)) ** 3
        scores[name] = np.round(values, decimals) if decimals is not None else values
    windows = nab.load_windows(labels_path)
    for cost in PROFILES.values():
        rows = []
        for name in sorted(timestamps):
            parsed = [nab._parse_timestamp(t) for t in timestamps[name]]
            rows += _ref_sweep_rows(parsed, list(scores[name]), windows[name], name, cost)
        ref_threshold, ref_score = _ref_best(rows, cost)
        sweep = corpus.sweep(scores, cost)
        assert sweep.best_score == pytest.approx(ref_score, abs=1e-9)
        assert sweep.best_threshold == ref_threshold


def test_synthetic_hand_computed(synthetic):
    data_dir, labels_path, profiles_path, timestamps, _ = synthetic
    zeros = {name: np.zeros(len(ts)) for name, ts in timestamps.items()}
    # One detection at the last row of series_one's first window (41 rows wide).
    one = dict(zeros)
    one["catA/series_one.csv"] = np.zeros(400)
    one["catA/series_one.csv"][140] = 0.9
    result = nab.score_detector_detailed(one, data_dir, labels_path, profiles_path)
    standard = result["standard"]
    expected_tp = float(nab.scaled_sigmoid(-1 / 41)) / nab.MAX_TP
    assert standard.null == -4.0 and standard.perfect == 4.0
    assert standard.threshold == 0.9
    assert standard.raw == pytest.approx(-3.0 + expected_tp, abs=1e-12)
    assert standard.normalized == pytest.approx(100 * (1 + expected_tp) / 8, abs=1e-9)
    # A false positive before any window costs the full fpWeight; too costly to pick.
    fp = dict(zeros)
    fp["catB/quiet.csv"] = np.zeros(150)
    fp["catB/quiet.csv"][100] = 1.0
    result = nab.score_detector(fp, data_dir, labels_path, profiles_path)
    assert result["standard"] == 0.0 and result["standard_threshold"] == nab.NO_DETECTION_THRESHOLD


def test_synthetic_null_perfect_and_directory(synthetic, tmp_path):
    data_dir, labels_path, profiles_path, timestamps, _ = synthetic
    corpus = nab.NABCorpus.from_paths(data_dir, labels_path)
    null = nab.score_detector(
        {n: np.zeros(len(t)) for n, t in timestamps.items()}, data_dir, labels_path, profiles_path
    )
    perfect_scores = nab.perfect_detector_scores(corpus)
    perfect = nab.score_detector(perfect_scores, data_dir, labels_path, profiles_path)
    for profile in PROFILES:
        assert null[profile] == 0.0
        assert perfect[profile] == pytest.approx(100.0, abs=1e-9)
    # The same perfect detector from a results folder, with and without a detector prefix.
    results = tmp_path / "results" / "mine"
    for i, (name, values) in enumerate(perfect_scores.items()):
        category, filename = name.split("/")
        target = results / category / (filename if i % 2 else f"mine_{filename}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            "timestamp,value,anomaly_score\n"
            + "".join(f"{t},0,{v}\n" for t, v in zip(timestamps[name], values, strict=True))
        )
    (results / "mine_standard_scores.csv").write_text("Detector,Score\nmine,1\n")
    assert nab.score_detector(results, data_dir, labels_path, profiles_path) == perfect
    # A subset is normalised against the subset's null and perfect scores.
    subset = nab.score_detector(
        {"catA/series_two.csv": perfect_scores["catA/series_two.csv"]},
        data_dir,
        labels_path,
        profiles_path,
        files=["catA/series_two.csv"],
    )
    assert subset["standard"] == pytest.approx(100.0)


def test_input_validation(synthetic):
    data_dir, labels_path, profiles_path, timestamps, _ = synthetic
    scores = {n: np.zeros(len(t)) for n, t in timestamps.items()}
    with pytest.raises(KeyError):
        nab.score_detector(
            {"catB/quiet.csv": scores["catB/quiet.csv"]}, data_dir, labels_path, profiles_path
        )
    short = dict(scores)
    short["catB/quiet.csv"] = np.zeros(10)
    with pytest.raises(ValueError, match="150 rows"):
        nab.score_detector(short, data_dir, labels_path, profiles_path)
    bad = dict(scores)
    bad["catB/quiet.csv"] = np.full(150, np.nan)
    with pytest.raises(ValueError, match="finite"):
        nab.score_detector(bad, data_dir, labels_path, profiles_path)


# ---------------------------------------------------------------------------
# The staged NAB corpus and the published figures
# ---------------------------------------------------------------------------


def _paths():
    return nab.nab_paths(NAB_ROOT)


@needs_nab
@pytest.mark.parametrize("detector", sorted(PUBLISHED))
def test_published_scores(detector):
    data_dir, labels_path, profiles_path = _paths()
    started = time.perf_counter()
    result = nab.score_detector(
        NAB_ROOT / "results" / detector, data_dir, labels_path, profiles_path
    )
    elapsed = time.perf_counter() - started
    got = tuple(result[p] for p in nab.PROFILE_NAMES)
    for value, expected in zip(got, PUBLISHED[detector], strict=True):
        assert abs(value - expected) <= 0.01, (detector, got, PUBLISHED[detector])
    assert elapsed < 30.0


@needs_nab
def test_corpus_shape():
    data_dir, labels_path, _ = _paths()
    corpus = nab.load_corpus(data_dir, labels_path)
    assert len(corpus.files) == 58
    assert sum(g.num_windows for g in corpus.files.values()) == 116
    assert sum(g.num_rows for g in corpus.files.values()) == 365558
    # Every window starts after the probationary period.
    assert all(g.scorable_windows == g.num_windows for g in corpus.files.values())


@needs_nab
def test_null_and_perfect_detectors():
    data_dir, labels_path, profiles_path = _paths()
    corpus = nab.load_corpus(data_dir, labels_path)
    null = nab.score_detector(
        {n: np.zeros(g.num_rows) for n, g in corpus.files.items()},
        data_dir,
        labels_path,
        profiles_path,
    )
    perfect = nab.score_detector(
        nab.perfect_detector_scores(corpus), data_dir, labels_path, profiles_path
    )
    for profile in nab.PROFILE_NAMES:
        assert null[profile] == 0.0
        assert null[f"{profile}_threshold"] == nab.NO_DETECTION_THRESHOLD
        assert perfect[profile] == pytest.approx(100.0, abs=1e-9)


@needs_nab
def test_mapping_equals_directory_and_reference():
    data_dir, labels_path, profiles_path = _paths()
    corpus = nab.load_corpus(data_dir, labels_path)
    scores = nab.load_results_dir(NAB_ROOT / "results" / "numenta", corpus.names)
    assert sorted(scores) == corpus.names
    from_dir = nab.score_detector(
        NAB_ROOT / "results" / "numenta", data_dir, labels_path, profiles_path
    )
    from_map = nab.score_detector(scores, data_dir, labels_path, profiles_path)
    assert from_dir == from_map
    # Row-by-row reference on the real corpus, standard profile.
    cost = nab.load_profiles(profiles_path)["standard"]
    windows = nab.load_windows(labels_path)
    rows = []
    for name in corpus.names:
        timestamps = nab._read_timestamps(data_dir / name)
        rows += _ref_sweep_rows(timestamps, list(scores[name]), windows[name], name, cost)
    ref_threshold, ref_score = _ref_best(rows, cost)
    sweep = corpus.sweep(scores, cost)
    assert sweep.best_threshold == ref_threshold
    assert sweep.best_score == pytest.approx(ref_score, abs=1e-9)
