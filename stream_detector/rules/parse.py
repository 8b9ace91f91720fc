"""The rules file (YAML) -> checked :class:`Rule` objects; every error names the file and
the rule.

::

    rules:
      - name: db-cpu                 # optional (default rule-<n>); the metrics' rule label
        keys: ["db-*.cpu"]           # glob(s) on the series key, required ("*": every key)
        direction: spike             # spike, dip or both (default)
        min_deviation: 5             # |actual - expected| below this never alarms (input units)
        min_relative_deviation: 0.2  # ... nor below this fraction of |expected|
        features: [cpu]              # the features judged (default: all)
        maintenance:
          - cron: "0 2 * * *"        # every fire time starts a window ...
            duration: 2h             # ... this long (s, m, h, d, or seconds)
            timezone: Europe/Berlin  # the cron's zone (default UTC)
            learn: false             # keep these windows from the decider (default true)
          - start: 2026-03-01T10:00:00Z
            end: 2026-03-01T12:00:00Z

``min_deviation`` and ``min_relative_deviation`` may also be a mapping of feature name to
value (a feature not named there has no minimum of that kind).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from stream_detector.errors import InputError
from stream_detector.rules.schedule import CronWindow, Span, parse_duration, parse_time

DIRECTIONS = ("spike", "dip", "both")
_RULE_FIELDS = ("name", "keys", "direction", "min_deviation", "min_relative_deviation",
                "features", "maintenance")
_CRON_FIELDS = ("cron", "duration", "timezone", "learn")
_SPAN_FIELDS = ("start", "end", "learn")

# a minimum per feature name; None stands for every judged feature
Minimum = dict[str | None, float]


@dataclass
class Rule:
    """One rule as written: what it matches and what it mutes."""

    name: str
    keys: list[str]
    direction: str = "both"
    min_deviation: Minimum = field(default_factory=dict)
    min_relative_deviation: Minimum = field(default_factory=dict)
    features: list[str] | None = None
    maintenance: list[CronWindow | Span] = field(default_factory=list)

    @property
    def judges(self) -> bool:
        """Whether the rule judges alarms by their values (direction or a minimum)."""
        return (self.direction != "both" or bool(self.min_deviation)
                or bool(self.min_relative_deviation))


def _strings(value: Any, what: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if (not isinstance(items, list) or not items
            or not all(isinstance(x, str) and x for x in items)):
        raise ValueError(f"{what} must be a non-empty string or list of strings, got {value!r}")
    return list(items)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)


def _minimum(value: Any, what: str) -> Minimum:
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"{what} must name at least one feature")
        return {str(k): _number(v, f"{what}.{k}") for k, v in value.items()}
    return {None: _number(value, what)}


def _learn(entry: Mapping[str, Any]) -> bool:
    learn = entry.get("learn", True)
    if not isinstance(learn, bool):
        raise ValueError(f"learn must be true or false, got {learn!r}")
    return learn


def _unknown(entry: Mapping[str, Any], known: Sequence[str], what: str) -> None:
    extra = sorted(str(k) for k in entry if k not in known)
    if extra:
        raise ValueError(f"unknown field(s) {', '.join(extra)} in {what} "
                         f"(known: {', '.join(known)})")


def _window(entry: Any) -> CronWindow | Span:
    if not isinstance(entry, Mapping):
        raise ValueError(f"expected a mapping with cron and duration, or start and end, "
                         f"got {entry!r}")
    if "cron" in entry:
        _unknown(entry, _CRON_FIELDS, "a cron window")
        if "duration" not in entry:
            raise ValueError("a cron window needs a duration")
        tz_name = entry.get("timezone", "UTC")
        try:
            tz = ZoneInfo(str(tz_name))
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {tz_name!r}") from None
        expr = entry["cron"]
        if not isinstance(expr, str):
            raise ValueError(f"cron must be a string (quote it), got {expr!r}")
        return CronWindow(expr, parse_duration(entry["duration"]), tz, _learn(entry))
    if "start" in entry or "end" in entry:
        _unknown(entry, _SPAN_FIELDS, "a span")
        if "start" not in entry or "end" not in entry:
            raise ValueError("a span needs both start and end")
        start, end = parse_time(entry["start"]), parse_time(entry["end"])
        if end <= start:
            raise ValueError(f"end {entry['end']} is not after start {entry['start']}")
        return Span(start, end, _learn(entry))
    raise ValueError(f"expected cron and duration, or start and end, got {dict(entry)!r}")


def _rule(raw: Any, n: int) -> Rule:
    if not isinstance(raw, Mapping):
        raise ValueError(f"expected a mapping, got {raw!r}")
    _unknown(raw, _RULE_FIELDS, "the rule")
    name = raw.get("name", f"rule-{n}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if "keys" not in raw:
        raise ValueError("keys is required: a glob or a list of globs ('*' for every key)")
    direction = raw.get("direction", "both")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    features = raw.get("features")
    windows = raw.get("maintenance", [])
    if not isinstance(windows, list):
        raise ValueError(f"maintenance must be a list, got {windows!r}")
    maintenance = []
    for i, entry in enumerate(windows, 1):
        try:
            maintenance.append(_window(entry))
        except ValueError as exc:
            raise ValueError(f"maintenance #{i}: {exc}") from None
    rule = Rule(
        name=name, keys=_strings(raw["keys"], "keys"), direction=direction,
        min_deviation=_minimum(raw["min_deviation"], "min_deviation")
        if "min_deviation" in raw else {},
        min_relative_deviation=_minimum(raw["min_relative_deviation"], "min_relative_deviation")
        if "min_relative_deviation" in raw else {},
        features=None if features is None else _strings(features, "features"),
        maintenance=maintenance,
    )
    if not rule.judges and not rule.maintenance:
        raise ValueError("the rule mutes nothing: give a direction other than both, a minimum "
                         "deviation or a maintenance window")
    return rule


def rule_label(raw: Any, n: int) -> str:
    """How an error names rule number ``n`` (1-based): its name and its place."""
    name = raw.get("name") if isinstance(raw, Mapping) else None
    return f"rule {name!r} (#{n})" if isinstance(name, str) and name else f"rule #{n}"


def parse_rules(doc: Any, source: str) -> list[Rule]:
    """The rules of a loaded YAML document; :class:`InputError` naming ``source`` and the
    rule on anything wrong."""
    if not isinstance(doc, Mapping) or "rules" not in doc:
        raise InputError(f"{source}: expected a mapping with a 'rules' list")
    extra = sorted(str(k) for k in doc if k != "rules")
    if extra:
        raise InputError(f"{source}: unknown top-level field(s) {', '.join(extra)} "
                         "(only 'rules')")
    raws = doc["rules"]
    if not isinstance(raws, list) or not raws:
        raise InputError(f"{source}: 'rules' must be a non-empty list")
    rules: list[Rule] = []
    for n, raw in enumerate(raws, 1):
        try:
            rule = _rule(raw, n)
        except ValueError as exc:
            raise InputError(f"{source}: {rule_label(raw, n)}: {exc}") from None
        if any(r.name == rule.name for r in rules):
            raise InputError(f"{source}: {rule_label(raw, n)}: the name {rule.name!r} is "
                             "already used by an earlier rule")
        rules.append(rule)
    return rules


def read_rules(path: str | Path) -> list[Rule]:
    """Read and check the rules file ``path``."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise InputError(f"{p}: rules file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read the rules file ({exc})") from None
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())
        raise InputError(f"{p}: not valid YAML ({reason})") from None
    return parse_rules(doc, str(p))
