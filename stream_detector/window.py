"""Per-key rolling window buffers, all keys in one preallocated slab.

Each key owns one slot of a ``(capacity, window, n_features)`` float32 ring buffer, so an
append is one row write (O(1), no allocation), and a few scalars kept in ``array``
arrays (fast scalar access from Python, no per-key Python objects).

Timestamps cost nothing for a regular series (most are: a point every N seconds): the
key keeps its last timestamp and its step in whole microseconds, and the timestamp of
any point it holds is the last minus a multiple of the step. The first point that
breaks the rhythm gives the key a row of per-point timestamps (float32 seconds relative
to a per-key float64 base, rebased every ~18 h of stream time) in a second slab. A
key's window is due every ``hop`` points once it holds ``window`` points. The least
recently seen key is evicted when ``max_series`` is reached, and keys not seen for
``idle_ttl_s`` can be swept out.

Order is the stream's, timestamps are data: a point whose timestamp is before the one of
its key's previous point (a clock stepping back an hour at a daylight-saving change, a
producer's clock fixed) is counted in ``backwards`` and, by default, used in arrival
order; with ``refuse_backwards`` it is refused instead. Either way it is judged against
the previous point only, not against the latest timestamp seen, so that one point far in
the future does not make every later point "backwards". Redeliveries are told apart by
partition and offset, never by timestamp.

A step much longer than the key's cadence is a gap; ``gaps`` (a :class:`GapPolicy`,
``--gap-policy``) fills it or restarts the key's window, counted in ``gaps_filled``,
``points_filled`` and ``gaps_restarted`` (see :mod:`stream_detector.gaps`).
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Iterable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike

from stream_detector.gaps import RESTART, GapPolicy, due_after, fill_times, gap_windows

EvictHook = Callable[[str, str, int], None]  # (key, cause, tag)
MoveHook = Callable[[str, int], None]  # (key, the tag it had)

NO_WINDOW = -1  # push(): the point was added, no window is due
SKIPPED = -2  # push(): the point's offset is already in the buffer (a redelivery)
# what --timestamp-policy does with a point whose timestamp goes back: use it in arrival
# order, drop it, or send it to the dead-letter topic (the last two: refuse_backwards)
TIMESTAMP_POLICIES = ("accept", "drop", "dlq")
BACKWARDS = -3  # push(): refused, its timestamp is before its key's previous point's
_REBASE_S = 65536.0
_UNSET = -(2**63)  # _step_us: fewer than two points so far (any real step may be negative)
_NEVER = 2**62  # _touch of a free slot (never the least recently seen)


class WindowBuffer:
    """Rolling windows for many series keys.

    Parameters
    ----------
    window: points per window (T).
    n_features: values per point (F).
    hop: a window is due every ``hop`` points once the buffer is full.
    max_series: cap on keys held; the least recently seen key is evicted beyond it.
    on_evict: called with (key, cause, tag) for every key dropped ("max_series", "idle",
        "revoked"), just before it is dropped (its last offset and timestamp still there).
    on_move: called with (key, old tag) when a key's point comes with another tag than its
        previous one (its partition changed: partitions were added to the input topic).
    refuse_backwards: :meth:`push` refuses (``BACKWARDS``) a point whose timestamp is before
        its key's previous point's instead of appending it in arrival order.
    gaps: what a key's window does over a gap in its timestamps (default: nothing).

    Points go in through :meth:`push` (one) or :meth:`push_round` (one each of many keys);
    a due window comes out through :meth:`copy_window` (into a batch row) or
    :meth:`windows_of` (many at once). :meth:`export` and :meth:`restore` carry a key
    through the state changelog; :func:`series_windows` is the offline path's equivalent
    for a whole series.
    """

    def __init__(
        self,
        window: int,
        n_features: int = 1,
        hop: int = 1,
        max_series: int | None = None,
        on_evict: EvictHook | None = None,
        on_move: MoveHook | None = None,
        initial_capacity: int = 1024,
        refuse_backwards: bool = False,
        gaps: GapPolicy | None = None,
    ) -> None:
        if window < 1 or hop < 1 or n_features < 1:
            raise ValueError("window, hop and n_features must be >= 1")
        self.window = window
        self.n_features = n_features
        self.hop = hop
        self.max_series = max_series
        self._on_evict = on_evict
        self._on_move = on_move
        self.refuse_backwards = refuse_backwards
        # points pushed whose timestamp is before their key's previous point's (appended or
        # refused; redeliveries, skipped by offset, are not counted)
        self.backwards = 0
        self.gaps = gaps if gaps is not None and gaps.active else None
        # gaps filled, the points filled in them, and gaps that restarted a key's window
        self.gaps_filled = 0
        self.points_filled = 0
        self.gaps_restarted = 0
        cap = max(1, min(initial_capacity, max_series or initial_capacity))
        self._values = np.zeros((cap, window, n_features), dtype=np.float32)
        self._last_ts = array("d", bytes(8 * cap))  # of the last point appended
        # of the key's previous point in arrival order: the last appended, or a later refused
        self._prev_ts = array("d", bytes(8 * cap))
        self._step_us = array("q", [_UNSET]) * cap
        self._ts_row = array("i", [-1]) * cap  # row of _ts for an irregular key, else -1
        self._count = array("q", bytes(8 * cap))
        self._seen = array("f", bytes(4 * cap))  # last seen, seconds after _t0 (float32)
        self._t0 = time.monotonic()
        self._touch = array("q", [_NEVER]) * cap  # LRU order: a counter of pushes
        self._clock = 0
        self._tag = array("i", [-1]) * cap
        self._offset = array("q", [-1]) * cap
        self._dirty = bytearray(cap)  # written since the last take_dirty()
        self._key_of: list[str | None] = [None] * cap
        self._slots: dict[str, int] = {}
        self._free: list[int] = list(range(cap - 1, -1, -1))
        self._lru: list[tuple[int, int]] = []  # eviction candidates, least recently seen last
        # per-point timestamps of irregular keys only
        self._ts = np.zeros((0, window), dtype=np.float32)  # relative to _base
        self._base = array("d")
        self._ts_free: list[int] = []
        self._order = np.arange(window)

    # -- bookkeeping -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    def last_ts(self, key: str) -> float | None:
        """Timestamp of the last point appended for ``key`` (None if none or absent)."""
        slot = self._slots.get(key)
        if slot is None or self._count[slot] == 0:
            return None
        return self._last_ts[slot]

    def tag_of(self, key: str) -> int:
        """The tag (input partition) of ``key``'s last point, -1 if absent."""
        slot = self._slots.get(key)
        return -1 if slot is None else int(self._tag[slot])

    def last_offset(self, key: str) -> int:
        """Input offset of the last point appended for ``key`` (-1 if unknown or absent)."""
        slot = self._slots.get(key)
        return -1 if slot is None else int(self._offset[slot])

    def _held_ts(self, slot: int, held: int) -> np.ndarray:
        """Absolute timestamps (float64) of the key's last ``held`` points, oldest first."""
        c = int(self._count[slot])
        row = self._ts_row[slot]
        if row >= 0:
            idx = (c - held + self._order[:held]) % self.window
            ts: np.ndarray = self._ts[row, idx].astype(np.float64) + self._base[row]
            return ts
        step = self._step_us[slot]
        step = 0 if step == _UNSET else step
        last_us = round(self._last_ts[slot] * 1e6)
        return (last_us - step * np.arange(held - 1, -1, -1, dtype=np.int64)) / 1e6

    def _to_irregular(self, slot: int) -> int:
        """Give ``slot`` a row of per-point timestamps, filled from its rhythm."""
        held = min(int(self._count[slot]), self.window)
        ts = self._held_ts(slot, held)
        if not self._ts_free:
            old = self._ts.shape[0]
            new = max(64, old * 2)
            grown = np.zeros((new, self.window), dtype=np.float32)
            grown[:old] = self._ts
            self._ts = grown
            self._base.extend(array("d", bytes(8 * (new - old))))
            self._ts_free.extend(range(new - 1, old - 1, -1))
        row = self._ts_free.pop()
        base = self._last_ts[slot]
        self._base[row] = base
        c = int(self._count[slot])
        self._ts[row, (c - held + self._order[:held]) % self.window] = ts - base
        self._ts_row[slot] = row
        return row

    def _grow(self) -> None:
        old = self._values.shape[0]
        # by a quarter, not double: the scalar arrays are written (so resident) in full
        step = max(1024, old // 4)
        new = old + step if self.max_series is None else min(old + step, self.max_series)
        # np.zeros maps fresh pages lazily: only slots actually used count towards RSS
        values = np.zeros((new,) + self._values.shape[1:], dtype=np.float32)
        values[:old] = self._values
        self._values = values
        extra = new - old
        self._last_ts.extend(array("d", bytes(8 * extra)))
        self._prev_ts.extend(array("d", bytes(8 * extra)))
        self._step_us.extend(array("q", [_UNSET]) * extra)
        self._ts_row.extend(array("i", [-1]) * extra)
        self._count.extend(array("q", bytes(8 * extra)))
        self._seen.extend(array("f", bytes(4 * extra)))
        self._touch.extend(array("q", [_NEVER]) * extra)
        self._tag.extend(array("i", [-1]) * extra)
        self._offset.extend(array("q", [-1]) * extra)
        self._dirty.extend(bytes(extra))
        self._key_of.extend([None] * extra)
        self._free.extend(range(new - 1, old - 1, -1))

    def _free_row(self, slot: int) -> None:
        """Give the slot's timestamp row back (the key is on a rhythm again, or gone)."""
        row = self._ts_row[slot]
        if row >= 0:
            self._ts_free.append(row)
            self._ts_row[slot] = -1

    def _release(self, slot: int) -> None:
        self._free_row(slot)
        self._count[slot] = 0
        self._step_us[slot] = _UNSET
        self._touch[slot] = _NEVER
        self._offset[slot] = -1
        self._dirty[slot] = 0

    def _evict(self, key: str, cause: str) -> None:
        slot = self._slots[key]
        tag = self._tag[slot]
        if self._on_evict is not None:  # (the key is still there: last_offset, last_ts)
            self._on_evict(key, cause, tag)
        del self._slots[key]
        self._release(slot)
        self._tag[slot] = -1
        self._key_of[slot] = None
        self._free.append(slot)

    def _least_recent(self) -> str:
        """The least recently seen key (exact LRU, amortised: candidates come in bulk).

        Candidates are the slots with the smallest push counters when last computed; one
        pushed since then has a larger counter and is passed over, a key added since is
        newer than all of them, so the first candidate still untouched is the LRU key.
        """
        touch = self._touch
        while True:
            while self._lru:
                slot, t = self._lru.pop()
                key = self._key_of[slot]
                if key is not None and touch[slot] == t:
                    return key
            t_all = np.frombuffer(touch, dtype=np.int64)
            k = min(256, len(t_all))
            cand = np.argpartition(t_all, k - 1)[:k] if k < len(t_all) else np.arange(k)
            cand = cand[np.argsort(t_all[cand])[::-1]]  # least recent last (popped first)
            self._lru = [(int(sl), int(t_all[sl])) for sl in cand if t_all[sl] != _NEVER]

    def _slot(self, key: str, now: float | None = None, tag: int = -1) -> int:
        """The slot of ``key``, allocating (and evicting the LRU key) when needed."""
        slot = self._slots.get(key)
        if slot is None:
            if self.max_series is not None and len(self._slots) >= self.max_series:
                self._evict(self._least_recent(), "max_series")
            if not self._free:
                self._grow()
            slot = self._free.pop()
            self._release(slot)
            self._slots[key] = slot
            self._key_of[slot] = key
        self._clock += 1
        self._touch[slot] = self._clock
        self._tag[slot] = tag
        self._seen[slot] = (time.monotonic() if now is None else now) - self._t0
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
        rel = (time.monotonic() if now is None else now) - self._t0
        seen = np.frombuffer(self._seen, dtype=np.float32)
        stale = [k for s in np.flatnonzero(rel - seen > ttl_s).tolist()
                 if (k := self._key_of[s]) is not None]
        return self.drop(stale, cause="idle")

    # -- state checkpoints: what changed, its export, its restore ----------------------
    def any_dirty(self) -> bool:
        """Whether some key was written since the last :meth:`take_dirty`."""
        return self._dirty.find(1) >= 0

    def take_dirty(self, tags: set[int] | None = None) -> list[str]:
        """The keys written since last taken (only those tagged ``tags`` if given)."""
        flags = np.frombuffer(self._dirty, dtype=np.uint8)
        slots = np.flatnonzero(flags)
        if tags is not None:
            slots = slots[np.isin(np.frombuffer(self._tag, dtype=np.int32)[slots], list(tags))]
        flags[slots] = 0
        return [key for sl in slots.tolist() if (key := self._key_of[sl]) is not None]

    def mark_dirty(self, key: str) -> None:
        """Have the next :meth:`take_dirty` take ``key`` (a checkpoint that did not write it)."""
        slot = self._slots.get(key)
        if slot is not None:
            self._dirty[slot] = 1

    def export(self, key: str) -> tuple[int, int, int, np.ndarray, np.ndarray] | None:
        """(tag, count, last offset, values (held, F) oldest first, ts (held,)) of ``key``."""
        slot = self._slots.get(key)
        if slot is None:
            return None
        c = int(self._count[slot])
        held = min(c, self.window)
        idx = (c - held + self._order[:held]) % self.window
        return (self._tag[slot], c, self._offset[slot], self._values[slot, idx],
                self._held_ts(slot, held))

    def restore(self, key: str, tag: int, count: int, last_offset: int, values: np.ndarray,
                ts: np.ndarray) -> None:
        """Put back what :meth:`export` returned (after a restart or a rebalance)."""
        slot = self._slot(key, tag=tag)
        held = min(count, self.window, len(values))
        positions = (count - held + self._order[:held]) % self.window
        self._values[slot, positions] = values[-held:] if held else values[:0]
        self._count[slot] = count
        self._offset[slot] = last_offset
        ts = np.asarray(ts, np.float64)[len(ts) - held:]
        # on a rhythm: its step; else a row of timestamps
        self._last_ts[slot] = self._prev_ts[slot] = float(ts[-1]) if held else 0.0
        steps = np.diff(np.round(ts * 1e6).astype(np.int64))
        if steps.size == 0 or (steps == steps[0]).all():
            self._step_us[slot] = int(steps[0]) if steps.size else _UNSET
            self._free_row(slot)
            return
        row = self._ts_row[slot]
        if row < 0:
            row = self._to_irregular(slot)
        self._base[row] = ts[-1]
        self._ts[row, positions] = ts - ts[-1]

    # -- the data path -----------------------------------------------------------------
    def _write(self, slot: int, ts: float, value: ArrayLike, offset: int) -> int:
        self._offset[slot] = offset
        self._dirty[slot] = 1
        before = self._count[slot]
        if self.gaps is not None and before:
            before = self._over_gap(slot, ts, value, before)
        c = self._append(slot, ts, value)
        if c - before == 1:  # one point appended (no gap filled): the usual rule, inline
            if c >= self.window and (c - self.window) % self.hop == 0:
                return slot
            return NO_WINDOW
        return slot if due_after(before, c, self.window, self.hop) else NO_WINDOW

    def _over_gap(self, slot: int, ts: float, value: ArrayLike, count: int) -> int:
        """Fill a gap before the point at ``ts``, or restart the key's window, as the gap
        policy says; returns the count a window is due after (the count before the gap)."""
        assert self.gaps is not None
        held = min(count, self.window)
        last = self._last_ts[slot]
        k = self.gaps.action(ts - last, last - self._oldest_ts(slot, held), held, self.window)
        if k == RESTART:
            self.gaps_restarted += 1
            self._free_row(slot)
            self._count[slot] = 0
            self._step_us[slot] = _UNSET
            return 0
        if k > 0:
            self.gaps_filled += 1
            self.points_filled += k
            fill = self.gaps.fill(self._values[slot, (count - 1) % self.window], value, k)
            for t, v in zip(fill_times(last, ts, k).tolist(), fill):
                self._append(slot, t, v)
        return count

    def _oldest_ts(self, slot: int, held: int) -> float:
        """Timestamp of the oldest of the key's last ``held`` points."""
        row = self._ts_row[slot]
        if row >= 0:
            return float(self._ts[row, (self._count[slot] - held) % self.window]) + self._base[row]
        step = self._step_us[slot]
        step = 0 if step == _UNSET else step
        return (round(self._last_ts[slot] * 1e6) - (held - 1) * step) / 1e6

    def _append(self, slot: int, ts: float, value: ArrayLike) -> int:
        """Append one point (real or filled) to the slot; returns its new count."""
        c = self._count[slot]
        pos = c % self.window
        row = self._ts_row[slot]
        if row < 0 and c:
            step = round((ts - self._last_ts[slot]) * 1e6)
            known = self._step_us[slot]
            if known == _UNSET:
                self._step_us[slot] = step
            elif step != known:
                row = self._to_irregular(slot)  # off the rhythm: keep every timestamp
        if row >= 0:
            base = self._base[row]
            rel = ts - base
            # Rebase once the stream has moved on: when this point and the previous one are
            # both far from the base. One point far off (a wrong clock, far in the future)
            # is stored coarsely itself rather than making the points around it coarse.
            if (rel > _REBASE_S or rel < -_REBASE_S) and (
                    abs(self._last_ts[slot] - base) > _REBASE_S):
                self._ts[row] = (self._ts[row].astype(np.float64) - rel).astype(np.float32)
                self._base[row] = ts
                rel = 0.0
            self._ts[row, pos] = rel
        self._values[slot, pos] = value
        self._last_ts[slot] = self._prev_ts[slot] = ts
        c += 1
        self._count[slot] = c
        return c

    def push(self, key: str, ts: float, value: ArrayLike, tag: int, offset: int, now: float,
             skip_applied: bool = False) -> int:
        """The service's hot path: one lookup, the checks, and the append.

        Returns the slot when a window is due, else ``NO_WINDOW``; ``SKIPPED`` when
        ``skip_applied`` and ``offset`` is not after the key's last applied offset in
        the same partition ``tag`` (a redelivery, nothing is written or counted); ``BACKWARDS`` when
        ``refuse_backwards`` and ``ts`` is before the key's previous point's (nothing is
        written, the point is counted and is the previous point for the next one).
        """
        slot = self._slots.get(key)
        if slot is not None:
            # an offset is only comparable within its partition: a key that moved to
            # another one (partitions were added) starts again at that partition's offsets
            if skip_applied and offset <= self._offset[slot] and tag == self._tag[slot]:
                return SKIPPED
            if ts < self._prev_ts[slot] and self._count[slot]:
                self.backwards += 1
                if self.refuse_backwards:
                    self._prev_ts[slot] = ts
                    return BACKWARDS
            self._clock += 1
            self._touch[slot] = self._clock
            if tag != self._tag[slot] and self._on_move is not None:
                self._on_move(key, int(self._tag[slot]))
            self._tag[slot] = tag
            self._seen[slot] = now - self._t0
        else:
            slot = self._slot(key, now, tag)
        return self._write(slot, ts, value, offset)

    def push_round(self, keys: list[str], ts: np.ndarray, values: np.ndarray, tags: np.ndarray,
                   offsets: np.ndarray, now: float, skip_applied: bool = False
                   ) -> np.ndarray | None:
        """:meth:`push` for points of distinct keys at once, vectorised; codes as push's.

        ``values`` is (n, n_features). Gives what pushing the points one by one, in order,
        would give, and leaves the same state. Returns None, having written nothing, when
        new keys would need an eviction: then push them one by one.
        """
        n = len(keys)
        get = self._slots.get
        found = [get(k, -1) for k in keys]
        new = [i for i, s in enumerate(found) if s < 0]
        if new and self.max_series is not None and len(self._slots) + len(new) > self.max_series:
            return None
        slots = np.array(found, dtype=np.int64)
        codes = np.full(n, NO_WINDOW, dtype=np.int64)
        old = slots >= 0
        clock = self._clock
        for i in new:  # a new key's first point (never a redelivery, never backwards);
            # first, as allocating may grow the arrays (none is viewed by numpy yet)
            slot = self._slot(keys[i], now, int(tags[i]))
            slots[i] = slot
            codes[i] = self._write(slot, float(ts[i]), values[i], int(offsets[i]))
        s_old = slots[old]
        count = np.frombuffer(self._count, np.int64)
        last_ts = np.frombuffer(self._last_ts, np.float64)
        c_old = count[s_old]
        refused = np.zeros(n, dtype=bool)
        if skip_applied:
            skip = np.flatnonzero(old)[
                (offsets[old] <= np.frombuffer(self._offset, np.int64)[s_old])
                & (tags[old] == np.frombuffer(self._tag, np.int32)[s_old])]
            codes[skip] = SKIPPED
            refused[skip] = True
        prev_ts = np.frombuffer(self._prev_ts, np.float64)
        back = np.zeros(n, dtype=bool)
        back[old] = (c_old > 0) & (ts[old] < prev_ts[s_old])
        back &= ~refused
        self.backwards += int(np.count_nonzero(back))
        if self.refuse_backwards:
            codes[back] = BACKWARDS
            refused |= back
            prev_ts[slots[back]] = ts[back]
        accepted = ~refused
        # the pushes that one by one would touch the keys, in order (LRU)
        touch = clock + np.cumsum(accepted)
        self._clock = clock + int(accepted.sum())
        acc_slots = slots[accepted]
        np.frombuffer(self._touch, np.int64)[acc_slots] = touch[accepted]
        tag_of = np.frombuffer(self._tag, np.int32)
        if self._on_move is not None:
            for m in np.flatnonzero(accepted & (tag_of[slots] != tags)).tolist():
                self._on_move(keys[m], int(tag_of[slots[m]]))
        tag_of[acc_slots] = tags[accepted]
        np.frombuffer(self._seen, np.float32)[acc_slots] = now - self._t0
        # points on their key's rhythm are written at once; the rest as push would
        keep = accepted & old
        s_k = slots[keep]
        c_k = count[s_k]
        step = np.frombuffer(self._step_us, np.int64)[s_k]
        fast = ((np.frombuffer(self._ts_row, np.int32)[s_k] < 0) & (c_k > 0) & (step != _UNSET)
                & (np.rint((ts[keep] - last_ts[s_k]) * 1e6) == step))
        idx_keep = np.flatnonzero(keep)
        for i in idx_keep[~fast]:
            codes[i] = self._write(int(slots[i]), float(ts[i]), values[i], int(offsets[i]))
        f = idx_keep[fast]
        if f.size:
            s_f, c_f = slots[f], count[slots[f]]
            self._values[s_f, c_f % self.window] = values[f]
            last_ts[s_f] = ts[f]
            prev_ts[s_f] = ts[f]
            np.frombuffer(self._offset, np.int64)[s_f] = offsets[f]
            np.frombuffer(self._dirty, np.uint8)[s_f] = 1
            c_f = c_f + 1
            count[s_f] = c_f
            due = (c_f >= self.window) & ((c_f - self.window) % self.hop == 0)
            codes[f[due]] = s_f[due]
        return codes

    def windows_of(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The current windows of distinct ``slots``, oldest point first: (windows (m, T, F),
        start_ts (m,), end_ts (m,)); what :meth:`copy_window` gives, for many at once."""
        pos = np.frombuffer(self._count, np.int64)[slots] % self.window  # oldest point's
        rows = self._values[slots]
        # each window is its row rotated: a slice of the row written twice (half the time
        # of indexing every element)
        twice = sliding_window_view(np.concatenate([rows, rows], axis=1), self.window, axis=1)
        windows = twice[np.arange(len(slots)), pos].transpose(0, 2, 1)
        end = np.frombuffer(self._last_ts, np.float64)[slots]
        if self.window == 1:
            return windows, end.copy(), end
        step = np.frombuffer(self._step_us, np.int64)[slots]
        start = (np.rint(end * 1e6) - (self.window - 1) * step) / 1e6
        for j in np.flatnonzero(np.frombuffer(self._ts_row, np.int32)[slots] >= 0):
            start[j] = self._start_ts(int(slots[j]))
        return windows, start, end

    def _start_ts(self, slot: int) -> float:
        """Timestamp of the oldest point of the slot's current (full) window."""
        if self.window == 1:
            return self._last_ts[slot]
        row = self._ts_row[slot]
        if row >= 0:
            pos = self._count[slot] % self.window
            return float(self._ts[row, pos]) + self._base[row]
        return (round(self._last_ts[slot] * 1e6) - (self.window - 1) * self._step_us[slot]) / 1e6

    def copy_window(self, slot: int, out: np.ndarray) -> tuple[float, float]:
        """Write the slot's current window, oldest first, into ``out`` (T, F); no allocation.

        Returns (start_ts, end_ts). The slot must hold at least ``window`` points.
        """
        pos = self._count[slot] % self.window
        v = self._values[slot]
        n1 = self.window - pos
        out[:n1] = v[pos:]
        out[n1:] = v[:pos]
        return self._start_ts(slot), self._last_ts[slot]


def series_windows(values: np.ndarray, window: int, hop: int = 1, ts: np.ndarray | None = None,
                   gaps: GapPolicy | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The windows of one whole series, as a new key's points pushed one by one make due
    (the offline path: ``score`` and ``train``).

    ``values`` is (n, F). Returns ``(windows (m, window, F) float32, end_index (m,))``,
    ``end_index`` being the position in ``values`` of each window's newest point. With
    ``gaps`` (and the points' timestamps ``ts``), gaps are filled or restart the window as
    :class:`WindowBuffer` does (:func:`~stream_detector.gaps.gap_windows`).
    """
    if gaps is not None and gaps.active and ts is not None and window > 1:
        got = gap_windows(ts, values, window, hop, gaps)
        return got.windows, got.end_index
    values = np.asarray(values, dtype=np.float32)
    end_index = np.arange(window - 1, len(values), hop)
    if not end_index.size:
        return np.zeros((0, window, values.shape[1]), dtype=np.float32), end_index
    view = sliding_window_view(values, window, axis=0)  # (n - window + 1, F, window)
    return np.ascontiguousarray(view[end_index - window + 1].transpose(0, 2, 1)), end_index
