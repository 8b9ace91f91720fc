"""The Python API: train on arrays, score arrays offline, detect online without Kafka.

Each function goes through the same modules as a command: :func:`train` as ``train``
(:func:`stream_detector.training.train`), :func:`score` as ``score``
(:func:`stream_detector.scoring.score_dataset`), and :class:`OnlineDetector` as ``run``
(``WindowBuffer`` -> ``MicroBatcher`` -> the model's ``score_batch`` -> the decider of
:func:`stream_detector.decision.make_decider`). TensorFlow is imported when a model is
built, loaded or scored, not when this module is.

Data is a numpy array ``(n,)`` or ``(n, features)`` (one series), a mapping of series
key to such arrays, or a pandas DataFrame in the ``long`` layout: optional ``key`` and
``timestamp`` columns, the other columns the features.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from stream_detector.errors import InputError, InvalidRecord

if TYPE_CHECKING:
    from stream_detector.artifact import Artifact
    from stream_detector.datasets import Dataset

_F32_MAX = float(np.finfo(np.float32).max)


def _default(command: str, option: str) -> Any:
    """The command-line default of ``option`` (config.py defines each once)."""
    from stream_detector.config import COMMAND_OPTS

    return next(o.default for o in COMMAND_OPTS[command] if o.name == option)


# -- data in ----------------------------------------------------------------------------
def _is_dataframe(data: object) -> bool:
    pd = sys.modules.get("pandas")  # a DataFrame can only exist once pandas is imported
    return pd is not None and isinstance(data, pd.DataFrame)


def _epoch(ts: Any) -> float:
    if isinstance(ts, datetime):
        return ts.timestamp()
    if isinstance(ts, np.datetime64):
        return float(ts.astype("datetime64[us]").astype(np.int64)) / 1e6
    if isinstance(ts, str):
        from stream_detector.datasets import parse_timestamp

        return parse_timestamp(ts)
    if hasattr(ts, "timestamp"):  # pandas.Timestamp
        return float(ts.timestamp())
    return float(ts)


def _series_arrays(values: Any, ts: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(values (n, F) float64, ts (n,) float64 epoch seconds), checked."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2 or v.shape[0] == 0:
        raise InputError(f"{where}: expected a non-empty array of shape (n,) or (n, features), "
                         f"got shape {v.shape}")
    bad = np.flatnonzero(~np.isfinite(v).all(axis=1) | (np.abs(v) > _F32_MAX).any(axis=1))
    if bad.size:
        raise InputError(f"{where}: row {int(bad[0])} is NaN, infinite or beyond float32 range")
    if ts is None:
        t = np.arange(len(v), dtype=np.float64)
    else:
        t = np.array([_epoch(x) for x in np.asarray(ts, dtype=object).reshape(-1)])
        if len(t) != len(v):
            raise InputError(f"{where}: {len(t)} timestamps for {len(v)} rows")
    return v, t


def _dataframe_parts(df: Any) -> tuple[list[tuple[str, np.ndarray, Any]], list[str]]:
    """A long-layout DataFrame -> [(key, row positions, timestamps or None)], features."""
    features = [str(c) for c in df.columns if c not in ("key", "timestamp")]
    if not features:
        raise InputError("DataFrame: no feature columns (every column but key and timestamp)")
    keys = (df["key"].astype(str).to_numpy() if "key" in df.columns
            else np.full(len(df), "series", dtype=object))
    ts_all = df["timestamp"].to_numpy() if "timestamp" in df.columns else None
    parts = []
    for k in dict.fromkeys(keys.tolist()):  # keys in order of first appearance
        rows = np.flatnonzero(keys == k)
        parts.append((str(k), rows, None if ts_all is None else ts_all[rows]))
    return parts, features


def to_dataset(data: Any, timestamps: Any = None, records: bool = False) -> Dataset:
    """Build a :class:`~stream_detector.datasets.Dataset` from arrays or a DataFrame.

    ``timestamps``: epoch seconds, ISO-8601 strings or datetimes, one per row (one array
    for an array, a mapping of key to array for a mapping); positions 0, 1, ... when
    omitted. ``records``: each row is one record of features (``feedforward``, window 1).
    """
    from stream_detector.datasets import Dataset, Series

    fmt = "records" if records else "long"
    series: list[Series] = []

    def add(key: str, values: Any, ts: Any, source: str, lines: np.ndarray | None) -> None:
        v, t = _series_arrays(values, ts, f"{source}, series {key!r}")
        if series and v.shape[1] != series[0].values.shape[1]:
            raise InputError(f"{source}, series {key!r}: {v.shape[1]} feature(s), the first "
                             f"series has {series[0].values.shape[1]}")
        series.append(Series(key=key, timestamps=[f"{x:.6f}" for x in t], ts=t, values=v,
                             source=source,
                             lines=np.arange(len(v)) if lines is None else lines))

    if _is_dataframe(data):
        parts, features = _dataframe_parts(data)
        matrix = data[features].to_numpy(dtype=np.float64)
        for key, rows, ts in parts:
            add(key, matrix[rows], ts, "DataFrame", rows)
        return Dataset(fmt=fmt, series=series, feature_names=features)
    if isinstance(data, Mapping):
        if not data:
            raise InputError("no series given")
        ts_of = timestamps if isinstance(timestamps, Mapping) else {}
        for key, values in data.items():
            add(str(key), values, ts_of.get(key), "mapping", None)
    else:
        add("series", data, timestamps, "array", None)
    n = series[0].values.shape[1]
    names = ["value"] if n == 1 else ["value", *(f"value_{i}" for i in range(1, n))]
    return Dataset(fmt=fmt, series=series, feature_names=names)


# -- train, save, load -----------------------------------------------------------------
def train(data: Any, *, timestamps: Any = None, model: str | None = None, records: bool = False,
          **options: Any) -> Artifact:
    """Fit an autoencoder on ``data`` and calibrate its decision, as ``train`` does.

    Parameters
    ----------
    data: an array (n,) or (n, features), a mapping of key to arrays, or a DataFrame
        (see the module docstring).
    timestamps: optional, one per row (see :func:`to_dataset`).
    model: the model kind (``conv1d``, ``lstm``, ``conv1d-seq``, ``cnn-lstm``, ``bilstm``,
        ``feedforward`` with ``records=True``); None: train's default for the data
        (:func:`~stream_detector.training.default_kind`).
    options: any field of :class:`~stream_detector.training.TrainOptions` (``window``,
        ``epochs``, ``seed``, ``decision``, ``threshold_quantile``, ...); the defaults
        are ``train``'s.

    Returns the (unsaved) :class:`~stream_detector.artifact.Artifact`; :func:`save` writes it.
    """
    from stream_detector.training import TrainOptions
    from stream_detector.training import train as train_dataset

    return train_dataset(to_dataset(data, timestamps, records),
                         TrainOptions(kind=model, **options))


def save(artifact: Artifact, path: str | Path) -> Artifact:
    """Write ``artifact`` to the directory ``path``; returns it with its ``version``."""
    from stream_detector.artifact import save_artifact

    return save_artifact(path, artifact.model, artifact.scalers, artifact.thresholds,
                         artifact.metadata)


def load(path: str | Path) -> Artifact:
    """Load and verify a model directory written by ``train`` or :func:`save`."""
    from stream_detector.artifact import load_artifact

    return load_artifact(path)


def _artifact(artifact: Artifact | str | Path) -> Artifact:
    return load(artifact) if isinstance(artifact, (str, Path)) else artifact


def _spec(art: Artifact, decision: str | None,
          decision_params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    from stream_detector.decision import resolve_spec

    try:
        return resolve_spec(art.metadata.get("decision"), decision, decision_params)
    except ValueError as exc:
        raise InputError(f"decision: {exc}") from None


# -- offline ----------------------------------------------------------------------------
@dataclass
class Scores:
    """Per point of one series, as in ``score``'s CSV: NaN ``score`` until the key's first
    window is full; each point carries the result of the latest window ending at or
    before it. ``reason``: the flagged checks joined by ``+`` (``""`` when not flagged);
    ``excursion``: anomalous before alarm suppression."""

    key: str
    ts: np.ndarray
    score: np.ndarray
    threshold: np.ndarray
    anomaly_score: np.ndarray
    is_anomaly: np.ndarray
    excursion: np.ndarray
    reason: list[str]


def score(artifact: Artifact | str | Path, data: Any, *, timestamps: Any = None,
          decision: str | None = None, decision_params: Mapping[str, Any] | None = None,
          max_batch: int | None = None) -> Any:
    """Score ``data`` offline through the window, batch, model and decision path of
    ``score``.

    ``artifact``: an Artifact or a model directory. ``decision`` / ``decision_params``
    override the artifact's decision, as ``score --decision`` does. Returns
    :class:`Scores` for an array, ``{key: Scores}`` for a mapping, and for a DataFrame a
    copy with the columns ``score``, ``threshold``, ``anomaly_score``, ``is_anomaly``
    and ``reason`` added.
    """
    from stream_detector.decision import reason_names
    from stream_detector.scoring import score_dataset

    art = _artifact(artifact)
    ds = to_dataset(data, timestamps, art.record_mode)
    if ds.n_features != art.n_features:
        raise InputError(f"data has {ds.n_features} feature(s), the model expects "
                         f"{art.n_features}")
    for s in ds.series:
        if len(s) < art.window:
            raise InputError(f"series {s.key!r} has {len(s)} point(s), fewer than the "
                             f"model's window of {art.window}")
    batch = max_batch if max_batch is not None else int(_default("score", "max_batch"))
    results = score_dataset(art, ds, max_batch=batch,
                            decision=_spec(art, decision, decision_params))
    out = {}
    for r in results:
        reasons = ["+".join(reason_names(int(b))) if f else ""
                   for b, f in zip(r.reason.tolist(), r.is_anomaly.tolist())]
        out[r.series.key] = Scores(r.series.key, r.series.ts, r.score, r.threshold,
                                   r.anomaly_score, r.is_anomaly, r.excursion, reasons)
    if _is_dataframe(data):
        frame = data.copy()
        cols: dict[str, np.ndarray] = {
            "score": np.full(len(frame), np.nan), "threshold": np.full(len(frame), np.nan),
            "anomaly_score": np.full(len(frame), np.nan),
            "is_anomaly": np.zeros(len(frame), dtype=bool),
            "reason": np.full(len(frame), "", dtype=object),
        }
        for r in results:
            rows = r.series.lines
            sc = out[r.series.key]
            cols["score"][rows], cols["threshold"][rows] = sc.score, sc.threshold
            cols["anomaly_score"][rows], cols["is_anomaly"][rows] = sc.anomaly_score, sc.is_anomaly
            cols["reason"][rows] = sc.reason
        for name, col in cols.items():
            frame[name] = col
        return frame
    if isinstance(data, Mapping):
        return out
    return out["series"]


# -- online -----------------------------------------------------------------------------
class Verdict(NamedTuple):
    """The decision on one window, as ``run`` makes it (``run`` turns these into events).

    ``start``/``end``: timestamps (epoch seconds) of the window's first and last point;
    ``reason``: the checks that flagged it (``()`` when not flagged), as in an event.
    """

    key: str
    start: float
    end: float
    score: float
    threshold: float
    anomaly_score: float
    is_anomaly: bool
    excursion: bool
    reason: tuple[str, ...]


class OnlineDetector:
    """Points in, decisions out: the path of ``run`` without Kafka.

    Each :meth:`update` appends a point to its key's window buffer; every ``hop`` points
    (once the key holds a window) the window joins the batch; a full batch (or one whose
    oldest window waited ``max_batch_latency_ms``) is scaled, scored in one model call and
    decided per key, in stream order. :meth:`flush` scores what is batched.

    Parameters
    ----------
    artifact: an Artifact, or a model directory.
    hop: score every ``hop`` points (default: the artifact's).
    max_batch, max_batch_latency_ms, max_series, timestamp_policy: as ``run``'s options of
        the same names, with the same defaults. ``timestamp_policy`` ``dlq`` raises
        :class:`~stream_detector.errors.InvalidRecord` for a point that goes back in time.
    gap_policy, gap_max_fill, gap_factor: as ``run``'s ``--gap-*`` options, with the same
        defaults; :attr:`gaps` counts what they did.
    decision, decision_params: override the artifact's decision, as ``run --decision``.
    fixed_shapes: as ``run``, check at start which batch shapes score bit-identically to
        ``max_batch`` and pad to those (a window then scores the same whatever its batch;
        a fraction of a second for conv1d, tens of seconds for the recurrent kinds). It
        changes the artifact's model in place.
    """

    def __init__(
        self, artifact: Artifact | str | Path, *, hop: int | None = None,
        max_batch: int | None = None, max_batch_latency_ms: float | None = None,
        max_series: int | None = None, timestamp_policy: str | None = None,
        gap_policy: str | None = None, gap_max_fill: int | None = None,
        gap_factor: float | None = None, decision: str | None = None, decision_params: Mapping[str, Any] | None = None,
        fixed_shapes: bool = True,
    ) -> None:
        from stream_detector.batcher import MicroBatcher
        from stream_detector.decision import make_decider, overlap_of
        from stream_detector.gaps import gap_policy as make_gaps
        from stream_detector.window import TIMESTAMP_POLICIES, WindowBuffer

        art = self.artifact = _artifact(artifact)
        self.hop = hop or art.hop
        policy = timestamp_policy or str(_default("run", "timestamp_policy"))
        if policy not in TIMESTAMP_POLICIES:
            raise InputError(f"timestamp_policy must be one of {', '.join(TIMESTAMP_POLICIES)}")
        self._dlq_backwards = policy == "dlq"
        try:
            gaps = make_gaps(gap_policy or str(_default("run", "gap_policy")), gap_max_fill,
                             gap_factor, art.window)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        size = int(max_batch or _default("run", "max_batch"))
        latency = (max_batch_latency_ms if max_batch_latency_ms is not None
                   else float(_default("run", "max_batch_latency_ms")))
        self.buffer = WindowBuffer(art.window, art.n_features, self.hop,
                                   max_series or int(_default("run", "max_series")),
                                   on_evict=self._on_evict, refuse_backwards=policy != "accept",
                                   gaps=gaps)
        self.batcher: MicroBatcher[tuple[str, float, float]] = MicroBatcher(
            art.window, art.n_features, size, latency / 1000.0)
        spec = _spec(art, decision, decision_params)
        try:
            self.decider = make_decider(art.thresholds, spec, art.value_ranges,
                                        art.periods_at(self.hop), overlap_of(art.window, self.hop))
        except ValueError as exc:
            raise InputError(f"decision: {exc}") from None
        if fixed_shapes:
            art.model.fix_batch_shapes(size)
        self.nonfinite = 0  # windows whose error overflowed: not decided (guards.py)
        self._offset = 0

    def __len__(self) -> int:
        """Series with a window buffer."""
        return len(self.buffer)

    @property
    def backwards(self) -> int:
        """Points whose timestamp went back (used, dropped or refused by the policy)."""
        return self.buffer.backwards

    @property
    def gaps(self) -> dict[str, int]:
        """Gaps filled, the points filled in them, and gaps that restarted a window."""
        b = self.buffer
        return {"filled": b.gaps_filled, "points_filled": b.points_filled,
                "restarted": b.gaps_restarted}

    def _on_evict(self, key: str, cause: str, tag: int) -> None:
        self.decider.forget(key)

    def forget(self, key: str) -> None:
        """Drop a key's window and decision state (as ``run`` does for an idle key)."""
        if not self.buffer.drop([key], cause="idle"):
            self.decider.forget(key)

    def _values(self, key: str, values: Any) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.shape[0] != self.artifact.n_features:
            raise InvalidRecord("wrong_feature_count", f"{key!r}: {v.shape[0]} value(s), the "
                                f"model expects {self.artifact.n_features}")
        if not np.isfinite(v).all():
            raise InvalidRecord("non_finite", f"{key!r}: {v.tolist()} (NaN or Infinity)")
        if (np.abs(v) > _F32_MAX).any():
            raise InvalidRecord("value_out_of_range", f"{key!r}: beyond float32 range")
        return v

    def update(self, key: str, ts: float | str | datetime, values: float | Sequence[float]
               ) -> list[Verdict]:
        """Add one point; returns the verdicts of the batch it completed, if it did."""
        from stream_detector.window import BACKWARDS, NO_WINDOW

        t = _epoch(ts)
        v = self._values(key, values)
        self._offset += 1
        slot = self.buffer.push(key, t, v, 0, self._offset, time.monotonic())
        if slot == BACKWARDS:
            if self._dlq_backwards:
                raise InvalidRecord("timestamp_backwards",
                                    f"{key!r}: {t} is before the key's previous point")
            return []
        if slot != NO_WINDOW:
            start, end = self.buffer.copy_window(slot, self.batcher.next_row())
            if self.batcher.push((key, start, end)):
                return self.flush()
        return self.flush() if self.batcher.due() else []

    def flush(self) -> list[Verdict]:
        """Score and decide every batched window; returns their verdicts in stream order."""
        from stream_detector.decision import decide_windows, reason_names
        from stream_detector.guards import finite_rows

        if not len(self.batcher):
            return []
        batch = self.batcher.drain()
        art, metas, windows = self.artifact, batch.metas, batch.windows
        keys = [m[0] for m in metas]
        scores = art.model.score_batch(art.scalers.transform_windows(keys, windows))
        keep = finite_rows(scores)
        if keep is not None:  # inf or NaN error: never decided, as in run
            self.nonfinite += len(scores) - len(keep)
            scores, windows = scores[keep], windows[keep]
            metas = [metas[i] for i in keep.tolist()]
            keys = [m[0] for m in metas]
        if not keys:
            return []
        d = decide_windows(self.decider, keys, scores, windows, self.hop)
        return [
            Verdict(k, s, e, float(sc), float(th), float(a), bool(f), bool(x),
                    tuple(reason_names(int(r))) if f else ())
            for (k, s, e), sc, th, a, f, x, r in zip(
                metas, scores.tolist(), d.threshold.tolist(), d.anomaly_score.tolist(),
                d.is_anomaly.tolist(), d.excursion.tolist(), d.reason.tolist())
        ]

    def score_one(self, key: str, ts: float | str | datetime, values: float | Sequence[float]
                  ) -> Verdict | None:
        """Add one point and decide at once (a batch of one): the verdict on the window
        this point completed, or None when it completed none."""
        got = self.update(key, ts, values) + self.flush()
        return got[-1] if got and got[-1].key == key and got[-1].end == _epoch(ts) else None

    def process(self, points: Iterable[tuple[str, Any, Any]]) -> list[Verdict]:
        """:meth:`update` every ``(key, ts, values)``, then :meth:`flush`."""
        out: list[Verdict] = []
        for key, ts, values in points:
            out.extend(self.update(key, ts, values))
        out.extend(self.flush())
        return out
