"""What happens to a key inside one detector: eviction and revocation close its incident,
a non-finite score never reaches a decision, a key that moves partition keeps being
scored. In process, without a broker: the detector's producer never connects; what it
would publish is recorded (failure injection on the sink only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Message, TopicPartition
from service_helpers import T0, WINDOW, RecordingConsumer, wave, with_threshold

from stream_detector.artifact import load_artifact
from stream_detector.cli import build_parser
from stream_detector.config import COMMAND_OPTS, resolve
from stream_detector.guards import finite_rows
from stream_detector.metrics import Metrics
from stream_detector.service import Detector, ServiceConfig
from stream_detector.state import decode as decode_state
from stream_detector.testing import registry_value


@pytest.fixture(scope="module")
def flagging_model(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every window is anomalous: an incident opens at a key's first window."""
    return with_threshold(model, tmp_path_factory.mktemp("flag") / "m", 1e-12)


def _detector(model: Path, *extra: str) -> tuple[Detector, list[dict[str, Any]]]:
    args = build_parser().parse_args([
        "run", "--bootstrap-servers", "127.0.0.1:9", "--input-topic", "in",
        "--output-topic", "out", "--group-id", "g", "--model", str(model),
        "--kafka", "log_level=0", *extra])
    det = Detector(ServiceConfig.from_options(resolve("run", COMMAND_OPTS["run"], args)),
                   load_artifact(model), Metrics.create())
    events: list[dict[str, Any]] = []
    det.sink.publish = lambda ev, ts: events.append(ev)  # type: ignore[method-assign]
    det.sink.flush = lambda *a, **k: True  # type: ignore[method-assign]
    det.consumer.close()
    det.consumer = RecordingConsumer()  # type: ignore[assignment]
    return det, events


def _msgs(key: str, values: np.ndarray, partition: int = 0, offset: int = 0,
          start: int = 0) -> list[Message]:
    return [Message(topic="in", partition=partition, offset=offset + i, key=key.encode(),
                    value=orjson.dumps({"key": key, "ts": T0 + 60 * (start + i),
                                        "value": float(v)}),
                    timestamp=(1, (T0 + i) * 1000)) for i, v in enumerate(values)]


def _value(det: Detector, name: str, **labels: str) -> float:
    return registry_value(det.metrics.registry, name, labels)


def test_an_evicted_key_s_open_incident_is_closed(flagging_model: Path) -> None:
    det, events = _detector(flagging_model, "--max-series", "2")
    det.handle_many(_msgs("a", wave(WINDOW + 3, seed=1)))
    det.score_batch()
    assert [e["type"] for e in events] == ["opened"]
    det.handle_many(_msgs("b", wave(2, seed=2), offset=100))
    det.handle_many(_msgs("c", wave(2, seed=3), offset=200))  # a is the least recent: out
    det.score_batch()
    closed = [e for e in events if e["type"] == "closed"]
    assert len(closed) == 1, events
    ev = closed[0]
    assert ev["key"] == "a" and ev["incident_id"] == events[0]["incident_id"]
    assert ev["closed_by"] == "max_series" and ev["reason"] == []
    assert ev["windows"] == 4 and ev["source"]["offset"] == WINDOW + 2
    assert _value(det, "stream_detector_series_evicted_total", cause="max_series") == 1


def test_an_idle_key_s_open_incident_is_closed(flagging_model: Path) -> None:
    det, events = _detector(flagging_model, "--idle-ttl-s", "5")
    det.handle_many(_msgs("a", wave(WINDOW, seed=1)), now=100.0)
    det.score_batch()
    det.buffer.evict_idle(5.0, now=200.0)
    assert [(e["type"], e.get("closed_by")) for e in events] == [("opened", None),
                                                                 ("closed", "idle")]


def test_revocation_closes_incidents_without_a_changelog_and_hands_them_on_with_one(
        flagging_model: Path) -> None:
    det, events = _detector(flagging_model, "--state", "none")
    det.parts.assign({("in", 0), ("in", 1)}, restoring=False)
    det.handle_many(_msgs("a", wave(WINDOW, seed=1), partition=0)
                    + _msgs("b", wave(WINDOW, seed=2), partition=1))
    det._on_revoke(det.consumer, [TopicPartition("in", 0)])
    assert sorted((e["key"], e["type"]) for e in events) == [("a", "closed"), ("a", "opened"),
                                                             ("b", "opened")]
    assert next(e for e in events if e["type"] == "closed")["closed_by"] == "revoked"
    assert det.tracker.is_open("b")

    det, events = _detector(flagging_model)  # the changelog: the state carries it on
    written: list[tuple[int, str, bytes | None]] = []
    det._write_records = written.extend  # type: ignore[method-assign]
    det._state_partitions = 2
    det.parts.assign({("in", 0)}, restoring=False)
    det.handle_many(_msgs("a", wave(WINDOW, seed=1), partition=0))
    det._on_revoke(det.consumer, [TopicPartition("in", 0)])
    assert [e["type"] for e in events] == ["opened"], "handed on, not closed"
    from stream_detector.state import decode
    (tag, key, raw), = written
    state = decode(raw, det.art.window, det.art.n_features)
    assert key == "a" and state is not None and state.incident is not None
    assert state.incident[0] == events[0]["incident_id"]


def test_non_finite_scores_are_counted_and_never_decided(model: Path) -> None:
    """A float32 value such as 3e38 on a series around 10 passes the decoder, but its
    windows' reconstruction error is inf."""
    det, events = _detector(model, "--decision", "pot")
    decided: list[np.ndarray] = []
    real = det.decider.decide

    def spy(keys: Any, scores: np.ndarray, newest: Any = None) -> Any:
        decided.append(np.array(scores))
        return real(keys, scores, newest)

    det.decider.decide = spy  # type: ignore[method-assign]
    v = wave(3 * WINDOW, seed=4).astype(np.float64)
    v[2 * WINDOW] = 3e38
    det.handle_many(_msgs("a", v))
    det.score_batch()
    assert _value(det, "stream_detector_nonfinite_scores_total") == WINDOW
    assert _value(det, "stream_detector_windows_scored_total") == 2 * WINDOW + 1 - WINDOW
    assert decided and all(np.isfinite(s).all() for s in decided)
    assert all(np.isfinite(e["score"]) for e in events)
    assert _value(det, "stream_detector_reconstruction_error_sum") < float("inf")


def test_finite_rows() -> None:
    assert finite_rows(np.array([1.0, 2.0])) is None
    assert finite_rows(np.array([1.0, np.inf, np.nan, 3.0], np.float32)).tolist() == [0, 3]


def test_a_key_moved_to_a_new_partition_keeps_being_scored(model: Path) -> None:
    det, _ = _detector(model)  # the changelog on: redeliveries are skipped by offset
    v = wave(2 * WINDOW, seed=5)
    det.handle_many(_msgs("a", v[:WINDOW], partition=0, offset=5000))
    det.score_batch()
    assert _value(det, "stream_detector_windows_scored_total") == 1
    # partitions were added: the key's next points come in partition 3, offsets from 0
    det.handle_many(_msgs("a", v[WINDOW:], partition=3, offset=0, start=WINDOW))
    det.score_batch()
    assert _value(det, "stream_detector_messages_skipped_total") == 0
    assert _value(det, "stream_detector_windows_scored_total") == 1 + WINDOW
    # its state moves with it: a tombstone in the old partition's changelog, then its
    # state in the new one's (a restore of partition 0 must not bring the old one back)
    det._state_partitions = 4  # as if the changelog had been created (no broker here)
    records = [(p, key, raw is None) for p, key, raw in det._mark(None).records]
    assert records == [(0, "a", True), (3, "a", False)], records


def test_a_key_evicted_and_back_before_the_checkpoint_keeps_its_state(model: Path) -> None:
    det, _ = _detector(model, "--max-series", "1")
    det._state_partitions = 1  # as if the changelog had been created (no broker here)
    v = wave(WINDOW, seed=6)
    det.handle_many(_msgs("a", v[:10]))
    det.handle_many(_msgs("b", v[:10], offset=10))  # evicts a: its state is to be deleted
    det.handle_many(_msgs("a", v[10:20], offset=20, start=10))  # a is back (evicts b)
    det.score_batch()
    ck = det._mark(None)
    last: dict[tuple[int, str], bytes | None] = {}
    for p, key, raw in ck.records:  # in the order they are produced
        last[(p, key)] = raw
    assert last[(0, "b")] is None, "b's state is deleted"
    assert last[(0, "a")] is not None, "a's live state is written after its tombstone"
    restored = decode_state(last[(0, "a")], WINDOW, 1)
    assert restored is not None and restored.count == 10 and restored.last_offset == 29


def test_a_restore_skips_and_counts_the_records_it_cannot_use(model: Path) -> None:
    """Damaged, another layout, refused decision state: each counted by reason; the
    other keys of the partition are restored and score their next point."""
    from stream_detector.state import KeyState, encode

    det, _ = _detector(model, "--decision", "pot")  # a method with per-key state
    det._state_partitions = 1
    v = wave(WINDOW, seed=7)

    def record(decision: bytes | None = None, window: int = WINDOW) -> bytes:
        return encode(KeyState(WINDOW, WINDOW - 1, v.reshape(-1, 1).astype(np.float32),
                               T0 + 60.0 * np.arange(WINDOW), None, decision), window)

    good = record()
    det._apply_state({0: {"a": good, "cut": good[:23], "garbage": good[:23] + b"\xff" * 40,
                          "other": record(window=WINDOW + 1), "foreign": b"\0" * 64,
                          "decision": record(decision=b"not a decider's state")}})
    skipped = "stream_detector_state_records_skipped_total"
    assert _value(det, skipped, reason="damaged") == 2
    assert _value(det, skipped, reason="other_layout") == 2
    assert _value(det, skipped, reason="decision_state") == 1
    assert _value(det, "stream_detector_state_restored_keys_total") == 2  # a, decision
    assert "cut" not in det.buffer and "other" not in det.buffer
    det.handle_many(_msgs("a", wave(1, seed=8), offset=WINDOW, start=WINDOW))
    det.score_batch()
    assert _value(det, "stream_detector_windows_scored_total") == 1


@pytest.mark.parametrize("submitted", [False, True])
def test_windows_of_a_lost_partition_are_dropped_with_it(flagging_model: Path,
                                                          submitted: bool) -> None:
    """Issue #26, item 7: windows of a lost partition still batched or in flight when it
    is lost are never decided: no incident opens for a key this replica no longer holds
    (nothing would ever close it), no decider state comes back for it; the windows of the
    partitions it keeps are decided as usual."""
    det, events = _detector(flagging_model)
    decided: list[str] = []
    real = det.decider.decide

    def spy(keys: Any, scores: np.ndarray, newest: Any = None) -> Any:
        decided.extend(keys)  # what gets decided gets decider state (per-key methods)
        return real(keys, scores, newest)

    det.decider.decide = spy  # type: ignore[method-assign]
    det.parts.assign({("in", 0), ("in", 1)}, restoring=False)
    det.handle_many(_msgs("a", wave(WINDOW, seed=1), partition=0)
                    + _msgs("b", wave(WINDOW, seed=2), partition=1))
    if submitted:
        det.submit_batch()
        assert det._inflight and not len(det.batcher)
    else:
        assert len(det.batcher) == 2 and not det._inflight
    det._on_lost(det.consumer, [TopicPartition("in", 0)])
    det.score_batch()
    assert [(e["key"], e["type"]) for e in events] == [("b", "opened")], events
    assert not det.tracker.is_open("a") and det.tracker.is_open("b")
    assert decided == ["b"], decided
    assert "a" not in det.buffer
    assert _value(det, "stream_detector_windows_scored_total") == 1
