"""The feedback topic: ``stream-detector feedback`` writes one message, every replica of
``run --feedback-topic`` reads them all.

Each replica reads every partition from the beginning with a consumer of its own
(``assign``, no group, no commits): a key's feedback must reach whichever replica holds
the key now or later, and applying a message twice changes nothing
(:class:`~stream_detector.feedback.FeedbackBook`). The loop polls it without blocking; the
topic's partitions are looked up in a thread (a missing topic is logged and looked up
again, never fatal).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from stream_detector.errors import DeliveryError
from stream_detector.feedback import BadFeedback, FeedbackBook, message, parse
from stream_detector.kafka.produce import produce
from stream_detector.kafka.properties import common_properties, producer_properties

log = logging.getLogger(__name__)

RETRY_S = 10.0  # a missing topic is looked up again after this long
RECHECK_S = 60.0  # partitions added to the topic are picked up within this long


class FeedbackReader:
    """Reads the feedback topic into ``book``; :meth:`poll` from the service loop.

    ``counted(result)`` counts what a message came to where the book does not
    (``malformed``)."""

    def __init__(self, topic: str, conf: Mapping[str, Any], book: FeedbackBook,
                 counted: Callable[[str], None] = lambda result: None,
                 retry_s: float = RETRY_S) -> None:
        self.topic = topic
        self.retry_s = retry_s
        self.book = book
        self._counted = counted
        self._consumer = Consumer({
            **conf, "group.id": f"stream-detector-feedback-{uuid.uuid4().hex}",
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest", "enable.partition.eof": False})
        self._assigned: set[int] = set()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feedback-topic")
        self._lookup: Future[int] | None = None
        self._next_lookup = 0.0
        self._missing_logged = False
        self.read = 0  # messages read

    def _partitions(self) -> int:
        """(In the thread.) The topic's partition count; 0 when it does not exist."""
        md = self._consumer.list_topics(self.topic, timeout=5.0)
        t = md.topics.get(self.topic)
        if t is None or t.error is not None:
            return 0
        return len(t.partitions)

    def _look_up(self, now: float) -> None:
        fut = self._lookup
        if fut is None:
            if now >= self._next_lookup:
                self._lookup = self._pool.submit(self._partitions)
            return
        if not fut.done():
            return
        self._lookup = None
        try:
            n = fut.result()
        except Exception as exc:  # the broker unreachable: try again later
            n = 0
            log.warning("feedback topic %s: %s (looked up again in %.0f s)", self.topic,
                        exc, self.retry_s)
        new = sorted(set(range(n)) - self._assigned)
        if new:
            self._consumer.incremental_assign(
                [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in new])
            self._assigned.update(new)
            log.info("feedback topic %s: reading partition(s) %s from the beginning",
                     self.topic, new)
            self._missing_logged = False
        elif not self._assigned and not self._missing_logged:
            log.warning("feedback topic %s does not exist (yet): feedback is not applied "
                        "until it does (looked up every %.0f s)", self.topic, self.retry_s)
            self._missing_logged = True
        self._next_lookup = now + (RECHECK_S if self._assigned else self.retry_s)

    def poll(self, now: float | None = None) -> int:
        """Apply what has arrived (never blocks); returns how many messages were read."""
        self._look_up(time.monotonic() if now is None else now)
        if not self._assigned:
            return 0
        msgs = self._consumer.consume(num_messages=500, timeout=0)
        n = 0
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("feedback topic %s: %s", self.topic, err)
                continue
            n += 1
            try:
                fb = parse(msg.value(), msg.key())
            except BadFeedback as exc:
                self._counted("malformed")
                log.warning("feedback message at %s/%d@%d ignored: %s", msg.topic(),
                            msg.partition(), msg.offset(), exc)
                continue
            result = self.book.apply(fb)
            log.info("feedback %s for incident %s of %r: %s", fb.label, fb.incident_id,
                     fb.key, result)
        self.read += n
        return n

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            self._consumer.close()
        except Exception as exc:  # closing only
            log.warning("feedback consumer close: %s", exc)


def send_feedback(bootstrap_servers: str, topic: str, incident_id: str, key: str, label: str,
                  by: str | None = None, kafka: Mapping[str, str] | None = None,
                  timeout: float = 30.0) -> tuple[int, int]:
    """Write one feedback message (Kafka key: the series key) and wait for the broker to
    confirm it; returns its (partition, offset). Raises :class:`ValueError` for a bad
    message, :class:`DeliveryError` when it is not confirmed."""
    ts = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    value = message(incident_id.lower(), key, label, by, ts)
    producer = Producer({**common_properties(bootstrap_servers), "enable.idempotence": True,
                         "acks": "all", "message.timeout.ms": int(timeout * 1000),
                         **producer_properties(kafka or {})})
    got: list[Any] = []
    produce(producer, topic, key=key.encode(), value=value,
            on_delivery=lambda err, msg: got.append(err if err is not None else msg))
    left = producer.flush(timeout + 5.0)
    if left or not got:
        raise DeliveryError(f"feedback to {topic}: not confirmed in {timeout:g} s")
    if isinstance(got[0], KafkaError):
        raise DeliveryError(f"feedback to {topic}: {got[0].str()}")
    return got[0].partition(), got[0].offset()
