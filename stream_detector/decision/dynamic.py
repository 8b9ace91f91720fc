"""``dynamic``: telemanom's non-parametric dynamic threshold, online.

Errors smoothed by an EWMA of span ``span``; every ``every`` windows the threshold
``mean + k std`` of the last ``history`` smoothed errors is chosen as telemanom does
(k in 2.5..12 maximising the drop in mean and spread per flagged point and sequence),
then raised to ``1 + prune`` times the largest smoothed error left below it
(telemanom's pruning, as a margin).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from stream_detector.decision.history import TailMethod, TailState
from stream_detector.decision.params import Param
from stream_detector.threshold import Thresholds

_TELEMANOM_Z = np.arange(2.5, 12.0, 0.5)


class DynamicThreshold(TailMethod):
    """telemanom's non-parametric dynamic threshold on EWMA-smoothed errors, online."""

    name = "dynamic"
    code = 4
    PARAMS = {
        # span 60 and prune 0.3 (telemanom: 0.13 on per-point errors) measured best on the
        # staged SMAP/MSL channels (docs/quality.md)
        "span": Param(float, 60.0, "EWMA span of the smoothed errors, in windows"),
        "every": Param(int, 50, "re-estimate the threshold every N windows"),
        "prune": Param(float, 0.3, "required margin over the largest normal smoothed error"),
    }

    def __init__(self, thresholds: Thresholds, **params: Any) -> None:
        super().__init__(thresholds, **params)
        self.alpha = 2.0 / (float(self.params["span"]) + 1.0)
        self.prune = float(self.params["prune"])
        if not 0 < self.alpha <= 1 or self.prune < 0:
            raise ValueError(f"dynamic: bad parameters {self.params}")

    def _smooth(self, xs: np.ndarray, start: float) -> np.ndarray:
        out = np.empty(len(xs))
        s = start
        al = self.alpha
        for i, v in enumerate(xs.tolist()):
            s = v if s != s else al * v + (1.0 - al) * s  # NaN start: the first value
            out[i] = s
        return out

    def _estimate(self, hist: np.ndarray) -> Any:
        e = self._smooth(hist, math.nan)
        mu, sd = float(e.mean()), float(e.std())
        best, eps = -math.inf, mu + _TELEMANOM_Z[-1] * sd
        for z in _TELEMANOM_Z:
            cand = mu + z * sd
            below = e[e < cand]
            flagged = e >= cand
            n_flag = int(flagged.sum())
            if n_flag == 0 or len(below) == 0:
                continue
            n_seq = int(np.count_nonzero(np.diff(flagged.astype(np.int8)) == 1) + flagged[0])
            gain = (mu - below.mean()) / max(mu, 1e-12) + (sd - below.std()) / max(sd, 1e-12)
            score = gain / (n_flag + n_seq * n_seq)
            if score > best:
                best, eps = score, cand
        normal = e[e < eps]
        if len(normal):
            eps = max(eps, (1.0 + self.prune) * float(normal.max()))
        return max(eps, 1e-12)

    def _start(self, st: TailState, xs: np.ndarray) -> None:
        # the chunk's smoothed errors, and the smoothed error before each of them
        self._sm = self._smooth(xs, st.ew)
        self._sm_prev = np.concatenate([[st.ew], self._sm[:-1]])

    def _levels(
        self, raw: np.ndarray, lo: int, hi: int, params: Any, st: TailState
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._sm[lo:hi], np.full(hi - lo, params)  # no raw context: raw is the chunk

    def _invert(
        self, u_need: np.ndarray, raw: np.ndarray, lo: int, hi: int, params: Any, st: TailState
    ) -> np.ndarray:
        prev = self._sm_prev[lo:hi]
        first = np.isnan(prev)
        safe = np.where(first, 0.0, prev)
        return np.where(first, u_need, (u_need - (1.0 - self.alpha) * safe) / self.alpha)

    def _after(self, st: TailState, xs: np.ndarray) -> None:
        st.ew = float(self._sm[-1])
