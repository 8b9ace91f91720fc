"""Kafka producer for anomaly events and dead letters; offsets follow its confirmations.

:meth:`EventSink.flush` waits for every outstanding message and raises
:class:`DeliveryError` if any was not confirmed, so the pipeline never commits an offset
whose events were lost (quix-streams' checkpoint rule). A message the broker refused for
good (an event, a dead letter or a state record) makes the sink *failed*, for good: every
later :meth:`flush`, :meth:`delivered_through` and :meth:`poll` raises again, so no path
(checkpoint, revoke, drain, close) can commit past it. Each refused message is counted in
``stream_detector_delivery_failures_total{topic_kind}``.

A dead letter is never refused for its size: a key or value that would not fit in the
producer's ``message.max.bytes`` is truncated, with a header saying its original length.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from stream_detector.errors import DeliveryError
from stream_detector.kafka.produce import produce
from stream_detector.metrics import Metrics

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1_000_000  # librdkafka's default message.max.bytes
# what a record costs beyond its key, value and headers' bytes: the record's varints, the
# per-header lengths and the batch header (about 61 bytes), with room to spare
RECORD_OVERHEAD = 512
DETAIL_BYTES = 500


def max_message_bytes(conf: Mapping[str, Any]) -> int:
    """The producer's ``message.max.bytes`` (librdkafka refuses a value it cannot read)."""
    try:
        return int(conf.get("message.max.bytes", MAX_MESSAGE_BYTES))
    except (TypeError, ValueError):
        return MAX_MESSAGE_BYTES


def fit(key: bytes | None, value: bytes | None, room: int) -> tuple[
        bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """``key`` and ``value`` cut to ``room`` bytes together, and the headers that say so.

    The value gives way first; a key keeps at least half the room (a key longer than that
    is cut too). ``truncated`` / ``truncated_key`` carry the original length in bytes.
    """
    klen, vlen = len(key or b""), len(value or b"")
    room = max(0, room)
    if klen + vlen <= room:
        return key, value, []
    kroom = min(klen, max(room - vlen, room // 2))
    headers = []
    if key is not None and kroom < klen:
        key = key[:kroom]
        headers.append(("truncated_key", str(klen).encode()))
    if value is not None and vlen > room - kroom:
        value = value[:room - kroom]
        headers.append(("truncated", str(vlen).encode()))
    return key, value, headers


# what a broker answers for a record over its (or the topic's) max.message.bytes
_TOO_LARGE = (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE)


class _DeadLetter(NamedTuple):
    key: bytes | None  # as it came
    value: bytes | None
    headers: list[tuple[str, bytes]]
    room: int  # bytes for key and value together
    seq: int  # its place among produced messages (EventSink.delivered_through)


def _header(text: str, limit: int = DETAIL_BYTES) -> bytes:
    # any text, even one holding lone surrogates, becomes a bounded header value
    return text.encode("utf-8", "backslashreplace")[:limit]


class EventSink:
    """Publishes JSON events (Kafka key = series key) and DLQ records."""

    def __init__(
        self, conf: Mapping[str, Any], output_topic: str, dlq_topic: str | None,
        metrics: Metrics,
    ) -> None:
        self.output_topic = output_topic
        self.dlq_topic = dlq_topic
        self.metrics = metrics
        self._producer = Producer(dict(conf))
        self.max_message_bytes = max_message_bytes(conf)
        self._failed: str | None = None  # the first refusal; never cleared
        # every message gets a sequence number; the lowest one not yet confirmed tells
        # whether everything produced before a point is delivered (confirmations come
        # back out of order across partitions)
        self._seq = 0
        self._unconfirmed: list[int] = []
        self._confirmed: set[int] = set()
        self._retries: deque[_DeadLetter] = deque()
        # called with every event as it is published (operator feedback notes incidents)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    @property
    def producer(self) -> Producer:
        return self._producer

    @property
    def failed(self) -> str | None:
        """Why the sink failed (the first message refused for good), None while it works."""
        return self._failed

    def fail(self, topic_kind: str, topic: str | None, err: object) -> None:
        """Record that a message of ``topic_kind`` (events, dlq, state) was refused for good."""
        self.metrics.delivery_failures.labels(topic_kind=topic_kind).inc()
        log.error("%s record not delivered to %s: %s", topic_kind, topic, err)
        if self._failed is None:
            self._failed = f"broker refused a {topic_kind} record for {topic}: {err}"

    def raise_if_failed(self) -> None:
        """Raise :class:`DeliveryError` if any message was refused, now or earlier."""
        if self._failed is not None:
            raise DeliveryError(self._failed)

    def _on_event(self, kind: str, kafka_ts: float) -> Any:
        def cb(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self.fail("events", self.output_topic, err)
                return
            self.metrics.events_published.labels(type=kind).inc()
            if kafka_ts > 0:
                self.metrics.event_latency.observe(max(0.0, time.time() - kafka_ts))
        return cb

    def on_state_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.fail("state", msg.topic() if msg is not None else None, err)

    def _on_dlq(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.fail("dlq", self.dlq_topic, err)

    def tracked(self, cb: Any) -> Any:
        """Wrap a delivery callback so :meth:`delivered_through` accounts for its message."""
        self._seq += 1
        seq = self._seq
        heapq.heappush(self._unconfirmed, seq)

        def wrapped(err: KafkaError | None, msg: Message) -> None:
            self._confirmed.add(seq)
            cb(err, msg)
        return wrapped

    def mark(self) -> int:
        """A point in the stream of produced messages (for :meth:`delivered_through`)."""
        return self._seq

    def delivered_through(self, mark: int) -> bool:
        """Whether every message produced up to ``mark`` has been confirmed (no waiting).

        Raises :class:`DeliveryError` if the broker refused a message for good.
        """
        self._producer.poll(0)
        self._send_retries()
        self.raise_if_failed()
        heap, done = self._unconfirmed, self._confirmed
        while heap and heap[0] in done:
            done.discard(heapq.heappop(heap))
        return not heap or heap[0] > mark

    def _produce(self, kind: str, **kw: Any) -> None:
        kw["on_delivery"] = self.tracked(kw["on_delivery"])
        seq = self._seq
        try:
            produce(self._producer, **kw)
        except KafkaException as exc:
            # refused outright: no report will come, so nothing is left to wait for
            self._confirmed.add(seq)
            self.fail(kind, kw.get("topic"), exc)
            raise DeliveryError(self._failed or str(exc)) from exc
        except BaseException:
            self._confirmed.add(seq)
            raise

    def publish(self, event: dict[str, Any], kafka_ts: float) -> None:
        self._produce(
            "events", topic=self.output_topic, key=event["key"].encode(), value=orjson.dumps(event),
            on_delivery=self._on_event(event["type"], kafka_ts),
        )
        for listener in self.listeners:
            listener(event)

    def dead_letter(
        self, value: bytes | None, key: bytes | None, reason: str, detail: str,
        topic: str, partition: int, offset: int,
    ) -> None:
        """Send a rejected message to the DLQ topic: its key and value as they came (cut to
        what the producer may send, see :func:`fit`) and why, in headers."""
        if not self.dlq_topic:
            return
        headers = [
            ("reason", _header(reason)), ("detail", _header(detail)),
            ("source_topic", _header(topic)), ("source_partition", str(partition).encode()),
            ("source_offset", str(offset).encode()),
        ]
        room = (self.max_message_bytes - RECORD_OVERHEAD
                - sum(len(k) + len(v) for k, v in headers))
        self._seq += 1
        heapq.heappush(self._unconfirmed, self._seq)
        self._send_dead_letter(_DeadLetter(key, value, headers, room, self._seq))

    def _send_dead_letter(self, dl: _DeadLetter) -> None:
        """Produce ``dl`` cut to its room; its sequence number is confirmed by the report
        of the copy that the broker takes (or refuses for another reason than size)."""
        k, v, cut = fit(dl.key, dl.value, dl.room)

        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None and err.code() in _TOO_LARGE and dl.room > 0:
                # the broker's or the topic's limit is below the producer's: a smaller
                # copy, sent from the next poll (not from inside this callback)
                room = dl.room // 8 if dl.room > 1024 else 0
                log.warning("dead letter of %d bytes refused by the broker as too large; "
                            "sending it cut to %d", len(v or b"") + len(k or b""), room)
                self._retries.append(dl._replace(room=room))
                return
            self._confirmed.add(dl.seq)
            self._on_dlq(err, msg)

        kw: dict[str, Any] = {"topic": self.dlq_topic, "key": k, "value": v, "headers": dl.headers + cut,
              "on_delivery": report}
        while True:
            try:
                produce(self._producer, **kw)
                return
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE or dl.room <= 0:
                    self._confirmed.add(dl.seq)
                    self.fail("dlq", self.dlq_topic, exc)
                    raise DeliveryError(self._failed or str(exc)) from exc
                # the overhead was underestimated (a tiny message.max.bytes): headers only
                log.warning("dead letter too large for the producer even cut to %d bytes; "
                            "sending its headers only", dl.room)
                dl = dl._replace(room=0)
                kw["key"], kw["value"], cut = fit(dl.key, dl.value, 0)
                kw["headers"] = dl.headers + cut

    def _send_retries(self) -> None:
        while self._retries:
            self._send_dead_letter(self._retries.popleft())

    def poll(self) -> None:
        """Serve delivery reports; raises :class:`DeliveryError` once the sink has failed."""
        self._producer.poll(0)
        self._send_retries()
        self.raise_if_failed()

    def flush(self, timeout: float = 30.0, strict: bool = True) -> bool:
        """Wait until every message is confirmed.

        Returns False if some are still in flight after ``timeout`` (the broker is slow or
        unreachable; librdkafka keeps retrying them), raising :class:`DeliveryError` instead
        when ``strict``. A message the broker refused for good always raises.
        """
        deadline = time.monotonic() + timeout
        left = self._producer.flush(timeout)
        while self._retries:  # dead letters the broker refused as too large, cut further
            self._send_retries()
            left = self._producer.flush(max(0.0, deadline - time.monotonic()))
        if not left:  # everything confirmed
            self._unconfirmed.clear()
            self._confirmed.clear()
        self.raise_if_failed()
        if left:
            if strict:
                raise DeliveryError(
                    f"{left} message(s) not confirmed by the broker in {timeout:.0f} s")
            return False
        return True

    def close(self, timeout: float) -> None:
        self._producer.flush(timeout)
