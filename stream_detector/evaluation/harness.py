"""Benchmarks on real labelled data: NAB, ODDS (PyOD protocol) and NASA SMAP/MSL.

Every benchmark goes through the project's own offline path: ``training.train`` fits
the model and calibrates the static threshold, ``scoring.window_scores`` runs the windows
through the batched model, and ``scoring.decide_series`` runs each series' window scores,
in stream order, through the decider built by ``decision.make_decider`` (exactly what
``scoring.score_dataset`` does; the model is run once and each decision method reuses its
scores).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream_detector.datasets import Dataset, parse_timestamp
from stream_detector.decision import decision_spec, make_decider, overlap_of
from stream_detector.evaluation import nab
from stream_detector.evaluation.events import (
    EventScore,
    event_score,
    incidents_from_decisions,
    precision_at_n,
    roc_auc,
)
from stream_detector.evaluation.loaders import (
    channel_dataset,
    nab_dataset,
    nab_files,
    pyod_split,
    read_channel,
    read_odds,
    records_dataset,
)
from stream_detector.finetune import FineTuneOptions
from stream_detector.gaps import DEFAULT_GAP_POLICY, gap_policy, gap_windows
from stream_detector.scoring import decide_series, window_scores
from stream_detector.threshold import Thresholds
from stream_detector.training import TrainOptions, find_periods, train, value_ranges

Log = Callable[[str], None]

#: NAB scoreboard (standard profile), numenta/NAB README, for the README table.
NAB_ANCHORS: dict[str, float] = {
    "ARTime": 74.9,
    "Numenta HTM": 70.1,
    "CAD OSE": 69.9,
    "KNN CAD": 58.0,
    "Random Cut Forest": 51.7,
    "Twitter ADVec": 47.1,
    "windowed Gaussian": 39.6,
}

#: PyOD benchmark ROC-AUC / precision@n (shared/data/README.md, tables A and B).
ODDS_ANCHORS: dict[str, dict[str, tuple[float, float]]] = {
    "arrhythmia": {
        "AutoEncoder": (0.7739, 0.4197),
        "IForest": (0.8005, 0.4961),
        "HBOS": (0.8219, 0.5111),
        "PCA": (0.7815, 0.4613),
    },
    "cardio": {
        "AutoEncoder": (0.8165, 0.3785),
        "IForest": (0.9213, 0.5041),
        "HBOS": (0.8351, 0.4476),
        "PCA": (0.9504, 0.6090),
    },
    "pima": {
        "AutoEncoder": (0.6655, 0.4708),
        "IForest": (0.6806, 0.5111),
        "HBOS": (0.7000, 0.5424),
        "PCA": (0.6481, 0.4943),
    },
    "satellite": {
        "AutoEncoder": (0.6628, 0.5058),
        "IForest": (0.7022, 0.5676),
        "HBOS": (0.7581, 0.5690),
        "PCA": (0.5988, 0.4784),
    },
    "shuttle": {
        "AutoEncoder": (0.9898, 0.8938),
        "IForest": (0.9971, 0.9546),
        "HBOS": (0.9855, 0.9551),
        "PCA": (0.9898, 0.9501),
    },
}

#: telemanom's run 2018-05-19 on the staged channels: TP/FP/FN (shared/data/README.md).
TELEMANOM: dict[str, tuple[int, int, int]] = {
    "P-1": (3, 1, 0),
    "G-7": (3, 0, 0),
    "C-1": (1, 0, 1),
    "T-9": (0, 0, 2),
    "T-13": (0, 0, 2),
}


def _quiet(_: str) -> None:
    pass


def parse_decisions(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["static", "pot:suppress=0", ...]`` -> ``{label: spec}`` (label = the item)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        method, _, rest = item.partition(":")
        params = dict(p.split("=", 1) for p in rest.split(",") if p)
        out[item] = decision_spec(method, params)
    return out


# -- NAB ---------------------------------------------------------------------------------


@dataclass
class NabReport:
    """NAB scores per decision method, plus timings."""

    scores: dict[str, dict[str, float]]  # label -> profile -> normalised score (and thresholds)
    files: list[str]
    windows: int
    train_seconds: float
    model_seconds: float
    decide_seconds: dict[str, float]
    wall_seconds: float
    options: dict[str, Any] = field(default_factory=dict)


def run_nab(
    root: Path,
    decisions: Mapping[str, Mapping[str, Any]],
    *,
    kind: str = "conv1d",
    epochs: int = 30,
    window: int | None = None,
    train_fraction: float = 0.15,
    seed: int = 0,
    files: Sequence[str] | None = None,
    out: Path | None = None,
    cache: Path | None = None,
    model_params: Mapping[str, Any] | None = None,
    fine_tune: FineTuneOptions | None = None,
    gaps: str = DEFAULT_GAP_POLICY,
    gap_max_fill: int | None = None,
    log: Log = _quiet,
) -> NabReport:
    """Fit on the first ``train_fraction`` of each NAB file, score the whole file, NAB-score.

    With ``out``, each method's results are written in NAB's layout:
    ``out/<label>/<category>/<name>.csv`` with ``timestamp,value,anomaly_score``. With
    ``cache``, each file's window scores and thresholds are kept there (keyed by the
    training options) and reused, so further decision methods cost no training.

    ``gaps`` / ``gap_max_fill``: train's and score's ``--gap-policy`` / ``--gap-max-fill``
    (:mod:`~stream_detector.gaps`), over the files' own timestamps (the rows' positions
    stay NAB's rule for everything else). A file whose windows the policy leaves as they
    are (no gap by the policy's rule) is the ``off`` run's, cache entry included; the
    others are trained and scored with the policy and cached under a tag naming it.
    """
    started = time.perf_counter()
    names = list(files) if files is not None else nab_files(root)
    results: dict[str, dict[str, np.ndarray]] = {label: {} for label in decisions}
    decide_s = {label: 0.0 for label in decisions}
    train_s = model_s = 0.0
    n_windows = 0
    tag = f"{kind}-w{window or 64}-e{epochs}-f{train_fraction:g}-s{seed}" + "".join(
        f"-{k}{v}" for k, v in sorted((model_params or {}).items())
    ) + (_tune_tag(fine_tune) if fine_tune and fine_tune.enabled else "")
    policy = gap_policy(gaps, gap_max_fill, None, window or 64)  # ValueError: refused
    gap_files: list[str] = []
    no_model: list[str] = []  # files the policy leaves no training window
    for i, name in enumerate(names):
        t0 = time.perf_counter()
        ds = nab_dataset(root, name)
        fitted_ds, file_tag, note, trainable = ds, tag, "", True
        if policy.active:
            timed = _with_timestamps(ds)
            s0 = timed.series[0]
            g = gap_windows(s0.ts, s0.values, window or 64, 1, policy)
            if g.filled_gaps or g.restarts:
                fitted_ds, file_tag = timed, f"{tag}-gap{policy.policy}{policy.max_fill}"
                gap_files.append(name)
                note = f", gaps: {g.filled_gaps} filled ({g.filled_points} points), " \
                    f"{g.restarts} restarts"
                head = s0.head(train_fraction)
                if not len(gap_windows(head.ts, head.values, window or 64, 1, policy).end_index):
                    no_model.append(name)
                    trainable = False
                    note += ", no training window: nothing trained, every row scored 0"
        cached = cache / file_tag / (name.replace("/", "__") + ".npz") if cache else None
        if not trainable:
            scores, end_idx, t1, t2 = np.zeros(0), np.zeros(0, np.int64), t0, t0
            thresholds = Thresholds(1.0)  # (unused: no window to decide)
        elif cached is not None and cached.is_file():
            with np.load(cached) as z:
                scores, end_idx = z["scores"], z["end_idx"]
                thresholds = Thresholds.from_dict(json.loads(str(z["thresholds"])))
            t1 = t2 = t0
        else:
            opts = TrainOptions(
                kind=kind,
                window=window,
                epochs=epochs,
                train_fraction=train_fraction,
                seed=seed,
                model_params=dict(model_params or {}),
                gap_policy=policy.policy,
                gap_max_fill=policy.max_fill,
            )
            art = train(fitted_ds, opts)
            thresholds = art.thresholds
            t1 = time.perf_counter()
            scores, _, end_idx = window_scores(
                art, fitted_ds, fine_tune=fine_tune,
                gaps=gap_policy(policy.policy, policy.max_fill, None, art.window),
            )
            t2 = time.perf_counter()
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.savez(
                    cached,
                    scores=scores,
                    end_idx=end_idx,
                    thresholds=json.dumps(thresholds.to_dict()),
                )
        train_s += t1 - t0
        model_s += t2 - t1
        n_windows += len(scores)
        series = ds.series[0]
        # the training range and period (train's `value_range`, `period`), from the rows
        # it was fitted on
        fitted = [series.head(train_fraction)]
        ranges, periods = value_ranges(fitted), find_periods(fitted)
        for label, spec in decisions.items():
            t3 = time.perf_counter()
            if len(scores):
                r = decide_series(
                    make_decider(thresholds, spec, ranges, periods, overlap_of(window or 64, 1)),
                    thresholds, series, scores,
                    end_idx,
                )
                a = np.nan_to_num(r.anomaly_score, nan=0.0)
            else:  # no window: nothing flagged, as a stream whose window never fills
                a = np.zeros(len(series))
            decide_s[label] += time.perf_counter() - t3
            results[label][name] = a
            if out is not None:
                _write_nab_result(
                    out / _folder(label) / name, series.timestamps, series.values[:, 0], a
                )
        log(
            f"  nab {i + 1:2d}/{len(names)} {name}: {len(series)} rows, "
            f"train {t1 - t0:.1f} s, model {t2 - t1:.1f} s{note}"
        )
    data_dir, labels, profiles = nab.nab_paths(root)
    scores_out = {
        label: nab.score_detector(res, data_dir, labels, profiles, files=names)
        for label, res in results.items()
    }
    return NabReport(
        scores_out,
        names,
        n_windows,
        train_s,
        model_s,
        decide_s,
        time.perf_counter() - started,
        {
            "kind": kind,
            "epochs": epochs,
            "window": window or 64,
            "train_fraction": train_fraction,
            "seed": seed,
            "model_params": dict(model_params or {}),
            "fine_tune": dataclasses.asdict(fine_tune) if fine_tune else None,
            "gap_policy": policy.policy,
            "gap_max_fill": policy.max_fill,
            "gap_files": gap_files,  # the files whose windows the policy changed
            "gap_no_model": no_model,  # of those, the ones left no training window
        },
    )


def _with_timestamps(ds: Dataset) -> Dataset:
    """``ds`` with each series' ``ts`` its timestamps (epoch seconds, as ``read_dataset``
    parses them), where :func:`~stream_detector.evaluation.loaders.nab_dataset` gives
    the rows' positions."""
    series = [
        dataclasses.replace(s, ts=np.array([parse_timestamp(t) for t in s.timestamps]))
        for s in ds.series
    ]
    return dataclasses.replace(ds, series=series)


def _tune_tag(opts: FineTuneOptions) -> str:
    return "-ft" + "".join(f"_{k}{v}" for k, v in sorted(dataclasses.asdict(opts).items()))


def _folder(label: str) -> str:
    """A decision label as a folder name: ``pot:suppress=0`` -> ``pot_suppress-0``."""
    return label.replace(":", "_").replace("=", "-").replace(",", "_")


def _write_nab_result(path: Path, stamps: Sequence[str], values: np.ndarray, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "value", "anomaly_score"])
        for t, v, s in zip(stamps, values.tolist(), a.tolist()):
            w.writerow([t, f"{v:.10g}", f"{s:.10g}"])


# -- ODDS --------------------------------------------------------------------------------


@dataclass
class OddsRow:
    name: str
    roc: list[float]
    prn: list[float]
    seconds: float

    @property
    def roc_mean(self) -> float:
        return float(np.mean(self.roc))

    @property
    def prn_mean(self) -> float:
        return float(np.mean(self.prn))


def run_odds(
    root: Path,
    sets: Sequence[str],
    *,
    seeds: int = 10,
    epochs: int = 30,
    model_params: Mapping[str, Any] | None = None,
    log: Log = _quiet,
) -> list[OddsRow]:
    """``feedforward`` on each ODDS set under PyOD's protocol, mean of ``seeds`` splits.

    Split ``i`` is PyOD's ``train_test_split(test_size=0.4, random_state=RandomState(i))``,
    standardised on train; the model is fitted on the train rows (labels unused) and
    ranks the test rows by reconstruction error.
    """
    rows = []
    for name in sets:
        x, y = read_odds(root, name)
        t0 = time.perf_counter()
        roc, prn = [], []
        for seed in range(seeds):
            xtr, xte, _, yte = pyod_split(x, y, seed)
            opts = TrainOptions(
                kind="feedforward",
                window=1,
                epochs=epochs,
                seed=seed,
                model_params=dict(model_params or {}),
            )
            art = train(records_dataset(name, xtr), opts)
            scores, _, _ = window_scores(art, records_dataset(name, xte))
            roc.append(roc_auc(yte, scores))
            prn.append(precision_at_n(yte, scores))
        row = OddsRow(name, roc, prn, time.perf_counter() - t0)
        log(
            f"  odds {name}: ROC-AUC {row.roc_mean:.4f}, P@n {row.prn_mean:.4f} "
            f"({seeds} splits, {row.seconds:.0f} s)"
        )
        rows.append(row)
    return rows


# -- SMAP / MSL --------------------------------------------------------------------------


@dataclass
class ChannelResult:
    name: str
    spacecraft: str
    labelled: int
    events: dict[str, EventScore]  # label -> TP/FP/FN
    seconds: float


def run_smap(
    root: Path,
    channels: Sequence[str],
    decisions: Mapping[str, Mapping[str, Any]],
    *,
    kind: str = "conv1d",
    epochs: int = 30,
    window: int = 64,
    features: str = "telemetry",
    seed: int = 0,
    model_params: Mapping[str, Any] | None = None,
    fine_tune: FineTuneOptions | None = None,
    cache: Path | None = None,
    log: Log = _quiet,
) -> list[ChannelResult]:
    """Train on each channel's train array, score its test array, count labelled events.

    ``features``: ``telemetry`` (column 0 only, as Orion's benchmark) or ``all`` (also the
    one-hot command columns, as telemanom's input). A predicted event is a run of flagged
    windows (merging gaps of up to half a window, the service's incident rule) spanning
    the rows its windows cover; it is a true positive when it overlaps a labelled interval.
    """
    out = []
    for name in channels:
        t0 = time.perf_counter()
        ch = read_channel(root, name)
        cols = slice(0, 1) if features == "telemetry" else slice(None)
        opts = TrainOptions(
            kind=kind, window=window, epochs=epochs, seed=seed,
            model_params=dict(model_params or {}),
        )
        test = channel_dataset(name, ch.test[:, cols])
        tag = f"smap-{kind}-w{window}-e{epochs}-s{seed}-{features}" + _params_tag(model_params) + (
            _tune_tag(fine_tune) if fine_tune and fine_tune.enabled else ""
        )
        scored = _cached(cache, tag, name, functools.partial(
            _fit_and_score, channel_dataset(name, ch.train[:, cols]), test, opts, fine_tune
        ))
        events = {}
        for label, spec in decisions.items():
            r = decide_series(scored.decider(spec), scored.thresholds, test.series[0],
                              scored.scores, scored.end_idx)
            incidents = _incidents(r, scored.end_idx, window, gap=max(1, window // 2))
            events[label] = event_score(
                [(max(0, a - window + 1), b) for a, b in incidents], ch.anomalies
            )
        res = ChannelResult(
            name, ch.spacecraft, len(ch.anomalies), events, time.perf_counter() - t0
        )
        log(
            f"  smap {name}: "
            + ", ".join(f"{k} {e.tp}/{e.fp}/{e.fn}" for k, e in events.items())
            + f" ({res.seconds:.0f} s)"
        )
        out.append(res)
    return out


def _incidents(
    r: Any, end_idx: np.ndarray, window: int, gap: int
) -> list[tuple[int, int]]:
    """The service's incidents of one scored series, as row spans of window ends."""
    alarm = np.zeros(len(r.is_anomaly), dtype=bool)
    exc = np.zeros(len(r.is_anomaly), dtype=bool)
    alarm[end_idx] = r.is_anomaly[end_idx]
    exc[end_idx] = r.excursion[end_idx]
    # window ends only: one step per window, so the gap counts windows (hop 1)
    return incidents_from_decisions(alarm, exc, gap)


@dataclass
class Scored:
    """One series' window scores and what its decider needs, from a trained artifact."""

    scores: np.ndarray
    end_idx: np.ndarray
    thresholds: Thresholds
    ranges: dict[str, tuple[list[float], list[float]]]
    periods: dict[str, int]
    overlap: int = 64  # windows sharing a point: train's default window at hop 1

    def decider(self, spec: Mapping[str, Any]) -> Any:
        return make_decider(self.thresholds, spec, self.ranges, self.periods, self.overlap)


def _fit_and_score(
    train_ds: Any, test_ds: Any, opts: TrainOptions, fine_tune: FineTuneOptions | None = None
) -> Scored:
    art = train(train_ds, opts)
    scores, _, end_idx = window_scores(art, test_ds, fine_tune=fine_tune)
    return Scored(scores, end_idx, art.thresholds, art.value_ranges, art.periods_at(art.hop),
                  overlap_of(art.window, art.hop))


def _cached(cache: Path | None, tag: str, name: str, make: Callable[[], Scored]) -> Scored:
    """``make()``, kept in ``cache/tag/name.npz`` and reused when there."""
    path = cache / tag / (name.replace("/", "__") + ".npz") if cache else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            return Scored(
                z["scores"], z["end_idx"], Thresholds.from_dict(meta["thresholds"]),
                {k: (v[0], v[1]) for k, v in meta["ranges"].items()}, meta["periods"],
                int(meta.get("overlap", 64)),
            )
    got = make()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"thresholds": got.thresholds.to_dict(), "ranges": got.ranges,
                "periods": got.periods, "overlap": got.overlap}
        np.savez(path, scores=got.scores, end_idx=got.end_idx, meta=json.dumps(meta))
    return got


def _params_tag(params: Mapping[str, Any] | None) -> str:
    return "".join(f"-{k}{v}" for k, v in sorted((params or {}).items()))


# -- decider cost ------------------------------------------------------------------------


def decider_cost(
    decisions: Mapping[str, Mapping[str, Any]],
    *,
    keys: int = 200,
    per_key: int = 600,
    batch: int = 256,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Microseconds per window of each decider, offline (one call per key) and online
    (batches of ``batch`` windows interleaved across ``keys`` keys), and state bytes per key.
    Deciders that check values (``range``) get each window's newest value too (a random
    walk per key, one feature, hop 1)."""
    rng = np.random.default_rng(seed)
    errs = rng.lognormal(-1.0, 0.4, size=(keys, per_key))
    vals = np.cumsum(rng.normal(size=(keys, per_key)), axis=1).astype(np.float32)
    names = [f"k{i}" for i in range(keys)]
    order_keys = [names[i] for _ in range(per_key) for i in range(keys)]
    order_scores = errs.T.reshape(-1)
    order_vals = vals.T.reshape(-1, 1)
    out = {}
    for label, spec in decisions.items():
        d = make_decider(Thresholds(1.0), spec)
        t0 = time.perf_counter()
        for i, k in enumerate(names):
            v = vals[i].reshape(-1, 1, 1) if d.wants_values else None
            d.decide([k] * per_key, errs[i], v)
        offline = time.perf_counter() - t0
        d = make_decider(Thresholds(1.0), spec)
        t0 = time.perf_counter()
        for s in range(0, len(order_scores), batch):
            v = order_vals[s : s + batch].reshape(-1, 1, 1) if d.wants_values else None
            d.decide(order_keys[s : s + batch], order_scores[s : s + batch], v)
        online = time.perf_counter() - t0
        state = max((len(d.export(k) or b"") for k in names), default=0)
        n = keys * per_key
        out[label] = {
            "offline_us": 1e6 * offline / n,
            "online_us": 1e6 * online / n,
            "state_bytes": float(state),
        }
    return out


def fine_tune_cost(
    opts: FineTuneOptions, *, kind: str = "conv1d", window: int = 64, windows: int = 20_480,
    batch: int = 256,
) -> dict[str, float]:
    """Model time per window scored in batches of ``batch``, without and with fine-tuning.

    An untrained ``kind`` (default sizes; the cost does not depend on the weights' values)
    scores ``windows`` random windows, all of them under the guard, so every round runs.
    """
    from stream_detector.finetune import FineTuner
    from stream_detector.models import build

    rng = np.random.default_rng(0)
    x = rng.standard_normal((windows, window, 1)).astype(np.float32)
    keys = ["k"] * batch
    out = {}
    for label, tuned in (("plain", False), ("tuned", True)):
        model = build(kind, window, 1)
        tuner = FineTuner(model, Thresholds(1e9), opts) if tuned else None
        model.score_batch(x[:batch])  # trace and warm up
        if tuner is not None:
            tuner.observe(keys, x[:batch], np.zeros(batch))
            tuner.tune()
        t0 = time.perf_counter()
        for i in range(0, windows, batch):
            part = model.score_batch(x[i : i + batch])
            if tuner is not None:
                tuner.after_batch(keys[: len(part)], x[i : i + batch], part)
        out[f"{label}_us"] = (time.perf_counter() - t0) / windows * 1e6
    out["fine_tune_us"] = out["tuned_us"] - out["plain_us"]
    return out
