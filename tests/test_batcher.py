"""MicroBatcher: due by size or by deadline (injected clock), drain semantics."""

from __future__ import annotations

import numpy as np
import pytest

from stream_detector.batcher import MicroBatcher, batches


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _w(v: float, t: int = 4, f: int = 2) -> np.ndarray:
    return np.full((t, f), v, dtype=np.float32)


def test_full_at_max_batch() -> None:
    b: MicroBatcher[str] = MicroBatcher(4, 2, max_batch=3, max_latency_s=10, clock=FakeClock())
    assert b.add(_w(0), "a") is False
    assert b.add(_w(1), "b") is False
    assert not b.due()
    assert b.add(_w(2), "c") is True
    assert b.full and b.due()
    with pytest.raises(OverflowError):
        b.add(_w(3), "d")
    batch = b.drain()
    assert batch.metas == ["a", "b", "c"] and len(batch) == 3
    assert batch.windows.shape == (3, 4, 2) and batch.windows.dtype == np.float32
    np.testing.assert_array_equal(batch.windows[:, 0, 0], [0, 1, 2])


def test_deadline_counts_from_the_oldest_window() -> None:
    clock = FakeClock()
    b: MicroBatcher[int] = MicroBatcher(4, 2, max_batch=100, max_latency_s=0.05, clock=clock)
    assert b.time_left() is None and not b.due()
    b.add(_w(0), 0)
    clock.t += 0.03
    b.add(_w(1), 1)  # a later window does not push the deadline back
    assert b.time_left() == pytest.approx(0.02)
    assert not b.due()
    clock.t += 0.02
    assert b.time_left() == 0.0 and b.due()
    clock.t += 5
    assert b.time_left() == 0.0  # never negative
    assert len(b.drain()) == 2


def test_drain_returns_a_copy_and_resets() -> None:
    clock = FakeClock()
    b: MicroBatcher[int] = MicroBatcher(4, 2, max_batch=2, max_latency_s=1, clock=clock)
    b.add(_w(7), 0)
    clock.t += 0.8
    first = b.drain()
    assert len(b) == 0 and b.time_left() is None and not b.due()
    b.add(_w(9), 1)  # reuses the buffer: the drained batch must not change
    assert first.windows[0, 0, 0] == 7
    clock.t += 0.5
    assert b.time_left() == pytest.approx(0.5)  # the deadline restarts with the new batch


def test_empty_drain() -> None:
    b: MicroBatcher[int] = MicroBatcher(4, 2, max_batch=2)
    batch = b.drain()
    assert len(batch) == 0 and batch.windows.shape == (0, 4, 2)


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(4, 2, max_batch=0)


def test_offline_batches_split_in_order() -> None:
    windows = np.arange(7, dtype=np.float32).reshape(7, 1, 1) * np.ones((1, 3, 2), np.float32)
    out = batches(windows, list(range(7)), max_batch=3)
    assert [len(b) for b in out] == [3, 3, 1]
    assert [m for b in out for m in b.metas] == list(range(7))
    np.testing.assert_array_equal(np.concatenate([b.windows for b in out]), windows)
