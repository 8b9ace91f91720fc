"""What the detector's parts share: its attributes, as the mixins of
:class:`~stream_detector.service.loop.Detector` see them, and the window's metadata."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, Message

from stream_detector.artifact import Artifact
from stream_detector.batcher import Batch, MicroBatcher
from stream_detector.decision import Decider
from stream_detector.finetune import FineTuner
from stream_detector.incidents import IncidentTracker
from stream_detector.metrics import Metrics
from stream_detector.records import Source, WindowMeta
from stream_detector.rules import Rules
from stream_detector.sink import EventSink
from stream_detector.state import StateStore
from stream_detector.window import WindowBuffer

if TYPE_CHECKING:
    from stream_detector.feedback import FeedbackBook
    from stream_detector.service.checkpoint import Checkpoint
    from stream_detector.service.config import ServiceConfig
    from stream_detector.service.partitions import Partitions
    from stream_detector.service.restoring import Restorer
    from stream_detector.service.shadow import Shadow

TP = tuple[str, int]

# what the batcher carries beside each window: (key, the message that completed it,
# start_ts, end_ts); only the few windows that cause an event get their WindowMeta
MetaRow = tuple[str, Message, float, float]


class InFlight(NamedTuple):
    """A batch submitted to inference: its sequence number, windows, keys and future, and
    what serves it (the model that scores it, the decider that decides it, the shadow
    beside them), fixed at submit."""

    seq: int
    batch: Batch[MetaRow]
    keys: list[str]
    future: Future[Any]
    art: Artifact
    decider: Decider
    shadow: Shadow | None
    # input partitions revoked or lost since submit: their windows are dropped, not decided
    dropped: set[int]


def kafka_ts(msg: Message) -> float | None:
    """The message's Kafka timestamp in epoch seconds, None when it has none."""
    ts_type, ts_ms = msg.timestamp()
    return ts_ms / 1000.0 if ts_type != TIMESTAMP_NOT_AVAILABLE and ts_ms > 0 else None


def window_meta(row: MetaRow) -> WindowMeta:
    key, msg, start_ts, end_ts = row
    return WindowMeta(key, Source(msg.topic(), msg.partition(), msg.offset()), start_ts,
                      end_ts, kafka_ts(msg) or 0.0)


class DetectorBase:
    """The attributes every part of the detector uses (set in ``Detector.__init__``)."""

    cfg: ServiceConfig
    art: Artifact
    metrics: Metrics
    hop: int
    buffer: WindowBuffer
    batcher: MicroBatcher[MetaRow]
    tracker: IncidentTracker
    decider: Decider
    rules: Rules | None
    tuner: FineTuner | None
    consumer: Consumer
    sink: EventSink
    state: StateStore | None
    feedback: FeedbackBook | None  # with --feedback-topic
    workers: int
    max_inflight: int
    _pool: ThreadPoolExecutor
    _inflight: deque[InFlight]
    _submitted: int
    _pending: Checkpoint | None
    _pending_art: Artifact | None
    _shadow: Shadow | None
    _stop: bool
    _positions: dict[TP, int]
    _committed: dict[TP, int]
    parts: Partitions
    _deleted: dict[str, int]
    _records_since_trim: int
    _state_partitions: int
    _state_error: str
    _state_retry: float
    _restorer: Restorer
    _incremental: bool  # the group's rebalances are incremental (cooperative)

    if TYPE_CHECKING:  # implemented by the mixins, called across them
        def checkpoint(self, only: set[TP] | None = None, timeout: float = 30.0,
                       strict: bool = True) -> bool: ...
        def score_batch(self) -> int: ...
        def submit_batch(self) -> None: ...
        def _abandon(self) -> None: ...
        def _scored(self, ck: Checkpoint) -> None: ...
        def _close_incident(self, key: str, cause: str, partition: int) -> None: ...
        def _swap_model(self) -> None: ...
        def _check_shadow(self) -> None: ...
        def _reload_due(self) -> bool: ...
        def _restore_feedback(self, key: str, raw: bytes | None, partition: int) -> None: ...
