"""Fit an autoencoder on history, calibrate its threshold, and build the artifact."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream_detector.artifact import Artifact, save_artifact
from stream_detector.datasets import Dataset, Series
from stream_detector.decision import DEFAULT_DECISION, decision_spec
from stream_detector.errors import InputError
from stream_detector.scaling import ScalerSet, fit_scaler
from stream_detector.season import detect_period
from stream_detector.threshold import calibrate
from stream_detector.window import series_windows

DEFAULT_WINDOW = 64


@dataclass(frozen=True)
class TrainOptions:
    """Everything ``train`` can be told; defaults are the seed design's."""

    kind: str = "conv1d"
    window: int | None = None  # None: 64 for series, 1 for records
    hop: int = 1
    epochs: int = 30
    batch_size: int = 64
    threshold_quantile: float = 0.995
    threshold_factor: float = 1.5
    train_fraction: float = 1.0
    seed: int | None = 0
    scaler: str = "robust"
    model_params: dict[str, Any] = field(default_factory=dict)
    validation_split: float = 0.1
    patience: int = 3
    learning_rate: float = 1e-3
    max_windows: int = 100_000
    verbose: int = 0
    # how errors become decisions (stream_detector/decision/)
    decision: str = DEFAULT_DECISION
    decision_params: dict[str, Any] = field(default_factory=dict)


def _min_points_for_key_stats(window: int) -> int:
    return max(30, 2 * window)


def training_windows(
    dataset: Dataset, window: int, scalers: ScalerSet, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """All stride-1 windows of each series' training part, scaled: (windows, key per window)."""
    chunks, keys = [], []
    for s in dataset.series:
        part = s.head(fraction)
        scaled = scalers.for_key(s.key).transform(part.values)
        w, _ = series_windows(scaled, window)
        chunks.append(w)
        keys.append(np.full(len(w), s.key, dtype=object))
    return np.concatenate(chunks), np.concatenate(keys)


def value_ranges(parts: list[Series]) -> dict[str, list[list[float]]]:
    """Each series' smallest and largest value per feature: ``{key: [lo, hi]}``."""
    return {
        p.key: [p.values.min(axis=0).tolist(), p.values.max(axis=0).tolist()]
        for p in parts
        if len(p)
    }


def find_periods(parts: list[Series]) -> dict[str, int]:
    """Each series' period (``season.detect_period``), for the series that have one."""
    found = {p.key: detect_period(p.values) for p in parts if len(p)}
    return {k: v for k, v in found.items() if v}


def train(dataset: Dataset, opts: TrainOptions) -> Artifact:
    """Fit, calibrate and return an (unsaved) artifact for ``dataset``."""
    record_mode = dataset.fmt == "records"
    if record_mode and opts.kind != "feedforward":
        raise InputError(f"--format records needs --model feedforward (got {opts.kind!r})")
    window = opts.window if opts.window is not None else (1 if record_mode else DEFAULT_WINDOW)
    if record_mode and window != 1:
        raise InputError("--format records scores each record on its own: use --window 1")
    if not 0.0 < opts.train_fraction <= 1.0:
        raise InputError(f"--train-fraction must be in (0, 1], got {opts.train_fraction}")
    try:
        decision = decision_spec(opts.decision, opts.decision_params)
    except ValueError as exc:
        raise InputError(f"--decision: {exc}") from None
    for s in dataset.series:
        n = len(s.head(opts.train_fraction))
        if n < window:
            extra = f" (first {opts.train_fraction:g} of {len(s)})" if opts.train_fraction < 1 else ""
            raise InputError(
                f"{s.source}: series {s.key!r} has {n} training point(s){extra}, "
                f"fewer than the window of {window}"
            )
    # TensorFlow takes seconds to import: only once the input has been checked
    from stream_detector import models

    if opts.seed is not None:
        import keras
        import tensorflow as tf

        keras.utils.set_random_seed(opts.seed)
        tf.config.experimental.enable_op_determinism()
    started = time.time()

    # Step 1. Scalers: global on all training points, per key where a key has enough.
    parts = [s.head(opts.train_fraction) for s in dataset.series]
    global_scaler = fit_scaler(np.concatenate([p.values for p in parts]), opts.scaler)
    per_key = {}
    if not record_mode:
        for p in parts:
            if len(p) >= _min_points_for_key_stats(window):
                per_key[p.key] = fit_scaler(p.values, opts.scaler, fallback=global_scaler)
    scalers = ScalerSet(method=opts.scaler, global_=global_scaler, per_key=per_key)

    # Step 2. Windows, capped so training time stays bounded on long histories.
    windows, keys = training_windows(dataset, window, scalers, opts.train_fraction)
    if len(windows) > opts.max_windows:
        rng = np.random.default_rng(opts.seed)
        pick = np.sort(rng.choice(len(windows), opts.max_windows, replace=False))
        windows, keys = windows[pick], keys[pick]

    # Step 3. Fit.
    model = models.build(opts.kind, window, dataset.n_features, opts.model_params)
    history = model.fit(
        windows, epochs=opts.epochs, batch_size=opts.batch_size,
        validation_split=opts.validation_split, patience=opts.patience,
        learning_rate=opts.learning_rate, verbose=opts.verbose, seed=opts.seed,
    )

    # Step 4. Calibrate the decision on the training errors, through the inference path.
    errors = model.score_batch(windows)
    thresholds = calibrate(errors, keys, opts.threshold_quantile, opts.threshold_factor)
    metadata = {
        "model": opts.kind,
        "model_params": model.params,
        "window": window,
        "hop": opts.hop,
        "n_features": dataset.n_features,
        "features": list(dataset.feature_names),
        "record_mode": record_mode,
        "decision": decision,
        # where each key's range check starts (decision.py, `range`); time series only
        "value_range": {} if record_mode else value_ranges(parts),
        # each key's period, for the seasonal check (decision.py, `season`); keys with one
        "period": {} if record_mode else find_periods(parts),
        "training": {
            "files": [str(Path(f)) for f in dataset.files],
            "format": dataset.fmt,
            "series": len(dataset.series),
            "points": int(sum(len(p) for p in parts)),
            # in the files read: points whose timestamp goes back (--timestamp-policy)
            "timestamps_backwards": dataset.timestamps_backwards,
            "train_fraction": opts.train_fraction,
            "windows": int(len(windows)),
            "epochs_run": len(history.get("loss", [])),
            "final_loss": history["loss"][-1] if history.get("loss") else None,
            "best_val_loss": min(history["val_loss"]) if history.get("val_loss") else None,
            "error_quantiles": {
                q: float(np.quantile(errors, float(q))) for q in ("0.5", "0.9", "0.99", "0.999")
            },
            "seed": opts.seed,
            "batch_size": opts.batch_size,
            "seconds": round(time.time() - started, 2),
        },
    }
    from stream_detector.artifact import library_versions

    metadata["libraries"] = library_versions()
    return Artifact(model=model, scalers=scalers, thresholds=thresholds, metadata=metadata)


def train_and_save(dataset: Dataset, opts: TrainOptions, out_dir: str | Path) -> Artifact:
    art = train(dataset, opts)
    return save_artifact(out_dir, art.model, art.scalers, art.thresholds, art.metadata)
