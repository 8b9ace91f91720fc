"""The offline path: series -> window buffer -> micro-batches -> model -> threshold.

The same modules the streaming service uses (``window``, ``batcher``, the model's
batched scorer, ``threshold``), applied to whole files.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream_detector.artifact import Artifact
from stream_detector.batcher import batches
from stream_detector.datasets import Dataset, Series
from stream_detector.errors import InputError
from stream_detector.window import WindowBuffer

OUTPUT_HEADER = ["timestamp", "key", "value", "score", "threshold", "anomaly_score", "is_anomaly"]


@dataclass
class ScoredSeries:
    """Per-point results for one series; NaN score until the first window is full.

    Each point carries the result of the latest window ending at or before it.
    ``window_score`` holds the score of windows ending exactly at a point (NaN elsewhere).
    """

    series: Series
    score: np.ndarray
    threshold: np.ndarray
    anomaly_score: np.ndarray
    is_anomaly: np.ndarray
    window_score: np.ndarray


def score_dataset(art: Artifact, dataset: Dataset, max_batch: int = 1024) -> list[ScoredSeries]:
    """Score every series of ``dataset`` with ``art``."""
    if dataset.n_features != art.n_features:
        raise InputError(
            f"{dataset.files[0]}: data has {dataset.n_features} feature(s) "
            f"({', '.join(dataset.feature_names)}), the model expects {art.n_features} "
            f"({', '.join(art.features)})"
        )
    buf = WindowBuffer(art.window, art.n_features, hop=art.hop)
    all_windows, metas = [], []
    for i, s in enumerate(dataset.series):
        scaled = art.scalers.for_key(s.key).transform(s.values)
        w, _, end_index = buf.extend(s.key, s.ts, scaled)
        buf.drop([s.key])
        all_windows.append(w)
        metas.extend((i, int(j)) for j in end_index)
    windows = np.concatenate(all_windows) if all_windows else np.zeros((0, art.window, art.n_features))
    scores = np.zeros(len(metas), dtype=np.float64)
    done = 0
    for batch in batches(windows, list(range(len(metas))), max_batch):
        scores[done : done + len(batch)] = art.model.score_batch(batch.windows)
        done += len(batch)

    out = []
    series_idx = np.fromiter((m[0] for m in metas), dtype=np.int64, count=len(metas))
    end_idx = np.fromiter((m[1] for m in metas), dtype=np.int64, count=len(metas))
    for i, s in enumerate(dataset.series):
        sel = series_idx == i
        n = len(s)
        wscore = np.full(n, np.nan)
        wscore[end_idx[sel]] = scores[sel]
        # carry each window's result forward to the points before the next window ends
        has = ~np.isnan(wscore)
        pos = np.where(has, np.arange(n), -1)
        np.maximum.accumulate(pos, out=pos)
        score = np.where(pos >= 0, wscore[np.maximum(pos, 0)], np.nan)
        thr_key = art.thresholds.for_key(s.key)
        thr = np.full(n, thr_key)
        _, a, flag = art.thresholds.decide([s.key] * n, np.nan_to_num(score, nan=0.0))
        a = np.where(np.isnan(score), np.nan, a)
        flag = flag & ~np.isnan(score)
        out.append(ScoredSeries(s, score, thr, a, flag, wscore))
    return out


def _fmt(x: float) -> str:
    return "" if np.isnan(x) else f"{x:.6g}"


def write_scores(results: list[ScoredSeries], path: str | Path) -> int:
    """Write the contract's CSV in input order; returns rows written."""
    rows = []
    for order, r in enumerate(results):
        s = r.series
        for i in range(len(s)):
            key = s.row_keys[i] if s.row_keys is not None else s.key
            rows.append((
                s.source, int(s.lines[i]), order, i,
                [s.timestamps[i], key, f"{float(s.values[i, 0]):.6g}", _fmt(r.score[i]),
                 _fmt(r.threshold[i]), _fmt(r.anomaly_score[i]), str(int(r.is_anomaly[i]))],
            ))
    rows.sort(key=lambda t: (t[0], t[1], t[2], t[3]))
    out = Path(path)
    if out.parent and not out.parent.exists():
        raise InputError(f"{out}: directory {out.parent} does not exist")
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(OUTPUT_HEADER)
        for *_, row in rows:
            w.writerow(row)
    return len(rows)
