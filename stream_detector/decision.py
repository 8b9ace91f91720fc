"""The decision layer: a window's reconstruction error -> (threshold, anomaly score, flag).

The model only reports an error. A :class:`Decider` turns errors into decisions, in
stream order, possibly with per-key state (e.g. running statistics of recent errors);
the same object serves ``score`` (offline, series by series) and ``run`` (online,
batch by batch), so both paths decide identically. Per-key state is exported as bytes
for the state changelog and restored with the window buffers.

Methods (``spec["method"]``; the other keys of ``spec`` are the method's parameters):

``static``
    The seed's rule: the calibrated per-key threshold, ``anomaly_score = s / (s + t)``.
``pot``
    Peaks over threshold on the key's recent errors: the p-value of an error among the
    last ``history`` errors, with a generalised Pareto tail (fitted by moments to the
    errors above their ``tail`` quantile) for errors beyond the history. A window is
    anomalous when that probability falls below ``risk``.
``likelihood``
    HTM's anomaly likelihood: the mean of the last ``short`` errors against a normal fit
    of such means over the last ``history`` errors; anomalous below tail probability ``risk``.
``normalized``
    Robust z-score of the error against the median and MAD of the last ``history`` errors;
    anomalous above ``z``.
``dynamic``
    telemanom's non-parametric dynamic threshold, online: errors smoothed by an EWMA of
    span ``span``; every ``every`` windows the threshold ``mean + k std`` of the last
    ``history`` smoothed errors is chosen as telemanom does (k in 2.5..12 maximising the
    drop in mean and spread per flagged point and sequence), then raised to ``1 + prune``
    times the largest smoothed error left below it (telemanom's pruning, as a margin).

Every stateful method shares:

- the last ``history`` errors each key learned are kept (a float32 ring); statistics are
  re-estimated every ``every`` learned errors from the ring alone, so the decisions do not
  depend on how the stream is cut into batches, and export/restore resumes them exactly;
- ``learn``: what an anomalous window adds to the history: its error (``all``, adapts to
  the stream), nothing (``normal``, SPOT's guard against learning anomalies) or the
  threshold (``clip``);
- until a key has learned ``warmup`` errors the static rule decides (a fresh key is not
  blind);
- ``suppress`` (windows, 0 = off): a window is news only if its anomaly score beats every
  score of the key's previous ``suppress`` windows; other windows have their score halved,
  so one excursion raises one alert at its onset and again only if it grows;
- ``range`` (a fraction, 0 = off; default 0.05): a window whose newest points leave the
  range of every value the key has shown so far by more than ``range`` times that range
  is anomalous whatever its error (anomaly score 1), once the key is past its warm-up.
  The callers pass each window's newest points (``newest``); the check takes the smallest
  and largest value of each feature among them. A key the model was trained on starts from its
  training range (``make_decider(..., ranges=...)``), others from their first window. It
  is HTM's spatial anomaly check (NAB's numenta detector, tolerance 0.05): a
  reconstruction error rises for a new shape, but a level the key has never reached can
  look like a shape it knows.
- ``season`` (default ``trained``): the seasonal check. ``trained``: each key the model was
  trained on with a period (``train`` finds it, ``season.detect_period``, and keeps it
  in ``metadata.json`` ``"period"``); a number N: every key, period N. Each new value is
  compared with the value one period before it (per feature, as a fraction of the key's
  training range), a window's seasonal residual is the mean of that difference over its
  last ``season_span`` values, and a ``pot`` of the key's own (``risk``, ``tail`` and the
  common parameters as above) ranks the residuals. The window's anomaly score is the
  larger of the two, and it is flagged if either is. A reconstruction error judges a
  window's shape; a day that skips its rise, or stays flat where it usually swings, has
  a plausible shape at the wrong time. It keeps ``period + season_span`` values and a
  second error history per key.

The anomaly score is ``u / (u + u*)`` of the method's level ``u`` (``-log10`` of the tail
probability, the z-score, or the smoothed error) and its boundary ``u*``: in [0, 1],
monotone in the error for a given state, 0.5 at the boundary (while suppression holds,
the score jumps across 0.5 where the error beats the recent maximum). ``threshold`` is the
error at which the window would have been flagged.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from stream_detector.threshold import Thresholds, anomaly_score

Decision = tuple[np.ndarray, np.ndarray, np.ndarray]  # threshold, anomaly_score, is_anomaly
# per window, its newest points (those no earlier window ended with): (n, points, features)
Newest = np.ndarray
# per key, its period in values (0: none)
Periods = Mapping[str, int]
# per key, the smallest and the largest value of each feature in its training data
Ranges = Mapping[str, tuple[Sequence[float], Sequence[float]]]


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


class StaticThreshold:
    """The seed's rule: a fixed calibrated threshold per key (no state)."""

    name = "static"
    wants_values = False

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds

    def decide(
        self, keys: Sequence[str], scores: np.ndarray, newest: Newest | None = None
    ) -> Decision:
        return self.thresholds.decide(keys, scores)

    def forget(self, key: str) -> None:
        pass

    def export(self, key: str) -> bytes | None:
        return None

    def restore(self, key: str, raw: bytes) -> None:
        pass


# -- numerics ------------------------------------------------------------------------

_LN10 = math.log(10.0)
_SQRT2 = math.sqrt(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_ERFC = np.frompyfunc(math.erfc, 1, 1)
_Z_ASYMPTOTIC = 37.0  # erfc(37 / sqrt 2) ~ 6e-300 is still a normal double


def log10_normal_tail(z: np.ndarray) -> np.ndarray:
    """``log10 P(Z > z)`` for a standard normal ``Z``, vectorised, without underflow.

    >>> round(float(log10_normal_tail(np.array([0.0]))[0]), 6)
    -0.30103
    """
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    small = z < _Z_ASYMPTOTIC
    if small.any():
        out[small] = np.log10(0.5 * np.asarray(_ERFC(z[small] / _SQRT2), dtype=np.float64))
    if (~small).any():
        zb = z[~small]
        r = 1.0 / (zb * zb)
        series = 1.0 - r * (1.0 - r * (3.0 - r * (15.0 - r * 105.0)))
        out[~small] = (-0.5 * zb * zb - np.log(zb) - _HALF_LOG_2PI + np.log(series)) / _LN10
    return out


def normal_tail_quantile(log10_p: np.ndarray) -> np.ndarray:
    """The ``z >= 0`` with ``log10 P(Z > z) = log10_p``, for ``log10_p <= log10 0.5``.

    Newton's method from ``sqrt(-2 ln(10) log10_p)``, which lies right of the root
    (``P(Z > z) <= exp(-z^2 / 2) / 2``); ``log10 P(Z > z)`` is concave, so the iterates
    decrease monotonically to the root.

    >>> round(float(normal_tail_quantile(np.array([math.log10(0.025)]))[0]), 4)
    1.96
    """
    t = np.minimum(np.asarray(log10_p, dtype=np.float64), math.log10(0.5))
    z = np.sqrt(-2.0 * _LN10 * t)
    live = np.ones(z.shape, dtype=bool)  # each element stops on its own: no batch effects
    for _ in range(60):
        zl, tl = z[live], t[live]
        f = log10_normal_tail(zl) - tl  # <= 0 right of the root
        # hazard phi(z) / Q(z), from the log tail; ~ z + 1/z far out
        hazard = np.exp(-0.5 * zl * zl - _HALF_LOG_2PI - (f + tl) * _LN10)
        step = f * _LN10 / np.maximum(hazard, 1e-300)
        z[live] = np.maximum(zl + step, 0.0)
        live[live] = np.abs(step) > 1e-12 * np.maximum(zl, 1.0)
        if not live.any():
            break
    return z


def _a_of(u: np.ndarray, ustar: np.ndarray | float) -> np.ndarray:
    """``u / (u + u*)`` for ``u >= 0``: 0.5 at ``u = u*``, in [0, 1)."""
    u = np.maximum(u, 0.0)
    return np.asarray(u / (u + np.maximum(ustar, 1e-300)), dtype=np.float64)


def _u_of(a: np.ndarray | float, ustar: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`_a_of`."""
    a = np.minimum(np.asarray(a, dtype=np.float64), 1.0 - 1e-15)
    return np.asarray(ustar * a / (1.0 - a), dtype=np.float64)


# -- per-key state -------------------------------------------------------------------

_MAGIC = b"SDD2"
# magic, method code, errors learned, ring values, recent scores, raw context values, ew
_HEADER = struct.Struct("<4sBQIIId")
# appended when the seasonal check keeps values: period, value rows, features, bytes of
# the residuals' own state, magic
_SEASON = struct.Struct("<IIII4s")
_SEASON_MAGIC = b"SDS1"


class _KeyState:
    """One key's decision state.

    ``ring``: the last ``cap`` errors learned (the statistics' history); ``count``: errors
    learned in total; ``raw``: the last few errors seen, learned or not (context of the
    likelihood's short mean); ``recent``: the last ``k`` anomaly scores (suppression);
    ``ew``: the running smoothed error (dynamic); ``lo``, ``hi``: the smallest and largest
    value of each feature seen so far (``range``; None before the first window) and
    ``range_n`` the windows they span; ``sv``: the last ``period + season_span`` values
    (``season``; None before the first window) and ``sp`` the period they are kept for.
    """

    __slots__ = (
        "ring", "count", "raw", "recent", "n_recent", "ew", "params", "params_at", "lo", "hi",
        "range_n", "sv", "sp",
    )

    def __init__(self, cap: int, k: int, context: int) -> None:
        self.ring = np.zeros(cap, dtype=np.float32)
        self.count = 0
        self.raw = np.zeros(0, dtype=np.float64)  # at most `context` values
        self.recent = np.zeros(max(k, 1), dtype=np.float64)
        self.n_recent = 0
        self.ew = math.nan
        self.params: Any = None  # estimate made when count was params_at
        self.params_at = -1
        self.lo: np.ndarray | None = None
        self.hi: np.ndarray | None = None
        self.range_n = 0
        self.sv: np.ndarray | None = None
        self.sp = 0

    def chrono(self, n: int) -> np.ndarray:
        """The last ``n`` learned errors, oldest first, as float64."""
        cap = len(self.ring)
        n = min(n, self.count, cap)
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        end = self.count % cap
        start = (end - n) % cap
        if start < end:
            return self.ring[start:end].astype(np.float64)
        return np.concatenate([self.ring[start:], self.ring[:end]]).astype(np.float64)

    def before(self, back: int, n: int) -> np.ndarray:
        """The ``n`` learned errors before the newest ``back`` ones, oldest first (float64)."""
        if n <= 0:
            return np.zeros(0, dtype=np.float64)
        cap = len(self.ring)
        end = (self.count - back) % cap
        start = (end - n) % cap
        if start < end:
            return self.ring[start:end].astype(np.float64)
        return np.concatenate([self.ring[start:], self.ring[:end]]).astype(np.float64)

    def push(self, xs: np.ndarray) -> None:
        cap = len(self.ring)
        m = len(xs)
        if m >= cap:
            xs = xs[-cap:]
            first = self.count + m - cap
        else:
            first = self.count
        idx = (first + np.arange(len(xs))) % cap
        self.ring[idx] = xs
        self.count += m

    def push_recent(self, a: np.ndarray) -> None:
        k = len(self.recent)
        seq = np.concatenate([self.recent[: self.n_recent], a])[-k:]
        self.recent[: len(seq)] = seq
        self.n_recent = len(seq)


@dataclass(frozen=True)
class _Param:
    type: Callable[[Any], Any]
    default: Any
    help: str


_COMMON: dict[str, _Param] = {
    "history": _Param(int, 1000, "errors of each key kept for the statistics"),
    "every": _Param(int, 10, "re-estimate the statistics every N learned errors"),
    "warmup": _Param(int, 100, "errors a key learns under the static rule first"),
    "suppress": _Param(int, 64, "a window is news only if it beats the last N windows (0: off)"),
    "learn": _Param(
        str,
        "all",
        "what anomalous windows add to the history: their error "
        "(all), nothing (normal), or the threshold (clip)",
    ),
    "range": _Param(
        float,
        0.05,
        "a window whose newest values leave the key's range so far by more than this "
        "fraction of it is anomalous (0: off)",
    ),
    "season": _Param(
        str,
        "trained",
        "seasonal check: off, trained (each key's period found by train) or a period N",
    ),
    "season_span": _Param(int, 64, "values per window in the seasonal residual"),
}


class _Stateful:
    """Shared machinery: per-key history, scheduled re-estimation, warm-up, suppression."""

    name = "stateful"
    code = 0
    PARAMS: dict[str, _Param] = {}

    def __init__(
        self,
        thresholds: Thresholds,
        ranges: Ranges | None = None,
        periods: Periods | None = None,
        **params: Any,
    ) -> None:
        self.thresholds = thresholds
        self.ranges = ranges or {}
        self.periods = periods or {}
        p = {n: d.default for n, d in {**_COMMON, **self.PARAMS}.items()}
        p.update(params)
        self.params = p
        self.history = int(p["history"])
        self.every = int(p["every"])
        self.suppress = int(p["suppress"])
        self.learn = str(p["learn"])
        self.range = float(p["range"])
        self.season = str(p["season"])
        self.season_span = int(p["season_span"])
        self.fixed_period = int(self.season) if self.season.isdigit() else 0
        if (
            self.history < 8
            or self.every < 1
            or self.suppress < 0
            or int(p["warmup"]) < 0
            or self.learn not in ("all", "normal", "clip")
            or not 0 <= self.range < math.inf
            or not (self.season in ("off", "trained") or self.fixed_period >= 1)
            or self.season_span < 1
        ):
            raise ValueError(f"{self.name}: bad parameters {p}")
        # the seasonal residuals' own statistics: a pot on them, whose static rule (its
        # warm-up) flags nothing; none (and no values wanted) when no key has a period
        self._seasonal: PeaksOverThreshold | None = None
        if self.fixed_period or (self.season == "trained" and any(self.periods.values())):
            own = {k: p[k] for k in ("history", "every", "warmup", "suppress", "learn")}
            tail = {k: p[k] for k in PeaksOverThreshold.PARAMS if k in p}
            self._seasonal = PeaksOverThreshold(
                Thresholds(math.inf), **own, **tail, range=0.0, season="off"
            )
        self.wants_values = self.range > 0 or self._seasonal is not None
        # statistics need some history: the static rule decides until the first estimate
        self.first_estimate = self.every * math.ceil(max(int(p["warmup"]), 8) / self.every)
        self.cap = self.history + self.every
        self.context = 0  # raw errors a method needs before each window (likelihood)
        self._state: dict[str, _KeyState] = {}
        # the seasonal check's scale: each trained key's training range width per feature
        # (1 where it has none); other keys get 1
        self._widths: dict[str, np.ndarray] = {}
        if self._seasonal is not None:
            for key, (lo, hi) in self.ranges.items():
                width = np.asarray(hi, np.float64) - np.asarray(lo, np.float64)
                self._widths[key] = np.where(width > 0, width, 1.0)

    # -- method hooks --------------------------------------------------------------
    def _estimate(self, hist: np.ndarray) -> Any:
        """Statistics of the learned errors ``hist`` (oldest first)."""
        raise NotImplementedError

    def _levels(
        self, raw: np.ndarray, lo: int, hi: int, params: Any, st: _KeyState
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(u, u*)`` for the errors ``raw[lo:hi]``; ``raw[:lo]`` are the errors seen
        before them (at least ``context``), learned or not."""
        raise NotImplementedError

    def _invert(
        self, u_need: np.ndarray, raw: np.ndarray, lo: int, hi: int, params: Any, st: _KeyState
    ) -> np.ndarray:
        """The errors at which ``raw[lo:hi]`` would have reached level ``u_need``."""
        raise NotImplementedError

    def _start(self, st: _KeyState, xs: np.ndarray) -> None:
        """Before a key's chunk is decided (the dynamic method smooths it here)."""

    def _after(self, st: _KeyState, xs: np.ndarray) -> None:
        """After a key's chunk is decided."""

    # -- protocol ------------------------------------------------------------------
    def decide(
        self, keys: Sequence[str], scores: np.ndarray, newest: Newest | None = None
    ) -> Decision:
        # float32 like the model's output and the ring: a restored key sees the same values
        x = np.asarray(scores, dtype=np.float32).astype(np.float64)
        values = None
        if self.wants_values and newest is not None:
            # float32 like the windows, whichever path computed them
            values = np.asarray(newest, np.float32)
            if values.ndim < 3:  # one point per window: (n,) or (n, features)
                values = values.reshape(len(x), 1, -1)
        n = len(x)
        thr = np.empty(n)
        a = np.empty(n)
        flag = np.zeros(n, dtype=bool)
        if n == 0:
            return thr, a, flag
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
                st = self._state[key] = _KeyState(self.cap, self.suppress, self.context)
            t_k, a_k, f_k = self._run(key, st, x[idx], None if values is None else values[idx])
            thr[idx], a[idx], flag[idx] = t_k, a_k, f_k
        return thr, a, flag

    def _run(
        self, key: str, st: _KeyState, xs: np.ndarray, values: np.ndarray | None = None
    ) -> Decision:
        self._start(st, xs)
        m = len(xs)
        ctx = len(st.raw)
        raw = np.concatenate([st.raw, xs]) if ctx else xs  # xs[j] is raw[ctx + j]
        t_static = self.thresholds.for_key(key)
        u = np.empty(m)
        ustar = np.empty(m)
        blocks: list[tuple[int, int, Any]] = []  # (j0, j1, params or None for static)
        j = 0
        while j < m:
            count = st.count
            if count < self.first_estimate:
                params = None
                need = self.first_estimate - count
            else:
                c0 = count - count % self.every
                if st.params_at != c0:  # the ring holds the history of count c0
                    st.params = self._estimate(st.before(count - c0, min(c0, self.history)))
                    st.params_at = c0
                params = st.params
                need = self.every - count % self.every
            # decide until `need` more errors are learned (then the statistics change)
            stop = min(m, j + need)
            while True:
                if params is None:
                    # the static score as a level: a = x / (x + t) is u / (u + u*), u = x
                    u[j:stop], ustar[j:stop] = np.maximum(xs[j:stop], 0.0), t_static
                else:
                    u[j:stop], ustar[j:stop] = self._levels(raw, ctx + j, ctx + stop, params, st)
                if self.learn != "normal":
                    break  # every window is learned: `need` of them end the block
                learn = u[j:stop] <= ustar[j:stop]
                got = np.cumsum(learn)
                if got[-1] >= need or stop == m:
                    if got[-1] >= need:
                        stop = j + int(np.searchsorted(got, need)) + 1
                    break
                # some were not learned: look further ahead with the same statistics
                stop = min(m, stop + need - int(got[-1]))
            kept = xs[j:stop]
            if self.learn == "normal":
                kept = kept[u[j:stop] <= ustar[j:stop]]
            elif self.learn == "clip":  # an anomalous window adds the threshold, not its error
                over = u[j:stop] > ustar[j:stop]
                if over.any():
                    at = ustar[j:stop]
                    cap = (
                        at
                        if params is None
                        else self._invert(at, raw, ctx + j, ctx + stop, params, st)
                    )
                    kept = np.where(over, np.minimum(kept, cap), kept)
            st.push(kept.astype(np.float32))
            blocks.append((j, stop, params))
            j = stop
        a = _a_of(u, ustar)
        # suppression: news only if above every score of the previous `suppress` windows
        if self.suppress:
            prev_max = self._recent_max(st, a)
            out = np.where(a > prev_max, a, 0.5 * a)
            need_a = np.maximum(0.5, prev_max)
            st.push_recent(a)
        else:
            out = a
            need_a = np.full(m, 0.5)
        flag = out > 0.5
        if values is not None and self.range > 0:
            ready = np.zeros(m, dtype=bool)  # past the warm-up: decided by the statistics
            for j0, j1, params in blocks:
                ready[j0:j1] = params is not None
            v_lo, v_hi = values.min(axis=1), values.max(axis=1)
            hit = self._out_of_range(key, st, v_lo.astype(np.float64), v_hi.astype(np.float64))
            hit &= ready
            if hit.any():
                out = np.where(hit, 1.0, out)
                flag |= hit
        if values is not None and self._seasonal is not None:
            s_a, s_flag = self._season_check(key, st, values)
            out = np.maximum(out, s_a)
            flag |= s_flag
        # threshold: the error at which the window's score would have reached `need_a`
        u_need = _u_of(need_a, ustar)
        thr = np.empty(m)
        for j0, j1, params in blocks:
            if params is None:
                thr[j0:j1] = u_need[j0:j1]
            else:
                thr[j0:j1] = self._invert(u_need[j0:j1], raw, ctx + j0, ctx + j1, params, st)
        if self.context:
            st.raw = raw[-self.context :].copy()
        self._after(st, xs)
        return thr, out, flag

    def _out_of_range(
        self, key: str, st: _KeyState, lo: np.ndarray, hi: np.ndarray
    ) -> np.ndarray:
        """Per window: does any feature leave the range of everything before it by more
        than ``range`` times that range? Extends the key's range by the windows' values.
        A range spanning fewer windows than the warm-up checks nothing yet; a trained
        key's range starts as its training range, which spans it."""
        if st.lo is None or st.hi is None or st.lo.shape[0] != lo.shape[1]:
            known = self.ranges.get(key)
            if known is not None and len(known[0]) == lo.shape[1]:
                st.lo = np.array(known[0], dtype=np.float32).astype(np.float64)
                st.hi = np.array(known[1], dtype=np.float32).astype(np.float64)
                st.range_n = self.first_estimate
            else:
                st.lo, st.hi, st.range_n = lo[0].copy(), hi[0].copy(), 0
        m = len(lo)
        if m <= 8 and lo.shape[1] == 1:  # the online case: plain floats beat tiny arrays
            r_lo, r_hi = float(st.lo[0]), float(st.hi[0])
            hits = []
            for j, (x_lo, x_hi) in enumerate(zip(lo[:, 0].tolist(), hi[:, 0].tolist())):
                tol = (r_hi - r_lo) * self.range
                hits.append(
                    r_hi > r_lo
                    and (x_hi > r_hi + tol or x_lo < r_lo - tol)
                    and st.range_n + j >= self.first_estimate
                )
                r_lo, r_hi = min(r_lo, x_lo), max(r_hi, x_hi)
            st.lo[0], st.hi[0] = r_lo, r_hi
            st.range_n += m
            return np.array(hits, dtype=bool)
        run_lo = np.minimum.accumulate(np.vstack([st.lo[None], lo]), axis=0)
        run_hi = np.maximum.accumulate(np.vstack([st.hi[None], hi]), axis=0)
        b_lo, b_hi = run_lo[:-1], run_hi[:-1]  # the range before each window
        tol = (b_hi - b_lo) * self.range
        out = (b_hi > b_lo) & ((hi > b_hi + tol) | (lo < b_lo - tol))
        spans = st.range_n + np.arange(m) >= self.first_estimate
        st.lo, st.hi = run_lo[-1].copy(), run_hi[-1].copy()
        st.range_n += m
        return np.asarray(out.any(axis=1) & spans)

    def _period(self, key: str) -> int:
        if self.fixed_period:
            return self.fixed_period
        return int(self.periods.get(key, 0))

    def _season_check(
        self, key: str, st: _KeyState, values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per window: the seasonal check's anomaly score and flag (0 and False for a key
        without a period, or before ``period + season_span`` values are seen)."""
        m, p, f = values.shape
        a = np.zeros(m)
        flag = np.zeros(m, dtype=bool)
        period = self._period(key)
        if period <= 0:
            return a, flag
        span = self.season_span
        keep = period + span
        if st.sv is None or st.sv.shape[1] != f or st.sp != period:
            st.sv, st.sp = np.zeros((0, f), np.float32), period
        scale = self._widths.get(key)
        if scale is None or len(scale) != f:
            scale = np.ones(f)
        held = len(st.sv)
        seq = np.concatenate([st.sv, values.reshape(m * p, f)]).astype(np.float64)
        ends = held + p * np.arange(1, m + 1) - 1  # each window's last value in `seq`
        valid = ends - span + 1 >= period
        if valid.any():
            # each value against the one a period before it, as a fraction of the key's
            # range, from the first one a valid window needs
            lo = int(ends[valid][0]) - span + 1
            step = np.abs(seq[lo:] - seq[lo - period : len(seq) - period]) / scale
            diff = step[:, 0] if f == 1 else step.mean(axis=1)
            # each window's last `span` of them (gathered, so every path sums alike)
            rows = ends[valid, None] - lo - np.arange(span - 1, -1, -1)
            resid = diff[rows].sum(axis=1) / span
            inner = self._seasonal
            assert inner is not None
            ist = inner._state.get(key)
            if ist is None:
                ist = inner._state[key] = _KeyState(inner.cap, inner.suppress, inner.context)
            _, s_a, s_flag = inner._run(key, ist, resid.astype(np.float32).astype(np.float64))
            a[valid], flag[valid] = s_a, s_flag
        st.sv = seq[-keep:].astype(np.float32)
        return a, flag

    def _recent_max(self, st: _KeyState, a: np.ndarray) -> np.ndarray:
        """For each score of ``a``, the largest of the ``suppress`` scores before it (0 if none)."""
        k = self.suppress
        ext = np.concatenate([st.recent[: st.n_recent], a])
        lead = st.n_recent
        m = len(a)
        if m <= 8:  # the online case: a few windows of this key per batch
            return np.array(
                [ext[max(0, lead + i - k) : lead + i].max() if lead + i else 0.0 for i in range(m)]
            )
        prev = np.concatenate([np.zeros(k), ext])
        view = np.lib.stride_tricks.sliding_window_view(prev[:-1], k)
        return np.asarray(view[-m:].max(axis=1), dtype=np.float64)

    def forget(self, key: str) -> None:
        self._state.pop(key, None)
        if self._seasonal is not None:
            self._seasonal.forget(key)

    def export(self, key: str) -> bytes | None:
        st = self._state.get(key)
        if st is None:
            return None
        ring = st.chrono(self.cap).astype(np.float32)
        recent = st.recent[: st.n_recent].astype(np.float64)
        raw = st.raw.astype(np.float32)
        head = _HEADER.pack(_MAGIC, self.code, st.count, len(ring), len(recent), len(raw), st.ew)
        body = head + ring.tobytes() + recent.tobytes() + raw.tobytes()
        if st.lo is not None and st.hi is not None:  # the range, if kept: windows, lo, hi
            body += (
                struct.pack("<Q", st.range_n)
                + st.lo.astype(np.float64).tobytes()
                + st.hi.astype(np.float64).tobytes()
            )
        if st.sv is not None:  # the seasonal check's values and statistics, with a trailer
            inner = (self._seasonal.export(key) if self._seasonal else None) or b""
            sv = st.sv.astype(np.float32)
            body += sv.tobytes() + inner + _SEASON.pack(
                st.sp, sv.shape[0], sv.shape[1], len(inner), _SEASON_MAGIC
            )
        return body

    def restore(self, key: str, raw: bytes) -> None:
        season = None
        if len(raw) >= _HEADER.size + _SEASON.size and raw.endswith(_SEASON_MAGIC):
            sp, rows, cols, n_inner, _ = _SEASON.unpack_from(raw, len(raw) - _SEASON.size)
            size = 4 * rows * cols + n_inner + _SEASON.size
            if size > len(raw) - _HEADER.size:
                raise ValueError(f"decision state of {key!r}: wrong length {len(raw)}")
            cut = len(raw) - size
            sv = np.frombuffer(raw, np.float32, rows * cols, cut).reshape(rows, cols).copy()
            inner = raw[cut + 4 * rows * cols : cut + 4 * rows * cols + n_inner]
            season = (sp, sv, inner)
            raw = raw[:cut]
        if len(raw) < _HEADER.size:
            raise ValueError(f"decision state of {key!r}: {len(raw)} bytes, too short")
        magic, code, count, n_ring, n_recent, n_raw, ew = _HEADER.unpack_from(raw)
        if magic != _MAGIC or code != self.code:
            raise ValueError(f"decision state of {key!r} is not {self.name} state")
        end = _HEADER.size + 4 * n_ring + 8 * n_recent + 4 * n_raw
        # after `end`, if a range is kept: its window count (8 B), then 16 B per feature
        rest = len(raw) - end
        if rest < 0 or (rest and (rest < 24 or (rest - 8) % 16)):
            raise ValueError(f"decision state of {key!r}: wrong length {len(raw)}")
        off = _HEADER.size
        ring = np.frombuffer(raw, np.float32, n_ring, off)
        recent = np.frombuffer(raw, np.float64, n_recent, off + 4 * n_ring)
        ctx = np.frombuffer(raw, np.float32, n_raw, off + 4 * n_ring + 8 * n_recent)
        n_feat = (rest - 8) // 16 if rest else 0
        st = _KeyState(self.cap, self.suppress, self.context)
        ring = ring[-self.cap :]
        st.count = count - len(ring)
        st.push(ring)
        st.push_recent(recent)
        st.raw = ctx[-self.context :].astype(np.float64) if self.context else st.raw
        st.ew = ew
        if n_feat:  # a state written without a range (or with range 0) starts a fresh one
            (st.range_n,) = struct.unpack_from("<Q", raw, end)
            st.lo = np.frombuffer(raw, np.float64, n_feat, end + 8).copy()
            st.hi = np.frombuffer(raw, np.float64, n_feat, end + 8 + 8 * n_feat).copy()
        if season is not None and self._seasonal is not None:
            st.sp, st.sv, inner = season
            if inner:
                self._seasonal.restore(key, inner)
        self._state[key] = st

    def state_bytes(self, n_features: int = 1, period: int = 0) -> int:
        """Upper bound of one key's exported state, in bytes (``period``: the key's, for
        the seasonal check)."""
        rng = 8 + 16 * n_features if self.range > 0 else 0
        own = _HEADER.size + 4 * self.cap + 8 * self.suppress + 4 * self.context + rng
        if self._seasonal is None or not (self.fixed_period or period):
            return own
        values = 4 * n_features * ((self.fixed_period or period) + self.season_span)
        return own + values + self._seasonal.state_bytes() + _SEASON.size


class PeaksOverThreshold(_Stateful):
    """Empirical p-value of the error in the key's history, with a GPD tail beyond it."""

    name = "pot"
    code = 1
    PARAMS = {
        "tail": _Param(float, 0.98, "quantile of the history above which the GPD is fitted"),
        "risk": _Param(float, 1e-4, "tail probability at the decision boundary"),
        "shape_min": _Param(float, -0.25, "lower bound of the fitted GPD shape (< 0: bounded)"),
    }

    def __init__(self, thresholds: Thresholds, **params: Any) -> None:
        super().__init__(thresholds, **params)
        self.tail = float(self.params["tail"])
        self.shape_min = float(self.params["shape_min"])
        self.ustar = -math.log10(float(self.params["risk"]))
        if not 0.5 <= self.tail < 1.0 or self.ustar <= 0 or not -1.0 <= self.shape_min <= 0.5:
            raise ValueError(
                f"pot: need tail in [0.5, 1), risk in (0, 1), shape_min in [-1, 0.5]: {self.params}"
            )

    def _estimate(self, hist: np.ndarray) -> Any:
        hs = np.sort(hist)
        n = len(hs)
        t0 = float(hs[int(self.tail * (n - 1))])
        y = hs[hs > t0] - t0
        ft = max(len(y), 1) / n
        if len(y) >= 3:
            mean = float(y.mean())
            var = float(y.var())
        else:
            mean, var = 0.0, 0.0
        if mean <= 0.0:  # no tail above t0: scale from the whole history's spread
            mean = max(float(hs[-1] - hs[0]), abs(t0), 1e-12) / max(n, 1)
            var = mean * mean
        # method of moments; the shape is clamped to [shape_min, 0.5]: a negative shape
        # (a bounded tail) makes errors past the fitted end point certain anomalies
        gamma = 0.5 * (1.0 - mean * mean / var) if var > 0 else 0.0
        gamma = min(max(gamma, self.shape_min), 0.5)
        sigma = max(mean * (1.0 - gamma), 1e-12)
        return hs, t0, sigma, gamma, ft

    def _levels(
        self, raw: np.ndarray, lo: int, hi: int, params: Any, st: _KeyState
    ) -> tuple[np.ndarray, np.ndarray]:
        hs, t0, sigma, gamma, ft = params
        xs = raw[lo:hi]
        n = len(hs)
        ge = n - np.searchsorted(hs, xs, side="left")
        log_emp = np.log10((ge + 1.0) / (n + 1.0))
        e = np.maximum(xs - t0, 0.0)
        if gamma != 0:
            log_tail = (
                math.log10(ft) - np.log10(np.maximum(1.0 + gamma * e / sigma, 1e-300)) / gamma
            )
        else:
            log_tail = math.log10(ft) - e / (sigma * _LN10)
        log_p = np.where(xs > t0, np.minimum(log_tail, log_emp), log_emp)
        return -log_p, np.full(hi - lo, self.ustar)

    def _invert(
        self, u_need: np.ndarray, raw: np.ndarray, lo: int, hi: int, params: Any, st: _KeyState
    ) -> np.ndarray:
        hs, t0, sigma, gamma, ft = params
        n = len(hs)
        log_p = -u_need
        # empirical part: (ge + 1) / (n + 1) <= p  <=>  ge <= k  <=>  x > hs[n - k - 1]
        k = np.floor(10.0**log_p * (n + 1.0) - 1.0 + 1e-9).astype(np.int64)
        x_emp = hs[np.minimum(np.maximum(n - k - 1, 0), n - 1)]
        x_emp[k < 0] = np.inf
        x_emp[k >= n] = -np.inf
        rel = np.minimum(log_p - math.log10(ft), 0.0)  # log10(p / ft) <= 0
        with np.errstate(over="ignore"):
            if gamma != 0:
                x_tail = t0 + sigma / gamma * (10.0 ** (-gamma * rel) - 1.0)
            else:
                x_tail = t0 - sigma * rel * _LN10
        return np.asarray(np.minimum(x_emp, x_tail), dtype=np.float64)


class Likelihood(_Stateful):
    """HTM's anomaly likelihood: short-term mean error against its long-term distribution."""

    name = "likelihood"
    code = 2
    PARAMS = {
        "short": _Param(int, 10, "errors averaged for the short-term mean"),
        "risk": _Param(float, 1e-5, "tail probability at the decision boundary"),
    }

    def __init__(self, thresholds: Thresholds, **params: Any) -> None:
        super().__init__(thresholds, **params)
        self.short = int(self.params["short"])
        self.context = max(self.short - 1, 0)
        self.ustar = -math.log10(float(self.params["risk"]))
        if self.short < 1 or self.short > self.history or self.ustar <= 0:
            raise ValueError(f"likelihood: bad parameters {self.params}")

    def _short_means(self, seq: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """Mean of the ``short`` errors ending at each of ``seq[lo:hi]`` (fewer at the start)."""
        s = self.short
        pad = max(0, s - 1 - lo)
        if pad:
            seq = np.concatenate([np.full(pad, seq[0]), seq])
            lo, hi = lo + pad, hi + pad
        acc = seq[lo - s + 1 : hi - s + 1].copy()
        for k in range(1, s):  # a fixed order of additions: batch cuts do not change a bit
            acc += seq[lo - s + 1 + k : hi - s + 1 + k]
        return acc / s

    def _estimate(self, hist: np.ndarray) -> Any:
        means = self._short_means(hist, 0, len(hist))
        mu = float(means.mean())
        sd = float(means.std())
        return mu, max(sd, 1e-6 * max(abs(mu), 1e-12), 1e-12)

    def _levels(
        self, raw: np.ndarray, lo: int, hi: int, params: Any, st: _KeyState
    ) -> tuple[np.ndarray, np.ndarray]:
        mu, sd = params
        z = (self._short_means(raw, lo, hi) - mu) / sd
        return -log10_normal_tail(z), np.full(hi - lo, self.ustar)

    def _invert(
        self, u_need: np.ndarray, raw: np.ndarray, lo: int, hi: int, params: Any, st: _KeyState
    ) -> np.ndarray:
        mu, sd = params
        m_need = mu + sd * normal_tail_quantile(np.minimum(-u_need, math.log10(0.5)))
        total = self._short_means(raw, lo, hi) * self.short
        return np.asarray(m_need * self.short - (total - raw[lo:hi]), dtype=np.float64)


class Normalized(_Stateful):
    """Robust z-score of the error against the median and MAD of the key's history."""

    name = "normalized"
    code = 3
    PARAMS = {"z": _Param(float, 6.0, "robust z-score at the decision boundary")}

    def __init__(self, thresholds: Thresholds, **params: Any) -> None:
        super().__init__(thresholds, **params)
        self.z = float(self.params["z"])
        if self.z <= 0:
            raise ValueError(f"normalized: z must be > 0: {self.params}")

    def _estimate(self, hist: np.ndarray) -> Any:
        med = float(np.median(hist))
        mad = 1.4826 * float(np.median(np.abs(hist - med)))
        return med, max(mad, 1e-6 * max(abs(med), 1e-12), 1e-12)

    def _levels(
        self, raw: np.ndarray, lo: int, hi: int, params: Any, st: _KeyState
    ) -> tuple[np.ndarray, np.ndarray]:
        med, mad = params
        return (raw[lo:hi] - med) / mad, np.full(hi - lo, self.z)

    def _invert(
        self, u_need: np.ndarray, raw: np.ndarray, lo: int, hi: int, params: Any, st: _KeyState
    ) -> np.ndarray:
        med, mad = params
        return np.asarray(med + u_need * mad, dtype=np.float64)


_TELEMANOM_Z = np.arange(2.5, 12.0, 0.5)


class DynamicThreshold(_Stateful):
    """telemanom's non-parametric dynamic threshold on EWMA-smoothed errors, online."""

    name = "dynamic"
    code = 4
    PARAMS = {
        # span 60 and prune 0.3 (telemanom: 0.13 on per-point errors) measured best on the
        # staged SMAP/MSL channels: F1 .696 against .593 with 30 / 0.13 (README)
        "span": _Param(float, 60.0, "EWMA span of the smoothed errors, in windows"),
        "every": _Param(int, 50, "re-estimate the threshold every N windows"),
        "prune": _Param(float, 0.3, "required margin over the largest normal smoothed error"),
    }

    def __init__(self, thresholds: Thresholds, **params: Any) -> None:
        super().__init__(thresholds, **params)
        self.alpha = 2.0 / (float(self.params["span"]) + 1.0)
        self.prune = float(self.params["prune"])
        if not 0 < self.alpha <= 1 or self.prune < 0:
            raise ValueError(f"dynamic: bad parameters {self.params}")

    def _smooth(self, xs: np.ndarray, start: float) -> np.ndarray:
        out = np.empty(len(xs))
        s = start
        al = self.alpha
        for i, v in enumerate(xs.tolist()):
            s = v if s != s else al * v + (1.0 - al) * s  # NaN start: the first value
            out[i] = s
        return out

    def _estimate(self, hist: np.ndarray) -> Any:
        e = self._smooth(hist, math.nan)
        mu, sd = float(e.mean()), float(e.std())
        best, eps = -math.inf, mu + _TELEMANOM_Z[-1] * sd
        for z in _TELEMANOM_Z:
            cand = mu + z * sd
            below = e[e < cand]
            flagged = e >= cand
            n_flag = int(flagged.sum())
            if n_flag == 0 or len(below) == 0:
                continue
            n_seq = int(np.count_nonzero(np.diff(flagged.astype(np.int8)) == 1) + flagged[0])
            gain = (mu - below.mean()) / max(mu, 1e-12) + (sd - below.std()) / max(sd, 1e-12)
            score = gain / (n_flag + n_seq * n_seq)
            if score > best:
                best, eps = score, cand
        normal = e[e < eps]
        if len(normal):
            eps = max(eps, (1.0 + self.prune) * float(normal.max()))
        return max(eps, 1e-12)

    def _start(self, st: _KeyState, xs: np.ndarray) -> None:
        # the chunk's smoothed errors, and the smoothed error before each of them
        self._sm = self._smooth(xs, st.ew)
        self._sm_prev = np.concatenate([[st.ew], self._sm[:-1]])

    def _levels(
        self, raw: np.ndarray, lo: int, hi: int, params: Any, st: _KeyState
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._sm[lo:hi], np.full(hi - lo, params)  # no raw context: raw is the chunk

    def _invert(
        self, u_need: np.ndarray, raw: np.ndarray, lo: int, hi: int, params: Any, st: _KeyState
    ) -> np.ndarray:
        prev = self._sm_prev[lo:hi]
        first = np.isnan(prev)
        safe = np.where(first, 0.0, prev)
        return np.where(first, u_need, (u_need - (1.0 - self.alpha) * safe) / self.alpha)

    def _after(self, st: _KeyState, xs: np.ndarray) -> None:
        st.ew = float(self._sm[-1])


_METHODS: dict[str, type[_Stateful]] = {
    cls.name: cls for cls in (PeaksOverThreshold, Likelihood, Normalized, DynamicThreshold)
}
DECIDERS = ("static", *_METHODS)
DEFAULT_DECISION = "static"


def method_params(method: str) -> dict[str, Any]:
    """The parameters of ``method`` and their defaults."""
    if method == "static":
        return {}
    if method not in _METHODS:
        raise ValueError(f"unknown decision method {method!r} (choose from {', '.join(DECIDERS)})")
    cls = _METHODS[method]
    return {n: d.default for n, d in {**_COMMON, **cls.PARAMS}.items()}


def decision_spec(method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A complete, typed spec for ``method``: its defaults overridden by ``params``.

    Raises :class:`ValueError` for an unknown method or parameter, or a bad value.
    """
    defaults = method_params(method)
    spec: dict[str, Any] = {"method": method, **defaults}
    types = (
        {}
        if method == "static"
        else {n: d.type for n, d in {**_COMMON, **_METHODS[method].PARAMS}.items()}
    )
    for name, value in (params or {}).items():
        if name not in defaults:
            known = ", ".join(defaults) or "none"
            raise ValueError(
                f"decision method {method!r} has no parameter {name!r} (it has {known})"
            )
        try:
            spec[name] = types[name](value)
        except (TypeError, ValueError):
            raise ValueError(
                f"decision parameter {name}: expected a number, got {value!r}"
            ) from None
    make_decider(Thresholds(1.0), spec)  # validate the values
    return spec


def resolve_spec(
    stored: Mapping[str, Any] | None,
    method: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The spec to decide with: the artifact's ``stored`` spec, overridden by a ``method``
    and/or ``params`` given at ``score`` or ``run`` time.

    Params alone adjust the artifact's method; a different method starts from its own
    defaults. Raises :class:`ValueError` for an unknown method or parameter.
    """
    if method is None and not params:
        return dict(stored) if stored else None
    base = dict(stored or {"method": "static"})
    stored_method = base.pop("method", "static")
    if method is None or method == stored_method:
        return decision_spec(stored_method, {**base, **(params or {})})
    return decision_spec(method, params)


def make_decider(
    thresholds: Thresholds,
    spec: Mapping[str, Any] | None = None,
    ranges: Ranges | None = None,
    periods: Periods | None = None,
) -> Decider:
    """Build the decider named by ``spec["method"]`` (default: the artifact's, else static).

    ``ranges``: each trained key's value range (``Artifact.value_ranges``), where the
    ``range`` check of a key starts; ``periods``: each trained key's period
    (``Artifact.periods``), for ``season=trained``."""
    spec = dict(spec or {})
    method = spec.pop("method", "static")
    if method == "static":
        return StaticThreshold(thresholds)
    if method not in _METHODS:
        raise ValueError(f"unknown decision method {method!r} (choose from {', '.join(DECIDERS)})")
    cls = _METHODS[method]
    known = {**_COMMON, **cls.PARAMS}
    unknown = sorted(set(spec) - set(known))
    if unknown:
        raise ValueError(f"decision method {method!r} has no parameter(s) {', '.join(unknown)}")
    return cls(
        thresholds, ranges=ranges, periods=periods,
        **{k: known[k].type(v) for k, v in spec.items()},
    )


__all__ = [
    "DECIDERS",
    "DEFAULT_DECISION",
    "Decider",
    "Decision",
    "Newest",
    "Periods",
    "Ranges",
    "DynamicThreshold",
    "Likelihood",
    "Normalized",
    "PeaksOverThreshold",
    "StaticThreshold",
    "anomaly_score",
    "decision_spec",
    "resolve_spec",
    "log10_normal_tail",
    "make_decider",
    "method_params",
    "normal_tail_quantile",
]
