"""Read the staged benchmark data (NAB, ODDS, SMAP/MSL) into the project's :class:`Dataset`.

The benchmarks go through the same ``training.train`` and ``scoring`` code as the CLI; these
loaders only build the in-memory datasets the CLI's readers would build from CSV files, with
two differences the benchmarks need: NAB rows are matched by position (a few NAB files step
back in time at a daylight-saving change, which ``read_dataset`` rightly refuses), and the
ODDS and SMAP/MSL arrays are split and scaled by the benchmark protocol first.
"""

from __future__ import annotations

import ast
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream_detector.datasets import Dataset, Series

NAB_CATEGORIES = (
    "artificialNoAnomaly",
    "artificialWithAnomaly",
    "realAWSCloudwatch",
    "realAdExchange",
    "realKnownCause",
    "realTraffic",
    "realTweets",
)
ODDS_SETS = ("arrhythmia", "cardio", "pima", "satellite", "shuttle", "thyroid")
SMAP_CHANNELS = ("P-1", "G-7", "C-1", "T-9", "T-13")


def nab_files(root: Path) -> list[str]:
    """The corpus' ``category/name.csv`` names, sorted."""
    return sorted(
        f"{p.parent.name}/{p.name}"
        for p in (root / "data").glob("*/*.csv")
        if p.parent.name in NAB_CATEGORIES
    )


def nab_dataset(root: Path, name: str) -> Dataset:
    """One NAB file as a one-series ``nab`` dataset; ``ts`` is the row position (NAB's rule)."""
    path = root / "data" / name
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        it, iv = header.index("timestamp"), header.index("value")
        stamps, values = [], []
        for row in reader:
            if row:
                stamps.append(row[it])
                values.append(float(row[iv]))
    n = len(values)
    s = Series(
        key=path.stem,
        timestamps=stamps,
        ts=np.arange(n, dtype=np.float64),
        values=np.asarray(values, dtype=np.float32).reshape(n, 1),
        source=str(path),
        lines=np.arange(2, n + 2),
    )
    return Dataset(fmt="nab", series=[s], feature_names=["value"], files=[str(path)])


def _array_dataset(name: str, x: np.ndarray, fmt: str, columns: list[str]) -> Dataset:
    """Rows of ``x`` (n, d) as a one-series dataset keyed ``name``, positions as timestamps."""
    n = x.shape[0]
    s = Series(
        key=name,
        timestamps=[str(i) for i in range(n)],
        ts=np.arange(n, dtype=np.float64),
        values=np.asarray(x, dtype=np.float32),
        source=name,
        lines=np.arange(2, n + 2),
    )
    return Dataset(fmt=fmt, series=[s], feature_names=columns, files=[name])


def records_dataset(name: str, x: np.ndarray) -> Dataset:
    """Rows of ``x`` (n, d) as a ``records`` dataset (one series, features f0..f{d-1})."""
    return _array_dataset(name, x, "records", [f"f{i}" for i in range(x.shape[1])])


def read_odds(root: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` of one ODDS set (``odds/<name>.csv``: ``f0..fN,label``)."""
    raw = np.loadtxt(root / f"{name}.csv", delimiter=",", skiprows=1)
    return raw[:, :-1], raw[:, -1].astype(int)


def pyod_split(
    x: np.ndarray, y: np.ndarray, seed: int, test_size: float = 0.4
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PyOD's benchmark split and scaling: ``train_test_split(test_size=0.4,
    random_state=RandomState(seed))`` then ``standardizer`` fitted on train.

    Reproduces scikit-learn's ``ShuffleSplit`` draw (test = the first ``ceil(0.4 n)`` of
    ``RandomState(seed).permutation(n)``, train = the rest) without depending on it.
    """
    n = len(x)
    n_test = int(np.ceil(test_size * n))
    perm = np.random.RandomState(seed).permutation(n)
    test, train = perm[:n_test], perm[n_test:]
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std[std == 0] = 1.0
    return (x[train] - mean) / std, (x[test] - mean) / std, y[train], y[test]


@dataclass(frozen=True)
class Channel:
    """One SMAP/MSL channel: train and test arrays and the labelled test intervals."""

    name: str
    spacecraft: str
    train: np.ndarray  # (n, 1 + commands); column 0 is the telemetry value
    test: np.ndarray
    anomalies: tuple[tuple[int, int], ...]  # inclusive test-row ranges


def read_channel(root: Path, name: str) -> Channel:
    """Read ``train/<name>.npy``, ``test/<name>.npy`` and the channel's labelled intervals."""
    with (root / "labeled_anomalies.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["chan_id"] == name:
                seqs = tuple(
                    (int(a), int(b)) for a, b in ast.literal_eval(row["anomaly_sequences"])
                )
                craft = row["spacecraft"]
                break
        else:
            raise KeyError(f"{name}: not in labeled_anomalies.csv")
    return Channel(
        name,
        craft,
        np.load(root / "train" / f"{name}.npy"),
        np.load(root / "test" / f"{name}.npy"),
        seqs,
    )


def channel_dataset(name: str, x: np.ndarray) -> Dataset:
    """A channel's array (n, F) as a one-series ``long`` dataset (features value, value_1...)."""
    cols = ["value"] + [f"value_{i}" for i in range(1, x.shape[1])]
    return _array_dataset(name, x, "long", cols)
