"""``adaptive``, the default decision: every key's state in one table, decided a batch
at a time.

Per key, in O(1) state (~240 bytes with a period, ~180 without):

- **Error tail**: a reservoir of the ``tail`` largest errors of the key's last
  ``horizon`` windows. A generalised Pareto tail is fitted by moments to the excesses
  over the smallest kept error, its shape kept >= 0: a bounded tail fitted on a few
  strongly correlated windows makes any error just past its end point "certain",
  which is where false alarms come from. Beyond the largest error the key has shown, a
  window's tail probability is the smaller of the GPD's and the empirical one; below
  it, the empirical one.
- **The boundary** is a false-alarm rate a user can read: at most one false incident
  per key per ``false_alarms`` windows on data like the key's past. Overlapping
  windows share ``overlap - 1`` of their points (``window / hop``), so a window's
  error is not an independent observation: an excursion of the error lasts about
  ``overlap`` windows and any of them may open the incident. The boundary tail
  probability is therefore ``1 / (false_alarms * overlap)``. An error below ``floor``
  times the key's static threshold (the seed's calibrated quantile) never alarms.
- **Value checks** (checks.py): the range the key has shown, its activity (stuck
  values, flat lines) and, for keys with a trained period, its season.
- **Suppression**: a window is news only if its evidence beats every window of the
  key's last ~``SUPPRESS`` windows (four block maxima); otherwise it is halved, so an
  excursion alarms at its onset and again only if it grows.

The first ``warmup`` windows of a key are decided by the static rule. ``anomaly_score``
is ``u / (u + u*)`` of the strongest check (``u``: its level, ``u*``: its boundary),
1 for a range hit; ``threshold`` is the error at which the error test alone would
have alarmed, always finite.

A batch is decided in rounds (:func:`~.keytable.rounds`): each round takes at most one
window per key, all keys at once, so a key's windows are decided in order and a batch
cut never changes a decision.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from stream_detector.decision import checks
from stream_detector.decision.base import (
    ACTIVITY,
    ERROR,
    RANGE,
    SEASON,
    Decision,
    Newest,
    Periods,
    Ranges,
)
from stream_detector.decision.codec import StateError
from stream_detector.decision.keytable import KeyTable, rounds
from stream_detector.decision.tails import LN10, score_of
from stream_detector.threshold import Thresholds

SUPPRESS_BLOCKS, SUPPRESS_BLOCK = 4, 16  # block maxima: the last 48-64 windows
SHAPE_MIN, SHAPE_MAX = 0.0, 0.5  # no bounded tail: nothing is certain
THRESHOLD_CAP = 100.0  # a threshold is at most this times the key's largest error seen

_MAGIC = b"SDE1"
_HEAD = struct.Struct("<4sBBQ")  # magic, features, flags, windows seen
_FLAG_SEASON = 1


class AdaptiveDecider:
    """The default decider (module docstring); one instance decides every key."""

    name = "adaptive"
    wants_values = True

    def __init__(self, thresholds: Thresholds, ranges: Ranges | None = None,
                 periods: Periods | None = None, *, overlap: int = 1,
                 false_alarms: float = 10_000, tail: int = 20, horizon: int = 1000,
                 warmup: int = 100, floor: float = 0.5, range: float = 0.05,
                 activity: str = "on", season: str = "trained", suppress: str = "on",
                 **_: Any) -> None:
        if not (false_alarms >= 1 and 4 <= tail <= 255 and tail < horizon < 65536
                and warmup >= 0 and floor >= 0 and 0 <= range < math.inf
                and activity in ("on", "off") and suppress in ("on", "off")
                and (season in ("off", "trained") or season.isdigit())):
            raise ValueError(
                "adaptive: need false_alarms >= 1, 4 <= tail < horizon < 65536, tail <= 255, "
                "warmup >= 0, floor >= 0, range >= 0, activity/suppress on|off, "
                "season off|trained|N")
        self.thresholds = thresholds
        self.ranges = ranges or {}
        self.periods = dict(periods or {}) if season == "trained" else {}
        self.fixed_period = int(season) if season.isdigit() else 0
        self.overlap = max(int(overlap), 1)
        self.ustar = math.log10(false_alarms * self.overlap)  # -log10 of the boundary p
        self.k, self.horizon, self.warmup = int(tail), int(horizon), int(warmup)
        self.floor, self.tolerance = float(floor), float(range)
        self.use_activity, self.use_suppress = activity == "on", suppress == "on"
        self.use_season = season != "off"
        self.table: KeyTable | None = None
        self.n_features = 0
        # what the value checks saw for the windows they flagged in the last decide call,
        # by the window's place in it (decision.checks_seen)
        self.seen: dict[int, dict[str, dict[str, Any]]] = {}

    # -- the table -------------------------------------------------------------------
    def _fields(self, f: int) -> dict[str, tuple[Any, tuple[int, ...], float]]:
        return {
            "n": (np.int64, (), 0), "res": (np.float32, (self.k,), -np.inf),
            "tick": (np.uint16, (self.k,), 0), "blocks": (np.float32, (SUPPRESS_BLOCKS,), 0),
            "lo": (np.float32, (f,), np.nan), "hi": (np.float32, (f,), np.nan),
            "prev": (np.float32, (f,), np.nan), "act": (np.float32, (4,), 0),
            "aflag": (np.bool_, (), False),
            "sprof": (np.float16, (checks.SEASON_BINS,), np.nan),
            "sacc": (np.float32, (2,), 0), "sstat": (np.float32, (3,), 0),
            "sc": (np.int64, (), 0),
            # from the artifact, not state: each key's static threshold, period, scale
            "tstat": (np.float64, (), 0), "period": (np.int32, (), 0),
            "scale": (np.float32, (f,), 1.0),
        }

    def _ensure(self, f: int) -> KeyTable:
        if self.table is None:
            self.table = KeyTable(self._fields(f))
            self.n_features = f
        elif f != self.n_features:
            raise ValueError(f"adaptive: windows of {f} features, the keys have "
                             f"{self.n_features}")
        return self.table

    def _init_slot(self, key: str, s: int) -> None:
        assert self.table is not None
        cols = self.table.cols
        cols["tstat"][s] = self.thresholds.for_key(key)
        period = self.fixed_period or int(self.periods.get(key, 0))
        cols["period"][s] = period if self.use_season else 0
        known = self.ranges.get(key)
        if known is not None and len(known[0]) == self.n_features:
            lo = np.asarray(known[0], np.float32)
            hi = np.asarray(known[1], np.float32)
            cols["lo"][s], cols["hi"][s] = lo, hi
            width = hi - lo
            cols["scale"][s] = np.where(width > 0, width, 1.0)

    # -- deciding --------------------------------------------------------------------
    def decide(self, keys: Sequence[str], scores: np.ndarray,
               newest: Newest | None = None) -> Decision:
        x = np.asarray(scores, dtype=np.float32).astype(np.float64)
        n = len(x)
        out = Decision.empty(n)
        self.seen = {}
        if n == 0:
            return out
        v = None
        if newest is not None:
            v = np.asarray(newest, np.float32)
            if v.ndim < 3:
                v = v.reshape(n, 1, -1)
        table = self._ensure(v.shape[2] if v is not None else max(self.n_features, 1))
        slots, new = table.slots(keys)
        if new.any():
            for i in np.flatnonzero(new).tolist():
                self._init_slot(keys[i], int(slots[i]))
        for idx in rounds(slots):
            got = self._round(slots[idx], x[idx], None if v is None else v[idx], idx)
            for field, part in zip(out, got):
                field[idx] = part
        return out

    def _round(self, s: np.ndarray, x: np.ndarray, v: np.ndarray | None,
               at: np.ndarray) -> Decision:
        """Decide one window of each slot ``s`` (``at``: their places in the call)."""
        assert self.table is not None
        cols = self.table.cols
        m = len(s)
        count = cols["n"][s]
        t_static = cols["tstat"][s]
        warm = count >= self.warmup
        # the error tail, from the reservoir as it was before this window
        a_err, tail = self._tail(s, x, count)
        a_err = np.where(warm, a_err, score_of(x, t_static))  # the static rule
        floor = self.floor * t_static
        below = x < floor
        a_err = np.where(below & warm, np.minimum(a_err, 0.5 * x / np.maximum(floor, 1e-300)),
                         a_err)
        reason = np.where(a_err >= 0.5, ERROR, 0).astype(np.uint8)
        a = a_err
        hit = np.zeros(m, dtype=bool)
        if v is not None:
            if self.tolerance > 0:
                hit, lo, hi = checks.range_check(cols, s, v, self.tolerance, warm)
                for r in np.flatnonzero(hit).tolist():
                    self.seen.setdefault(int(at[r]), {})["range"] = {
                        "low": lo[r].tolist(), "high": hi[r].tolist(),
                        "tolerance": self.tolerance}
            if self.use_activity:
                flat, level = checks.activity_check(cols, s, v, count >= checks.ACTIVITY_WARMUP)
                a_act = score_of(level, checks.ACTIVITY_SIGMAS)
                reason |= np.where(flat, ACTIVITY, 0).astype(np.uint8)
                a = np.maximum(a, a_act)
                for r in np.flatnonzero(flat).tolist():
                    self.seen.setdefault(int(at[r]), {})["activity"] = {
                        "level": float(level[r]), "boundary": checks.ACTIVITY_SIGMAS}
            if self.use_season:
                level = checks.season_check(cols, s, v)
                a_sea = score_of(level, checks.SEASON_RATIO)
                reason |= np.where(a_sea >= 0.5, SEASON, 0).astype(np.uint8)
                a = np.maximum(a, a_sea)
                for r in np.flatnonzero(a_sea >= 0.5).tolist():
                    self.seen.setdefault(int(at[r]), {})["season"] = {
                        "level": float(level[r]), "boundary": checks.SEASON_RATIO}
        excursion = (a >= 0.5) | hit
        need = np.full(m, 0.5)
        if self.use_suppress:
            blocks = cols["blocks"][s]
            prev_max = blocks.max(axis=1).astype(np.float64)
            news = a > prev_max
            need = np.maximum(0.5, prev_max)
            at = (count // SUPPRESS_BLOCK) % SUPPRESS_BLOCKS
            rows = np.arange(m)
            fresh = count % SUPPRESS_BLOCK == 0
            blocks[rows[fresh], at[fresh]] = 0.0
            blocks[rows, at] = np.maximum(blocks[rows, at], a)
            cols["blocks"][s] = blocks
            a = np.where(news, a, 0.5 * a)
        flag = a >= 0.5
        if hit.any():  # a level the key never reached is news whatever the rest says
            a = np.where(hit, 1.0, a)
            flag |= hit
            reason |= np.where(hit, RANGE, 0).astype(np.uint8)
        reason = np.where(excursion | flag, reason, 0).astype(np.uint8)
        thr = self._threshold(need, t_static, warm, tail)
        self._learn(s, x, count)
        cols["n"][s] = count + 1
        return Decision(thr, a, flag, excursion, reason)

    def _tail(self, s: np.ndarray, x: np.ndarray,
              count: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Per window: the error's anomaly score against the key's tail, and the fit."""
        assert self.table is not None
        res = self.table.cols["res"][s].astype(np.float64)
        age = (count[:, None] - self.table.cols["tick"][s].astype(np.int64)) & 0xFFFF
        valid = np.isfinite(res) & (age < self.horizon)
        k = valid.sum(axis=1)
        t0 = np.where(valid, res, np.inf).min(axis=1)
        t0 = np.where(k > 0, t0, 0.0)
        top = np.where(valid, res, -np.inf).max(axis=1)
        above = valid & (res > t0[:, None])
        cnt = above.sum(axis=1)
        y = np.where(above, res - t0[:, None], 0.0)
        mean = y.sum(axis=1) / np.maximum(cnt, 1)
        var = (y * y).sum(axis=1) / np.maximum(cnt, 1) - mean * mean
        thin = (cnt < 3) | (mean <= 0) | (var <= 0)
        mean = np.where(thin, np.maximum(np.abs(t0), 1e-12) * 0.1, mean)
        var = np.where(thin, mean * mean, var)
        gamma = np.clip(0.5 * (1.0 - mean * mean / var), SHAPE_MIN, SHAPE_MAX)
        sigma = np.maximum(mean * (1.0 - gamma), 1e-12)
        n_h = np.maximum(np.minimum(count, self.horizon), 1).astype(np.float64)
        log_ft = np.log10(np.maximum(k, 1) / n_h)
        ge = (valid & (res >= x[:, None])).sum(axis=1)
        log_emp = np.log10((ge + 1.0) / (n_h + 1.0))
        e = np.maximum(x - t0, 0.0)
        g = np.where(gamma == 0, 1.0, gamma)
        with np.errstate(divide="ignore", invalid="ignore"):
            base = np.maximum(1.0 + gamma * e / sigma, 1e-300)
            log_tail = np.where(gamma == 0, log_ft - e / (sigma * LN10),
                                log_ft - np.log10(base) / g)
        # the fitted tail speaks only beyond the largest error the key has shown: an
        # error it already exceeded is as rare as the count says, never "certain"
        log_p = np.where(x > top, np.minimum(log_tail, log_emp), log_emp)
        return score_of(-np.minimum(log_p, 0.0), self.ustar), (t0, sigma, gamma, log_ft, top)

    def _threshold(self, need: np.ndarray, t_static: np.ndarray, warm: np.ndarray,
                   tail: tuple[np.ndarray, ...]) -> np.ndarray:
        """The error at which each window's error test would have reached ``need``."""
        t0, sigma, gamma, log_ft, top = tail
        need = np.minimum(need, 1.0 - 1e-9)
        odds = need / (1.0 - need)
        u_need = self.ustar * odds
        rel = np.minimum(-u_need - log_ft, 0.0)  # log10(p / tail fraction)
        g = np.where(gamma == 0, 1.0, gamma)
        with np.errstate(over="ignore", invalid="ignore"):
            x_tail = np.where(gamma == 0, t0 - sigma * rel * LN10,
                              t0 + sigma / g * (10.0 ** (-g * rel) - 1.0))
        cap = THRESHOLD_CAP * np.maximum(np.maximum(top, t_static), 1e-12)
        x_tail = np.minimum(np.nan_to_num(x_tail, nan=cap, posinf=cap), cap)
        thr = np.maximum(x_tail, self.floor * t_static)
        return np.where(warm, thr, t_static * odds)

    def _learn(self, s: np.ndarray, x: np.ndarray, count: np.ndarray) -> None:
        """Every error joins the reservoir if it beats its smallest live entry."""
        assert self.table is not None
        cols = self.table.cols
        res = cols["res"][s]
        age = (count[:, None] - cols["tick"][s].astype(np.int64)) & 0xFFFF
        live = np.where(np.isfinite(res) & (age < self.horizon), res, -np.inf)
        j = live.argmin(axis=1)
        rows = np.arange(len(s))
        take = x > live[rows, j]
        if take.any():
            res[rows[take], j[take]] = x[take]
            ticks = cols["tick"][s]
            ticks[rows[take], j[take]] = (count[take] & 0xFFFF).astype(np.uint16)
            cols["tick"][s] = ticks
            cols["res"][s] = res

    # -- state -----------------------------------------------------------------------
    def forget(self, key: str) -> None:
        if self.table is not None:
            self.table.forget(key)

    def export(self, key: str) -> bytes | None:
        s = None if self.table is None else self.table.slot(key)
        if s is None:
            return None
        c = self.table.cols  # type: ignore[union-attr]
        season = bool(c["period"][s] > 0)
        head = _HEAD.pack(_MAGIC, self.n_features, _FLAG_SEASON if season else 0, int(c["n"][s]))
        return head + b"".join(np.asarray(c[name][s]).astype(dtype).tobytes()
                               for name, dtype, _ in self._layout(self.n_features, season))

    def _layout(self, f: int, season: bool) -> list[tuple[str, str, int]]:
        """The exported columns after the header, in order: (name, dtype, values)."""
        out = [("res", "<f4", self.k), ("tick", "<u2", self.k),
               ("blocks", "<f4", SUPPRESS_BLOCKS), ("lo", "<f4", f), ("hi", "<f4", f),
               ("prev", "<f4", f), ("act", "<f4", 4), ("aflag", "u1", 1)]
        if season:
            out += [("sprof", "<f2", checks.SEASON_BINS), ("sacc", "<f4", 2),
                    ("sstat", "<f4", 3), ("sc", "<u8", 1)]
        return out

    def restore(self, key: str, raw: bytes) -> None:
        what = f"decision state of {key!r} ({self.name})"
        if len(raw) < _HEAD.size or raw[:4] != _MAGIC:
            raise StateError(f"{what}: not this method's state")
        _, f, flags, count = _HEAD.unpack_from(raw)
        layout = self._layout(f, bool(flags & _FLAG_SEASON))
        size = _HEAD.size + sum(np.dtype(t).itemsize * n for _, t, n in layout)
        if len(raw) != size or f < 1:
            raise StateError(f"{what}: wrong length {len(raw)} (expected {size})")
        if self.table is not None and f != self.n_features:
            raise StateError(f"{what}: {f} features, the keys have {self.n_features}")
        table = self._ensure(f)
        table.forget(key)
        s = table.add(key)
        self._init_slot(key, s)
        c = table.cols
        c["n"][s] = count
        off = _HEAD.size
        for name, dtype, n in layout:
            arr = np.frombuffer(raw, dtype, n, off)
            off += arr.nbytes
            c[name][s] = arr[0] if c[name][s].ndim == 0 else arr

    def state_bytes(self, n_features: int = 1, period: int = 0) -> int:
        """Bytes of one key's exported state."""
        layout = self._layout(n_features, bool(period and self.use_season))
        return _HEAD.size + sum(np.dtype(t).itemsize * n for _, t, n in layout)
