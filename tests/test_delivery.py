"""Offsets follow delivery, for good: after one refused event, dead letter or state record
nothing past it is ever committed, on any path (checkpoint, revoke, drain, close).

A refusal from the start is a topic name the broker refuses (``bad topic! <uuid>``, never
created): Apache Kafka and the embedded broker both answer INVALID_TOPIC_EXCEPTION. A
refusal mid-stream is injected into the producer (as a broker without write rights on the
DLQ would answer): the embedded broker cannot be made to refuse a topic it has (it creates
any name, takes produce requests for deleted topics and has no ACLs).
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, Message, Producer, TopicPartition
from kafka_helpers import consume_all, produce_json
from prometheus_client import CollectorRegistry
from service_helpers import (
    T0,
    WINDOW,
    DetectorProcess,
    RecordingConsumer,
    committed_offsets,
    wait_until,
    wave,
)

from stream_detector.artifact import load_artifact
from stream_detector.cli import build_parser
from stream_detector.config import COMMAND_OPTS, resolve
from stream_detector.errors import DeliveryError
from stream_detector.metrics import Metrics
from stream_detector.service import Detector, ServiceConfig
from stream_detector.sink import EventSink
from stream_detector.testing import registry_value


def _bad_topic() -> str:
    """A name every Kafka broker refuses (INVALID_TOPIC_EXCEPTION), unless created (the
    embedded broker's CreateTopics takes any name)."""
    return f"bad topic! {uuid.uuid4().hex}"


def _failures(metrics: Metrics, kind: str) -> float:
    return registry_value(metrics.registry, "stream_detector_delivery_failures_total",
                          {"topic_kind": kind})


def test_a_refused_dead_letter_fails_the_sink_for_good(broker_bootstrap, topic_factory):
    metrics = Metrics.create(CollectorRegistry())
    sink = EventSink({"bootstrap.servers": broker_bootstrap, "linger.ms": 5},
                     topic_factory(1), _bad_topic(), metrics)
    sink.dead_letter(b"x", b"k", "not_json", "not json", "src", 0, 7)
    with pytest.raises(DeliveryError, match="dlq"):
        sink.flush(10)
    # ... and again on every later call: the failure is never forgotten
    for call in (lambda: sink.flush(1), sink.poll, lambda: sink.delivered_through(0),
                 sink.raise_if_failed):
        with pytest.raises(DeliveryError):
            call()
    assert _failures(metrics, "dlq") == 1 and _failures(metrics, "events") == 0
    sink.close(1)


def _detector(bootstrap: str, model: Path, *extra: str) -> tuple[Detector, RecordingConsumer]:
    args = build_parser().parse_args([
        "run", "--bootstrap-servers", bootstrap, "--input-topic", "in", "--output-topic",
        "out", "--group-id", "g", "--model", str(model), "--state", "none", *extra])
    det = Detector(ServiceConfig.from_options(resolve("run", COMMAND_OPTS["run"], args)),
                   load_artifact(model), Metrics.create())
    det.consumer.close()
    stub = RecordingConsumer()
    det.consumer = stub  # type: ignore[assignment]
    det.parts.assign({("in", 0)}, restoring=False)
    return det, stub


def _msg(offset: int, value: bytes) -> Message:
    return Message(topic="in", partition=0, offset=offset, key=b"k", value=value,
                   timestamp=(1, (T0 + offset) * 1000))


def test_no_path_commits_past_a_refused_dead_letter(broker_bootstrap, topic_factory, model):
    det, consumer = _detector(broker_bootstrap, model, "--dlq-topic", _bad_topic())
    good = [_msg(i, orjson.dumps({"key": "k", "ts": T0 + 60 * i, "value": 10.0}))
            for i in range(5)]
    det.handle_many(good)
    assert det.checkpoint(timeout=10) and consumer.commits[-1][0].offset == 5
    assert det.ready()[0]
    det.handle_many([_msg(5, b"{not json"), _msg(6, good[0].value())])
    with pytest.raises(DeliveryError):
        det.checkpoint(timeout=10)
    with pytest.raises(DeliveryError):  # ... and every later one
        det.checkpoint(timeout=10)
    # the revoke path logs, stops the loop, commits nothing (a partition with uncommitted
    # input: a revoke that committed before checking the sink would show here)
    det._on_revoke(consumer, [TopicPartition("in", 0)])
    assert det._stop
    det.begin_checkpoint()
    for _ in range(3):
        with pytest.raises(DeliveryError):
            det.advance_checkpoint()
            det.sink.poll()
    assert len(consumer.commits) == 1, "nothing committed after the refusal"
    ok, why = det.ready()
    assert not ok and "delivery failed" in why
    assert det.metrics.registry.get_sample_value("stream_detector_ready") == 0.0
    assert _failures(det.metrics, "dlq") == 1
    det._close(0.5)
    assert len(consumer.commits) == 1


class _Refuse:
    """The sink's real producer, except that once ``armed`` the broker refuses every record
    for ``topic`` (TOPIC_AUTHORIZATION_FAILED, as for a user without write rights); the
    refusal comes with the next poll or flush, as librdkafka reports it."""

    def __init__(self, producer: Producer, topic: str) -> None:
        self._p, self.topic, self.armed, self.refused = producer, topic, False, 0
        self._pending: list[Any] = []

    def produce(self, topic: str, *args: Any, **kw: Any) -> None:
        if self.armed and topic == self.topic:
            self._pending.append(kw.get("on_delivery"))
            return
        self._p.produce(topic, *args, **kw)

    def _report(self) -> None:
        pending, self._pending = self._pending, []
        for cb in pending:
            self.refused += 1
            cb(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), None)

    def poll(self, timeout: float = 0) -> int:
        self._report()
        return int(self._p.poll(timeout))

    def flush(self, timeout: float = 30) -> int:
        self._report()
        return int(self._p.flush(timeout))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._p, name)


def test_a_dlq_refused_mid_stream_stops_without_commit_and_a_restart_loses_nothing(
        broker_bootstrap, topic_factory, group_id, model, tmp_path):
    src, out, dlq = topic_factory(1), topic_factory(1), topic_factory(1)
    values = wave(301, seed=3)
    point = [("a", {"key": "a", "ts": T0 + 60 * i, "value": float(values[i])})
             for i in range(301)]
    produce_json(broker_bootstrap, src, point[:200])  # offsets 0..199
    args = build_parser().parse_args([
        "run", "--bootstrap-servers", broker_bootstrap, "--input-topic", src,
        "--output-topic", out, "--dlq-topic", dlq, "--group-id", group_id, "--model",
        str(model), "--commit-interval-ms", "200", "--kafka", "session.timeout.ms=6000",
        "--kafka", "max.poll.interval.ms=10000"])
    det = Detector(ServiceConfig.from_options(resolve("run", COMMAND_OPTS["run"], args)),
                   load_artifact(model), Metrics.create())
    det.sink._producer = refuse = _Refuse(det.sink._producer, dlq)  # type: ignore[assignment]
    result: dict[str, int] = {}
    loop = threading.Thread(target=lambda: result.setdefault("code", det.run()), daemon=True)
    loop.start()
    try:
        wait_until(lambda: committed_offsets(broker_bootstrap, group_id, src, 1)[0] == 200,
                   120, "the first 200 committed")
        refuse.armed = True  # from now on the DLQ is not writable
        # offset 200: bad input, whose dead letter the broker refuses; then 100 good points
        produce_json(broker_bootstrap, src, [("a", b"{not json")] + point[201:])
        loop.join(60)
    finally:
        det.stop()
        loop.join(30)
    assert result.get("code") == 1, "the run exits 1"
    assert refuse.refused == 1
    assert committed_offsets(broker_bootstrap, group_id, src, 1)[0] == 200, \
        "nothing past the refused dead letter was committed (nor at close)"
    assert _failures(det.metrics, "dlq") == 1
    assert not det.ready()[0] and det.metrics.registry.get_sample_value(
        "stream_detector_ready") == 0.0

    # the cause is gone (the DLQ takes writes again): a restart loses nothing
    second = DetectorProcess(broker_bootstrap, src, out, group_id, model,
                             ["--dlq-topic", dlq], log=tmp_path / "second.log")
    try:
        second.wait_value("stream_detector_messages_consumed_total", 101)
        wait_until(lambda: committed_offsets(broker_bootstrap, group_id, src, 1)[0] == 301,
                   60, "everything committed", second._tail)
        time.sleep(0.5)
        m = second.metrics()
        assert m["stream_detector_messages_consumed_total"] == 101, "resumed at the commit"
        # the restored window scores the very next point: no window lost
        assert m["stream_detector_state_restored_keys_total"] == 1
        assert m["stream_detector_windows_scored_total"] == 100
        dead = consume_all(broker_bootstrap, dlq, expected=1, timeout=20, idle=3)
    finally:
        assert second.terminate()[0] == 0
    assert [d["headers"]["source_offset"] for d in dead] == [b"200"]
    assert dead[0]["raw"] == b"{not json"
    assert WINDOW < 200
