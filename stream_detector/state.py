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
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from stream_detector.kafka.produce import produce

log = logging.getLogger(__name__)

_MAGIC = 0x5D
_VERSION = 1
# magic, version, flags, window, n_features, count, last_offset
_HEAD = struct.Struct("<BBBHHqq")
# incident: id (8 bytes), started, ended, peak, windows, normal_run
_INCIDENT = struct.Struct("<8sdddii")
_FLAG_INCIDENT = 1
_FLAG_DECISION = 2
_LEN = struct.Struct("<I")
MARKER_PREFIX = b"__stream_detector_marker__/"


@dataclass
class KeyState:
    """Everything that must survive for one series key."""

    count: int
    last_offset: int
    values: np.ndarray  # (held, F) float32, oldest first, held = min(count, window)
    ts: np.ndarray  # (held,) float64
    incident: tuple[str, float, float, float, int, int] | None = None
    decision: bytes | None = None  # the decider's own per-key state


def encode(state: KeyState, window: int) -> bytes:
    """Compact binary encoding: a 24-byte header, float32 values, float64 timestamps."""
    flags = (_FLAG_INCIDENT if state.incident is not None else 0) | (
        _FLAG_DECISION if state.decision else 0)
    n_features = state.values.shape[1] if state.values.ndim == 2 else 1
    parts = [
        _HEAD.pack(_MAGIC, _VERSION, flags, window, n_features, state.count, state.last_offset),
        np.ascontiguousarray(state.values, dtype="<f4").tobytes(),
        np.ascontiguousarray(state.ts, dtype="<f8").tobytes(),
    ]
    if state.incident is not None:
        iid, started, ended, peak, windows, normal_run = state.incident
        parts.append(_INCIDENT.pack(bytes.fromhex(iid)[:8], started, ended, peak, windows,
                                    normal_run))
    if state.decision:
        parts.append(_LEN.pack(len(state.decision)))
        parts.append(state.decision)
    return b"".join(parts)


def decode(raw: bytes, window: int, n_features: int) -> KeyState | None:
    """Inverse of :func:`encode`; None for a record of another layout (e.g. another model)."""
    if len(raw) < _HEAD.size:
        return None
    magic, version, flags, w, f, count, last_offset = _HEAD.unpack_from(raw)
    if magic != _MAGIC or version != _VERSION or w != window or f != n_features:
        return None
    held = min(count, window)
    pos = _HEAD.size
    nv = held * f * 4
    values = np.frombuffer(raw, dtype="<f4", count=held * f, offset=pos).reshape(held, f)
    pos += nv
    ts = np.frombuffer(raw, dtype="<f8", count=held, offset=pos)
    pos += held * 8
    incident = None
    if flags & _FLAG_INCIDENT:
        iid, started, ended, peak, windows, normal_run = _INCIDENT.unpack_from(raw, pos)
        incident = (iid.hex(), started, ended, peak, windows, normal_run)
        pos += _INCIDENT.size
    decision = None
    if flags & _FLAG_DECISION:
        (n,) = _LEN.unpack_from(raw, pos)
        pos += _LEN.size
        decision = bytes(raw[pos : pos + n])
    return KeyState(count, last_offset, values.astype(np.float32), ts.astype(np.float64),
                    incident, decision)


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
                cancel: threading.Event | None = None) -> dict[int, dict[str, bytes]]:
        """Read the latest state record of every key in ``partitions`` of the changelog.

        Raises :class:`TimeoutError` when a partition is not read to its end in
        ``timeout`` s, :class:`RestoreCancelled` once ``cancel`` is set.
        """
        parts = sorted(set(partitions))
        if not parts:
            return {}
        markers = {p: MARKER_PREFIX + uuid.uuid4().hex.encode() for p in parts}
        marker_producer = Producer(self._producer_conf)
        try:
            for p, marker in markers.items():
                produce(marker_producer, self.topic, key=marker, value=b"", partition=p)
            if marker_producer.flush(timeout):
                raise TimeoutError(
                    f"state topic {self.topic}: marker not confirmed in {timeout} s")
            out = self._read_to_markers(parts, markers, timeout, cancel)
            for p, marker in markers.items():  # tombstones: compaction removes the markers
                produce(marker_producer, self.topic, key=marker, value=None, partition=p)
        finally:
            marker_producer.flush(5.0)
        return out

    def _read_to_markers(self, parts: list[int], markers: dict[int, bytes], timeout: float,
                         cancel: threading.Event | None) -> dict[int, dict[str, bytes]]:
        conf = {**self._consumer_conf, "group.id": f"restore-{uuid.uuid4().hex}",
                "enable.auto.commit": False, "auto.offset.reset": "earliest"}
        consumer = Consumer(conf)
        out: dict[int, dict[str, bytes]] = {p: {} for p in parts}
        pending = set(parts)
        deadline = time.monotonic() + timeout
        try:
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
            while pending:
                if cancel is not None and cancel.is_set():
                    raise RestoreCancelled(f"state topic {self.topic}: restore cancelled")
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"state topic {self.topic}: partitions {sorted(pending)} not read "
                        f"to their end in {timeout} s")
                for msg in consumer.consume(1000, 0.5):
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("state restore: %s", err)
                        continue
                    p = msg.partition()
                    key = msg.key() or b""
                    if key.startswith(MARKER_PREFIX):
                        if key == markers.get(p):
                            pending.discard(p)
                            consumer.pause([TopicPartition(self.topic, p)])
                        continue
                    value = msg.value()
                    k = key.decode("utf-8", "replace")
                    if value is None:
                        out[p].pop(k, None)
                    else:
                        out[p][k] = value
        finally:
            consumer.close()
        return out


class RestoreCancelled(Exception):
    """A restore stopped because the detector no longer needs it (revoked, shutting down)."""
