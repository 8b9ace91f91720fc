"""A restore runs beside the loop, not inside the rebalance callback: while a large
changelog is read, the loop keeps polling (heartbeats, ``max.poll.interval.ms``, the
liveness probe), and the partition is consumed only once its state is back."""

from __future__ import annotations

import threading
import time

import numpy as np
from confluent_kafka import Producer
from kafka_helpers import consume_all, produce_json
from service_helpers import T0, WINDOW, committed_offsets, run_config, wait_until, wave

from stream_detector.artifact import load_artifact
from stream_detector.kafka.admin import ensure_changelog
from stream_detector.metrics import Metrics
from stream_detector.service import Detector
from stream_detector.state import KeyState, encode
from stream_detector.testing import registry_value

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
        wait_until(lambda: det.parts.assigned, 60, "an assignment")
        t_assigned = time.monotonic()
        stale = 0.0  # the oldest the loop's heartbeat got while the restore ran
        not_ready = []
        consumed_while_restoring = 0.0
        while det._restorer.pending and time.monotonic() - t_assigned < 120:
            consumed = _sample(det, "stream_detector_messages_consumed_total")
            if det._restorer.pending:  # read before the restore was applied
                consumed_while_restoring = max(consumed_while_restoring, consumed)
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
        # paused while restoring: a point consumed before its key's state is back would
        # start the key afresh (issue #26: this test passed with the pause deleted)
        assert consumed_while_restoring == 0, "input consumed before its state was restored"
        # consumed only after the restore, and to the end
        wait_until(lambda: committed_offsets(broker_bootstrap, group_id, src, 1)[0] == 40,
                   60, "input consumed after the restore")
        assert det.ready()[0], det.ready()[1]
    finally:
        det.stop()
        loop.join(30)


N_PARTS, PER_PART = 8, 250  # 2,000 keys over 8 partitions, as the outside check


def _state(i: int) -> bytes:
    """The changelog record of a key with a full window and an open incident."""
    values = wave(WINDOW, seed=i % 5).reshape(-1, 1).astype(np.float32)
    ts = T0 + 60.0 * np.arange(WINDOW)
    incident = (f"{i + 1:016x}", float(ts[-4]), float(ts[-1]), 9.0, 4, 0)
    return encode(KeyState(WINDOW, 1000 + i, values, ts, incident), WINDOW)


def _fill_keys(bootstrap: str, topic: str) -> dict[str, int]:
    """Valid state for PER_PART keys in each of N_PARTS changelog partitions."""
    ensure_changelog(bootstrap, topic, N_PARTS)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    keys = {}
    for part in range(N_PARTS):
        for i in range(PER_PART):
            key = f"p{part}-k{i}"
            keys[key] = part
            p.produce(topic, key=key.encode(), value=_state(part * PER_PART + i),
                      partition=part)
        p.poll(0)
    assert p.flush(30) == 0
    return keys


def _sample(det: Detector, name: str, **labels: str) -> float:
    return registry_value(det.metrics.registry, name, labels)


def test_a_rebalance_during_a_restore_applies_only_the_partitions_kept(
        broker_bootstrap, topic_factory, group_id, model):
    """Issue #26, item 1: a second replica joins while the first restores all 8
    partitions; the first applies only the partitions it keeps. Before the fix it applied
    the ones it had given away too: ghost keys, later evicted here (``--idle-ttl-s 1``)
    with ``closed`` events for incidents the new owner still has open and tombstones that
    delete the new owner's state."""
    src, out = topic_factory(N_PARTS), topic_factory(1)
    cfg_a = run_config(broker_bootstrap, src, out, group_id, model, "--idle-ttl-s", "1")
    cfg_b = run_config(broker_bootstrap, src, out, group_id, model)
    assert cfg_a.changelog_topic and cfg_a.changelog_topic == cfg_b.changelog_topic
    keys = _fill_keys(broker_bootstrap, cfg_a.changelog_topic)
    art = load_artifact(model)
    a = Detector(cfg_a, art, Metrics.create())
    b = Detector(cfg_b, art, Metrics.create())
    # a long restore: A's read of the changelog ends only once A has given partitions
    # away to B (the records of all 8 partitions are in hand by then)
    gave_away = threading.Event()
    real_restore, real_revoke = a.state.restore, a._on_revoke  # type: ignore[union-attr]

    def slow_restore(*args, **kw):
        got = real_restore(*args, **kw)
        gave_away.wait(90)
        return got

    def on_revoke(consumer, partitions):
        real_revoke(consumer, partitions)
        if partitions:
            gave_away.set()

    a.state.restore = slow_restore  # type: ignore[union-attr,method-assign]
    a._on_revoke = on_revoke  # type: ignore[method-assign]
    loops = [threading.Thread(target=a.run, daemon=True)]
    loops[0].start()
    try:
        wait_until(lambda: len(a.parts.assigned) == N_PARTS, 60, "A holds every partition")
        assert a._restorer.pending
        loops.append(threading.Thread(target=b.run, daemon=True))
        loops[1].start()
        wait_until(gave_away.is_set, 90, "A gives partitions to B while it restores")
        wait_until(lambda: a.ready()[0] and b.ready()[0]
                   and len(a.parts.assigned) + len(b.parts.assigned) == N_PARTS,
                   90, "both ready, every partition held once")
        mine = {p for _, p in a.parts.assigned}
        theirs = {p for _, p in b.parts.assigned}
        assert mine and theirs and not mine & theirs
        # no ghost keys: A restored exactly the keys of the partitions it kept
        assert _sample(a, "stream_detector_state_restored_keys_total") == PER_PART * len(mine)
        assert _sample(b, "stream_detector_state_restored_keys_total") == PER_PART * len(theirs)
        ghosts = [k for k, p in keys.items() if p in theirs and a.buffer.tag_of(k) >= 0]
        assert not ghosts, f"{len(ghosts)} keys of B's partitions held by A"
        # A's own keys go idle: their incidents close, their state is deleted
        wait_until(lambda: _sample(a, "stream_detector_series_evicted_total", cause="idle")
                   >= PER_PART * len(mine), 60, "A's keys evicted as idle")
        wait_until(lambda: not a._deleted and a._pending is None, 30, "tombstones written")
        time.sleep(1.0)
        closed = {e["key"] for e in consume_all(broker_bootstrap, out, idle=3)
                  if e["value"]["type"] == "closed"}
        assert closed, "A closed its own keys' incidents"
        assert not {k for k in closed if keys[k] in theirs}, "no false closed for B's keys"
        tombstones = {e["key"] for e in consume_all(broker_bootstrap, cfg_a.changelog_topic,
                                                    idle=3)
                      if e["raw"] is None and e["key"] in keys}
        assert tombstones, "A deleted its own idle keys' state"
        assert not {k for k in tombstones if keys[k] in theirs}, "no tombstone of B's keys"
        assert all(b.buffer.tag_of(k) == p for k, p in keys.items() if p in theirs)
    finally:
        a.stop()
        b.stop()
        for t in loops:
            t.join(30)
