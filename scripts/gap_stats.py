"""How often series skip points: gaps per file of NAB (or any CSV in a supported format),
as --gap-policy would see them over a whole series (cadence = the median step; a step
longer than --gap-factor cadences is a gap of round(step / cadence) - 1 points).

    python scripts/gap_stats.py                      # NAB, from the shared data folder
    python scripts/gap_stats.py --input demo.csv --format long
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from stream_detector.datasets import read_dataset
from stream_detector.gaps import DEFAULT_GAP_FACTOR


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = Path(os.environ.get("STREAM_DETECTOR_DATA", "/work/shared/data")) / "nab" / "data"
    ap.add_argument("--input", nargs="*", default=None)
    ap.add_argument("--format", default="nab")
    ap.add_argument("--factor", type=float, default=DEFAULT_GAP_FACTOR)
    ap.add_argument("--max-fill", type=int, default=32, help="half the default window")
    args = ap.parse_args()
    files = args.input or sorted(str(p) for p in default.glob("*/*.csv"))
    rows = []
    for f in files:
        for s in read_dataset([f], args.format).series:
            d = np.diff(s.ts)
            cad = float(np.median(d))
            gap = d > args.factor * cad
            missing = np.rint(d[gap] / cad) - 1
            rows.append((f"{Path(f).parent.name}/{Path(f).name}:{s.key}", len(s), cad,
                         int(gap.sum()), int(missing.sum()),
                         int((missing > args.max_fill).sum())))
    print("| series | points | cadence (s) | gaps | points missing | gaps > max fill |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r[3]:
            print(f"| {r[0]} | {r[1]} | {r[2]:g} | {r[3]} | {r[4]} | {r[5]} |")
    with_gaps = [r for r in rows if r[3]]
    print(f"\n{len(with_gaps)} of {len(rows)} series have gaps: {sum(r[3] for r in rows)} gaps, "
          f"{sum(r[4] for r in rows)} points missing of {sum(r[1] for r in rows)} present, "
          f"{sum(r[5] for r in rows)} gaps longer than {args.max_fill} points")


if __name__ == "__main__":
    main()
