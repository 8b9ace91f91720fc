"""Event-level precision/recall: incidents against labelled anomaly spans."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def incidents_from_decisions(
    alarm: np.ndarray, excursion: np.ndarray | None = None, gap: int = 0
) -> list[tuple[int, int]]:
    """The service's incidents (``incidents.IncidentTracker``) from per-window decisions:
    an incident opens at an alarm, stays open while windows are anomalous (an alarm, or
    an ``excursion`` whose alarm was suppressed) with gaps of up to ``gap`` normal
    windows, and ends at its last anomalous window -> [(start, end)]."""
    alarm = np.asarray(alarm, dtype=bool)
    busy = alarm if excursion is None else alarm | np.asarray(excursion, dtype=bool)
    out: list[tuple[int, int]] = []
    start = last = -1
    for i in np.flatnonzero(busy).tolist():
        if start >= 0 and i - last > gap + 1:
            out.append((start, last))
            start = -1
        if start < 0:
            if not alarm[i]:
                continue
            start = i
        last = i
    if start >= 0:
        out.append((start, last))
    return out


@dataclass(frozen=True)
class EventScore:
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        denom = self.tp + self.fn
        return (denom - self.fn) / denom if denom else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: EventScore) -> EventScore:
        return EventScore(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


def event_score(
    predicted: Sequence[tuple[int, int]], truth: Sequence[tuple[int, int]], tolerance: int = 0
) -> EventScore:
    """Match predicted incidents to true spans (inclusive index ranges).

    A true span counts as found (TP) when some incident overlaps ``[start, end + tolerance]``
    (a window-based detector keeps seeing an anomaly until it leaves the window, so
    ``tolerance`` is usually the window length); an incident overlapping no extended span
    is a false positive.
    """
    ext = [(a, b + tolerance) for a, b in truth]
    found = sum(any(p0 <= b and p1 >= a for p0, p1 in predicted) for a, b in ext)
    fp = sum(not any(p0 <= b and p1 >= a for a, b in ext) for p0, p1 in predicted)
    return EventScore(tp=found, fp=fp, fn=len(truth) - found)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        raise ValueError("ROC-AUC needs both classes")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def precision_at_n(labels: np.ndarray, scores: np.ndarray, n: int | None = None) -> float:
    """Precision among the top ``n`` scores (``n`` = number of positives by default)."""
    y = np.asarray(labels).astype(bool)
    n = int(y.sum()) if n is None else n
    if n == 0:
        return 0.0
    top = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")[:n]
    return float(y[top].mean())
