"""Tail probabilities and the anomaly score: the numerics every method shares.

A method reports a *level* ``u`` per window (``-log10`` of a tail probability, a
z-score, a smoothed error) and its boundary ``u*``; the anomaly score is
``u / (u + u*)``: in [0, 1), 0.5 at the boundary, rising with the level.
"""

from __future__ import annotations

import math

import numpy as np

LN10 = math.log(10.0)
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
        out[~small] = (-0.5 * zb * zb - np.log(zb) - _HALF_LOG_2PI + np.log(series)) / LN10
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
    z = np.sqrt(-2.0 * LN10 * t)
    live = np.ones(z.shape, dtype=bool)  # each element stops on its own: no batch effects
    for _ in range(60):
        zl, tl = z[live], t[live]
        f = log10_normal_tail(zl) - tl  # <= 0 right of the root
        # hazard phi(z) / Q(z), from the log tail; ~ z + 1/z far out
        hazard = np.exp(-0.5 * zl * zl - _HALF_LOG_2PI - (f + tl) * LN10)
        step = f * LN10 / np.maximum(hazard, 1e-300)
        z[live] = np.maximum(zl + step, 0.0)
        live[live] = np.abs(step) > 1e-12 * np.maximum(zl, 1.0)
        if not live.any():
            break
    return z


def score_of(u: np.ndarray, ustar: np.ndarray | float) -> np.ndarray:
    """``u / (u + u*)`` for ``u >= 0``: 0.5 at ``u = u*``, in [0, 1)."""
    u = np.maximum(u, 0.0)
    return np.asarray(u / (u + np.maximum(ustar, 1e-300)), dtype=np.float64)


def level_of(a: np.ndarray | float, ustar: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`score_of`."""
    a = np.minimum(np.asarray(a, dtype=np.float64), 1.0 - 1e-15)
    return np.asarray(ustar * a / (1.0 - a), dtype=np.float64)
