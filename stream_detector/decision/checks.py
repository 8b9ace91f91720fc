"""The value checks of the default decision, vectorised over the slots of one round.

Each function reads and writes the columns of a :class:`~.keytable.KeyTable` at the
slots ``s`` (one window per slot) and returns per window what it saw:

- :func:`range_check`: a window whose newest values leave the range of everything the
  key has shown (its training range to start with) by more than ``tolerance`` times
  that range (NAB's numenta spatial check): a level the key never reached.
- :func:`activity_check`: stuck values and flat lines. Short and long exponential
  means of the key's absolute point-to-point change; the window is flagged when the
  short one falls below a tenth of the long one and the log of their ratio lies far
  below its own usual values (a key that is often flat never fires). The model cannot
  see this: it reconstructs a flat window well.
- :func:`season_check`: keys with a trained period. The period is cut into
  ``SEASON_BINS`` phase bins; each completed bin's mean value (in training-range units)
  is compared with a slowly learned profile of that bin, and a bin whose smoothed
  difference exceeds ``SEASON_RATIO`` times its decayed maximum (learned from unflagged
  bins only) flags the windows until the next bin closes: a day that skips its rise.
"""

from __future__ import annotations

import numpy as np

# exponential means, as spans (weight 2 / (span + 1))
ACTIVITY_SHORT = 32.0  # points in the short mean of |change|
ACTIVITY_LONG = 1000.0  # points in the long one
ACTIVITY_STATS = 1000.0  # windows in the mean and variance of log(short / long)
ACTIVITY_RATIO = 0.1  # short below this fraction of long ...
ACTIVITY_SIGMAS = 4.0  # ... and this many deviations below its usual log ratio
ACTIVITY_MIN_SD = 0.25  # the smallest deviation of the log ratio believed
ACTIVITY_WARMUP = 128  # windows before the check speaks

SEASON_BINS = 16
SEASON_RATIO = 1.75
SEASON_SMOOTH = 0.5  # weight of a new bin in the smoothed difference
SEASON_LEARN = 0.1  # weight of a new bin in the profile
SEASON_DECAY = 0.995  # per bin, of the maximum difference
SEASON_CYCLES = 3  # periods before the check speaks


def range_check(cols: dict[str, np.ndarray], s: np.ndarray, v: np.ndarray,
                tolerance: float, ready: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per window (``v``: its newest values, (B, P, F)): did it leave the key's range?
    Extends the range; returns the flags and the range (low, high: (B, F)) the window
    was checked against."""
    v_lo = v.min(axis=1)
    v_hi = v.max(axis=1)
    lo, hi = cols["lo"][s], cols["hi"][s]
    fresh = np.isnan(lo)
    lo = np.where(fresh, v_lo, lo)
    hi = np.where(fresh, v_hi, hi)
    width = hi - lo
    tol = tolerance * width
    out = ((v_hi > hi + tol) | (v_lo < lo - tol)) & (width > 0) & ~fresh
    cols["lo"][s] = np.minimum(lo, v_lo)
    cols["hi"][s] = np.maximum(hi, v_hi)
    return np.asarray(out.any(axis=1) & ready), lo, hi


def activity_check(cols: dict[str, np.ndarray], s: np.ndarray, v: np.ndarray,
                   ready: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per window: (flagged, level in deviations below the usual log ratio)."""
    scale = cols["scale"][s]
    prev = cols["prev"][s]
    act = cols["act"][s].astype(np.float64)  # short, long, mean and variance of log ratio
    flag = cols["aflag"][s]
    for p in range(v.shape[1]):
        x = v[:, p, :]
        d = (np.abs(x - prev) / scale).mean(axis=1)
        has = ~np.isnan(d)
        first = has & (act[:, 1] == 0) & (act[:, 0] == 0)
        d = np.where(has, d, 0.0)
        short = np.where(first, d, act[:, 0] + (d - act[:, 0]) * (2 / (ACTIVITY_SHORT + 1)))
        long_ = np.where(first, d, act[:, 1] + (d - act[:, 1]) * (2 / (ACTIVITY_LONG + 1)))
        act[:, 0] = np.where(has, short, act[:, 0])
        act[:, 1] = np.where(has & ~flag, long_, act[:, 1])  # frozen while flagged
        prev = x
    short, long_ = act[:, 0], act[:, 1]
    tiny = 1e-9 * long_ + 1e-30
    r = np.log((short + tiny) / (long_ + tiny))
    sd = np.maximum(np.sqrt(np.maximum(act[:, 3], 0.0)), ACTIVITY_MIN_SD)
    level = (act[:, 2] - r) / sd
    flag = ready & (short < ACTIVITY_RATIO * long_) & (level > ACTIVITY_SIGMAS)
    learn = ~flag & (long_ > 0)
    alpha = 2.0 / (ACTIVITY_STATS + 1)
    delta = r - act[:, 2]
    act[:, 2] = np.where(learn, act[:, 2] + alpha * delta, act[:, 2])
    act[:, 3] = np.where(learn, (1 - alpha) * (act[:, 3] + alpha * delta * delta), act[:, 3])
    cols["act"][s] = act
    cols["prev"][s] = prev
    cols["aflag"][s] = flag
    return flag, np.where(flag, level, 0.0)


def season_check(cols: dict[str, np.ndarray], s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per window: the seasonal level (smoothed bin difference over its decayed maximum;
    ``SEASON_RATIO`` is the boundary), 0 where the check does not apply."""
    per = cols["period"][s].astype(np.int64)
    on = per > 0
    if not on.any():
        return np.zeros(len(s))
    s, v, per = s[on], v[on], per[on]
    z = (v / cols["scale"][s][:, None, :]).mean(axis=2)  # (B, P)
    c = cols["sc"][s].astype(np.int64)
    acc = cols["sacc"][s].astype(np.float64)
    st = cols["sstat"][s].astype(np.float64)  # smoothed diff, decayed max, level
    prof = cols["sprof"][s].astype(np.float32)
    rows = np.arange(len(s))
    for p in range(z.shape[1]):
        b = (c % per) * SEASON_BINS // per
        pb = ((c - 1) % per) * SEASON_BINS // per
        close = (c > 0) & (b != pb) & (acc[:, 1] > 0)
        if close.any():
            i = rows[close]
            m = acc[i, 0] / acc[i, 1]
            old = prof[i, pb[i]].astype(np.float64)
            have = ~np.isnan(old)
            diff = np.where(have, np.abs(m - old), 0.0)
            sm = np.where(have, st[i, 0] + SEASON_SMOOTH * (diff - st[i, 0]), st[i, 0])
            valid = (c[i] - 1) // per[i] >= SEASON_CYCLES
            dmax = st[i, 1]
            level = np.where(valid & (dmax > 0), sm / np.maximum(dmax, 1e-30), 0.0)
            flagged = level > SEASON_RATIO
            st[i, 1] = np.where(have & ~flagged, np.maximum(dmax * SEASON_DECAY, sm), dmax)
            st[i, 0] = sm
            st[i, 2] = level
            prof[i, pb[i]] = np.where(have, old + SEASON_LEARN * (m - old), m)
            acc[i] = 0.0
        acc[:, 0] += z[:, p]
        acc[:, 1] += 1.0
        c = c + 1
    cols["sc"][s] = c
    cols["sacc"][s] = acc
    cols["sstat"][s] = st
    cols["sprof"][s] = prof
    out = np.zeros(len(on))
    out[on] = st[:, 2]
    return out
