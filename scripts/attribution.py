"""Do events name the perturbed feature and expect a normal value? (docs/quality.md)

Generated three-feature series with one feature pushed off at a time
(``stream_detector.evaluation.attribution``), a model trained at ``train``'s defaults on
their clean first half (``--kinds``: the model kinds to compare; ``default`` is what
``train`` picks without ``--model``), the whole series scored through ``score``'s path.
Prints one row per kind and seed: perturbations detected, the share of them whose first
attributed feature is the perturbed one, the share whose expected value at the perturbed
point lies in the feature's normal band, and the incidents no perturbation explains.
Then the same for one feature: ``synthetic.generate``'s spikes and level shifts (8 keys x
2000 points, trained on the 40 % clean prefix): detected, and expected value in the band.

    python scripts/attribution.py --seeds 0 1 --kinds default conv1d lstm
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from stream_detector.artifact import load_artifact
from stream_detector.evaluation.attribution import (
    measure,
    measure_one_feature,
    perturbed,
    write_long,
)
from stream_detector.synthetic import generate, write_long_csv
from stream_detector.testing import cli


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--kinds", nargs="+", default=["default"])
    ap.add_argument("--series", type=int, default=6)
    ap.add_argument("--length", type=int, default=2000)
    args = ap.parse_args()
    print("| model | seed | perturbations | detected | first feature right | "
          "expected in band | false incidents | train s |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="attribution-") as tmp:
        work = Path(tmp)
        for seed in args.seeds:
            data = perturbed(n_series=args.series, length=args.length, seed=seed)
            train = write_long(data, work / f"train-{seed}.csv", slice(0, data.clean))
            for kind in args.kinds:
                out = work / f"{kind}-{seed}"
                t0 = time.perf_counter()
                cli("train", *([] if kind == "default" else ["--model", kind]), "--input",
                    str(train), "--format", "long", "--out", str(out), "--seed", str(seed),
                    "--quiet")
                took = time.perf_counter() - t0
                art = load_artifact(out)
                r = measure(art, data, work / f"all-{seed}.csv").row()
                name = f"{art.kind} (train's default)" if kind == "default" else art.kind
                print(f"| {name} | {seed} | {r['perturbations']} | {r['detected']} | "
                      f"{r['top_feature_right']:.0%} | {r['expected_in_band']:.0%} | "
                      f"{r['false_incidents']} | {took:.0f} |", flush=True)
        print("\n| model (one feature) | seed | spikes and level shifts | detected | "
              "expected in band |")
        print("|---|---|---|---|---|")
        for seed in args.seeds:
            one = generate(n_series=8, length=2000, seed=seed, anomalies_per_series=4)
            train = work / f"one-{seed}.csv"
            write_long_csv(one, train)
            for kind in args.kinds:
                out = work / f"one-{kind}-{seed}"
                cli("train", *([] if kind == "default" else ["--model", kind]), "--input",
                    str(train), "--format", "long", "--out", str(out), "--seed", str(seed),
                    "--train-fraction", str(one.clean_prefix / 2000), "--quiet")
                art = load_artifact(out)
                r = measure_one_feature(art, one, work / f"one-all-{seed}.csv").row()
                name = f"{art.kind} (train's default)" if kind == "default" else art.kind
                print(f"| {name} | {seed} | {r['perturbations']} | {r['detected']} | "
                      f"{r['expected_in_band']:.0%} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
