"""The decision layer: a window's reconstruction error -> a calibrated verdict per key.

The model only reports an error. A decider turns errors into decisions
(:class:`~stream_detector.decision.base.Decision`: threshold, anomaly score, alarm,
excursion, reason), in stream order, with per-key state; the same object serves
``score`` (offline, series by series) and ``run`` (online, batch by batch), so both
paths decide identically. Per-key state is exported as bytes for the state changelog
and restored with the window buffers.

Methods (``spec["method"]``; the other keys of ``spec`` are the method's parameters):
``adaptive`` (engine.py, the default, ``DEFAULT_DECISION``): every key's state in
one column table (keytable.py), O(1) per key, a batch decided at once, its alarm
boundary a false-incident rate; ``static`` (static.py, the seed's quantile rule); and
the history-based ``pot``, ``likelihood``, ``normalized`` and ``dynamic`` (one file
each), built as a :class:`~stream_detector.decision.composite.Composite`: the
method's tail statistics on the key's error history (history.py), the range and
seasonal checks and suppression (filters.py), the state codec (codec.py).
docs/quality.md compares them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from stream_detector.decision.base import (
    ACTIVITY,
    ERROR,
    RANGE,
    REASONS,
    SEASON,
    Decider,
    Decision,
    Newest,
    Periods,
    Ranges,
    decide_windows,
    reason_names,
)
from stream_detector.decision.composite import Composite
from stream_detector.decision.dynamic import DynamicThreshold
from stream_detector.decision.engine import AdaptiveDecider
from stream_detector.decision.history import TailMethod
from stream_detector.decision.likelihood import Likelihood
from stream_detector.decision.normalized import Normalized
from stream_detector.decision.params import ADAPTIVE, COMMON, FILTERS, Param
from stream_detector.decision.pot import PeaksOverThreshold
from stream_detector.decision.static import StaticThreshold
from stream_detector.decision.tails import log10_normal_tail, normal_tail_quantile
from stream_detector.threshold import Thresholds

_METHODS: dict[str, type[TailMethod]] = {
    cls.name: cls for cls in (PeaksOverThreshold, Likelihood, Normalized, DynamicThreshold)
}
#: named presets: a method and parameters of its own
_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {}
DECIDERS = ("adaptive", "static", *_METHODS, *_PRESETS)
DEFAULT_DECISION = "adaptive"


def _known(method: str) -> dict[str, Param]:
    if method == "adaptive":
        return ADAPTIVE
    base = _PRESETS[method][0] if method in _PRESETS else method
    return {**COMMON, **FILTERS, **_METHODS[base].PARAMS}


def overlap_of(window: int, hop: int) -> int:
    """How many consecutive windows share a point: ``window / hop`` (at least 1)."""
    return max(1, int(window) // max(1, min(int(hop), int(window))))


def method_params(method: str) -> dict[str, Any]:
    """The parameters of ``method`` and their defaults."""
    if method == "static":
        return {}
    if method not in _METHODS and method not in _PRESETS and method != "adaptive":
        raise ValueError(f"unknown decision method {method!r} (choose from {', '.join(DECIDERS)})")
    out = {n: d.default for n, d in _known(method).items()}
    if method in _PRESETS:
        out.update(_PRESETS[method][1])
    return out


def decision_spec(method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A complete, typed spec for ``method``: its defaults overridden by ``params``.

    Raises :class:`ValueError` for an unknown method or parameter, or a bad value.
    """
    defaults = method_params(method)
    spec: dict[str, Any] = {"method": method, **defaults}
    types = {} if method == "static" else {n: d.type for n, d in _known(method).items()}
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


def checks_seen(decider: Decider) -> Mapping[int, Mapping[str, Any]]:
    """What the value checks of ``decider`` saw for the windows they flagged in its last
    ``decide`` call, by the window's place in that call (``{"range": {"low", "high",
    "tolerance"}}``, ``{"season": {"level", "boundary"}}``, ...); empty for methods that
    do not say."""
    return getattr(decider, "seen", None) or {}


def remap_seen(decider: Decider, idx: np.ndarray) -> None:
    """After a ``decide`` call on the windows at ``idx`` of a larger batch: key what its
    checks saw (:func:`checks_seen`) by the windows' places in that batch."""
    seen = getattr(decider, "seen", None)
    if seen:
        decider.seen = {int(idx[k]): v for k, v in seen.items()}  # type: ignore[attr-defined]


def make_decider(
    thresholds: Thresholds,
    spec: Mapping[str, Any] | None = None,
    ranges: Ranges | None = None,
    periods: Periods | None = None,
    overlap: int = 1,
) -> Decider:
    """Build the decider named by ``spec["method"]`` (none: static).

    ``ranges``: each trained key's value range (``Artifact.value_ranges``), where the
    range check of a key starts; ``periods``: each trained key's period
    (``Artifact.periods``), for ``season=trained``; ``overlap``: how many windows share
    a point (``window / hop``, :func:`overlap_of`), which the ``adaptive`` boundary
    corrects for."""
    spec = dict(spec or {})
    method = spec.pop("method", "static")
    if method == "static":
        return StaticThreshold(thresholds)
    if method == "adaptive":
        unknown = sorted(set(spec) - set(ADAPTIVE))
        if unknown:
            raise ValueError(f"decision method 'adaptive' has no parameter(s) "
                             f"{', '.join(unknown)}")
        typed = {k: ADAPTIVE[k].type(v) for k, v in spec.items()}
        return AdaptiveDecider(thresholds, ranges, periods, overlap=overlap, **typed)
    if method not in _METHODS and method not in _PRESETS:
        raise ValueError(f"unknown decision method {method!r} (choose from {', '.join(DECIDERS)})")
    known = _known(method)
    unknown = sorted(set(spec) - set(known))
    if unknown:
        raise ValueError(f"decision method {method!r} has no parameter(s) {', '.join(unknown)}")
    params = {**(_PRESETS[method][1] if method in _PRESETS else {}), **spec}
    base = _PRESETS[method][0] if method in _PRESETS else method
    d = Composite(
        _METHODS[base], thresholds, ranges=ranges, periods=periods,
        **{k: known[k].type(v) for k, v in params.items()},
    )
    d.name = method
    return d


__all__ = [
    "ACTIVITY",
    "AdaptiveDecider",
    "DECIDERS",
    "DEFAULT_DECISION",
    "ERROR",
    "RANGE",
    "REASONS",
    "SEASON",
    "Composite",
    "Decider",
    "Decision",
    "DynamicThreshold",
    "Likelihood",
    "Newest",
    "checks_seen",
    "remap_seen",
    "Normalized",
    "PeaksOverThreshold",
    "Periods",
    "Ranges",
    "StaticThreshold",
    "decide_windows",
    "decision_spec",
    "log10_normal_tail",
    "make_decider",
    "method_params",
    "normal_tail_quantile",
    "overlap_of",
    "reason_names",
    "resolve_spec",
]
