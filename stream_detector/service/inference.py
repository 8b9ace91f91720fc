"""Scoring: batches go to a pool of inference threads (TensorFlow releases the GIL, so
consumption goes on meanwhile); results are applied in submission order, decided, tracked
into incidents and published."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from stream_detector.artifact import Artifact
from stream_detector.batcher import Batch
from stream_detector.decision import (
    Decider,
    Decision,
    checks_seen,
    decide_windows,
    remap_seen,
)
from stream_detector.explain import Explained, to_units
from stream_detector.guards import finite_rows
from stream_detector.rules import CAUSE_NAMES, Rules
from stream_detector.service.base import DetectorBase, InFlight, MetaRow, window_meta
from stream_detector.service.shadow import Scored

log = logging.getLogger(__name__)


class InferenceMixin(DetectorBase):
    """Submit batches, apply their scores in order, decide and publish."""

    # the seam: when set, each batch drained from the batcher goes here instead of the
    # model (tests record batches without scoring them)
    on_batch: Callable[[Batch[MetaRow]], None] | None = None

    def _init_rules(self) -> None:
        """Bind ``--rules`` to the model's features (a feature it lacks: exit 2)."""
        cfg = self.cfg
        self.rules = (Rules(cfg.rules, self.art.features, str(cfg.rules_file))
                      if cfg.rules else None)
        if self.rules is not None:
            self.metrics.rules_loaded(self.rules.names, list(CAUSE_NAMES.values()))

    def submit_batch(self) -> None:
        """Hand the collected windows to the inference thread (one batched model call).

        Consumption and decoding go on while TensorFlow (which releases the GIL) scores, on
        up to ``workers`` threads at once; results are applied in submission order by
        :meth:`complete_ready`. The batch carries the model and decider that serve now,
        and the shadow's, so a promotion between submit and completion mislabels nothing.
        """
        if self._pending_art is not None:
            self._swap_model()
        if self._shadow is not None:
            self._check_shadow()
        if not len(self.batcher):
            return
        batch = self.batcher.drain()
        if self.on_batch is not None:
            self.on_batch(batch)
            return
        keys = [meta[0] for meta in batch.metas]
        art, tuner, m, shadow = self.art, self.tuner, self.metrics, self._shadow
        explain = self.cfg.explain
        cand = shadow.art if shadow is not None else None

        def infer() -> Scored:
            x = art.scalers.transform_windows(keys, batch.windows)
            t0 = time.perf_counter()
            explained = (art.model.explain_batch(x) if explain
                         else Explained.errors_only(art.model.score_batch(x)))
            seconds = time.perf_counter() - t0
            scores = explained.scores
            if tuner is not None:  # one worker then: no call ever sees half-updated weights
                learnt, refused = tuner.learnt, tuner.refused
                m.fine_tune_rounds.inc(tuner.after_batch(keys, x, scores))
                m.fine_tune_windows.labels(result="learnt").inc(tuner.learnt - learnt)
                m.fine_tune_windows.labels(result="refused").inc(tuner.refused - refused)
            shadow_scores = None
            if cand is not None and shadow is not None:
                try:  # the candidate's failure refuses it; this batch is served anyway
                    shadow_scores = np.asarray(cand.model.score_batch(
                        cand.scalers.transform_windows(keys, batch.windows)))
                    if shadow_scores.shape != (len(keys),):
                        raise ValueError(f"{shadow_scores.shape} scores for {len(keys)} "
                                         "windows")
                except Exception as exc:
                    shadow.fail("its scoring", exc)
                    shadow_scores = None
            return Scored(explained, seconds, shadow_scores)

        self._submitted += 1
        self._inflight.append(InFlight(self._submitted, batch, keys, self._pool.submit(infer),
                                       art, self.decider, shadow, set()))
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
        job = self._inflight.popleft()
        batch, keys = job.batch, job.keys
        explained, seconds, shadow_scores = job.future.result()
        scores = explained.scores
        m = self.metrics
        m.inference_seconds.observe(seconds)
        m.inference_batch_size.observe(len(batch))
        windows, metas = batch.windows, batch.metas
        if job.dropped:  # partitions revoked or lost since submit: not decided here
            scores, shadow_scores = self._drop_gone(job, scores, shadow_scores)
        keep = finite_rows(scores)
        if keep is not None:  # inf or NaN error: never decided, in no history, no event
            self._refuse_nonfinite(batch, scores, job.dropped)
            scores, windows = scores[keep], windows[keep]
            explained = explained.take(keep)
            keys = [keys[i] for i in keep.tolist()]
            metas = [metas[i] for i in keep.tolist()]
        n = len(keys)
        flags = np.zeros(0, dtype=bool)
        if n:
            flags = self._decide(job.art, job.decider, keys, scores, windows, metas,
                                 explained)
        sh = job.shadow
        if sh is not None and shadow_scores is not None and not sh.cancelled:
            done = np.zeros(len(batch), dtype=bool)
            full = np.zeros(len(batch), dtype=bool)
            at = slice(None) if keep is None else keep
            done[at] = True
            full[at] = flags
            try:
                sh.decide(batch, job.keys, shadow_scores, self.hop, full, done)
            except Exception as exc:  # the candidate's failure, never the loop's
                sh.fail("its decider", exc)
        ck = self._pending
        if ck is not None and ck.batch == job.seq:
            self._scored(ck)
        return n

    def _drop_gone(self, job: InFlight, scores: np.ndarray, shadow_scores: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores with NaN for the windows of partitions given away since ``job`` was
        submitted (so that neither the decider nor the shadow sees them)."""
        gone = np.array([meta[1].partition() in job.dropped for meta in job.batch.metas])
        if not gone.any():
            return scores, shadow_scores
        log.info("%d window(s) of partitions %s dropped: revoked or lost while scored",
                 int(gone.sum()), sorted(job.dropped))
        scores = np.array(scores, dtype=np.float64)
        scores[gone] = np.nan
        if shadow_scores is not None:
            shadow_scores = np.array(shadow_scores, dtype=np.float64)
            shadow_scores[gone] = np.nan
        return scores, shadow_scores

    def _refuse_nonfinite(self, batch: Batch[MetaRow], scores: np.ndarray,
                          dropped: set[int]) -> None:
        bad = np.flatnonzero(~np.isfinite(scores)
                             & np.array([m[1].partition() not in dropped
                                         for m in batch.metas]))
        if not len(bad):  # only dropped windows
            return
        self.metrics.nonfinite_scores.inc(len(bad))
        key, msg, _, _ = batch.metas[int(bad[0])]
        log.warning("%d window(s) with a non-finite reconstruction error skipped (not "
                    "decided), the first of %r ending at %s/%d@%d: a value too large for "
                    "the model's scale", len(bad), key, msg.topic(), msg.partition(),
                    msg.offset())

    def _decide(self, art: Artifact, decider: Decider, keys: list[str], scores: np.ndarray,
                windows: np.ndarray, metas: list[MetaRow], explained: Explained) -> np.ndarray:
        """Decide finite-scored windows with the decider of the model ``art`` that scored
        them, track incidents, publish what they cause (stamped with ``art``'s version,
        explained by ``explained``: the same windows' row of the model's call); returns
        the alarms."""
        m = self.metrics
        n = len(keys)
        decision = (decide_windows(decider, keys, scores, windows, self.hop)
                    if self.rules is None
                    else self._ruled(self.rules, art, decider, keys, scores, windows, metas,
                                     explained))
        thr, a_scores, flags = decision.threshold, decision.anomaly_score, decision.is_anomaly
        excursion, reasons = decision.excursion, decision.reason
        if self.feedback is not None:  # operator feedback: alarms under a false positive's level
            flags, excursion, muted = self.feedback.mute(
                keys, scores, flags, excursion, lambda i: metas[i][3], self.tracker.is_open)
            m.feedback_muted.inc(muted)
        m.windows_scored.inc(n)
        m.anomalies.inc(int(flags.sum()))
        m.reconstruction_error.observe_many(scores)
        tracker = self.tracker
        # events name the model that scored the window (an incident opened by one
        # version and closed after a promotion carries each one's on its own event)
        tracker.model, tracker.model_version = art.kind, art.version
        is_open = tracker.is_open
        # only anomalous windows, or windows of keys with an open incident (checked as we go:
        # an incident may open earlier in this very batch), can cause events; the keys
        # that can have one: open now, or flagged in this batch
        watch = {keys[i] for i in np.flatnonzero(flags).tolist()}
        watch.update(tracker.open_keys())
        seen = checks_seen(decider)
        for i, key in enumerate(keys if watch else ()):
            if key not in watch or not (flags[i] or is_open(key)):
                continue
            meta = window_meta(metas[i])
            events = tracker.observe(meta, float(scores[i]), float(thr[i]),
                                     float(a_scores[i]), bool(flags[i]), bool(excursion[i]),
                                     int(reasons[i]))
            if not events:
                continue
            detail = art.explainer.fields(art.scalers.for_key(key), windows[i, -1], explained,
                                          i, seen.get(i)) if explained.explains else {}
            for ev in events:
                ev.update(detail)
                if ev["type"] == "opened":
                    m.incidents_opened.inc()
                self.sink.publish(ev, meta.kafka_ts)
        return flags

    def _ruled(self, rules: Rules, art: Artifact, decider: Decider, keys: list[str],
               scores: np.ndarray, windows: np.ndarray, metas: list[MetaRow],
               explained: Explained) -> Decision:
        """The decision under ``--rules`` (:meth:`Rules.apply`, as ``score`` does), its
        muted alarms and unlearned windows counted."""
        hop = self.hop

        def decide(idx: np.ndarray | None) -> Decision:
            if idx is None:
                return decide_windows(decider, keys, scores, windows, hop)
            d = decide_windows(decider, [keys[i] for i in idx.tolist()], scores[idx],
                               windows[idx], hop)
            remap_seen(decider, idx)  # what the checks saw, by place in the whole batch
            return d

        def expected(idx: np.ndarray) -> np.ndarray:  # in input units, as score's
            return np.array([to_units(art.scalers.for_key(keys[i]), explained.expected[i])
                             for i in idx.tolist()]).reshape(len(idx), -1)

        ends = np.fromiter((meta[3] for meta in metas), np.float64, len(metas))
        d, muting = rules.apply(decide, keys, ends, art.thresholds.for_key, windows[:, -1, :],
                                expected)
        muted, unlearned = rules.tally(muting)
        m = self.metrics
        for (cause, name), count in muted.items():
            m.alarms_muted.labels(cause=cause, rule=name).inc(count)
        for name, count in unlearned.items():
            m.windows_unlearned.labels(rule=name).inc(count)
        return d
