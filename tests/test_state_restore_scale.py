"""Restore at scale (issue #26, item 4): the deadline is one of progress, not a total; a
failed attempt resumes where it stopped and leaves no marker behind; no more keys than
``--max-series`` are held or loaded, and those beyond it keep their state."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from kafka_helpers import consume_all
from service_helpers import T0, WINDOW, run_config, wait_until, wave

import stream_detector.state as state_mod
from stream_detector.artifact import load_artifact
from stream_detector.kafka.admin import ensure_changelog
from stream_detector.metrics import Metrics
from stream_detector.service import Detector
from stream_detector.service.restoring import Job, Restorer
from stream_detector.state import MARKER_PREFIX, KeyState, PartitionRestore, StateStore, encode
from stream_detector.testing import registry_value


def _fill(bootstrap: str, topic: str, n: int, keys: int) -> None:
    ensure_changelog(bootstrap, topic, 1)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(n):
        p.produce(topic, key=b"k%d" % (i % keys), value=b"v%d" % i, partition=0)
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(30) == 0


def _store(bootstrap: str, topic: str) -> StateStore:
    conf = {"bootstrap.servers": bootstrap}
    return StateStore(topic, Producer(conf), conf, conf)


def test_a_restore_slower_than_its_timeout_finishes_while_it_progresses(
        broker_bootstrap, topic_factory):
    topic = topic_factory(1, prefix="state")
    _fill(broker_bootstrap, topic, 20_000, 500)
    slept = [0.0]

    def slow(p: int) -> bool:  # a slow reader: about 4 s in all, never 1 s at once
        if slept[0] < 4.0:
            time.sleep(0.25)
            slept[0] += 0.25
        return True

    t0 = time.monotonic()
    got = _store(broker_bootstrap, topic).restore([0], timeout=1.0, wants=slow)
    took = time.monotonic() - t0
    assert took > 2.0, f"{took:.1f} s: too fast to tell"
    assert len(got[0]) == 500
    assert got[0]["k7"] == b"v%d" % (19_500 + 7), "the latest record of each key"


def test_a_failed_restore_resumes_where_it_stopped_and_leaves_no_marker(
        broker_bootstrap, topic_factory, monkeypatch):
    topic = topic_factory(1, prefix="state")
    _fill(broker_bootstrap, topic, 5_000, 100)
    store = _store(broker_bootstrap, topic)
    full = store.restore([0])[0]
    progress: dict[int, PartitionRestore] = {}
    calls = [0]

    def fail_midway(p: int) -> bool:
        calls[0] += 1
        if calls[0] > 1 and progress[0].offset > 0:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "cut (injected)"))
        return True

    with pytest.raises(KafkaException):
        store.restore([0], progress=progress, wants=fail_midway)
    stopped_at = progress[0].offset
    assert stopped_at > 0
    assigned: list[int] = []

    class Recording(Consumer):  # type: ignore[misc]
        def assign(self, partitions: Any) -> None:
            assigned.extend(tp.offset for tp in partitions)
            super().assign(partitions)

    monkeypatch.setattr(state_mod, "Consumer", Recording)
    again = store.restore([0], progress=progress)[0]
    assert assigned == [stopped_at], "resumed where the failed attempt stopped, not at 0"
    assert again == full
    assert list(again) == list(full), "least recently written first"
    # every marker written (the failed attempt's too) has its tombstone: compaction
    # removes them all
    last: dict[str, bytes | None] = {}
    for e in consume_all(broker_bootstrap, topic, idle=3):
        if str(e["key"]).startswith(MARKER_PREFIX.decode()):
            last[e["key"]] = e["raw"]
    assert len(last) == 3 and all(v is None for v in last.values()), last


def test_the_restorer_resumes_a_failed_job_of_the_same_assignment_only():
    seen: list[dict[int, int]] = []

    def fetch(job: Job) -> int:
        seen.append({p: pr.offset for p, pr in job.progress.items()})
        job.progress[0] = PartitionRestore(offset=123)
        raise TimeoutError("no progress (injected)")

    r = Restorer(fetch)
    try:
        r.start({("in", 0): 1})
        wait_until(lambda: not any(not j.future.done() for j in r._jobs.values()), 10, "job")
        assert [tps for tps, _ in r.finished()] == [{("in", 0)}]
        r.start({("in", 0): 1})  # a retry of the same assignment: resumed
        wait_until(lambda: not any(not j.future.done() for j in r._jobs.values()), 10, "job")
        r.finished()
        r.start({("in", 0): 2})  # assigned again since: from the start
        wait_until(lambda: not any(not j.future.done() for j in r._jobs.values()), 10, "job")
        assert seen == [{}, {0: 123}, {}]
    finally:
        r.close()


def _record(i: int) -> bytes:
    values = wave(WINDOW, seed=i % 5).reshape(-1, 1).astype(np.float32)
    return encode(KeyState(WINDOW, 1000 + i, values, T0 + 60.0 * np.arange(WINDOW)), WINDOW)


def test_a_restore_beyond_max_series_loads_the_newest_and_deletes_nothing(
        broker_bootstrap, topic_factory, group_id, model):
    src, out = topic_factory(1), topic_factory(1)
    cfg = run_config(broker_bootstrap, src, out, group_id, model, "--max-series", "20")
    assert cfg.changelog_topic
    ensure_changelog(broker_bootstrap, cfg.changelog_topic, 1)
    p = Producer({"bootstrap.servers": broker_bootstrap, "linger.ms": 5})
    for i in range(50):
        p.produce(cfg.changelog_topic, key=b"k%d" % i, value=_record(i), partition=0)
    assert p.flush(30) == 0
    det = Detector(cfg, load_artifact(model), Metrics.create())
    loop = threading.Thread(target=det.run, daemon=True)
    loop.start()
    try:
        wait_until(lambda: det.ready()[0], 60, "restored and ready")
        time.sleep(1.0)  # a few checkpoints
        held = {k for k in (f"k{i}" for i in range(50)) if k in det.buffer}
    finally:
        det.stop()
        loop.join(30)

    def value(name: str, **labels: str) -> float:
        return registry_value(det.metrics.registry, name, labels)

    assert value("stream_detector_state_restored_keys_total") == 20
    assert held == {f"k{i}" for i in range(30, 50)}, "the 20 most recently written"
    assert value("stream_detector_series_evicted_total", cause="max_series") == 0
    assert value("stream_detector_state_records_skipped_total", reason="max_series") == 30
    deleted = [e["key"] for e in consume_all(broker_bootstrap, cfg.changelog_topic, idle=3)
               if e["raw"] is None and not str(e["key"]).startswith(MARKER_PREFIX.decode())]
    assert not deleted, f"state deleted by the restore: {deleted[:5]}"
