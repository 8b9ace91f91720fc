"""The service's loop and data path: consume -> decode -> window -> batch -> model ->
decision -> incidents -> publish; checkpoints between.

The stage order reads here. Scoring is :mod:`.inference`, checkpoints :mod:`.checkpoint`
(the steps) and :mod:`.checkpointing`, rebalances :mod:`.rebalance`, model reload
:mod:`.reload`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message

from stream_detector.artifact import Artifact
from stream_detector.batcher import Batch, MicroBatcher
from stream_detector.errors import DeliveryError, InvalidRecord
from stream_detector.finetune import make_tuner
from stream_detector.incidents import IncidentTracker
from stream_detector.kafka.properties import (
    common_properties,
    consumer_properties,
    event_producer_properties,
    producer_properties,
)
from stream_detector.metrics import Metrics
from stream_detector.records import Source, WindowMeta
from stream_detector.service.base import TP, InFlight, MetaRow, kafka_ts
from stream_detector.service.checkpoint import Checkpoint
from stream_detector.service.checkpointing import CheckpointMixin
from stream_detector.service.config import ServiceConfig
from stream_detector.service.feedback import FeedbackMixin
from stream_detector.service.inference import InferenceMixin
from stream_detector.service.partitions import Life, Partitions
from stream_detector.service.rebalance import RebalanceMixin
from stream_detector.service.reload import ReloadMixin
from stream_detector.service.restoring import Restorer
from stream_detector.sink import EventSink
from stream_detector.source import Decoder
from stream_detector.state import StateStore
from stream_detector.window import BACKWARDS, NO_WINDOW, SKIPPED, WindowBuffer

log = logging.getLogger(__name__)

_MIN_ROUND = 8  # shorter rounds of handle_many go point by point (numpy's fixed costs)


class Detector(InferenceMixin, CheckpointMixin, RebalanceMixin, ReloadMixin, FeedbackMixin):
    """One replica of the streaming detector (one consumer in the group)."""

    def __init__(self, cfg: ServiceConfig, art: Artifact, metrics: Metrics,
                 on_batch: Callable[[Batch[MetaRow]], None] | None = None) -> None:
        self.cfg = cfg
        self.art = art
        self.metrics = metrics
        self.hop = cfg.hop or art.hop
        self.decoder = Decoder(art.n_features, cfg.fields, art.record_mode, art.features,
                               cfg.max_message_bytes)
        self.buffer = WindowBuffer(art.window, art.n_features, self.hop, cfg.max_series,
                                   on_evict=self._on_evict, on_move=self._on_move,
                                   refuse_backwards=cfg.timestamp_policy != "accept",
                                   gaps=cfg.gaps(art.window))
        self._dlq_backwards = cfg.timestamp_policy == "dlq"
        self._backwards_counted = 0  # of buffer.backwards, already in the metric
        self._backwards_metric = metrics.timestamps_backwards.labels(
            action=cfg.timestamp_policy)
        self._gaps_counted = (0, 0, 0)  # of the buffer's gap counts, already in the metrics
        self.batcher: MicroBatcher[MetaRow] = MicroBatcher(
            art.window, art.n_features, cfg.max_batch, cfg.max_batch_latency_s)
        gap = cfg.incident_gap if cfg.incident_gap is not None else max(1, art.window // 2)
        self.tracker = IncidentTracker(art.kind, art.version, cfg.events, gap)
        self.decider = self._make_decider(art)
        self._init_rules()
        self.tuner = make_tuner(art.model, art.thresholds, cfg.fine_tune)
        self._stop = False
        self.on_batch = on_batch
        self._init_reload()
        self.workers = cfg.inference_workers
        self._pool = ThreadPoolExecutor(max_workers=self.workers,
                                        thread_name_prefix="inference")
        self._inflight: deque[InFlight] = deque()
        # batches inside the inference threads, and one more queued (ready when one ends)
        self.max_inflight = self.workers + 1
        self._submitted = 0  # batches submitted so far (their sequence numbers)
        self._pending: Checkpoint | None = None
        self._records_since_trim = 0
        self._positions: dict[TP, int] = {}
        self._committed: dict[TP, int] = {}
        # the life of every input partition (assigned, restoring, live, revoked, lost)
        self.parts = Partitions()
        self._heartbeat = time.monotonic()
        self._broker_down: str | None = None
        self._last_sweep = time.monotonic()
        self.consumer = Consumer(consumer_properties(
            cfg.bootstrap_servers, cfg.group_id, cfg.kafka, stats_cb=self._on_stats,
            error_cb=self._on_error, on_commit=self._on_commit))
        producer_conf = event_producer_properties(cfg.bootstrap_servers, cfg.kafka,
                                                  error_cb=self._on_error)
        self.sink = EventSink(producer_conf, cfg.output_topic, cfg.dlq_topic, metrics)
        self.state: StateStore | None = None
        self._deleted: dict[str, int] = {}  # evicted keys whose state must be tombstoned
        self._state_partitions = 0
        # why the changelog is unusable for the partitions that are missing it (not
        # ready; with --state-required they are paused until it works)
        self._state_error = ""
        self._state_retry = 0.0
        if cfg.changelog_topic:
            self.state = StateStore(cfg.changelog_topic, self.sink.producer,
                                    {**common_properties(cfg.bootstrap_servers), **cfg.kafka},
                                    {**common_properties(cfg.bootstrap_servers),
                                     **producer_properties(cfg.kafka)})
        self._restorer = Restorer(self._fetch_state)
        self._init_feedback()
        strategy = str(cfg.kafka.get("partition.assignment.strategy", "cooperative-sticky"))
        self._incremental = ("cooperative" in strategy
                             or str(cfg.kafka.get("group.protocol", "")).lower() == "consumer")
        m = metrics
        m.active_series.set_function(lambda: len(self.buffer))
        m.assigned_partitions.set_function(lambda: len(self.parts.assigned))
        m.ready.set_function(lambda: 1.0 if self.ready()[0] else 0.0)
        m.state_ready.set_function(lambda: 0.0 if self.parts.missing else 1.0)
        self._show_model(art)

    def alive(self) -> tuple[bool, str]:
        age = time.monotonic() - self._heartbeat
        return (age < 60.0, f"loop last ran {age:.1f} s ago")

    def ready(self) -> tuple[bool, str]:
        if self.sink.failed:
            return False, f"delivery failed, stopping without commit: {self.sink.failed}"
        if self._broker_down:
            return False, f"broker unreachable: {self._broker_down}"
        missing = self.parts.missing
        restoring = self.parts.in_state(Life.RESTORING) - missing
        if restoring:
            return False, f"restoring the state of partition(s) {sorted(p for _, p in restoring)}"
        if missing:
            return False, (f"state changelog unusable for partition(s) "
                           f"{sorted(p for _, p in missing)}: {self._state_error}")
        assigned = self.parts.assigned
        if not assigned:
            return False, "no partitions assigned yet"
        return True, f"model {self.art.version}, {len(assigned)} partition(s)"

    # -- librdkafka callbacks --------------------------------------------------------------
    def _on_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self._broker_down = err.str()
        log.warning("kafka: %s", err)

    def _on_stats(self, raw: str) -> None:
        try:
            stats = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        up = any(b.get("state") == "UP" for b in stats.get("brokers", {}).values())
        if up:
            self._broker_down = None
        for topic, t in stats.get("topics", {}).items():
            for p, pd in t.get("partitions", {}).items():
                if p == "-1" or not self.parts.owns((topic, int(p))):
                    continue
                lag = pd.get("consumer_lag", -1)
                if lag is not None and lag >= 0:
                    self.metrics.consumer_lag.labels(topic=topic, partition=p).set(lag)

    def _on_evict(self, key: str, cause: str, partition: int) -> None:
        self.metrics.series_evicted.labels(cause=cause).inc()
        if cause != "revoked" and self.parts.given_away(partition):
            # a key of a partition another replica holds now: its incident and its state
            # are that replica's, so no closed event, no tombstone from here
            log.warning("series %r of partition %d (no longer held here) dropped", key,
                        partition)
            self._forget_key(key)
            return
        if self.tracker.is_open(key) and (cause != "revoked" or self.state is None):
            # never dropped silently: closed here, unless the changelog hands it on
            # with the key's state (revoked: written by the revoke checkpoint)
            self._close_incident(key, cause, partition)
        self._forget_key(key)
        if self.state is not None and cause != "revoked":
            self._deleted[key] = partition  # gone for good: drop its state too

    def _forget_key(self, key: str) -> None:
        """``key``'s incident, decision and feedback state are gone from this replica."""
        self.tracker.forget(key)
        self.decider.forget(key)
        self._forget_shadow(key)
        if self.feedback is not None:
            self.feedback.forget(key)

    def _on_move(self, key: str, old_partition: int) -> None:
        if self.state is not None:  # its state now lives in its new partition's changelog
            self._deleted[key] = old_partition

    def _close_incident(self, key: str, cause: str, partition: int) -> None:
        """Publish a ``closed`` event for ``key``'s open incident as of its last point."""
        last_ts = self.buffer.last_ts(key) or 0.0
        meta = WindowMeta(key, Source(self.cfg.input_topic, partition,
                                      self.buffer.last_offset(key)), last_ts, last_ts, 0.0)
        ev = self.tracker.close(meta, cause, self.art.thresholds.for_key(key))
        if ev is not None:
            self.sink.publish(ev, 0.0)

    # -- the data path ----------------------------------------------------------------------
    def handle(self, msg: Message, now: float = 0.0) -> None:
        """One consumed message: decode, validate, append, maybe batch a window."""
        try:
            key, ts, values = self.decoder.decode_point(msg.value(), msg.key(), kafka_ts(msg))
        except InvalidRecord as exc:
            self._consumed(msg)
            self._reject(msg, exc.reason, exc.detail)
            return
        self._apply(msg, key, ts, values, now)
        self._count_buffer()

    def _count_buffer(self) -> None:
        """Bring ``timestamps_backwards_total`` and the gap counters up to the buffer's
        counts (once per call of :meth:`handle` or :meth:`handle_many`, not per point)."""
        buf = self.buffer
        n = buf.backwards - self._backwards_counted
        if n:
            self._backwards_counted += n
            self._backwards_metric.inc(n)
        if buf.gaps is not None:
            now = (buf.gaps_filled, buf.points_filled, buf.gaps_restarted)
            filled, points, restarted = (a - b for a, b in zip(now, self._gaps_counted))
            if filled or restarted:
                self._gaps_counted = now
                self.metrics.gaps.labels(action="filled").inc(filled)
                self.metrics.gaps.labels(action="restarted").inc(restarted)
                self.metrics.gap_points_filled.inc(points)

    def _apply(self, msg: Message, key: str, ts: float, values: Any, now: float) -> None:
        """A decoded point into its key's buffer, and its window (when due) into the batch."""
        partition, offset = msg.partition(), msg.offset()
        self._consumed(msg)
        # raw values go into the buffer; windows are scaled per batch, vectorised
        slot = self.buffer.push(key, ts, values, partition, offset, now,
                                skip_applied=self.state is not None)
        if slot == SKIPPED:
            # already in the restored window (applied before a crash, redelivered now)
            self.metrics.messages_skipped.inc()
            return
        if slot == BACKWARDS:  # refused by --timestamp-policy drop or dlq
            self._backwards(msg, key, ts)
            return
        if slot == NO_WINDOW:
            return
        start_ts, end_ts = self.buffer.copy_window(slot, self.batcher.next_row())
        if self.batcher.push((key, msg, start_ts, end_ts)):
            self.submit_batch()

    def handle_many(self, msgs: list[Message], now: float = 0.0) -> int:
        """One loop turn's messages, in order, as :meth:`handle` would; returns how many
        were handled (decoded, validated, in their buffer or the DLQ).

        Messages of the common shape (``Decoder.plain``) are applied in rounds in which no
        key repeats, each round at once (``WindowBuffer.push_round``); any other message
        goes through :meth:`handle` at its place, so each key's points keep their order.
        """
        plain = self.decoder.plain
        rnd: list[tuple[Message, str, float, float]] = []
        keys: set[str] = set()
        handled = 0
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    if err.fatal():
                        raise KafkaException(err)
                    log.warning("consumer: %s", err)
                continue
            handled += 1
            p = plain(msg.value())
            if p is None or p[0] in keys:
                self._apply_round(rnd, now)
                rnd, keys = [], set()
                if p is None:
                    self.handle(msg, now)
                    continue
            keys.add(p[0])
            rnd.append((msg, *p))
        self._apply_round(rnd, now)
        self._count_buffer()
        return handled

    def _apply_round(self, rnd: list[tuple[Message, str, float, float]], now: float) -> None:
        msgs = [r[0] for r in rnd]
        keys = [r[1] for r in rnd]
        parts = [m.partition() for m in msgs]
        offsets = [m.offset() for m in msgs]
        codes = None if len(rnd) < _MIN_ROUND else self.buffer.push_round(
            keys, np.array([r[2] for r in rnd], dtype=np.float64),
            np.array([r[3] for r in rnd], dtype=np.float64).reshape(-1, 1),
            np.array(parts, dtype=np.int32), np.array(offsets, dtype=np.int64),
            now, skip_applied=self.state is not None)
        if codes is None:  # a short round, or new keys beyond --max-series: one by one
            for msg, key, t, v in rnd:
                self._apply(msg, key, t, v, now)
            return
        for m in msgs:
            self._consumed(m)
        skipped = int(np.count_nonzero(codes == SKIPPED))
        if skipped:
            self.metrics.messages_skipped.inc(skipped)
        for i in np.flatnonzero(codes == BACKWARDS):
            self._backwards(msgs[i], keys[i], rnd[i][2])
        due = np.flatnonzero(codes >= 0)
        if not due.size:
            return
        windows, start, end = self.buffer.windows_of(codes[due])
        metas: list[MetaRow] = [(keys[i], msgs[i], s, e) for i, s, e in
                                zip(due.tolist(), start.tolist(), end.tolist())]
        done = 0
        while done < len(metas):
            done += self.batcher.add_many(windows[done:], metas[done:])
            if self.batcher.full:
                self.submit_batch()

    def _consumed(self, msg: Message) -> None:
        """``msg`` is handled (applied, skipped, refused or dead-lettered): its offset is
        the partition's position, committed by the next checkpoint."""
        self._positions[(msg.topic(), msg.partition())] = msg.offset() + 1

    def _backwards(self, msg: Message, key: str, ts: float) -> None:
        """A point refused for its timestamp (counted by the buffer): to the DLQ with
        ``--timestamp-policy dlq``, else dropped; its offset still commits."""
        if self._dlq_backwards:
            self._reject(msg, "timestamp_backwards", f"ts {ts} before the key's previous "
                         f"point (last used {self.buffer.last_ts(key)})")
        else:
            log.debug("dropped at %s/%d@%d: ts %s before the key's previous point",
                      msg.topic(), msg.partition(), msg.offset(), ts)

    def _reject(self, msg: Message, reason: str, detail: str) -> None:
        """Bad input: count it, send it to the DLQ with its reason; its offset still commits."""
        self.metrics.invalid_messages.labels(reason=reason).inc()
        log.debug("bad input at %s/%d@%d: %s: %s", msg.topic(), msg.partition(), msg.offset(),
                  reason, detail)
        self.sink.dead_letter(msg.value(), msg.key(), reason, detail, msg.topic(),
                              msg.partition(), msg.offset())

    # -- run and stop -----------------------------------------------------------------------
    def stop(self, *_: object) -> None:
        """Ask the loop to drain and exit (safe from a signal handler)."""
        self._stop = True

    def run(self) -> int:
        """Consume until :meth:`stop`; then drain within ``drain_timeout_s``."""
        cfg = self.cfg
        self.consumer.subscribe([cfg.input_topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        last_commit = time.monotonic()
        try:
            while not self._stop:
                now = time.monotonic()
                self._heartbeat = now
                # what is already fetched, at once; if nothing, block only until the first
                # message (consume() would wait out its whole timeout for a full batch),
                # and only briefly while a batch is being scored, to publish it promptly
                msgs = self.consumer.consume(num_messages=1000, timeout=0)
                if not msgs:
                    msg = self.consumer.poll(self._idle_wait())
                    # ... and whatever arrived with it (one message per loop turn would
                    # spend the loop's fixed costs per message)
                    msgs = [] if msg is None else [
                        msg, *self.consumer.consume(num_messages=999, timeout=0)]
                now = time.monotonic()
                handled = self.handle_many(msgs, now)
                # counted once handled (decoded, validated, in its buffer or the DLQ)
                self.metrics.messages_consumed.inc(handled)
                if msgs:
                    self._broker_down = None
                self.complete_ready()
                # a batch goes to the model when full, when an inference thread is idle (no
                # reason to wait: latency), or when its oldest window reached the deadline
                if self._reload_due() or (len(self.batcher) and (
                        len(self._inflight) < self.workers or self.batcher.due())):
                    self.submit_batch()  # (models are taken and promoted there, even idle)
                self.sink.poll()
                now = time.monotonic()
                self._poll_feedback(now)
                if now - last_commit >= cfg.commit_interval_s:
                    self.begin_checkpoint()
                    last_commit = time.monotonic()
                self.advance_checkpoint()
                if self.state is not None:
                    self._finish_restores()
                    self._retry_state(now)
                if cfg.idle_ttl_s > 0 and now - self._last_sweep > min(10.0, cfg.idle_ttl_s):
                    self.buffer.evict_idle(cfg.idle_ttl_s, now)
                    self._last_sweep = now
        except DeliveryError as exc:
            log.error("stopping without commit: %s (input from the last commit on will be "
                      "redelivered after a restart)", exc)
            self._close(0.0)
            return 1
        if self.sink.failed:  # seen in a rebalance callback
            log.error("stopping without commit: %s", self.sink.failed)
            self._close(0.0)
            return 1
        return self._drain()

    def _idle_wait(self) -> float:
        """How long the loop may block waiting for input."""
        if self._inflight:
            return 0.002  # a batch is being scored: come back soon to apply it
        left = self.batcher.time_left()
        return 0.05 if left is None else min(0.05, left)

    def _drain(self) -> int:
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        code = 0
        try:
            self.checkpoint(timeout=max(1.0, self.cfg.drain_timeout_s - 1.0))
        except (DeliveryError, KafkaException) as exc:
            log.error("drain incomplete: %s (uncommitted input will be redelivered)", exc)
            code = 1
        self._close(max(0.5, deadline - time.monotonic()))
        return code

    def _close(self, timeout: float) -> None:
        self._restorer.close()
        self._close_feedback()
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            self.consumer.close()  # leaves the group at once
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer close: %s", exc)
        self.sink.close(timeout)
