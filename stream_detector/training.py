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
from stream_detector.gaps import DEFAULT_GAP_FACTOR, DEFAULT_GAP_POLICY, GapPolicy, gap_policy
from stream_detector.scaling import ScalerSet, fit_scaler
from stream_detector.season import detect_period
from stream_detector.threshold import ROBUST_Z, Thresholds, calibrate, robust_boundary
from stream_detector.window import series_windows

DEFAULT_WINDOW = 64
# ``--format wide``: each row is one sample, so a fit sees one window per row; these
# budgets give it hundreds of gradient steps (the series defaults give ~30)
WIDE_EPOCHS, WIDE_PATIENCE = 300, 30
#: folds of the cross-fit that gives every training row an error from a model that did not
#: see it (wide input, at least ``2 * WIDE_FOLDS`` rows)
WIDE_FOLDS = 5


@dataclass(frozen=True)
class TrainOptions:
    """Everything ``train`` can be told; defaults are the seed design's."""

    kind: str | None = None  # None: default_kind(dataset)
    window: int | None = None  # None: 64 for series, 1 for records, the row for wide
    hop: int = 1
    epochs: int | None = None  # None: 30 (WIDE_EPOCHS for wide)
    batch_size: int = 64
    threshold_quantile: float = 0.995
    threshold_factor: float = 1.5
    train_fraction: float = 1.0
    seed: int | None = 0
    scaler: str = "robust"
    model_params: dict[str, Any] = field(default_factory=dict)
    validation_split: float = 0.1
    patience: int | None = None  # None: 3 (WIDE_PATIENCE for wide)
    learning_rate: float = 1e-3
    max_windows: int = 100_000
    verbose: int = 0
    # how errors become decisions (stream_detector/decision/)
    decision: str = DEFAULT_DECISION
    decision_params: dict[str, Any] = field(default_factory=dict)
    # what the windows do over gaps in a series' timestamps (--gap-*; stream_detector/gaps.py)
    gap_policy: str = DEFAULT_GAP_POLICY
    gap_max_fill: int | None = None  # None: half the window
    gap_factor: float = DEFAULT_GAP_FACTOR


def default_kind(dataset: Dataset) -> str:
    """The model ``train`` fits when none is named: ``feedforward`` for records,
    ``conv1d`` for ``wide`` rows (the seed's ECG protocol), ``conv1d-seq`` for time series.

    ``conv1d-seq`` rebuilds every step from its own neighbourhood, so a point pushed off
    leaves the rest of the window's reconstruction alone: the expected value is a normal
    one and, with several features, the error sits in the feature that moved. ``conv1d``
    pools the whole window into one vector (global max pool), so an anomaly moves the
    reconstruction of every point and feature. Detection is the same within retraining
    noise (docs/quality.md measures both)."""
    if dataset.fmt == "records":
        return "feedforward"
    return "conv1d" if dataset.fmt == "wide" else "conv1d-seq"


def _min_points_for_key_stats(window: int) -> int:
    return max(30, 2 * window)


def training_windows(
    dataset: Dataset, window: int, scalers: ScalerSet, fraction: float,
    gaps: GapPolicy | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """All stride-1 windows of each series' training part, scaled: (windows, key per window);
    with ``gaps``, over gaps as ``run`` windows them."""
    chunks, keys = [], []
    for s in dataset.series:
        part = s.head(fraction)
        scaled = scalers.for_key(s.key).transform(part.values)
        w, _ = series_windows(scaled, window, 1, part.ts, gaps)
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


def _default_window(dataset: Dataset, fraction: float) -> int:
    if dataset.fmt == "records":
        return 1
    if dataset.fmt == "wide":  # the seed's: one window per row (the shortest row's length)
        return min((len(s.head(fraction)) for s in dataset.series), default=DEFAULT_WINDOW)
    return DEFAULT_WINDOW


def train(dataset: Dataset, opts: TrainOptions) -> Artifact:
    """Fit, calibrate and return an (unsaved) artifact for ``dataset``.

    ``wide`` input (rows are samples of one process) is fitted and decided among the
    rows: see :func:`_fit_rows`.
    """
    record_mode = dataset.fmt == "records"
    wide = dataset.fmt == "wide"
    kind = opts.kind or default_kind(dataset)
    if record_mode and kind != "feedforward":
        raise InputError(f"--format records needs --model feedforward (got {kind!r})")
    if not 0.0 < opts.train_fraction <= 1.0:
        raise InputError(f"--train-fraction must be in (0, 1], got {opts.train_fraction}")
    window = opts.window if opts.window is not None else _default_window(
        dataset, opts.train_fraction)
    if record_mode and window != 1:
        raise InputError("--format records scores each record on its own: use --window 1")
    epochs = opts.epochs if opts.epochs is not None else (WIDE_EPOCHS if wide else 30)
    patience = opts.patience if opts.patience is not None else (WIDE_PATIENCE if wide else 3)
    if wide:
        # a row is judged among the rows: one pooled boundary, no per-key state, so the
        # stateful methods (and a default that may be one) do not apply
        if opts.decision not in ("static", DEFAULT_DECISION) or opts.decision_params:
            raise InputError(
                f"--format wide decides each row among the rows (one pooled threshold, "
                f"decision static); --decision {opts.decision} does not apply")
        decision: dict[str, Any] = {"method": "static"}
    else:
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
    if not record_mode and not wide:  # wide: the rows share one process, one scaler
        for p in parts:
            if len(p) >= _min_points_for_key_stats(window):
                per_key[p.key] = fit_scaler(p.values, opts.scaler, fallback=global_scaler)
    scalers = ScalerSet(method=opts.scaler, global_=global_scaler, per_key=per_key)

    # Step 2. Windows, capped so training time stays bounded on long histories.
    gaps = gap_policy(opts.gap_policy, opts.gap_max_fill, opts.gap_factor, window)
    windows, keys = training_windows(dataset, window, scalers, opts.train_fraction, gaps)
    if len(windows) > opts.max_windows:
        rng = np.random.default_rng(opts.seed)
        pick = np.sort(rng.choice(len(windows), opts.max_windows, replace=False))
        windows, keys = windows[pick], keys[pick]

    def fit(x: np.ndarray) -> tuple[Any, dict[str, list[float]]]:
        m = models.build(kind, window, dataset.n_features, opts.model_params)
        h = m.fit(
            x, epochs=epochs, batch_size=opts.batch_size,
            validation_split=opts.validation_split, patience=patience,
            learning_rate=opts.learning_rate, verbose=opts.verbose, seed=opts.seed,
        )
        return m, h

    rows: dict[str, Any] | None = None
    if wide:
        # Steps 3 and 4 among the rows: cross-fit, pooled robust boundary, final fit.
        model, history, errors, thresholds, rows = _fit_rows(fit, windows, keys, opts.seed)
    else:
        # Step 3. Fit.
        model, history = fit(windows)
        # Step 4. Calibrate the decision on the training errors, through the inference path.
        errors = model.score_batch(windows)
        thresholds = calibrate(errors, keys, opts.threshold_quantile, opts.threshold_factor)
    metadata = {
        "model": kind,
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
            "epochs": epochs,
            "patience": patience,
            "batch_size": opts.batch_size,
            "seconds": round(time.time() - started, 2),
        },
    }
    if rows is not None:
        metadata["training"]["rows"] = rows
    from stream_detector.artifact import library_versions

    metadata["libraries"] = library_versions()
    return Artifact(model=model, scalers=scalers, thresholds=thresholds, metadata=metadata)


def _fit_rows(
    fit: Any, windows: np.ndarray, keys: np.ndarray, seed: int | None
) -> tuple[Any, dict[str, list[float]], np.ndarray, Thresholds, dict[str, Any]]:
    """Fit and calibrate on rows that are samples of one process (``wide`` input).

    A row is anomalous when it is an outlier among the rows, and a few training rows
    may be anomalous themselves. An autoencoder reconstructs the rows it was fitted on,
    an odd one included, so their in-sample errors hide it: each row's error comes from a
    model that did not see it (``WIDE_FOLDS``-fold cross-fit over the rows). The
    boundary is a robust outlier rule on those errors, pooled over all rows:
    ``median + ROBUST_Z * MAD`` (MAD scaled to a normal sigma; ``robust_boundary``), so
    a few outlying rows move neither the median nor the MAD much. As the errors are
    those of unseen rows, the boundary holds for new rows too. The rows beyond it are left out of
    the final fit, so they stay unexplained by the served model. With fewer than
    ``2 * WIDE_FOLDS`` rows there is nothing to cross-fit: the final fit's own errors are
    used.
    """
    uniq = np.unique(keys)
    if len(uniq) >= 2 * WIDE_FOLDS:
        rng = np.random.default_rng(seed)
        fold_of = {k: i % WIDE_FOLDS for i, k in enumerate(rng.permutation(uniq))}
        fold = np.fromiter((fold_of[k] for k in keys), dtype=np.int64, count=len(keys))
        held_out = np.zeros(len(windows), dtype=np.float64)
        for f in range(WIDE_FOLDS):
            m, _ = fit(windows[fold != f])
            held_out[fold == f] = m.score_batch(windows[fold == f])
        boundary = robust_boundary(held_out)
        outlying = set(keys[held_out > boundary.global_].tolist())
        inliers = np.fromiter((k not in outlying for k in keys), dtype=bool, count=len(keys))
        model, history = fit(windows[inliers])
        errors = held_out
    else:
        model, history = fit(windows)
        errors = model.score_batch(windows)
        boundary = robust_boundary(errors)
        outlying = set(keys[errors > boundary.global_].tolist())
    rows = {
        "cross_fit_folds": WIDE_FOLDS if len(uniq) >= 2 * WIDE_FOLDS else 0,
        "robust_z": ROBUST_Z,
        "error_median": float(np.median(errors)),
        "error_mad": float(np.median(np.abs(errors - np.median(errors)))),
        # training rows beyond the boundary (left out of the final fit when cross-fitted)
        "outlying": sorted(str(k) for k in outlying),
    }
    return model, history, errors, boundary, rows


def train_and_save(dataset: Dataset, opts: TrainOptions, out_dir: str | Path) -> Artifact:
    art = train(dataset, opts)
    return save_artifact(out_dir, art.model, art.scalers, art.thresholds, art.metadata)
