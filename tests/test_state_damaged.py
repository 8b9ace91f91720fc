"""One damaged record in the state changelog (issue #26): the restore runs on the loop
thread, so a record that cannot be decoded must be skipped and counted there, never crash
the detector (and with it every replica the partition moves to)."""

from __future__ import annotations

import threading
from typing import Any

from confluent_kafka import Producer
from kafka_helpers import consume_all, produce_json
from service_helpers import WINDOW, committed_offsets, run_config, stream, wait_until, wave

from stream_detector.artifact import load_artifact
from stream_detector.metrics import Metrics
from stream_detector.service import Detector
from stream_detector.state import decode
from stream_detector.testing import registry_value

N1 = WINDOW + 10  # points per key before the restart
N2 = WINDOW + 20  # and after it


def _run(det: Detector) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["code"] = det.run()
        except BaseException as exc:  # the test reports it
            result["error"] = exc
            raise

    loop = threading.Thread(target=target, daemon=True)
    loop.start()
    return loop, result


def _value(det: Detector, name: str, labels: dict[str, str] | None = None) -> float:
    return registry_value(det.metrics.registry, name, labels)


def test_a_damaged_state_record_is_skipped_counted_and_the_rest_restored(
        broker_bootstrap, topic_factory, group_id, model) -> None:
    src, out = topic_factory(1), topic_factory(1)
    keys = {k: wave(N1 + N2, seed=i) for i, k in enumerate("abc")}
    msgs = stream(keys)  # interleaved, in time order
    produce_json(broker_bootstrap, src, msgs[: 3 * N1])
    cfg = run_config(broker_bootstrap, src, out, group_id, model)
    assert cfg.changelog_topic
    art = load_artifact(model)

    first = Detector(cfg, art, Metrics.create())
    loop, result = _run(first)
    try:
        wait_until(lambda: committed_offsets(broker_bootstrap, group_id, src, 1)[0] == 3 * N1,
                   120, "the first run committed")
    finally:
        first.stop()
        loop.join(30)
    assert result.get("code") == 0, result

    # b's record as written (version 2), cut just after its header, as the latest of b
    written = {m["key"]: m["raw"] for m in consume_all(
        broker_bootstrap, cfg.changelog_topic, timeout=20, idle=2)
        if m["raw"] is not None and not m["key"].startswith("__stream_detector_marker__")}
    assert sorted(written) == ["a", "b", "c"], sorted(written)
    good = decode(written["b"], WINDOW, 1)
    assert good is not None and good.count == N1 and written["b"][1] == 2
    damaged = written["b"][:23]
    p = Producer({"bootstrap.servers": broker_bootstrap})
    p.produce(cfg.changelog_topic, key=b"b", value=damaged, partition=0)
    assert p.flush(15) == 0

    second = Detector(cfg, art, Metrics.create())
    loop, result = _run(second)
    try:
        produce_json(broker_bootstrap, src, msgs[3 * N1 :])
        # a and c restored full windows: each new point scores one; b starts empty
        expected = 2 * N2 + (N2 - WINDOW + 1)
        wait_until(lambda: _value(second, "stream_detector_windows_scored_total") >= expected
                   or not loop.is_alive(), 120, "every window scored",
                   lambda: f"{result}, scored {_value(second, 'stream_detector_windows_scored_total')}")
        assert loop.is_alive(), f"the detector stopped: {result}"
        wait_until(lambda: committed_offsets(broker_bootstrap, group_id, src, 1)[0]
                   == 3 * (N1 + N2), 60, "everything committed")
        assert second.ready()[0], second.ready()[1]
        assert _value(second, "stream_detector_windows_scored_total") == expected
        assert _value(second, "stream_detector_state_restored_keys_total") == 2
        assert _value(second, "stream_detector_state_records_skipped_total",
                      {"reason": "damaged"}) == 1
        assert _value(second, "stream_detector_state_records_skipped_total",
                      {"reason": "other_layout"}) == 0
        assert _value(second, "stream_detector_messages_skipped_total") == 0
        assert second.buffer.export("b")[1] == N2  # type: ignore[index]  # from empty
        assert second.buffer.export("a")[1] == N1 + N2  # type: ignore[index]
    finally:
        second.stop()
        loop.join(30)
    assert result.get("code") == 0, result
