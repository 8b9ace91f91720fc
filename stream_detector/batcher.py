"""Group windows from many keys into one (N, T, F) float32 batch, by size or deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

M = TypeVar("M")


@dataclass
class Batch(Generic[M]):
    """Windows (N, T, F) and, for each, the caller's metadata."""

    windows: np.ndarray
    metas: list[M]

    def __len__(self) -> int:
        return len(self.metas)


class MicroBatcher(Generic[M]):
    """Collect windows into a preallocated array; due when full or when the oldest is too old.

    Parameters
    ----------
    window, n_features: the shape of one window (T, F).
    max_batch: flush at this many windows.
    max_latency_s: flush when the oldest window has waited this long.
    """

    def __init__(
        self,
        window: int,
        n_features: int,
        max_batch: int = 256,
        max_latency_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.max_batch = max_batch
        self.max_latency_s = max_latency_s
        self._clock = clock
        self._buf = np.empty((max_batch, window, n_features), dtype=np.float32)
        self._metas: list[M] = []
        self._first_at: float | None = None

    def __len__(self) -> int:
        return len(self._metas)

    @property
    def full(self) -> bool:
        return len(self._metas) >= self.max_batch

    def add(self, window: np.ndarray, meta: M) -> bool:
        """Add one window; returns True when the batch is full and should be drained."""
        n = len(self._metas)
        if n >= self.max_batch:
            raise OverflowError("batch is full: drain() before adding more")
        if n == 0:
            self._first_at = self._clock()
        self._buf[n] = window
        self._metas.append(meta)
        return n + 1 >= self.max_batch

    def next_row(self) -> np.ndarray:
        """The (T, F) row the next window goes into; fill it, then :meth:`push` its meta."""
        n = len(self._metas)
        if n >= self.max_batch:
            raise OverflowError("batch is full: drain() before adding more")
        return self._buf[n]

    def push(self, meta: M) -> bool:
        """Accept the row filled through :meth:`next_row`; True when the batch is full."""
        if not self._metas:
            self._first_at = self._clock()
        self._metas.append(meta)
        return len(self._metas) >= self.max_batch

    def add_many(self, windows: np.ndarray, metas: list[M]) -> int:
        """Add windows (m, T, F) up to the batch's room; returns how many were taken (when
        fewer than m, the batch is full: drain it and add the rest)."""
        n = len(self._metas)
        k = min(self.max_batch - n, len(metas))
        if k <= 0:
            return 0
        if n == 0:
            self._first_at = self._clock()
        self._buf[n:n + k] = windows[:k]
        self._metas.extend(metas[:k])
        return k

    def time_left(self) -> float | None:
        """Seconds until the deadline of the oldest window (None when empty)."""
        if self._first_at is None:
            return None
        return max(0.0, self._first_at + self.max_latency_s - self._clock())

    def due(self) -> bool:
        left = self.time_left()
        return self.full or (left is not None and left <= 0.0)

    def drain(self) -> Batch[M]:
        """Take everything collected (a copy) and start a new batch."""
        n = len(self._metas)
        batch = Batch(windows=self._buf[:n].copy(), metas=self._metas)
        self._metas = []
        self._first_at = None
        return batch


def batches(windows: np.ndarray, metas: list[M], max_batch: int) -> list[Batch[M]]:
    """Split already-collected windows into batches of at most ``max_batch`` (offline path)."""
    batcher: MicroBatcher[M] = MicroBatcher(windows.shape[1], windows.shape[2], max_batch)
    out: list[Batch[M]] = []
    for w, m in zip(windows, metas):
        if batcher.add(w, m):
            out.append(batcher.drain())
    if len(batcher):
        out.append(batcher.drain())
    return out
