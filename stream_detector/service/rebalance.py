"""Rebalances: restore the changelog state of assigned partitions (paused until it is back,
and while it is unusable with --state-required), checkpoint revoked ones before handing
them on, forget lost ones."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaException, TopicPartition

from stream_detector.errors import DeliveryError
from stream_detector.kafka import admin
from stream_detector.kafka.exceptions import TopicSetupError
from stream_detector.kafka.properties import producer_properties
from stream_detector.service.base import TP, DetectorBase
from stream_detector.service.partitions import Life
from stream_detector.service.restoring import Job, Restored
from stream_detector.state import DamagedStateRecord, RestoreCancelled
from stream_detector.state import decode as decode_state

log = logging.getLogger(__name__)


class RebalanceMixin(DetectorBase):
    """Partition assignment, revocation and loss, and the changelog state they move."""

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", sorted(p.partition for p in partitions))
        tps = {(tp.topic, tp.partition) for tp in partitions}
        self.parts.assign(tps, restoring=self.state is not None)
        if self.state is None or not partitions:
            return
        # consume none of them until their state is back; the restore runs beside the
        # loop (restoring.py), which resumes them when it has applied it
        if self._incremental:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        consumer.pause(partitions)
        self._restorer.start({tp: self.parts.generation(tp) for tp in tps})

    def _fetch_state(self, job: Job) -> int:
        """(In the restore thread.) Make sure the changelog has the job's partitions and
        read them; returns the changelog's partition count."""
        assert self.state is not None
        partitions = job.partitions
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
        self.state.restore(partitions, timeout=self.cfg.state_restore_timeout_s,
                           cancel=job.cancel, progress=job.progress, wants=job.wants,
                           max_keys=self.cfg.max_series)
        self.metrics.state_restore_seconds.observe(time.perf_counter() - t0)
        return have

    def _finish_restores(self) -> None:
        """Apply the restores that ended and resume their partitions; a failed one leaves
        them paused (--state-required) or consumed without state, and not ready.

        Only the partitions still restoring in the assignment the job was started for are
        applied (:meth:`Partitions.may_apply`): a partition revoked or lost meanwhile is
        another replica's now, and so are its keys."""
        assert self.state is not None
        for tps, job in self._restorer.finished():
            tps = {tp for tp in tps if self.parts.may_apply(tp, job.generations[tp])}
            if not tps:
                continue
            assert job.future is not None
            try:
                have = job.future.result()
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
            let_go = job.let_go
            if let_go:
                log.warning("%d state record(s) of partitions %s not loaded: more keys than "
                            "--max-series %d (kept in the changelog)", let_go,
                            sorted(p for _, p in tps), self.cfg.max_series)
                self.metrics.state_records_skipped.labels(reason="max_series").inc(let_go)
            self._apply_state(job.records({p for _, p in tps}))
            if tps & self.parts.missing:
                log.info("state topic usable again for partitions %s",
                         sorted(p for _, p in tps))
            self.parts.restored(tps)
            self.consumer.resume([TopicPartition(t, p) for t, p in tps])

    def _state_unusable(self, tps: set[TP], why: str) -> None:
        self._state_error = why
        self.parts.failed(tps)
        log.error("state topic unusable (%s): %s", why,
                  "partitions paused until it works (--state-required)"
                  if self.cfg.state_required else "consuming without state")
        if not self.cfg.state_required:
            self._restorer.drop_progress(tps)
            self.consumer.resume([TopicPartition(t, p) for t, p in tps])

    def _retry_state(self, now: float) -> None:
        """Every 5 s, try the changelog again for the partitions it failed."""
        if not self.parts.missing or now < self._state_retry:
            return
        self._state_retry = now + 5.0
        tps = self.parts.in_state(Life.UNUSABLE)
        if not tps:
            return
        if self.cfg.state_required:  # still paused: restore (resumed), then resume
            self.parts.retrying(tps)
            self._restorer.start({tp: self.parts.generation(tp) for tp in tps})
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
        self.parts.usable({tp for tp in tps if tp[1] < self._state_partitions})

    def _apply_state(self, records: Mapping[int, Mapping[str, bytes]] | Restored) -> None:
        """Load restored changelog records into the buffers, incidents and decider.

        ``records``: (partition, key, record) least recently written first, or per
        partition. A record that cannot be used is skipped and counted
        (``state_records_skipped_total{reason}``): its key starts empty (``damaged``,
        ``other_layout``) or without its decision state (``decision_state``); the rest of
        the partition is restored. Never past ``--max-series``: restoring evicts (and so
        deletes) nothing; the most recently written keys that fit are loaded, the others
        (``max_series``) keep their state in the changelog.
        """
        n = 0
        w, f = self.art.window, self.art.n_features
        skipped = self.metrics.state_records_skipped
        topic = self.state.topic if self.state is not None else "the changelog"
        flat = ([(p, key, raw) for p, recs in records.items() for key, raw in recs.items()]
                if isinstance(records, Mapping) else list(records))
        cap = self.cfg.max_series
        new = [i for i, (_, key, _) in enumerate(flat) if key not in self.buffer]
        if cap and len(new) > cap - len(self.buffer):
            out = new[:len(new) - max(cap - len(self.buffer), 0)]  # the oldest new ones
            skipped.labels(reason="max_series").inc(len(out))
            log.warning("%d restored series not loaded: --max-series %d reached (their "
                        "state stays in the changelog)", len(out), cap)
            gone = set(out)
            flat = [rec for i, rec in enumerate(flat) if i not in gone]
        parts: set[int] = set()
        for p, key, raw in flat:
            parts.add(p)
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
            self._restore_feedback(key, ks.feedback, p)
            n += 1
        self.metrics.state_restored_keys.inc(n)
        log.info("restored %d series of partitions %s", n, sorted(parts))

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
        self._forget(tps, lost=True)

    def _forget(self, tps: set[TP], lost: bool = False) -> None:
        """``tps`` are another replica's now: drop their restore, their windows still
        batched or in flight (never decided: they would recreate decider state and open
        incidents for keys no longer held here, and none would ever close them), their
        keys and offsets."""
        self._abandon()  # it may hold state and offsets of these partitions
        self._restorer.forget(tps)
        self._drop_windows({p for _, p in tps})
        if lost:
            self.parts.lose(tps)
        else:
            self.parts.revoke(tps)
        for tp in tps:
            self._positions.pop(tp, None)
            self._committed.pop(tp, None)
            self.buffer.drop_tag(tp[1], cause="revoked")
            try:
                self.metrics.consumer_lag.remove(tp[0], str(tp[1]))
            except KeyError:
                pass

    def _drop_windows(self, partitions: set[int]) -> None:
        """Windows of ``partitions`` batched or in flight are dropped when their batch
        comes back (:meth:`InferenceMixin._complete_one`)."""
        if len(self.batcher):
            self.submit_batch()
        for job in self._inflight:
            job.dropped.update(partitions)
