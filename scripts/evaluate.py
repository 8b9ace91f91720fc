#!/usr/bin/env python
"""Detection quality: NAB, NASA SMAP/MSL, the demo's and the quality test's synthetic
series, ODDS (PyOD protocol), and each decision method's cost.

    python scripts/evaluate.py                # everything, full size
    python scripts/evaluate.py --nab --quick  # a subset, tiny epochs (a smoke run)

Prints one summary table first (a row per decision method, a column per benchmark, the
default marked), then one markdown table per benchmark with the published anchors
beside it; ``--json FILE`` keeps every number, ``--out DIR`` keeps NAB's per-row results
in NAB's layout. Data comes from ``--data`` (default ``../shared/data`` next to the
repository, or ``$STREAM_DETECTOR_DATA``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("STREAM_DETECTOR_DATA", REPO.parent / "shared" / "data"))
# the methods of the summary table (the default among them)
DEFAULT_DECISIONS = ["adaptive", "static", "pot", "dynamic", "likelihood"]
QUICK_NAB = [
    "artificialWithAnomaly/art_daily_jumpsup.csv",
    "realKnownCause/nyc_taxi.csv",
    "realAWSCloudwatch/ec2_cpu_utilization_5f5533.csv",
    "realTweets/Twitter_volume_FB.csv",
]
CORE_ODDS = ["arrhythmia", "cardio", "pima", "satellite", "shuttle"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nab", action="store_true", help="run NAB (58 series)")
    ap.add_argument("--odds", action="store_true", help="run the ODDS tabular sets")
    ap.add_argument("--smap", action="store_true", help="run the SMAP/MSL channels")
    ap.add_argument("--demo", action="store_true", help="run the demo's synthetic series")
    ap.add_argument(
        "--synthetic", action="store_true", help="run the quality test's synthetic series"
    )
    ap.add_argument("--cost", action="store_true", help="measure each decider's cost per window")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small and fast: 4 NAB files, 2 ODDS sets x 2 splits, 2 channels, 3 epochs",
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    ap.add_argument(
        "--decisions",
        nargs="+",
        default=DEFAULT_DECISIONS,
        metavar="METHOD[:K=V,..]",
        help="decision methods to compare (default: %(default)s)",
    )
    ap.add_argument("--model", default="conv1d-seq",
                    help="model for NAB, SMAP, the demo and synthetic (default conv1d-seq, "
                         "train's for time series)")
    ap.add_argument(
        "--model-param",
        action="append",
        default=[],
        metavar="K=V",
        help="model parameter for NAB and SMAP, e.g. filters=32 (repeatable)",
    )
    ap.add_argument(
        "--fine-tune-every",
        type=int,
        default=0,
        metavar="N",
        help="NAB and SMAP: keep learning normal windows, a round every N windows (0: off)",
    )
    ap.add_argument(
        "--fine-tune-param",
        action="append",
        default=[],
        metavar="K=V",
        help="fine-tuning setting, e.g. guard=2 or learning_rate=1e-4 (repeatable)",
    )
    ap.add_argument(
        "--gap-policy",
        choices=("off", "previous", "linear", "restart"),
        default="off",
        help="NAB: train's and score's --gap-policy over each file's timestamps (default "
        "%(default)s; SMAP's and the generated series' points have no gaps)",
    )
    ap.add_argument(
        "--gap-max-fill",
        type=int,
        default=None,
        metavar="N",
        help="NAB: train's and score's --gap-max-fill (default half the window)",
    )
    ap.add_argument(
        "--odds-param",
        action="append",
        default=[],
        metavar="K=V",
        help="feedforward parameter for ODDS (repeatable)",
    )
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs (default 30, train's default; --quick 3)",
    )
    ap.add_argument("--nab-files", nargs="+", default=None, metavar="CATEGORY/NAME.csv")
    ap.add_argument(
        "--odds-sets",
        nargs="+",
        default=None,
        metavar="NAME",
        help="default: arrhythmia cardio pima satellite shuttle thyroid",
    )
    ap.add_argument("--odds-seeds", type=int, default=None, help="splits per set (default 10)")
    ap.add_argument("--channels", nargs="+", default=None, metavar="CHAN")
    ap.add_argument("--smap-features", choices=("telemetry", "all"), default="telemetry")
    ap.add_argument("--out", type=Path, default=None, help="write NAB results here (NAB layout)")
    ap.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="keep/reuse NAB window scores here (skips training on a rerun)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write every number to this file")
    ap.add_argument("--markdown", type=Path, default=None, help="write the tables to this file")
    args = ap.parse_args(argv)
    if not (args.nab or args.odds or args.smap or args.cost or args.demo or args.synthetic):
        args.nab = args.odds = args.smap = args.cost = args.demo = args.synthetic = True

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from stream_detector.decision import DEFAULT_DECISION
    from stream_detector.evaluation import generated, harness
    from stream_detector.evaluation import tables as fmt
    from stream_detector.evaluation.loaders import ODDS_SETS, SMAP_CHANNELS, nab_files

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    decisions = harness.parse_decisions(args.decisions)
    model_params = dict(p.split("=", 1) for p in args.model_param)
    odds_params = dict(p.split("=", 1) for p in args.odds_param)
    from stream_detector.finetune import FineTuneOptions

    fine_tune = FineTuneOptions.parse(
        args.fine_tune_every, dict(p.split("=", 1) for p in args.fine_tune_param)
    )
    from stream_detector.training import TrainOptions

    default_epochs = TrainOptions().epochs
    data = args.data
    tables: list[str] = []
    record: dict[str, object] = {"decisions": decisions}
    summary: dict[str, object] = {}
    started = time.perf_counter()

    def need(path: Path, what: str) -> bool:
        if path.exists():
            return True
        log(f"skip {what}: {path} not found (set --data or STREAM_DETECTOR_DATA)")
        return False

    if args.nab and need(data / "nab" / "labels" / "combined_windows.json", "NAB"):
        root = data / "nab"
        files = args.nab_files or (QUICK_NAB if args.quick else nab_files(root))
        epochs = args.epochs or (3 if args.quick else default_epochs)
        tuned = f", fine-tuned every {fine_tune.every} windows" if fine_tune.enabled else ""
        log(f"NAB: {len(files)} files, {args.model}, {epochs} epochs, fit on the first 15 %"
            + tuned)
        rep = harness.run_nab(
            root,
            decisions,
            kind=args.model,
            epochs=epochs,
            files=files,
            out=args.out,
            cache=args.cache,
            model_params=model_params,
            fine_tune=fine_tune,
            gaps=args.gap_policy,
            gap_max_fill=args.gap_max_fill,
            log=log,
        )
        gap_note = (f"\n\n--gap-policy {args.gap_policy}, max fill "
                    f"{rep.options['gap_max_fill']} points: the windows of "
                    f"{len(rep.options['gap_files'])} files change (trained and scored "
                    "with it); the others are `off`'s."
                    if args.gap_policy != "off" else "")
        title = f"NAB ({len(files)} files{'' if len(files) == 58 else ', subset'}"
        tables.append(
            f"### {title}, {args.model}, fit on the first 15 % of each file{tuned})\n\n"
            + fmt.nab_table(rep)
            + gap_note
            + f"\n\nWall time {rep.wall_seconds / 60:.1f} min (training "
            f"{rep.train_seconds / 60:.1f} min, model scoring "
            f"{rep.model_seconds / 60:.1f} min, {rep.windows} windows)."
        )
        record["nab"] = summary["nab_rep"] = rep
    if args.odds and need(data / "odds", "ODDS"):
        sets = args.odds_sets or (["pima", "cardio"] if args.quick else list(ODDS_SETS))
        seeds = args.odds_seeds or (2 if args.quick else 10)
        epochs = args.epochs or (3 if args.quick else default_epochs)
        log(f"ODDS: {', '.join(sets)}; feedforward, {seeds} splits, {epochs} epochs")
        rows = harness.run_odds(
            data / "odds", sets, seeds=seeds, epochs=epochs, model_params=odds_params, log=log
        )
        tables.append(
            f"### ODDS (PyOD protocol: 60/40 split, standardised on train, mean of "
            f"{seeds} splits), feedforward, test ROC-AUC / precision@n\n\n"
            + fmt.odds_table(rows)
        )
        record["odds"] = rows
    if args.smap and need(data / "smap_msl" / "labeled_anomalies.csv", "SMAP/MSL"):
        channels = args.channels or (["T-9", "C-1"] if args.quick else list(SMAP_CHANNELS))
        epochs = args.epochs or (3 if args.quick else default_epochs)
        log(
            f"SMAP/MSL: {', '.join(channels)}; {args.model}, {epochs} epochs, "
            f"{args.smap_features} features"
        )
        res = harness.run_smap(
            data / "smap_msl",
            channels,
            decisions,
            kind=args.model,
            epochs=epochs,
            features=args.smap_features,
            model_params=model_params,
            fine_tune=fine_tune,
            cache=args.cache,
            log=log,
        )
        summary["smap"] = res
        tables.append(
            f"### SMAP/MSL (train on train, score test; event level), {args.model}, "
            f"{args.smap_features} features\n\n" + fmt.smap_table(res)
        )
        record["smap"] = res
    for flag, opts in (("demo", generated.demo_options()), ("synthetic", {})):
        if not getattr(args, flag):
            continue
        epochs = args.epochs or (3 if args.quick else None)
        if epochs:
            opts = {**opts, "epochs": epochs}
        syn = generated.run_synthetic(
            decisions, kind=args.model, cache=args.cache, log=log, **opts  # type: ignore[arg-type]
        )
        summary[flag] = record[flag] = syn
    if args.cost:
        cost = harness.decider_cost(
            decisions, keys=50 if args.quick else 200, per_key=200 if args.quick else 600
        )
        tables.append("### Decider cost\n\n" + fmt.cost_table(cost))
        record["cost"] = summary["cost"] = cost
        ft = fine_tune if fine_tune.enabled else FineTuneOptions(every=256)
        ftc = harness.fine_tune_cost(ft, windows=2048 if args.quick else 20_480)
        tables.append(
            f"### Fine-tuning cost (conv1d, window 64, batches of 256; a round of "
            f"{ft.steps} steps of {ft.batch_size} every {ft.every} windows)\n\n"
            "| model µs/window | with fine-tuning | fine-tuning µs/window |\n|---|---|---|\n"
            f"| {ftc['plain_us']:.1f} | {ftc['tuned_us']:.1f} | {ftc['fine_tune_us']:.1f} |"
        )
        record["fine_tune_cost"] = ftc
    head = (
        f"### Summary ({args.model}; {training_note(args, default_epochs, model_params, fine_tune)}"
        f"; decided at `run`'s defaults; the default decision in bold)\n\n"
        + fmt.summary_table(list(decisions), DEFAULT_DECISION, **summary)  # type: ignore[arg-type]
    )
    text = "\n\n".join([head, *tables])
    print(text)
    log(f"done in {(time.perf_counter() - started) / 60:.1f} min")
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        args.json.write_text(fmt.to_json(record) + "\n")
    return 0


def training_note(
    args: argparse.Namespace, default_epochs: int, model_params: dict[str, str], fine_tune: object
) -> str:
    """How this run's models were trained, against `train`'s defaults: every exception named
    (so a table from `--quick` or `--epochs` never reads as the defaults' figures)."""
    from stream_detector.evaluation.generated import demo_options

    but = []
    if args.epochs or args.quick:
        but.append(f"{args.epochs or 3} epochs (train's default {default_epochs})")
    if model_params:
        but.append("model " + " ".join(f"{k}={v}" for k, v in model_params.items()))
    if getattr(fine_tune, "enabled", False):
        but.append(f"fine-tuned every {getattr(fine_tune, 'every', '?')} windows")
    if getattr(args, "gap_policy", "off") != "off":
        fill = "" if args.gap_max_fill is None else f" --gap-max-fill {args.gap_max_fill}"
        but.append(f"NAB with --gap-policy {args.gap_policy}{fill}")
    note = "trained with train's defaults" + (", except " + ", ".join(but) if but else "")
    if args.demo:  # the demo's own training (demo.py), so that column reproduces the demo
        d = demo_options()
        what = [f"at most {d['max_windows']} windows"]
        if not (args.epochs or args.quick):
            what.insert(0, f"{d['epochs']} epochs")
        note += f"; the demo column as `stream-detector demo` trains ({', '.join(what)})"
    return note


if __name__ == "__main__":
    sys.exit(main())
