"""End to end, as a producer would: hypothesis writes arbitrary records (any bytes, any JSON
shape, numbers and timestamps beyond float or datetime range, odd strings, nulls, oversize
values) among valid series into one running ``run`` on the embedded broker. After each
batch: the process is alive, every record is consumed, each one the decoder refuses is a
dead letter under its key (and only those), and every window of the valid series is
scored exactly once."""

from __future__ import annotations

import json
import time

import orjson
from confluent_kafka import Producer
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from kafka_helpers import consume_all
from service_helpers import T0, WINDOW, DetectorProcess, wait_until, wave
from strategies import lenient_messages, messages

from stream_detector.errors import InvalidRecord
from stream_detector.service.config import ServiceConfig
from stream_detector.source import Decoder

VALID_POINTS = WINDOW + 8  # per example, one new valid series: 9 windows
BIG = 1_100_000  # above librdkafka's default message.max.bytes


def _dumps(doc: object) -> bytes:
    try:
        return orjson.dumps(doc)
    except TypeError:  # integers beyond 64 bits: Python's json writes them
        return json.dumps(doc).encode()


extremes = st.sampled_from([
    b"", b"null", b"[]", b"{}", b"\xff\xfe", b'{"value":1e400}', b'{"key":"\\ud800","value":1}',
    b"[" * 5000 + b"]" * 5000, b'{"value":' + b"9" * 500 + b"}",
    b'{"key":"x","ts":"99999-01-01T00:00:00Z","value":1}',
    b'{"key":"y","value":1,"pad":"' + b"x" * 70_000 + b'"}',  # over --max-message-bytes
    b'{"key":"z","value":1,"pad":"' + b"x" * BIG + b'"}',  # over the producer's own limit
])
values = st.one_of(st.binary(max_size=200), messages.map(_dumps), lenient_messages, st.none(),
                   extremes)
keys = st.one_of(st.none(), st.binary(max_size=12), st.text(max_size=12).map(str.encode),
                 st.just(b"k" * 300_000))
records = st.lists(st.tuples(keys, values), min_size=1, max_size=8)


def _produce(bootstrap: str, topic: str, batch: list[tuple[bytes | None, bytes | None]]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 4_000_000,
                  "linger.ms": 5})
    errors: list[str] = []
    for key, value in batch:
        p.produce(topic, value=value, key=key,
                  on_delivery=lambda err, _m: errors.append(str(err)) if err else None)
        p.poll(0)
    assert p.flush(60) == 0 and not errors, errors


def test_arbitrary_records_among_valid_ones_never_stop_run(
        broker_bootstrap, topic_factory, group_id, model, tmp_path):
    src, out, dlq = topic_factory(1), topic_factory(1), topic_factory(1)
    decoder = Decoder(1, max_bytes=ServiceConfig.max_message_bytes)
    det = DetectorProcess(broker_bootstrap, src, out, group_id, model,
                          ["--dlq-topic", dlq, "--events", "windows"], log=tmp_path / "det.log")
    sent: list[tuple[bytes | None, bytes | None]] = []  # everything written, in offset order
    refused: dict[int, str] = {}  # offset -> the decoder's reason
    points: dict[str, int] = {}  # accepted points of keys other than the valid series
    windows = [0]  # windows the valid series must have scored so far
    examples = [0]

    @settings(max_examples=12, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],  # no shrinking against a live process
              suppress_health_check=list(HealthCheck))
    @given(records, st.randoms(use_true_random=False))
    def one_batch(poison: list[tuple[bytes | None, bytes | None]], rnd) -> None:
        now = time.time()
        verdicts: list[str | None] = []
        new_points: dict[str, int] = {}
        for key, value in poison:
            try:
                r = decoder.decode(value, key, now)
            except InvalidRecord as exc:
                verdicts.append(exc.reason)
                continue
            verdicts.append(None)
            new_points[r.key] = new_points.get(r.key, 0) + 1
        # accepted ones must not complete a window or join a valid series (exact counts)
        assume(all(not k.startswith("valid-") and points.get(k, 0) + n < WINDOW
                   for k, n in new_points.items()))
        for k, n in new_points.items():
            points[k] = points.get(k, 0) + n
        examples[0] += 1
        key = f"valid-{examples[0]}"
        series = wave(VALID_POINTS, seed=examples[0])
        valid = [(key.encode(), orjson.dumps({"key": key, "ts": T0 + 60 * i,
                                              "value": float(series[i])}))
                 for i in range(VALID_POINTS)]
        batch: list[tuple[bytes | None, bytes | None]] = list(valid)
        tags: list[str | None] = [None] * len(valid)
        for rec, verdict in zip(poison, verdicts):
            at = rnd.randint(0, len(batch))
            batch.insert(at, rec)
            tags.insert(at, verdict)
        for i, verdict in enumerate(tags):
            if verdict is not None:
                refused[len(sent) + i] = verdict
        sent.extend(batch)
        windows[0] += VALID_POINTS - WINDOW + 1
        _produce(broker_bootstrap, src, batch)
        det.wait_value("stream_detector_messages_consumed_total", len(sent), timeout=60)
        det.wait_value("stream_detector_windows_scored_total", windows[0], timeout=60)
        assert det.proc.poll() is None, det._tail()
        invalid = sum(v for k, v in det.metrics().items()
                      if k.startswith("stream_detector_invalid_messages_total{"))
        assert invalid == len(refused), (invalid, len(refused), det._tail())

    try:
        det.wait_ready()
        one_batch()
        time.sleep(1.0)  # nothing more may come: each window once
        m = det.metrics()
        assert m["stream_detector_windows_scored_total"] == windows[0]
        assert m["stream_detector_messages_consumed_total"] == len(sent)
        dead = consume_all(broker_bootstrap, dlq, expected=len(refused), timeout=60, idle=5)
        wait_until(lambda: det.value("stream_detector_messages_consumed_total") == len(sent), 5,
                   "no message consumed twice")
    finally:
        code, _ = det.terminate()
    assert code == 0, det._tail()
    assert examples[0] >= 5, "enough batches ran"
    by_offset = {int(d["headers"]["source_offset"]): d for d in dead}
    assert sorted(by_offset) == sorted(refused), "dead letters are exactly the refused records"
    for off, reason in refused.items():
        d, (key, value) = by_offset[off], sent[off]
        assert d["headers"]["reason"].decode() == reason, (off, d["headers"])
        got_key = d["key"].encode() if isinstance(d["key"], str) else d["key"]
        if "truncated_key" in d["headers"]:
            assert (key or b"").startswith(got_key or b"")
        else:
            assert got_key == key, "the dead letter is under the record's own key"
        if "truncated" in d["headers"]:
            assert (value or b"").startswith(d["raw"] or b"")
        else:
            assert d["raw"] == value
