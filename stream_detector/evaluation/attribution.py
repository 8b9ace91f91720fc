"""Does an event name the right feature and expect the right value?

Generated multivariate series (three related seasonal features per key) in which single
points of one feature are pushed far off; the model is trained on their clean first
part. For every perturbation the detector flags, the measure is whether the window that
flags it attributes most of its error to the perturbed feature, and whether the value
the model expected at the perturbed point lies in the key's normal band (the range the
feature showed in the clean part). ``scripts/attribution.py`` runs it at train's
defaults.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream_detector.artifact import Artifact
from stream_detector.datasets import read_dataset
from stream_detector.explain import Explainer
from stream_detector.scoring import score_dataset
from stream_detector.synthetic import SyntheticData, write_long_csv

FEATURES = ("cpu", "mem", "net")
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class Perturbation:
    key: str
    pos: int
    feature: int
    size: float  # in the feature's units (signed)
    span: int = 1  # points pushed


@dataclass
class Perturbed:
    values: dict[str, np.ndarray]  # key -> (n, 3)
    perturbations: list[Perturbation]
    clean: int  # points of clean prefix (the training part)


def perturbed(n_series: int = 6, length: int = 2000, seed: int = 0, per_series: int = 6,
              clean_fraction: float = 0.5) -> Perturbed:
    """Three features per key: a daily-like wave, a lagged copy at another level and a
    faster wave, each with its own noise; after the clean prefix, ``per_series``
    perturbations each push one (random) feature up or down: alternately a spike (1 to 3
    points, by 3 to 6 amplitudes) and a bump (10 to 30 points, by 1.5 to 3)."""
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64)
    clean = int(length * clean_fraction)
    values: dict[str, np.ndarray] = {}
    perts: list[Perturbation] = []
    for i in range(n_series):
        key = f"host-{i:02d}"
        period = float(rng.integers(24, 48))
        amp = rng.uniform(1.0, 3.0, 3)
        level = rng.uniform(0, 50, 3)
        phase = float(rng.uniform(0, 2 * np.pi))
        x = np.stack([
            level[0] + amp[0] * np.sin(2 * np.pi * t / period + phase),
            level[1] + amp[1] * np.sin(2 * np.pi * (t - 3) / period + phase),
            level[2] + amp[2] * np.sin(4 * np.pi * t / period + phase),
        ], axis=1)
        x += rng.normal(0, 1, x.shape) * 0.05 * amp
        room = (length - clean) // per_series
        for j in range(per_series):
            pos = clean + j * room + int(rng.integers(room // 4, room // 2))
            f = int(rng.integers(0, 3))
            if j % 2 == 0:
                span, size = int(rng.integers(1, 4)), rng.uniform(3.0, 6.0)
            else:
                span, size = int(rng.integers(10, 31)), rng.uniform(1.5, 3.0)
            size = float(rng.choice([-1, 1]) * amp[f] * size)
            x[pos:pos + span, f] += size
            perts.append(Perturbation(key, pos, f, size, span))
        values[key] = x.astype(np.float32)
    return Perturbed(values, perts, clean)


def write_long(data: Perturbed, path: Path, rows: slice = slice(None)) -> Path:
    """The keys' ``rows`` as a ``long`` CSV with one column per feature."""
    n = len(next(iter(data.values.values())))
    idx = range(n)[rows]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "key", "value", *(f"value_{f}" for f in FEATURES[1:])])
        for k in idx:
            for key, v in data.values.items():
                w.writerow([T0 + 60 * k, key, *(f"{float(x):.5f}" for x in v[k])])
    return path


@dataclass
class AttributionResult:
    perturbations: int
    detected: int
    top_right: int  # detected ones whose first attributed feature is the perturbed one
    in_band: int  # detected ones whose expected value at the point lies in the band
    false_incidents: int  # runs of flagged windows that no perturbation explains

    def row(self) -> dict[str, float]:
        d = max(self.detected, 1)
        return {"perturbations": self.perturbations, "detected": self.detected,
                "recall": self.detected / max(self.perturbations, 1),
                "top_feature_right": self.top_right / d, "expected_in_band": self.in_band / d,
                "false_incidents": self.false_incidents}


def measure(art: Artifact, data: Perturbed, path: Path) -> AttributionResult:
    """Score the whole series (``path``: where its CSV goes) and check each perturbation:
    detected when a window ending within ``window`` points of it is flagged; the first
    such window is the event's."""
    write_long(data, path)
    ds = read_dataset([str(path)], "long")
    results = {r.series.key: r for r in score_dataset(art, ds)}
    explainer = Explainer(art.features)
    detected = right = in_band = 0
    explained = {k: np.zeros(len(r.series), bool) for k, r in results.items()}
    for p in data.perturbations:
        r = results[p.key]
        end = min(p.pos + p.span + art.window, len(r.series))
        explained[p.key][p.pos:end] = True
        hits = np.flatnonzero(r.is_anomaly[p.pos:end])
        if not len(hits):
            continue
        detected += 1
        at = p.pos + int(hits[0])
        sc = art.scalers.for_key(p.key)
        window = sc.transform(r.series.values[at - art.window + 1:at + 1])[None]
        ex = art.model.explain_batch(window)
        fields = explainer.fields(sc, r.series.values[at], ex, 0)
        right += fields["attribution"]["features"][0]["name"] == art.features[p.feature]
        assert r.expected is not None
        clean = data.values[p.key][:data.clean, p.feature]
        exp = float(r.expected[p.pos, p.feature])
        in_band += bool(clean.min() <= exp <= clean.max())
    false = 0
    for key, r in results.items():
        alone = r.is_anomaly & ~explained[key]
        false += int((alone[1:] & ~alone[:-1]).sum() + alone[0])
    return AttributionResult(len(data.perturbations), detected, right, in_band, false)


def measure_one_feature(art: Artifact, data: SyntheticData, path: Path) -> AttributionResult:
    """One feature (``synthetic.generate``'s series): for each spike and level shift, is
    it flagged within a window of its start, and does the value expected at its first
    point lie in the key's normal band (its clean prefix's range)? (``top_right`` counts
    the detected ones: one feature is always the first attributed.)"""
    ds = read_dataset([str(write_long_csv(data, path))], "long")
    results = {r.series.key: r for r in score_dataset(art, ds)}
    n = detected = in_band = 0
    for a in data.anomalies:
        if a.kind not in ("spike", "level_shift"):
            continue
        n += 1
        r = results[a.key]
        if not r.is_anomaly[a.start:a.start + art.window].any():
            continue
        detected += 1
        assert r.expected is not None
        clean = data.values[a.key][:data.clean_prefix]
        in_band += bool(clean.min() <= float(r.expected[a.start, 0]) <= clean.max())
    return AttributionResult(n, detected, detected, in_band, 0)
