"""Operator feedback in the running detector: the book (:mod:`stream_detector.feedback`)
fed by the feedback topic (:mod:`stream_detector.feedback_topic`), by the events the
detector publishes and by restored changelog records; it mutes alarms in
:meth:`InferenceMixin._decide <stream_detector.service.inference.InferenceMixin._decide>`.
"""

from __future__ import annotations

import logging

from stream_detector.feedback import FeedbackBook
from stream_detector.feedback_topic import FeedbackReader
from stream_detector.kafka.properties import common_properties
from stream_detector.service.base import DetectorBase

log = logging.getLogger(__name__)


class FeedbackMixin(DetectorBase):
    """Reads ``--feedback-topic`` into the detector's :class:`FeedbackBook`."""

    feedback: FeedbackBook | None
    _feedback_reader: FeedbackReader | None

    def _init_feedback(self) -> None:
        """Create the book and its reader when ``--feedback-topic`` is given."""
        self.feedback, self._feedback_reader = None, None
        cfg, m = self.cfg, self.metrics
        if not cfg.feedback_topic:
            return

        def counted(result: str) -> None:
            m.feedback_messages.labels(result=result).inc()

        # a key's label changed without a new point: its changelog record is written again
        book = FeedbackBook(cfg.feedback, changed=self.buffer.mark_dirty, counted=counted)
        self.feedback = book
        self.sink.listeners.append(book.note)  # the incidents it can be told about
        m.feedback_pending.set_function(lambda: book.pending)
        self._feedback_reader = FeedbackReader(
            cfg.feedback_topic, {**common_properties(cfg.bootstrap_servers), **cfg.kafka},
            book, counted)

    def _poll_feedback(self, now: float) -> None:
        if self._feedback_reader is not None:
            self._feedback_reader.poll(now)

    def _restore_feedback(self, key: str, raw: bytes | None, partition: int) -> None:
        """A restored key's feedback state (None: none); unreadable bytes are counted
        (``state_records_skipped_total{reason="feedback_state"}``), the key starts without."""
        if self.feedback is None:
            return
        try:
            self.feedback.restore(key, raw)
        except ValueError as exc:
            log.warning("feedback state of %r (partition %d) not restored: %s", key,
                        partition, exc)
            self.metrics.state_records_skipped.labels(reason="feedback_state").inc()

    def _close_feedback(self) -> None:
        if self._feedback_reader is not None:
            self._feedback_reader.close()
