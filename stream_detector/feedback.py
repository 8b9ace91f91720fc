"""Operator feedback: an incident marked ``false_positive`` raises its key's alarm boundary,
bounded and decaying; ``true_positive`` takes that back.

Each key keeps a ring of its :data:`RING` most recent incidents (id, time, peak error, the
error threshold when it opened, its label), noted from the events the detector publishes.
A ``false_positive`` incident mutes the key's later alarms whose reconstruction error is
below its *level*::

    level(t) = min(peak x (1 + margin), bound x threshold) x 2 ** (-(t - opened) / half_life)

``t`` the window's event time, ``opened`` the incident's: the level depends on the stream
only, never on when a replica read the feedback. A muted alarm is not anomalous and opens
no incident; an excursion whose onset was muted pages at its first window at or above the
level (so a larger excursion still pages), and a key with an open incident is never muted
(an incident lasts as long as its excursion). The label is the state: applying the same
message again changes nothing, so replicas re-read the whole topic on every start.
The ring travels in the key's changelog record (:meth:`FeedbackBook.export`).

Feedback for an incident this replica does not know (a key another replica holds, or an
incident not seen yet) waits, bounded, until the incident is noted or its key restored.
"""

from __future__ import annotations

import math
import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson

LABELS = ("false_positive", "true_positive")
_NONE, _FALSE, _TRUE = 0, 1, 2
_CODE = {"false_positive": _FALSE, "true_positive": _TRUE}
RING = 8  # incidents remembered per key
# per incident: id (8 bytes), opened (s), peak error, threshold, label
_ENTRY = struct.Struct("<8sdffB")
_VERSION = 1
_ID = re.compile(r"[0-9a-f]{16}")
# what a read message came to (stream_detector_feedback_messages_total{result})
RESULTS = ("applied", "duplicate", "pending", "malformed", "expired")


@dataclass(frozen=True)
class FeedbackOptions:
    """How far and how long a ``false_positive`` moves its key's boundary."""

    margin: float = 0.5  # the level is the incident's peak error x (1 + margin) ...
    bound: float = 3.0  # ... at most bound x the key's error threshold when it opened
    half_life_s: float = 7 * 86400.0  # event time in which the level halves
    max_pending: int = 10_000  # messages held for incidents not known here

    def __post_init__(self) -> None:
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise ValueError(f"--feedback-margin must be >= 0, got {self.margin}")
        if not (self.bound >= 1 and math.isfinite(self.bound)):
            raise ValueError(f"--feedback-bound must be >= 1, got {self.bound}")
        if not self.half_life_s > 0:
            raise ValueError(f"--feedback-half-life-s must be > 0, got {self.half_life_s}")
        if self.max_pending < 0:
            raise ValueError(f"--feedback-max-pending must be >= 0, got {self.max_pending}")


class BadFeedback(ValueError):
    """A feedback message that breaks the contract (CONTRACT.md, "Feedback message")."""


@dataclass(frozen=True)
class Feedback:
    """One operator's verdict on one incident."""

    incident_id: str
    key: str
    label: str


def parse(value: bytes | None, kafka_key: bytes | None = None) -> Feedback:
    """A feedback message's value (JSON); ``key`` falls back to the Kafka key.

    Raises :class:`BadFeedback` naming what is wrong."""
    if value is None:
        raise BadFeedback("no value (a tombstone)")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadFeedback(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadFeedback(f"expected a JSON object, got {type(doc).__name__}")
    iid, label, key = doc.get("incident_id"), doc.get("label"), doc.get("key")
    if key is None and kafka_key is not None:
        key = kafka_key.decode("utf-8", "replace")
    if not isinstance(iid, str) or not _ID.fullmatch(iid.lower()):
        raise BadFeedback(f"incident_id: expected the 16 hex digits events carry, got {iid!r}")
    if label not in LABELS:
        raise BadFeedback(f"label: expected one of {', '.join(LABELS)}, got {label!r}")
    if not isinstance(key, str) or not key:
        raise BadFeedback(f"key: expected the series key (a string), got {key!r}")
    return Feedback(iid.lower(), key, label)


def message(incident_id: str, key: str, label: str, by: str | None = None,
            ts: str | None = None) -> bytes:
    """The JSON value of a feedback message (checked as :func:`parse` reads it)."""
    doc: dict[str, Any] = {"incident_id": incident_id, "key": key, "label": label}
    if ts is not None:
        doc["ts"] = ts
    if by:
        doc["by"] = by
    raw = orjson.dumps(doc)
    parse(raw)
    return raw


def _f32(x: Any) -> float:
    """``x`` as the changelog keeps it (float32), so a restored key mutes as before."""
    return float(np.float32(x))


def _epoch(iso_ts: str) -> float:
    return datetime.fromisoformat(iso_ts.replace("Z", "+00:00")).timestamp()


@dataclass(slots=True)
class _Incident:
    iid: str
    opened: float  # event time of its first anomalous window
    peak: float
    threshold: float
    label: int = _NONE


class FeedbackBook:
    """Every key's recent incidents and their labels; mutes alarms under a
    ``false_positive``'s level.

    ``changed(key)``: a key's state changed without a new point (the changelog must
    write it again); ``counted(result)``: what a message came to (:data:`RESULTS`).
    """

    def __init__(self, opts: FeedbackOptions | None = None,
                 changed: Callable[[str], None] = lambda key: None,
                 counted: Callable[[str], None] = lambda result: None) -> None:
        self.opts = opts or FeedbackOptions()
        self._changed = changed
        self._counted = counted
        self._rings: dict[str, list[_Incident]] = {}
        self._muting: set[str] = set()  # keys with a false_positive in their ring
        self._held: set[str] = set()  # keys whose excursion's onset was muted
        self._pending: OrderedDict[tuple[str, str], str] = OrderedDict()

    @property
    def pending(self) -> int:
        """Messages held for incidents not known here."""
        return len(self._pending)

    def keys(self) -> list[str]:
        """The keys with incidents noted."""
        return list(self._rings)

    # -- incidents --------------------------------------------------------------------------
    def note(self, event: Mapping[str, Any]) -> None:
        """An event the detector published: an ``opened`` (or ``window``) one adds its
        incident to the key's ring, a ``closed`` one brings its peak up to date."""
        kind, key, iid = event.get("type"), event.get("key"), event.get("incident_id")
        if not isinstance(key, str) or not isinstance(iid, str):
            return
        ring = self._rings.get(key)
        cur = next((e for e in ring if e.iid == iid), None) if ring else None
        if kind == "closed":
            if cur is not None:
                cur.peak = max(cur.peak, _f32(event.get("peak_score", cur.peak)))
            return
        if kind not in ("opened", "window") or cur is not None:
            return  # (an incident opened again: its input redelivered after a crash)
        cur = _Incident(iid, _epoch(event["window_end"]), _f32(event["score"]),
                        _f32(event["threshold"]))
        ring = self._rings.setdefault(key, [])
        ring.append(cur)
        if len(ring) > RING:
            del ring[0]
        label = self._pending.pop((key, iid), None)
        if label is not None:
            self._label(key, cur, label)
        self._update(key)

    def apply(self, fb: Feedback) -> str:
        """Apply one message; returns what it came to (``applied``, ``duplicate``,
        ``pending``)."""
        ring = self._rings.get(fb.key) or ()
        cur = next((e for e in ring if e.iid == fb.incident_id), None)
        if cur is not None:
            return self._label(fb.key, cur, fb.label)
        self._pending.pop((fb.key, fb.incident_id), None)  # the latest label wins
        self._pending[(fb.key, fb.incident_id)] = fb.label
        while len(self._pending) > self.opts.max_pending:
            self._pending.popitem(last=False)
            self._counted("expired")
        self._counted("pending")
        return "pending"

    def _label(self, key: str, cur: _Incident, label: str) -> str:
        code = _CODE[label]
        result = "duplicate" if cur.label == code else "applied"
        if result == "applied":
            cur.label = code
            self._update(key)
            self._changed(key)
        self._counted(result)
        return result

    def _update(self, key: str) -> None:
        if any(e.label == _FALSE for e in self._rings.get(key, ())):
            self._muting.add(key)
        else:
            self._muting.discard(key)
            self._held.discard(key)

    # -- the alarm --------------------------------------------------------------------------
    def level(self, key: str, ts: float) -> float:
        """The error under which ``key``'s alarms are muted at event time ``ts`` (0: none)."""
        o = self.opts
        out = 0.0
        for e in self._rings.get(key, ()):
            if e.label == _FALSE:
                lv = min(e.peak * (1.0 + o.margin), o.bound * e.threshold)
                out = max(out, lv * 2.0 ** (-max(0.0, ts - e.opened) / o.half_life_s))
        return out

    def mute(self, keys: Sequence[str], scores: np.ndarray, flags: np.ndarray,
             excursion: np.ndarray, ts_of: Callable[[int], float],
             is_open: Callable[[str], bool]) -> tuple[np.ndarray, np.ndarray, int]:
        """Decided windows in stream order (``keys[i]`` owns ``scores[i]``, its event time
        ``ts_of(i)``) -> (alarms, excursions, how many alarms were muted).

        Alarms of a key under its level are muted (not anomalous, no incident); the first
        excursion window at or above it after a muted onset becomes the alarm. Keys with
        an open incident (``is_open``) are left alone."""
        muting, held = self._muting, self._held
        if not muting:
            return flags, excursion, 0
        rows = [i for i, k in enumerate(keys) if k in muting]
        if not rows:
            return flags, excursion, 0
        flags, excursion = flags.copy(), excursion.copy()
        paging: set[str] = set()  # alarms passed in this batch (an incident opens)
        muted = 0
        for i in rows:
            key = keys[i]
            if not (flags[i] or excursion[i]):
                held.discard(key)
                continue
            if key in paging or is_open(key):
                continue
            if float(scores[i]) < self.level(key, ts_of(i)):
                if flags[i]:
                    muted += 1
                    held.add(key)
                flags[i] = excursion[i] = False
            elif flags[i] or key in held:
                flags[i] = True
                held.discard(key)
                paging.add(key)
        return flags, excursion, muted

    # -- state ------------------------------------------------------------------------------
    def forget(self, key: str) -> None:
        """``key`` left this replica (evicted, revoked)."""
        self._rings.pop(key, None)
        self._muting.discard(key)
        self._held.discard(key)

    def export(self, key: str) -> bytes | None:
        """The key's ring for its changelog record (None: nothing noted)."""
        ring = self._rings.get(key)
        if not ring:
            return None
        return bytes([_VERSION, len(ring)]) + b"".join(
            _ENTRY.pack(bytes.fromhex(e.iid), e.opened, e.peak, e.threshold, e.label)
            for e in ring)

    def restore(self, key: str, raw: bytes | None) -> None:
        """Put back what :meth:`export` gave (None: nothing), then apply the feedback
        waiting for its incidents. Raises :class:`ValueError` for bytes it cannot read
        (the key then starts with no incidents noted)."""
        self.forget(key)
        if raw:
            self._rings[key] = _decode(raw)
        for e in self._rings.get(key, ()):
            label = self._pending.pop((key, e.iid), None)
            if label is not None:
                self._label(key, e, label)
        self._update(key)


def _decode(raw: bytes) -> list[_Incident]:
    if len(raw) < 2 or raw[0] != _VERSION or not 0 < raw[1] <= RING:
        raise ValueError(f"feedback state: unknown layout ({raw[:2].hex()})")
    n = raw[1]
    if len(raw) != 2 + n * _ENTRY.size:
        raise ValueError(f"feedback state: {len(raw)} bytes for {n} incidents")
    out = []
    for i in range(n):
        iid, opened, peak, thr, label = _ENTRY.unpack_from(raw, 2 + i * _ENTRY.size)
        if label not in (_NONE, _FALSE, _TRUE) or not all(
                math.isfinite(v) for v in (opened, peak, thr)):
            raise ValueError(f"feedback state: incident {iid.hex()} damaged")
        out.append(_Incident(iid.hex(), opened, peak, thr, label))
    return out
