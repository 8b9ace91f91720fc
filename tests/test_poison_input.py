"""Poison records: any bytes a producer can write become a scored point or a dead letter,
and none of them stops the detector, at decode, at a checkpoint or at publish (real broker).
"""

from __future__ import annotations

import orjson
import pytest
from confluent_kafka import KafkaError, Producer
from kafka_helpers import consume_all
from prometheus_client import CollectorRegistry
from service_helpers import T0, WINDOW, DetectorProcess, committed_offsets, wait_until, wave

from stream_detector.metrics import Metrics
from stream_detector.sink import RECORD_OVERHEAD, EventSink, fit

BIG = 1_100_000  # bytes: above librdkafka's default message.max.bytes (1,000,000)
# a producer that may write what the tests need (its own message.max.bytes raised)
BIG_PRODUCER = {"message.max.bytes": 4_000_000, "linger.ms": 5}


def test_fit_cuts_the_value_first_and_says_how_long_it_was():
    assert fit(b"k", b"v" * 10, 100) == (b"k", b"v" * 10, [])
    assert fit(None, None, 0) == (None, None, [])
    k, v, h = fit(b"key", b"v" * 1000, 100)
    assert k == b"key" and v == b"v" * 97 and h == [("truncated", b"1000")]
    k, v, h = fit(b"k" * 1000, b"v" * 1000, 100)  # both long: the key keeps half
    assert (k, v) == (b"k" * 50, b"v" * 50)
    assert h == [("truncated_key", b"1000"), ("truncated", b"1000")]
    k, v, h = fit(b"k" * 1000, b"v" * 10, 100)  # a long key, a short value: the value stays
    assert (k, v, h) == (b"k" * 90, b"v" * 10, [("truncated_key", b"1000")])
    assert fit(b"k", None, -5) == (b"", None, [("truncated_key", b"1")])


@pytest.mark.parametrize("max_bytes", [None, "1000", "300000"])
def test_a_dead_letter_too_large_for_the_producer_is_truncated_not_refused(
        broker_bootstrap, topic_factory, max_bytes):
    dlq = topic_factory(1)
    conf = {"bootstrap.servers": broker_bootstrap, "linger.ms": 5}
    if max_bytes:
        conf["message.max.bytes"] = max_bytes
    sink = EventSink(conf, topic_factory(1), dlq, Metrics.create(CollectorRegistry()))
    limit = int(max_bytes or 1_000_000)
    value, key = b"x" * BIG, b"k" * 5000
    sink.dead_letter(value, b"big", "oversize", "1100000 bytes > limit 65536", "src", 0, 7)
    sink.dead_letter(value, key, "oversize", "\ud800 a detail with a lone surrogate", "src", 0, 8)
    sink.dead_letter(None, b"tomb", "not_json", "empty message (tombstone)", "src", 0, 9)
    assert sink.flush(30)
    got = consume_all(broker_bootstrap, dlq, expected=3, timeout=30, idle=5)
    assert len(got) == 3
    first, second, third = got
    for d in got:
        assert len(d["raw"] or b"") + len(d["key"] or b"") <= limit - RECORD_OVERHEAD
    assert first["key"] == "big" and first["headers"]["truncated"] == str(BIG).encode()
    assert first["raw"] == value[:len(first["raw"])]
    assert len(first["raw"]) >= limit - RECORD_OVERHEAD - 200  # only the headers cost more
    assert "truncated_key" not in first["headers"]
    assert second["headers"]["detail"].startswith(b"\\ud800 a detail")
    assert second["headers"]["truncated"] == str(BIG).encode()
    if limit < 10_000:  # the key had to give way too
        assert second["headers"]["truncated_key"] == b"5000"
    else:
        assert second["key"] == key.decode() and "truncated_key" not in second["headers"]
    assert third["key"] == "tomb" and third["raw"] is None and "truncated" not in third["headers"]
    sink.close(5)


class _TopicLimit:
    """The sink's real producer, except that the broker refuses records over ``limit`` bytes
    as a topic with a lower max.message.bytes would (failure injection: the embedded
    broker does not enforce that setting). The refusal comes with the next poll/flush."""

    def __init__(self, producer: Producer, limit: int) -> None:
        self._p, self.limit, self.refused = producer, limit, 0
        self._pending: list = []

    def produce(self, topic, key=None, value=None, headers=None, on_delivery=None):
        if len(key or b"") + len(value or b"") > self.limit:
            self._pending.append(on_delivery)
            return
        self._p.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery)

    def _report(self) -> None:
        pending, self._pending = self._pending, []
        for cb in pending:
            self.refused += 1
            cb(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)

    def poll(self, timeout: float = 0) -> int:
        self._report()
        return self._p.poll(timeout)

    def flush(self, timeout: float = 30) -> int:
        self._report()
        return self._p.flush(timeout) + len(self._pending)

    def __getattr__(self, name: str):
        return getattr(self._p, name)


def test_a_dead_letter_the_broker_refuses_as_too_large_is_cut_further(
        broker_bootstrap, topic_factory):
    dlq = topic_factory(1)
    sink = EventSink({"bootstrap.servers": broker_bootstrap, "linger.ms": 5}, topic_factory(1),
                     dlq, Metrics.create(CollectorRegistry()))
    limit = 50_000
    sink._producer = fake = _TopicLimit(sink._producer, limit)
    sink.dead_letter(b"x" * BIG, b"big", "oversize", "too big", "src", 0, 7)
    mark = sink.mark()
    sink.dead_letter(b"small", b"small", "not_json", "not json", "src", 0, 8)
    sink.poll()  # the first refusal: a smaller copy is on its way
    assert not sink.delivered_through(mark), "a checkpoint waits for the smaller copy"
    assert sink.flush(30), "no DeliveryError: the broker's size limit is not fatal"
    assert sink.delivered_through(mark)
    assert fake.refused == 2  # ~1 MB, then ~125 kB, then ~15 kB is taken
    got = consume_all(broker_bootstrap, dlq, expected=2, timeout=30, idle=5)
    assert sorted(d["key"] for d in got) == ["big", "small"]
    big = next(d for d in got if d["key"] == "big")
    assert big["headers"]["truncated"] == str(BIG).encode() and len(big["raw"]) <= limit
    assert big["raw"] == b"x" * len(big["raw"]) and big["headers"]["source_offset"] == b"7"
    sink.close(5)


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None, int | None]]
             ) -> None:
    """(key, value, Kafka timestamp in ms or None) in order, as a producer would."""
    p = Producer({"bootstrap.servers": bootstrap, **BIG_PRODUCER})
    errors: list[str] = []

    def report(err, msg) -> None:
        if err is not None:
            errors.append(str(err))

    for key, value, ts_ms in records:
        kw = {"timestamp": ts_ms} if ts_ms is not None else {}
        p.produce(topic, value=value, key=key, on_delivery=report, **kw)
        p.poll(0)
    assert p.flush(60) == 0 and not errors, errors


def _poison() -> list[tuple[bytes | None, bytes | None, int | None, str]]:
    """(message key, value, Kafka timestamp ms, reason) of records that must be dead letters."""
    ts = T0 + 60 * 60
    doc = {"key": "big", "ts": ts, "value": 1.0, "pad": "x" * BIG}
    return [
        (b"p-oversize", orjson.dumps(doc), None, "oversize"),
        (b"k" * 700_000, b"y" * 700_000, None, "oversize"),  # key and value both cut
        (b"p-1e400", b'{"key":"p-1e400","ts":%d,"value":1e400}' % ts, None, "value_out_of_range"),
        (b"p-1e39", b'{"key":"p-1e39","ts":%d,"value":-1e39}' % ts, None, "value_out_of_range"),
        (b"p-int", b'{"key":"p-int","ts":%d,"value":%s}' % (ts, b"9" * 400), None,
         "value_out_of_range"),
        (b"p-ts-1e20", b'{"key":"p-ts-1e20","ts":1e20,"value":1.0}', None, "bad_timestamp"),
        (b"p-ts-neg", b'{"key":"p-ts-neg","ts":-9e10,"value":1.0}', None, "bad_timestamp"),
        (b"p-ts-int", b'{"key":"p-ts-int","ts":%s,"value":1.0}' % (b"9" * 400), None,
         "bad_timestamp"),
        (b"p-ts-99999", b'{"key":"p-ts-99999","ts":"99999-01-01T00:00:00Z","value":1.0}', None,
         "bad_timestamp"),
        (b"p-ts-10000", b'{"key":"p-ts-10000","ts":"9999-12-31T23:59:59-01:00","value":1.0}',
         None, "bad_timestamp"),
        (b"p-ts-1e300", b'{"key":"p-ts-1e300","ts":"1e300","value":1.0}', None, "bad_timestamp"),
        # no ts field: the Kafka timestamp counts, and a producer may set any
        (b"p-kafka-ts", b'{"key":"p-kafka-ts","value":1.0}', 9_000_000_000_000_000,
         "bad_timestamp"),
        (b"p-surrogate", b'{"key":"\\ud800","ts":%d,"value":1.0}' % ts, None, "bad_key"),
        (b"p-cesu", b'{"key":"\xed\xa0\x80","ts":%d,"value":1.0}' % ts, None, "bad_key"),
        (b"\xff\xfe-not-utf8", b'{"ts":%d,"value":1.0}' % ts, None, "bad_key"),
        (b"p-tombstone", None, None, "not_json"),
        (b"p-deep", b"[" * 20_000 + b"]" * 20_000, None, "not_json"),  # under 64 KiB
        (b"p-deep-obj", b'{"a":' * 3000 + b"1" + b"}" * 3000, None, "not_json"),
        (b"p-null", b"null", None, "not_object"),
    ]


def _raw_key(d: dict) -> bytes | None:
    k = d["key"]
    return k.encode() if isinstance(k, str) else k


def test_poison_records_mid_stream_are_dead_lettered_and_the_stream_goes_on(
        broker_bootstrap, topic_factory, group_id, model, tmp_path):
    src, out, dlq = topic_factory(1), topic_factory(1), topic_factory(1)
    n, half = 120, 60
    keys = ["a", "b"]
    series = {k: wave(n, seed=20 + i) for i, k in enumerate(keys)}
    series["huge"] = wave(n, seed=30)
    # a valid float32, far out of range: accepted, not refused; the windows that hold it
    # overflow the model's error and are counted, not decided (guards.py)
    series["huge"][half] = 1e30

    def points(lo: int, hi: int) -> list[tuple[bytes, bytes, None]]:
        return [(k.encode(), orjson.dumps({"key": k, "ts": T0 + 60 * i, "value": float(v[i])}),
                 None) for i in range(lo, hi) for k, v in series.items()]

    poison = _poison()
    records = points(0, half) + [(k, v, t) for k, v, t, _ in poison] + points(half, n)
    det = DetectorProcess(broker_bootstrap, src, out, group_id, model,
                          ["--dlq-topic", dlq, "--events", "windows"], log=tmp_path / "det.log")
    try:
        det.wait_ready()
        _produce(broker_bootstrap, src, records)
        det.wait_value("stream_detector_messages_consumed_total", len(records), timeout=120)
        expected = len(series) * (n - WINDOW + 1) - WINDOW  # the windows holding 1e30
        det.wait_value("stream_detector_windows_scored_total", expected)
        assert det.value("stream_detector_nonfinite_scores_total") == WINDOW
        # the offsets commit past every poison record
        wait_until(lambda: committed_offsets(broker_bootstrap, group_id, src, 1)[0]
                   == len(records), 30, "offsets committed to the end", det._tail)
        m = det.metrics()
        assert det.proc.poll() is None, "the detector is still running"
        dead = consume_all(broker_bootstrap, dlq, expected=len(poison), timeout=60, idle=5)
    finally:
        code, _ = det.terminate()
    assert code == 0, det._tail()
    assert m["stream_detector_windows_scored_total"] == expected
    want: dict[str, int] = {}
    for *_, reason in poison:
        want[reason] = want.get(reason, 0) + 1
    for reason, count in want.items():
        assert m[f'stream_detector_invalid_messages_total{{reason="{reason}"}}'] == count, reason
    assert len(dead) == len(poison), [_raw_key(d)[:20] for d in dead]
    src_offset = half * len(series)
    for i, (d, (key, value, _, reason)) in enumerate(zip(dead, poison)):
        h = d["headers"]
        assert h["reason"].decode() == reason, (key[:20], h)
        assert h["source_topic"].decode() == src and h["source_partition"] == b"0"
        assert int(h["source_offset"]) == src_offset + i
        assert h["detail"], key[:20]
        if "truncated_key" in h:
            assert int(h["truncated_key"]) == len(key)
            assert key.startswith(_raw_key(d))
        else:
            assert _raw_key(d) == key, "the dead letter keeps the original key"
        if "truncated" in h:
            assert int(h["truncated"]) == len(value)
            assert value.startswith(d["raw"]) and len(d["raw"]) < len(value)
        else:
            assert d["raw"] == value, "the dead letter keeps the original value"
    by_key = {_raw_key(d)[:20]: d for d in dead}
    assert int(by_key[b"p-oversize"]["headers"]["truncated"]) > BIG  # cut, labelled
    assert "truncated_key" in by_key[b"k" * 20]["headers"]
    assert "truncated" in by_key[b"k" * 20]["headers"]
