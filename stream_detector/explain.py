"""What a window's reconstruction says beyond its error: the values the model expected
and where the error sits.

The model's call that scores a batch also returns, per window, the reconstruction of its
newest point and its squared error summed per feature and per time step
(:class:`Explained`, from ``Autoencoder.explain_batch``), so explaining costs no second
pass. Only the few windows that cause an event are turned into the event's fields
(:meth:`Explainer.fields`): ``actual`` and ``expected`` in the input's own units, per
feature name, and ``attribution``, the top shares of the window's squared error by
feature and by step back from its newest point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from stream_detector.scaling import Scaler

TOP = 3  # entries per attribution list
MAX_VALUES = 32  # features shown in actual/expected; wider models show the top attributed


class Explained(NamedTuple):
    """Per window of a batch: its error and what the model's call saw beside it."""

    scores: np.ndarray  # (n,) float64: root-mean-square reconstruction error
    expected: np.ndarray  # (n, F) float32: the newest point's reconstruction, scaled
    features: np.ndarray  # (n, F) float32: squared error summed over the steps
    steps: np.ndarray  # (n, T) float32: squared error summed over the features

    def take(self, rows: np.ndarray | slice) -> Explained:
        """The same fields for ``rows`` only."""
        return Explained(*(a[rows] for a in self))


def to_units(scaler: Scaler, scaled: np.ndarray) -> np.ndarray:
    """Scaled values (..., F) back in the input's units (float64)."""
    out: np.ndarray = np.asarray(scaled, np.float64) * scaler.scale + scaler.center
    return out


def _num(v: float) -> float | None:
    """A value as events show it: 7 significant digits (float32's), None if not finite."""
    return float(f"{v:.7g}") if np.isfinite(v) else None


def _shares(sq: np.ndarray, total: float, top: int) -> list[tuple[int, float]]:
    """(index, share of ``total``) of the ``top`` largest entries of ``sq``, largest
    first (ties: the lower index first)."""
    order = np.argsort(-sq, kind="stable")[:top]
    return [(int(i), round(float(sq[i]) / total, 4) if total > 0 else 0.0) for i in order]


class Explainer:
    """Turns one window's :class:`Explained` row into an event's fields."""

    def __init__(self, features: Sequence[str], top: int = TOP,
                 max_values: int = MAX_VALUES) -> None:
        self.features = list(features)
        self.top = max(1, int(top))
        self.max_values = max(1, int(max_values))

    def fields(self, scaler: Scaler, actual: np.ndarray, ex: Explained, i: int,
               checks: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``actual``, ``expected``, ``attribution`` (and ``checks``: what the value
        checks that flagged the window saw) for row ``i`` of ``ex``; ``actual``: the
        window's newest point as it came (F,)."""
        feat = np.asarray(ex.features[i], np.float64)
        steps = np.asarray(ex.steps[i], np.float64)
        total = float(feat.sum())
        by_feature = _shares(feat, total, self.top)
        names = self.features
        shown: list[int]
        if len(names) <= self.max_values:
            shown = list(range(len(names)))
        else:  # bounded: the attributed features only
            shown = sorted(j for j, _ in by_feature)
        expected = to_units(scaler, ex.expected[i])
        out: dict[str, Any] = {
            "actual": {names[j]: _num(float(actual[j])) for j in shown},
            "expected": {names[j]: _num(float(expected[j])) for j in shown},
            "attribution": {
                "features": [{"name": names[j], "share": s} for j, s in by_feature],
                "steps": [{"back": len(steps) - 1 - t, "share": s}
                          for t, s in _shares(steps, total, self.top)],
            },
        }
        if checks:
            out["checks"] = self._checks(checks)
        return out

    def _checks(self, checks: Mapping[str, Any]) -> dict[str, Any]:
        """Per-feature lists named by feature; numbers as events show them."""
        out: dict[str, Any] = {}
        for name, seen in checks.items():
            out[name] = {
                k: ({self.features[j]: _num(float(x)) for j, x in enumerate(v)}
                    if isinstance(v, (list, tuple, np.ndarray)) else _num(float(v)))
                for k, v in seen.items()
            }
        return out
