"""The ``stream-detector`` command: train, score, run, backtest, replay, broker, demo."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stream_detector import __version__
from stream_detector.config import COMMAND_OPTS, add_options, resolve
from stream_detector.errors import InputError, StreamDetectorError
from stream_detector.logs import configure as configure_logs

if TYPE_CHECKING:
    from stream_detector.artifact import Artifact
    from stream_detector.datasets import Dataset
    from stream_detector.gaps import GapPolicy
    from stream_detector.training import TrainOptions

log = logging.getLogger("stream_detector")

_HELP = {
    "train": "fit an autoencoder on history, calibrate its threshold, write a model artifact",
    "score": "offline: push a CSV through the window/batch/model/threshold path, write scores",
    "run": "the service: consume Kafka, score windows, publish anomaly events, serve metrics",
    "backtest": "replay a CSV or a topic range through the serving and a candidate model, "
                "compare their events (exit 1 when the candidate is worse)",
    "replay": "produce a CSV to a Kafka topic as input messages",
    "feedback": "mark an incident false_positive or true_positive on the feedback topic "
                "(run --feedback-topic)",
    "broker": "start the embedded Kafka-compatible broker in the foreground",
    "demo": "embedded broker + synthetic series + train + run + live report",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-detector",
        description="Streaming time-series anomaly detection with autoencoders on Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, opts in COMMAND_OPTS.items():
        p = sub.add_parser(name, help=_HELP[name], description=_HELP[name])
        add_options(p, opts)
    return parser


def cmd_train(cfg: dict[str, Any]) -> int:
    from stream_detector.training import TrainOptions

    ds = _read(cfg)
    quiet = cfg["quiet"]
    opts = TrainOptions(
        kind=cfg["model"], window=cfg["window"], hop=cfg["hop"], epochs=cfg["epochs"],
        batch_size=cfg["batch_size"], threshold_quantile=cfg["threshold_quantile"],
        threshold_factor=cfg["threshold_factor"], train_fraction=cfg["train_fraction"],
        seed=cfg["seed"], scaler=cfg["scaler"], model_params=cfg["model_param"],
        validation_split=cfg["validation_split"], patience=cfg["patience"],
        learning_rate=cfg["learning_rate"], max_windows=cfg["max_windows"],
        verbose=0 if quiet else (1 if sys.stdout.isatty() else 2),
        decision=cfg["decision"], decision_params=cfg["decision_param"],
        gap_policy=cfg["gap_policy"], gap_max_fill=cfg["gap_max_fill"],
        gap_factor=cfg["gap_factor"],
    )
    _gaps(cfg, 2)  # (checked before training; the window may be the data's)
    _check_positive(cfg, "epochs", "batch_size", "hop", "max_windows")
    if cfg["patience"] is not None and cfg["patience"] < 0:
        raise InputError(f"--patience must be >= 0, got {cfg['patience']}")
    if cfg["window"] is not None and cfg["window"] < 1:
        raise InputError("--window must be >= 1")
    art = _train_to(cfg["out"], ds, opts)
    if not quiet:
        t = art.metadata["training"]
        how = (f"robust z {art.thresholds.factor:g} among the rows"
               if art.thresholds.method == "robust_mad"
               else f"q{art.thresholds.quantile:g} x {art.thresholds.factor:g}")
        print(
            f"model {art.kind} {art.version}: {t['series']} series, {t['windows']} windows, "
            f"{t['epochs_run']} epochs, threshold {art.thresholds.global_:.4g} "
            f"({how}), decision {art.metadata['decision']['method']} -> {cfg['out']}"
        )
    return 0


def _train_to(out: str, ds: Dataset, opts: TrainOptions) -> Artifact:
    """Train into the directory ``out``, or into a temporary one published to the S3
    location ``out`` (checked to be reachable before training starts)."""
    from stream_detector.model_store import S3Source, is_store_url, parse_s3_url
    from stream_detector.training import train_and_save

    if not is_store_url(out):
        return train_and_save(ds, opts, out)
    store = S3Source(*parse_s3_url(out))
    store.check_bucket()
    with tempfile.TemporaryDirectory(prefix="stream-detector-train-") as tmp:
        art = train_and_save(ds, opts, tmp)
        version = store.publish(tmp)
    log.info("published %s to %s", version, store.url(version))
    return art


def _read(cfg: dict[str, Any]) -> Dataset:
    """The input files, with ``--timestamp-policy``; says how many points went back in time."""
    from stream_detector.datasets import read_dataset

    ds = read_dataset(cfg["input"], cfg["format"], cfg["timestamp_policy"])
    if ds.timestamps_backwards:
        done = "used in file order" if cfg["timestamp_policy"] == "accept" else "left out"
        log.warning("%d point(s) whose timestamp goes back %s (--timestamp-policy %s); the "
                    "first: %s", ds.timestamps_backwards, done, cfg["timestamp_policy"],
                    ds.first_backwards)
    return ds


def _gaps(cfg: dict[str, Any], window: int) -> GapPolicy:
    """``--gap-policy``, ``--gap-max-fill`` and ``--gap-factor`` for a model's window."""
    from stream_detector.gaps import gap_policy

    try:
        return gap_policy(cfg["gap_policy"], cfg["gap_max_fill"], cfg["gap_factor"], window)
    except ValueError as exc:
        raise InputError(f"--gap-*: {exc}") from None


def _check_positive(cfg: dict[str, Any], *names: str) -> None:
    for n in names:
        if cfg.get(n) is not None and cfg[n] < 1:
            raise InputError(f"--{n.replace('_', '-')} must be >= 1, got {cfg[n]}")


def cmd_score(cfg: dict[str, Any]) -> int:
    from stream_detector.artifact import load_artifact
    from stream_detector.decision import resolve_spec
    from stream_detector.model_store import open_source
    from stream_detector.rules import Rules, read_rules
    from stream_detector.scoring import score_dataset, write_scores

    _check_positive(cfg, "max_batch")
    parsed = read_rules(cfg["rules"]) if cfg["rules"] else None  # before the model loads
    if cfg["plot"]:
        from stream_detector.plotting import require_matplotlib

        require_matplotlib()  # before scoring, which can take minutes
    art = load_artifact(open_source(cfg["model"]).open(refusals=False))
    rules = Rules(parsed, art.features, cfg["rules"]) if parsed else None
    try:
        decision = resolve_spec(art.metadata.get("decision"), cfg["decision"],
                                cfg["decision_param"])
    except ValueError as exc:
        raise InputError(f"--decision: {exc}") from None
    ds = _read(cfg)
    if (ds.fmt == "records") != art.record_mode:
        kind = "records" if art.record_mode else "time series"
        raise InputError(f"{cfg['model']}: model was trained on {kind}; got --format {ds.fmt}")
    for s in ds.series:
        if len(s) < art.window:
            raise InputError(
                f"{s.source}: series {s.key!r} has {len(s)} point(s), fewer than the "
                f"model's window of {art.window}"
            )
    from stream_detector.finetune import FineTuneOptions

    fine_tune = FineTuneOptions.parse(cfg["fine_tune_every"], cfg["fine_tune_param"])
    results = score_dataset(art, ds, max_batch=cfg["max_batch"], decision=decision,
                            fine_tune=fine_tune, gaps=_gaps(cfg, art.window), rules=rules)
    n = write_scores(results, cfg["output"], art.features)
    flagged = sum(int(r.is_anomaly.sum()) for r in results)
    print(f"scored {n} rows of {len(results)} series, {flagged} flagged -> {cfg['output']}")
    if rules is not None:
        from stream_detector.scoring import muted_counts

        by_cause, unlearned = muted_counts(results)
        print(f"rules muted {sum(by_cause.values())} alarm(s) ("
              + ", ".join(f"{c} {k}" for c, k in by_cause.items())
              + f"); {unlearned} window(s) in learn: false maintenance not decided")
    if cfg["plot"]:
        from stream_detector.plotting import plot_scores

        pages = plot_scores(results, cfg["plot"], art.scalers,
                            time_axis=ds.fmt in ("long", "nab"))
        print(f"plot -> {', '.join(str(p) for p in pages)}")
    return 0


def cmd_run(cfg: dict[str, Any]) -> int:
    from stream_detector.service import run_service

    return run_service(cfg)


def cmd_backtest(cfg: dict[str, Any]) -> int:
    from stream_detector.backtest import run_backtest

    return run_backtest(cfg)


def cmd_replay(cfg: dict[str, Any]) -> int:
    from stream_detector.replay import replay_files

    n = replay_files(cfg)
    print(f"produced {n} messages to {cfg['topic']}")
    return 0


def cmd_feedback(cfg: dict[str, Any]) -> int:
    from stream_detector.feedback import BadFeedback
    from stream_detector.feedback_topic import send_feedback

    try:
        partition, offset = send_feedback(
            cfg["bootstrap_servers"], cfg["topic"], cfg["incident_id"], cfg["key"],
            cfg["label"], cfg["by"], cfg["kafka"])
    except BadFeedback as exc:
        raise InputError(str(exc)) from None
    print(f"{cfg['label']} for incident {cfg['incident_id'].lower()} of {cfg['key']!r} -> "
          f"{cfg['topic']} [{partition}] @ {offset}")
    return 0


def cmd_broker(cfg: dict[str, Any]) -> int:
    from stream_detector.kafka.embedded import EmbeddedBroker

    def interrupt(*_: object) -> None:  # SIGTERM (docker stop, kill) stops it like Ctrl-C
        raise KeyboardInterrupt

    broker = EmbeddedBroker(port=cfg["port"], host=cfg["host"])
    broker.start()
    try:
        # inside the try: a SIGTERM right after the line is printed still stops cleanly
        signal.signal(signal.SIGTERM, interrupt)
        print(f"broker listening on {broker.bootstrap_servers} (Ctrl-C to stop)", flush=True)
        broker.wait()
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


def cmd_demo(cfg: dict[str, Any]) -> int:
    from stream_detector.demo import run_demo

    return run_demo(cfg)


COMMANDS = {"train": cmd_train, "score": cmd_score, "run": cmd_run, "backtest": cmd_backtest,
            "replay": cmd_replay, "feedback": cmd_feedback, "broker": cmd_broker, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 usage or input error, 1 other failure)."""
    args = build_parser().parse_args(argv)
    configure_logs()
    try:
        cfg = resolve(args.command, COMMAND_OPTS[args.command], args)
        if "log_level" in cfg:
            configure_logs(cfg.get("log_format", "text"), cfg["log_level"])
        return COMMANDS[args.command](cfg)
    except InputError as exc:
        print(f"stream-detector {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except StreamDetectorError as exc:
        print(f"stream-detector {args.command}: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
