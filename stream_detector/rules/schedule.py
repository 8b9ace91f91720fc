"""Maintenance windows in event time: absolute spans and cron schedules with a duration.

Both answer one question for a batch of window end times (epoch seconds): does the time
fall inside the window? A cron window covers ``[fire, fire + duration)`` for every fire
time of its expression (cronsim, the Debian cron dialect); the fire times are computed in
the entry's time zone, so ``0 2 * * *`` in ``Europe/Berlin`` follows daylight saving.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo

import numpy as np
from cronsim import CronSim, CronSimError

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?"
                       r"(?:(\d+(?:\.\d+)?)s)?")
_UNITS = (86400.0, 3600.0, 60.0, 1.0)


def parse_duration(value: object) -> float:
    """``90``, ``"90s"``, ``"30m"``, ``"2h"``, ``"1d"``, ``"1h30m"`` -> seconds (> 0).

    >>> parse_duration("1h30m")
    5400.0
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30m, 2h or 3600, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        m = _DURATION.fullmatch(text)
        if not text or m is None or not any(m.groups()):
            raise ValueError(f"expected a duration such as 30m, 2h or 3600, got {value!r}")
        seconds = sum(float(g) * u for g, u in zip(m.groups(), _UNITS) if g)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


@dataclass
class Span:
    """One absolute window ``[start, end)``, epoch seconds."""

    start: float
    end: float
    learn: bool = False

    def covers(self, ts: np.ndarray) -> np.ndarray:
        """Per time in ``ts`` (n,): inside the span."""
        return (ts >= self.start) & (ts < self.end)


@dataclass
class CronWindow:
    """``[fire, fire + duration)`` for each fire time of the cron expression ``expr``."""

    expr: str
    duration: float
    tz: tzinfo = timezone.utc
    learn: bool = False
    # fire times known to be every fire in [_fires[0], _fires[-1]] (sorted, epoch seconds):
    # a stream's batches fall mostly within the last range asked for
    _fires: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def __post_init__(self) -> None:
        try:  # any date: the expression alone is checked (field count, ranges, day 31 in Feb)
            CronSim(self.expr, datetime(2026, 1, 1, tzinfo=self.tz))
        except CronSimError as exc:
            raise ValueError(f"cron {self.expr!r}: {exc}") from None

    def _at(self, t: float) -> datetime:
        return datetime.fromtimestamp(t, self.tz)

    def _fires_over(self, lo: float, hi: float) -> np.ndarray:
        """Every fire time from the last one at or before ``lo`` to the first after ``hi``."""
        # reverse iteration yields times strictly before its start: start a second after
        first = next(CronSim(self.expr, self._at(math.floor(lo) + 1), reverse=True), None)
        out = [first.timestamp()] if first is not None else [-math.inf]
        start = self._at(math.floor(lo)) if first is None else first
        for dt in CronSim(self.expr, start):
            out.append(dt.timestamp())
            if out[-1] > hi:
                break
        return np.array(out)

    def covers(self, ts: np.ndarray) -> np.ndarray:
        """Per time in ``ts`` (n,): inside a window (the latest fire at or before it is
        less than ``duration`` ago; that one is the nearest, so overlaps need no care)."""
        if not len(ts):
            return np.zeros(0, dtype=bool)
        lo, hi = float(ts.min()), float(ts.max())
        f = self._fires
        if not (len(f) and f[0] <= lo and hi < f[-1]):
            f = self._fires = self._fires_over(lo, hi)
        prev = f[np.searchsorted(f, ts, side="right") - 1]
        return np.asarray(ts - prev < self.duration)


def parse_time(value: object) -> float:
    """A YAML timestamp (a datetime), ISO-8601 text or epoch seconds -> epoch seconds;
    naive times are UTC."""
    if isinstance(value, datetime):
        dt = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected an ISO-8601 time or epoch seconds, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"expected a finite time, got {value!r}")
        return float(value)
    from stream_detector.datasets import parse_timestamp

    try:
        return parse_timestamp(str(value))
    except ValueError:
        raise ValueError(f"expected an ISO-8601 time or epoch seconds, got {value!r}") from None

