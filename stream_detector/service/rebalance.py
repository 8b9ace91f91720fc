"""Rebalances: restore the changelog state of assigned partitions (pausing them while it is
unusable, with --state-required), checkpoint revoked ones before handing them on, forget
lost ones."""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

from stream_detector.errors import DeliveryError
from stream_detector.kafka import admin
from stream_detector.kafka.exceptions import TopicSetupError
from stream_detector.kafka.properties import producer_properties
from stream_detector.service.base import TP, DetectorBase
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
                self._state_partitions = admin.ensure_changelog(
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
                self._state_partitions = admin.ensure_changelog(
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
