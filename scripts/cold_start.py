"""Cold start: how long a key never seen in training waits for its first decision.

Feeds clean synthetic series (the demo's generator, another seed, keys the model never
saw) point by point through :class:`stream_detector.OnlineDetector` (``run``'s path
without Kafka, at ``run``'s defaults) and reports, per key, the point of its first
decision, the point of its first decision by its own adaptive boundary (the first whose
threshold is no longer the static one), and the windows flagged on the way (all false
alarms: the series are clean). With ``--warmup`` the adaptive warm-up is compared.

    python scripts/cold_start.py --model models/demo            # after `make run`
    python scripts/cold_start.py --model models/demo --warmup 100 50 25
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from stream_detector import OnlineDetector
from stream_detector.artifact import load_artifact
from stream_detector.synthetic import generate


def measure(model: str, keys: int, length: int, seed: int, warmup: int | None,
            gap_policy: str | None) -> dict[str, float]:
    art = load_artifact(model)
    params = None if warmup is None else {"warmup": str(warmup)}
    det = OnlineDetector(art, decision_params=params, gap_policy=gap_policy)
    data = generate(n_series=keys, length=length, seed=seed, anomalies_per_series=0,
                    clean_keys=keys)
    step = float(np.diff(data.epoch[:2])[0])
    first, own, flagged, flagged_cold = [], [], 0, 0
    for j, name in enumerate(data.values):
        key = f"unseen-{j:03d}"
        static = art.thresholds.for_key(key)
        got_first = got_own = None
        for i, v in enumerate(data.values[name]):
            verdict = det.score_one(key, float(data.epoch[i]), float(v))
            if verdict is None:
                continue
            if got_first is None:
                got_first = i + 1
            if got_own is None and verdict.threshold != static:
                got_own = i + 1
            flagged += verdict.is_anomaly
            flagged_cold += verdict.is_anomaly and got_own is None
        first.append(got_first or np.nan)
        own.append(got_own or np.nan)
    return {"step_s": step, "first": float(np.median(first)), "own": float(np.median(own)),
            "flagged": flagged, "flagged_cold": flagged_cold,
            "windows": keys * (length - art.window + 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/demo")
    ap.add_argument("--keys", type=int, default=8)
    ap.add_argument("--length", type=int, default=600)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--warmup", type=int, nargs="*", default=[],
                    help="adaptive warm-ups to compare (default: the artifact's)")
    args = ap.parse_args()
    print(f"model {args.model}, {args.keys} clean keys never seen in training, "
          f"{args.length} points each, OnlineDetector at run's defaults")
    print("| warmup | first decision: points (time) | own boundary: points (time) | "
          "flagged before own boundary | flagged in all |")
    print("|---|---|---|---|---|")
    for w in args.warmup or [None]:
        t0 = time.perf_counter()
        r = measure(args.model, args.keys, args.length, args.seed, w, None)
        s = r["step_s"]
        print(f"| {'default' if w is None else w} | {r['first']:.0f} "
              f"({(r['first'] - 1) * s / 60:.0f} min) | {r['own']:.0f} "
              f"({(r['own'] - 1) * s / 60:.0f} min) | {r['flagged_cold']} | "
              f"{r['flagged']} of {r['windows']} windows |  ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
