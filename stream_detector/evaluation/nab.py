"""Numenta Anomaly Benchmark (NAB) scoring, re-implemented with numpy.

This module reproduces the scoring of NAB v1.1 (numenta/NAB: ``nab/sweeper.py``,
``nab/optimizer.py``, ``nab/scorer.py``, the normalisation in ``nab/runner.py``
and ``getProbationaryLength`` in ``nab/util.py``) without pandas or NAB itself.

The rules, as NAB implements them:

* Every labelled anomaly window ``[start, end]`` (timestamps, both inclusive)
  is mapped to row indices by the *first* row whose timestamp equals the
  window's start, and the first row whose timestamp equals its end. The
  detector's rows are matched to the data rows by position, never by
  timestamp (a few files repeat or step back timestamps).
* The first ``min(floor(0.15 * n), 0.15 * 5000)`` rows of each file (at most 750)
  are the probationary period and are ignored.
* A row ``i`` inside a window of width ``w`` whose last row is ``r`` has the
  relative position ``p = -(r - i + 1) / w`` (``-1`` at the window's first row).
  Detecting it is worth ``tpWeight * S(p) / S(-1)``, with the scaled sigmoid
  ``S(p) = 2 / (1 + exp(5 p)) - 1`` (and ``S(p) = -1`` for ``p >= 3``). Only the
  best (that is, the earliest) detection in a window counts; an undetected
  window costs ``-fnWeight``.
* A detection outside every window is worth ``fpWeight * S(p)``, where
  ``p = |r - i| / (w - 1)`` is measured from the last row ``r`` of the preceding
  window of width ``w``; before the first window ``p = 3`` (so ``S = -1``).
* The threshold is optimised per profile: every distinct anomaly score of the
  scorable rows of the whole corpus (plus NAB's start value 1.1, meaning
  "nothing detected") is tried as threshold, a row being detected when its
  score is ``>=`` the threshold, and the corpus total is maximised.
* The total is normalised to 0..100 between the null detector (which never
  detects and scores ``-fnWeight`` per window) and the perfect detector (which
  scores ``tpWeight`` per labelled window): ``100 (raw - null) / (perfect - null)``.

The corpus geometry (window positions, per-row weights) does not depend on
the detector, so :class:`NABCorpus` computes it once and can score many
detectors; a full 58-file, three-profile sweep takes a fraction of a second
once the scores are in memory.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_PROBATIONARY_PERCENT",
    "NO_DETECTION_THRESHOLD",
    "PROFILE_NAMES",
    "CostMatrix",
    "FileGeometry",
    "NABCorpus",
    "ProfileResult",
    "ThresholdSweep",
    "load_corpus",
    "load_profiles",
    "load_results_dir",
    "load_windows",
    "nab_paths",
    "perfect_detector_scores",
    "probationary_length",
    "scaled_sigmoid",
    "score_detector",
    "score_detector_detailed",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
PathLike: TypeAlias = "str | os.PathLike[str]"
Scores: TypeAlias = "Sequence[float] | npt.NDArray[Any]"
ResultsInput: TypeAlias = "PathLike | Mapping[str, Scores]"

#: The profile names of NAB's ``config/profiles.json``, in NAB's order.
PROFILE_NAMES: tuple[str, ...] = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")

#: NAB's default probationary fraction of each file.
DEFAULT_PROBATIONARY_PERCENT = 0.15

#: NAB's first threshold, which detects nothing (anomaly scores lie in [0, 1]).
NO_DETECTION_THRESHOLD = 1.1


# ---------------------------------------------------------------------------
# Basic NAB functions
# ---------------------------------------------------------------------------


def scaled_sigmoid(position: npt.ArrayLike) -> FloatArray:
    """NAB's ``scaledSigmoid``, vectorised.

    ``2 * sigmoid(-5 * p) - 1`` for ``p < 3`` and ``-1`` for ``p >= 3``.
    ``p = -1`` (first row of a window) gives 0.98661, ``p = 0`` gives 0 and
    ``p = 1`` (one window width after a window) gives -0.98661.

    Args:
        position: relative position(s) with respect to a window.

    Returns:
        The scaled sigmoid of each position, as a float64 array.
    """
    p = np.asarray(position, dtype=np.float64)
    with np.errstate(over="ignore"):
        value = 2.0 * (1.0 / (1.0 + np.exp(5.0 * p))) - 1.0
    return np.asarray(np.where(p >= 3.0, -1.0, value), dtype=np.float64)


#: ``scaledSigmoid(-1.0)``: the value of a detection at a window's first row.
MAX_TP = 2.0 * (1.0 / (1.0 + math.exp(-5.0))) - 1.0


def probationary_length(
    num_rows: int, probationary_percent: float = DEFAULT_PROBATIONARY_PERCENT
) -> int:
    """Number of leading rows NAB ignores: ``min(floor(p * n), p * 5000)``.

    NAB compares row indices ``i >= min(...)``; the value returned here is the
    first scorable index (the ceiling of NAB's possibly fractional cap), so
    rows ``i < probationary_length(n)`` are probationary. With the default
    ``p = 0.15`` this is ``min(floor(0.15 n), 750)``.

    Args:
        num_rows: number of rows of the data file.
        probationary_percent: the probationary fraction (NAB default 0.15).

    Returns:
        The number of probationary rows.
    """
    length = min(math.floor(probationary_percent * num_rows), probationary_percent * 5000)
    return int(math.ceil(length))


@dataclass(frozen=True)
class CostMatrix:
    """One NAB application profile's weights (``tnWeight`` is unused by NAB)."""

    tp_weight: float
    fp_weight: float
    fn_weight: float
    tn_weight: float = 1.0

    @classmethod
    def from_nab(cls, matrix: Mapping[str, float]) -> CostMatrix:
        """Build from NAB's ``{"tpWeight": ..., "fpWeight": ..., ...}`` mapping."""
        return cls(
            tp_weight=float(matrix["tpWeight"]),
            fp_weight=float(matrix["fpWeight"]),
            fn_weight=float(matrix["fnWeight"]),
            tn_weight=float(matrix.get("tnWeight", 1.0)),
        )


def load_profiles(path: PathLike) -> dict[str, CostMatrix]:
    """Read NAB's ``config/profiles.json``.

    Args:
        path: the profiles file; each entry holds a ``CostMatrix`` object.

    Returns:
        Profile name -> :class:`CostMatrix`, in file order.
    """
    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)
    return {name: CostMatrix.from_nab(entry["CostMatrix"]) for name, entry in raw.items()}


def _parse_timestamp(text: str) -> datetime:
    """Parse a NAB timestamp (``YYYY-MM-DD HH:MM:SS[.ffffff]``)."""
    return datetime.fromisoformat(text.strip())


def load_windows(labels_path: PathLike) -> dict[str, list[tuple[datetime, datetime]]]:
    """Read NAB's ``labels/combined_windows.json``.

    Args:
        labels_path: the windows file, ``{"category/name.csv": [[start, end], ...]}``.

    Returns:
        Relative data path -> list of ``(start, end)`` timestamps (both
        inclusive), in file order. Files without anomalies map to ``[]``.
    """
    with open(labels_path, encoding="utf-8") as handle:
        raw = json.load(handle)
    return {
        _normalise_key(name): [(_parse_timestamp(a), _parse_timestamp(b)) for a, b in windows]
        for name, windows in raw.items()
    }


def nab_paths(root: PathLike) -> tuple[Path, Path, Path]:
    """``(data_dir, labels_path, profiles_path)`` of a NAB checkout-like folder.

    Args:
        root: a folder holding ``data/``, ``labels/combined_windows.json`` and
            ``config/profiles.json``.
    """
    base = Path(root)
    return (
        base / "data",
        base / "labels" / "combined_windows.json",
        base / "config" / "profiles.json",
    )


def _normalise_key(name: str) -> str:
    """Use ``/`` as separator in a ``category/name.csv`` key."""
    return name.replace("\\", "/").strip("/")


# ---------------------------------------------------------------------------
# Corpus geometry
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FileGeometry:
    """Detector-independent scoring data of one data file.

    Attributes:
        name: ``category/name.csv``.
        num_rows: rows of the data file.
        probation: number of leading probationary rows.
        window_bounds: ``(first_row, last_row)`` of each window (inclusive).
        row_window: per row, the index of the window holding it, or -1.
        unweighted: per row, NAB's unweighted sweep score: ``S(p)`` for rows
            inside windows and rows outside them alike (see module docstring).
    """

    name: str
    num_rows: int
    probation: int
    window_bounds: tuple[tuple[int, int], ...]
    row_window: IntArray
    unweighted: FloatArray

    @property
    def num_windows(self) -> int:
        """Number of labelled windows of the file."""
        return len(self.window_bounds)

    @property
    def scorable_windows(self) -> int:
        """Windows with at least one row after the probationary period."""
        return sum(1 for _, last in self.window_bounds if last >= self.probation)


def _build_geometry(
    name: str,
    timestamps: Sequence[datetime],
    windows: Sequence[tuple[datetime, datetime]],
    probationary_percent: float,
) -> FileGeometry:
    """Place the windows of one file and compute per-row sweep scores.

    Mirrors ``Sweeper.calcSweepScore``: a window's bounds are the first rows
    whose timestamps equal its start and end (``list.index``).
    """
    n = len(timestamps)
    first_index: dict[datetime, int] = {}
    for i, ts in enumerate(timestamps):
        first_index.setdefault(ts, i)

    bounds: list[tuple[int, int]] = []
    previous_last = -1
    for start, end in windows:
        if start not in first_index or end not in first_index:
            raise ValueError(f"{name}: window ({start}, {end}) does not match data timestamps")
        first, last = first_index[start], first_index[end]
        if last < first or first <= previous_last:
            raise ValueError(f"{name}: window ({start}, {end}) is empty, unsorted or overlapping")
        bounds.append((first, last))
        previous_last = last

    row_window = np.full(n, -1, dtype=np.int64)
    # Outside windows: distance past the previous window; before any window p = 3.
    position = np.full(n, 3.0, dtype=np.float64)
    index = np.arange(n, dtype=np.float64)
    for k, (first, last) in enumerate(bounds):
        width = float(last - first + 1)
        row_window[first : last + 1] = k
        position[first : last + 1] = -(last - index[first : last + 1] + 1.0) / width
        stop = bounds[k + 1][0] if k + 1 < len(bounds) else n
        if stop > last + 1:
            if width > 1.0:
                position[last + 1 : stop] = np.abs(last - index[last + 1 : stop]) / (width - 1.0)
            else:  # NAB divides by zero here; treat as "far past the window".
                position[last + 1 : stop] = np.inf

    return FileGeometry(
        name=name,
        num_rows=n,
        probation=probationary_length(n, probationary_percent),
        window_bounds=tuple(bounds),
        row_window=row_window,
        unweighted=scaled_sigmoid(position),
    )


def _read_timestamps(path: Path) -> list[datetime]:
    """Timestamps (first column) of a NAB data CSV, header skipped."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        return [_parse_timestamp(row[0]) for row in reader if row]


# ---------------------------------------------------------------------------
# Threshold sweep
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdSweep:
    """Corpus score of every candidate threshold for one profile.

    ``thresholds[j]`` is a threshold (rows with score ``>=`` it are
    detections) and ``scores[j]`` the raw NAB total at it. The first entry is
    NAB's 1.1 ("nothing detected") unless a score equals 1.1; the others are
    the distinct anomaly scores of the scorable rows, in decreasing order.
    """

    thresholds: FloatArray
    scores: FloatArray

    @property
    def best_index(self) -> int:
        """Index of the best score (the first, i.e. highest threshold, on ties)."""
        return int(np.argmax(self.scores))

    @property
    def best_threshold(self) -> float:
        """The threshold NAB's optimiser picks."""
        return float(self.thresholds[self.best_index])

    @property
    def best_score(self) -> float:
        """The raw NAB score at the best threshold."""
        return float(self.scores[self.best_index])


@dataclass(frozen=True)
class ProfileResult:
    """NAB outcome of one detector under one profile.

    Attributes:
        profile: profile name.
        normalized: the final NAB score, 0 = null detector, 100 = perfect.
        raw: raw score at the optimised threshold.
        threshold: the optimised threshold (detections are scores ``>=`` it).
        null: raw score of the null detector.
        perfect: raw score of the perfect detector (``tpWeight`` x windows).
    """

    profile: str
    normalized: float
    raw: float
    threshold: float
    null: float
    perfect: float


@dataclass(frozen=True)
class _Events:
    """Detector-dependent but profile-independent sweep events.

    A row detected at threshold ``T`` changes the total by a weighted amount
    once ``T`` falls to the row's score. False positives contribute
    ``fp_weight * fp_value``; for windows only the earliest detected row
    counts, so each "record" row (score above every earlier scorable row of
    its window) replaces the previous earliest detection.
    """

    candidates: FloatArray  # distinct scorable scores, ascending
    fp_scores: FloatArray
    fp_values: FloatArray
    tp_scores: FloatArray  # record rows: score at which they become the earliest detection
    tp_values: FloatArray  # S(p) / S(-1) of the record row
    tp_next_values: FloatArray  # value they replace (nan: the window was undetected)
    scorable_windows: int


def _collect_events(geometries: Sequence[FileGeometry], scores: Sequence[FloatArray]) -> _Events:
    """Turn per-file anomaly scores into sweep events."""
    candidates: list[FloatArray] = []
    fp_scores: list[FloatArray] = []
    fp_values: list[FloatArray] = []
    tp_scores: list[FloatArray] = []
    tp_values: list[FloatArray] = []
    tp_next: list[FloatArray] = []
    scorable_windows = 0
    for geometry, values in zip(geometries, scores, strict=True):
        start = geometry.probation
        candidates.append(values[start:])
        outside = geometry.row_window[start:] < 0
        fp_scores.append(values[start:][outside])
        fp_values.append(geometry.unweighted[start:][outside])
        for first, last in geometry.window_bounds:
            first = max(first, start)
            if last < first:
                continue  # window entirely inside the probationary period
            scorable_windows += 1
            window_scores = values[first : last + 1]
            running_max = np.maximum.accumulate(window_scores)
            is_record = np.empty(window_scores.shape, dtype=bool)
            is_record[0] = True
            is_record[1:] = window_scores[1:] > running_max[:-1]
            record_values = geometry.unweighted[first : last + 1][is_record] / MAX_TP
            tp_scores.append(window_scores[is_record])
            tp_values.append(record_values)
            following = np.empty_like(record_values)
            following[:-1] = record_values[1:]
            following[-1] = np.nan
            tp_next.append(following)

    def cat(parts: list[FloatArray]) -> FloatArray:
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.float64)

    return _Events(
        candidates=np.unique(cat(candidates)),
        fp_scores=cat(fp_scores),
        fp_values=cat(fp_values),
        tp_scores=cat(tp_scores),
        tp_values=cat(tp_values),
        tp_next_values=cat(tp_next),
        scorable_windows=scorable_windows,
    )


def _sweep(events: _Events, cost: CostMatrix) -> ThresholdSweep:
    """Corpus total at every candidate threshold (``Sweeper.calcScoreByThreshold``)."""
    base = -cost.fn_weight * events.scorable_windows
    values = events.candidates
    tp_next = np.where(
        np.isnan(events.tp_next_values), -cost.fn_weight, cost.tp_weight * events.tp_next_values
    )
    deltas = np.concatenate(
        [cost.fp_weight * events.fp_values, cost.tp_weight * events.tp_values - tp_next]
    )
    where = np.searchsorted(values, np.concatenate([events.fp_scores, events.tp_scores]))
    per_value = np.bincount(where, weights=deltas, minlength=values.size)
    # Descending thresholds: total(v) = base + sum of deltas of rows scored >= v.
    descending = values[::-1]
    totals: FloatArray = base + np.cumsum(per_value[::-1], dtype=np.float64)
    if descending.size and descending[0] == NO_DETECTION_THRESHOLD:
        thresholds, scores = descending, totals
    else:
        thresholds = np.concatenate([[NO_DETECTION_THRESHOLD], descending])
        scores = np.concatenate([[base], totals]).astype(np.float64)
    return ThresholdSweep(thresholds=thresholds, scores=scores)


# ---------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------


class NABCorpus:
    """The NAB data files and windows, prepared for scoring detectors.

    Build it with :meth:`from_paths` (or the cached :func:`load_corpus`) and
    call :meth:`score` or :meth:`sweep` with per-file anomaly scores.
    """

    def __init__(
        self,
        geometries: Mapping[str, FileGeometry],
        probationary_percent: float = DEFAULT_PROBATIONARY_PERCENT,
    ) -> None:
        """Wrap prepared file geometries (keys ``category/name.csv``)."""
        self.files: dict[str, FileGeometry] = dict(geometries)
        self.probationary_percent = probationary_percent

    @classmethod
    def from_paths(
        cls,
        data_dir: PathLike,
        labels_path: PathLike,
        probationary_percent: float = DEFAULT_PROBATIONARY_PERCENT,
    ) -> NABCorpus:
        """Read every file named in the labels from ``data_dir``.

        Args:
            data_dir: NAB's ``data/`` folder (``<category>/<name>.csv``).
            labels_path: NAB's ``labels/combined_windows.json``.
            probationary_percent: the probationary fraction.

        Raises:
            FileNotFoundError: a labelled data file is missing.
            ValueError: a window does not match the file's timestamps.
        """
        data_root = Path(data_dir)
        geometries: dict[str, FileGeometry] = {}
        for name, windows in load_windows(labels_path).items():
            timestamps = _read_timestamps(data_root / name)
            geometries[name] = _build_geometry(name, timestamps, windows, probationary_percent)
        return cls(geometries, probationary_percent)

    @property
    def names(self) -> list[str]:
        """The ``category/name.csv`` keys, sorted."""
        return sorted(self.files)

    def _select(self, files: Iterable[str] | None) -> list[str]:
        if files is None:
            return self.names
        selected = sorted({_normalise_key(f) for f in files})
        unknown = [f for f in selected if f not in self.files]
        if unknown:
            raise KeyError(f"not in the NAB labels: {unknown}")
        return selected

    def _as_arrays(self, scores: Mapping[str, Scores], names: Sequence[str]) -> list[FloatArray]:
        normalised = {_normalise_key(k): v for k, v in scores.items()}
        missing = [n for n in names if n not in normalised]
        if missing:
            raise KeyError(
                f"no anomaly scores for {len(missing)} file(s), e.g. {missing[:3]}; "
                "pass files=... to score a subset"
            )
        arrays: list[FloatArray] = []
        for name in names:
            values = np.asarray(normalised[name], dtype=np.float64).reshape(-1)
            expected = self.files[name].num_rows
            if values.size != expected:
                raise ValueError(f"{name}: {values.size} anomaly scores for {expected} rows")
            if not np.all(np.isfinite(values)):
                raise ValueError(f"{name}: anomaly scores must be finite")
            arrays.append(values)
        return arrays

    def sweep(
        self,
        scores: Mapping[str, Scores],
        cost: CostMatrix,
        files: Iterable[str] | None = None,
    ) -> ThresholdSweep:
        """Raw corpus score at every candidate threshold for one profile.

        Args:
            scores: ``{"category/name.csv": anomaly score per row}``.
            cost: the profile's weights.
            files: restrict to these files (default: every labelled file).
        """
        names = self._select(files)
        events = _collect_events([self.files[n] for n in names], self._as_arrays(scores, names))
        return _sweep(events, cost)

    def perfect_raw(self, cost: CostMatrix, files: Iterable[str] | None = None) -> float:
        """NAB's perfect score: ``tpWeight`` times the number of labelled windows."""
        names = self._select(files)
        return cost.tp_weight * sum(self.files[n].num_windows for n in names)

    def null_raw(self, cost: CostMatrix, files: Iterable[str] | None = None) -> float:
        """Raw score of NAB's null detector (all scores 0), threshold optimised."""
        names = self._select(files)
        zeros = {n: np.zeros(self.files[n].num_rows) for n in names}
        return self.sweep(zeros, cost, names).best_score

    def score(
        self,
        scores: Mapping[str, Scores],
        profiles: Mapping[str, CostMatrix],
        files: Iterable[str] | None = None,
    ) -> dict[str, ProfileResult]:
        """Optimise the threshold and normalise, for every profile.

        Args:
            scores: ``{"category/name.csv": anomaly score per row}`` (rows
                matched to the data file by position).
            profiles: profile name -> weights (see :func:`load_profiles`).
            files: restrict to these files (default: every labelled file);
                the null and perfect baselines are then over the subset too.

        Returns:
            Profile name -> :class:`ProfileResult`.
        """
        names = self._select(files)
        geometries = [self.files[n] for n in names]
        events = _collect_events(geometries, self._as_arrays(scores, names))
        null_events = _collect_events(geometries, [np.zeros(g.num_rows) for g in geometries])
        results: dict[str, ProfileResult] = {}
        for profile, cost in profiles.items():
            sweep = _sweep(events, cost)
            null = _sweep(null_events, cost).best_score
            perfect = cost.tp_weight * sum(g.num_windows for g in geometries)
            span = perfect - null
            normalized = 100.0 * (sweep.best_score - null) / span if span else float("nan")
            results[profile] = ProfileResult(
                profile=profile,
                normalized=normalized,
                raw=sweep.best_score,
                threshold=sweep.best_threshold,
                null=null,
                perfect=perfect,
            )
        return results


@lru_cache(maxsize=8)
def _cached_corpus(data_dir: str, labels_path: str, probationary_percent: float) -> NABCorpus:
    return NABCorpus.from_paths(data_dir, labels_path, probationary_percent)


def load_corpus(
    data_dir: PathLike,
    labels_path: PathLike,
    probationary_percent: float = DEFAULT_PROBATIONARY_PERCENT,
) -> NABCorpus:
    """:meth:`NABCorpus.from_paths`, cached per (resolved) paths and fraction."""
    return _cached_corpus(
        str(Path(data_dir).resolve()), str(Path(labels_path).resolve()), probationary_percent
    )


# ---------------------------------------------------------------------------
# Detector results
# ---------------------------------------------------------------------------


def _read_anomaly_scores(path: Path) -> FloatArray:
    """The ``anomaly_score`` column of a NAB results CSV."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader)]
        try:
            column = header.index("anomaly_score")
        except ValueError:
            raise ValueError(f"{path}: no anomaly_score column") from None
        return np.array([float(row[column]) for row in reader if row], dtype=np.float64)


def load_results_dir(results_dir: PathLike, known: Iterable[str]) -> dict[str, FloatArray]:
    """Read a detector's results folder in NAB layout.

    Files are ``<results_dir>/<category>/<detector>_<name>.csv`` (NAB) or
    ``<results_dir>/<category>/<name>.csv``, with an ``anomaly_score``
    column. NAB's ``*_scores.csv`` summaries are skipped, and so are CSVs
    that match no known data file.

    Args:
        results_dir: the detector's folder, e.g. ``results/numenta``.
        known: the ``category/name.csv`` keys to look for.

    Returns:
        ``{"category/name.csv": anomaly scores}``.

    Raises:
        ValueError: two result files map to the same data file.
    """
    root = Path(results_dir)
    by_category: dict[str, set[str]] = {}
    for key in known:
        category, _, filename = _normalise_key(key).rpartition("/")
        by_category.setdefault(category, set()).add(filename)

    found: dict[str, FloatArray] = {}
    for category, filenames in by_category.items():
        folder = root / category if category else root
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.csv")):
            if path.name.endswith("_scores.csv") and path.name not in filenames:
                continue
            if path.name in filenames:
                match = path.name
            else:
                candidates = [f for f in filenames if path.name.endswith("_" + f)]
                if not candidates:
                    continue
                match = max(candidates, key=len)
            key = f"{category}/{match}" if category else match
            if key in found:
                raise ValueError(f"several result files for {key} in {folder}")
            found[key] = _read_anomaly_scores(path)
    return found


def perfect_detector_scores(corpus: NABCorpus) -> dict[str, FloatArray]:
    """NAB's perfect detector: score 1 at the first row of each window, else 0."""
    out: dict[str, FloatArray] = {}
    for name, geometry in corpus.files.items():
        values = np.zeros(geometry.num_rows, dtype=np.float64)
        for first, _ in geometry.window_bounds:
            values[first] = 1.0
        out[name] = values
    return out


# ---------------------------------------------------------------------------
# One-call API
# ---------------------------------------------------------------------------


def score_detector_detailed(
    results: ResultsInput,
    data_dir: PathLike,
    labels_path: PathLike,
    profiles_path: PathLike,
    *,
    files: Iterable[str] | None = None,
    probationary_percent: float = DEFAULT_PROBATIONARY_PERCENT,
) -> dict[str, ProfileResult]:
    """Score a detector the NAB way; one :class:`ProfileResult` per profile.

    Args:
        results: a results folder in NAB layout (see :func:`load_results_dir`)
            or ``{"category/name.csv": anomaly score per row}``.
        data_dir: NAB's ``data/`` folder.
        labels_path: NAB's ``labels/combined_windows.json``.
        profiles_path: NAB's ``config/profiles.json``.
        files: score only these files (default: every labelled file; results
            must then cover all of them).
        probationary_percent: the probationary fraction (NAB: 0.15).
    """
    corpus = load_corpus(data_dir, labels_path, probationary_percent)
    if isinstance(results, Mapping):
        scores: Mapping[str, Scores] = results
    else:
        scores = load_results_dir(results, corpus.names)
    return corpus.score(scores, load_profiles(profiles_path), files)


def score_detector(
    results: ResultsInput,
    data_dir: PathLike,
    labels_path: PathLike,
    profiles_path: PathLike,
    *,
    files: Iterable[str] | None = None,
    probationary_percent: float = DEFAULT_PROBATIONARY_PERCENT,
) -> dict[str, float]:
    """Normalised NAB scores per profile, plus the optimised thresholds.

    Arguments as :func:`score_detector_detailed`.

    Returns:
        ``{profile: score}`` for each profile (0 = null detector, 100 =
        perfect), plus ``{profile + "_threshold": threshold}``.
    """
    detailed = score_detector_detailed(
        results,
        data_dir,
        labels_path,
        profiles_path,
        files=files,
        probationary_percent=probationary_percent,
    )
    out: dict[str, float] = {name: r.normalized for name, r in detailed.items()}
    out.update({f"{name}_threshold": r.threshold for name, r in detailed.items()})
    return out
