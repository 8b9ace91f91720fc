"""The decision layer: a window's reconstruction error -> (threshold, anomaly score, flag).

The model only reports an error. A :class:`Decider` turns errors into decisions, in
stream order, possibly with per-key state (e.g. running statistics of recent errors);
the same object serves ``score`` (offline, series by series) and ``run`` (online,
batch by batch), so both paths decide identically. Per-key state is exported as bytes
for the state changelog and restored with the window buffers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from stream_detector.threshold import Thresholds

Decision = tuple[np.ndarray, np.ndarray, np.ndarray]  # threshold, anomaly_score, is_anomaly


class Decider(Protocol):
    """Decides on scored windows; ``keys[i]`` owns ``scores[i]``, in stream order."""

    name: str

    def decide(self, keys: Sequence[str], scores: np.ndarray) -> Decision: ...

    def forget(self, key: str) -> None: ...

    def export(self, key: str) -> bytes | None: ...

    def restore(self, key: str, raw: bytes) -> None: ...


class StaticThreshold:
    """The seed's rule: a fixed calibrated threshold per key (no state)."""

    name = "static"

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds

    def decide(self, keys: Sequence[str], scores: np.ndarray) -> Decision:
        return self.thresholds.decide(keys, scores)

    def forget(self, key: str) -> None:
        pass

    def export(self, key: str) -> bytes | None:
        return None

    def restore(self, key: str, raw: bytes) -> None:
        pass


DECIDERS = ("static",)


def make_decider(thresholds: Thresholds, spec: Mapping[str, Any] | None = None) -> Decider:
    """Build the decider named by ``spec["method"]`` (default: the artifact's, else static)."""
    method = (spec or {}).get("method", "static")
    if method == "static":
        return StaticThreshold(thresholds)
    raise ValueError(f"unknown decision method {method!r} (choose from {', '.join(DECIDERS)})")
