"""``likelihood``: HTM's anomaly likelihood.

The mean of the last ``short`` errors against a normal fit of such means over the
last ``history`` errors; anomalous below tail probability ``risk``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from stream_detector.decision.history import TailMethod, TailState
from stream_detector.decision.params import Param
from stream_detector.decision.tails import log10_normal_tail, normal_tail_quantile
from stream_detector.threshold import Thresholds


class Likelihood(TailMethod):
    """Short-term mean error against its long-term distribution."""

    name = "likelihood"
    code = 2
    PARAMS = {
        "short": Param(int, 10, "errors averaged for the short-term mean"),
        "risk": Param(float, 1e-5, "tail probability at the decision boundary"),
    }

    def __init__(self, thresholds: Thresholds, **params: Any) -> None:
        super().__init__(thresholds, **params)
        self.short = int(self.params["short"])
        self.context = max(self.short - 1, 0)
        risk = float(self.params["risk"])
        self.ustar = -math.log10(risk) if risk > 0 else 0.0
        if self.short < 1 or self.short > self.history or self.ustar <= 0:
            raise ValueError(f"likelihood: bad parameters {self.params}")

    def _short_means(self, seq: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """Mean of the ``short`` errors ending at each of ``seq[lo:hi]`` (fewer at the start)."""
        s = self.short
        pad = max(0, s - 1 - lo)
        if pad:
            seq = np.concatenate([np.full(pad, seq[0]), seq])
            lo, hi = lo + pad, hi + pad
        acc = seq[lo - s + 1 : hi - s + 1].copy()
        for k in range(1, s):  # a fixed order of additions: batch cuts do not change a bit
            acc += seq[lo - s + 1 + k : hi - s + 1 + k]
        return acc / s

    def _estimate(self, hist: np.ndarray) -> Any:
        means = self._short_means(hist, 0, len(hist))
        mu = float(means.mean())
        sd = float(means.std())
        return mu, max(sd, 1e-6 * max(abs(mu), 1e-12), 1e-12)

    def _levels(
        self, raw: np.ndarray, lo: int, hi: int, params: Any, st: TailState
    ) -> tuple[np.ndarray, np.ndarray]:
        mu, sd = params
        z = (self._short_means(raw, lo, hi) - mu) / sd
        return -log10_normal_tail(z), np.full(hi - lo, self.ustar)

    def _invert(
        self, u_need: np.ndarray, raw: np.ndarray, lo: int, hi: int, params: Any, st: TailState
    ) -> np.ndarray:
        mu, sd = params
        m_need = mu + sd * normal_tail_quantile(np.minimum(-u_need, math.log10(0.5)))
        total = self._short_means(raw, lo, hi) * self.short
        return np.asarray(m_need * self.short - (total - raw[lo:hi]), dtype=np.float64)
