"""Command options and their resolution: flag beats env beats config file beats default.

This is the only module that reads environment variables. Every option of a command can
be given as ``--flag-name``, as ``STREAM_DETECTOR_FLAG_NAME`` in the environment, or as
``flag_name:`` in the YAML file named by ``--config`` (top level, or under a section
named after the command). librdkafka properties come from repeatable ``--kafka KEY=VALUE``,
a ``kafka:`` mapping in the file, and ``STREAM_DETECTOR_KAFKA_<KEY>`` variables where the
property's dots are written as underscores (``STREAM_DETECTOR_KAFKA_SASL_PASSWORD``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stream_detector.decision import DECIDERS, DEFAULT_DECISION
from stream_detector.errors import ConfigError
from stream_detector.gaps import DEFAULT_GAP_FACTOR, DEFAULT_GAP_POLICY, GAP_POLICIES
from stream_detector.window import TIMESTAMP_POLICIES

ENV_PREFIX = "STREAM_DETECTOR_"
KAFKA_ENV_PREFIX = "STREAM_DETECTOR_KAFKA_"


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {v!r}")


def _list(v: Any) -> list[str]:
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v]
    return [p for p in str(v).split(",") if p]


def _pairs(v: Any) -> dict[str, str]:
    """KEY=VALUE strings (or a mapping) -> dict."""
    if isinstance(v, Mapping):
        return {str(k): str(x) for k, x in v.items()}
    out = {}
    for item in v if isinstance(v, (list, tuple)) else [v]:
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", _bool: "true or false",
               _list: "a list", _pairs: "KEY=VALUE pairs"}


@dataclass(frozen=True)
class Opt:
    """One option of a command."""

    name: str
    type: Callable[[Any], Any]
    default: Any
    help: str
    choices: Sequence[str] | None = None
    required: bool = False
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


def add_options(parser: argparse.ArgumentParser, opts: Sequence[Opt]) -> None:
    """Register ``opts`` on ``parser``; defaults stay unset so we can tell who gave a value."""
    parser.add_argument("--config", default=None, metavar="FILE.yaml",
                        help="YAML file with option values (flag > env > file > default)")
    for o in opts:
        kw: dict[str, Any] = {"dest": o.name, "default": None, "help": o.help}
        if o.choices:
            kw["help"] += f" (one of: {', '.join(map(str, o.choices))})"
        if o.required:
            kw["help"] += " (required)"
        elif o.type is _bool:
            kw["help"] += f" (default: {'on' if o.default else 'off'})"
        elif o.default not in (None, [], {}):
            kw["help"] += f" (default: {o.default})"
        if o.type is _bool:
            kw["action"] = "store_const"
            kw["const"] = True
            # --no-<flag> turns it off, over an env variable or a config file that set it
            parser.add_argument("--no-" + o.flag[2:], dest=o.name, action="store_const",
                                const=False, default=None, help=f"turn {o.flag} off")
        elif o.type is _list:
            kw["nargs"] = "+"
            kw["metavar"] = o.metavar or "PATH"
        elif o.type is _pairs:
            kw["action"] = "append"
            kw["metavar"] = o.metavar or "KEY=VALUE"
        else:
            kw["metavar"] = o.metavar or o.name.upper()
        if o.choices:
            kw["choices"] = list(o.choices)
        parser.add_argument(o.flag, **kw)


def _convert(o: Opt, value: Any, source: str) -> Any:
    try:
        out = o.type(value)
    except (TypeError, ValueError) as exc:
        want = _TYPE_NAMES.get(o.type, "a valid value")
        raise ConfigError(f"{source}: expected {want} for {o.flag}, got {value!r} ({exc})") from None
    if o.choices and out not in o.choices:
        raise ConfigError(f"{source}: {o.flag} must be one of {', '.join(o.choices)}, got {out!r}")
    return out


def load_file(path: str | None, command: str) -> dict[str, Any]:
    if not path:
        return {}
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: expected a mapping of option names to values")
    section = doc.get(command, {})
    flat = {k: v for k, v in doc.items() if not isinstance(v, dict) or k == "kafka"}
    if isinstance(section, dict):
        flat.update(section)
    return {str(k).replace("-", "_"): v for k, v in flat.items()}


def resolve(
    command: str, opts: Sequence[Opt], args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Merge flag > env > file > default for every option of ``command``."""
    env = os.environ if environ is None else environ
    file_values = load_file(getattr(args, "config", None) or env.get(ENV_PREFIX + "CONFIG"),
                            command)
    # one file may configure several commands: an option of another command is not an error
    known = {o.name for all_opts in COMMAND_OPTS.values() for o in all_opts} | {"kafka"}
    unknown = sorted(k for k in file_values if k not in known and k not in _COMMANDS)
    if unknown:
        raise ConfigError(f"config file: unknown option(s) for {command}: {', '.join(unknown)}")
    out: dict[str, Any] = {}
    for o in opts:
        if o.type is _pairs:
            merged: dict[str, str] = {}
            if o.name in file_values:
                merged.update(_convert(o, file_values[o.name], "config file"))
            if o.name == "kafka":
                for k, v in env.items():
                    if k.startswith(KAFKA_ENV_PREFIX):
                        merged[k[len(KAFKA_ENV_PREFIX):].lower().replace("_", ".")] = v
            flag_value = getattr(args, o.name, None)
            if flag_value:
                merged.update(_convert(o, flag_value, "command line"))
            out[o.name] = merged
            continue
        flag_value = getattr(args, o.name, None)
        if flag_value is not None:
            out[o.name] = _convert(o, flag_value, "command line")
        elif o.env in env:
            out[o.name] = _convert(o, env[o.env], f"environment variable {o.env}")
        elif o.name in file_values:
            out[o.name] = _convert(o, file_values[o.name], "config file")
        elif o.required:
            raise ConfigError(f"{command}: {o.flag} is required (or {o.env}, or {o.name}: in --config)")
        else:
            out[o.name] = o.default
    return out


_COMMANDS = ("train", "score", "run", "backtest", "replay", "feedback", "broker", "demo")

FORMAT_OPT = Opt("format", str, "long", "input CSV format", choices=("long", "nab", "wide", "records"))
INPUT_OPT = Opt("input", _list, None, "input CSV file(s)", required=True)
KAFKA_OPT = Opt("kafka", _pairs, {}, "librdkafka property, repeatable (SASL, SSL, timeouts)")
TIMESTAMP_POLICY_OPT = Opt(
    "timestamp_policy", str, "accept",
    "a point whose timestamp is before its key's previous point's (a clock stepping back "
    "at a daylight-saving change, a producer's clock corrected): accept = use it in arrival "
    "order (file order for train and score, offset order for run); drop = skip it (score "
    "writes no row for it); dlq = run sends it to --dlq-topic with reason "
    "timestamp_backwards, train and score refuse the file naming its line (exit 2). Each "
    "is counted (run: stream_detector_timestamps_backwards_total{action}). A point is judged "
    "against the one before it only, not the latest time seen, so a far-future timestamp "
    "costs drop and dlq the one point after it, not the key's later points",
    choices=TIMESTAMP_POLICIES, metavar="{" + ",".join(TIMESTAMP_POLICIES) + "}")
RULES_OPT = Opt(
    "rules", str, None,
    "YAML file of rules by key pattern: the direction (spike, dip) and the least deviation "
    "from the expected value that may alarm, and maintenance windows (cron + duration, or "
    "start and end, in event time) that mute alarms; score and run apply them alike "
    "(README: Rules and maintenance windows)", metavar="FILE")
GAP_OPTS = (
    Opt("gap_policy", str, DEFAULT_GAP_POLICY,
        "a step between a key's points longer than --gap-factor times its cadence (the "
        "mean step its window holds) is a gap: off = window the points as if adjacent; "
        "previous / linear = fill the missing points (the last value, or a straight line "
        "to the next point; filled points complete windows, windows are scored only at "
        "real points); restart = start the key's window again after the gap (no window "
        "spans it). The same for train, score and run; run counts it in "
        "stream_detector_gaps_total{action}",
        choices=GAP_POLICIES, metavar="{" + ",".join(GAP_POLICIES) + "}"),
    Opt("gap_max_fill", int, None,
        "previous / linear: a gap of more missing points restarts the window instead "
        "(default: half the window)", metavar="N"),
    Opt("gap_factor", float, DEFAULT_GAP_FACTOR,
        "a step longer than this many cadences is a gap (> 1)", metavar="X"),
)
BOOTSTRAP_OPT = Opt("bootstrap_servers", str, None, "Kafka bootstrap servers host:port[,...]",
                    required=True, metavar="HOSTS")

TRAIN_OPTS = (
    Opt("model", str, None, "model kind (default conv1d-seq; conv1d for wide rows; "
        "feedforward for records)",
        choices=("lstm", "conv1d", "conv1d-seq", "cnn-lstm", "bilstm", "feedforward")),
    INPUT_OPT, FORMAT_OPT, TIMESTAMP_POLICY_OPT, *GAP_OPTS,
    Opt("window", int, None, "points per window (default 64; 1 for records; the row for wide)",
        metavar="N"),
    Opt("hop", int, 1, "score a window every N points (stored in the artifact)", metavar="N"),
    Opt("out", str, None, "output model directory, or s3://bucket/prefix to publish the "
        "model there as a new version (README: models in S3)", required=True,
        metavar="DIR|URL"),
    Opt("epochs", int, None, "maximum training epochs (early stopping on validation loss; "
        "default 30, 300 for wide: one window per row)", metavar="N"),
    Opt("batch_size", int, 64, "training batch size", metavar="N"),
    Opt("threshold_quantile", float, 0.995, "threshold = this quantile of training errors",
        metavar="Q"),
    Opt("threshold_factor", float, 1.5, "... times this safety factor", metavar="X"),
    Opt("train_fraction", float, 1.0, "fit on the first F of every series only", metavar="F"),
    Opt("seed", int, 0, "random seed for reproducible training", metavar="N"),
    Opt("scaler", str, "robust", "per-feature scaling", choices=("robust", "minmax")),
    Opt("model_param", _pairs, {}, "model size, repeatable, e.g. units=64 or filters=128"),
    Opt("validation_split", float, 0.1, "fraction of windows held out for early stopping",
        metavar="F"),
    Opt("patience", int, None, "early-stopping patience in epochs (default 3, 30 for wide)",
        metavar="N"),
    Opt("learning_rate", float, 1e-3, "Adam learning rate", metavar="LR"),
    Opt("max_windows", int, 100_000, "cap on training windows (uniform sample)", metavar="N"),
    Opt("decision", str, DEFAULT_DECISION,
        "how window errors become decisions (stored in the artifact; static = the seed's rule)",
        choices=DECIDERS),
    Opt("decision_param", _pairs, {},
        "decision parameter, repeatable, e.g. suppress=0 or risk=1e-5"),
    Opt("quiet", _bool, False, "no progress output"),
)

FINE_TUNE_OPTS = (
    Opt("fine_tune_every", int, 0,
        "keep learning the stream's normal windows: a few gradient steps every N scored "
        "windows (0: off; scores then depend on the stream seen, see docs/decision.md)", metavar="N"),
    Opt("fine_tune_param", _pairs, {},
        "fine-tuning setting, repeatable: buffer, steps, batch_size, learning_rate, guard "
        "(learn windows with error <= guard x threshold)"),
)

SCORE_OPTS = (
    Opt("model", str, None, "model directory made by train, or s3://bucket/prefix",
        required=True, metavar="DIR|URL"),
    INPUT_OPT, FORMAT_OPT, TIMESTAMP_POLICY_OPT, *GAP_OPTS,
    Opt("output", str, None, "output CSV", required=True, metavar="FILE"),
    Opt("plot", str, None, "also draw series, error and threshold to this PNG", metavar="FILE.png"),
    Opt("max_batch", int, 1024, "windows per batched model call", metavar="N"),
    Opt("decision", str, None, "decision method instead of the artifact's", choices=DECIDERS),
    Opt("decision_param", _pairs, {},
        "decision parameter instead of the artifact's, repeatable, e.g. suppress=0"),
    RULES_OPT,
    *FINE_TUNE_OPTS,
)

RUN_OPTS = (
    BOOTSTRAP_OPT,
    Opt("input_topic", str, None, "topic of input messages", required=True, metavar="T"),
    Opt("output_topic", str, None, "topic for anomaly events", required=True, metavar="T"),
    Opt("dlq_topic", str, None, "dead-letter topic for bad input (none: count and skip)",
        metavar="T"),
    Opt("feedback_topic", str, None, "read operators' incident labels from this topic "
        "(every replica reads all of it; `stream-detector feedback` writes it; none: off)",
        metavar="T"),
    Opt("feedback_margin", float, 0.5, "a false_positive mutes its key's alarms whose error "
        "is below the incident's peak x (1 + this) ...", metavar="F"),
    Opt("feedback_bound", float, 3.0, "... but never at or above this many times the key's "
        "error threshold when the incident opened (>= 1)", metavar="X"),
    Opt("feedback_half_life_s", float, 7 * 86400.0,
        "the mute level halves every this many seconds of the key's event time", metavar="S"),
    Opt("feedback_max_pending", int, 10_000,
        "feedback messages held for incidents not known here (other replicas' keys; the "
        "oldest beyond this are dropped and counted expired)", metavar="N"),
    TIMESTAMP_POLICY_OPT, *GAP_OPTS,
    Opt("group_id", str, "stream-detector", "consumer group", metavar="G"),
    Opt("model", str, None, "model directory made by train, or s3://bucket/prefix (its "
        "LATEST version; README: models in S3)", required=True, metavar="DIR|URL"),
    Opt("metrics_port", int, 9400, "port for /metrics, /healthz, /readyz (0: off)", metavar="N"),
    Opt("metrics_host", str, "0.0.0.0", "address the HTTP server binds", metavar="ADDR"),
    Opt("hop", int, None, "score every N points (default: the artifact's hop)", metavar="N"),
    Opt("max_batch", int, 256, "windows per model call; smaller batches are padded to "
        "shapes checked at start-up to score bit-identically to this one", metavar="N"),
    Opt("max_batch_latency_ms", float, 50.0, "a batch goes to the model when it is idle, when "
        "full, or when its oldest window waited this long", metavar="MS"),
    Opt("max_series", int, 100_000, "series held in memory (least recently seen evicted)",
        metavar="N"),
    Opt("idle_ttl_s", float, 3600.0, "forget a series not seen for this long (0: never)",
        metavar="S"),
    Opt("events", str, "incidents", "one opened+closed pair per incident, or every window",
        choices=("incidents", "windows")),
    Opt("explain", str, "on", "events carry actual, expected and attribution, computed in "
        "the scoring call (off: the call returns errors only, events leave them out)",
        choices=("on", "off")),
    Opt("incident_gap", int, None,
        "normal windows allowed inside one incident (default: half the window)", metavar="N"),
    Opt("commit_interval_ms", float, 1000.0, "how often delivered offsets are committed",
        metavar="MS"),
    Opt("drain_timeout_s", float, 10.0, "graceful stop budget on SIGTERM", metavar="S"),
    Opt("max_message_bytes", int, 65536, "larger input messages are rejected as oversize",
        metavar="N"),
    Opt("state", str, "changelog",
        "keep window state in a compacted changelog topic (restored on restart/rebalance)",
        choices=("changelog", "none")),
    Opt("state_required", _bool, True,
        "with --state changelog, consume no partition whose changelog is unusable (cannot "
        "be created or read): not ready, stream_detector_state_ready 0, retried every 5 s; "
        "--no-state-required consumes anyway, without checkpointing state there"),
    Opt("state_topic", str, None, "changelog topic (default: <group-id>-state)", metavar="T"),
    Opt("decision", str, None, "decision method instead of the artifact's (see train)",
        choices=DECIDERS),
    Opt("decision_param", _pairs, {},
        "decision parameter instead of the artifact's, repeatable, e.g. suppress=0"),
    RULES_OPT,
    *FINE_TUNE_OPTS,
    Opt("inference_workers", int, 0,
        "model calls that run in parallel (0: one per CPU the process may use, at most 4; "
        "1 with fine-tuning)", metavar="N"),
    Opt("inference_threads", int, 0,
        "TensorFlow intra-op threads per model call (0: the CPUs left per worker; the CPU "
        "count honours the process's affinity and its cgroup CPU limit)", metavar="N"),
    Opt("model_poll_s", float, 10.0,
        "check the model directory or store this often and hot-reload a new version "
        "(0: never)",
        metavar="S"),
    Opt("shadow_windows", int, 100,
        "a new model version first decides in shadow (counted, never published) and is "
        "promoted, its decision state warm, once every key it scored has this many "
        "windows (0: it serves at once, cold, unless a gate is asked)", metavar="N"),
    Opt("shadow_coverage", float, 0.99,
        "promote once this share of the keys the shadow scored have --shadow-windows "
        "windows (keys whose new-model error is inf or NaN count as not ready)", metavar="F"),
    Opt("shadow_max_s", float, 3600.0,
        "promote a shadow that passed its gate after this long in shadow even if too few "
        "keys are warm (new keys trickling in, slow series); they start cold (0: no "
        "deadline)", metavar="S"),
    Opt("model_max_bytes", int, 64 * 1024 * 1024,
        "a model version in S3 larger than this (model.keras + metadata.json) is refused "
        "before it fills the download directory", metavar="N"),
    Opt("promotion_gate", str, "none",
        "also promote only if `stream-detector backtest` of the new version against the "
        "serving one on --gate-input passes", choices=("none", "backtest")),
    Opt("gate_input", _list, [], "CSV file(s) the promotion gate replays"),
    Opt("gate_format", str, "long", "format of --gate-input",
        choices=("long", "nab", "wide", "records")),
    Opt("gate_margin", float, 0.05,
        "the gate fails when the candidate's F1 is below the serving model's by more "
        "than this (see backtest --margin)", metavar="F"),
    Opt("key_field", str, "key", "JSON field with the series key", metavar="NAME"),
    Opt("ts_field", str, "ts", "JSON field with the timestamp", metavar="NAME"),
    Opt("value_field", str, "value", "JSON field with a scalar value", metavar="NAME"),
    Opt("values_field", str, "values", "JSON field with an array of values", metavar="NAME"),
    Opt("features_field", str, "features", "JSON field with record features", metavar="NAME"),
    Opt("log_level", str, "INFO", "logging level", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    Opt("log_format", str, "text", "log lines as text, or one JSON object each (log pipelines)",
        choices=("text", "json")),
    KAFKA_OPT,
)

REPLAY_OPTS = (
    INPUT_OPT, FORMAT_OPT,
    Opt("topic", str, None, "topic to produce to", required=True, metavar="T"),
    BOOTSTRAP_OPT,
    Opt("rate", float, 0.0, "messages per second (0: as fast as possible)", metavar="N"),
    Opt("partitions", int, 0, "create the topic with this many partitions if missing (0: no)",
        metavar="N"),
    KAFKA_OPT,
)

BACKTEST_OPTS = (
    Opt("serving", str, None, "model directory of the version serving now", required=True,
        metavar="DIR"),
    Opt("candidate", str, None, "model directory of the new version", required=True,
        metavar="DIR"),
    Opt("input", _list, [], "CSV file(s) to replay (a `label` column: precision/recall)"),
    FORMAT_OPT, TIMESTAMP_POLICY_OPT, *GAP_OPTS,
    Opt("topic", str, None, "replay this topic's input messages instead of CSV files",
        metavar="T"),
    Opt("bootstrap_servers", str, None, "Kafka bootstrap servers, with --topic",
        metavar="HOSTS"),
    Opt("from_offset", int, 0, "with --topic: first offset of every partition", metavar="N"),
    Opt("to_offset", int, -1, "with --topic: stop before this offset (-1: the end)",
        metavar="N"),
    Opt("margin", float, 0.05,
        "exit 1 when the candidate's F1 is below the serving model's by more than this "
        "(without labels: below 1 - this against the serving model's events)", metavar="F"),
    Opt("incident_gap", int, None,
        "normal windows allowed inside one incident (default: half the window)", metavar="N"),
    Opt("max_batch", int, 1024, "windows per batched model call", metavar="N"),
    Opt("decision", str, None, "decision method instead of each artifact's", choices=DECIDERS),
    Opt("decision_param", _pairs, {}, "decision parameter instead of the artifacts', "
        "repeatable"),
    Opt("output", str, None, "also write the report as JSON to this file", metavar="FILE"),
    KAFKA_OPT,
)

FEEDBACK_OPTS = (
    BOOTSTRAP_OPT,
    Opt("topic", str, None, "the feedback topic (run --feedback-topic)", required=True,
        metavar="T"),
    Opt("incident_id", str, None, "the incident_id of the incident's events (16 hex digits)",
        required=True, metavar="ID"),
    Opt("key", str, None, "the incident's series key (the events' key)", required=True,
        metavar="KEY"),
    Opt("label", str, None, "the verdict", required=True,
        choices=("false_positive", "true_positive")),
    Opt("by", str, None, "who says so (kept in the message)", metavar="NAME"),
    KAFKA_OPT,
)

BROKER_OPTS = (
    Opt("port", int, 9092, "port on 127.0.0.1", metavar="N"),
    Opt("host", str, "127.0.0.1", "address to listen on", metavar="ADDR"),
)

DEMO_OPTS = (
    Opt("series", int, 40, "number of synthetic series", metavar="N"),
    Opt("length", int, 1500, "points per series", metavar="N"),
    Opt("model", str, "conv1d-seq", "model kind to train if no model is given (train's "
        "default for time series)",
        choices=("lstm", "conv1d", "conv1d-seq", "cnn-lstm", "bilstm")),
    Opt("model_dir", str, "models/demo", "model directory (trained here if missing)",
        metavar="DIR"),
    Opt("rate", float, 2000.0, "messages per second replayed (0: as fast as possible)",
        metavar="N"),
    Opt("partitions", int, 4, "input topic partitions", metavar="N"),
    Opt("port", int, 0, "broker port (0: a free one)", metavar="N"),
    Opt("metrics_port", int, 9400, "port for /metrics while the demo runs", metavar="N"),
    Opt("seed", int, 0, "random seed", metavar="N"),
    Opt("quiet", _bool, False, "no live view, summary only"),
)

COMMAND_OPTS: dict[str, tuple[Opt, ...]] = {
    "train": TRAIN_OPTS, "score": SCORE_OPTS, "run": RUN_OPTS, "backtest": BACKTEST_OPTS,
    "replay": REPLAY_OPTS, "feedback": FEEDBACK_OPTS,
    "broker": BROKER_OPTS, "demo": DEMO_OPTS,
}
