"""A key's error history and the tail statistics estimated from it, written once.

Every stateful method keeps each key's last ``history`` learned errors (a float32
ring) and re-estimates its statistics every ``every`` learned errors from the ring
alone, so its decisions do not depend on how the stream is cut into batches, and a
restored state resumes them exactly. Until a key has learned ``warmup`` errors the
static rule decides (a fresh key is not blind). ``learn`` says what an anomalous
window adds to the history: its error (``all``), nothing (``normal``) or the error
at the boundary (``clip``).

A method subclasses :class:`TailMethod` and says three things: its statistics of a
history (``_estimate``), the level of new errors against them (``_levels``) and the
error at which a window would have reached a given level (``_invert``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream_detector.decision.codec import Reader, scalars
from stream_detector.decision.params import COMMON, Param
from stream_detector.threshold import Thresholds


class TailState:
    """One key's history: ``ring`` the last ``cap`` learned errors, ``count`` errors
    learned in total, ``raw`` the last few errors seen, learned or not (a method's
    context), ``ew`` a running smoothed error; ``params`` the estimate made when
    ``count`` was ``params_at`` (not exported: it is re-estimated from the ring)."""

    __slots__ = ("ring", "count", "raw", "ew", "params", "params_at")

    def __init__(self, cap: int) -> None:
        self.ring = np.zeros(cap, dtype=np.float32)
        self.count = 0
        self.raw = np.zeros(0, dtype=np.float64)
        self.ew = math.nan
        self.params: Any = None
        self.params_at = -1

    def chrono(self, n: int) -> np.ndarray:
        """The last ``n`` learned errors, oldest first, as float64."""
        return self.before(0, min(n, self.count, len(self.ring)))

    def before(self, back: int, n: int) -> np.ndarray:
        """The ``n`` learned errors before the newest ``back`` ones, oldest first."""
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
        self.ring[(first + np.arange(len(xs))) % cap] = xs
        self.count += m


@dataclass
class TailRun:
    """The levels of one key's chunk of errors, and what inverting them needs."""

    u: np.ndarray
    ustar: np.ndarray
    blocks: list[tuple[int, int, Any]]  # (j0, j1, statistics or None: the static rule)
    raw: np.ndarray  # the chunk after its context: the chunk's error j is raw[ctx + j]
    ctx: int

    @property
    def ready(self) -> np.ndarray:
        """Per window: decided by the statistics (past the warm-up)."""
        out = np.zeros(len(self.u), dtype=bool)
        for j0, j1, params in self.blocks:
            out[j0:j1] = params is not None
        return out


class TailMethod:
    """The shared history machinery; subclasses supply the statistics."""

    name = "tail"
    code = 0
    PARAMS: dict[str, Param] = {}
    #: raw errors a method needs before each window (the likelihood's short mean)
    context = 0

    def __init__(self, thresholds: Thresholds, **params: Any) -> None:
        self.thresholds = thresholds
        p = {n: d.default for n, d in {**COMMON, **self.PARAMS}.items()}
        p.update(params)
        self.params = p
        self.history = int(p["history"])
        self.every = int(p["every"])
        self.learn = str(p["learn"])
        warmup = int(p["warmup"])
        if self.history < 8 or self.every < 1 or warmup < 0 or self.learn not in (
            "all", "normal", "clip"
        ):
            raise ValueError(f"{self.name}: bad parameters {p}")
        # statistics need some history: the static rule decides until the first estimate
        self.first_estimate = self.every * math.ceil(max(warmup, 8) / self.every)
        self.cap = self.history + self.every

    # -- method hooks --------------------------------------------------------------
    def _estimate(self, hist: np.ndarray) -> Any:
        """Statistics of the learned errors ``hist`` (oldest first)."""
        raise NotImplementedError

    def _levels(
        self, raw: np.ndarray, lo: int, hi: int, params: Any, st: TailState
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(u, u*)`` for the errors ``raw[lo:hi]``; ``raw[:lo]`` are the errors seen
        before them (at least ``context``), learned or not."""
        raise NotImplementedError

    def _invert(
        self, u_need: np.ndarray, raw: np.ndarray, lo: int, hi: int, params: Any, st: TailState
    ) -> np.ndarray:
        """The errors at which ``raw[lo:hi]`` would have reached level ``u_need``."""
        raise NotImplementedError

    def _start(self, st: TailState, xs: np.ndarray) -> None:
        """Before a key's chunk is decided (the dynamic method smooths it here)."""

    def _after(self, st: TailState, xs: np.ndarray) -> None:
        """After a key's chunk is decided."""

    # -- the engine ----------------------------------------------------------------
    def new_state(self) -> TailState:
        return TailState(self.cap)

    def run(self, key: str, st: TailState, xs: np.ndarray) -> TailRun:
        """Levels of the key's next errors ``xs``, in order; learns them."""
        self._start(st, xs)
        m = len(xs)
        ctx = len(st.raw)
        raw = np.concatenate([st.raw, xs]) if ctx else xs
        t_static = self.thresholds.for_key(key)
        u = np.empty(m)
        ustar = np.empty(m)
        blocks: list[tuple[int, int, Any]] = []
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
            elif self.learn == "clip":  # an anomalous window adds the boundary, not its error
                over = u[j:stop] > ustar[j:stop]
                if over.any():
                    at = ustar[j:stop]
                    cap = at if params is None else self._invert(
                        at, raw, ctx + j, ctx + stop, params, st
                    )
                    kept = np.where(over, np.minimum(kept, cap), kept)
            st.push(kept.astype(np.float32))
            blocks.append((j, stop, params))
            j = stop
        if self.context:
            st.raw = raw[-self.context :].copy()
        return TailRun(u, ustar, blocks, raw, ctx)

    def threshold(self, run: TailRun, st: TailState, u_need: np.ndarray) -> np.ndarray:
        """Per window of ``run``: the error at which it would have reached ``u_need``.
        Call it before ``finish`` and before the next key's ``run``."""
        thr = np.empty(len(run.u))
        for j0, j1, params in run.blocks:
            if params is None:
                thr[j0:j1] = u_need[j0:j1]
            else:
                thr[j0:j1] = self._invert(
                    u_need[j0:j1], run.raw, run.ctx + j0, run.ctx + j1, params, st
                )
        return thr

    def finish(self, st: TailState, xs: np.ndarray) -> None:
        self._after(st, xs)

    # -- state ---------------------------------------------------------------------
    def export_state(self, st: TailState) -> bytes:
        ring = st.chrono(self.cap).astype(np.float32)
        raw = st.raw.astype(np.float32)
        return (
            scalars("QdII", st.count, st.ew, len(ring), len(raw)) + ring.tobytes() + raw.tobytes()
        )

    def restore_state(self, body: bytes, what: str) -> TailState:
        r = Reader(body, what)
        count, ew, n_ring, n_raw = r.scalars("QdII")
        ring = r.array(np.float32, n_ring)[-self.cap :]
        ctx = r.array(np.float32, n_raw)
        r.done()
        st = self.new_state()
        st.count = count - len(ring)
        st.push(ring)
        st.raw = ctx[-self.context :].astype(np.float64) if self.context else st.raw
        st.ew = ew
        return st

    def state_bytes(self) -> int:
        return 24 + 4 * self.cap + 4 * self.context
