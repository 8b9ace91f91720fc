"""Read the contract's CSV formats (long, nab, wide, records) into per-key series.

Every user mistake becomes an :class:`InputError` whose message names the file and,
where it applies, the line and column, so the CLI can print one line and exit 2.

A timestamp that goes back (before its key's previous point's, in file order: a clock
stepping back at a daylight-saving change) is data, not a mistake: ``timestamp_policy``
decides, as ``--timestamp-policy`` does for ``run``. ``accept`` keeps the point in file
order, ``drop`` leaves it out, both count it; ``dlq`` (which has no dead-letter topic
offline) refuses the file, naming the line.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from stream_detector.errors import InputError
from stream_detector.window import TIMESTAMP_POLICIES

FORMATS = ("long", "nab", "wide", "records")


@dataclass
class Series:
    """One key's points in file order.

    ``values`` has shape (n, n_features); ``ts`` is epoch seconds (or the position for
    formats without time); ``timestamps`` keeps the original text for output.
    """

    key: str
    timestamps: list[str]
    ts: np.ndarray
    values: np.ndarray
    source: str
    lines: np.ndarray
    labels: np.ndarray | None = None
    row_keys: list[str] | None = None  # records mode: the `key` column of each row

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def head(self, fraction: float) -> Series:
        """The first ``fraction`` of the points (at least one)."""
        n = max(1, int(math.floor(len(self) * fraction)))
        return Series(
            key=self.key,
            timestamps=self.timestamps[:n],
            ts=self.ts[:n],
            values=self.values[:n],
            source=self.source,
            lines=self.lines[:n],
            labels=None if self.labels is None else self.labels[:n],
            row_keys=None if self.row_keys is None else self.row_keys[:n],
        )


@dataclass
class Dataset:
    """All series read from the input files, and the feature names they share."""

    fmt: str
    series: list[Series]
    feature_names: list[str]
    files: list[str] = field(default_factory=list)
    # points whose timestamp goes back (kept with timestamp_policy accept, left out with
    # drop), and where the first of them is, for the user
    timestamps_backwards: int = 0
    first_backwards: str | None = None

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_points(self) -> int:
        return sum(len(s) for s in self.series)


def parse_timestamp(text: str) -> float:
    """ISO-8601 text or epoch seconds -> epoch seconds (naive times are UTC).

    >>> parse_timestamp("2026-01-01T00:00:00Z")
    1767225600.0
    >>> parse_timestamp("1767225600")
    1767225600.0
    """
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(value):
            return value
        raise ValueError(f"timestamp {text!r} is not finite")
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _number(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise InputError(
            f"{path}: line {line}, column {column!r}: expected a number, got {shown!r}"
        ) from None
    if not math.isfinite(value):
        raise InputError(f"{path}: line {line}, column {column!r}: value {text!r} is not finite")
    return value


def _open_rows(path: Path) -> list[list[str]]:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a CSV file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = [row for row in csv.reader(fh) if row and any(c.strip() for c in row)]
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text CSV ({exc.reason})") from None
    except csv.Error as exc:
        raise InputError(f"{path}: malformed CSV ({exc})") from None
    if not rows:
        raise InputError(f"{path}: the file is empty")
    return rows


def _header(rows: list[list[str]], path: Path, required: Sequence[str]) -> list[str]:
    header = [h.strip() for h in rows[0]]
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(
            f"{path}: line 1: header must contain {', '.join(required)}; "
            f"missing {', '.join(missing)} (found {', '.join(header) or 'nothing'})"
        )
    if len(rows) < 2:
        raise InputError(f"{path}: the file has a header but no data rows")
    return header


def _cell(row: list[str], idx: int, path: Path, line: int, column: str) -> str:
    if idx >= len(row):
        raise InputError(f"{path}: line {line}: missing column {column!r}")
    return row[idx].strip()


def _read_timeseries(path: Path, fmt: str, policy: str, backwards: list[tuple[int, str, int]]
                     ) -> tuple[list[Series], list[str]]:
    """The file's series; (line of the first, where it is, how many) is added to
    ``backwards`` for every key with points whose timestamp goes back."""
    rows = _open_rows(path)
    required = ("timestamp", "key", "value") if fmt == "long" else ("timestamp", "value")
    header = _header(rows, path, required)
    value_cols = ["value"] + [h for h in header if h.startswith("value_")]
    vidx = [header.index(c) for c in value_cols]
    tidx = header.index("timestamp")
    kidx = header.index("key") if fmt == "long" else None
    lidx = header.index("label") if "label" in header else None
    per_key: dict[str, tuple[list[str], list[float], list[list[float]], list[int], list[float]]] = {}
    default_key = path.stem
    for n, row in enumerate(rows[1:], start=2):
        ts_text = _cell(row, tidx, path, n, "timestamp")
        try:
            ts = parse_timestamp(ts_text)
        except ValueError:
            raise InputError(
                f"{path}: line {n}, column 'timestamp': cannot parse {ts_text!r} "
                "(expected ISO-8601 or epoch seconds)"
            ) from None
        key = _cell(row, kidx, path, n, "key") if kidx is not None else default_key
        if kidx is not None and not key:
            raise InputError(f"{path}: line {n}, column 'key': empty series key")
        vals = [_number(_cell(row, i, path, n, c), path, n, c) for i, c in zip(vidx, value_cols)]
        entry = per_key.setdefault(key, ([], [], [], [], []))
        entry[0].append(ts_text)
        entry[1].append(ts)
        entry[2].append(vals)
        entry[3].append(n)
        if lidx is not None:
            entry[4].append(_number(_cell(row, lidx, path, n, "label"), path, n, "label"))
    series = []
    for key, (texts, tss, vals, lines, labels) in per_key.items():
        ts_arr = np.asarray(tss, dtype=np.float64)
        # against the previous point only (not the latest so far): a step back at a
        # daylight-saving change, or one far-future point, is one point, not all later ones
        back = np.nonzero(np.diff(ts_arr) < 0)[0] + 1
        line_arr = np.asarray(lines)
        val_arr = np.asarray(vals, dtype=np.float32).reshape(len(vals), len(value_cols))
        label_arr = np.asarray(labels, dtype=np.float32) if lidx is not None else None
        if back.size:
            i = int(back[0])
            where = (f"{path}: line {lines[i]}: timestamp {texts[i]!r} of key {key!r} goes "
                     f"backwards (previous {texts[i - 1]!r})")
            backwards.append((lines[i], where, int(back.size)))
            if policy == "drop":
                keep = np.ones(len(ts_arr), dtype=bool)
                keep[back] = False
                texts = [t for t, k in zip(texts, keep.tolist()) if k]
                ts_arr, line_arr, val_arr = ts_arr[keep], line_arr[keep], val_arr[keep]
                label_arr = None if label_arr is None else label_arr[keep]
        series.append(
            Series(
                key=key,
                timestamps=texts,
                ts=ts_arr,
                values=val_arr,
                source=str(path),
                lines=line_arr,
                labels=label_arr,
            )
        )
    if backwards and policy == "dlq":
        raise InputError(f"{min(backwards)[1]}; sort the file by time, or use "
                         "--timestamp-policy accept (file order) or drop")
    return series, value_cols


def _read_wide(path: Path, key_prefix: str) -> tuple[list[Series], list[str]]:
    rows = _open_rows(path)
    out = []
    for n, row in enumerate(rows, start=1):
        vals = [_number(c.strip(), path, n, str(j)) for j, c in enumerate(row)]
        length = len(vals)
        out.append(
            Series(
                key=f"{key_prefix}{n - 1}",
                timestamps=[str(j) for j in range(length)],
                ts=np.arange(length, dtype=np.float64),
                values=np.asarray(vals, dtype=np.float32).reshape(length, 1),
                source=str(path),
                lines=np.full(length, n),
            )
        )
    return out, ["value"]


def _read_records(path: Path) -> tuple[list[Series], list[str]]:
    rows = _open_rows(path)
    header = [h.strip() for h in rows[0]]
    if len(rows) < 2:
        raise InputError(f"{path}: the file has a header but no data rows")
    reserved = {"key", "label", "timestamp"}
    feature_cols = [h for h in header if h not in reserved]
    if not feature_cols:
        raise InputError(f"{path}: line 1: no feature column (only {', '.join(header)})")
    # A column is a feature only if its first data cell is numeric: a text column like
    # "hostname" is ignored rather than failing every row; a stray text cell in a numeric
    # column is an error naming its line.
    first = rows[1]
    numeric = []
    for c in feature_cols:
        i = header.index(c)
        try:
            float(first[i]) if i < len(first) else None
        except ValueError:
            continue
        if i < len(first):
            numeric.append(c)
    if not numeric:
        raise InputError(
            f"{path}: no numeric column among {', '.join(feature_cols)} "
            "(records need numeric features)"
        )
    fidx = [header.index(c) for c in numeric]
    kidx = header.index("key") if "key" in header else None
    lidx = header.index("label") if "label" in header else None
    tidx = header.index("timestamp") if "timestamp" in header else None
    keys, texts, vals, lines, labels = [], [], [], [], []
    for n, row in enumerate(rows[1:], start=2):
        vals.append([_number(_cell(row, i, path, n, c), path, n, c) for i, c in zip(fidx, numeric)])
        keys.append(_cell(row, kidx, path, n, "key") if kidx is not None else path.stem)
        texts.append(_cell(row, tidx, path, n, "timestamp") if tidx is not None else str(n - 2))
        lines.append(n)
        if lidx is not None:
            labels.append(_number(_cell(row, lidx, path, n, "label"), path, n, "label"))
    x = np.asarray(vals, dtype=np.float32)
    # Records are scored one by one, so they form one series per file: grouping by key
    # would change nothing about the model but would scatter the output order.
    return [
        Series(
            key=path.stem,
            timestamps=texts,
            ts=np.arange(len(vals), dtype=np.float64),
            values=x,
            source=str(path),
            lines=np.asarray(lines),
            labels=np.asarray(labels, dtype=np.float32) if lidx is not None else None,
            row_keys=keys if kidx is not None else None,
        )
    ], numeric


def read_dataset(paths: Sequence[str | Path], fmt: str,
                 timestamp_policy: str = "accept") -> Dataset:
    """Read every file of ``paths`` in format ``fmt`` into one :class:`Dataset`.

    ``timestamp_policy``: what to do with a point whose timestamp is before its key's
    previous point's (``long`` and ``nab``): ``accept`` keeps it in file order, ``drop``
    leaves it out (both count it in ``Dataset.timestamps_backwards``), ``dlq`` refuses the
    file with an :class:`InputError` naming the line.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if timestamp_policy not in TIMESTAMP_POLICIES:
        raise InputError(f"unknown timestamp policy {timestamp_policy!r} "
                         f"(choose from {', '.join(TIMESTAMP_POLICIES)})")
    if not paths:
        raise InputError("no input file given (--input PATH)")
    all_series: list[Series] = []
    names: list[str] | None = None
    n_back, first_back = 0, None
    for raw in paths:
        path = Path(raw)
        if fmt in ("long", "nab"):
            backwards: list[tuple[int, str, int]] = []
            series, cols = _read_timeseries(path, fmt, timestamp_policy, backwards)
            n_back += sum(n for _, _, n in backwards)
            if backwards and first_back is None:
                first_back = min(backwards)[1]
        elif fmt == "wide":
            prefix = "" if len(paths) == 1 else f"{path.stem}/"
            series, cols = _read_wide(path, prefix)
        else:
            series, cols = _read_records(path)
        if names is None:
            names = cols
        elif len(cols) != len(names) and fmt != "wide":
            raise InputError(
                f"{path}: has {len(cols)} feature column(s) ({', '.join(cols)}), "
                f"but earlier files have {len(names)} ({', '.join(names)})"
            )
        all_series.extend(series)
    ds = Dataset(fmt=fmt, series=all_series, feature_names=names or ["value"],
                 files=[str(p) for p in paths], timestamps_backwards=n_back,
                 first_backwards=first_back)
    seen: dict[str, str] = {}
    for s in all_series:
        if s.key in seen and fmt != "records":
            raise InputError(
                f"{s.source}: series key {s.key!r} also appears in {seen[s.key]}; "
                "keys must be unique across input files"
            )
        seen[s.key] = s.source
    return ds
