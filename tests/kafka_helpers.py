"""Plain Kafka helpers for integration tests: fast consumer config, produce JSON, read a topic.

They work the same against the embedded Tansu broker and Apache Kafka. Never rely on
watermarks (Tansu's are wrong after multi-record batches): count delivered messages.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

Key = str | bytes | None

# A group's first join takes ~3 s with these, over 20 s with librdkafka's defaults.
FAST_GROUP_TIMEOUTS: dict[str, Any] = {
    "session.timeout.ms": 6000,
    "max.poll.interval.ms": 10000,
}


def consumer_conf(
    bootstrap: str, group: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Return a consumer config for tests: earliest, manual commits, fast group timeouts.

    ``extra`` holds librdkafka properties that override these, e.g.
    ``{"enable.auto.offset.store": False}``.
    """
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        **FAST_GROUP_TIMEOUTS,
    }
    conf.update(extra or {})
    return conf


def _key_bytes(key: Key) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


def produce_json(
    bootstrap: str,
    topic: str,
    messages: Iterable[tuple[Key, Any]],
    headers: Mapping[str, str | bytes] | None = None,
    timeout: float = 15,
) -> list[tuple[int, int]]:
    """Produce ``(key, value)`` pairs as JSON values and return ``(partition, offset)`` of each,
    in the order of ``messages``.

    Values that are ``bytes`` are sent as they are (for bad-input tests). Raises
    ``RuntimeError`` if any message is not delivered within ``timeout`` seconds.
    """
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    reports: dict[int, tuple[int, int]] = {}
    errors: list[str] = []

    def on_delivery_of(i: int) -> Any:
        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                reports[i] = (msg.partition(), msg.offset())

        return on_delivery

    hdrs: list[tuple[str, str | bytes | None]] | None = list(headers.items()) if headers else None
    sent = 0
    for key, value in messages:
        payload = value if isinstance(value, bytes) else json.dumps(value).encode()
        producer.produce(topic, payload, _key_bytes(key), headers=hdrs,
                         on_delivery=on_delivery_of(sent))
        producer.poll(0)
        sent += 1
    left = producer.flush(timeout)
    if errors or left or len(reports) != sent:
        raise RuntimeError(
            f"produced {len(reports)}/{sent} to {topic!r}; {left} undelivered; errors: {errors[:3]}"
        )
    return [reports[i] for i in range(sent)]


def _decode(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested too deep for json
        return raw


def _message_dict(msg: Any) -> dict[str, Any]:
    key = msg.key()
    try:
        key = key.decode() if key is not None else None
    except UnicodeDecodeError:
        pass
    return {
        "topic": msg.topic(),
        "key": key,
        "value": _decode(msg.value()),
        "raw": msg.value(),
        "headers": dict(msg.headers() or []),
        "partition": msg.partition(),
        "offset": msg.offset(),
        "timestamp": msg.timestamp()[1],
    }


def consume_all(
    bootstrap: str,
    topic: str,
    expected: int | None = None,
    timeout: float = 30,
    idle: float = 2,
) -> list[dict[str, Any]]:
    """Read ``topic`` from the beginning and return its messages as dicts.

    Stops at ``expected`` messages, after ``idle`` seconds without a new one, or after
    ``timeout`` seconds, whichever comes first; it never raises for too few messages, so
    the test's assertion shows what arrived. Each dict has ``key`` (str), ``value``
    (parsed JSON, or bytes if not JSON), ``raw``, ``headers`` (dict), ``partition``,
    ``offset``, ``timestamp`` (ms) and ``topic``, in consumption order (offset order
    within a partition).

    It uses its own uuid group with ``assign()`` (no group join, so no join delay) and
    commits nothing.
    """
    consumer = Consumer(consumer_conf(bootstrap, f"consume-all-{uuid.uuid4().hex}"))
    out: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        partitions: list[int] = []
        while not partitions:
            md = consumer.list_topics(topic, timeout=5)
            tm = md.topics.get(topic)
            if tm is not None and tm.error is None and tm.partitions:
                partitions = sorted(tm.partitions)
            elif time.monotonic() >= deadline:
                return out
            else:
                time.sleep(0.1)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        last_new = time.monotonic()
        while expected is None or len(out) < expected:
            now = time.monotonic()
            if now >= deadline or now - last_new >= idle:
                break
            msg = consumer.poll(min(0.2, idle))
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                continue  # e.g. partition EOF
            out.append(_message_dict(msg))
            last_new = time.monotonic()
    finally:
        consumer.close()
    return out
