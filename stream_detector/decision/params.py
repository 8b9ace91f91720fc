"""Decision parameters: each one's type, default and meaning, defined once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    type: Callable[[Any], Any]
    default: Any
    help: str


#: the error history's (history.py)
COMMON: dict[str, Param] = {
    "history": Param(int, 1000, "errors of each key kept for the statistics"),
    "every": Param(int, 10, "re-estimate the statistics every N learned errors"),
    "warmup": Param(int, 100, "errors a key learns under the static rule first"),
    "learn": Param(
        str,
        "all",
        "what anomalous windows add to the history: their error "
        "(all), nothing (normal), or the threshold (clip)",
    ),
}

#: the checks and filters over a method's output (filters.py, composite.py)
FILTERS: dict[str, Param] = {
    "suppress": Param(int, 64, "a window is news only if it beats the last N windows (0: off)"),
    "range": Param(
        float,
        0.05,
        "a window whose newest values leave the key's range so far by more than this "
        "fraction of it is anomalous (0: off)",
    ),
    "season": Param(
        str,
        "trained",
        "seasonal check: off, trained (each key's period found by train) or a period N",
    ),
    "season_span": Param(int, 64, "values per window in the seasonal residual"),
}

#: the default decision's (engine.py, checks.py)
ADAPTIVE: dict[str, Param] = {
    "false_alarms": Param(
        float, 10_000,
        "at most one false incident per key per N windows on data like the key's past"),
    "tail": Param(int, 20, "largest errors kept per key (the tail reservoir)"),
    "horizon": Param(int, 1000, "windows an error stays in the reservoir"),
    "warmup": Param(int, 100, "windows of a key decided by the static rule first"),
    "floor": Param(float, 0.5, "errors below this times the static threshold never alarm"),
    "range": Param(
        float, 0.05,
        "a window whose newest values leave the key's range so far by more than this "
        "fraction of it is anomalous (0: off)"),
    "activity": Param(str, "on", "stuck values and flat lines check: on or off"),
    "season": Param(
        str, "trained",
        "seasonal check: off, trained (each key's period found by train) or a period N"),
    "suppress": Param(str, "on", "alarm once per excursion unless it grows: on or off"),
}
