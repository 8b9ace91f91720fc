"""The Prometheus metric bundle of the service (names are part of the public contract)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from stream_detector.batch_histogram import BatchHistogram
from stream_detector.feedback import RESULTS as FEEDBACK_RESULTS
from stream_detector.gaps import GAP_ACTIONS
from stream_detector.window import TIMESTAMP_POLICIES

PREFIX = "stream_detector"

# Invalid-message reasons are a closed set, so the label stays bounded.
INVALID_REASONS = (
    "not_json",
    "not_object",
    "missing_key",
    "missing_value",
    "non_numeric",
    "non_finite",
    "feature_count",
    "oversize",
    "bad_timestamp",
    "timestamp_backwards",  # with --timestamp-policy dlq only
    "value_out_of_range",
    "bad_key",
)

# what a refused message was: an anomaly event, a dead letter, a state record
TOPIC_KINDS = ("events", "dlq", "state")

# why a state changelog record was not restored (or, decision_state, not in full)
STATE_SKIP_REASONS = ("damaged", "other_layout", "decision_state", "feedback_state",
                      "max_series")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_ERROR_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 100.0,
)
@dataclass(frozen=True)
class Metrics:
    """Every metric the service exports, registered on one registry."""

    registry: CollectorRegistry
    messages_consumed: Counter
    invalid_messages: Counter
    windows_scored: Counter
    anomalies: Counter
    events_published: Counter
    incidents_opened: Counter
    series_evicted: Counter
    reconstruction_error: BatchHistogram
    anomaly_threshold: Gauge
    inference_batch_size: Histogram
    inference_seconds: Histogram
    event_latency: Histogram
    active_series: Gauge
    consumer_lag: Gauge
    assigned_partitions: Gauge
    model_info: Gauge
    model_loaded_timestamp: Gauge
    model_reloads: Counter
    fine_tune_rounds: Counter
    fine_tune_windows: Counter
    last_message_timestamp: Gauge
    ready: Gauge
    state_restore_seconds: Histogram
    state_restored_keys: Counter
    state_records_skipped: Counter
    state_records_written: Counter
    state_bytes_written: Counter
    checkpoint_seconds: Histogram
    messages_skipped: Counter
    timestamps_backwards: Counter
    alarms_muted: Counter
    windows_unlearned: Counter
    gaps: Counter
    gap_points_filled: Counter
    delivery_failures: Counter
    state_ready: Gauge
    nonfinite_scores: Counter
    shadow_info: Gauge
    shadow_windows: Counter
    shadow_anomalies: Counter
    shadow_decisions: Counter
    shadow_agreement: Gauge
    shadow_keys_ready: Gauge
    feedback_messages: Counter
    feedback_muted: Counter
    feedback_pending: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> Metrics:
        """Build the bundle on ``registry`` (a fresh one when None, as tests want)."""
        reg = registry if registry is not None else CollectorRegistry()
        p = PREFIX
        # the standard process_* (memory, CPU, start time, fds) and python_info metrics, and
        # which build this is
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        from stream_detector import __version__

        Gauge(f"{p}_build_info", "The running build (value 1).", ["version"],
              registry=reg).labels(__version__).set(1)
        m = cls(
            registry=reg,
            messages_consumed=Counter(
                f"{p}_messages_consumed", "Input messages consumed (valid or not).", registry=reg
            ),
            invalid_messages=Counter(
                f"{p}_invalid_messages",
                "Input messages rejected as bad input, by reason.",
                ["reason"],
                registry=reg,
            ),
            windows_scored=Counter(
                f"{p}_windows_scored", "Windows scored by the model.", registry=reg
            ),
            anomalies=Counter(
                f"{p}_anomalies", "Windows whose score exceeded the threshold.", registry=reg
            ),
            events_published=Counter(
                f"{p}_events_published",
                "Anomaly events confirmed by the broker, by type.",
                ["type"],
                registry=reg,
            ),
            incidents_opened=Counter(
                f"{p}_incidents_opened", "Incidents opened (first anomalous window).", registry=reg
            ),
            series_evicted=Counter(
                f"{p}_series_evicted",
                "Series dropped from memory, by cause (max_series, idle, revoked).",
                ["cause"],
                registry=reg,
            ),
            reconstruction_error=BatchHistogram(
                f"{p}_reconstruction_error",
                "Reconstruction error of scored windows.",
                buckets=_ERROR_BUCKETS,
                registry=reg,
            ),
            anomaly_threshold=Gauge(
                f"{p}_anomaly_threshold",
                "Global threshold of the loaded model (per-key thresholds may differ).",
                registry=reg,
            ),
            inference_batch_size=Histogram(
                f"{p}_inference_batch_size",
                "Windows per batched model call.",
                buckets=_BATCH_BUCKETS,
                registry=reg,
            ),
            inference_seconds=Histogram(
                f"{p}_inference_seconds",
                "Wall time of one batched model call.",
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            event_latency=Histogram(
                f"{p}_event_latency_seconds",
                "From the input message's Kafka timestamp to the event's delivery confirmation.",
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            active_series=Gauge(
                f"{p}_active_series", "Series with a window buffer in memory.", registry=reg
            ),
            consumer_lag=Gauge(
                f"{p}_consumer_lag",
                "Messages behind the partition end, from librdkafka statistics.",
                ["topic", "partition"],
                registry=reg,
            ),
            assigned_partitions=Gauge(
                f"{p}_assigned_partitions", "Input partitions assigned to this replica.", registry=reg
            ),
            model_info=Gauge(
                f"{p}_model_info",
                "The loaded model (value 1), labelled by kind, version and window.",
                ["model", "version", "window"],
                registry=reg,
            ),
            model_loaded_timestamp=Gauge(
                f"{p}_model_created_timestamp_seconds",
                "Unix time when the loaded model artifact was trained.",
                registry=reg,
            ),
            model_reloads=Counter(
                f"{p}_model_reloads",
                "Model hot reloads, by result: loaded (a new version accepted, into the "
                "shadow or serving at once), promoted (it serves), refused (a bad artifact "
                "or a failed promotion gate).",
                ["result"],
                registry=reg,
            ),
            fine_tune_rounds=Counter(
                f"{p}_fine_tune_rounds",
                "Online fine-tuning rounds run (--fine-tune-every).",
                registry=reg,
            ),
            fine_tune_windows=Counter(
                f"{p}_fine_tune_windows",
                "Scored windows seen by online fine-tuning, by result (learnt: passed the "
                "guard and buffered; refused: above the guard).",
                ["result"],
                registry=reg,
            ),
            last_message_timestamp=Gauge(
                f"{p}_last_message_timestamp_seconds",
                "Unix time when the last input message was consumed.",
                registry=reg,
            ),
            ready=Gauge(f"{p}_ready", "1 when the model is loaded and partitions are assigned.",
                        registry=reg),
            state_restore_seconds=Histogram(
                f"{p}_state_restore_seconds",
                "Time to restore window state of newly assigned partitions from the changelog.",
                buckets=_LATENCY_BUCKETS + (30.0, 60.0),
                registry=reg,
            ),
            state_restored_keys=Counter(
                f"{p}_state_restored_keys", "Series restored from the state changelog.",
                registry=reg,
            ),
            state_records_skipped=Counter(
                f"{p}_state_records_skipped",
                "State changelog records not restored, by reason: damaged (cut or garbage: "
                "the key starts empty), other_layout (another model's window or features, "
                "another version), decision_state (the window was restored, the decision "
                "method refused its own state), max_series (beyond --max-series: not "
                "loaded, kept in the changelog).",
                ["reason"],
                registry=reg,
            ),
            state_records_written=Counter(
                f"{p}_state_records_written",
                "Records written to the state changelog (changed keys and tombstones).",
                registry=reg,
            ),
            state_bytes_written=Counter(
                f"{p}_state_bytes_written", "Bytes written to the state changelog.", registry=reg
            ),
            checkpoint_seconds=Histogram(
                f"{p}_checkpoint_seconds",
                "Checkpoint wall time: flush events, write state, commit offsets.",
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            messages_skipped=Counter(
                f"{p}_messages_skipped",
                "Redelivered messages already contained in restored state (not applied twice).",
                registry=reg,
            ),
            timestamps_backwards=Counter(
                f"{p}_timestamps_backwards",
                "Points whose timestamp is before their key's previous point's (in offset "
                "order), by what --timestamp-policy did: accept (used in arrival order), "
                "drop, dlq.",
                ["action"],
                registry=reg,
            ),
            alarms_muted=Counter(
                f"{p}_alarms_muted", "Alarms a --rules rule muted, by cause (maintenance, "
                "direction, deviation) and rule name.", ["cause", "rule"], registry=reg),
            windows_unlearned=Counter(
                f"{p}_windows_unlearned", "Windows a learn: false maintenance window of "
                "--rules kept from the decider (never decided), by rule name.", ["rule"],
                registry=reg),
            gaps=Counter(
                f"{p}_gaps",
                "Gaps in a key's timestamps (a step longer than --gap-factor times its "
                "cadence), by what --gap-policy did: filled (previous, linear) or restarted "
                "(restart, or a gap longer than --gap-max-fill).",
                ["action"],
                registry=reg,
            ),
            gap_points_filled=Counter(
                f"{p}_gap_points_filled",
                "Points filled into gaps by --gap-policy previous or linear (synthetic: "
                "they complete windows, none is scored at its own time).",
                registry=reg,
            ),
            delivery_failures=Counter(
                f"{p}_delivery_failures",
                "Messages the broker refused for good, by topic kind (events, dlq, state); "
                "after the first the detector commits nothing more, goes not-ready and "
                "exits 1.",
                ["topic_kind"],
                registry=reg,
            ),
            state_ready=Gauge(
                f"{p}_state_ready",
                "1 when the state changelog is usable for every assigned partition (or "
                "state is off).",
                registry=reg,
            ),
            nonfinite_scores=Counter(
                f"{p}_nonfinite_scores",
                "Windows whose reconstruction error is inf or NaN (e.g. a value near the "
                "float32 limit): not decided, kept out of every decision history.",
                registry=reg,
            ),
            shadow_info=Gauge(
                f"{p}_shadow_info",
                "The model version in shadow (value 1; none while no candidate is).",
                ["model", "version"],
                registry=reg,
            ),
            shadow_windows=Counter(
                f"{p}_shadow_windows",
                "Windows decided by a candidate model in shadow (never published).",
                registry=reg,
            ),
            shadow_anomalies=Counter(
                f"{p}_shadow_anomalies", "Windows a candidate model in shadow flagged.",
                registry=reg,
            ),
            shadow_decisions=Counter(
                f"{p}_shadow_decisions",
                "Windows decided by both the serving and the shadow model, by whether "
                "their alarms agree (agree, disagree).",
                ["agreement"],
                registry=reg,
            ),
            shadow_agreement=Gauge(
                f"{p}_shadow_agreement_ratio",
                "Share of the current (else the last) shadow's windows on which its alarm "
                "agreed with the serving model's.",
                registry=reg,
            ),
            shadow_keys_ready=Gauge(
                f"{p}_shadow_keys_ready_ratio",
                "Share of the keys the shadow has scored that have --shadow-windows windows "
                "(it is promoted at 1).",
                registry=reg,
            ),
            feedback_messages=Counter(
                f"{p}_feedback_messages",
                "Feedback messages read (--feedback-topic), by what they came to: applied "
                "(a key's label changed here), duplicate (already in effect), pending (its "
                "incident not known here: held), malformed (ignored), expired (held too "
                "long: dropped). A pending message counts again when it resolves.",
                ["result"],
                registry=reg,
            ),
            feedback_muted=Counter(
                f"{p}_feedback_muted",
                "Alarms muted by operator feedback: below a false_positive incident's level "
                "(not anomalous, no incident).",
                registry=reg,
            ),
            feedback_pending=Gauge(
                f"{p}_feedback_pending",
                "Feedback messages held for incidents not known here (other replicas' keys).",
                registry=reg,
            ),
        )
        for kind in TOPIC_KINDS:
            m.delivery_failures.labels(topic_kind=kind)
        for reason in INVALID_REASONS:
            m.invalid_messages.labels(reason=reason)
        for kind in ("opened", "closed", "window"):
            m.events_published.labels(type=kind)
        for cause in ("max_series", "idle", "revoked"):
            m.series_evicted.labels(cause=cause)
        for result in ("loaded", "promoted", "refused"):
            m.model_reloads.labels(result=result)
        for agreement in ("agree", "disagree"):
            m.shadow_decisions.labels(agreement=agreement)
        for reason in STATE_SKIP_REASONS:
            m.state_records_skipped.labels(reason=reason)
        for result in FEEDBACK_RESULTS:
            m.feedback_messages.labels(result=result)
        for action in TIMESTAMP_POLICIES:
            m.timestamps_backwards.labels(action=action)
        for action in GAP_ACTIONS:
            m.gaps.labels(action=action)
        return m

    def rules_loaded(self, names: Sequence[str], causes: Sequence[str]) -> None:
        """Show every (cause, rule) of a rules file at 0 from the start."""
        for name in names:
            self.windows_unlearned.labels(rule=name)
            for cause in causes:
                self.alarms_muted.labels(cause=cause, rule=name)
