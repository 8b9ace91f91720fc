"""What a decider returns, and the protocol every decision method follows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

import numpy as np

#: the checks that can flag a window, as bits of :attr:`Decision.reason`
ERROR, RANGE, SEASON, ACTIVITY = 1, 2, 4, 8
REASONS: tuple[tuple[int, str], ...] = (
    (ERROR, "error"), (RANGE, "range"), (SEASON, "season"), (ACTIVITY, "activity"))

# per window, its newest points (those no earlier window ended with): (n, points, features)
Newest = np.ndarray
# per key, its period in values (0: none)
Periods = Mapping[str, int]
# per key, the smallest and the largest value of each feature in its training data
Ranges = Mapping[str, tuple[Sequence[float], Sequence[float]]]


class Decision(NamedTuple):
    """Per window: the decision and why.

    ``is_anomaly`` is the alarm (``anomaly_score >= 0.5``; a method that suppresses
    repeated alarms raises it once per excursion), ``excursion`` whether the window is
    anomalous before suppression (an incident stays open while it holds), ``reason`` the
    bits of the checks that flagged it (:data:`REASONS`; 0 where neither holds).
    """

    threshold: np.ndarray
    anomaly_score: np.ndarray
    is_anomaly: np.ndarray
    excursion: np.ndarray
    reason: np.ndarray

    @classmethod
    def empty(cls, n: int = 0) -> Decision:
        return cls(
            np.empty(n), np.empty(n), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool),
            np.zeros(n, dtype=np.uint8),
        )


def reason_names(bits: int) -> list[str]:
    """``5`` -> ``["error", "season"]``."""
    return [name for bit, name in REASONS if bits & bit]


class Decider(Protocol):
    """Decides on scored windows; ``keys[i]`` owns ``scores[i]``, in stream order.

    ``wants_values``: whether ``decide`` uses the windows' newest values (``newest``,
    ``(n, points, features)``: the points new to each window, ``min(hop, window)`` of
    them); callers pass them only then.
    """

    name: str
    wants_values: bool

    def decide(
        self, keys: Sequence[str], scores: np.ndarray, newest: Newest | None = None
    ) -> Decision: ...

    def forget(self, key: str) -> None: ...

    def export(self, key: str) -> bytes | None: ...

    def restore(self, key: str, raw: bytes) -> None: ...


def decide_windows(decider: Decider, keys: Sequence[str], scores: np.ndarray,
                   windows: np.ndarray, hop: int) -> Decision:
    """``decider.decide`` on scored ``windows`` (n, window, features) that came every
    ``hop`` points: their newest ``min(hop, window)`` points go along when it wants them."""
    newest = windows[:, -min(hop, windows.shape[1]):, :] if decider.wants_values else None
    return decider.decide(keys, scores, newest)
