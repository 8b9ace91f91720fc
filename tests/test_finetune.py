"""Online fine-tuning (``--fine-tune-every``): it learns drift, and its guard keeps anomalies out."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stream_detector.artifact import Artifact, load_artifact
from stream_detector.datasets import Dataset, Series
from stream_detector.errors import InputError
from stream_detector.finetune import FineTuneOptions
from stream_detector.scoring import window_scores
from stream_detector.training import TrainOptions, train_and_save

WINDOW = 16


def _series(key: str, values: np.ndarray) -> Series:
    n = len(values)
    t = np.arange(n, dtype=np.float64)
    return Series(key, [str(int(x)) for x in t], t * 60.0, values.reshape(-1, 1).astype(np.float32),
                  "synthetic.csv", np.arange(2, n + 2))


def _wave(n: int, period: float, amp: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return amp * np.sin(2 * np.pi * np.arange(n) / period) + rng.normal(0, 0.03, n)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ft_model")
    ds = Dataset("long", [_series("a", _wave(1200, 20))], ["value"], ["synthetic.csv"])
    opts = TrainOptions(kind="conv1d", window=WINDOW, epochs=15, seed=0,
                        model_params={"filters": 16, "kernel_size": 3}, validation_split=0.0)
    train_and_save(ds, opts, out)
    return out


def _fresh(model_dir: Path) -> Artifact:
    return load_artifact(model_dir)  # fine-tuning changes the model in place


def test_fine_tuning_learns_a_drifted_normal_and_lowers_its_errors(model_dir: Path) -> None:
    # the stream's normal changes shape after training: a new period and amplitude
    ds = Dataset("long", [_series("a", _wave(3000, 33, amp=1.6, seed=1))], ["value"],
                 ["synthetic.csv"])
    plain, _, _ = window_scores(_fresh(model_dir), ds)
    opts = FineTuneOptions.parse(64, {"guard": "50", "learning_rate": "1e-3", "steps": "8"})
    tuned, _, _ = window_scores(_fresh(model_dir), ds, fine_tune=opts)
    assert len(tuned) == len(plain)
    first = slice(0, 64)  # scored before the first round: the same model
    np.testing.assert_allclose(tuned[first], plain[first], rtol=1e-5)
    late = slice(len(plain) // 2, None)
    assert np.mean(tuned[late]) < 0.6 * np.mean(plain[late]), (
        f"tuned {np.mean(tuned[late]):.4f} vs plain {np.mean(plain[late]):.4f}")


def test_the_guard_keeps_a_long_anomaly_out_of_the_model(model_dir: Path) -> None:
    values = _wave(3000, 20, seed=2)
    values[1000:2500] = 4.0 + 0.5 * np.sin(np.arange(1500) / 3.0)  # a long anomalous stretch
    ds = Dataset("long", [_series("a", values)], ["value"], ["synthetic.csv"])
    art = _fresh(model_dir)
    plain, _, end = window_scores(art, ds)  # no fine-tuning: art stays as trained
    thr = art.thresholds.for_key("a")
    inside = (end >= 1000 + WINDOW) & (end < 2500)
    assert (plain[inside] > thr).all()  # the stretch is anomalous to the trained model

    for guard, learns in ((1.0, False), (1000.0, True)):
        opts = FineTuneOptions.parse(64, {"guard": str(guard), "learning_rate": "1e-3",
                                          "steps": "8"})
        tuned, _, _ = window_scores(_fresh(model_dir), ds, fine_tune=opts)
        late = inside & (end >= 2000)
        ratio = float(np.mean(tuned[late]) / np.mean(plain[late]))
        if learns:  # without the guard the anomaly is learnt and fades
            assert ratio < 0.5, f"guard {guard}: ratio {ratio:.3f}"
        else:  # with it, the anomaly stays as anomalous as it was
            assert ratio > 0.8 and (tuned[late] > thr).all(), f"guard {guard}: ratio {ratio:.3f}"


@pytest.mark.parametrize(
    ("every", "params", "message"),
    [
        (-1, {}, "--fine-tune-every must be >= 0"),
        (64, {"bogus": "1"}, "unknown parameter 'bogus'"),
        (64, {"steps": "two"}, "steps='two': expected int"),
        (64, {"guard": "0"}, "guard must be > 0"),
        (64, {"buffer": "0"}, "buffer must be >= 1"),
    ],
)
def test_bad_settings_are_clear_errors(every: int, params: dict[str, str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        FineTuneOptions.parse(every, params)


def test_score_command_takes_fine_tuning(model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    v = _wave(600, 33, amp=1.6, seed=3)
    src.write_text("timestamp,value\n" + "".join(f"{i * 60},{x:.5f}\n" for i, x in enumerate(v)))
    base = [sys.executable, "-m", "stream_detector", "score", "--model", str(model_dir),
            "--input", str(src), "--format", "nab"]
    plain = subprocess.run([*base, "--output", str(tmp_path / "a.csv")],
                           capture_output=True, text=True, timeout=300)
    tuned = subprocess.run([*base, "--output", str(tmp_path / "b.csv"),
                            "--fine-tune-every", "64", "--fine-tune-param", "guard=50"],
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and tuned.returncode == 0, tuned.stderr[-2000:]
    a, b = _scores(tmp_path / "a.csv"), _scores(tmp_path / "b.csv")
    assert len(a) == len(b) == 600
    first = slice(WINDOW - 1, WINDOW - 1 + 64)  # the windows scored before the first round
    np.testing.assert_allclose(b[first], a[first], rtol=1e-4)
    assert np.abs(b[WINDOW + 200 :] - a[WINDOW + 200 :]).max() > 1e-3
    bad = subprocess.run([*base, "--output", str(tmp_path / "c.csv"),
                          "--fine-tune-every", "64", "--fine-tune-param", "rate=1"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown parameter 'rate'" in bad.stderr
    assert "Traceback" not in bad.stderr


def _scores(path: Path) -> np.ndarray:
    with path.open() as fh:
        return np.array([float(r["score"] or "nan") for r in csv.DictReader(fh)])


def test_the_buffer_keeps_the_latest_normal_windows_and_rounds_keep_pace() -> None:
    from stream_detector.finetune import FineTuner
    from stream_detector.models import build
    from stream_detector.threshold import Thresholds

    model = build("feedforward", 1, 2, {"encoding_dim": 4})
    tuner = FineTuner(model, Thresholds(1.0, {"loud": 100.0}),
                      FineTuneOptions.parse(10, {"buffer": "5", "batch_size": "2", "guard": "1"}))
    w = np.arange(16, dtype=np.float32).reshape(8, 1, 2)
    scores = np.array([0.5, 2.0, 0.5, 0.5, 50.0, 0.5, 0.5, 0.5])
    keys = ["k", "k", "k", "k", "loud", "k", "k", "k"]  # 2.0 > 1.0 is refused; 50 <= 100 not
    assert tuner.observe(keys, w, scores) == 0  # 8 windows: no round due yet
    assert (tuner.learnt, tuner.refused) == (7, 1)
    kept = {float(x) for x in tuner._ring[:, 0, 0]}
    assert kept == {6.0, 8.0, 10.0, 12.0, 14.0}  # the last five learnt windows, in a ring of 5
    assert tuner.observe(keys * 3, np.tile(w, (3, 1, 1)), np.tile(scores, 3)) == 3  # 32 // 10
    tuner.tune(3)
    assert tuner.rounds == 3 and np.isfinite(tuner.last_loss)
    assert tuner.observe(keys[:1], w[:1], scores[:1]) == 0  # 2 + 1 left over: not yet 10
