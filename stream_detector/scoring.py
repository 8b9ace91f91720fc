"""The offline path: series -> windows -> micro-batches -> model -> decider.

The same modules the streaming service uses (``window``, ``batcher``, the model's
batched scorer, ``decision``), applied to whole files.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream_detector.artifact import Artifact
from stream_detector.batcher import batches
from stream_detector.datasets import Dataset, Series
from stream_detector.decision import (
    Decider,
    Decision,
    Newest,
    make_decider,
    overlap_of,
    reason_names,
)
from stream_detector.errors import InputError
from stream_detector.explain import to_units
from stream_detector.finetune import FineTuneOptions, make_tuner
from stream_detector.gaps import GapPolicy
from stream_detector.guards import finite_rows
from stream_detector.rules import CAUSE_NAMES, Rules
from stream_detector.threshold import Thresholds
from stream_detector.window import series_windows

OUTPUT_HEADER = [
    "timestamp", "key", "value", "score", "threshold", "anomaly_score", "is_anomaly", "reason",
]


@dataclass
class ScoredSeries:
    """Per-point results for one series; NaN score until the first window is full.

    Each point carries the result of the latest window ending at or before it.
    ``window_score`` holds the score of windows ending exactly at a point (NaN elsewhere).
    ``excursion``: anomalous before alarm suppression (an incident stays open while it
    holds); ``reason``: the bits of the checks that flagged it (``decision.REASONS``).
    """

    series: Series
    score: np.ndarray
    threshold: np.ndarray
    anomaly_score: np.ndarray
    is_anomaly: np.ndarray
    window_score: np.ndarray
    excursion: np.ndarray
    reason: np.ndarray
    # (rows, features): the reconstruction of the row's point by the window ending at it,
    # in the input's units (NaN where no window ends); set by score_dataset
    expected: np.ndarray | None = None
    # with rules: why the row's alarm was muted (rules.CAUSES, 0: not), carried as the
    # flag is; and which windows a learn: false maintenance window kept from the decider
    muted: np.ndarray | None = None
    unlearned: np.ndarray | None = None


def window_scores(
    art: Artifact, dataset: Dataset, max_batch: int = 1024,
    fine_tune: FineTuneOptions | None = None, gaps: GapPolicy | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every full window of ``dataset`` through the batched model.

    Returns ``(scores, series_index, end_index)``, one entry per window, each series'
    windows in stream order. With ``fine_tune`` enabled the windows go through in that
    order, in chunks of at most ``fine_tune.every``, and the model keeps learning the
    normal ones between chunks (:mod:`~stream_detector.finetune`; series after series,
    where the service would interleave their points). The artifact's model is tuned in
    place. ``gaps``: fill or restart over gaps in each series' timestamps as ``run``
    does (:mod:`~stream_detector.gaps`); a window still ends at a row of the series.
    """
    scores, _, series_idx, end_idx = window_expected(art, dataset, max_batch, fine_tune,
                                                     gaps)
    return scores, series_idx, end_idx


def window_expected(
    art: Artifact, dataset: Dataset, max_batch: int = 1024,
    fine_tune: FineTuneOptions | None = None, gaps: GapPolicy | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`window_scores` and, from the same model calls, each window's newest point
    as reconstructed (scaled, ``(windows, features)``): ``(scores, expected,
    series_index, end_index)``."""
    if dataset.n_features != art.n_features:
        raise InputError(
            f"{dataset.files[0]}: data has {dataset.n_features} feature(s) "
            f"({', '.join(dataset.feature_names)}), the model expects {art.n_features} "
            f"({', '.join(art.features)})"
        )
    all_windows: list[np.ndarray] = []
    metas: list[tuple[int, int]] = []
    for i, s in enumerate(dataset.series):
        scaled = art.scalers.for_key(s.key).transform(s.values)
        w, end_index = series_windows(scaled, art.window, art.hop, s.ts, gaps)
        all_windows.append(w)
        metas.extend((i, int(j)) for j in end_index)
    windows = np.concatenate(all_windows) if all_windows else np.zeros((0, art.window, art.n_features))
    scores = np.zeros(len(metas), dtype=np.float64)
    expected = np.zeros((len(metas), art.n_features), dtype=np.float32)
    tuner = make_tuner(art.model, art.thresholds, fine_tune)
    step = min(max_batch, tuner.opts.every) if tuner else max_batch
    done = 0
    for batch in batches(windows, list(range(len(metas))), step):
        part = art.model.explain_batch(batch.windows)
        scores[done : done + len(batch)] = part.scores
        expected[done : done + len(batch)] = part.expected
        if tuner is not None:
            keys = [dataset.series[metas[j][0]].key for j in batch.metas]
            tuner.after_batch(keys, batch.windows, part.scores)
        done += len(batch)
    series_idx = np.fromiter((m[0] for m in metas), dtype=np.int64, count=len(metas))
    end_idx = np.fromiter((m[1] for m in metas), dtype=np.int64, count=len(metas))
    return scores, expected, series_idx, end_idx


def newest_values(values: np.ndarray, end_idx: np.ndarray, new_points: int) -> Newest:
    """Per window ending at row ``end_idx[i]``: its newest ``new_points`` rows, as
    ``(windows, new_points, features)`` (``values``: rows x features)."""
    v = np.asarray(values, dtype=np.float32).reshape(len(values), -1)
    end_idx = np.asarray(end_idx, dtype=np.int64)
    k = max(new_points, 1)
    # (rows - k + 1, features, k) view: the k rows ending at each row
    view = np.lib.stride_tricks.sliding_window_view(v, k, axis=0)
    return np.ascontiguousarray(view[end_idx - k + 1].transpose(0, 2, 1))


def decide_series(
    decider: Decider, thresholds: Thresholds, s: Series, scores: np.ndarray,
    end_idx: np.ndarray, new_points: int = 1, rules: Rules | None = None,
) -> ScoredSeries:
    """Run one series' window ``scores`` (ending at rows ``end_idx``) through ``decider``.

    The windows go through ``decide`` in stream order, as the service would see them;
    each row carries the result of the latest window ending at or before it (rows before
    the first window carry the key's static threshold, no score and no flag).
    ``new_points``: how many of a window's rows are new to it (``min(hop, window)``);
    their values go to deciders that check them (``Decider.wants_values``).
    ``rules``: applied as ``run`` applies them (:meth:`Rules.apply`).
    """
    return decide_many(decider, thresholds, [s], [scores], [end_idx], new_points, rules)[0]


def decide_many(
    decider: Decider, thresholds: Thresholds, series: list[Series],
    scores: list[np.ndarray], end_idx: list[np.ndarray], new_points: int = 1,
    rules: Rules | None = None, expected: list[np.ndarray] | None = None,
) -> list[ScoredSeries]:
    """:func:`decide_series` for several series at once: their windows go to the decider
    in one call (each series' in stream order), as a batch from many keys would.
    ``expected``: per series, each window's newest point as reconstructed, in input units
    (windows, features), for rules that judge direction or deviation."""
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    kept_expected: list[np.ndarray] = []
    for j, (sc, ends) in enumerate(zip(scores, end_idx)):
        sc = np.asarray(sc, np.float64)
        keep = finite_rows(sc)
        # an overflowed error decides nothing (guards.py); rows carry on
        kept.append((sc, np.asarray(ends)) if keep is None else (sc[keep], np.asarray(ends)[keep]))
        if expected is not None:
            kept_expected.append(expected[j] if keep is None else expected[j][keep])
    keys = [s.key for s, (sc, _) in zip(series, kept) for _ in range(len(sc))]
    all_scores = np.concatenate([sc for sc, _ in kept]) if kept else np.zeros(0)
    newest = None
    if decider.wants_values and len(all_scores):
        newest = np.concatenate([newest_values(s.values, ends, new_points)
                                 for s, (sc, ends) in zip(series, kept) if len(sc)])
    muting = None
    if rules is None:
        d = decider.decide(keys, all_scores, newest)
    else:
        def decide(idx: np.ndarray | None) -> Decision:
            if idx is None:
                return decider.decide(keys, all_scores, newest)
            return decider.decide([keys[i] for i in idx.tolist()], all_scores[idx],
                                  None if newest is None else newest[idx])

        live = [(s, ends) for s, (sc, ends) in zip(series, kept) if len(sc)]
        ts = np.concatenate([s.ts[ends] for s, ends in live]) if live else np.zeros(0)
        actual = (np.concatenate([s.values[ends] for s, ends in live]) if live
                  else np.zeros((0, 1)))
        exp = (np.concatenate([e for e, (sc, _) in zip(kept_expected, kept) if len(sc)])
               if expected is not None and live else None)
        d, muting = rules.apply(decide, keys, ts, thresholds.for_key, actual, exp)
    out = []
    at = 0
    for s, (sc, ends) in zip(series, kept):
        part = slice(at, at + len(sc))
        at += len(sc)
        r = _carry(s, thresholds, sc, ends, [f[part] for f in d])
        if muting is not None:
            r.muted, r.unlearned = _carry_muted(len(s), ends, muting.cause[part],
                                                muting.unlearned[part])
        out.append(r)
    return out


def _carry_muted(n: int, ends: np.ndarray, cause: np.ndarray, unlearned: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the muting cause of the latest window ending at or before it, and whether
    a window ending there was kept from the decider."""
    wcause = np.zeros(n, dtype=np.uint8)
    wun = np.zeros(n, dtype=bool)
    wcause[ends], wun[ends] = cause, unlearned
    pos = _latest_end(n, ends)
    return np.where(pos >= 0, wcause[np.maximum(pos, 0)], 0).astype(np.uint8), wun


def _latest_end(n: int, ends: np.ndarray) -> np.ndarray:
    """Per row of ``n``: the row of the latest window ending at or before it (``ends``),
    -1 before the first."""
    has = np.zeros(n, dtype=bool)
    has[ends] = True
    pos = np.where(has, np.arange(n), -1)
    np.maximum.accumulate(pos, out=pos)
    return pos


def muted_counts(results: list[ScoredSeries]) -> tuple[dict[str, int], int]:
    """Muted alarms by cause name, and windows kept from the decider, over ``results``."""
    by_cause = dict.fromkeys(CAUSE_NAMES.values(), 0)
    unlearned = 0
    for r in results:
        if r.muted is None or r.unlearned is None:
            continue
        at = ~np.isnan(r.window_score) & ~r.unlearned
        for code, name in CAUSE_NAMES.items():
            by_cause[name] += int(np.count_nonzero(r.muted[at] == code))
        unlearned += int(r.unlearned.sum())
    return by_cause, unlearned


def _carry(s: Series, thresholds: Thresholds, scores: np.ndarray, end_idx: np.ndarray,
           d: list[np.ndarray]) -> ScoredSeries:
    """Each row gets the result of the latest window ending at or before it."""
    n = len(s)
    wscore = np.full(n, np.nan)
    wthr = np.full(n, np.nan)
    wa = np.full(n, np.nan)
    wflag = np.zeros(n, dtype=bool)
    wexc = np.zeros(n, dtype=bool)
    wreason = np.zeros(n, dtype=np.uint8)
    if len(scores):
        threshold, anomaly, flag, excursion, reason = d
        wscore[end_idx] = scores
        wthr[end_idx] = threshold
        wa[end_idx] = anomaly
        wflag[end_idx] = flag
        wexc[end_idx] = excursion
        wreason[end_idx] = reason
    pos = _latest_end(n, end_idx)
    started = pos >= 0
    at = np.maximum(pos, 0)
    score = np.where(started, wscore[at], np.nan)
    thr_row = np.where(started, wthr[at], thresholds.for_key(s.key))
    a_row = np.where(started, wa[at], np.nan)
    flag_row = started & wflag[at]
    exc_row = started & wexc[at]
    reason_row = np.where(started, wreason[at], 0).astype(np.uint8)
    return ScoredSeries(s, score, thr_row, a_row, flag_row, wscore, exc_row, reason_row)


def score_dataset(
    art: Artifact, dataset: Dataset, max_batch: int = 1024,
    decision: Mapping[str, Any] | None = None, fine_tune: FineTuneOptions | None = None,
    rules: Rules | None = None,
    gaps: GapPolicy | None = None,
) -> list[ScoredSeries]:
    """Score every series of ``dataset`` with ``art``.

    ``decision`` overrides the artifact's decision spec (``metadata["decision"]``);
    the decider is built by :func:`~stream_detector.decision.make_decider`, as in ``run``.
    ``fine_tune``: keep learning normal windows while scoring (see ``window_scores``);
    ``gaps``: the gap policy (see ``window_scores``).
    All series are decided together, each in stream order (as ``run`` decides a batch
    from many keys). ``rules``: ``--rules``, applied as ``run`` applies them.
    """
    scores, expected, series_idx, end_idx = window_expected(art, dataset, max_batch,
                                                            fine_tune, gaps)
    spec = decision if decision is not None else art.metadata.get("decision")
    decider = make_decider(art.thresholds, spec, art.value_ranges, art.periods_at(art.hop),
                           overlap_of(art.window, art.hop))
    sel = [series_idx == i for i in range(len(dataset.series))]
    units = [to_units(art.scalers.for_key(s.key), expected[m])
             for s, m in zip(dataset.series, sel)]
    out = decide_many(decider, art.thresholds, list(dataset.series),
                      [scores[m] for m in sel], [end_idx[m] for m in sel],
                      min(art.hop, art.window), rules, units)
    for r, m, u in zip(out, sel, units):
        rows = np.full((len(r.series), art.n_features), np.nan)
        rows[end_idx[m]] = u
        r.expected = rows
    return out


def _fmt(x: float) -> str:
    return "" if np.isnan(x) else f"{x:.6g}"


def expected_header(features: list[str]) -> list[str]:
    """The CSV's ``expected`` column(s): one for a one-feature model, else one per
    feature (``expected_<feature>``)."""
    return ["expected"] if len(features) <= 1 else [f"expected_{f}" for f in features]


def _muted(r: ScoredSeries, i: int) -> str:
    return "" if r.muted is None or not r.muted[i] else CAUSE_NAMES[int(r.muted[i])]


def write_scores(results: list[ScoredSeries], path: str | Path,
                 features: list[str] | None = None) -> int:
    """Write the contract's CSV in input order; returns rows written. ``features``: the
    model's feature names (the ``expected`` columns). Scored with rules, a last column
    ``muted``: why the row's alarm was muted (empty when not)."""
    names = features or ["value"]
    ruled = any(r.muted is not None for r in results)
    rows = []
    for order, r in enumerate(results):
        s = r.series
        exp = r.expected if r.expected is not None else np.full((len(s), len(names)), np.nan)
        for i in range(len(s)):
            key = s.row_keys[i] if s.row_keys is not None else s.key
            rows.append((
                s.source, int(s.lines[i]), order, i,
                [s.timestamps[i], key, f"{float(s.values[i, 0]):.6g}", _fmt(r.score[i]),
                 _fmt(r.threshold[i]), _fmt(r.anomaly_score[i]), str(int(r.is_anomaly[i])),
                 "+".join(reason_names(int(r.reason[i]))) if r.is_anomaly[i] else "",
                 *(_fmt(float(v)) for v in exp[i]), *([_muted(r, i)] if ruled else [])],
            ))
    rows.sort(key=lambda t: (t[0], t[1], t[2], t[3]))
    out = Path(path)
    if out.parent and not out.parent.exists():
        raise InputError(f"{out}: directory {out.parent} does not exist")
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(OUTPUT_HEADER + expected_header(names) + (["muted"] if ruled else []))
        for *_, row in rows:
            w.writerow(row)
    return len(rows)
