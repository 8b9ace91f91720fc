"""``ServiceConfig``: everything the running detector needs, validated once.

Every default comes from the ``run`` command's option table (:data:`config.RUN_OPTS`),
so a config built in code (``demo``, tests) gets what ``stream-detector run`` gets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stream_detector.config import RUN_OPTS
from stream_detector.errors import InputError
from stream_detector.feedback import FeedbackOptions
from stream_detector.finetune import FineTuneOptions
from stream_detector.gaps import GapPolicy, gap_policy
from stream_detector.kafka.properties import refuse_delivery_overrides
from stream_detector.models.base import plan_threads
from stream_detector.rules import Rule, read_rules
from stream_detector.source import Fields

_RUN_DEFAULTS = {o.name: o.default for o in RUN_OPTS}


def run_default(name: str) -> Any:
    """The default of ``run``'s option ``name`` (the one place it is defined)."""
    return _RUN_DEFAULTS[name]


@dataclass(frozen=True)
class ServiceConfig:
    """Everything ``run`` needs, validated once by the CLI.

    ``inference_workers`` and ``inference_threads`` of 0 mean automatic and are resolved
    here (:func:`plan_threads`; one worker with fine-tuning).
    """

    bootstrap_servers: str
    input_topic: str
    output_topic: str
    model_dir: str
    dlq_topic: str | None = run_default("dlq_topic")
    feedback_topic: str | None = run_default("feedback_topic")
    feedback: FeedbackOptions = field(default_factory=lambda: FeedbackOptions(
        run_default("feedback_margin"), run_default("feedback_bound"),
        run_default("feedback_half_life_s"), run_default("feedback_max_pending")))
    group_id: str = run_default("group_id")
    metrics_port: int = run_default("metrics_port")
    metrics_host: str = run_default("metrics_host")
    hop: int | None = run_default("hop")
    max_batch: int = run_default("max_batch")
    max_batch_latency_s: float = run_default("max_batch_latency_ms") / 1000.0
    max_series: int = run_default("max_series")
    idle_ttl_s: float = run_default("idle_ttl_s")
    events: str = run_default("events")
    explain: bool = run_default("explain") == "on"
    incident_gap: int | None = run_default("incident_gap")
    commit_interval_s: float = run_default("commit_interval_ms") / 1000.0
    drain_timeout_s: float = run_default("drain_timeout_s")
    max_message_bytes: int = run_default("max_message_bytes")
    state: str = run_default("state")
    state_topic: str | None = run_default("state_topic")
    state_required: bool = run_default("state_required")
    # a restore fails after this long without progress (not in total: a large changelog
    # takes as long as it takes while records keep arriving)
    state_restore_timeout_s: float = 60.0
    model_poll_s: float = run_default("model_poll_s")
    shadow_windows: int = run_default("shadow_windows")
    shadow_coverage: float = run_default("shadow_coverage")
    shadow_max_s: float = run_default("shadow_max_s")
    model_max_bytes: int = run_default("model_max_bytes")
    promotion_gate: str = run_default("promotion_gate")
    gate_input: tuple[str, ...] = ()
    gate_format: str = run_default("gate_format")
    gate_margin: float = run_default("gate_margin")
    decision: str | None = run_default("decision")
    decision_params: Mapping[str, str] = field(default_factory=dict)
    fine_tune: FineTuneOptions = field(default_factory=FineTuneOptions)
    inference_workers: int = run_default("inference_workers")  # model calls in parallel
    inference_threads: int = run_default("inference_threads")  # TensorFlow threads per call
    fields: Fields = field(default_factory=Fields)
    kafka: Mapping[str, str] = field(default_factory=dict)
    timestamp_policy: str = run_default("timestamp_policy")  # accept, drop, dlq
    rules_file: str | None = run_default("rules")
    rules: tuple[Rule, ...] = ()  # read from rules_file (bound to the model's features later)
    gap_policy: str = run_default("gap_policy")  # off, previous, linear, restart
    gap_max_fill: int | None = run_default("gap_max_fill")  # None: half the window
    gap_factor: float = run_default("gap_factor")

    def __post_init__(self) -> None:
        # fine-tuning updates the weights between calls: calls must not overlap
        workers, threads = plan_threads(1 if self.fine_tune.enabled else self.inference_workers,
                                        self.inference_threads)
        object.__setattr__(self, "inference_workers", workers)
        object.__setattr__(self, "inference_threads", threads)

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
        if cfg.get("shadow_windows", 0) < 0:
            raise InputError(f"--shadow-windows must be >= 0, got {cfg['shadow_windows']}")
        if not 0.0 < cfg.get("shadow_coverage", 1.0) <= 1.0:
            raise InputError(f"--shadow-coverage must be in (0, 1], got {cfg['shadow_coverage']}")
        if cfg.get("shadow_max_s", 0.0) < 0:
            raise InputError(f"--shadow-max-s must be >= 0, got {cfg['shadow_max_s']}")
        if cfg.get("model_max_bytes", 1) < 1:
            raise InputError(f"--model-max-bytes must be >= 1, got {cfg['model_max_bytes']}")
        gate = cfg.get("promotion_gate") or "none"
        if gate == "backtest" and not cfg.get("gate_input"):
            raise InputError("--promotion-gate backtest needs --gate-input CSV file(s)")
        if not 0.0 <= cfg.get("gate_margin", 0.0) < 1.0:
            raise InputError(f"--gate-margin must be in [0, 1), got {cfg['gate_margin']}")
        try:  # (the window is the model's: max fill's default is known at start)
            gap_policy(cfg.get("gap_policy"), cfg.get("gap_max_fill"), cfg.get("gap_factor"), 2)
        except ValueError as exc:
            raise InputError(f"--gap-*: {exc}") from None
        if cfg["hop"] is not None and cfg["hop"] < 1:
            raise InputError(f"--hop must be >= 1, got {cfg['hop']}")
        rules_file = cfg.get("rules")
        rules = tuple(read_rules(rules_file)) if rules_file else ()  # exit 2 before the model
        if cfg.get("explain") == "off" and any(r.judges for r in rules):
            raise InputError(f"{rules_file}: direction and deviation rules judge the expected "
                             "values, which --explain off does not compute")
        try:
            feedback = FeedbackOptions(
                *(cfg.get(f"feedback_{n}", run_default(f"feedback_{n}"))
                  for n in ("margin", "bound", "half_life_s", "max_pending")))
        except ValueError as exc:
            raise InputError(str(exc)) from None
        return cls(
            bootstrap_servers=cfg["bootstrap_servers"], input_topic=cfg["input_topic"],
            output_topic=cfg["output_topic"], model_dir=cfg["model"],
            dlq_topic=cfg["dlq_topic"], group_id=cfg["group_id"],
            feedback_topic=cfg.get("feedback_topic"), feedback=feedback,
            metrics_port=cfg["metrics_port"], metrics_host=cfg["metrics_host"], hop=cfg["hop"],
            max_batch=cfg["max_batch"], max_batch_latency_s=cfg["max_batch_latency_ms"] / 1000.0,
            max_series=cfg["max_series"], idle_ttl_s=cfg["idle_ttl_s"], events=cfg["events"],
            explain=cfg.get("explain", run_default("explain")) != "off",
            incident_gap=cfg["incident_gap"], commit_interval_s=cfg["commit_interval_ms"] / 1000.0,
            drain_timeout_s=cfg["drain_timeout_s"], max_message_bytes=cfg["max_message_bytes"],
            state=cfg["state"], state_topic=cfg["state_topic"],
            state_required=cfg.get("state_required", True) is not False,
            model_poll_s=cfg["model_poll_s"],
            shadow_windows=cfg.get("shadow_windows", run_default("shadow_windows")),
            shadow_coverage=cfg.get("shadow_coverage", run_default("shadow_coverage")),
            shadow_max_s=cfg.get("shadow_max_s", run_default("shadow_max_s")),
            model_max_bytes=cfg.get("model_max_bytes", run_default("model_max_bytes")),
            promotion_gate=gate, gate_input=tuple(cfg.get("gate_input") or ()),
            gate_format=cfg.get("gate_format") or "long",
            gate_margin=cfg.get("gate_margin", run_default("gate_margin")),
            decision=cfg.get("decision"), decision_params=dict(cfg.get("decision_param") or {}),
            fine_tune=fine_tune, inference_workers=cfg.get("inference_workers") or 0,
            inference_threads=cfg.get("inference_threads") or 0,
            fields=Fields(cfg["key_field"], cfg["ts_field"], cfg["value_field"],
                          cfg["values_field"], cfg["features_field"]),
            kafka=dict(cfg["kafka"]),
            timestamp_policy=cfg.get("timestamp_policy") or "accept",
            rules_file=rules_file, rules=rules,
            gap_policy=cfg.get("gap_policy") or run_default("gap_policy"),
            gap_max_fill=cfg.get("gap_max_fill"),
            gap_factor=cfg.get("gap_factor", run_default("gap_factor")),
        )

    def gaps(self, window: int) -> GapPolicy:
        """The gap policy for a model's ``window``."""
        return gap_policy(self.gap_policy, self.gap_max_fill, self.gap_factor, window)

    @property
    def changelog_topic(self) -> str | None:
        if self.state != "changelog":
            return None
        return self.state_topic or f"{self.group_id}-state"
