"""Checks and filters over a method's output, each with its own per-key state.

- :class:`RangeCheck`: a window whose newest values leave the range of every value the
  key has shown so far by more than ``range`` times that range is anomalous whatever
  its error. It is HTM's spatial anomaly check (NAB's numenta detector, tolerance
  0.05): a reconstruction error rises for a new shape, but a level the key has never
  reached can look like a shape it knows. A trained key starts from its training range.
- :class:`SeasonCheck`: each new value against the value one period before it; a
  window's seasonal residual (the mean of that difference over its last ``span``
  values, as a fraction of the key's training range) is ranked by a tail method of
  its own. A day that skips its rise has a plausible shape at the wrong time.
- :class:`Suppression`: a window is news only if its score beats every score of the
  key's previous ``k`` windows; other windows have their score halved, so one excursion
  raises one alarm at its onset and again only if it grows.
"""

from __future__ import annotations

import numpy as np

from stream_detector.decision.base import Periods, Ranges
from stream_detector.decision.codec import Reader, scalars
from stream_detector.decision.history import TailMethod, TailState


class RangeState:
    __slots__ = ("lo", "hi", "n")

    def __init__(self, lo: np.ndarray, hi: np.ndarray, n: int) -> None:
        self.lo, self.hi, self.n = lo, hi, n


class RangeCheck:
    """Values the key has never shown; ``spans``: windows a range needs before it checks."""

    def __init__(self, tolerance: float, spans: int, ranges: Ranges | None = None) -> None:
        self.tolerance = tolerance
        self.spans = spans
        self.ranges = ranges or {}

    def _start(self, key: str, lo: np.ndarray, hi: np.ndarray) -> RangeState:
        known = self.ranges.get(key)
        if known is not None and len(known[0]) == lo.shape[1]:
            return RangeState(
                np.array(known[0], dtype=np.float32).astype(np.float64),
                np.array(known[1], dtype=np.float32).astype(np.float64),
                self.spans,
            )
        return RangeState(lo[0].copy(), hi[0].copy(), 0)

    def check(
        self, key: str, st: RangeState | None, lo: np.ndarray, hi: np.ndarray
    ) -> tuple[RangeState, np.ndarray]:
        """Per window (``lo``, ``hi``: its newest values' extremes per feature): does any
        feature leave the range of everything before it? Extends the range."""
        if st is None or st.lo.shape[0] != lo.shape[1]:
            st = self._start(key, lo, hi)
        m = len(lo)
        tol_f = self.tolerance
        if m <= 8 and lo.shape[1] == 1:  # the online case: plain floats beat tiny arrays
            r_lo, r_hi = float(st.lo[0]), float(st.hi[0])
            hits = []
            for j, (x_lo, x_hi) in enumerate(zip(lo[:, 0].tolist(), hi[:, 0].tolist())):
                tol = (r_hi - r_lo) * tol_f
                hits.append(
                    r_hi > r_lo
                    and (x_hi > r_hi + tol or x_lo < r_lo - tol)
                    and st.n + j >= self.spans
                )
                r_lo, r_hi = min(r_lo, x_lo), max(r_hi, x_hi)
            st.lo[0], st.hi[0] = r_lo, r_hi
            st.n += m
            return st, np.array(hits, dtype=bool)
        run_lo = np.minimum.accumulate(np.vstack([st.lo[None], lo]), axis=0)
        run_hi = np.maximum.accumulate(np.vstack([st.hi[None], hi]), axis=0)
        b_lo, b_hi = run_lo[:-1], run_hi[:-1]  # the range before each window
        tol = (b_hi - b_lo) * tol_f
        out = (b_hi > b_lo) & ((hi > b_hi + tol) | (lo < b_lo - tol))
        ready = st.n + np.arange(m) >= self.spans
        st.lo, st.hi = run_lo[-1].copy(), run_hi[-1].copy()
        st.n += m
        return st, np.asarray(out.any(axis=1) & ready)

    @staticmethod
    def export_state(st: RangeState) -> bytes:
        return (
            scalars("QI", st.n, len(st.lo))
            + st.lo.astype(np.float64).tobytes()
            + st.hi.astype(np.float64).tobytes()
        )

    @staticmethod
    def restore_state(body: bytes, what: str) -> RangeState:
        r = Reader(body, what)
        n, f = r.scalars("QI")
        lo, hi = r.array(np.float64, f), r.array(np.float64, f)
        r.done()
        return RangeState(lo, hi, n)

    @staticmethod
    def state_bytes(n_features: int) -> int:
        return 12 + 16 * n_features


class SeasonState:
    __slots__ = ("values", "period", "tail")

    def __init__(self, values: np.ndarray, period: int, tail: TailState) -> None:
        self.values, self.period, self.tail = values, period, tail


class SeasonCheck:
    """The seasonal residual of each window, ranked by ``tail`` (its own history)."""

    def __init__(
        self, tail: TailMethod, span: int, fixed_period: int = 0,
        periods: Periods | None = None, ranges: Ranges | None = None,
    ) -> None:
        self.tail = tail
        self.span = span
        self.fixed_period = fixed_period
        self.periods = periods or {}
        # the residuals' scale: each trained key's training range width per feature
        # (1 where it has none); other keys get 1
        self._widths: dict[str, np.ndarray] = {}
        for key, (lo, hi) in (ranges or {}).items():
            width = np.asarray(hi, np.float64) - np.asarray(lo, np.float64)
            self._widths[key] = np.where(width > 0, width, 1.0)

    def period(self, key: str) -> int:
        return self.fixed_period or int(self.periods.get(key, 0))

    def check(
        self, key: str, st: SeasonState | None, values: np.ndarray
    ) -> tuple[SeasonState | None, np.ndarray, np.ndarray, np.ndarray]:
        """Per window: the residual's level ``u``, boundary ``u*`` and whether the check
        applies (a key with a period, once ``period + span`` values are seen)."""
        m, p, f = values.shape
        u = np.zeros(m)
        ustar = np.ones(m)
        valid = np.zeros(m, dtype=bool)
        period = self.period(key)
        if period <= 0:
            return st, u, ustar, valid
        if st is None or st.values.shape[1] != f or st.period != period:
            st = SeasonState(np.zeros((0, f), np.float32), period,
                             st.tail if st is not None else self.tail.new_state())
        scale = self._widths.get(key)
        if scale is None or len(scale) != f:
            scale = np.ones(f)
        span = self.span
        held = len(st.values)
        seq = np.concatenate([st.values, values.reshape(m * p, f)]).astype(np.float64)
        ends = held + p * np.arange(1, m + 1) - 1  # each window's last value in `seq`
        valid = ends - span + 1 >= period
        if valid.any():
            # each value against the one a period before it, from the first one a valid
            # window needs
            lo = int(ends[valid][0]) - span + 1
            step = np.abs(seq[lo:] - seq[lo - period : len(seq) - period]) / scale
            diff = step[:, 0] if f == 1 else step.mean(axis=1)
            # each window's last `span` of them (gathered, so every path sums alike)
            rows = ends[valid, None] - lo - np.arange(span - 1, -1, -1)
            resid = (diff[rows].sum(axis=1) / span).astype(np.float32).astype(np.float64)
            run = self.tail.run(key, st.tail, resid)
            self.tail.finish(st.tail, resid)
            u[valid], ustar[valid] = run.u, run.ustar
            valid = valid.copy()
            valid[valid] = run.ready
        st.values = seq[-(period + span) :].astype(np.float32)
        return st, u, ustar, valid

    def export_state(self, st: SeasonState) -> bytes:
        rows, cols = st.values.shape
        return (
            scalars("III", st.period, rows, cols)
            + st.values.astype(np.float32).tobytes()
            + self.tail.export_state(st.tail)
        )

    def restore_state(self, body: bytes, what: str) -> SeasonState:
        r = Reader(body, what)
        period, rows, cols = r.scalars("III")
        values = r.array(np.float32, rows * cols).reshape(rows, cols)
        tail = self.tail.restore_state(r.rest(), what)
        return SeasonState(values, period, tail)

    def state_bytes(self, n_features: int, period: int) -> int:
        return 12 + 4 * n_features * (period + self.span) + self.tail.state_bytes()


class Suppression:
    """News only if above every score of the previous ``k`` windows of the key."""

    def __init__(self, k: int) -> None:
        self.k = k

    def apply(self, recent: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(score, score needed to be news, the key's new recent scores)``."""
        k = self.k
        m = len(a)
        lead = len(recent)
        ext = np.concatenate([recent, a])
        if m <= 8:  # the online case: a few windows of this key per batch
            prev_max = np.array(
                [ext[max(0, lead + i - k) : lead + i].max() if lead + i else 0.0
                 for i in range(m)]
            )
        else:
            prev = np.concatenate([np.zeros(k), ext])
            view = np.lib.stride_tricks.sliding_window_view(prev[:-1], k)
            prev_max = np.asarray(view[-m:].max(axis=1), dtype=np.float64)
        out = np.where(a > prev_max, a, 0.5 * a)
        return out, np.maximum(0.5, prev_max), ext[-k:].copy()

    @staticmethod
    def export_state(recent: np.ndarray) -> bytes:
        return scalars("I", len(recent)) + recent.astype(np.float64).tobytes()

    @staticmethod
    def restore_state(body: bytes, what: str) -> np.ndarray:
        r = Reader(body, what)
        (n,) = r.scalars("I")
        out = r.array(np.float64, n)
        r.done()
        return out

    def state_bytes(self) -> int:
        return 4 + 8 * self.k
