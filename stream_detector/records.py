"""The data that flows between stages: a decoded reading, a due window, an anomaly event."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np


@dataclass(frozen=True, slots=True)
class Source:
    """Where an input message came from."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Reading:
    """One decoded input message: a point of a series (or one record)."""

    key: str
    ts: float  # epoch seconds
    values: np.ndarray  # (n_features,)


@dataclass(frozen=True, slots=True)
class WindowMeta:
    """What the batcher carries beside each window."""

    key: str
    source: Source
    start_ts: float
    end_ts: float
    kafka_ts: float  # produce time of the message that completed the window (epoch s)


def iso(ts: float) -> str:
    """Epoch seconds -> ISO-8601 UTC with a Z (millisecond precision when needed)."""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    if dt.microsecond:
        return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return dt.isoformat(timespec="seconds").replace("+00:00", "Z")


def stable_id(*parts: object, length: int = 32) -> str:
    """A deterministic hex id from ``parts`` (same inputs, same id, on any machine)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode())
    return h.hexdigest()[:length]
