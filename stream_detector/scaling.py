"""Per-feature scaling fitted at training time, globally and per series key.

The default is a robust z-score, ``(x - median) / (IQR / 1.349)``: training history
often contains the very anomalies we look for, and one spike in it stretches a min-max
range so far that normal variation is squashed towards zero. The median and the IQR
ignore a few extreme points. ``minmax`` (the seed's choice) is kept as an option.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

METHODS = ("robust", "minmax")
_EPS = 1e-9


@dataclass(frozen=True)
class Scaler:
    """``(x - center) / scale`` per feature; arrays of shape (n_features,)."""

    center: np.ndarray
    scale: np.ndarray

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Scale ``x`` of shape (..., n_features) to float32."""
        return ((x - self.center) / self.scale).astype(np.float32, copy=False)

    def to_dict(self) -> dict[str, list[float]]:
        return {"center": [float(v) for v in self.center], "scale": [float(v) for v in self.scale]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scaler:
        return cls(
            center=np.asarray(d["center"], dtype=np.float64),
            scale=np.asarray(d["scale"], dtype=np.float64),
        )


def fit_scaler(values: np.ndarray, method: str = "robust", fallback: Scaler | None = None) -> Scaler:
    """Fit a scaler on ``values`` of shape (n, n_features).

    A feature with no spread (a constant series) takes its scale from ``fallback``
    when given, else from the standard deviation, else 1.
    """
    x = np.asarray(values, dtype=np.float64)
    if method == "robust":
        center = np.median(x, axis=0)
        q75, q25 = np.percentile(x, [75, 25], axis=0)
        scale = (q75 - q25) / 1.349
    elif method == "minmax":
        center = x.min(axis=0)
        scale = x.max(axis=0) - center
    else:
        raise ValueError(f"unknown scaler {method!r} (choose from {', '.join(METHODS)})")
    std = x.std(axis=0)
    flat = scale <= _EPS * np.maximum(1.0, np.abs(center))
    scale = np.where(flat, std, scale)
    flat = scale <= _EPS * np.maximum(1.0, np.abs(center))
    if fallback is not None:
        scale = np.where(flat, fallback.scale, scale)
    else:
        scale = np.where(flat, 1.0, scale)
    return Scaler(center=center, scale=scale)


@dataclass(frozen=True)
class ScalerSet:
    """The global scaler and one per key seen in training; unseen keys use the global one."""

    method: str
    global_: Scaler
    per_key: dict[str, Scaler]

    def for_key(self, key: str) -> Scaler:
        return self.per_key.get(key, self.global_)

    def transform_windows(self, keys: list[str], windows: np.ndarray) -> np.ndarray:
        """Scale raw windows (N, T, F), window i with the scaler of ``keys[i]`` (vectorised).

        Gives exactly what :meth:`Scaler.transform` gives point by point.
        """
        rows, centers, scales = self._table
        get, default = rows.get, len(rows)
        idx = [get(k, default) for k in keys]
        center = centers[idx][:, None, :]
        scale = scales[idx][:, None, :]
        return ((windows - center) / scale).astype(np.float32, copy=False)

    @cached_property
    def _table(self) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
        """Every scaler stacked once: key -> row, centers and scales (the global one last)."""
        ordered = [*self.per_key.values(), self.global_]
        return ({k: i for i, k in enumerate(self.per_key)},
                np.array([s.center for s in ordered]), np.array([s.scale for s in ordered]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "global": self.global_.to_dict(),
            "per_key": {k: s.to_dict() for k, s in self.per_key.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScalerSet:
        return cls(
            method=str(d["method"]),
            global_=Scaler.from_dict(d["global"]),
            per_key={str(k): Scaler.from_dict(v) for k, v in d.get("per_key", {}).items()},
        )
