"""``static``: the seed's rule, a fixed calibrated threshold per key (no state)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stream_detector.decision.base import ERROR, Decision, Newest
from stream_detector.threshold import Thresholds


class StaticThreshold:
    """The calibrated per-key threshold; ``anomaly_score = s / (s + t)``."""

    name = "static"
    wants_values = False

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds

    def decide(
        self, keys: Sequence[str], scores: np.ndarray, newest: Newest | None = None
    ) -> Decision:
        thr, a, flag = self.thresholds.decide(keys, scores)
        return Decision(thr, a, flag, flag.copy(), np.where(flag, ERROR, 0).astype(np.uint8))

    def forget(self, key: str) -> None:
        pass

    def export(self, key: str) -> bytes | None:
        return None

    def restore(self, key: str, raw: bytes) -> None:
        pass
