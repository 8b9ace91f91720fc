"""The Python API: train on arrays, score them offline, and the online detector, which must
decide every window as ``score`` does on the same data (both go through the window
buffer, the batched model and the same decider)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import stream_detector as sd
from stream_detector.errors import InputError, InvalidRecord
from stream_detector.testing import wave

WINDOW = 16
T0 = 1_767_225_600.0
# pot, warmed up early enough for these short series; the seasonal check at their period
DECISION = {"warmup": 60, "history": 200, "season": "20", "season_span": 8}


def _series(n: int = 360) -> dict[str, np.ndarray]:
    """Three float32 waves (float32 values: both paths then scale the very same numbers),
    each with one kind of trouble."""
    s = {f"k{i}": wave(n, seed=i) for i in range(3)}
    s["k0"][250] += 12.0  # a spike far out of range
    s["k1"][220:] += 5.0  # a level the key has never shown
    s["k2"][200:240] = 10.0  # two periods without the swing, at the usual level
    return s


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    train = {f"t{i}": wave(600, seed=100 + i) for i in range(3)}
    art = sd.train(train, window=WINDOW, epochs=2, seed=1, decision="pot",
                   decision_params=DECISION)
    path = tmp_path_factory.mktemp("api") / "model"
    saved = sd.save(art, path)
    assert saved.version and saved.window == WINDOW
    return path


def test_importing_the_package_does_not_import_tensorflow() -> None:
    code = ("import sys, stream_detector as sd; sd.OnlineDetector; sd.score; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert set(sd.__all__) >= {"train", "score", "save", "load", "OnlineDetector", "Verdict"}


@pytest.mark.slow
def test_train_from_an_array_then_score_it() -> None:
    art = sd.train(wave(400, seed=7), window=WINDOW, epochs=1, seed=1)
    x = wave(300, seed=8)
    x[200] += 12.0
    res = sd.score(art, x)
    assert isinstance(res, sd.Scores) and res.key == "series"
    assert len(res.score) == len(res.is_anomaly) == len(res.reason) == 300
    assert np.isnan(res.score[: WINDOW - 1]).all() and np.isfinite(res.score[WINDOW - 1:]).all()
    assert res.is_anomaly[200] and "range" in res.reason[200].split("+")
    assert res.reason[10] == "" and not res.is_anomaly[:WINDOW].any()
    assert ((res.anomaly_score[WINDOW:] >= 0.5) == res.is_anomaly[WINDOW:]).all()
    with pytest.raises(InputError, match="fewer than the model's window"):
        sd.score(art, x[:5])
    with pytest.raises(InputError, match="NaN"):
        sd.score(art, np.array([1.0, np.nan] * 20))


@pytest.mark.slow
def test_online_decisions_equal_score_on_the_same_data(model_dir: Path) -> None:
    data = _series()
    n = len(data["k0"])
    ts = T0 + 60.0 * np.arange(n)
    offline = sd.score(sd.load(model_dir), data, timestamps={k: ts for k in data})

    # several batches; a batch of 16 keeps the kernels on the path a power of two takes
    # (at 13 the last row of a batch can score an ulp apart, and pot's score moves with it)
    det = sd.OnlineDetector(sd.load(model_dir), max_batch=16)
    points = [(k, ts[i], float(data[k][i])) for i in range(n) for k in data]
    verdicts = det.process(points)
    assert len(verdicts) == len(data) * (n - WINDOW + 1) and det.nonfinite == 0
    flagged = set()
    for k, want in offline.items():
        got = [v for v in verdicts if v.key == k]
        idx = np.array([int(round((v.end - T0) / 60.0)) for v in got])
        np.testing.assert_array_equal(idx, np.arange(WINDOW - 1, n))  # stream order
        assert [v.start for v in got] == (ts[idx - WINDOW + 1]).tolist()
        # bit-identical here; a tolerance for CPUs whose kernels block batches differently
        np.testing.assert_allclose([v.score for v in got], want.score[idx], rtol=1e-6)
        np.testing.assert_allclose([v.anomaly_score for v in got], want.anomaly_score[idx],
                                   rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose([v.threshold for v in got], want.threshold[idx], rtol=1e-5)
        assert [v.is_anomaly for v in got] == want.is_anomaly[idx].tolist()
        assert [v.excursion for v in got] == want.excursion[idx].tolist()
        assert ["+".join(v.reason) for v in got] == [want.reason[i] for i in idx]
        flagged |= {r for v in got for r in v.reason}
    # every kind of trouble was caught, so the comparison covers real decisions
    assert {"range", "season"} <= flagged
    assert offline["k0"].is_anomaly[250]


@pytest.mark.slow
def test_score_one_and_bad_points(model_dir: Path) -> None:
    det = sd.OnlineDetector(model_dir, max_batch=4)
    x = wave(40, seed=3)
    got = [det.score_one("a", T0 + 60 * i, float(x[i])) for i in range(40)]
    assert all(v is None for v in got[: WINDOW - 1])
    assert all(isinstance(v, sd.Verdict) and v.key == "a" for v in got[WINDOW - 1:])
    assert len(det) == 1
    with pytest.raises(InvalidRecord) as exc:
        det.update("a", T0 + 60 * 41, float("nan"))
    assert exc.value.reason == "non_finite"
    with pytest.raises(InvalidRecord) as exc:
        det.update("a", T0 + 60 * 41, [1.0, 2.0])
    assert exc.value.reason == "wrong_feature_count"
    det.forget("a")
    assert len(det) == 0 and det.score_one("a", "2026-01-01T12:00:00Z", 10.0) is None
    strict = sd.OnlineDetector(model_dir, timestamp_policy="dlq", fixed_shapes=False)
    strict.update("b", T0 + 60, 10.0)
    with pytest.raises(InvalidRecord) as exc:
        strict.update("b", T0, 10.0)
    assert exc.value.reason == "timestamp_backwards" and strict.backwards == 1


@pytest.mark.slow
def test_a_dataframe_in_the_long_layout(model_dir: Path) -> None:
    pd = pytest.importorskip("pandas")
    data = _series()
    rows = [(T0 + 60 * i, k, float(data[k][i])) for i in range(len(data["k0"])) for k in data]
    df = pd.DataFrame(rows, columns=["timestamp", "key", "value"])
    art = sd.load(model_dir)
    out = sd.score(art, df)
    want = sd.score(art, data)
    assert list(out.columns) == ["timestamp", "key", "value", "score", "threshold",
                                 "anomaly_score", "is_anomaly", "reason"]
    for k in data:
        part = out[out["key"] == k]
        np.testing.assert_array_equal(part["score"].to_numpy(), want[k].score)
        assert part["is_anomaly"].tolist() == want[k].is_anomaly.tolist()
