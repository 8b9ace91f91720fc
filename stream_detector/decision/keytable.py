"""Per-key decision state as columns: every key one slot, every field one numpy array.

A :class:`KeyTable` hands each key a slot (reusing freed ones) and grows its columns
by doubling, so a batch of windows from many keys reads and writes the state of all of
them with one fancy-indexing operation per field instead of a Python loop over keys.
A field's slot is reset to its initial value when a key is forgotten.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class KeyTable:
    """Slots for keys and the columns behind them.

    ``fields``: name -> (dtype, shape of one slot's entry, initial value).
    """

    def __init__(self, fields: dict[str, tuple[type | str, tuple[int, ...], float]],
                 capacity: int = 64) -> None:
        self._spec = fields
        self._slot: dict[str, int] = {}
        self._free: list[int] = []
        self._size = 0  # slots ever used (the high-water mark)
        self.cols: dict[str, np.ndarray] = {
            name: np.full((capacity, *shape), init, dtype=dtype)
            for name, (dtype, shape, init) in fields.items()
        }

    def __len__(self) -> int:
        return len(self._slot)

    @property
    def capacity(self) -> int:
        return len(next(iter(self.cols.values())))

    def slot(self, key: str) -> int | None:
        return self._slot.get(key)

    def slots(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Each key's slot (new keys get one), and whether it was new."""
        get = self._slot.get
        out = np.fromiter((get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        new = out < 0
        if new.any():
            for i in np.flatnonzero(new).tolist():
                s = self._slot.get(keys[i])
                out[i] = s if s is not None else self._add(keys[i])
        return out, new

    def _add(self, key: str) -> int:
        if self._free:
            s = self._free.pop()
        else:
            s = self._size
            self._size += 1
            if s >= self.capacity:
                self._grow(2 * self.capacity)
        self._slot[key] = s
        return s

    def _grow(self, capacity: int) -> None:
        for name, (dtype, shape, init) in self._spec.items():
            old = self.cols[name]
            new = np.full((capacity, *shape), init, dtype=dtype)
            new[: len(old)] = old
            self.cols[name] = new

    def add(self, key: str) -> int:
        """The key's slot, a fresh one (reset) if it had none."""
        s = self._slot.get(key)
        return s if s is not None else self._add(key)

    def forget(self, key: str) -> None:
        s = self._slot.pop(key, None)
        if s is None:
            return
        self.reset(s)
        self._free.append(s)

    def reset(self, s: int) -> None:
        for name, (_, _, init) in self._spec.items():
            self.cols[name][s] = init


def rounds(slots: np.ndarray) -> list[np.ndarray]:
    """Positions of ``slots`` grouped into rounds: round r holds each slot's (r+1)-th
    occurrence, so within a round every slot appears once and a slot's windows are
    decided in order, whatever the batch cut."""
    n = len(slots)
    if n == 0:
        return []
    order = np.argsort(slots, kind="stable")
    s = slots[order]
    first = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    counts = np.diff(np.r_[first, n])
    occ_sorted = np.arange(n) - np.repeat(first, counts)
    top = int(counts.max())
    if top == 1:
        return [np.arange(n)]
    occ = np.empty(n, dtype=np.int64)
    occ[order] = occ_sorted
    by = np.argsort(occ, kind="stable")
    bounds = np.searchsorted(occ[by], np.arange(1, top))
    return np.split(by, bounds)
