"""Incidents, not alert storms: fold a key's anomalous windows into opened/closed events.

With hop 1 a single spike makes ``window`` anomalous windows in a row. Consecutive
anomalous windows of a key (allowing up to ``gap`` normal windows inside) form one
incident: an ``opened`` event at its first anomalous window and a ``closed`` event once
``gap + 1`` normal windows follow. ``mode="windows"`` instead emits every anomalous window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stream_detector.decision.base import reason_names
from stream_detector.records import Source, WindowMeta, iso, stable_id


@dataclass(slots=True)
class _Open:
    incident_id: str
    started: float
    ended: float
    peak_score: float
    windows: int
    normal_run: int


class IncidentTracker:
    """Per-key incident state; ``observe`` returns the events a scored window causes."""

    def __init__(self, model: str, model_version: str, mode: str = "incidents", gap: int = 0) -> None:
        if mode not in ("incidents", "windows"):
            raise ValueError(f"mode must be incidents or windows, got {mode!r}")
        self.model = model
        self.model_version = model_version
        self.mode = mode
        self.gap = max(0, gap)
        self._open: dict[str, _Open] = {}

    def __len__(self) -> int:
        return len(self._open)

    def open_keys(self) -> list[str]:
        """The keys with an open incident."""
        return list(self._open)

    def is_open(self, key: str) -> bool:
        """Whether ``key`` has an open incident (so its normal windows still matter)."""
        return key in self._open

    def forget(self, key: str) -> None:
        self._open.pop(key, None)

    def export(self, key: str) -> tuple[str, float, float, float, int, int] | None:
        """The key's open incident as a plain tuple (for the state changelog), or None."""
        o = self._open.get(key)
        if o is None:
            return None
        return (o.incident_id, o.started, o.ended, o.peak_score, o.windows, o.normal_run)

    def restore(self, key: str, state: tuple[str, float, float, float, int, int] | None) -> None:
        if state is None:
            self._open.pop(key, None)
        else:
            self._open[key] = _Open(*state)

    def _event(
        self, kind: str, meta: WindowMeta, score: float, threshold: float, a_score: float,
        incident_id: str, reason: int = 0,
    ) -> dict[str, Any]:
        src: Source = meta.source
        return {
            "event_id": stable_id(self.model_version, meta.key, src.topic, src.partition,
                                  src.offset, kind),
            "type": kind,
            "incident_id": incident_id,
            "key": meta.key,
            "ts": iso(meta.end_ts),
            "window_start": iso(meta.start_ts),
            "window_end": iso(meta.end_ts),
            "score": round(float(score), 6),
            "threshold": round(float(threshold), 6),
            "anomaly_score": round(float(a_score), 6),
            "reason": reason_names(reason),
            "model": self.model,
            "model_version": self.model_version,
            "source": {"topic": src.topic, "partition": src.partition, "offset": src.offset},
        }

    def close(self, meta: WindowMeta, cause: str, threshold: float) -> dict[str, Any] | None:
        """Close ``meta.key``'s open incident without a scored window, because its key
        leaves this replica (``cause``: max_series, idle, revoked); None if none is open.

        ``meta`` is the key's last point. The ``closed`` event says why in ``closed_by``;
        its ``reason`` is ``[]`` and ``score`` the incident's peak (no window decided it).
        """
        cur = self._open.pop(meta.key, None)
        if cur is None:
            return None
        ev = self._event("closed", meta, cur.peak_score, threshold, 0.0, cur.incident_id)
        ev["started"] = iso(cur.started)
        ev["ended"] = iso(cur.ended)
        ev["peak_score"] = round(float(cur.peak_score), 6)
        ev["windows"] = cur.windows
        ev["closed_by"] = cause
        return ev

    def observe(
        self, meta: WindowMeta, score: float, threshold: float, a_score: float, anomalous: bool,
        excursion: bool = False, reason: int = 0,
    ) -> list[dict[str, Any]]:
        """Fold one scored window of ``meta.key`` in; return the events to publish.

        ``anomalous``: the window raised an alarm; ``excursion``: it is anomalous though
        its alarm was suppressed (it extends an open incident, opens none); ``reason``:
        the bits of the checks that flagged it (``decision.REASONS``)."""
        key = meta.key
        src = meta.source
        if self.mode == "windows":
            if not anomalous:
                return []
            iid = stable_id(self.model_version, key, src.topic, src.partition, src.offset,
                            length=16)
            return [self._event("window", meta, score, threshold, a_score, iid, reason)]
        cur = self._open.get(key)
        if anomalous or (excursion and cur is not None):
            if cur is None:
                iid = stable_id(self.model_version, key, src.topic, src.partition, src.offset,
                                length=16)
                self._open[key] = _Open(iid, meta.end_ts, meta.end_ts, score, 1, 0)
                return [self._event("opened", meta, score, threshold, a_score, iid, reason)]
            cur.ended = meta.end_ts
            cur.peak_score = max(cur.peak_score, score)
            cur.windows += 1
            cur.normal_run = 0
            return []
        if cur is None:
            return []
        cur.normal_run += 1
        if cur.normal_run <= self.gap:
            return []
        del self._open[key]
        ev = self._event("closed", meta, score, threshold, a_score, cur.incident_id)
        ev["started"] = iso(cur.started)
        ev["ended"] = iso(cur.ended)
        ev["peak_score"] = round(float(cur.peak_score), 6)
        ev["windows"] = cur.windows
        return [ev]
