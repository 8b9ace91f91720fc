"""Window state that survives crashes and rebalances: a compacted changelog topic.

Each series key's state (its window buffer, the input offset it reflects, its open
incident) is one record in ``<group>-state``, keyed by series key, in the partition with
the same number as the key's input partition. At every checkpoint the detector writes
the keys changed since the last one, waits for the broker to confirm, and only then
commits input offsets. On assignment it reads back exactly the assigned partitions before
consuming them. Because each record carries the offset of the last message applied, a
message that was applied before a crash but redelivered after it is skipped, so the
restored window never holds a point twice.

The end of a state partition is found without watermarks (which some brokers report
wrongly): the restorer writes a unique marker record into the partition and reads until
it sees it, then deletes the marker with a tombstone.

A record is written in layout version 2: timestamps as the newest (float64) and the step
of a regular series, or int32 offsets back from the newest in s, ms or us, whichever first
gives every timestamp back to the microsecond (event times show milliseconds), else
float64 (flagged per record). Version 1 (float64 timestamps) is still read. A detector
that only knows version 1 treats a version-2 record as another layout (the key starts
empty), so a rollback loses windows, not correctness. A record of this layout that
cannot be read raises :class:`DamagedStateRecord`; the restore skips and counts it.
Flag bit 6 (64) marks the key's operator-feedback state, after the decider's; a detector
from before it reads such a record as damaged (the key starts empty).
"""

from __future__ import annotations

import itertools
import logging
import math
import struct
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from stream_detector.kafka.produce import produce

log = logging.getLogger(__name__)

_MAGIC = 0x5D
_VERSION = 2  # written; 1 (float64 timestamps) is still read
# magic, version, flags, window, n_features, count, last_offset (23 bytes)
_HEAD = struct.Struct("<BBBHHqq")
# incident: id (8 bytes), started, ended, peak, windows, normal_run
_INCIDENT = struct.Struct("<8sdddii")
_FLAG_INCIDENT = 1
_FLAG_DECISION = 2
_FLAG_FEEDBACK = 64  # version 2: operator feedback's state (feedback.py) after the decider's
# version 2: how the timestamps are stored (flags bits 2-3), and the unit of OFFSETS
# (bits 4-5: 1 s, 1 ms, 1 us)
_TS_SHIFT = 2
_TS_F64 = 0  # every timestamp as float64 (the fallback)
_TS_REGULAR = 1  # the newest (float64), the step in whole microseconds (int64)
_TS_OFFSETS = 2  # the newest (float64), the older ones as int32 units back from it
_UNIT_SHIFT = 4
_UNITS = (1, 1000, 1_000_000)  # per second
_FLAGS_V1 = _FLAG_INCIDENT | _FLAG_DECISION
_FLAGS_V2 = _FLAGS_V1 | 3 << _TS_SHIFT | 3 << _UNIT_SHIFT | _FLAG_FEEDBACK
_REGULAR = struct.Struct("<dq")
_F64 = struct.Struct("<d")
_LEN = struct.Struct("<I")
# compact timestamps only within +-1e12 s (year 33658): their microseconds fit an int64
_TS_LIMIT = 1e12
_INT32 = 2**31
MARKER_PREFIX = b"__stream_detector_marker__/"


class DamagedStateRecord(ValueError):
    """A changelog record of this detector's layout that cannot be read (cut, or
    garbage after a valid start): the key's state is lost, the rest of the partition is
    not."""


@dataclass
class KeyState:
    """Everything that must survive for one series key."""

    count: int
    last_offset: int
    values: np.ndarray  # (held, F) float32, oldest first, held = min(count, window)
    ts: np.ndarray  # (held,) float64
    incident: tuple[str, float, float, float, int, int] | None = None
    decision: bytes | None = None  # the decider's own per-key state
    feedback: bytes | None = None  # its recent incidents and their labels (feedback.py)


def micros(ts: np.ndarray) -> np.ndarray:
    """Whole microseconds of epoch-second timestamps, rounded as
    ``datetime.fromtimestamp`` rounds them (half to even on the fraction), so two
    timestamps with the same micros give the same event time strings."""
    frac, whole = np.modf(np.asarray(ts, np.float64))
    out: np.ndarray = whole.astype(np.int64) * 1_000_000 + np.rint(frac * 1e6).astype(np.int64)
    return out


def _micros1(t: float) -> int:
    """:func:`micros` of one timestamp."""
    frac, whole = math.modf(t)
    return int(whole) * 1_000_000 + round(frac * 1e6)


def _encode_ts(ts: np.ndarray) -> tuple[int, list[bytes]]:
    """(flag bits, parts) of the smallest layout that gives back every timestamp to the
    microsecond (what event times show: milliseconds): regular, int32 offsets in s, ms or
    us, else float64. Deterministic: the first layout that holds, in that order."""
    held = len(ts)
    # NaN, inf and timestamps beyond the limit: float64 (NaN fails the comparison)
    if held == 0 or not float(np.abs(ts).max()) <= _TS_LIMIT:
        return _TS_F64 << _TS_SHIFT, [ts.tobytes()]
    newest = float(ts[-1])
    if held == 1:
        return _TS_REGULAR << _TS_SHIFT, [_REGULAR.pack(newest, 0)]
    older = ts[:-1]
    # on a rhythm of whole microseconds: exactly what the window buffer exports then
    step = _micros1(newest) - _micros1(float(ts[-2]))
    if abs(step) * held < 2**62 and np.array_equal(_regular_ts(newest, step, held)[:-1],
                                                   older):
        return _TS_REGULAR << _TS_SHIFT, [_REGULAR.pack(newest, step)]
    want: np.ndarray | None = None
    back = newest - older
    for code, unit in enumerate(_UNITS):
        k = np.rint(back * unit)
        if not float(np.abs(k).max()) < _INT32:
            continue
        got = newest - k / unit  # as decode computes it
        if np.array_equal(got, older) or np.array_equal(
                micros(got), want if want is not None else (want := micros(older))):
            return (_TS_OFFSETS << _TS_SHIFT | code << _UNIT_SHIFT,
                    [_F64.pack(newest), k.astype("<i4").tobytes()])
    return _TS_F64 << _TS_SHIFT, [ts.tobytes()]


def _regular_ts(newest: float, step: int, held: int) -> np.ndarray:
    """``held`` timestamps ``step`` us apart ending at ``newest`` (which is kept exact)."""
    back = np.arange(held - 1, -1, -1, dtype=np.int64)
    out: np.ndarray = (_micros1(newest) - step * back) / 1e6
    out[-1] = newest
    return out


def encode(state: KeyState, window: int) -> bytes:
    """Compact binary encoding (version 2): a 23-byte header, float32 values, the
    timestamps in the smallest layout that keeps them to the microsecond (16 bytes for a
    regular series, 4 per point for an irregular one), the incident, the decider's bytes.
    """
    ts = np.ascontiguousarray(state.ts, dtype="<f8")
    ts_flags, ts_parts = _encode_ts(ts)
    flags = ts_flags | (_FLAG_INCIDENT if state.incident is not None else 0) | (
        _FLAG_DECISION if state.decision else 0) | (_FLAG_FEEDBACK if state.feedback else 0)
    n_features = state.values.shape[1] if state.values.ndim == 2 else 1
    parts = [
        _HEAD.pack(_MAGIC, _VERSION, flags, window, n_features, state.count, state.last_offset),
        np.ascontiguousarray(state.values, dtype="<f4").tobytes(),
        *ts_parts,
    ]
    if state.incident is not None:
        iid, started, ended, peak, windows, normal_run = state.incident
        parts.append(_INCIDENT.pack(bytes.fromhex(iid)[:8], started, ended, peak, windows,
                                    normal_run))
    if state.decision:
        parts.append(_LEN.pack(len(state.decision)))
        parts.append(state.decision)
    if state.feedback:
        parts.append(_LEN.pack(len(state.feedback)))
        parts.append(state.feedback)
    return b"".join(parts)


class _Reader:
    """Takes the parts of a record in order; too few bytes left: :class:`DamagedStateRecord`."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.pos = 0

    def take(self, n: int, what: str) -> int:
        """The offset of the next ``n`` bytes (``what`` names them), consumed."""
        pos = self.pos
        if n < 0 or pos + n > len(self.raw):
            raise DamagedStateRecord(
                f"state record of {len(self.raw)} bytes cut in its {what} "
                f"({n} bytes at {pos})")
        self.pos = pos + n
        return pos

    def unpack(self, st: struct.Struct, what: str) -> tuple[Any, ...]:
        return st.unpack_from(self.raw, self.take(st.size, what))

    def array(self, dtype: str, n: int, what: str) -> np.ndarray:
        size = np.dtype(dtype).itemsize
        return np.frombuffer(self.raw, dtype=dtype, count=n, offset=self.take(n * size, what))


def _decode_ts(r: _Reader, version: int, flags: int, held: int) -> np.ndarray:
    mode = _TS_F64 if version == 1 else flags >> _TS_SHIFT & 3
    unit = flags >> _UNIT_SHIFT & 3
    if mode != _TS_OFFSETS and unit:
        raise DamagedStateRecord(f"state record: flags {flags:#x} name no timestamp layout")
    if mode == _TS_F64:
        return r.array("<f8", held, "timestamps").astype(np.float64)
    if held == 0:
        raise DamagedStateRecord("state record: compact timestamps without points")
    if mode == _TS_REGULAR:
        newest, step = r.unpack(_REGULAR, "timestamps")
        if held > 1 and not (np.isfinite(newest) and abs(newest) <= _TS_LIMIT
                             and abs(step) * held < 2**62):
            raise DamagedStateRecord(f"state record: timestamps {newest!r} + {step} us")
        return _regular_ts(newest, step, held) if held > 1 else np.array([newest])
    if mode == _TS_OFFSETS and unit < len(_UNITS):
        (newest,) = r.unpack(_F64, "timestamps")
        back = r.array("<i4", held - 1, "timestamps").astype(np.float64)
        return np.append(newest - back / _UNITS[unit], newest)
    raise DamagedStateRecord(f"state record: flags {flags:#x} name no timestamp layout")


def _block(r: _Reader, raw: bytes, what: str) -> bytes:
    """A length-prefixed, non-empty block of bytes (a decider's or the feedback state)."""
    (n,) = r.unpack(_LEN, f"{what} length")
    if n == 0:
        raise DamagedStateRecord(f"state record: empty {what}")
    pos = r.take(n, what)
    return bytes(raw[pos : pos + n])


def decode(raw: bytes, window: int, n_features: int) -> KeyState | None:
    """Inverse of :func:`encode` (reads versions 1 and 2).

    None for a record of another layout (another magic or version, another model's window
    or feature count); :class:`DamagedStateRecord` for one of this layout that cannot be
    read (cut, too long, impossible flags or count).
    """
    if not raw or raw[0] != _MAGIC or (len(raw) > 1 and raw[1] not in (1, 2)):
        return None
    r = _Reader(raw)
    _, version, flags, w, f, count, last_offset = r.unpack(_HEAD, "header")
    if version not in (1, 2) or w != window or f != n_features:
        return None
    if flags & ~(_FLAGS_V1 if version == 1 else _FLAGS_V2):
        raise DamagedStateRecord(f"state record: unknown flags {flags:#x}")
    if count < 0:
        raise DamagedStateRecord(f"state record: count {count}")
    held = min(count, window)
    values = r.array("<f4", held * f, "values").reshape(held, f).astype(np.float32)
    ts = _decode_ts(r, version, flags, held)
    incident = None
    if flags & _FLAG_INCIDENT:
        iid, started, ended, peak, windows, normal_run = r.unpack(_INCIDENT, "incident")
        incident = (iid.hex(), started, ended, peak, windows, normal_run)
    decision = _block(r, raw, "decision state") if flags & _FLAG_DECISION else None
    feedback = _block(r, raw, "feedback state") if flags & _FLAG_FEEDBACK else None
    if r.pos != len(raw):
        raise DamagedStateRecord(
            f"state record: {len(raw) - r.pos} bytes after its end ({r.pos} bytes)")
    return KeyState(count, last_offset, values, ts, incident, decision, feedback)


class StateStore:
    """Writes changed keys to the changelog and restores assigned partitions from it.

    :meth:`write` uses the detector's producer (its delivery reports gate the commit);
    :meth:`restore` uses clients of its own, so it can run in another thread.
    """

    def __init__(self, topic: str, producer: Producer, consumer_conf: Mapping[str, Any],
                 producer_conf: Mapping[str, Any]) -> None:
        self.topic = topic
        self._producer = producer
        self._consumer_conf = dict(consumer_conf)
        self._producer_conf = dict(producer_conf)  # the restore's own marker producer
        self.bytes_written = 0
        self.records_written = 0

    def write(self, partition: int, key: str, value: bytes | None,
              on_delivery: Any = None) -> None:
        """Queue one key's state (None = tombstone, the key is gone)."""
        produce(self._producer, self.topic, key=key.encode(), value=value,
                partition=partition, on_delivery=on_delivery)
        self.records_written += 1
        self.bytes_written += len(value or b"") + len(key)

    def restore(self, partitions: Iterable[int], timeout: float = 60.0,
                cancel: threading.Event | None = None,
                progress: dict[int, PartitionRestore] | None = None,
                wants: Callable[[int], bool] | None = None,
                max_keys: int | None = None) -> dict[int, dict[str, bytes]]:
        """Read the latest state record of every key in ``partitions`` of the changelog.

        - The deadline is one of *progress*: :class:`TimeoutError` when ``timeout`` s pass
          without a record (or the end marker) arriving, however long the whole read takes.
        - It resumes: ``progress`` (per partition; filled in place) holds how far an earlier
          attempt got, so a retry after a failure reads on from there, not from offset 0.
        - ``wants(p)`` False: partition ``p`` is no longer needed (revoked while read); it
          is dropped at once, and its records with it.
        - At most ``max_keys`` keys are held, across the partitions: the most recently
          written ones (the changelog's order); the others are let go as they fall out,
          counted in :attr:`PartitionRestore.let_go`, and never deleted from the changelog.
        - Every end marker written is tombstoned again, whether the read succeeded or not.

        Returns each partition's records, least recently written first. Raises
        :class:`RestoreCancelled` once ``cancel`` is set.
        """
        parts = sorted(set(partitions))
        if not parts:
            return {}
        progress = {} if progress is None else progress
        for p in parts:
            progress.setdefault(p, PartitionRestore())
        markers = {p: MARKER_PREFIX + uuid.uuid4().hex.encode() for p in parts}
        marker_producer = Producer(self._producer_conf)
        try:
            for p, marker in markers.items():
                produce(marker_producer, self.topic, key=marker, value=b"", partition=p)
            if marker_producer.flush(timeout):
                raise TimeoutError(
                    f"state topic {self.topic}: marker not confirmed in {timeout} s")
            self._read_to_markers(parts, markers, timeout, cancel, progress,
                                  wants or (lambda p: True), max_keys)
        finally:
            # tombstones, so that compaction removes the markers: a failed attempt's too
            for p, marker in markers.items():
                try:
                    produce(marker_producer, self.topic, key=marker, value=None, partition=p)
                except Exception as exc:  # best effort: the read's outcome stands
                    log.warning("state restore: marker tombstone not queued: %s", exc)
            marker_producer.flush(5.0)
        return {p: {k: raw for k, (_, raw) in progress[p].records.items()}
                for p in parts if p in progress}

    def _read_to_markers(self, parts: list[int], markers: dict[int, bytes], timeout: float,
                         cancel: threading.Event | None, progress: dict[int, PartitionRestore],
                         wants: Callable[[int], bool], max_keys: int | None) -> None:
        conf = {**self._consumer_conf, "group.id": f"restore-{uuid.uuid4().hex}",
                "enable.auto.commit": False, "auto.offset.reset": "earliest"}
        consumer = Consumer(conf)
        pending = set(parts)
        start = {p: progress[p].offset for p in parts}
        held = sum(len(progress[p].records) for p in parts)
        deadline = time.monotonic() + timeout
        try:
            consumer.assign([TopicPartition(self.topic, p, start[p]) for p in parts])
            while pending:
                if cancel is not None and cancel.is_set():
                    raise RestoreCancelled(f"state topic {self.topic}: restore cancelled")
                for p in [p for p in pending if not wants(p)]:  # revoked meanwhile
                    pending.discard(p)
                    consumer.pause([TopicPartition(self.topic, p)])
                    held -= len(progress.pop(p).records)
                if not pending:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"state topic {self.topic}: no progress reading partitions "
                        f"{sorted(pending)} for {timeout} s")
                msgs = consumer.consume(1000, 0.5)
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("state restore: %s", err)
                        continue
                    p = msg.partition()
                    if p not in pending:
                        continue
                    deadline = time.monotonic() + timeout  # progress
                    pr = progress[p]
                    offset = msg.offset()
                    if offset < start[p]:  # the resume point is gone: read from the start
                        held -= len(pr.records)
                        pr.records.clear()
                        start[p] = -1
                    pr.offset = offset + 1
                    key = msg.key() or b""
                    if key.startswith(MARKER_PREFIX):
                        if key == markers.get(p):
                            pending.discard(p)
                            consumer.pause([TopicPartition(self.topic, p)])
                        continue
                    value = msg.value()
                    k = key.decode("utf-8", "replace")
                    old = pr.records.pop(k, None)
                    held -= old is not None
                    if value is not None:
                        pr.records[k] = (next(_SEQ), value)
                        held += 1
                        if max_keys is not None and held > max_keys:
                            held -= _let_go_oldest(progress, parts)
        finally:
            consumer.close()


def _let_go_oldest(progress: dict[int, PartitionRestore], parts: list[int]) -> int:
    """Drop the least recently written key of the partitions (1), or none (0)."""
    oldest = None
    for p in parts:
        pr = progress.get(p)
        if pr is not None and pr.records:
            seq = next(iter(pr.records.values()))[0]
            if oldest is None or seq < oldest[0]:
                oldest = (seq, pr)
    if oldest is None:
        return 0
    oldest[1].records.popitem(last=False)
    oldest[1].let_go += 1
    return 1


_SEQ = itertools.count()  # the order in which restores read records (all partitions)


@dataclass
class PartitionRestore:
    """How far the restore of one changelog partition got: the next offset to read, and
    the latest record of every key read so far (key -> (read order, record)), least
    recently written first. Kept across a failed attempt, so the next one resumes."""

    offset: int = OFFSET_BEGINNING
    records: OrderedDict[str, tuple[int, bytes]] = field(default_factory=OrderedDict)
    let_go: int = 0  # records let go beyond max_keys


class RestoreCancelled(Exception):
    """A restore stopped because the detector no longer needs it (revoked, shutting down)."""
