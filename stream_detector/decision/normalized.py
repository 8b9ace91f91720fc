"""``normalized``: the robust z-score of the error against the median and MAD of the
key's last ``history`` errors; anomalous above ``z``."""

from __future__ import annotations

from typing import Any

import numpy as np

from stream_detector.decision.history import TailMethod, TailState
from stream_detector.decision.params import Param
from stream_detector.threshold import Thresholds


class Normalized(TailMethod):
    """Robust z-score of the error against the median and MAD of the key's history."""

    name = "normalized"
    code = 3
    PARAMS = {"z": Param(float, 6.0, "robust z-score at the decision boundary")}

    def __init__(self, thresholds: Thresholds, **params: Any) -> None:
        super().__init__(thresholds, **params)
        self.z = float(self.params["z"])
        if self.z <= 0:
            raise ValueError(f"normalized: z must be > 0: {self.params}")

    def _estimate(self, hist: np.ndarray) -> Any:
        med = float(np.median(hist))
        mad = 1.4826 * float(np.median(np.abs(hist - med)))
        return med, max(mad, 1e-6 * max(abs(med), 1e-12), 1e-12)

    def _levels(
        self, raw: np.ndarray, lo: int, hi: int, params: Any, st: TailState
    ) -> tuple[np.ndarray, np.ndarray]:
        med, mad = params
        return (raw[lo:hi] - med) / mad, np.full(hi - lo, self.z)

    def _invert(
        self, u_need: np.ndarray, raw: np.ndarray, lo: int, hi: int, params: Any, st: TailState
    ) -> np.ndarray:
        med, mad = params
        return np.asarray(med + u_need * mad, dtype=np.float64)
