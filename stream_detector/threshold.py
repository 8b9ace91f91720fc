"""Decide: reconstruction error -> threshold, anomaly score in [0, 1], is-anomaly.

The model only reports an error; this module owns the decision. The calibrated rule is
the seed's: a quantile of the training reconstruction errors, stored globally and per key
(per key only where the key had enough training windows for the quantile to mean
something), optionally multiplied by a safety factor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MIN_WINDOWS_PER_KEY = 50


def anomaly_score(score: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Map error to [0, 1]: monotone in ``score``, exactly 0.5 at the threshold.

    >>> float(anomaly_score(np.array([2.0]), np.array([2.0]))[0])
    0.5
    """
    s = np.maximum(np.asarray(score, dtype=np.float64), 0.0)
    t = np.maximum(np.asarray(threshold, dtype=np.float64), 1e-12)
    return s / (s + t)


@dataclass(frozen=True)
class Thresholds:
    """Calibrated thresholds: a global value and optional per-key values."""

    global_: float
    per_key: dict[str, float] = field(default_factory=dict)
    method: str = "quantile"
    quantile: float = 0.995
    factor: float = 1.0

    def for_key(self, key: str) -> float:
        return self.per_key.get(key, self.global_)

    def for_keys(self, keys: Sequence[str]) -> np.ndarray:
        get = self.per_key.get
        g = self.global_
        return np.fromiter((get(k, g) for k in keys), dtype=np.float64, count=len(keys))

    def decide(self, keys: Sequence[str], scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (threshold, anomaly_score, is_anomaly) for each (key, score)."""
        thr = self.for_keys(keys)
        a = anomaly_score(scores, thr)
        return thr, a, np.asarray(scores) > thr

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "quantile": self.quantile,
            "factor": self.factor,
            "min_windows_per_key": MIN_WINDOWS_PER_KEY,
            "global": self.global_,
            "per_key": dict(self.per_key),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Thresholds:
        return cls(
            global_=float(d["global"]),
            per_key={str(k): float(v) for k, v in d.get("per_key", {}).items()},
            method=str(d.get("method", "quantile")),
            quantile=float(d.get("quantile", 0.995)),
            factor=float(d.get("factor", 1.0)),
        )


def calibrate(
    errors: np.ndarray, keys: np.ndarray, quantile: float, factor: float = 1.0
) -> Thresholds:
    """Fit thresholds at ``quantile`` of the training ``errors`` (one per window), times ``factor``.

    ``keys`` gives each window's series key; keys with fewer than ``MIN_WINDOWS_PER_KEY``
    windows use the global threshold.
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"threshold quantile must be in (0, 1], got {quantile}")
    errors = np.asarray(errors, dtype=np.float64)
    g = float(np.quantile(errors, quantile)) * factor
    per_key: dict[str, float] = {}
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    if len(uniq) > 1:
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(counts)[:-1]
        for key, chunk, n in zip(uniq, np.split(errors[order], bounds), counts):
            if n >= MIN_WINDOWS_PER_KEY:
                per_key[str(key)] = float(np.quantile(chunk, quantile)) * factor
    return Thresholds(global_=max(g, 1e-12), per_key=per_key, quantile=quantile, factor=factor)


#: the outlier cutoff of :func:`robust_boundary`, in robust sigmas: Iglewicz and Hoaglin's
#: 3.5 for the modified z-score (0.6745 (x - median) / MAD)
ROBUST_Z = 3.5
_MAD_SIGMA = 1.4826  # MAD -> standard deviation of a normal sample


def robust_boundary(errors: np.ndarray, z: float = ROBUST_Z) -> Thresholds:
    """One pooled threshold ``z`` robust sigmas above the errors' median:
    ``median + z * 1.4826 * MAD``.

    For errors that are samples of one process (``wide`` rows): the median and the MAD
    barely move when a few of the errors are outliers, unlike a high quantile of a few
    dozen values. No per-key values. (On the raw errors, not their logarithms: those
    stretch the small errors and squeeze the large ones, the tail that matters.)

    >>> robust_boundary(np.array([1.0, 1.0, 1.0, 100.0])).global_  # MAD 0
    1.0
    """
    e = np.asarray(errors, dtype=np.float64)
    med = float(np.median(e))
    mad = float(np.median(np.abs(e - med)))
    return Thresholds(global_=max(med + z * _MAD_SIGMA * mad, 1e-12), method="robust_mad",
                      quantile=0.5, factor=z)
