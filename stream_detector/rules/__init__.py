"""Rules and maintenance windows: per key pattern, the direction that may alarm, the least
deviation from the model's expectation that may alarm, and spans of event time whose alarms
are muted (optionally kept out of the decider's learning). ``score`` and ``run`` apply them
identically (:meth:`Rules.apply`); README's "Rules and maintenance windows" is the user's
guide, parse.py the file format."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from stream_detector.rules.evaluate import (
    CAUSE_NAMES,
    CAUSES,
    DEVIATION,
    DIRECTION,
    MAINTENANCE,
    Muting,
    Rules,
)
from stream_detector.rules.parse import DIRECTIONS, Rule, parse_rules, read_rules


def load_rules(path: str | Path, features: Sequence[str]) -> Rules:
    """Read the rules file ``path`` and bind it to a model's ``features``; raises
    :class:`~stream_detector.errors.InputError` naming the file and the rule."""
    return Rules(read_rules(path), features, str(path))


__all__ = [
    "CAUSES",
    "CAUSE_NAMES",
    "DEVIATION",
    "DIRECTION",
    "DIRECTIONS",
    "MAINTENANCE",
    "Muting",
    "Rule",
    "Rules",
    "load_rules",
    "parse_rules",
    "read_rules",
]
