"""A key's season: the period after which its values repeat, found in its training data.

``train`` keeps each key's period in ``metadata.json`` (``"period"``); the decision
layer's seasonal check (``decision.py``, ``season``) compares each new value with the
value one period before it. A reconstruction error judges a window's shape alone, so a
day that skips its usual rise, or stays flat where it usually swings, reconstructs well:
the shape is plausible, only its timing is wrong. The period is what tells them apart.
"""

from __future__ import annotations

import numpy as np

# a period must repeat at least this well (autocorrelation at the period's lag)
MIN_AUTOCORRELATION = 0.5
# a lag whose autocorrelation is at least this fraction of the best one's is as good
NEAR_BEST = 0.95
# the autocorrelation must have fallen by this much before a lag can be a period
MIN_DIP = 0.2
# periods shorter than this are smoothness rather than seasons
MIN_PERIOD = 4
# the seasonal check keeps period + span values per key: cap what one key may cost
MAX_PERIOD = 10_080  # a week of one-minute values


def autocorrelation(values: np.ndarray, max_lag: int) -> np.ndarray:
    """Autocorrelation of ``values`` at lags ``0..max_lag`` (by FFT), each lag's sum
    scaled by ``n / (n - lag)`` so that long lags are not shrunk by their fewer terms."""
    x = np.asarray(values, dtype=np.float64)
    x = x - x.mean()
    n = len(x)
    den = float(x @ x)
    if n < 2 or den <= 0.0:
        return np.zeros(max_lag + 1)
    size = 1 << int(2 * n - 1).bit_length()
    f = np.fft.rfft(x, size)
    acf = np.fft.irfft(f * np.conj(f), size)[: max_lag + 1] / den
    return np.asarray(acf * n / (n - np.arange(max_lag + 1)), dtype=np.float64)


def detect_period(values: np.ndarray) -> int:
    """The period of a series (rows x features, or one feature), or 0 if it has none.

    The autocorrelation is computed on the features' mean after min-max scaling each
    one. A lag is a candidate period if the autocorrelation peaks there (the highest
    within a tenth of the lag either side), has dipped by at least :data:`MIN_DIP` since
    lag 0 (neighbouring values being alike is not a season) and reaches
    :data:`MIN_AUTOCORRELATION`; lags go up to half the series, so two full periods are
    seen. A season repeats at every multiple of its period about as strongly, so the
    period is the shortest candidate within :data:`NEAR_BEST` of the best one.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    v = v[np.all(np.isfinite(v), axis=1)]
    n = len(v)
    max_lag = min(n // 2, MAX_PERIOD)
    if max_lag <= MIN_PERIOD:
        return 0
    span = v.max(axis=0) - v.min(axis=0)
    live = span > 0
    if not live.any():
        return 0
    x = ((v[:, live] - v[:, live].min(axis=0)) / span[live]).mean(axis=1)
    acf = autocorrelation(x, max_lag + max_lag // 10 + 1)
    trough = np.minimum.accumulate(acf)
    lags = np.arange(MIN_PERIOD, max_lag + 1)
    a = acf[lags]
    peaks = lags[
        (a >= MIN_AUTOCORRELATION)
        & (a >= acf[lags - 1])
        & (a >= acf[lags + 1])
        & (a - trough[lags] >= MIN_DIP)
    ]
    found = [int(lag) for lag in peaks
             if acf[lag] >= acf[max(1, lag - lag // 10) : lag + lag // 10 + 1].max()]
    if not found:
        return 0
    best = max(acf[lag] for lag in found)
    return next(lag for lag in found if acf[lag] >= NEAR_BEST * best)


__all__ = ["MAX_PERIOD", "MIN_AUTOCORRELATION", "MIN_DIP", "MIN_PERIOD", "NEAR_BEST", "autocorrelation", "detect_period"]
