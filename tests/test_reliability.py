"""Crashes, rebalances, network cuts, hostile input and hot model reloads (real broker)."""

from __future__ import annotations

import json
import random
import shutil
import threading
import time

import orjson
import pytest
from confluent_kafka import Producer
from kafka_helpers import produce_json
from service_helpers import (
    T0,
    WINDOW,
    DetectorProcess,
    committed_offsets,
    event_versions,
    events_of,
    run_reference,
    spiky_stream,
    stream,
    train_wave_model,
    wait_until,
    wave,
)
from tcp_proxy import TcpProxy

from stream_detector.kafka.admin import ensure_topics
from stream_detector.kafka.embedded import EmbeddedBroker, free_port
from stream_detector.kafka.produce import produce

pytestmark = pytest.mark.slow


def _produce_slowly(bootstrap: str, topic: str, msgs: list, per_second: float,
                    chunk: int = 50) -> threading.Thread:
    def run() -> None:
        for i in range(0, len(msgs), chunk):
            produce_json(bootstrap, topic, msgs[i:i + chunk])
            time.sleep(chunk / per_second)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _union(bootstrap: str, topic: str) -> tuple[dict[str, bytes], int]:
    """Distinct events by id (checking duplicates are byte-identical) and the duplicate count."""
    seen: dict[str, bytes] = {}
    dupes = 0
    for e in events_of(bootstrap, topic):
        eid = e["value"]["event_id"]
        if eid in seen:
            dupes += 1
            assert seen[eid] == e["raw"], "a redelivered event must be byte-identical"
        seen[eid] = e["raw"]
    return seen, dupes


def test_kill_9_at_random_points_loses_nothing(broker_bootstrap, topic_factory, group_id,
                                               eager_model, tmp_path):
    rng = random.Random(7)
    keys = [f"key-{i}" for i in range(6)]
    n = 700
    msgs = stream({k: wave(n, seed=40 + i) for i, k in enumerate(keys)})
    src, out = topic_factory(2), topic_factory(1)
    rate = 120.0  # slow enough that the stream outlasts three crash/restart rounds (~35 s)
    producer = _produce_slowly(broker_bootstrap, src, msgs, rate)
    kills = 0
    extra = ["--events", "windows", "--commit-interval-ms", "200"]
    for round_ in range(3):
        det = DetectorProcess(broker_bootstrap, src, out, group_id, eager_model, extra,
                              log=tmp_path / f"run{round_}.log")
        # mid-stream, unless a slow start let the stream end first
        wait_until(lambda det=det: det.value("stream_detector_windows_scored_total") >= 20
                   or not producer.is_alive(), 120, "the first windows", det._tail)
        time.sleep(rng.uniform(0.2, 2.0))
        det.kill()  # SIGKILL: no drain, no commit, no goodbye to the group
        kills += 1
    producer.join()
    last = DetectorProcess(broker_bootstrap, src, out, group_id, eager_model, extra,
                           log=tmp_path / "last.log")
    expected = len(keys) * (n - WINDOW + 1)
    reference = run_reference(broker_bootstrap, src, topic_factory(1), group_id + "-ref",
                              eager_model, expected, tmp_path, "ref")
    try:
        wait_until(lambda: set(reference) <= set(_union(broker_bootstrap, out)[0]), 120,
                   "every reference event", last._tail)
        restored = last.value("stream_detector_state_restored_keys_total")
    finally:
        last.terminate()
    got, dupes = _union(broker_bootstrap, out)
    assert set(got) == set(reference), "union of all runs = the uninterrupted run"
    assert all(got[i] == reference[i] for i in got)
    assert restored == len(keys), "the last run restored every key's window"
    # at least once: a kill can only repeat what was scored since the last checkpoint
    # (commit interval 200 ms at 120 msg/s is ~24 messages, plus one batch)
    print(f"\nkill -9 x{kills}: {len(got)} distinct events, {dupes} duplicates")
    assert dupes <= kills * (rate * 0.2 * 2 + 256)


def test_killed_replica_partitions_move_without_warm_up(broker_bootstrap, topic_factory,
                                                        group_id, eager_model, tmp_path):
    keys = [f"key-{i}" for i in range(12)]
    n = 300
    series = {k: wave(n, seed=60 + i) for i, k in enumerate(keys)}
    msgs = stream(series)
    src, out = topic_factory(6), topic_factory(1)
    extra = ["--events", "windows"]
    dets = [DetectorProcess(broker_bootstrap, src, out, group_id, eager_model, extra,
                            log=tmp_path / f"d{i}.log") for i in range(3)]
    try:
        wait_until(lambda: all(d.value("stream_detector_assigned_partitions") == 2
                               for d in dets), 60, "a 2/2/2 split")
        half = len(msgs) // 2
        produce_json(broker_bootstrap, src, msgs[:half])
        first_windows = len(keys) * (half // len(keys) - WINDOW + 1)
        wait_until(lambda: sum(d.value("stream_detector_windows_scored_total") for d in dets)
                   >= first_windows, 90, "first half scored")
        victim, survivors = dets[0], dets[1:]
        # the victim's state is in the changelog (on a loaded machine the kill could
        # otherwise come before its first checkpoint)
        wait_until(lambda: victim.value("stream_detector_state_records_written_total") > 0, 60,
                   "the victim's first state records")
        victim.kill()
        wait_until(lambda: sum(d.value("stream_detector_assigned_partitions")
                               for d in survivors) == 6, 60, "partitions moved")
        produce_json(broker_bootstrap, src, msgs[half:])
        expected = len(keys) * (n - WINDOW + 1)
        reference = run_reference(broker_bootstrap, src, topic_factory(1), group_id + "-ref",
                                  eager_model, expected, tmp_path, "ref")
        wait_until(lambda: set(reference) <= set(_union(broker_bootstrap, out)[0]), 90,
                   "every reference event")
        restored = sum(d.value("stream_detector_state_restored_keys_total") for d in survivors)
    finally:
        for d in dets:
            d.kill()
    got, _ = _union(broker_bootstrap, out)
    assert set(got) == set(reference), "moved series scored every window, no warm-up gap"
    assert restored >= 1, "the survivors restored the moved series' windows"


def test_connection_cut_makes_not_ready_then_recovers(group_id, eager_model, tmp_path):
    broker_port, proxy_port = free_port(), free_port()
    proxy = TcpProxy("127.0.0.1", broker_port, proxy_port)
    broker = EmbeddedBroker(port=broker_port, advertised_port=proxy_port,
                            log_path=tmp_path / "broker.log")
    broker.start()
    bs = broker.bootstrap_servers  # every client goes through the proxy
    det = None
    try:
        ensure_topics(bs, {"in": 2, "out": 1})
        keys = [f"key-{i}" for i in range(4)]
        n = 300
        msgs = stream({k: wave(n, seed=80 + i) for i, k in enumerate(keys)})
        half = len(msgs) // 2
        produce_json(bs, "in", msgs[:half])
        det = DetectorProcess(bs, "in", "out", group_id, eager_model, ["--events", "windows"],
                              log=tmp_path / "det.log")
        det.wait_value("stream_detector_windows_scored_total",
                       len(keys) * (half // len(keys) - WINDOW + 1))
        assert det.get("/readyz")[0] == 200
        # cut once the first half is committed: then no window may be scored twice
        wait_until(lambda: sum(committed_offsets(bs, group_id, "in", 2).values()) == half, 30,
                   "the first half committed", det._tail)
        proxy.cut()
        t_cut = time.monotonic()
        wait_until(lambda: det.get("/readyz")[0] == 503, 15, "not ready while cut", det._tail)
        while time.monotonic() - t_cut < 10:
            assert det.proc.poll() is None, "the detector must not crash"
            assert det.get("/healthz")[0] == 200, "the loop stays alive"
            time.sleep(0.5)
        proxy.restore()
        produce_json(bs, "in", msgs[half:], timeout=60)
        wait_until(lambda: det.get("/readyz")[0] == 200, 60, "ready again", det._tail)
        expected = len(keys) * (n - WINDOW + 1)
        det.wait_value("stream_detector_windows_scored_total", expected, timeout=90)
        assert det.value("stream_detector_windows_scored_total") == expected
        anomalies = int(det.value("stream_detector_anomalies_total"))
        wait_until(lambda: det.value('stream_detector_events_published_total{type="window"}')
                   >= anomalies, 60, "events delivered after the cut")
        got = {e["value"]["event_id"] for e in events_of(bs, "out")}
        assert len(got) == anomalies, "no event lost across the cut"
        code, _ = det.terminate()
        assert code == 0
    finally:
        if det is not None:
            det.kill()
        broker.stop()
        proxy.close()


def test_hot_reload_serves_a_new_model_and_refuses_a_broken_one(
        broker_bootstrap, topic_factory, group_id, model, tmp_path):
    live = tmp_path / "live"
    shutil.copytree(model, live)
    other = train_wave_model(tmp_path / "other", window=WINDOW, epochs=3)
    v1 = json.loads((live / "metadata.json").read_text())["version"]
    v2 = json.loads((other / "metadata.json").read_text())["version"]
    assert v1 != v2
    src, out = topic_factory(1), topic_factory(1)
    det = DetectorProcess(broker_bootstrap, src, out, group_id, live,
                          ["--events", "windows", "--model-poll-s", "0.5",
                           "--shadow-windows", "0"],  # served at once (test_shadow: shadow)
                          log=tmp_path / "det.log")
    msgs = spiky_stream()

    try:
        det.wait_ready()
        produce_json(broker_bootstrap, src, msgs[:200])
        wait_until(lambda: v1 in event_versions(broker_bootstrap, out), 60, "events from v1")
        # a new valid version: model first, metadata last (as train writes it)
        shutil.copy(other / "model.keras", live / "model.keras.tmp")
        (live / "model.keras.tmp").replace(live / "model.keras")
        shutil.copy(other / "metadata.json", live / "metadata.json")
        wait_until(lambda: det.value('stream_detector_model_reloads_total{result="loaded"}')
                   == 1, 30, "reload", det._tail)
        assert det.value(f'stream_detector_model_info{{model="conv1d",version="{v2}",'
                         f'window="{WINDOW}"}}') == 1
        produce_json(broker_bootstrap, src, msgs[200:400])
        wait_until(lambda: v2 in event_versions(broker_bootstrap, out), 60, "events from v2")
        # a broken one: truncated model file, metadata touched
        data = (live / "model.keras").read_bytes()
        (live / "model.keras").write_bytes(data[: len(data) // 3])
        (live / "metadata.json").write_text((live / "metadata.json").read_text())
        wait_until(lambda: det.value('stream_detector_model_reloads_total{result="refused"}')
                   >= 1, 30, "refusal", det._tail)
        produce_json(broker_bootstrap, src, msgs[400:])
        det.wait_value("stream_detector_windows_scored_total", 600 - WINDOW + 1)
        last = [e["value"] for e in events_of(broker_bootstrap, out)
                if e["value"]["source"]["offset"] >= 400]
        assert last and {e["model_version"] for e in last} == {v2}, "old model keeps serving"
        assert det.proc.poll() is None
    finally:
        det.terminate()


def test_cardinality_attack_keeps_rss_bounded(broker_bootstrap, topic_factory, group_id,
                                              model, tmp_path):
    src, out = topic_factory(2), topic_factory(1)
    n_keys, cap = 1_000_000, 20_000
    det = DetectorProcess(broker_bootstrap, src, out, group_id, model,
                          ["--max-series", str(cap)], log=tmp_path / "det.log")
    det.wait_ready()
    p = Producer({"bootstrap.servers": broker_bootstrap, "linger.ms": 50})

    samples = []
    try:
        for i in range(n_keys):
            key = f"attacker-{i}-{'x' * 40}"
            produce(p, src, key=key.encode(),
                    value=orjson.dumps({"key": key, "ts": T0 + i, "value": 1.0}))
            if i % 10_000 == 0:
                p.poll(0)
            if i in (200_000, 600_000):
                assert p.flush(60) == 0
                det.wait_value("stream_detector_messages_consumed_total", i, timeout=180)
                samples.append(det.rss_mb())
        assert p.flush(60) == 0
        det.wait_value("stream_detector_messages_consumed_total", n_keys, timeout=300)
        samples.append(det.rss_mb())
        m = det.metrics()
    finally:
        det.terminate()
    print(f"\nRSS after 200k / 600k / 1M distinct keys: {samples} MB")
    assert m["stream_detector_active_series"] == cap
    assert m['stream_detector_series_evicted_total{cause="max_series"}'] == n_keys - cap
    assert samples[-1] - samples[0] < 64, f"RSS grew {samples[-1] - samples[0]:.0f} MB"


def _with_default_decision(model, out):
    """Copy of ``model`` that decides with the default method (train's default)."""
    from stream_detector.decision import DEFAULT_DECISION, decision_spec

    shutil.copytree(model, out)
    meta = json.loads((out / "metadata.json").read_text())
    meta["decision"] = decision_spec(DEFAULT_DECISION)
    (out / "metadata.json").write_text(json.dumps(meta))
    return out


def test_kill_9_mid_incident_with_the_default_decision(broker_bootstrap, topic_factory,
                                                       group_id, model, tmp_path):
    """The default decision in incidents mode: three SIGKILLs (each restart a rebalance)
    while incidents are open give the events of an uninterrupted run: each incident opens
    once and closes once, with the same ids, scores and reasons."""
    m = _with_default_decision(model, tmp_path / "default-model")
    rng = random.Random(11)
    keys = [f"key-{i}" for i in range(4)]
    n = 1200  # at 100 msg/s the stream outlasts three crash/restart rounds (~48 s)
    series = {}
    for i, k in enumerate(keys):
        v = wave(n, seed=60 + i)
        for at in (300, 800):
            v[at + 20 * i : at + 3 + 20 * i] += 8.0  # a spike
            v[at + 180 + 10 * i : at + 240 + 10 * i] += 5.0  # a level never reached, a while
        series[k] = v
    msgs = stream(series)
    src, out = topic_factory(2), topic_factory(1)
    rate = 100.0
    extra = ["--events", "incidents", "--commit-interval-ms", "200"]
    producer = _produce_slowly(broker_bootstrap, src, msgs, rate)
    for round_ in range(3):
        det = DetectorProcess(broker_bootstrap, src, out, group_id, m, extra,
                              log=tmp_path / f"run{round_}.log")
        wait_until(lambda det=det: det.value("stream_detector_windows_scored_total") >= 20
                   or not producer.is_alive(), 120, "the first windows", det._tail)
        time.sleep(rng.uniform(1.0, 4.0))
        det.kill()
    producer.join()
    last = DetectorProcess(broker_bootstrap, src, out, group_id, m, extra,
                           log=tmp_path / "last.log")
    ref_out = topic_factory(1)
    ref = DetectorProcess(broker_bootstrap, src, ref_out, group_id + "-ref", m, extra,
                          log=tmp_path / "ref.log")
    expected = len(keys) * (n - WINDOW + 1)
    try:
        ref.wait_value("stream_detector_windows_scored_total", expected, timeout=180)
        wait_until(lambda: ref.value('stream_detector_events_published_total{type="closed"}')
                   >= ref.value('stream_detector_events_published_total{type="opened"}') > 0,
                   60, "the reference's incidents closed", ref._tail)
        reference = {e["value"]["event_id"]: e["raw"] for e in events_of(broker_bootstrap,
                                                                          ref_out)}
        wait_until(lambda: set(reference) <= set(_union(broker_bootstrap, out)[0]), 120,
                   "every reference event", last._tail)
    finally:
        last.terminate()
        ref.terminate()
    got, _ = _union(broker_bootstrap, out)
    assert set(got) == set(reference), "union of all runs = the uninterrupted run"
    assert all(got[i] == reference[i] for i in got)
    events = [json.loads(raw) for raw in got.values()]
    opened = [e["incident_id"] for e in events if e["type"] == "opened"]
    closed = [e["incident_id"] for e in events if e["type"] == "closed"]
    assert opened and len(opened) == len(set(opened)), "no incident opened twice"
    assert sorted(closed) == sorted(opened), "exactly one closed per incident"
    assert all(e["reason"] for e in events if e["type"] == "opened")
    print(f"\nkill -9 x3, default decision: {len(opened)} incidents, reasons "
          f"{sorted({'+'.join(e['reason']) for e in events if e['type'] == 'opened'})}")
