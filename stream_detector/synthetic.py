"""Synthetic multi-series data with injected anomalies and known ground truth.

Each series is seasonal + slow trend + Gaussian noise. Anomalies of four kinds are
injected after a clean prefix (for training): ``spike`` (a few points far off),
``level_shift`` (the series jumps and stays there for a while), ``flatline`` (the
signal freezes), ``frequency`` (the season runs at a different period).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

KINDS = ("spike", "level_shift", "flatline", "frequency")


@dataclass(frozen=True)
class Anomaly:
    """Ground truth: points ``start`` .. ``end`` (inclusive) of ``key`` are anomalous."""

    key: str
    start: int
    end: int
    kind: str


@dataclass
class SyntheticData:
    keys: list[str]
    values: dict[str, np.ndarray]  # key -> (n,)
    timestamps: list[str]
    epoch: np.ndarray
    anomalies: list[Anomaly]
    clean_prefix: int


def generate(
    n_series: int = 4,
    length: int = 3000,
    seed: int = 0,
    anomalies_per_series: int = 4,
    clean_fraction: float = 0.4,
    clean_keys: int = 0,
    step_s: int = 60,
    start: datetime = datetime(2026, 1, 1, tzinfo=timezone.utc),
) -> SyntheticData:
    """Make ``n_series`` series of ``length`` points; the last ``clean_keys`` get no anomaly."""
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64)
    prefix = int(length * clean_fraction)
    values: dict[str, np.ndarray] = {}
    anomalies: list[Anomaly] = []
    keys = [f"series-{i:03d}" for i in range(n_series)]
    for i, key in enumerate(keys):
        period = float(rng.integers(24, 48))
        amp = float(rng.uniform(1.0, 3.0))
        phase = float(rng.uniform(0, 2 * np.pi))
        level = float(rng.uniform(-5, 20))
        noise = 0.05 * amp
        trend = float(rng.uniform(-0.2, 0.2)) * amp / length
        x = level + trend * t + amp * np.sin(2 * np.pi * t / period + phase)
        x = x + rng.normal(0, noise, length)
        if i < n_series - clean_keys and anomalies_per_series > 0:
            room = (length - prefix) // anomalies_per_series
            for j in range(anomalies_per_series):
                kind = KINDS[(i + j) % len(KINDS)]
                lo = prefix + j * room + room // 4
                pos = int(rng.integers(lo, lo + room // 4))
                if kind == "spike":
                    span = int(rng.integers(1, 4))
                    x[pos : pos + span] += rng.choice([-1, 1]) * amp * rng.uniform(2.5, 4.0)
                elif kind == "level_shift":
                    span = int(rng.integers(80, 150))
                    x[pos : pos + span] += rng.choice([-1, 1]) * amp * rng.uniform(1.5, 2.5)
                elif kind == "flatline":
                    span = int(rng.integers(60, 120))
                    x[pos : pos + span] = x[pos]
                else:
                    span = int(rng.integers(100, 160))
                    seg = t[pos : pos + span]
                    x[pos : pos + span] = (
                        level + trend * seg
                        + amp * np.sin(2 * np.pi * seg / (period / 2.5) + phase)
                        + rng.normal(0, noise, seg.size)
                    )
                end = min(length - 1, pos + span - 1)
                anomalies.append(Anomaly(key, pos, end, kind))
        values[key] = x.astype(np.float32)
    epoch = start.timestamp() + step_s * t
    stamps = [(start + timedelta(seconds=step_s * k)).strftime("%Y-%m-%dT%H:%M:%SZ")
              for k in range(length)]
    return SyntheticData(keys, values, stamps, epoch, anomalies, prefix)


def write_long_csv(data: SyntheticData, path: str | Path) -> Path:
    """Write the series as a ``long`` CSV (rows interleaved by time, as a stream would be)."""
    p = Path(path)
    with p.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "key", "value"])
        for k, ts in enumerate(data.timestamps):
            for key in data.keys:
                w.writerow([ts, key, f"{float(data.values[key][k]):.5f}"])
    return p


def write_truth_csv(data: SyntheticData, path: str | Path) -> Path:
    p = Path(path)
    with p.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["key", "start", "end", "kind", "start_ts", "end_ts"])
        for a in data.anomalies:
            w.writerow([a.key, a.start, a.end, a.kind, data.timestamps[a.start], data.timestamps[a.end]])
    return p
