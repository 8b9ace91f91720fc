"""Gaps in a series: points that never came (a scrape missed, a host down an hour).

A key's cadence is the mean step between the points its window holds (real and filled
ones), known once it holds ``min(4, window)`` points (at least two). A step from the key's
last point longer than ``factor`` times the cadence is a gap of ``round(step / cadence) - 1``
missing points. ``--gap-policy`` decides what the window does with it:

- ``off``: nothing; the points on either side are windowed as if adjacent.
- ``previous`` / ``linear``: the missing points are filled (the last value repeated, or a
  straight line to the new point), at timestamps that split the gap evenly, so the window
  keeps its time span. A gap of more than ``max_fill`` points restarts the window instead.
- ``restart``: the key's window starts again at the new point; no window spans the gap.

Filled points complete windows but are never scored themselves: a window is scored only
at a real point (the one after the gap), when one of the points appended with it
crossed a ``hop`` boundary. The decision state of the key (its warm-up, its boundary) is
kept across a restart: only the window starts again.

The rule is a function of the timestamps the window holds, so a key restored from the
changelog (which holds its filled points) decides the next gap as it would have, and
:func:`gap_windows`, the offline path, gives exactly the windows the service makes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike

GAP_POLICIES = ("off", "previous", "linear", "restart")
GAP_ACTIONS = ("filled", "restarted")  # the label of stream_detector_gaps_total
RESTART = -1  # GapPolicy.action(): start the window again at the new point
MIN_HELD = 4  # points a key's window holds before its cadence is trusted (or the window)
DEFAULT_GAP_POLICY = "off"
DEFAULT_GAP_FACTOR = 1.5


@dataclass(frozen=True)
class GapPolicy:
    """What a window does over a gap (see the module's docstring)."""

    policy: str = DEFAULT_GAP_POLICY
    max_fill: int = 32  # points; a longer gap restarts the window
    factor: float = DEFAULT_GAP_FACTOR  # a step longer than this many cadences is a gap

    def __post_init__(self) -> None:
        if self.policy not in GAP_POLICIES:
            raise ValueError(f"gap policy must be one of {', '.join(GAP_POLICIES)}, "
                             f"got {self.policy!r}")
        if self.max_fill < 0:
            raise ValueError(f"gap max fill must be >= 0, got {self.max_fill}")
        if not self.factor > 1.0:
            raise ValueError(f"gap factor must be > 1, got {self.factor}")

    @property
    def active(self) -> bool:
        return self.policy != "off"

    def action(self, step: float, span: float, held: int, window: int) -> int:
        """For a new point ``step`` seconds after the key's last one, whose window holds
        ``held`` points spanning ``span`` seconds: 0 (no gap), the number of points to
        fill, or :data:`RESTART`."""
        if held < 2 or held < min(MIN_HELD, window):
            return 0
        cadence = span / (held - 1)
        if not (cadence > 0.0 and step > self.factor * cadence):
            return 0
        missing = int(round(step / cadence)) - 1
        if missing < 1:
            return 0
        if self.policy == "restart" or missing > self.max_fill:
            return RESTART
        return missing

    def fill(self, last: ArrayLike, new: ArrayLike, n: int) -> np.ndarray:
        """The ``n`` filled values (n, F) between the key's last value and the new one."""
        old = np.asarray(last, np.float32).reshape(-1)
        if self.policy == "previous":
            return np.repeat(old[None, :], n, axis=0)
        frac = (np.arange(1, n + 1, dtype=np.float64) / (n + 1))[:, None]
        # as stored (float32), so the service and the offline path fill the same values
        to = np.asarray(new, np.float32).reshape(-1).astype(np.float64)
        out: np.ndarray = (old + frac * (to - old)).astype(np.float32)
        return out


def gap_policy(policy: str | None, max_fill: int | None, factor: float | None,
               window: int) -> GapPolicy:
    """The options ``--gap-policy``, ``--gap-max-fill`` (None: half the window) and
    ``--gap-factor`` for a model's ``window``; ValueError names what is wrong."""
    fill = max(1, window // 2) if max_fill is None else max_fill
    return GapPolicy(policy or DEFAULT_GAP_POLICY, fill,
                     DEFAULT_GAP_FACTOR if factor is None else factor)


def fill_times(last: float, ts: float, n: int) -> np.ndarray:
    """Timestamps of ``n`` points filled between ``last`` and ``ts``, splitting the gap
    evenly to the microsecond (on the key's rhythm when the gap is a whole number of
    steps)."""
    last_us = round(last * 1e6)
    step_us = round(ts * 1e6) - last_us
    j = np.arange(1, n + 1, dtype=np.int64)
    out: np.ndarray = (last_us + (j * step_us + (n + 1) // 2) // (n + 1)) / 1e6
    return out


def due_after(before: int, after: int, window: int, hop: int) -> bool:
    """Whether a window is due once a key's count went from ``before`` to ``after``: one
    of the points appended made a window due (every ``hop`` points once ``window`` are
    held). With one point appended, the buffer's usual rule."""
    if after < window:
        return False
    last_due = after - (after - window) % hop
    return last_due > before


@dataclass
class GapWindows:
    """The offline windows of one series under a gap policy (:func:`gap_windows`)."""

    windows: np.ndarray  # (m, window, F) float32
    end_index: np.ndarray  # (m,) the row (real point) each window ends at
    filled_gaps: int = 0
    filled_points: int = 0
    restarts: int = 0


def gap_windows(ts: np.ndarray, values: np.ndarray, window: int, hop: int,
                gaps: GapPolicy) -> GapWindows:
    """The windows a new key's points pushed one by one into a ``WindowBuffer`` with
    ``gaps`` make due (the offline path of ``score`` and ``train``)."""
    values = np.asarray(values, dtype=np.float32)
    ts = np.asarray(ts, dtype=np.float64)
    n, f = values.shape
    pieces: list[np.ndarray] = []
    ext_ts: list[float] = []  # timestamps of the points the buffer would hold, in order
    pos = np.zeros(n, dtype=np.int64)  # each real point's place in the expanded series
    due = np.zeros(n, dtype=bool)
    out = GapWindows(np.zeros((0, window, f), np.float32), np.zeros(0, np.int64))
    run_start = 0  # first real point not yet in pieces
    size = 0  # points in the expanded series so far
    count = 0  # points the key's buffer has counted since it (re)started
    last_value = values[0] if n else np.zeros(f, np.float32)
    for i in range(n):
        t = float(ts[i])
        k = 0
        if count and gaps.active:
            held = min(count, window)
            last = ext_ts[-1]
            k = gaps.action(t - last, last - ext_ts[-held], held, window)
            if k == RESTART:
                out.restarts += 1
                count, k = 0, 0
            elif k > 0:
                pieces.append(values[run_start:i])
                pieces.append(gaps.fill(last_value, values[i], k))
                run_start = i
                ext_ts.extend(fill_times(last, t, k).tolist())
                out.filled_gaps += 1
                out.filled_points += k
        ext_ts.append(t)
        size += k
        pos[i] = size
        size += 1
        due[i] = due_after(count, count + k + 1, window, hop)
        count += k + 1
        last_value = values[i]
    pieces.append(values[run_start:])
    expanded = np.concatenate(pieces) if len(pieces) > 1 else values
    end = np.flatnonzero(due)
    if end.size:
        view = sliding_window_view(expanded, window, axis=0)  # (size - window + 1, F, window)
        out.windows = np.ascontiguousarray(view[pos[end] - window + 1].transpose(0, 2, 1))
        out.end_index = end
    return out
