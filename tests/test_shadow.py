"""Safe promotion: a new model version is scored in shadow, never published, promoted warm
once it has seen enough windows per key (and, when asked, once a backtest gate passed);
every event carries the version that scored its window. The published events and the
subprocess run go through the embedded broker; the promotion-order and gate tests run in
process (what the detector would publish is recorded)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Message
from kafka_helpers import produce_json
from service_helpers import (
    T0,
    WINDOW,
    DetectorProcess,
    RecordingConsumer,
    events_of,
    model_variant,
    stream,
    wait_until,
    wave,
)

from stream_detector.artifact import load_artifact
from stream_detector.cli import build_parser
from stream_detector.config import COMMAND_OPTS, resolve
from stream_detector.decision import decision_spec
from stream_detector.metrics import Metrics
from stream_detector.service import Detector, ServiceConfig
from stream_detector.testing import registry_value

pytestmark = pytest.mark.slow


def _detector(bootstrap: str, model: Path, *extra: str) -> Detector:
    args = build_parser().parse_args([
        "run", "--bootstrap-servers", bootstrap, "--input-topic", "in", "--output-topic",
        "out", "--group-id", "g", "--model", str(model), "--state", "none",
        "--kafka", "log_level=0", *extra])
    det = Detector(ServiceConfig.from_options(resolve("run", COMMAND_OPTS["run"], args)),
                   load_artifact(model), Metrics.create())
    det.consumer.close()
    det.consumer = RecordingConsumer()  # type: ignore[assignment]
    return det


def _msgs(key: str, values: np.ndarray, offset: int = 0) -> list[Message]:
    return [Message(topic="in", partition=0, offset=offset + i, key=key.encode(),
                    value=orjson.dumps({"key": key, "ts": T0 + 60 * (offset + i),
                                        "value": float(v)}),
                    timestamp=(1, (T0 + offset + i) * 1000)) for i, v in enumerate(values)]


def _value(det: Detector, name: str, **labels: str) -> float:
    return registry_value(det.metrics.registry, name, labels)


def test_batches_in_flight_keep_the_version_that_scored_them(
        broker_bootstrap, topic_factory, model, tmp_path):
    """Two batches are still being scored by v1 when v2 takes over (``--shadow-windows 0``:
    at once); their events carry v1, the next batch's v2."""
    v1 = model_variant(model, tmp_path / "v1", "v1-flags-all", threshold=1e-12)
    v2 = model_variant(model, tmp_path / "v2", "v2-flags-all", threshold=1e-12)
    out = topic_factory(1)
    det = _detector(broker_bootstrap, v1, "--output-topic", out, "--events", "windows",
                    "--shadow-windows", "0", "--max-batch", "8", "--inference-workers", "2")
    release = threading.Event()
    scored: dict[str, int] = {"v1-flags-all": 0, "v2-flags-all": 0}

    def recording(art: Any, block: bool) -> None:
        real = art.model.explain_batch

        def score(x: np.ndarray) -> Any:
            if block:
                assert release.wait(30)
            scored[art.version] += len(x)
            return real(x)

        art.model.explain_batch = score

    recording(det.art, block=True)
    new = load_artifact(v2)
    recording(new, block=False)
    values = wave(WINDOW - 1 + 24, seed=5)
    msgs = _msgs("a", values)
    first = WINDOW - 1 + 16  # 16 windows: two full batches, both blocked inside v1
    det.handle_many(msgs[:first])
    assert len(det._inflight) == 2
    det.offer_model(new)
    det.handle_many(msgs[first:])  # the third batch: v2 serves it
    assert len(det._inflight) == 3 and det.art.version == "v2-flags-all"
    release.set()
    det.score_batch()
    assert det.sink.flush(10)
    assert scored == {"v1-flags-all": 16, "v2-flags-all": 8}
    events = [e["value"] for e in events_of(broker_bootstrap, out, expected=24)]
    assert len(events) == 24
    for ev in events:
        want = "v1-flags-all" if ev["source"]["offset"] < first else "v2-flags-all"
        assert ev["model_version"] == want, ev
    assert _value(det, "stream_detector_model_reloads_total", result="promoted") == 1
    det._close(1.0)


def test_the_promoted_decider_sees_every_window_once_in_order(model, tmp_path):
    """Promotion while a batch is in flight: that batch is published as the old version's
    and still decided by the shadow's decider, which serves from the next batch on."""
    v1 = model_variant(model, tmp_path / "v1", "v1-flags-all", threshold=1e-12)
    v2 = model_variant(model, tmp_path / "v2", "v2-flags-all", threshold=1e-12)
    det = _detector("127.0.0.1:9", v1, "--events", "windows", "--shadow-windows", "8",
                    "--max-batch", "8", "--inference-workers", "2")
    published: list[dict[str, Any]] = []
    det.sink.publish = lambda ev, ts: published.append(ev)  # type: ignore[method-assign]
    release, calls = threading.Event(), [0]
    real = det.art.model.explain_batch

    def score(x: np.ndarray) -> Any:
        calls[0] += 1
        if calls[0] == 2:  # the second batch stays in flight
            assert release.wait(30)
        return real(x)

    det.art.model.explain_batch = score  # type: ignore[method-assign]
    det.offer_model(load_artifact(v2))
    det.submit_batch()
    sh = det._shadow
    assert sh is not None
    seen: list[list[str]] = []
    decide = sh.decider.decide
    sh.decider.decide = lambda k, s, n=None: (seen.append(list(k)), decide(k, s, n))[1]
    msgs = _msgs("a", wave(WINDOW - 1 + 24, seed=6))
    det.handle_many(msgs[:WINDOW - 1 + 16])  # batches 1 and 2
    det._inflight[0].future.result(timeout=30)
    det.complete_ready()  # batch 1: the shadow has its 8 windows
    assert len(det._inflight) == 1 and sh.ready()
    det.handle_many(msgs[WINDOW - 1 + 16:])  # batch 3: promoted first, then submitted
    assert det.art.version == "v2-flags-all" and det.decider is sh.decider
    release.set()
    det.score_batch()
    assert sum(len(k) for k in seen) == 24, "batch 2 too, though the promotion came first"
    by_offset = {e["source"]["offset"]: e["model_version"] for e in published}
    first3 = WINDOW - 1 + 16
    assert len(by_offset) == 24
    assert all(v == ("v1-flags-all" if o < first3 else "v2-flags-all")
               for o, v in by_offset.items()), by_offset


def test_a_new_version_shadows_unpublished_then_is_promoted_warm(
        broker_bootstrap, topic_factory, group_id, model, tmp_path):
    """v1 serves; the candidate (a POT decider whose static rule never flags: blind until
    its statistics are warm) goes into shadow, is counted, publishes nothing (not even the
    dip it flags in shadow, once its range check is warm), and is promoted after 60
    windows; it then flags a spike 30 points after promotion, which a decider started at
    promotion could not (50 windows of warm-up)."""
    live = tmp_path / "live"
    shutil.copytree(model, live)
    v1 = json.loads((live / "metadata.json").read_text())["version"]
    cand = model_variant(model, tmp_path / "cand", "cand-pot", threshold=1e9,
                         decision=decision_spec("pot", {"warmup": 50}),
                         created_at="2026-06-01T00:00:00+00:00")
    src, out = topic_factory(1), topic_factory(1)
    det = DetectorProcess(broker_bootstrap, src, out, group_id, live,
                          ["--events", "windows", "--model-poll-s", "0.3",
                           "--shadow-windows", "60"], log=tmp_path / "det.log")
    values = wave(340, seed=7)
    values[100] += 15.0  # v1 flags this one
    values[252] -= 15.0  # in shadow, after its warm-up: the candidate flags it (range)
    values[290] += 15.0  # after promotion
    msgs = stream({"k": values})
    scored = "stream_detector_windows_scored_total"

    def info(version: str) -> str:
        return f'stream_detector_model_info{{model="conv1d",version="{version}",window="{WINDOW}"}}'

    def published() -> list[dict]:
        return [e["value"] for e in events_of(broker_bootstrap, out)]

    try:
        det.wait_ready()
        produce_json(broker_bootstrap, src, msgs[:200])
        det.wait_value(scored, 200 - WINDOW + 1)
        wait_until(lambda: any(e["model_version"] == v1 for e in published()), 30,
                   "events from v1")
        # the new version: metadata.json replaced last (the weights are the same file)
        (live / "metadata.json.tmp").write_text((cand / "metadata.json").read_text())
        (live / "metadata.json.tmp").replace(live / "metadata.json")
        det.wait_value('stream_detector_model_reloads_total{result="loaded"}', 1, timeout=60)
        assert det.value('stream_detector_shadow_info{model="conv1d",version="cand-pot"}') == 1
        assert det.value(info(v1)) == 1

        produce_json(broker_bootstrap, src, msgs[200:240])  # 40 windows: not enough
        det.wait_value("stream_detector_shadow_windows_total", 40)
        m = det.metrics()
        assert m['stream_detector_model_reloads_total{result="promoted"}'] == 0
        assert m["stream_detector_shadow_keys_ready_ratio"] == 0
        assert m[info(v1)] == 1
        assert all(e["model_version"] == v1 for e in published()), "a shadow never publishes"

        produce_json(broker_bootstrap, src, msgs[240:256])  # 56 windows: still not enough
        det.wait_value("stream_detector_shadow_windows_total", 56)
        det.wait_value("stream_detector_shadow_anomalies_total", 1)  # the dip at 252
        wait_until(lambda: any(e["source"]["offset"] >= 252 for e in published()), 30,
                   "v1's events for the dip at 252")
        assert det.value('stream_detector_model_reloads_total{result="promoted"}') == 0
        assert all(e["model_version"] == v1 for e in published()), "a shadow never publishes"

        produce_json(broker_bootstrap, src, msgs[256:280])
        det.wait_value('stream_detector_model_reloads_total{result="promoted"}', 1, timeout=30)
        m = det.metrics()
        assert m[info("cand-pot")] == 1 and info(v1) not in m
        assert 'stream_detector_shadow_info{model="conv1d",version="cand-pot"}' not in m
        assert m["stream_detector_model_created_timestamp_seconds"] == 1_780_272_000.0
        assert m["stream_detector_shadow_windows_total"] >= 60
        both = (m['stream_detector_shadow_decisions_total{agreement="agree"}']
                + m['stream_detector_shadow_decisions_total{agreement="disagree"}'])
        assert both >= 60 and 0 <= m["stream_detector_shadow_agreement_ratio"] <= 1

        produce_json(broker_bootstrap, src, msgs[280:])
        det.wait_value(scored, 340 - WINDOW + 1)
        wait_until(lambda: any(e["model_version"] == "cand-pot" for e in published()), 30,
                   "events from the promoted version", det._tail)
        events = published()
        by_v1 = [e["source"]["offset"] for e in events if e["model_version"] == v1]
        by_cand = [e["source"]["offset"] for e in events if e["model_version"] == "cand-pot"]
        assert set(by_v1) | set(by_cand) == {e["source"]["offset"] for e in events}
        # the shadow's first window ends at 200 (all before were scored by then): its
        # 60th at 259, so nothing before 260 can be the candidate's
        assert max(by_v1) < min(by_cand) and min(by_cand) >= 260, (by_v1, by_cand)
        # warm: the spike at 290 flagged at once (a cold decider decides by the static
        # rule, threshold 1e9, and has no range check, until its 50th window)
        assert any(290 <= o < 290 + 10 for o in by_cand), by_cand
        assert det.proc.poll() is None
    finally:
        det.terminate()


def test_the_backtest_gate_refuses_a_worse_candidate_and_promotes_a_good_one(model, tmp_path):
    data = tmp_path / "gate.csv"
    values = wave(300, seed=9)
    values[150] += 12.0
    data.write_text("timestamp,key,value,label\n" + "".join(
        f"{T0 + 60 * i},a,{float(v):.5f},{int(i == 150)}\n" for i, v in enumerate(values)))
    det = _detector("127.0.0.1:9", model, "--events", "windows", "--shadow-windows", "0",
                    "--promotion-gate", "backtest", "--gate-input", str(data))
    published: list[dict[str, Any]] = []
    det.sink.publish = lambda ev, ts: published.append(ev)  # type: ignore[method-assign]
    serving = det.art.version

    blind = load_artifact(model_variant(model, tmp_path / "blind", "blind", threshold=1e9))
    det.offer_model(blind)
    det.submit_batch()  # taken into the shadow; the gate runs on a thread of its own
    sh = det._shadow
    assert sh is not None and sh.gated
    wait_until(lambda: sh.gate_passed is not None, 120, "the gate's verdict")
    assert det._reload_due()
    det.submit_batch()
    assert det._shadow is None and det.art.version == serving
    assert _value(det, "stream_detector_model_reloads_total", result="refused") == 1
    assert _value(det, "stream_detector_model_reloads_total", result="promoted") == 0

    good = load_artifact(model_variant(model, tmp_path / "good", "good"))
    det.offer_model(good)
    det.submit_batch()
    sh = det._shadow
    assert sh is not None
    wait_until(lambda: sh.gate_passed is not None, 120, "the gate's verdict")
    assert sh.gate_passed, sh.gate_detail
    det.handle_many(_msgs("a", values[120:200], offset=120))  # the spike at 150
    det.score_batch()  # promoted first (between batches), then this batch is its
    assert det.art.version == "good"
    assert _value(det, "stream_detector_model_reloads_total", result="promoted") == 1
    assert published and {e["model_version"] for e in published} == {"good"}


def test_a_gate_without_data_is_a_usage_error(model, capsys):
    from stream_detector.cli import main

    code = main(["run", "--bootstrap-servers", "127.0.0.1:9", "--input-topic", "in",
                 "--output-topic", "out", "--model", str(model), "--promotion-gate",
                 "backtest"])
    assert code == 2 and "--gate-input" in capsys.readouterr().err
