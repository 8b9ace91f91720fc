"""Rebalances: restore the changelog state of assigned partitions (paused until it is back,
and while it is unusable with --state-required), checkpoint revoked ones before handing
them on, forget lost ones."""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

from stream_detector.errors import DeliveryError
from stream_detector.kafka import admin
from stream_detector.kafka.exceptions import TopicSetupError
from stream_detector.kafka.properties import producer_properties
from stream_detector.service.base import TP, DetectorBase
from stream_detector.service.restoring import Records
from stream_detector.state import DamagedStateRecord, RestoreCancelled
from stream_detector.state import decode as decode_state

log = logging.getLogger(__name__)


class RebalanceMixin(DetectorBase):
    """Partition assignment, revocation and loss, and the changelog state they move."""

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", sorted(p.partition for p in partitions))
        for tp in partitions:
            self._assigned.add((tp.topic, tp.partition))
        if self.state is None or not partitions:
            return
        # consume none of them until their state is back; the restore runs beside the
        # loop (restoring.py), which resumes them when it has applied it
        if self._incremental:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        consumer.pause(partitions)
        self._restorer.start({(tp.topic, tp.partition) for tp in partitions})

    def _fetch_state(self, partitions: list[int], cancel: threading.Event
                     ) -> tuple[int, Records]:
        """(In the restore thread.) Make sure the changelog has ``partitions`` and read them."""
        assert self.state is not None
        needed = max(partitions) + 1
        have = self._state_partitions
        if needed > have:
            # as many state partitions as the input topic has, so that replicas
            # starting together agree on the count (some brokers cannot grow topics)
            have = admin.ensure_changelog(
                self.cfg.bootstrap_servers, self.state.topic, needed,
                producer_properties(self.cfg.kafka), like=self.cfg.input_topic)
        if needed > have:
            raise TopicSetupError(f"{have} partition(s), {needed} needed")
        t0 = time.perf_counter()
        records = self.state.restore(partitions, cancel=cancel)
        self.metrics.state_restore_seconds.observe(time.perf_counter() - t0)
        return have, records

    def _finish_restores(self) -> None:
        """Apply the restores that ended and resume their partitions; a failed one leaves
        them paused (--state-required) or consumed without state, and not ready."""
        assert self.state is not None
        for tps, fut in self._restorer.finished():
            try:
                have, records = fut.result()
            except RestoreCancelled:
                continue
            except (TopicSetupError, KafkaException, TimeoutError) as exc:
                self._state_unusable(tps, f"{self.state.topic}: {exc}")
                continue
            except Exception as exc:  # never let a restore take the loop down
                log.exception("state restore")
                self._state_unusable(tps, f"{self.state.topic}: {exc!r}")
                continue
            self._state_partitions = max(self._state_partitions, have)
            self._apply_state(records)
            if tps & self._state_missing:
                log.info("state topic usable again for partitions %s",
                         sorted(p for _, p in tps))
            self._state_missing -= tps
            self.consumer.resume([TopicPartition(t, p) for t, p in tps])

    def _state_unusable(self, tps: set[TP], why: str) -> None:
        self._state_error = why
        self._state_missing |= tps
        log.error("state topic unusable (%s): %s", why,
                  "partitions paused until it works (--state-required)"
                  if self.cfg.state_required else "consuming without state")
        if not self.cfg.state_required:
            self.consumer.resume([TopicPartition(t, p) for t, p in tps])

    def _retry_state(self, now: float) -> None:
        """Every 5 s, try the changelog again for the partitions it failed."""
        if not self._state_missing or now < self._state_retry:
            return
        self._state_retry = now + 5.0
        tps = self._state_missing - self._restorer.pending
        if not tps:
            return
        if self.cfg.state_required:  # still paused: restore, then resume
            self._restorer.start(tps)
            return
        # consumed meanwhile: no restore (it would go back in time), checkpoint on
        assert self.state is not None
        try:
            self._state_partitions = admin.ensure_changelog(
                self.cfg.bootstrap_servers, self.state.topic,
                max(p for _, p in tps) + 1, producer_properties(self.cfg.kafka),
                like=self.cfg.input_topic)
        except (TopicSetupError, KafkaException) as exc:
            self._state_error = str(exc)
            return
        self._state_missing -= {tp for tp in tps if tp[1] < self._state_partitions}

    def _apply_state(self, records: Records) -> None:
        """Load restored changelog records into the buffers, incidents and decider.

        A record that cannot be used is skipped and counted
        (``state_records_skipped_total{reason}``): its key starts empty (``damaged``,
        ``other_layout``) or without its decision state (``decision_state``); the rest of
        the partition is restored.
        """
        n = 0
        w, f = self.art.window, self.art.n_features
        skipped = self.metrics.state_records_skipped
        topic = self.state.topic if self.state is not None else "the changelog"
        for p, recs in records.items():
            for key, raw in recs.items():
                try:
                    ks = decode_state(raw, w, f)
                except DamagedStateRecord as exc:
                    log.error("state record of key %r in partition %d of %s skipped, the "
                              "key starts empty: %s", key, p, topic, exc)
                    skipped.labels(reason="damaged").inc()
                    continue
                if ks is None:
                    skipped.labels(reason="other_layout").inc()
                    continue
                self.buffer.restore(key, p, ks.count, ks.last_offset, ks.values, ks.ts)
                self.tracker.restore(key, ks.incident)
                if ks.decision:
                    try:
                        self.decider.restore(key, ks.decision)
                    except ValueError as exc:  # written by another decision method
                        log.warning("decision state of %r (partition %d) not restored: %s",
                                    key, p, exc)
                        skipped.labels(reason="decision_state").inc()
                    except Exception:  # the decider's bug: its state, not the loop
                        log.exception("decision state of %r (partition %d) not restored",
                                      key, p)
                        skipped.labels(reason="decision_state").inc()
                n += 1
        self.metrics.state_restored_keys.inc(n)
        log.info("restored %d series of partitions %s", n, sorted(records))

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
        self._restorer.forget(tps)
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
