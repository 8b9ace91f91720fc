"""``stream-detector replay``: produce a CSV to a topic as input messages, keyed and in order."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
from confluent_kafka import Producer

from stream_detector.datasets import Dataset, read_dataset
from stream_detector.errors import DeliveryError
from stream_detector.kafka.admin import ensure_topics
from stream_detector.kafka.produce import produce as produce_one
from stream_detector.kafka.properties import producer_properties


def messages(ds: Dataset) -> Iterator[tuple[str, bytes]]:
    """(Kafka key, JSON value) for every point, in file order (so ordered per key)."""
    rows: list[tuple[str, int, int, int]] = []
    for si, s in enumerate(ds.series):
        rows.extend((s.source, int(line), si, i) for i, line in enumerate(s.lines))
    rows.sort()
    names = ds.feature_names
    for _, _, si, i in rows:
        s = ds.series[si]
        vals = [float(v) for v in s.values[i]]
        if ds.fmt == "records":
            key = s.row_keys[i] if s.row_keys is not None else s.key
            doc: dict[str, Any] = {"key": key, "features": dict(zip(names, vals))}
        else:
            key = s.key
            doc = {"key": key, "ts": s.timestamps[i] if ds.fmt != "wide" else float(s.ts[i])}
            if len(vals) == 1:
                doc["value"] = vals[0]
            else:
                doc["values"] = vals
        yield key, orjson.dumps(doc)


def produce(
    bootstrap_servers: str, topic: str, items: Iterator[tuple[str, bytes]], rate: float = 0.0,
    kafka: Mapping[str, str] | None = None,
) -> int:
    """Produce ``items`` to ``topic`` at ``rate`` messages/s (0: as fast as possible)."""
    producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 20,
                         "enable.idempotence": True, **producer_properties(kafka or {})})
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None and len(errors) < 5:
            errors.append(str(err))

    start = time.monotonic()
    n = 0
    for key, value in items:
        if rate > 0:
            ahead = start + n / rate - time.monotonic()
            if ahead > 0:
                producer.poll(0)
                time.sleep(ahead)
        produce_one(producer, topic, key=key.encode(), value=value, on_delivery=on_delivery)
        n += 1
        if n % 1000 == 0:
            producer.poll(0)
    left = producer.flush(60)
    if left or errors:
        raise DeliveryError(f"{left} message(s) unconfirmed; errors: {'; '.join(errors)}")
    return n


def replay_files(cfg: Mapping[str, Any]) -> int:
    ds = read_dataset(cfg["input"], cfg["format"])
    if cfg["partitions"]:
        ensure_topics(cfg["bootstrap_servers"], {cfg["topic"]: cfg["partitions"]},
                      client_config=producer_properties(cfg["kafka"]))
    return produce(cfg["bootstrap_servers"], cfg["topic"], messages(ds), cfg["rate"], cfg["kafka"])
