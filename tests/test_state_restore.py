"""A restore runs beside the loop, not inside the rebalance callback: while a large
changelog is read, the loop keeps polling (heartbeats, ``max.poll.interval.ms``, the
liveness probe), and the partition is consumed only once its state is back."""

from __future__ import annotations

import threading
import time

from confluent_kafka import Producer
from kafka_helpers import produce_json
from service_helpers import T0, committed_offsets, run_config, wait_until, wave

from stream_detector.artifact import load_artifact
from stream_detector.kafka.admin import ensure_changelog
from stream_detector.metrics import Metrics
from stream_detector.service import Detector

N_STATE = 300_000  # changelog records to read back (foreign layout: read, then skipped)


def _fill_changelog(bootstrap: str, topic: str, n: int) -> None:
    ensure_changelog(bootstrap, topic, 1)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50,
                  "batch.num.messages": 10000, "queue.buffering.max.messages": 200000})
    value = b"\0" * 64
    for i in range(n):
        while True:
            try:
                p.produce(topic, key=b"k%d" % (i % 5000), value=value, partition=0)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(60) == 0


def test_a_long_restore_keeps_the_loop_alive(broker_bootstrap, topic_factory, group_id, model):
    src, out = topic_factory(1), topic_factory(1)
    values = wave(40, seed=2)
    produce_json(broker_bootstrap, src, [("a", {"key": "a", "ts": T0 + 60 * i,
                                                "value": float(values[i])}) for i in range(40)])
    cfg = run_config(broker_bootstrap, src, out, group_id, model)
    assert cfg.changelog_topic
    _fill_changelog(broker_bootstrap, cfg.changelog_topic, N_STATE)
    det = Detector(cfg, load_artifact(model), Metrics.create())
    loop = threading.Thread(target=det.run, daemon=True)
    loop.start()
    try:
        wait_until(lambda: det._assigned, 60, "an assignment")
        t_assigned = time.monotonic()
        stale = 0.0  # the oldest the loop's heartbeat got while the restore ran
        not_ready = []
        while det._restorer.pending and time.monotonic() - t_assigned < 120:
            stale = max(stale, time.monotonic() - det._heartbeat)
            ok, why = det.ready()
            if not ok:
                not_ready.append(why)
            time.sleep(0.02)
        restore_s = time.monotonic() - t_assigned
        assert not det._restorer.pending, "the restore finished"
        assert restore_s > 1.0, f"restore took {restore_s:.2f} s: too short to tell"
        assert stale < min(0.5, restore_s / 3), (
            f"the loop stood still for {stale:.2f} s of a {restore_s:.2f} s restore")
        assert any("restoring the state" in w for w in not_ready), not_ready[:3]
        # consumed only after the restore, and to the end
        wait_until(lambda: committed_offsets(broker_bootstrap, group_id, src, 1)[0] == 40,
                   60, "input consumed after the restore")
        assert det.ready()[0], det.ready()[1]
    finally:
        det.stop()
        loop.join(30)
