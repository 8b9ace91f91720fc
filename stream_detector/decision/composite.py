"""A stateful decider: a tail method on the errors, the range and seasonal checks
beside it, their evidence combined, then suppression; per-key state for all of them.

Per window, the error's level and the seasonal residual's level become anomaly scores
(``u / (u + u*)``), and the window's score is the larger of the two. Suppression then
keeps one alarm per excursion, and a range hit flags the window with score 1 whatever
the rest says. ``excursion`` is the flag before suppression (the range hit included),
``reason`` the checks over their own boundary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from stream_detector.decision import codec
from stream_detector.decision.base import ERROR, RANGE, SEASON, Decision, Newest, Periods, Ranges
from stream_detector.decision.filters import (
    RangeCheck,
    RangeState,
    SeasonCheck,
    SeasonState,
    Suppression,
)
from stream_detector.decision.history import TailMethod, TailState
from stream_detector.decision.tails import level_of, score_of
from stream_detector.threshold import Thresholds


class _Key:
    """All of one key's decision state."""

    __slots__ = ("tail", "recent", "range", "season")

    def __init__(self, tail: TailState) -> None:
        self.tail = tail
        self.recent = np.zeros(0)
        self.range: RangeState | None = None
        self.season: SeasonState | None = None


class Composite:
    """The decider for every stateful method (see the module docstring)."""

    wants_values: bool

    def __init__(
        self,
        method: type[TailMethod],
        thresholds: Thresholds,
        ranges: Ranges | None = None,
        periods: Periods | None = None,
        **params: Any,
    ) -> None:
        from stream_detector.decision.params import COMMON, FILTERS
        from stream_detector.decision.pot import PeaksOverThreshold

        p = {n: d.default for n, d in {**COMMON, **FILTERS, **method.PARAMS}.items()}
        p.update(params)
        self.params = p
        self.name = method.name
        self.code = method.code
        own = {k: v for k, v in p.items() if k not in FILTERS}
        self.tail = method(thresholds, **own)
        self.thresholds = thresholds
        suppress, tolerance = int(p["suppress"]), float(p["range"])
        season, span = str(p["season"]), int(p["season_span"])
        fixed = int(season) if season.isdigit() else 0
        if (
            suppress < 0
            or not 0 <= tolerance < math.inf
            or not (season in ("off", "trained") or fixed >= 1)
            or span < 1
        ):
            raise ValueError(f"{self.name}: bad parameters {p}")
        self.suppression = Suppression(suppress) if suppress else None
        self.range = RangeCheck(tolerance, self.tail.first_estimate, ranges) if tolerance else None
        self.season: SeasonCheck | None = None
        if fixed or (season == "trained" and any((periods or {}).values())):
            # the residuals' own statistics: a pot whose static rule (its warm-up) flags
            # nothing
            keep = {k: p[k] for k in ("history", "every", "warmup", "learn")}
            tail = {k: p[k] for k in PeaksOverThreshold.PARAMS if k in p}
            self.season = SeasonCheck(
                PeaksOverThreshold(Thresholds(math.inf), **keep, **tail), span, fixed,
                periods, ranges,
            )
        self.wants_values = self.range is not None or self.season is not None
        self._state: dict[str, _Key] = {}

    # -- deciding ------------------------------------------------------------------
    def decide(
        self, keys: Sequence[str], scores: np.ndarray, newest: Newest | None = None
    ) -> Decision:
        # float32 like the model's output and the ring: a restored key sees the same values
        x = np.asarray(scores, dtype=np.float32).astype(np.float64)
        values = None
        if self.wants_values and newest is not None:
            values = np.asarray(newest, np.float32)  # float32 like the windows
            if values.ndim < 3:  # one point per window: (n,) or (n, features)
                values = values.reshape(len(x), 1, -1)
        n = len(x)
        out = Decision.empty(n)
        if n == 0:
            return out
        first = keys[0]
        if all(k == first for k in keys):
            groups: dict[str, Any] = {first: slice(None)}
        else:
            lists: dict[str, list[int]] = {}
            for i, k in enumerate(keys):
                lists.setdefault(k, []).append(i)
            groups = {k: np.asarray(v) for k, v in lists.items()}
        for key, idx in groups.items():
            st = self._state.get(key)
            if st is None:
                st = self._state[key] = _Key(self.tail.new_state())
            got = self._run(key, st, x[idx], None if values is None else values[idx])
            for field, part in zip(out, got):
                field[idx] = part
        return out

    def _run(self, key: str, st: _Key, xs: np.ndarray, values: np.ndarray | None) -> Decision:
        m = len(xs)
        run = self.tail.run(key, st.tail, xs)
        a_err = score_of(run.u, run.ustar)
        reason = np.where(a_err > 0.5, ERROR, 0).astype(np.uint8)
        a = a_err
        if values is not None and self.season is not None:
            st.season, su, sstar, valid = self.season.check(key, st.season, values)
            a_sea = np.where(valid, score_of(su, sstar), 0.0)
            reason |= np.where(a_sea > 0.5, SEASON, 0).astype(np.uint8)
            a = np.maximum(a_err, a_sea)
        hit = np.zeros(m, dtype=bool)
        if values is not None and self.range is not None:
            v_lo = values.min(axis=1).astype(np.float64)
            v_hi = values.max(axis=1).astype(np.float64)
            st.range, hit = self.range.check(key, st.range, v_lo, v_hi)
            hit &= run.ready
        excursion = (a > 0.5) | hit
        if self.suppression is not None:
            a, need_a, st.recent = self.suppression.apply(st.recent, a)
        else:
            need_a = np.full(m, 0.5)
        flag = a > 0.5
        if hit.any():  # a range hit is news whatever the rest says
            a = np.where(hit, 1.0, a)
            flag |= hit
            reason |= np.where(hit, RANGE, 0).astype(np.uint8)
        reason = np.where(excursion | flag, reason, 0).astype(np.uint8)
        # threshold: the error at which the window's score would have reached `need_a`
        thr = self.tail.threshold(run, st.tail, level_of(need_a, run.ustar))
        self.tail.finish(st.tail, xs)
        return Decision(thr, a, flag, excursion, reason)

    # -- state ---------------------------------------------------------------------
    def forget(self, key: str) -> None:
        self._state.pop(key, None)

    def export(self, key: str) -> bytes | None:
        st = self._state.get(key)
        if st is None:
            return None
        sections = {b"tail": self.tail.export_state(st.tail)}
        if self.suppression is not None:
            sections[b"supp"] = Suppression.export_state(st.recent)
        if st.range is not None:
            sections[b"rang"] = RangeCheck.export_state(st.range)
        if st.season is not None and self.season is not None:
            sections[b"seas"] = self.season.export_state(st.season)
        return codec.pack(self.code, sections)

    def restore(self, key: str, raw: bytes) -> None:
        what = f"{key!r} ({self.name})"
        sec = codec.unpack(raw, self.code, what)
        if b"tail" not in sec:
            raise codec.StateError(f"decision state of {what}: wrong length {len(raw)}")
        st = _Key(self.tail.restore_state(sec[b"tail"], what))
        if self.suppression is not None and b"supp" in sec:
            st.recent = Suppression.restore_state(sec[b"supp"], what)[-self.suppression.k :]
        if self.range is not None and b"rang" in sec:
            st.range = RangeCheck.restore_state(sec[b"rang"], what)
        if self.season is not None and b"seas" in sec:
            st.season = self.season.restore_state(sec[b"seas"], what)
        self._state[key] = st

    def state_bytes(self, n_features: int = 1, period: int = 0) -> int:
        """Upper bound of one key's exported state, in bytes (``period``: the key's, for
        the seasonal check)."""
        size = 6 + 8 + self.tail.state_bytes()
        if self.suppression is not None:
            size += 8 + self.suppression.state_bytes()
        if self.range is not None:
            size += 8 + RangeCheck.state_bytes(n_features)
        if self.season is not None and (self.season.fixed_period or period):
            size += 8 + self.season.state_bytes(n_features, self.season.fixed_period or period)
        return size
