"""``pot``: peaks over threshold on the key's recent errors.

The p-value of an error among the last ``history`` errors, with a generalised Pareto
tail (fitted by moments to the errors above their ``tail`` quantile) for errors beyond
the history. A window is anomalous when that probability falls below ``risk``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from stream_detector.decision.history import TailMethod, TailState
from stream_detector.decision.params import Param
from stream_detector.decision.tails import LN10
from stream_detector.threshold import Thresholds


class PeaksOverThreshold(TailMethod):
    """Empirical p-value of the error in the key's history, with a GPD tail beyond it."""

    name = "pot"
    code = 1
    PARAMS = {
        "tail": Param(float, 0.98, "quantile of the history above which the GPD is fitted"),
        "risk": Param(float, 1e-4, "tail probability at the decision boundary"),
        "shape_min": Param(float, -0.25, "lower bound of the fitted GPD shape (< 0: bounded)"),
    }

    def __init__(self, thresholds: Thresholds, **params: Any) -> None:
        super().__init__(thresholds, **params)
        self.tail = float(self.params["tail"])
        self.shape_min = float(self.params["shape_min"])
        self.ustar = -math.log10(float(self.params["risk"])) if self.params["risk"] > 0 else 0
        if not 0.5 <= self.tail < 1.0 or self.ustar <= 0 or not -1.0 <= self.shape_min <= 0.5:
            raise ValueError(
                f"pot: need tail in [0.5, 1), risk in (0, 1), shape_min in [-1, 0.5]: {self.params}"
            )

    def _estimate(self, hist: np.ndarray) -> Any:
        hs = np.sort(hist)
        n = len(hs)
        t0 = float(hs[int(self.tail * (n - 1))])
        y = hs[hs > t0] - t0
        ft = max(len(y), 1) / n
        if len(y) >= 3:
            mean = float(y.mean())
            var = float(y.var())
        else:
            mean, var = 0.0, 0.0
        if mean <= 0.0:  # no tail above t0: scale from the whole history's spread
            mean = max(float(hs[-1] - hs[0]), abs(t0), 1e-12) / max(n, 1)
            var = mean * mean
        # method of moments; the shape is clamped to [shape_min, 0.5]: a negative shape
        # (a bounded tail) makes errors past the fitted end point certain anomalies
        gamma = 0.5 * (1.0 - mean * mean / var) if var > 0 else 0.0
        gamma = min(max(gamma, self.shape_min), 0.5)
        sigma = max(mean * (1.0 - gamma), 1e-12)
        return hs, t0, sigma, gamma, ft

    def _levels(
        self, raw: np.ndarray, lo: int, hi: int, params: Any, st: TailState
    ) -> tuple[np.ndarray, np.ndarray]:
        hs, t0, sigma, gamma, ft = params
        xs = raw[lo:hi]
        n = len(hs)
        ge = n - np.searchsorted(hs, xs, side="left")
        log_emp = np.log10((ge + 1.0) / (n + 1.0))
        e = np.maximum(xs - t0, 0.0)
        if gamma != 0:
            log_tail = (
                math.log10(ft) - np.log10(np.maximum(1.0 + gamma * e / sigma, 1e-300)) / gamma
            )
        else:
            log_tail = math.log10(ft) - e / (sigma * LN10)
        log_p = np.where(xs > t0, np.minimum(log_tail, log_emp), log_emp)
        return -log_p, np.full(hi - lo, self.ustar)

    def _invert(
        self, u_need: np.ndarray, raw: np.ndarray, lo: int, hi: int, params: Any, st: TailState
    ) -> np.ndarray:
        hs, t0, sigma, gamma, ft = params
        n = len(hs)
        log_p = -u_need
        # empirical part: (ge + 1) / (n + 1) <= p  <=>  ge <= k  <=>  x > hs[n - k - 1]
        k = np.floor(10.0**log_p * (n + 1.0) - 1.0 + 1e-9).astype(np.int64)
        x_emp = hs[np.minimum(np.maximum(n - k - 1, 0), n - 1)]
        x_emp[k < 0] = np.inf
        x_emp[k >= n] = -np.inf
        rel = np.minimum(log_p - math.log10(ft), 0.0)  # log10(p / ft) <= 0
        with np.errstate(over="ignore"):
            if gamma != 0:
                x_tail = t0 + sigma / gamma * (10.0 ** (-gamma * rel) - 1.0)
            else:
                x_tail = t0 - sigma * rel * LN10
        return np.asarray(np.minimum(x_emp, x_tail), dtype=np.float64)
