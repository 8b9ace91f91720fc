#!/usr/bin/env python
"""Bounded soak run: a detector under steady load, printing RSS, events/s and lag over time.

    python scripts/soak.py                    # 10 minutes, 2000 msg/s over 5000 keys
    python scripts/soak.py --minutes 2 --rate 1000 --keys 20000 --churn 0.2

Starts the embedded broker, trains a small model (or uses --model), runs
``stream-detector run`` as a subprocess and produces a steady stream (a fraction
``--churn`` of messages go to never-seen keys, so eviction is exercised too). Lag is
counted as produced - consumed messages (not from broker watermarks). Memory must stay
flat: the script compares the RSS of the second sample with the last and exits 1 if it grew
by more than --max-growth-mb.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Producer

from stream_detector.kafka.admin import ensure_topics
from stream_detector.kafka.embedded import EmbeddedBroker
from stream_detector.testing import DetectorProcess, train_wave_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=2000.0, help="messages per second")
    ap.add_argument("--keys", type=int, default=5000)
    ap.add_argument("--churn", type=float, default=0.05, help="fraction of messages to new keys")
    ap.add_argument("--max-series", type=int, default=20000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--max-growth-mb", type=float, default=50.0)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    model = args.model or train_wave_model(work / "model", window=32, epochs=5)
    broker = EmbeddedBroker(log_path=work / "broker.log")
    broker.start()
    bs = broker.bootstrap_servers
    ensure_topics(bs, {"in": args.partitions, "out": 1, "dlq": 1})
    det = DetectorProcess(bs, "in", "out", "soak", model,
                          ["--dlq-topic", "dlq", "--max-series", str(args.max_series),
                           "--commit-interval-ms", "1000"], log=work / "detector.log")
    det.wait_ready(120)
    produced = [0]
    stop = threading.Event()

    def produce() -> None:
        p = Producer({"bootstrap.servers": bs, "linger.ms": 20})
        rng = np.random.default_rng(0)
        t = np.zeros(args.keys)
        start = time.monotonic()
        fresh = 0
        while not stop.is_set():
            i = int(rng.integers(args.keys))
            if rng.random() < args.churn:
                key, ts, fresh = f"churn-{fresh}", 1_767_225_600.0, fresh + 1
            else:
                key, ts = f"key-{i}", 1_767_225_600.0 + float(t[i])
                t[i] += 60
            value = float(np.sin(ts / 1200.0) + rng.normal(0, 0.05))
            produce(p, "in", key=key.encode(),
                    value=orjson.dumps({"key": key, "ts": ts, "value": value}))
            produced[0] += 1
            ahead = start + produced[0] / args.rate - time.monotonic()
            if ahead > 0:
                p.poll(0)
                time.sleep(ahead)
        p.flush(30)

    th = threading.Thread(target=produce, daemon=True)
    th.start()
    print(f"soak: {args.minutes:g} min at {args.rate:g} msg/s over {args.keys} keys "
          f"(churn {args.churn:g}), max-series {args.max_series}; logs in {work}")
    print(f"{'t[s]':>6} {'rss[MB]':>8} {'msg/s':>8} {'windows/s':>9} {'lag':>8} {'series':>7}")
    samples: list[float] = []
    t0 = time.monotonic()
    last_c = last_w = 0.0
    last_t = t0
    try:
        while time.monotonic() - t0 < args.minutes * 60:
            time.sleep(args.every)
            m = det.metrics()
            now = time.monotonic()
            c = m.get("stream_detector_messages_consumed_total", 0.0)
            w = m.get("stream_detector_windows_scored_total", 0.0)
            rss = det.rss_mb()
            samples.append(rss)
            print(f"{now - t0:6.0f} {rss:8.1f} {(c - last_c) / (now - last_t):8.0f} "
                  f"{(w - last_w) / (now - last_t):9.0f} {produced[0] - c:8.0f} "
                  f"{m.get('stream_detector_active_series', 0):7.0f}", flush=True)
            last_c, last_w, last_t = c, w, now
            if det.proc.poll() is not None:
                print("detector exited!", file=sys.stderr)
                return 1
    finally:
        stop.set()
        th.join(30)
        det.terminate()
        broker.stop()
    base = samples[1] if len(samples) > 1 else samples[0]
    growth = samples[-1] - base
    print(f"RSS start {base:.1f} MB (second sample) end {samples[-1]:.1f} MB: "
          f"growth {growth:+.1f} MB ({'flat' if growth <= args.max_growth_mb else 'GROWING'})")
    return 0 if growth <= args.max_growth_mb else 1


if __name__ == "__main__":
    sys.exit(main())
