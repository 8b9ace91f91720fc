"""Per-key rolling window buffers, all keys in one preallocated slab.

Each key owns one slot of a ``(capacity, window, n_features)`` float32 ring buffer, so an
append is one row write (O(1), no allocation) and memory per key is the window's floats,
their timestamps (float32 seconds relative to a per-key float64 base, rebased every
~18 h of stream time, so about 8 ms resolution) and a few scalars kept in ``array``
arrays (fast scalar access from Python, no per-key Python objects). A key's window is due every ``hop`` points once it holds ``window``
points. The least recently seen key is evicted when ``max_series`` is reached, and keys
not seen for ``idle_ttl_s`` can be swept out.
"""

from __future__ import annotations

import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

EvictHook = Callable[[str, str, int], None]  # (key, cause, tag)

NO_WINDOW = -1  # push(): the point was added, no window is due
SKIPPED = -2  # push(): the point's offset is already in the buffer (a redelivery)
BACKWARDS = -3  # push(): the point's timestamp is before the key's last one
_REBASE_S = 65536.0


class WindowBuffer:
    """Rolling windows for many series keys.

    Parameters
    ----------
    window: points per window (T).
    n_features: values per point (F).
    hop: a window is due every ``hop`` points once the buffer is full.
    max_series: cap on keys held; the least recently seen key is evicted beyond it.
    on_evict: called with (key, cause, tag) for every key dropped ("max_series", "idle",
        "revoked").
    """

    def __init__(
        self,
        window: int,
        n_features: int = 1,
        hop: int = 1,
        max_series: int | None = None,
        on_evict: EvictHook | None = None,
        initial_capacity: int = 1024,
    ) -> None:
        if window < 1 or hop < 1 or n_features < 1:
            raise ValueError("window, hop and n_features must be >= 1")
        self.window = window
        self.n_features = n_features
        self.hop = hop
        self.max_series = max_series
        self._on_evict = on_evict
        cap = max(1, min(initial_capacity, max_series or initial_capacity))
        self._values = np.zeros((cap, window, n_features), dtype=np.float32)
        self._ts = np.zeros((cap, window), dtype=np.float32)  # relative to _base
        self._base = array("d", bytes(8 * cap))
        self._last_ts = array("d", bytes(8 * cap))
        self._count = array("q", bytes(8 * cap))
        self._seen = array("d", bytes(8 * cap))
        self._tag = array("i", [-1]) * cap
        self._offset = array("q", [-1]) * cap
        self._key_of: list[str | None] = [None] * cap
        self._slots: OrderedDict[str, int] = OrderedDict()
        self._free: list[int] = list(range(cap - 1, -1, -1))
        self._order = np.arange(window)

    # -- bookkeeping -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    def keys(self) -> list[str]:
        return list(self._slots)

    def count(self, key: str) -> int:
        """Points seen for ``key`` since it entered the buffer (0 if absent)."""
        slot = self._slots.get(key)
        return 0 if slot is None else int(self._count[slot])

    def last_ts(self, key: str) -> float | None:
        slot = self._slots.get(key)
        if slot is None or self._count[slot] == 0:
            return None
        return self._last_ts[slot]

    def _abs_ts(self, slot: int, idx: np.ndarray | slice) -> np.ndarray:
        return self._ts[slot, idx].astype(np.float64) + self._base[slot]

    def _grow(self) -> None:
        old = self._values.shape[0]
        new = old * 2 if self.max_series is None else min(old * 2, self.max_series)
        # np.zeros maps fresh pages lazily: only slots actually used count towards RSS
        values = np.zeros((new,) + self._values.shape[1:], dtype=np.float32)
        values[:old] = self._values
        ts = np.zeros((new, self.window), dtype=np.float32)
        ts[:old] = self._ts
        self._values, self._ts = values, ts
        extra = new - old
        self._base.extend(array("d", bytes(8 * extra)))
        self._last_ts.extend(array("d", bytes(8 * extra)))
        self._count.extend(array("q", bytes(8 * extra)))
        self._seen.extend(array("d", bytes(8 * extra)))
        self._tag.extend(array("i", [-1]) * extra)
        self._offset.extend(array("q", [-1]) * extra)
        self._key_of.extend([None] * (new - old))
        self._free.extend(range(new - 1, old - 1, -1))

    def _evict(self, key: str, cause: str) -> None:
        slot = self._slots.pop(key)
        tag = self._tag[slot]
        self._count[slot] = 0
        self._tag[slot] = -1
        self._key_of[slot] = None
        self._free.append(slot)
        if self._on_evict is not None:
            self._on_evict(key, cause, tag)

    def slot(self, key: str, now: float | None = None, tag: int = -1) -> int:
        """The slot of ``key``, allocating (and evicting the LRU key) when needed.

        ``tag`` (e.g. the input partition) lets :meth:`drop_tag` forget a group of keys.
        """
        slot = self._slots.get(key)
        if slot is not None:
            self._slots.move_to_end(key)
        else:
            if self.max_series is not None and len(self._slots) >= self.max_series:
                self._evict(next(iter(self._slots)), "max_series")
            if not self._free:
                self._grow()
            slot = self._free.pop()
            self._count[slot] = 0
            self._offset[slot] = -1
            self._slots[key] = slot
            self._key_of[slot] = key
        self._tag[slot] = tag
        self._seen[slot] = time.monotonic() if now is None else now
        return slot

    def drop(self, keys: Iterable[str], cause: str = "revoked") -> int:
        """Forget ``keys``; returns how many were held."""
        n = 0
        for k in list(keys):
            if k in self._slots:
                self._evict(k, cause)
                n += 1
        return n

    def drop_tag(self, tag: int, cause: str = "revoked") -> int:
        """Forget every key last appended with ``tag``; returns how many."""
        slots = np.flatnonzero(np.frombuffer(self._tag, dtype=np.int32) == tag)
        return self.drop([k for s in slots if (k := self._key_of[s]) is not None], cause)

    def evict_idle(self, ttl_s: float, now: float | None = None) -> int:
        """Drop keys not seen for ``ttl_s`` seconds; returns how many."""
        now = time.monotonic() if now is None else now
        seen = self._seen
        stale = [k for k, s in self._slots.items() if now - seen[s] > ttl_s]
        return self.drop(stale, cause="idle")

    # -- the data path -----------------------------------------------------------------
    def last_offset(self, key: str) -> int:
        """Input offset of the last point appended for ``key`` (-1 if unknown or absent)."""
        slot = self._slots.get(key)
        return -1 if slot is None else int(self._offset[slot])

    def export(self, key: str) -> tuple[int, int, int, np.ndarray, np.ndarray] | None:
        """(tag, count, last offset, values (held, F) oldest first, ts (held,)) of ``key``."""
        slot = self._slots.get(key)
        if slot is None:
            return None
        c = int(self._count[slot])
        held = min(c, self.window)
        idx = (c - held + self._order[:held]) % self.window
        return (self._tag[slot], c, self._offset[slot], self._values[slot, idx],
                self._abs_ts(slot, idx))

    def restore(self, key: str, tag: int, count: int, last_offset: int, values: np.ndarray,
                ts: np.ndarray) -> None:
        """Put back what :meth:`export` returned (after a restart or a rebalance)."""
        slot = self.slot(key, tag=tag)
        held = min(count, self.window, len(values))
        positions = (count - held + self._order[:held]) % self.window
        base = float(ts[-1]) if held else 0.0
        self._base[slot] = base
        self._last_ts[slot] = base
        self._values[slot, positions] = values[-held:] if held else values[:0]
        self._ts[slot, positions] = (np.asarray(ts[-held:], np.float64) - base) if held else 0.0
        self._count[slot] = count
        self._offset[slot] = last_offset

    def append(
        self, key: str, ts: float, value: np.ndarray, now: float | None = None, tag: int = -1,
        offset: int = -1,
    ) -> int | None:
        """Add one point; return the key's slot if a window is now due, else None."""
        slot = self.slot(key, now, tag)
        code = self._write(slot, ts, value, offset)
        return None if code == NO_WINDOW else code

    def _write(self, slot: int, ts: float, value: object, offset: int) -> int:
        self._offset[slot] = offset
        c = self._count[slot]
        if c == 0:
            self._base[slot] = ts
        rel = ts - self._base[slot]
        if rel > _REBASE_S or rel < -_REBASE_S:
            self._ts[slot] -= np.float32(rel)
            self._base[slot] = ts
            rel = 0.0
        pos = c % self.window
        self._values[slot, pos] = value
        self._ts[slot, pos] = rel
        self._last_ts[slot] = ts
        c += 1
        self._count[slot] = c
        if c >= self.window and (c - self.window) % self.hop == 0:
            return slot
        return NO_WINDOW

    def push(self, key: str, ts: float, value: object, tag: int, offset: int, now: float,
             skip_applied: bool = False) -> int:
        """The service's hot path: one lookup, the checks, and the append.

        Returns the slot when a window is due, else ``NO_WINDOW``; ``SKIPPED`` when
        ``skip_applied`` and ``offset`` is not after the key's last applied offset;
        ``BACKWARDS`` when ``ts`` is before the key's last timestamp (nothing is written).
        """
        slot = self._slots.get(key)
        if slot is not None:
            if skip_applied and offset <= self._offset[slot]:
                return SKIPPED
            if self._count[slot] and ts < self._last_ts[slot]:
                return BACKWARDS
            self._slots.move_to_end(key)
            self._tag[slot] = tag
            self._seen[slot] = now
        else:
            slot = self.slot(key, now, tag)
        return self._write(slot, ts, value, offset)

    def copy_window(self, slot: int, out: np.ndarray) -> tuple[float, float]:
        """Write the slot's current window, oldest first, into ``out`` (T, F); no allocation.

        Returns (start_ts, end_ts). The slot must hold at least ``window`` points.
        """
        pos = self._count[slot] % self.window
        v = self._values[slot]
        n1 = self.window - pos
        out[:n1] = v[pos:]
        out[n1:] = v[:pos]
        return float(self._ts[slot, pos]) + self._base[slot], self._last_ts[slot]

    def window_at(self, slot: int) -> tuple[np.ndarray, float, float]:
        """Copy the slot's current window in time order: (values (T, F), start_ts, end_ts)."""
        c = self._count[slot]
        idx = (c + self._order) % self.window
        ts = self._abs_ts(slot, idx)
        return self._values[slot, idx], float(ts[0]), float(ts[-1])

    def extend(
        self, key: str, ts: np.ndarray, values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Add many points of one key at once (the offline path).

        Returns the windows that became due, in order, as ``(windows (m, T, F),
        start_ts (m,), end_index (m,))`` where ``end_index`` indexes into the new points.
        Equivalent to calling :meth:`append` point by point.
        """
        values = np.asarray(values, dtype=np.float32).reshape(-1, self.n_features)
        ts = np.asarray(ts, dtype=np.float64)
        n = values.shape[0]
        slot = self.slot(key)
        c = int(self._count[slot])
        held = min(c, self.window)
        idx = (c - held + self._order[:held]) % self.window
        seq = np.concatenate([self._values[slot, idx], values])
        seq_ts = np.concatenate([self._abs_ts(slot, idx), ts])
        total = c + np.arange(1, n + 1)  # points seen after each new point
        due = (total >= self.window) & ((total - self.window) % self.hop == 0)
        end_index = np.nonzero(due)[0]
        if end_index.size:
            # window ending at new point j spans seq[held + j - T + 1 : held + j + 1]
            starts = held + end_index - self.window + 1
            view = sliding_window_view(seq, self.window, axis=0)  # (L-T+1, F, T)
            windows = np.ascontiguousarray(view[starts].transpose(0, 2, 1))
            start_ts = seq_ts[starts]
        else:
            windows = np.zeros((0, self.window, self.n_features), dtype=np.float32)
            start_ts = np.zeros(0, dtype=np.float64)
        # keep the ring consistent with point-by-point appends
        tail = min(self.window, seq.shape[0])
        new_c = c + n
        positions = (new_c - tail + self._order[:tail]) % self.window
        self._values[slot, positions] = seq[-tail:]
        if tail:
            base = float(seq_ts[-1])
            self._base[slot] = base
            self._last_ts[slot] = base
            self._ts[slot, positions] = seq_ts[-tail:] - base
        self._count[slot] = new_c
        return windows, start_ts, end_index
