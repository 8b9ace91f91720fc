#!/usr/bin/env python
"""Where the service's time goes: cProfile of `run` consuming a pre-filled topic.

    python scripts/profile_e2e.py                  # conv1d, 1000 keys x 150 points
    python scripts/profile_e2e.py --kind lstm --top 40

Starts the embedded broker, fills a topic (the benchmark's stream), runs the detector
in-process under cProfile until every window is scored, and prints the functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # for bench


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="conv1d")
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--per-key", type=int, default=150)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    import bench

    from stream_detector import cli
    from stream_detector.kafka.admin import ensure_topics
    from stream_detector.kafka.embedded import EmbeddedBroker
    from stream_detector.service import loop
    from stream_detector.testing import FAST_GROUP, train_wave_model

    work = Path(tempfile.mkdtemp(prefix="profile-"))
    model = train_wave_model(work / "model", window=bench.WINDOW, kind=args.kind, epochs=1)
    broker = EmbeddedBroker(log_path=work / "broker.log")
    broker.start()
    bs = broker.bootstrap_servers
    try:
        ensure_topics(bs, {"profile-in": 4, "profile-out": 1})
        bench._produce(bs, "profile-in", args.keys, args.per_key)
        windows = args.keys * (args.per_key - bench.WINDOW + 1)
        made: list[loop.Detector] = []
        init = loop.Detector.__init__

        def capture(self: loop.Detector, *a: object, **k: object) -> None:
            init(self, *a, **k)  # type: ignore[arg-type]
            made.append(self)

        loop.Detector.__init__ = capture  # type: ignore[method-assign]

        def stop_when_done() -> None:
            while not made:
                time.sleep(0.1)
            det = made[0]
            while det.metrics.windows_scored._value.get() < windows:
                time.sleep(0.2)
            det.stop()

        threading.Thread(target=stop_when_done, daemon=True).start()
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.runcall(cli.main, [
            "run", "--bootstrap-servers", bs, "--input-topic", "profile-in",
            "--output-topic", "profile-out", "--group-id", "profile", "--model", str(model),
            "--metrics-port", "0", "--state", "none", "--commit-interval-ms", "1000",
            *FAST_GROUP])
        print(f"{windows} windows in {time.perf_counter() - t0:.1f} s (under the profiler)")
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
