"""The streaming detector end to end, against the real embedded broker.

Every test runs ``stream-detector run`` as a subprocess, produces real input messages and
reads the output and dead-letter topics and the detector's own ``/metrics``.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer
from kafka_helpers import consume_all, produce_json
from service_helpers import (
    T0,
    WINDOW,
    DetectorProcess,
    committed_offsets,
    events_of,
    run_reference,
    stream,
    wait_until,
    wave,
)

from stream_detector.kafka.produce import produce
from stream_detector.metrics import INVALID_REASONS

pytestmark = pytest.mark.slow

CONTRACT_METRICS = (
    "stream_detector_messages_consumed_total", "stream_detector_invalid_messages_total",
    "stream_detector_windows_scored_total", "stream_detector_anomalies_total",
    "stream_detector_reconstruction_error", "stream_detector_inference_batch_size",
    "stream_detector_inference_seconds", "stream_detector_event_latency_seconds",
    "stream_detector_active_series", "stream_detector_consumer_lag",
    "stream_detector_model_info",
)


def test_end_to_end_spikes_make_one_incident_each(broker_bootstrap, topic_factory, group_id,
                                                  model, tmp_path):
    n = 400
    spikes = {"spiky-a": 150, "spiky-b": 220, "spiky-c": 300, "spiky-d": 330}
    series = {k: wave(n, seed=i) for i, k in enumerate([*spikes, "clean-a", "clean-b"])}
    for k, pos in spikes.items():
        series[k][pos] += 12.0
    src, out, dlq = topic_factory(3), topic_factory(1), topic_factory(1)
    det = DetectorProcess(broker_bootstrap, src, out, group_id, model,
                          ["--dlq-topic", dlq], log=tmp_path / "det.log")
    try:
        # /readyz is not ready before the group assigned partitions, then it is
        wait_until(lambda: det.get("/healthz")[0] == 200, 60, "healthz", det._tail)
        det.wait_ready()
        produce_json(broker_bootstrap, src, stream(series))
        expected_windows = len(series) * (n - WINDOW + 1)
        det.wait_value("stream_detector_windows_scored_total", expected_windows)
        # the lag gauge appears with librdkafka's first statistics report (its value is
        # not checked: the embedded broker's watermarks are wrong after batched produce)
        wait_until(lambda: any(k.startswith("stream_detector_consumer_lag{")
                               for k in det.metrics()), 15, "consumer lag", det._tail)
        metrics = det.metrics()
        assert metrics["stream_detector_windows_scored_total"] == expected_windows  # once each
        assert metrics["stream_detector_messages_consumed_total"] == len(series) * n
        for name in CONTRACT_METRICS:
            assert any(k.startswith(name) for k in metrics), f"{name} not exported"
        assert metrics["stream_detector_active_series"] == len(series)
        events = [e["value"] for e in events_of(broker_bootstrap, out, expected=2 * len(spikes))]
    finally:
        code, took = det.terminate()
    assert code == 0 and took < 10
    by_key: dict[str, list[dict]] = {}
    for e in events:
        by_key.setdefault(e["key"], []).append(e)
    assert set(by_key) == set(spikes), f"events for {sorted(by_key)}"
    at_spike = 0
    for key, pos in spikes.items():
        kinds = [e["type"] for e in by_key[key]]
        assert kinds == ["opened", "closed"], f"{key}: {kinds} (one spike, one incident)"
        opened, closed = by_key[key]
        assert opened["incident_id"] == closed["incident_id"]
        spike_ts, last_ts = T0 + 60 * pos, T0 + 60 * (pos + WINDOW - 1)
        for field in ("window_end",):
            t = _epoch(opened[field])
            assert spike_ts <= t <= last_ts, f"{key} opened at {opened[field]}"
        assert spike_ts <= _epoch(closed["started"]) <= _epoch(closed["ended"]) <= last_ts
        assert closed["windows"] >= 1 and closed["peak_score"] >= opened["threshold"]
        assert 0.5 < opened["anomaly_score"] <= 1.0
        assert opened["model"] == "conv1d" and opened["model_version"]
        assert opened["source"]["topic"] == src
        # what the model expected, in the input's units, beside what came, and where the
        # error sits: the window that opens the incident ends at the spike, so its newest
        # point carries the largest share of the error
        if _epoch(opened["window_end"]) == spike_ts:
            at_spike += 1
            assert opened["actual"] == {"value": pytest.approx(series[key][pos], rel=1e-6)}
            # (this conv1d's global pool carries the spike into its whole reconstruction,
            # so its expected value is not asserted here: tests/test_explain.py does at
            # train's default model)
            assert np.isfinite(opened["expected"]["value"])
            assert opened["attribution"]["steps"][0]["back"] == 0  # the largest share
        assert opened["attribution"]["features"] == [{"name": "value", "share": 1.0}]
        assert 1 <= len(opened["attribution"]["steps"]) <= 3
        assert set(closed["expected"]) == {"value"}
    assert at_spike >= 3, "most spikes open their incident at the spike itself"


def _epoch(iso: str) -> float:
    from stream_detector.datasets import parse_timestamp

    return parse_timestamp(iso)


def test_bad_input_goes_to_the_dlq_and_the_stream_goes_on(broker_bootstrap, topic_factory,
                                                          group_id, model, tmp_path):
    src, out, dlq = topic_factory(1), topic_factory(1), topic_factory(1)
    good = wave(80, seed=5)
    bad = {
        "not_json": b"this is not json",
        "not_object": b"[1, 2, 3]",
        "missing_value": orjson.dumps({"key": "k", "ts": T0 + 60 * 40}),
        "non_numeric": orjson.dumps({"key": "k", "ts": T0 + 60 * 40, "value": "high"}),
        "non_finite": b'{"key": "k", "ts": 1767228000, "value": NaN}',
        "feature_count": orjson.dumps({"key": "k", "ts": T0 + 60 * 40, "values": [1.0, 2.0]}),
        "oversize": orjson.dumps({"key": "k", "ts": T0 + 60 * 40, "value": 1.0,
                                  "pad": "x" * 5000}),
        "bad_timestamp": orjson.dumps({"key": "k", "ts": "yesterday", "value": 1.0}),
        "timestamp_backwards": orjson.dumps({"key": "k", "ts": T0, "value": 1.0}),
        "missing_key": orjson.dumps({"ts": T0 + 60 * 40, "value": 1.0}),
        "value_out_of_range": b'{"key": "k", "ts": 1767228000, "value": 1e39}',
        "bad_key": b'{"key": "\\ud800", "ts": 1767228000, "value": 1.0}',
    }
    assert set(bad) == set(INVALID_REASONS)
    msgs: list[tuple[str | None, object]] = [("k", {"key": "k", "ts": T0 + 60 * i,
                                                    "value": float(good[i])}) for i in range(40)]
    msgs += [("k" if r != "missing_key" else None, v) for r, v in bad.items()]
    msgs += [("k", {"key": "k", "ts": T0 + 60 * i, "value": float(good[i])})
             for i in range(40, 80)]
    produce_json(broker_bootstrap, src, msgs)
    # (a timestamp going back is bad input only when asked for: by default it is used)
    det = DetectorProcess(broker_bootstrap, src, out, group_id, model,
                          ["--dlq-topic", dlq, "--max-message-bytes", "2048",
                           "--timestamp-policy", "dlq"],
                          log=tmp_path / "det.log")
    try:
        det.wait_value("stream_detector_messages_consumed_total", len(msgs))
        det.wait_value("stream_detector_windows_scored_total", 80 - WINDOW + 1)
        metrics = det.metrics()
        for reason in INVALID_REASONS:
            assert metrics[f'stream_detector_invalid_messages_total{{reason="{reason}"}}'] == 1
        assert metrics["stream_detector_windows_scored_total"] == 80 - WINDOW + 1
        dead = consume_all(broker_bootstrap, dlq, expected=len(bad), timeout=20, idle=3)
    finally:
        code, _ = det.terminate()
    assert code == 0
    assert sorted(d["headers"]["reason"].decode() for d in dead) == sorted(bad)
    for d in dead:
        h = {k: v.decode() for k, v in d["headers"].items()}
        assert h["source_topic"] == src and h["source_partition"] == "0"
        assert 40 <= int(h["source_offset"]) < 40 + len(bad)
        assert d["raw"] == bad[h["reason"]], "the DLQ keeps the original bytes"


def test_a_step_back_in_time_or_a_far_future_point_never_blinds_a_key(
        broker_bootstrap, topic_factory, group_id, eager_model, tmp_path):
    """One key steps back an hour (a daylight-saving change), one has a single far-future
    point. By default every point is scored in offset order, none goes to the DLQ; with
    ``--timestamp-policy dlq`` only the point that goes back is a dead letter, and every
    later point is scored. Events name the times of their windows' first and last points."""
    n, at = 200, 100
    keys = ["dst", "future", "clean"]
    series = {k: wave(n, seed=40 + i) for i, k in enumerate(keys)}
    ts = {k: [T0 + 60 * i for i in range(n)] for k in keys}
    ts["dst"] = [t - (3600 if i >= at else 0) for i, t in enumerate(ts["dst"])]
    future = T0 + 10**9  # 2057
    ts["future"][at] = future
    msgs = [(k, {"key": k, "ts": ts[k][i], "value": float(series[k][i])})
            for i in range(n) for k in keys]
    src = topic_factory(1)
    reports = produce_json(broker_bootstrap, src, msgs)
    offset_of = {(k, i): reports[i * len(keys) + j][1] for i in range(n)
                 for j, k in enumerate(keys)}
    # refused by dlq: the dst point at the step, and the point after the far-future one
    refused = {offset_of[("dst", at)], offset_of[("future", at + 1)]}
    runs = {}
    for policy in ("accept", "dlq"):
        out, dlq = topic_factory(1), topic_factory(1)
        extra = ["--dlq-topic", dlq, "--events", "windows"]
        if policy != "accept":
            extra += ["--timestamp-policy", policy]
        runs[policy] = (DetectorProcess(broker_bootstrap, src, out, f"{group_id}-{policy}",
                                        eager_model, extra, log=tmp_path / f"{policy}.log"),
                        out, dlq)
    anomalies = {}
    try:
        for policy, (det, _, _) in runs.items():
            expected = len(keys) * (n - WINDOW + 1) - (0 if policy == "accept" else 2)
            det.wait_value("stream_detector_messages_consumed_total", len(msgs))
            det.wait_value("stream_detector_windows_scored_total", expected)
            m = det.metrics()
            assert m["stream_detector_windows_scored_total"] == expected, policy
            assert m[f'stream_detector_timestamps_backwards_total{{action="{policy}"}}'] == 2
            assert m['stream_detector_invalid_messages_total{reason="timestamp_backwards"}'] \
                == (0 if policy == "accept" else 2)
            anomalies[policy] = int(m["stream_detector_anomalies_total"])
            wait_until(lambda d=det, p=policy: d.value(
                'stream_detector_events_published_total{type="window"}') >= anomalies[p],
                30, "events delivered", det._tail)
    finally:
        for det, _, _ in runs.values():
            code, _ = det.terminate()
            assert code == 0, det._tail()
    for policy, (_, out, dlq) in runs.items():
        dead = consume_all(broker_bootstrap, dlq, timeout=10, idle=3)
        if policy == "accept":
            assert dead == []
        else:
            assert {int(d["headers"]["source_offset"]) for d in dead} == refused
            assert len(dead) == 2
            assert {d["headers"]["reason"] for d in dead} == {b"timestamp_backwards"}
        # each event's window: its points in offset order, the refused ones left out
        used = {k: [i for i in range(n) if policy == "accept" or offset_of[(k, i)] not in refused]
                for k in keys}
        at_offset = {offset_of[(k, i)]: (k, pos) for k in keys for pos, i in enumerate(used[k])}
        events = [e["value"] for e in events_of(broker_bootstrap, out, anomalies[policy])]
        assert len(events) == anomalies[policy] > 50
        for e in events:
            key, pos = at_offset[e["source"]["offset"]]
            assert key == e["key"] and pos >= WINDOW - 1
            first, last = ts[key][used[key][pos - WINDOW + 1]], ts[key][used[key][pos]]
            assert _epoch(e["window_end"]) == last
            # a far-future time is held to float32 precision (the others exactly)
            tol = 64.0 if first == future else 0.0
            assert abs(_epoch(e["window_start"]) - first) <= tol, (policy, e)
        late = [e for e in events if e["key"] in ("dst", "future")
                and e["source"]["offset"] > offset_of[("dst", at + WINDOW)]]
        assert {e["key"] for e in late} == {"dst", "future"}, "scored after the step"


@pytest.mark.parametrize("state", ["changelog", "none"])
def test_sigterm_then_restart_resumes_at_the_committed_offset(
        broker_bootstrap, topic_factory, group_id, eager_model, tmp_path, state):
    n, keys = 500, [f"key-{i}" for i in range(6)]
    series = {k: wave(n, seed=10 + i) for i, k in enumerate(keys)}
    msgs = stream(series)
    src, out = topic_factory(2), topic_factory(1)
    expected = len(keys) * (n - WINDOW + 1)
    first = DetectorProcess(broker_bootstrap, src, out, group_id, eager_model,
                            ["--events", "windows", "--max-batch-latency-ms", "20",
                             "--state", state], log=tmp_path / "first.log")
    head = 1200
    reports = produce_json(broker_bootstrap, src, msgs[:head])
    first.wait_value("stream_detector_windows_scored_total", len(keys) * (head // 6 - WINDOW + 1))

    def produce_tail() -> None:  # the stream goes on while the detector is stopped
        for i in range(head, len(msgs), 100):
            reports.extend(produce_json(broker_bootstrap, src, msgs[i:i + 100]))
            time.sleep(0.1)

    producer = threading.Thread(target=produce_tail)
    producer.start()
    time.sleep(0.8)
    code, took = first.terminate()
    producer.join()
    assert code == 0, first._tail()
    assert took < 10, f"drain took {took:.1f} s"
    committed = committed_offsets(broker_bootstrap, group_id, src, 2)
    assert head <= sum(committed.values()) < len(msgs), f"stopped mid-stream: {committed}"

    second = DetectorProcess(broker_bootstrap, src, out, group_id, eager_model,
                             ["--events", "windows", "--state", state],
                             log=tmp_path / "second.log")
    # Without state, keys go blind for one window after a restart: the first WINDOW-1
    # messages of each key after the committed offset complete no window. With the state
    # changelog the restored windows score the very next message: no gap at all.
    warmup: set[tuple[int, int]] = set()
    seen: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    for (key, _), (part, off) in zip(msgs, reports):
        if off >= committed[part]:
            seen[key] = seen.get(key, 0) + 1
            if seen[key] < WINDOW and state == "none":
                warmup.add((part, off))
        else:
            first_seen[key] = first_seen.get(key, 0) + 1
    if state == "none":
        expected_scored = sum(max(0, c - WINDOW + 1) for c in seen.values())
    else:
        expected_scored = sum(c - max(0, WINDOW - 1 - first_seen.get(k, 0))
                              for k, c in seen.items())
    try:
        rest = len(msgs) - sum(committed.values())
        second.wait_value("stream_detector_messages_consumed_total", rest)
        second.wait_value("stream_detector_windows_scored_total", expected_scored)
        time.sleep(1.0)  # nothing more may arrive
        assert second.value("stream_detector_messages_consumed_total") == rest, "resumed exactly"
        assert second.value("stream_detector_windows_scored_total") == expected_scored
        anomalies = int(second.value("stream_detector_anomalies_total"))
        wait_until(lambda: second.value('stream_detector_events_published_total{type="window"}')
                   >= anomalies, 30, "events delivered")
    finally:
        second.terminate()
    reference = run_reference(broker_bootstrap, src, topic_factory(1), group_id + "-ref",
                               eager_model, expected, tmp_path, "ref")
    assert len(reference) > 100

    expected_ids = {eid for eid, raw in reference.items()
                    if (json.loads(raw)["source"]["partition"],
                        json.loads(raw)["source"]["offset"]) not in warmup}
    got = {e["value"]["event_id"]: e["raw"] for e in events_of(broker_bootstrap, out)}
    assert set(got) == expected_ids, (
        f"missing {len(expected_ids - set(got))}, extra {len(set(got) - expected_ids)}")
    assert all(got[i] == reference[i] for i in got), "redelivered events are byte-identical"


def test_two_detectors_in_one_group_split_the_partitions(broker_bootstrap, topic_factory,
                                                         group_id, eager_model, tmp_path):
    n, keys = 300, [f"key-{i}" for i in range(8)]
    series = {k: wave(n, seed=30 + i) for i, k in enumerate(keys)}
    src, out = topic_factory(4), topic_factory(1)
    pair = [DetectorProcess(broker_bootstrap, src, out, group_id, eager_model,
                            ["--events", "windows"], log=tmp_path / f"d{i}.log") for i in (0, 1)]
    try:
        for d in pair:
            d.wait_ready()
        wait_until(lambda: all(d.value("stream_detector_assigned_partitions") == 2
                               for d in pair), 30, "a 2/2 split")
        produce_json(broker_bootstrap, src, stream(series))
        expected = len(keys) * (n - WINDOW + 1)
        wait_until(lambda: sum(d.value("stream_detector_windows_scored_total") for d in pair)
                   >= expected, 90, "all windows scored")
        assert all(d.value("stream_detector_windows_scored_total") > 0 for d in pair)
        assert sum(d.value("stream_detector_windows_scored_total") for d in pair) == expected
        anomalies = sum(int(d.value("stream_detector_anomalies_total")) for d in pair)
    finally:
        for d in pair:
            d.terminate()
    got = {e["value"]["event_id"]: e["raw"] for e in events_of(broker_bootstrap, out, anomalies)}
    reference = run_reference(broker_bootstrap, src, topic_factory(1), group_id + "-ref",
                               eager_model, expected, tmp_path, "ref")
    assert got == reference


def test_max_series_bounds_memory(broker_bootstrap, topic_factory, group_id, model, tmp_path):
    src, out = topic_factory(2), topic_factory(1)
    n_keys, cap = 200_000, 1000
    p = Producer({"bootstrap.servers": broker_bootstrap, "linger.ms": 50})
    for i in range(n_keys):
        key = f"host-{i}.cpu"
        produce(p, src, key=key.encode(),
                value=orjson.dumps({"key": key, "ts": T0 + i, "value": 0.5}))
        if i % 5000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    det = DetectorProcess(broker_bootstrap, src, out, group_id, model,
                          ["--max-series", str(cap)], log=tmp_path / "det.log")
    try:
        det.wait_value("stream_detector_messages_consumed_total", n_keys, timeout=180)
        m = det.metrics()
        assert m["stream_detector_active_series"] == cap
        assert m['stream_detector_series_evicted_total{cause="max_series"}'] == n_keys - cap
    finally:
        det.terminate()


def test_fine_tuning_runs_in_the_service_and_spikes_still_open_incidents(
        broker_bootstrap, topic_factory, group_id, model, tmp_path):
    n = 400
    spikes = {"spiky-a": 250, "spiky-b": 330}
    series = {k: wave(n, seed=i) for i, k in enumerate([*spikes, "clean-a", "clean-b"])}
    for k, pos in spikes.items():
        series[k][pos] += 12.0
    src, out = topic_factory(2), topic_factory(1)
    det = DetectorProcess(broker_bootstrap, src, out, group_id, model,
                          ["--fine-tune-every", "128", "--fine-tune-param", "steps=2",
                           "--fine-tune-param", "guard=1"],
                          log=tmp_path / "det.log")
    try:
        det.wait_ready()
        produce_json(broker_bootstrap, src, stream(series))
        expected_windows = len(series) * (n - WINDOW + 1)
        det.wait_value("stream_detector_windows_scored_total", expected_windows)
        metrics = det.metrics()
        events = [e["value"] for e in events_of(broker_bootstrap, out, expected=2 * len(spikes))]
    finally:
        code, _ = det.terminate()
    assert code == 0
    learnt = metrics['stream_detector_fine_tune_windows_total{result="learnt"}']
    refused = metrics['stream_detector_fine_tune_windows_total{result="refused"}']
    assert learnt + refused == expected_windows and learnt > 0.5 * expected_windows
    assert refused >= len(spikes)  # the spikes' windows were kept out of the model
    assert metrics["stream_detector_fine_tune_rounds_total"] >= expected_windows // 128 - 2
    opened = sorted(e["key"] for e in events if e["type"] == "opened")
    assert opened == sorted(spikes), f"incidents opened for {opened}"
