"""A range of an input topic as a :class:`~stream_detector.datasets.Dataset`, for
``backtest --topic``: every partition from ``--from-offset`` up to ``--to-offset`` (or
its end), decoded as ``run`` decodes (bad input skipped and counted), each key's points
in offset order."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from stream_detector.artifact import Artifact
from stream_detector.datasets import Dataset, Series
from stream_detector.errors import InputError, InvalidRecord
from stream_detector.kafka.properties import common_properties
from stream_detector.records import iso
from stream_detector.source import Decoder

log = logging.getLogger(__name__)

_IDLE_S = 10.0  # no message for this long on a partition not yet at its end: give up


def read_topic(cfg: Mapping[str, Any], art: Artifact) -> Dataset:
    """Read ``cfg["topic"]`` (offsets ``from_offset`` to ``to_offset``) into series for a
    model shaped like ``art``."""
    topic, start, stop = cfg["topic"], cfg["from_offset"], cfg["to_offset"]
    if start < 0:
        raise InputError(f"--from-offset must be >= 0, got {start}")
    if stop != -1 and stop <= start:
        raise InputError(f"--to-offset must be above --from-offset ({start}), got {stop}")
    conf = {**common_properties(cfg["bootstrap_servers"]), **cfg.get("kafka", {}),
            "group.id": f"stream-detector-backtest-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "enable.partition.eof": True}
    consumer = Consumer(conf)
    try:
        meta = consumer.list_topics(topic, timeout=10)
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            raise InputError(f"--topic {topic}: no such topic on {cfg['bootstrap_servers']}")
        parts = sorted(tmeta.partitions)
        consumer.assign([TopicPartition(topic, p, start) for p in parts])
        points = _consume(consumer, topic, parts, stop, Decoder(
            art.n_features, record_mode=art.record_mode, feature_names=art.features))
    except KafkaException as exc:
        raise InputError(f"--topic {topic}: {exc}") from None
    finally:
        consumer.close()
    return _dataset(topic, points, art)


def _consume(consumer: Consumer, topic: str, parts: list[int], stop: int,
             decoder: Decoder) -> dict[str, list[tuple[float, Any, int]]]:
    """Per key, its (ts, values, offset) in offset order; stops at every partition's end."""
    open_parts = set(parts)
    points: dict[str, list[tuple[float, Any, int]]] = {}
    bad = 0
    last = time.monotonic()
    while open_parts:
        msgs = consumer.consume(num_messages=1000, timeout=0.5)
        if not msgs:
            if time.monotonic() - last > _IDLE_S:
                raise InputError(f"--topic {topic}: no message for {_IDLE_S:g} s on "
                                 f"partition(s) {sorted(open_parts)}")
            continue
        last = time.monotonic()
        for msg in msgs:
            err = msg.error()
            p, offset = msg.partition(), msg.offset() or 0
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    open_parts.discard(p)
                    continue
                raise KafkaException(err)
            if p not in open_parts:
                continue
            if stop != -1 and offset >= stop:
                open_parts.discard(p)
                continue
            _, ts_ms = msg.timestamp()
            try:
                key, ts, values = decoder.decode_point(msg.value(), msg.key(),
                                                       ts_ms / 1000.0 if ts_ms > 0 else None)
            except InvalidRecord:
                bad += 1
                continue
            points.setdefault(key, []).append((ts, values, offset))
    if bad:
        log.warning("%d message(s) of %s skipped as bad input", bad, topic)
    return points


def _dataset(topic: str, points: dict[str, list[tuple[float, Any, int]]],
             art: Artifact) -> Dataset:
    series = []
    short = [k for k, pts in points.items() if len(pts) < art.window]
    if short:
        log.warning("%d key(s) with fewer points than the window of %d left out, e.g. %r",
                    len(short), art.window, short[0])
    for key, pts in points.items():
        if len(pts) < art.window:
            continue
        ts = np.array([t for t, _, _ in pts], dtype=np.float64)
        values = np.array([np.asarray(v, dtype=np.float32).reshape(-1) for _, v, _ in pts],
                          dtype=np.float32).reshape(len(pts), art.n_features)
        series.append(Series(key=key, timestamps=[iso(t) for t in ts], ts=ts, values=values,
                             source=f"{topic}", lines=np.array([o for _, _, o in pts])))
    if not series:
        raise InputError(f"--topic {topic}: no valid message in the range")
    return Dataset(fmt="records" if art.record_mode else "long", series=series,
                   feature_names=list(art.features), files=[topic])
