"""The service: consume -> decode -> window -> batch -> model -> threshold -> incidents -> publish.

This module wires the stages together and owns offset commits. Offsets follow delivery:
a checkpoint scores whatever is batched, waits until the broker confirmed every event
and dead letter, and only then commits the consumed positions (at least once, no loss).
Event ids are deterministic, so a redelivered event is byte-identical.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from stream_detector.artifact import Artifact, load_artifact
from stream_detector.batcher import Batch, MicroBatcher
from stream_detector.decision import Decider, make_decider, resolve_spec
from stream_detector.errors import DeliveryError, InputError, InvalidRecord
from stream_detector.finetune import FineTuneOptions, make_tuner
from stream_detector.guards import finite_rows
from stream_detector.incidents import IncidentTracker
from stream_detector.kafka.admin import ensure_changelog
from stream_detector.kafka.exceptions import TopicSetupError
from stream_detector.kafka.properties import (
    common_properties,
    consumer_properties,
    event_producer_properties,
    producer_properties,
    refuse_delivery_overrides,
)
from stream_detector.metrics import Metrics, observe_many
from stream_detector.models.base import plan_threads, set_threads
from stream_detector.records import Source, WindowMeta
from stream_detector.server import HealthServer
from stream_detector.sink import EventSink
from stream_detector.source import Decoder, Fields
from stream_detector.state import KeyState, StateStore
from stream_detector.state import decode as decode_state
from stream_detector.state import encode as encode_state
from stream_detector.window import BACKWARDS, NO_WINDOW, SKIPPED, WindowBuffer

log = logging.getLogger(__name__)

TP = tuple[str, int]


@dataclass(frozen=True)
class ServiceConfig:
    """Everything ``run`` needs, validated once by the CLI."""

    bootstrap_servers: str
    input_topic: str
    output_topic: str
    model_dir: str
    dlq_topic: str | None = None
    group_id: str = "stream-detector"
    metrics_port: int = 9400
    metrics_host: str = "0.0.0.0"
    hop: int | None = None
    max_batch: int = 256
    max_batch_latency_s: float = 0.05
    max_series: int = 100_000
    idle_ttl_s: float = 3600.0
    events: str = "incidents"
    incident_gap: int | None = None
    commit_interval_s: float = 1.0
    drain_timeout_s: float = 10.0
    max_message_bytes: int = 65536
    state: str = "changelog"
    state_topic: str | None = None
    state_required: bool = True
    model_poll_s: float = 10.0
    decision: str | None = None
    decision_params: Mapping[str, str] = field(default_factory=dict)
    fine_tune: FineTuneOptions = field(default_factory=FineTuneOptions)
    inference_workers: int = 1  # model calls in parallel (results still apply in order)
    inference_threads: int = 0  # TensorFlow threads per call (0: TensorFlow's default)
    fields: Fields = field(default_factory=Fields)
    kafka: Mapping[str, str] = field(default_factory=dict)
    timestamp_policy: str = "accept"  # a point whose timestamp goes back: accept, drop, dlq

    @classmethod
    def from_options(cls, cfg: Mapping[str, Any]) -> ServiceConfig:
        refuse_delivery_overrides(cfg["kafka"])
        for name in ("max_batch", "max_series", "max_message_bytes"):
            if cfg[name] < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {cfg[name]}")
        for name in ("inference_workers", "inference_threads"):
            if cfg.get(name, 0) < 0:
                raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {cfg[name]}")
        fine_tune = FineTuneOptions.parse(cfg.get("fine_tune_every") or 0,
                                          cfg.get("fine_tune_param"))
        # fine-tuning updates the weights between calls: calls must not overlap
        workers, threads = plan_threads(1 if fine_tune.enabled else cfg.get("inference_workers", 0),
                                        cfg.get("inference_threads") or 0)
        if cfg["hop"] is not None and cfg["hop"] < 1:
            raise InputError(f"--hop must be >= 1, got {cfg['hop']}")
        return cls(
            bootstrap_servers=cfg["bootstrap_servers"], input_topic=cfg["input_topic"],
            output_topic=cfg["output_topic"], model_dir=cfg["model"],
            dlq_topic=cfg["dlq_topic"], group_id=cfg["group_id"],
            metrics_port=cfg["metrics_port"], metrics_host=cfg["metrics_host"], hop=cfg["hop"],
            max_batch=cfg["max_batch"], max_batch_latency_s=cfg["max_batch_latency_ms"] / 1000.0,
            max_series=cfg["max_series"], idle_ttl_s=cfg["idle_ttl_s"], events=cfg["events"],
            incident_gap=cfg["incident_gap"], commit_interval_s=cfg["commit_interval_ms"] / 1000.0,
            drain_timeout_s=cfg["drain_timeout_s"], max_message_bytes=cfg["max_message_bytes"],
            state=cfg["state"], state_topic=cfg["state_topic"],
            state_required=cfg.get("state_required", True) is not False, model_poll_s=cfg["model_poll_s"],
            decision=cfg.get("decision"), decision_params=dict(cfg.get("decision_param") or {}),
            fine_tune=fine_tune, inference_workers=workers, inference_threads=threads,
            fields=Fields(cfg["key_field"], cfg["ts_field"], cfg["value_field"],
                          cfg["values_field"], cfg["features_field"]),
            kafka=dict(cfg["kafka"]),
            timestamp_policy=cfg.get("timestamp_policy") or "accept",
        )

    @property
    def changelog_topic(self) -> str | None:
        if self.state != "changelog":
            return None
        return self.state_topic or f"{self.group_id}-state"


def _libc_trim() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _libc_trim()
TRIM_AFTER_RECORDS = 10_000


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc keeps them after a burst: e.g. the
    state records of a big checkpoint), so RSS follows what the detector really holds."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@dataclass
class _Checkpoint:
    """A periodic checkpoint in progress, advanced by the loop without stalling it.

    At the mark the batcher's windows are submitted and the offsets consumed so far and
    the buffers of changed keys are snapshotted. Once every batch submitted by then is
    scored (the incident and decision state of those keys is captured at that very
    batch) and every event they caused is confirmed, the state records are written; once
    those are confirmed, the offsets are committed. The same order as the synchronous
    :meth:`Detector.checkpoint`, so a crash at any point loses nothing.
    """

    batch: int  # sequence number of the last batch submitted at the mark
    offsets: list[TopicPartition]
    buffers: list[tuple[str, int, tuple[int, int, int, np.ndarray, np.ndarray]]]
    deleted: list[tuple[str, int]]
    started: float
    records: list[tuple[int, str, bytes | None]] | None = None  # encoded at the batch
    events_mark: int = -1  # the sink's mark once the batch was applied
    state_mark: int = -1  # the sink's mark once the state records were produced


_MIN_ROUND = 8  # shorter rounds of handle_many go point by point (numpy's fixed costs)


def _kafka_ts(msg: Message) -> float | None:
    """The message's Kafka timestamp in epoch seconds, None when it has none."""
    ts_type, ts_ms = msg.timestamp()
    return ts_ms / 1000.0 if ts_type != TIMESTAMP_NOT_AVAILABLE and ts_ms > 0 else None


# what the batcher carries beside each window: (key, the message that completed it,
# start_ts, end_ts); only the few windows that cause an event get their WindowMeta
MetaRow = tuple[str, Message, float, float]


def _window_meta(row: MetaRow) -> WindowMeta:
    key, msg, start_ts, end_ts = row
    return WindowMeta(key, Source(msg.topic(), msg.partition(), msg.offset()), start_ts,
                      end_ts, _kafka_ts(msg) or 0.0)


class Detector:
    """One replica of the streaming detector (one consumer in the group)."""

    def __init__(self, cfg: ServiceConfig, art: Artifact, metrics: Metrics) -> None:
        self.cfg = cfg
        self.art = art
        self.metrics = metrics
        self.hop = cfg.hop or art.hop
        self.decoder = Decoder(art.n_features, cfg.fields, art.record_mode, art.features,
                               cfg.max_message_bytes)
        self.buffer = WindowBuffer(art.window, art.n_features, self.hop, cfg.max_series,
                                   on_evict=self._on_evict,
                                   refuse_backwards=cfg.timestamp_policy != "accept")
        self._dlq_backwards = cfg.timestamp_policy == "dlq"
        self._backwards_counted = 0  # of buffer.backwards, already in the metric
        self._backwards_metric = metrics.timestamps_backwards.labels(
            action=cfg.timestamp_policy)
        self.batcher: MicroBatcher[MetaRow] = MicroBatcher(
            art.window, art.n_features, cfg.max_batch, cfg.max_batch_latency_s)
        gap = cfg.incident_gap if cfg.incident_gap is not None else max(1, art.window // 2)
        self.tracker = IncidentTracker(art.kind, art.version, cfg.events, gap)
        self.decider = self._make_decider(art)
        self.tuner = make_tuner(art.model, art.thresholds, cfg.fine_tune)
        self._stop = False
        self._pending_art: Artifact | None = None
        self.workers = cfg.inference_workers
        self._pool = ThreadPoolExecutor(max_workers=self.workers,
                                        thread_name_prefix="inference")
        self._inflight: deque[tuple[int, Batch[MetaRow], list[str], Future[Any]]] = deque()
        # batches inside the inference threads, and one more queued (ready when one ends)
        self.max_inflight = self.workers + 1
        self._submitted = 0  # batches submitted so far (their sequence numbers)
        self._pending: _Checkpoint | None = None
        self._records_since_trim = 0
        self._positions: dict[TP, int] = {}
        self._committed: dict[TP, int] = {}
        self._assigned: set[TP] = set()
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
        # assigned input partitions whose changelog is unusable (and why): not ready;
        # with --state-required they are paused until it works
        self._state_missing: set[TP] = set()
        self._state_error = ""
        self._state_retry = 0.0
        if cfg.changelog_topic:
            self.state = StateStore(cfg.changelog_topic, self.sink.producer,
                                    {**common_properties(cfg.bootstrap_servers), **cfg.kafka})
        m = metrics
        m.active_series.set_function(lambda: len(self.buffer))
        m.assigned_partitions.set_function(lambda: len(self._assigned))
        m.ready.set_function(lambda: 1.0 if self.ready()[0] else 0.0)
        m.state_ready.set_function(lambda: 0.0 if self._state_missing else 1.0)
        m.model_info.labels(model=art.kind, version=art.version, window=str(art.window)).set(1)
        m.model_loaded_timestamp.set(art.created_at.timestamp())
        m.anomaly_threshold.set(art.thresholds.global_)

    def _make_decider(self, art: Artifact) -> Decider:
        try:
            spec = resolve_spec(art.metadata.get("decision"), self.cfg.decision,
                                self.cfg.decision_params)
            return make_decider(art.thresholds, spec, art.value_ranges,
                                art.periods_at(self.cfg.hop or art.hop))
        except ValueError as exc:
            raise InputError(f"--decision: {exc}") from None

    # -- health --------------------------------------------------------------------------
    def alive(self) -> tuple[bool, str]:
        age = time.monotonic() - self._heartbeat
        return (age < 60.0, f"loop last ran {age:.1f} s ago")

    def ready(self) -> tuple[bool, str]:
        if self.sink.failed:
            return False, f"delivery failed, stopping without commit: {self.sink.failed}"
        if self._broker_down:
            return False, f"broker unreachable: {self._broker_down}"
        if self._state_missing:
            return False, (f"state changelog unusable for partition(s) "
                           f"{sorted(p for _, p in self._state_missing)}: {self._state_error}")
        if not self._assigned:
            return False, "no partitions assigned yet"
        return True, f"model {self.art.version}, {len(self._assigned)} partition(s)"

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
                if p == "-1" or (topic, int(p)) not in self._assigned:
                    continue
                lag = pd.get("consumer_lag", -1)
                if lag is not None and lag >= 0:
                    self.metrics.consumer_lag.labels(topic=topic, partition=p).set(lag)

    def _on_evict(self, key: str, cause: str, partition: int) -> None:
        self.metrics.series_evicted.labels(cause=cause).inc()
        if self.tracker.is_open(key) and (cause != "revoked" or self.state is None):
            # never dropped silently: closed here, unless the changelog hands it on
            # with the key's state (revoked: written by the revoke checkpoint)
            self._close_incident(key, cause, partition)
        self.tracker.forget(key)
        self.decider.forget(key)
        if self.state is not None and cause != "revoked":
            self._deleted[key] = partition  # gone for good: drop its state too

    def _close_incident(self, key: str, cause: str, partition: int) -> None:
        """Publish a ``closed`` event for ``key``'s open incident as of its last point."""
        last_ts = self.buffer.last_ts(key) or 0.0
        meta = WindowMeta(key, Source(self.cfg.input_topic, partition,
                                      self.buffer.last_offset(key)), last_ts, last_ts, 0.0)
        ev = self.tracker.close(meta, cause, self.art.thresholds.for_key(key))
        if ev is not None:
            self.sink.publish(ev, 0.0)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", sorted(p.partition for p in partitions))
        for tp in partitions:
            self._assigned.add((tp.topic, tp.partition))
        if self.state is None or not partitions:
            return
        tps = {(tp.topic, tp.partition) for tp in partitions}
        if not self._open_state(tps):
            self._state_missing |= tps
            if self.cfg.state_required:  # consume none of them until the changelog works
                consumer.incremental_assign(partitions)
                consumer.pause(partitions)

    def _open_state(self, tps: set[TP]) -> bool:
        """Make sure the changelog has partitions for ``tps`` and restore them; False (and
        the reason logged) when it cannot be created, grown or read."""
        assert self.state is not None
        needed = max(p for _, p in tps) + 1
        try:
            if needed > self._state_partitions:
                # as many state partitions as the input topic has, so that replicas
                # starting together agree on the count (some brokers cannot grow topics).
                # (Never call the consumer itself for this from a rebalance callback.)
                self._state_partitions = ensure_changelog(
                    self.cfg.bootstrap_servers, self.state.topic, needed,
                    producer_properties(self.cfg.kafka), like=self.cfg.input_topic)
            if needed > self._state_partitions:
                raise TopicSetupError(f"{self._state_partitions} partition(s), {needed} needed")
            self.restore(sorted(p for _, p in tps))
        except (TopicSetupError, KafkaException, TimeoutError) as exc:
            self._state_error = f"{self.state.topic}: {exc}"
            log.error("state topic unusable (%s): %s", self._state_error,
                      "partitions paused until it works (--state-required)"
                      if self.cfg.state_required else "consuming without state")
            return False
        return True

    def _retry_state(self, now: float) -> None:
        """Every 5 s, try the changelog again for the partitions it failed."""
        if not self._state_missing or now < self._state_retry:
            return
        self._state_retry = now + 5.0
        tps = set(self._state_missing)
        if not self.cfg.state_required:
            # consumed meanwhile: no restore (it would go back in time), checkpoint on
            try:
                self._state_partitions = ensure_changelog(
                    self.cfg.bootstrap_servers, self.state.topic if self.state else "",
                    max(p for _, p in tps) + 1, producer_properties(self.cfg.kafka),
                    like=self.cfg.input_topic)
            except (TopicSetupError, KafkaException) as exc:
                self._state_error = str(exc)
                return
            self._state_missing -= {tp for tp in tps if tp[1] < self._state_partitions}
            return
        if self._open_state(tps):
            self._state_missing -= tps
            self.consumer.resume([TopicPartition(t, p) for t, p in tps])
            log.info("state topic usable again: partitions %s resumed",
                     sorted(p for _, p in tps))

    def restore(self, partitions: list[int]) -> int:
        """Load the changelog state of ``partitions`` (before consuming them)."""
        assert self.state is not None
        t0 = time.perf_counter()
        records = self.state.restore(partitions)
        n = 0
        w, f = self.art.window, self.art.n_features
        for p, recs in records.items():
            for key, raw in recs.items():
                ks = decode_state(raw, w, f)
                if ks is None:
                    continue
                self.buffer.restore(key, p, ks.count, ks.last_offset, ks.values, ks.ts)
                self.tracker.restore(key, ks.incident)
                if ks.decision:
                    try:
                        self.decider.restore(key, ks.decision)
                    except ValueError as exc:  # written by another decision method
                        log.warning("decision state of %r not restored: %s", key, exc)
                n += 1
        took = time.perf_counter() - t0
        self.metrics.state_restore_seconds.observe(took)
        self.metrics.state_restored_keys.inc(n)
        log.info("restored %d series of partitions %s in %.3f s", n, partitions, took)
        return n

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = {(tp.topic, tp.partition) for tp in partitions}
        log.info("revoked %s", sorted(p for _, p in tps))
        if self.state is None:  # no changelog to hand incidents on: close them, and
            # before the checkpoint, which then waits for their events too
            self.score_batch()
            gone = {p for _, p in tps}
            for key in self.tracker.open_keys():
                tag = self.buffer.tag_of(key)
                if tag in gone:
                    self._close_incident(key, "revoked", tag)
        try:
            self.checkpoint(tps)
        except DeliveryError as exc:
            # nothing of these partitions is committed; the loop stops (exit 1)
            log.error("could not checkpoint revoked partitions: %s", exc)
            self._stop = True
        except KafkaException as exc:
            log.error("could not checkpoint revoked partitions: %s", exc)
        self._forget(tps)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = {(tp.topic, tp.partition) for tp in partitions}
        log.warning("lost %s (no commit possible)", sorted(p for _, p in tps))
        self._forget(tps)

    def _forget(self, tps: set[TP]) -> None:
        self._abandon()  # it may hold state and offsets of these partitions
        for tp in tps:
            self._assigned.discard(tp)
            self._state_missing.discard(tp)
            self._positions.pop(tp, None)
            self._committed.pop(tp, None)
            self.buffer.drop_tag(tp[1], cause="revoked")
            try:
                self.metrics.consumer_lag.remove(tp[0], str(tp[1]))
            except KeyError:
                pass

    # -- the data path ----------------------------------------------------------------------
    def handle(self, msg: Message, now: float = 0.0) -> None:
        """One consumed message: decode, validate, append, maybe batch a window."""
        try:
            key, ts, values = self.decoder.decode_point(msg.value(), msg.key(), _kafka_ts(msg))
        except InvalidRecord as exc:
            self._positions[(msg.topic(), msg.partition())] = msg.offset() + 1
            self._reject(msg, exc.reason, exc.detail)
            return
        self._apply(msg, key, ts, values, now)
        self._count_backwards()

    def _count_backwards(self) -> None:
        """Bring ``timestamps_backwards_total`` up to the buffer's count (once per call of
        :meth:`handle` or :meth:`handle_many`, not per point)."""
        n = self.buffer.backwards - self._backwards_counted
        if n:
            self._backwards_counted += n
            self._backwards_metric.inc(n)

    def _apply(self, msg: Message, key: str, ts: float, values: Any, now: float) -> None:
        """A decoded point into its key's buffer, and its window (when due) into the batch."""
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        self._positions[(topic, partition)] = offset + 1
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
        self._count_backwards()
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
        positions = self._positions
        for m, p, o in zip(msgs, parts, offsets):
            positions[(m.topic(), p)] = o + 1
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

    def offer_model(self, art: Artifact) -> None:
        """Hand over a newly loaded artifact (from the watcher thread); used from the next batch."""
        self._pending_art = art

    def _swap_model(self) -> None:
        art, self._pending_art = self._pending_art, None
        if art is None:
            return
        old = self.art
        try:
            decider = self._make_decider(art)
        except InputError as exc:
            self.metrics.model_reloads.labels(result="refused").inc()
            log.error("new model refused, still serving %s: %s", old.version, exc)
            return
        self.art = art
        self.tuner = make_tuner(art.model, art.thresholds, self.cfg.fine_tune)
        self.tracker.model = art.kind
        self.tracker.model_version = art.version
        self.decider = decider
        m = self.metrics
        try:
            m.model_info.remove(old.kind, old.version, str(old.window))
        except KeyError:
            pass
        m.model_info.labels(model=art.kind, version=art.version, window=str(art.window)).set(1)
        m.model_loaded_timestamp.set(art.created_at.timestamp())
        m.anomaly_threshold.set(art.thresholds.global_)
        m.model_reloads.labels(result="loaded").inc()
        log.info("model reloaded: %s %s -> %s", art.kind, old.version, art.version)

    def submit_batch(self) -> None:
        """Hand the collected windows to the inference thread (one batched model call).

        Consumption and decoding go on while TensorFlow (which releases the GIL) scores, on
        up to ``workers`` threads at once; results are applied in submission order by
        :meth:`complete_ready`.
        """
        if self._pending_art is not None:
            self._swap_model()
        if not len(self.batcher):
            return
        batch = self.batcher.drain()
        keys = [meta[0] for meta in batch.metas]
        art, tuner, m = self.art, self.tuner, self.metrics

        def infer() -> tuple[np.ndarray, float]:
            x = art.scalers.transform_windows(keys, batch.windows)
            t0 = time.perf_counter()
            scores = art.model.score_batch(x)
            if tuner is not None:  # one worker then: no call ever sees half-updated weights
                learnt, refused = tuner.learnt, tuner.refused
                m.fine_tune_rounds.inc(tuner.after_batch(keys, x, scores))
                m.fine_tune_windows.labels(result="learnt").inc(tuner.learnt - learnt)
                m.fine_tune_windows.labels(result="refused").inc(tuner.refused - refused)
            return scores, time.perf_counter() - t0

        self._submitted += 1
        self._inflight.append((self._submitted, batch, keys, self._pool.submit(infer)))
        while len(self._inflight) > self.max_inflight:
            self._complete_one()

    def complete_ready(self) -> int:
        """Apply every finished batch at the head of the queue; returns windows applied."""
        n = 0
        while self._inflight and self._inflight[0][3].done():
            n += self._complete_one()
        return n

    def score_batch(self) -> int:
        """Score everything collected or in flight and publish what it causes (a barrier)."""
        self.submit_batch()
        n = 0
        while self._inflight:
            n += self._complete_one()
        return n

    def _complete_one(self) -> int:
        seq, batch, keys, fut = self._inflight.popleft()
        scores, seconds = fut.result()
        m = self.metrics
        m.inference_seconds.observe(seconds)
        m.inference_batch_size.observe(len(batch))
        windows, metas = batch.windows, batch.metas
        keep = finite_rows(scores)
        if keep is not None:  # inf or NaN error: never decided, in no history, no event
            self._refuse_nonfinite(batch, scores)
            scores, windows = scores[keep], windows[keep]
            keys = [keys[i] for i in keep.tolist()]
            metas = [metas[i] for i in keep.tolist()]
        n = len(keys)
        if n:
            self._decide(keys, scores, windows, metas)
        ck = self._pending
        if ck is not None and ck.batch == seq:
            self._capture(ck)
        return n

    def _refuse_nonfinite(self, batch: Batch[MetaRow], scores: np.ndarray) -> None:
        bad = np.flatnonzero(~np.isfinite(scores))
        self.metrics.nonfinite_scores.inc(len(bad))
        key, msg, _, _ = batch.metas[int(bad[0])]
        log.warning("%d window(s) with a non-finite reconstruction error skipped (not "
                    "decided), the first of %r ending at %s/%d@%d: a value too large for "
                    "the model's scale", len(bad), key, msg.topic(), msg.partition(),
                    msg.offset())

    def _decide(self, keys: list[str], scores: np.ndarray, windows: np.ndarray,
                metas: list[MetaRow]) -> None:
        """Decide finite-scored windows, track incidents and publish what they cause."""
        m = self.metrics
        n = len(keys)
        newest = None
        if self.decider.wants_values:  # the values new to each window: its last hop points
            newest = windows[:, -min(self.hop, windows.shape[1]):, :]
        decision = self.decider.decide(keys, scores, newest)
        thr, a_scores, flags = decision.threshold, decision.anomaly_score, decision.is_anomaly
        excursion, reasons = decision.excursion, decision.reason
        m.windows_scored.inc(n)
        m.anomalies.inc(int(flags.sum()))
        observe_many(m.reconstruction_error, scores)
        tracker = self.tracker
        is_open = tracker.is_open
        # only anomalous windows, or windows of keys with an open incident (checked as we go:
        # an incident may open earlier in this very batch), can cause events; the keys
        # that can have one: open now, or flagged in this batch
        watch = {keys[i] for i in np.flatnonzero(flags).tolist()}
        watch.update(tracker.open_keys())
        for i, key in enumerate(keys if watch else ()):
            if key not in watch or not (flags[i] or is_open(key)):
                continue
            meta = _window_meta(metas[i])
            for ev in tracker.observe(meta, float(scores[i]), float(thr[i]),
                                      float(a_scores[i]), bool(flags[i]), bool(excursion[i]),
                                      int(reasons[i])):
                if ev["type"] == "opened":
                    m.incidents_opened.inc()
                self.sink.publish(ev, meta.kafka_ts)

    def checkpoint(self, only: set[TP] | None = None, timeout: float = 30.0,
                   strict: bool = True) -> bool:
        """Score what is batched, wait for every delivery, write changed state, then commit.

        With ``strict=False`` (the periodic checkpoint) a broker that does not confirm in
        ``timeout`` only postpones the commit; the loop goes on and retries next time.
        """
        t0 = time.perf_counter()
        self.sink.raise_if_failed()  # once a message was refused, nothing commits again
        self._abandon()  # this one covers everything a pending one would
        self.score_batch()
        if not self.sink.flush(timeout, strict):
            return False
        if self.state is not None and (self.buffer.any_dirty() or self._deleted):
            self._write_state({p for _, p in only} if only is not None else None)
            if not self.sink.flush(timeout, strict):
                return False
            self._trim_after_records()
        offsets = self._uncommitted(only)
        if not offsets:
            return True
        self.sink.raise_if_failed()
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # e.g. a rebalance in progress: the messages will be redelivered (at least once)
            log.warning("offset commit failed: %s", exc)
            return False
        for tp in offsets:
            self._committed[(tp.topic, tp.partition)] = tp.offset
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - t0)
        return True

    def _uncommitted(self, only: set[TP] | None = None) -> list[TopicPartition]:
        """Next offsets to commit: consumed positions not committed yet (of ``only``)."""
        return [TopicPartition(t, p, o) for (t, p), o in self._positions.items()
                if self._committed.get((t, p)) != o and (only is None or (t, p) in only)]

    def begin_checkpoint(self) -> None:
        """Start a periodic checkpoint that the loop advances (see :class:`_Checkpoint`)."""
        if self._pending is not None:
            return  # the previous one is still waiting for the broker: it goes first
        offsets = self._uncommitted()
        if not offsets and not self._deleted and not (
                self.state is not None and self.buffer.any_dirty()):
            return
        self.submit_batch()
        buffers = []
        if self.state is not None:
            for key, _ in self.buffer.take_dirty():
                exp = self.buffer.export(key)
                if exp is not None:
                    buffers.append((key, exp[0], exp))
        deleted = list(self._deleted.items())
        self._deleted.clear()
        self._pending = _Checkpoint(self._submitted, offsets, buffers, deleted,
                                    time.perf_counter())
        if not self._inflight:  # nothing to score: the state is as of now
            self._capture(self._pending)

    def _capture(self, ck: _Checkpoint) -> None:
        """The mark's batches are applied: encode state as of now, note the events' mark."""
        ck.events_mark = self.sink.mark()
        records = [rec for key, _, exp in ck.buffers
                   if key in self.buffer and (rec := self._state_record(key, exp)) is not None]
        records += [(p, key, None) for key, p in ck.deleted if 0 <= p < self._state_partitions]
        ck.records = records
        ck.buffers = []

    def _state_record(self, key: str, exp: tuple[int, int, int, np.ndarray, np.ndarray]
                      ) -> tuple[int, str, bytes | None] | None:
        """(partition, key, encoded state) from the key's buffer export and its current
        incident and decision state; None where the changelog has no partition for it."""
        tag, count, last_offset, values, ts = exp
        if tag >= self._state_partitions:
            return None  # the changelog could not grow to this partition (logged)
        return tag, key, encode_state(KeyState(count, last_offset, values, ts,
                                               self.tracker.export(key),
                                               self.decider.export(key)), self.art.window)

    def _trim_after_records(self) -> None:
        """Once the state records written since the last trim (all confirmed now, their
        buffers freed) add up to many, give the freed heap back to the OS."""
        if self._records_since_trim >= TRIM_AFTER_RECORDS:
            self._records_since_trim = 0
            release_free_memory()

    def _write_records(self, records: list[tuple[int, str, bytes | None]]) -> None:
        """Produce state records (None: a tombstone), each tracked for its confirmation."""
        assert self.state is not None
        written = self.state.bytes_written
        sink = self.sink
        for tag, key, raw in records:
            try:
                self.state.write(tag, key, raw, sink.tracked(sink.on_state_delivery))
            except KafkaException as exc:  # refused outright (no report will come)
                sink.fail("state", self.state.topic, exc)
                sink.raise_if_failed()
        self.metrics.state_records_written.inc(len(records))
        self._records_since_trim += len(records)
        self.metrics.state_bytes_written.inc(self.state.bytes_written - written)

    def advance_checkpoint(self) -> None:
        """Move the pending checkpoint on as far as confirmations allow (never blocks)."""
        ck = self._pending
        if ck is None or ck.records is None:
            return
        sink = self.sink
        if ck.state_mark < 0:
            if not sink.delivered_through(ck.events_mark):
                return
            if ck.records:
                self._write_records(ck.records)
            ck.state_mark = sink.mark()
        if not sink.delivered_through(ck.state_mark):
            return
        self._pending = None
        self._trim_after_records()
        if ck.offsets:
            self.sink.raise_if_failed()  # a refusal after the mark still stops every commit
            try:
                self.consumer.commit(offsets=ck.offsets, asynchronous=True)
            except KafkaException as exc:
                log.warning("offset commit failed: %s", exc)
                return
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - ck.started)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None:
            # e.g. a rebalance in progress: redelivered later (at least once)
            log.warning("offset commit failed: %s", err)
            return
        for tp in partitions:
            if tp.error is None and (tp.topic, tp.partition) in self._assigned:
                self._committed[(tp.topic, tp.partition)] = tp.offset

    def _abandon(self) -> None:
        """Drop a pending checkpoint (a synchronous one supersedes it); its keys stay dirty."""
        ck, self._pending = self._pending, None
        if ck is None:
            return
        for key, _, _ in ck.buffers:
            self.buffer.mark_dirty(key)
        for key, p in ck.deleted:
            self._deleted.setdefault(key, p)
        if ck.records is not None and ck.state_mark < 0:
            for tag, key, raw in ck.records:
                if raw is None:
                    self._deleted.setdefault(key, tag)
                else:
                    self.buffer.mark_dirty(key)

    def _write_state(self, partitions: set[int] | None) -> None:
        records = [rec for key, _ in self.buffer.take_dirty(partitions)
                   if (exp := self.buffer.export(key)) is not None
                   and (rec := self._state_record(key, exp)) is not None]
        for key, p in list(self._deleted.items()):
            if partitions is not None and p not in partitions:
                continue
            del self._deleted[key]
            if 0 <= p < self._state_partitions:
                records.append((p, key, None))
        self._write_records(records)

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
                if self._pending_art is not None or (len(self.batcher) and (
                        len(self._inflight) < self.workers or self.batcher.due())):
                    self.submit_batch()  # (a new model is swapped in there, even when idle)
                self.sink.poll()
                now = time.monotonic()
                if now - last_commit >= cfg.commit_interval_s:
                    self.begin_checkpoint()
                    last_commit = time.monotonic()
                self.advance_checkpoint()
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
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            self.consumer.close()  # leaves the group at once
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer close: %s", exc)
        self.sink.close(timeout)


class ModelWatcher(threading.Thread):
    """Polls the model directory; loads a new valid version off the hot path, refuses a bad one.

    A change is noticed through ``metadata.json`` (written last by ``train``). The new
    artifact must keep the window and feature count (the live buffers depend on them) and
    is warmed up (traced) before the detector switches to it at its next batch.
    """

    def __init__(self, model_dir: str, interval_s: float, detector: Detector) -> None:
        super().__init__(name="model-watcher", daemon=True)
        self.model_dir = model_dir
        self.interval_s = interval_s
        self.detector = detector
        self._seen = self._signature()
        self._halt = threading.Event()

    def _signature(self) -> tuple[int, int, int, int]:
        sig = []
        for name in ("metadata.json", "model.keras"):
            try:
                st = os.stat(os.path.join(self.model_dir, name))
                sig += [st.st_mtime_ns, st.st_size]
            except OSError:
                sig += [-1, -1]
        return (sig[0], sig[1], sig[2], sig[3])

    def stop(self) -> None:
        self._halt.set()

    def check(self) -> None:
        sig = self._signature()
        if sig == self._seen:
            return
        time.sleep(0.2)  # let a writer finish the pair of files
        sig = self._signature()
        self._seen = sig
        det = self.detector
        try:
            art = load_artifact(self.model_dir)
            cur = det._pending_art or det.art
            if art.version == cur.version:
                return
            if (art.window, art.n_features, art.record_mode) != (
                    cur.window, cur.n_features, cur.record_mode):
                raise InputError(
                    f"{self.model_dir}: new model has window {art.window} x {art.n_features} "
                    f"feature(s), the running one {cur.window} x {cur.n_features}: restart to "
                    "change the window shape")
            art.model.fix_batch_shapes(det.cfg.max_batch)  # also warms the kernels up
        except InputError as exc:
            det.metrics.model_reloads.labels(result="refused").inc()
            log.error("new model refused, still serving %s: %s", det.art.version, exc)
            return
        det.offer_model(art)

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # never let the watcher die silently
                log.exception("model watcher")


def run_service(options: Mapping[str, Any]) -> int:
    """``stream-detector run``: load the model, serve health and metrics, run until SIGTERM."""
    from stream_detector.kafka.admin import ensure_topics

    cfg = ServiceConfig.from_options(options)
    set_threads(cfg.inference_threads, cfg.inference_workers)
    art = load_artifact(cfg.model_dir)
    metrics = Metrics.create()
    try:
        topics = [t for t in (cfg.output_topic, cfg.dlq_topic) if t]
        ensure_topics(cfg.bootstrap_servers, topics, partitions=1, timeout=15,
                      client_config=producer_properties(cfg.kafka))
    except (TopicSetupError, KafkaException, ValueError) as exc:
        log.warning("could not make sure the output topics exist: %s", exc)
    # a window's score must not depend on its batch; the check also warms every shape up
    shapes = art.model.fix_batch_shapes(cfg.max_batch)
    log.info("scoring at batch shapes %s (checked bit-identical to %d)",
             ", ".join(map(str, shapes)), cfg.max_batch)
    det = Detector(cfg, art, metrics)
    server = None
    if cfg.metrics_port:
        try:
            server = HealthServer(cfg.metrics_host, cfg.metrics_port, metrics.registry,
                                  det.alive, det.ready).start()
        except OSError as exc:
            raise InputError(f"--metrics-port {cfg.metrics_port}: cannot listen ({exc})") from None
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, det.stop)
    log.info("model %s %s (window %d, hop %d); consuming %s as group %s",
             art.kind, art.version, art.window, det.hop, cfg.input_topic, cfg.group_id)
    watcher = None
    if cfg.model_poll_s > 0:
        watcher = ModelWatcher(cfg.model_dir, cfg.model_poll_s, det)
        watcher.start()
    # TensorFlow and Keras leave ~1M long-lived objects; a full collection walking them all
    # stalls the loop for hundreds of ms. Freeze what exists now out of the collector's way.
    gc.collect()
    gc.freeze()
    try:
        return det.run()
    finally:
        if watcher is not None:
            watcher.stop()
        if server is not None:
            server.stop()
