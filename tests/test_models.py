"""The model contract, checked on every kind (River's ``check_estimator`` style).

Each kind is built small (``TINY``), trained for a couple of epochs on a tiny data set,
saved as an artifact and loaded back; the checks then compare the reloaded model, the
batched scorer and a direct Keras call on the same windows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream_detector import models
from stream_detector.artifact import (
    METADATA_FILE,
    MODEL_FILE,
    Artifact,
    load_artifact,
    save_artifact,
)
from stream_detector.datasets import Dataset, Series
from stream_detector.errors import ArtifactError, ConfigError, ShapeMismatch
from stream_detector.scaling import ScalerSet, fit_scaler
from stream_detector.scoring import score_dataset
from stream_detector.threshold import Thresholds
from stream_detector.training import TrainOptions, train_and_save

WINDOW = 16
N_FEATURES = 2
# Small sizes per kind, like River's ``_unit_test_params``.
TINY: dict[str, dict[str, Any]] = {
    "lstm": {"units": 8},
    "conv1d": {"filters": 8, "kernel_size": 3},
    "conv1d-seq": {"filters": 8, "kernel_size": 3},
    "cnn-lstm": {"filters": 8, "kernel_size": 3, "pool": 2, "units": 8},
    "bilstm": {"units": 4},
    "feedforward": {"encoding_dim": 6},
}


def tiny_dataset(n_series: int = 2, length: int = 120, seed: int = 0) -> Dataset:
    """Noisy sines with two features; series keys ``s0``, ``s1``, ..."""
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64)
    series = []
    for i in range(n_series):
        v = np.stack([np.sin(2 * np.pi * t / (12 + 3 * i)), np.cos(2 * np.pi * t / 20) + i], 1)
        v = (v + rng.normal(0, 0.05, v.shape)).astype(np.float32)
        series.append(
            Series(
                f"s{i}", [str(int(x)) for x in t], t * 60.0, v, "tiny.csv", np.arange(2, length + 2)
            )
        )
    return Dataset("long", series, ["value", "value_2"], ["tiny.csv"])


def direct_errors(keras_model: Any, windows: np.ndarray) -> np.ndarray:
    """RMS reconstruction error by hand from a plain Keras call."""
    import keras

    x = np.asarray(windows, dtype=np.float32)
    y = keras.ops.convert_to_numpy(keras_model(x, training=False))
    err: np.ndarray = np.sqrt(np.mean((x.astype(np.float64) - y) ** 2, axis=(1, 2)))
    return err


def test_the_six_kinds_are_registered() -> None:
    assert set(models.KINDS) == {
        "lstm", "conv1d", "conv1d-seq", "cnn-lstm", "bilstm", "feedforward"
    }
    assert set(TINY) == set(models.KINDS)


@pytest.fixture(scope="module", params=models.KINDS)
def trained(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Artifact, Path]:
    kind = request.param
    out = tmp_path_factory.mktemp(kind.replace("-", "_"))
    # no validation split: one compiled function less per kind
    opts = TrainOptions(
        kind=kind,
        window=WINDOW,
        epochs=2,
        batch_size=32,
        seed=0,
        model_params=TINY[kind],
        train_fraction=0.75,
        validation_split=0.0,
    )
    return train_and_save(tiny_dataset(), opts, out), out


def test_contract(trained: tuple[Artifact, Path]) -> None:
    art, out = trained
    model = art.model
    assert (model.window, model.n_features) == (WINDOW, N_FEATURES)
    x = np.random.default_rng(1).normal(size=(5, WINDOW, N_FEATURES)).astype(np.float32)
    recon = model.reconstruct(x)
    assert recon.shape == x.shape and recon.dtype == np.float32
    err = model.score_batch(x)
    assert err.shape == (5,) and err.dtype == np.float64
    assert np.isfinite(err).all() and (err >= 0).all()
    # the score is the RMS of the residual, (N, T, F) -> (N,)
    np.testing.assert_allclose(err, np.sqrt(((x - recon) ** 2).mean(axis=(1, 2))), rtol=1e-5)
    assert model.score_batch(x[:0]).shape == (0,)
    with pytest.raises(ShapeMismatch):
        model.score_batch(np.zeros((3, WINDOW + 1, N_FEATURES), np.float32))
    # training left its trace in the metadata, and the threshold is positive
    t = art.metadata["training"]
    assert 1 <= t["epochs_run"] <= 2 and np.isfinite(t["final_loss"])
    assert t["series"] == 2 and t["windows"] == 2 * (90 - WINDOW + 1)
    assert art.thresholds.global_ > 0
    assert (out / MODEL_FILE).is_file() and (out / METADATA_FILE).is_file()


def test_artifact_round_trip_gives_the_same_errors(trained: tuple[Artifact, Path]) -> None:
    art, out = trained
    back = load_artifact(out)
    assert back.kind == art.kind and back.version == art.version
    assert (back.window, back.hop, back.n_features) == (WINDOW, 1, N_FEATURES)
    assert back.features == ["value", "value_2"] and back.record_mode is False
    assert back.model.params == art.model.params
    assert back.thresholds == art.thresholds
    assert back.scalers.to_dict() == art.scalers.to_dict()
    x = np.random.default_rng(2).normal(size=(40, WINDOW, N_FEATURES)).astype(np.float32)
    np.testing.assert_allclose(back.model.score_batch(x), art.model.score_batch(x), atol=1e-6)
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["model"] == art.kind and len(meta["model_sha256"]) == 64
    assert {"tensorflow", "keras", "numpy"} <= set(meta["libraries"])


def test_batched_and_offline_scores_equal_a_direct_keras_call(
    trained: tuple[Artifact, Path],
) -> None:
    art, _ = trained
    ds = tiny_dataset(seed=5)
    results = score_dataset(art, ds, max_batch=7)  # odd batch size: several padded buckets
    for r in results:
        s = r.series
        scaled = art.scalers.for_key(s.key).transform(s.values)
        windows = np.lib.stride_tricks.sliding_window_view(scaled, WINDOW, axis=0).transpose(
            0, 2, 1
        )
        expected = direct_errors(art.model.model, windows)
        np.testing.assert_allclose(r.window_score[WINDOW - 1 :], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(art.model.score_batch(windows), expected, rtol=1e-5, atol=1e-6)
        assert np.isnan(r.score[: WINDOW - 1]).all()
        thr = art.thresholds.for_key(s.key)
        np.testing.assert_array_equal(r.is_anomaly[WINDOW - 1 :], expected > thr)


def test_batched_scorer_traces_once_for_every_batch_size() -> None:
    model = models.build("feedforward", 4, 1, {"encoding_dim": 4})
    scorer = model.scorer
    x = np.random.default_rng(0).normal(size=(3000, 4, 1)).astype(np.float32)
    full = direct_errors(model.model, x)
    # values on both sides of every bucket edge, and past the largest bucket
    checked = {b + d for b in scorer.buckets for d in (-1, 0, 1)} | {
        1,
        2 * scorer.buckets[-1],
        3000,
    }
    for n in range(1, 3001):
        err = scorer(x[:n])
        assert err.shape == (n,)
        if n in checked:
            np.testing.assert_allclose(err, full[:n], rtol=1e-5, atol=1e-6)
    assert scorer.traces == 1


def test_unknown_kind_or_parameter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        models.build("transformer", 8, 1)
    with pytest.raises(ConfigError, match="no parameter 'bogus'"):
        models.build("lstm", 8, 1, {"bogus": 1})
    assert models.build("lstm", 8, 1, {"units": "4", "unroll": "true"}).params == {
        "units": 4,
        "unroll": True,
    }


def test_shape_mismatch_between_metadata_and_model_is_refused(tmp_path: Path) -> None:
    model = models.build("feedforward", WINDOW, 1, TINY["feedforward"])
    scaler = fit_scaler(np.arange(10.0).reshape(-1, 1))
    meta = {
        "model": "feedforward",
        "model_params": model.params,
        "window": WINDOW * 2,
        "hop": 1,
        "n_features": 1,
        "features": ["value"],
    }
    save_artifact(tmp_path, model, ScalerSet("robust", scaler, {}), Thresholds(1.0), meta)
    with pytest.raises(ShapeMismatch, match="window 32"):
        load_artifact(tmp_path)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nowhere")


@pytest.mark.parametrize("kind", ["conv1d", "lstm"])
def test_checked_batch_shapes_make_a_windows_score_independent_of_its_batch(kind: str) -> None:
    """The service's mode: a window scores and is explained (expected values,
    attribution) bit-identically whatever it is batched with, so an event re-scored after
    a restart is byte-identical; small batches use smaller shapes."""
    from stream_detector.models import build

    m = build(kind, 32, 2)
    shapes = m.fix_batch_shapes(128)
    assert shapes[-1] == 128 and list(shapes) == sorted(set(shapes))
    x = np.random.default_rng(0).standard_normal((128, 32, 2)).astype(np.float32) * 3
    ref = m.explain_batch(x)
    for n in range(1, 129):  # every batch size, so every kept shape, at every row position
        off = (n * 37) % (129 - n)
        got = m.explain_batch(x[off:off + n])
        for field, want in zip(got, ref):
            np.testing.assert_array_equal(field, want[off:off + n])


def test_recurrent_kinds_score_through_the_written_out_loop_up_to_its_step_cap() -> None:
    """lstm, bilstm and cnn-lstm score through the fused loop (equal to Keras' within the
    tolerances above); past MAX_FUSED_STEPS steps, or for other kinds, Keras' own call."""
    from stream_detector.models.lstm import MAX_FUSED_STEPS

    for kind in ("lstm", "bilstm", "cnn-lstm"):
        assert models.build(kind, WINDOW, 1, TINY[kind]).scorer.forward is not None, kind
    assert models.build("lstm", MAX_FUSED_STEPS + 1, 1, {"units": 4}).scorer.forward is None
    assert models.build("conv1d", WINDOW, 1, TINY["conv1d"]).scorer.forward is None
    x = np.random.default_rng(3).normal(size=(5, MAX_FUSED_STEPS + 1, 1)).astype(np.float32)
    long = models.build("lstm", MAX_FUSED_STEPS + 1, 1, {"units": 4})
    np.testing.assert_allclose(long.score_batch(x), direct_errors(long.model, x), rtol=1e-5)


def test_tensorflows_import_notices_are_dropped_and_other_stderr_kept(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CPUs where oneDNN's custom operations are on, TensorFlow's native libraries
    print a notice on import that TF_CPP_MIN_LOG_LEVEL does not silence; a command's
    error must stay one line, and nothing else written meanwhile may be lost."""
    import os

    from stream_detector.models.base import _without_import_notices

    notices = (
        b"WARNING: All log messages before absl::InitializeLog() is called are written to "
        b"STDERR\nI0000 00:00:1795968796.466115   22016 port.cc:153] oneDNN custom operations"
        b" are on. You may see slightly different numerical results due to floating-point "
        b"round-off errors from different computation orders.\n"
    )
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    with _without_import_notices():
        os.write(2, notices + b"something else the import said\n")
    assert capfd.readouterr().err == "something else the import said\n"
    # INFO logs asked for: everything passes
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    with _without_import_notices():
        os.write(2, notices)
    assert capfd.readouterr().err == notices.decode()
