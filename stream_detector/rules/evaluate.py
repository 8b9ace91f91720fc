"""Apply rules to a batch of windows: which are kept from the decider, which alarms are muted
and why. Pure: no state but caches, the same for ``score`` and ``run``.

Every rule whose ``keys`` globs match a window's key applies to it. In order:

1. maintenance: a window whose end time (its newest point's timestamp) falls in a
   maintenance window of a matching rule is muted; in one with ``learn: false`` it is not
   passed to the decider at all, so it never enters the key's learnt state;
2. direction and deviation: an alarm stands only if every matching rule that judges
   values lets it, where a rule lets it when at least one judged feature of the window's
   newest point deviates from the model's expectation in the rule's direction by at least
   its minimums (``|actual - expected| >= min_deviation`` and
   ``>= min_relative_deviation * |expected|``).

A window muted by maintenance is a normal window to the incident tracker (it opens
nothing, and an incident open before closes after ``--incident-gap`` + 1 such windows); an
alarm muted by direction or deviation opens nothing but, like a suppressed alarm, keeps
an incident already open (its excursion stands).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from typing import NamedTuple

import numpy as np

from stream_detector.decision.base import Decision
from stream_detector.errors import InputError
from stream_detector.rules.parse import Rule

MAINTENANCE, DIRECTION, DEVIATION = 1, 2, 3
#: the causes of a muted alarm, as in ``stream_detector_alarms_muted_total{cause}``
CAUSES: tuple[tuple[int, str], ...] = (
    (MAINTENANCE, "maintenance"), (DIRECTION, "direction"), (DEVIATION, "deviation"))
CAUSE_NAMES = {code: name for code, name in CAUSES}
_CACHE_KEYS = 200_000  # matched keys remembered (a stream's live keys, bounded)


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).astype(np.float64).reshape(len(x), -1)


class Muting(NamedTuple):
    """Per window of a batch: what the rules did.

    ``cause``: why its alarm was muted (:data:`CAUSES`, 0: not muted); ``rule``: the index
    of the rule that muted it or kept it from the decider (-1: none); ``unlearned``: in a
    ``learn: false`` maintenance window, so not decided (its ``cause`` is maintenance)."""

    cause: np.ndarray
    rule: np.ndarray
    unlearned: np.ndarray


class Rules:
    """A rules file bound to a model's feature names.

    ``features``: the model's features in order (``Artifact.features``); ``source``: the
    file, named by errors (a rule naming a feature the model lacks).
    """

    def __init__(self, rules: Sequence[Rule], features: Sequence[str], source: str) -> None:
        self.rules = list(rules)
        self.names = [r.name for r in self.rules]
        self.source = source
        nf = len(features)
        index = {f: i for i, f in enumerate(features)}
        self._judged = np.zeros((len(self.rules), nf), dtype=bool)
        self._abs = np.zeros((len(self.rules), nf))
        self._rel = np.zeros((len(self.rules), nf))
        for r, rule in enumerate(self.rules):
            def col(name: str, what: str, rule: Rule = rule, r: int = r) -> int:
                if name not in index:
                    raise InputError(
                        f"{source}: rule {rule.name!r} (#{r + 1}): {what} names feature "
                        f"{name!r}; the model has {', '.join(map(repr, features))}")
                return index[name]

            judged = (range(nf) if rule.features is None
                      else [col(f, "features") for f in rule.features])
            self._judged[r, list(judged)] = True
            for dest, minimum, what in ((self._abs, rule.min_deviation, "min_deviation"),
                                        (self._rel, rule.min_relative_deviation,
                                         "min_relative_deviation")):
                for name, value in minimum.items():
                    dest[r, slice(None) if name is None else col(name, what)] = value
        self._judges = [r for r, rule in enumerate(self.rules) if rule.judges]
        self._windows = [(r, w) for r, rule in enumerate(self.rules) for w in rule.maintenance]
        self._matched: dict[str, np.ndarray] = {}

    @property
    def judges_values(self) -> bool:
        """Whether some rule needs each window's actual and expected values."""
        return bool(self._judges)

    def matches(self, keys: Sequence[str]) -> np.ndarray:
        """(n, rules) bool: which rules match each key."""
        cache = self._matched
        if len(cache) > _CACHE_KEYS:
            cache.clear()
        rows = []
        for k in keys:
            row = cache.get(k)
            if row is None:
                row = cache[k] = np.array(
                    [any(fnmatchcase(k, p) for p in rule.keys) for rule in self.rules])
            rows.append(row)
        return np.array(rows, dtype=bool).reshape(len(keys), len(self.rules))

    def maintenance(self, match: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                      np.ndarray]:
        """Per window: the first rule whose maintenance covers it (-1: none), and the
        first whose ``learn: false`` maintenance does (-1: none), and whether one does."""
        n = len(ts)
        rule = np.full(n, -1)
        unlearned_rule = np.full(n, -1)
        for r, w in self._windows:
            at = np.flatnonzero(match[:, r])
            if not len(at):
                continue
            inside = at[w.covers(ts[at])]
            first = inside[rule[inside] < 0]
            rule[first] = r
            if not w.learn:
                first = inside[unlearned_rule[inside] < 0]
                unlearned_rule[first] = r
        return rule, unlearned_rule, unlearned_rule >= 0

    def judge(self, match: np.ndarray, alarms: np.ndarray, actual: np.ndarray,
              expected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per window whose alarm a direction or deviation rule mutes: the cause and the
        rule (0 and -1 elsewhere). ``actual``, ``expected``: (n, features), the newest
        point of each window and its reconstruction, in input units."""
        n = len(alarms)
        cause = np.zeros(n, dtype=np.uint8)
        rule = np.full(n, -1)
        for r in self._judges:
            at = np.flatnonzero(match[:, r] & alarms & (cause == 0))
            if not len(at):
                continue
            cols = self._judged[r]
            dev = (actual[at] - expected[at])[:, cols]
            direction = self.rules[r].direction
            sign = dev > 0 if direction == "spike" else dev < 0 if direction == "dip" else (
                np.ones_like(dev, dtype=bool))
            size = np.abs(dev)
            big = (size >= self._abs[r, cols]) & (size >= self._rel[r, cols]
                                                   * np.abs(expected[at][:, cols]))
            passes = (sign & big).any(axis=1)
            muted = at[~passes]
            cause[muted] = np.where(sign[~passes].any(axis=1), DEVIATION, DIRECTION)
            rule[muted] = r
        return cause, rule

    def apply(
        self, decide: Callable[[np.ndarray | None], Decision], keys: Sequence[str],
        ts: np.ndarray, threshold_of: Callable[[str], float],
        actual: np.ndarray | None = None,
        expected: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> tuple[Decision, Muting]:
        """Decide a batch under the rules.

        ``decide(idx)``: the decider's decision for the windows at ``idx`` (None: all of
        them), in stream order; ``keys``, ``ts``: each window's key and end time (epoch
        seconds); ``threshold_of(key)``: the threshold reported for a window not decided
        (the key's static one); ``actual``, ``expected``: (n, features), needed when a rule
        judges values; ``expected`` may be a function of the indices of the windows whose
        values are judged (alarms a direction or deviation rule matches), for callers
        that compute it only for those. Returns the decision of every window with the rules applied, and
        what they did."""
        n = len(keys)
        ts = np.asarray(ts, dtype=np.float64)
        match = self.matches(keys)
        m_rule, u_rule, unlearned = self.maintenance(match, ts)
        if not unlearned.any():
            d = decide(None)
        else:
            keep = np.flatnonzero(~unlearned)
            part = decide(keep) if len(keep) else Decision.empty()
            d = Decision(
                np.array([threshold_of(k) for k in keys], dtype=np.float64),
                np.zeros(n), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool),
                np.zeros(n, dtype=np.uint8))
            for full, got in zip(d, part):
                full[keep] = got
        flags = np.array(d.is_anomaly, dtype=bool)
        excursion = np.array(d.excursion, dtype=bool)
        reason = np.array(d.reason, dtype=np.uint8)
        cause = np.zeros(n, dtype=np.uint8)
        rule = np.where(unlearned, u_rule, -1)
        cause[unlearned] = MAINTENANCE
        in_maint = m_rule >= 0
        muted = in_maint & flags
        cause[muted] = MAINTENANCE
        rule[muted] = m_rule[muted]
        flags &= ~in_maint
        excursion &= ~in_maint
        need = (np.flatnonzero(flags & match[:, self._judges].any(axis=1)) if self._judges
                else np.zeros(0, dtype=np.int64))
        if len(need):
            if actual is None or expected is None:
                raise ValueError("rules judge direction or deviation: actual and expected "
                                 "values are needed")
            exp = expected(need) if callable(expected) else np.asarray(expected)[need]
            # float32, as the model sees values: score and run judge bit-identically
            j_cause, j_rule = self.judge(match[need], np.ones(len(need), dtype=bool),
                                         _f32(np.asarray(actual)[need]), _f32(exp))
            hit = j_cause > 0
            cause[need[hit]] = j_cause[hit]
            rule[need[hit]] = j_rule[hit]
            flags[need[hit]] = False  # the excursion stands: an open incident goes on
        reason[cause > 0] = 0
        out = Decision(d.threshold, d.anomaly_score, flags, excursion, reason)
        return out, Muting(cause, rule, unlearned)

    def tally(self, muting: Muting) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        """Muted alarms per (cause, rule name), and windows kept from the decider per rule
        name (each nonzero only)."""
        muted: dict[tuple[str, str], int] = {}
        alarm = (muting.cause > 0) & ~muting.unlearned
        for c, r in zip(muting.cause[alarm].tolist(), muting.rule[alarm].tolist()):
            key = (CAUSE_NAMES[c], self.names[r])
            muted[key] = muted.get(key, 0) + 1
        unlearned: dict[str, int] = {}
        for r in muting.rule[muting.unlearned].tolist():
            unlearned[self.names[r]] = unlearned.get(self.names[r], 0) + 1
        return muted, unlearned
