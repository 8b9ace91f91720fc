#!/usr/bin/env python
"""Benchmark: model-only throughput, the machine's matmul limit, end to end through the
embedded broker, produce-to-event latency, memory per series, and scale (RSS, changelog
bytes and restore time against the number of active series), all in one run.

    python scripts/bench.py                      # the full benchmark (minutes)
    python scripts/bench.py --json bench.json    # also write every figure as JSON
    python scripts/bench.py --quick              # tiny sizes (the smoke test uses this)
    python scripts/bench.py --scale --scale-sizes 1000,5000,20000   # the scale part alone

Every figure comes from this one process/run, so ratios between them hold on a noisy
machine. Windows are 64 points of 1 feature; models have their default sizes. Models are
trained at train's defaults and detectors run at run's defaults (the report's first line
says so and names any exception, e.g. --quick's short training).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

WINDOW = 64


# -- 1. model only ------------------------------------------------------------------------
def flops_per_window(kind: str, params: dict[str, Any], window: int = WINDOW, nf: int = 1) -> float:
    """Multiply-adds x 2 of one forward pass (the dominant terms)."""
    if kind == "lstm":
        u = params["units"]
        return window * (8 * u * (nf + u) + 10 * u) + 2 * u * window * nf
    if kind == "conv1d":
        f, k = params["filters"], params["kernel_size"]
        return window * 2 * k * nf * f + window * f + 2 * f * window * nf
    if kind == "conv1d-seq":  # two strided convolutions down, three transposed up
        f, k = params["filters"], params["kernel_size"]
        h = max(1, f // 2)
        return 2 * k * (window / 2 * nf * f + window / 4 * f * h + window / 2 * h * h
                        + window * h * f + window * f * nf)
    raise ValueError(kind)


def matmul_gflops(seconds: float) -> float:
    import tensorflow as tf

    n = 2048
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    f = tf.function(lambda x, y: tf.matmul(x, y))
    f(a, b).numpy()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        f(a, b).numpy()
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def rate(fn: Any, n_per_call: int, seconds: float) -> float:
    fn()
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or calls < 3:
        fn()
        calls += 1
    return calls * n_per_call / (time.perf_counter() - t0)


def model_only(kind: str, batches: list[int], seconds: float) -> dict[str, Any]:
    from stream_detector.models import build

    m = build(kind, WINDOW, 1)
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, WINDOW, 1)).astype(np.float32)
    seed = rate(lambda: m.model.predict(one, verbose=0), 1, seconds)
    out: dict[str, Any] = {"kind": kind, "seed_predict_windows_s": seed, "batched": {}}
    for b in batches:
        x = rng.standard_normal((b, WINDOW, 1)).astype(np.float32)
        out["batched"][b] = rate(lambda x=x: m.score_batch(x), b, seconds)
    out["flops_per_window"] = flops_per_window(kind, m.params)
    out["traces"] = m.scorer.traces
    # what explaining costs the model call (events' expected values and attribution):
    # the errors-only call and the explaining one at batch 256, alternated, best of 3
    x = rng.standard_normal((256, WINDOW, 1)).astype(np.float32)
    errors, explain = [], []
    for _ in range(3):
        errors.append(rate(lambda: m.score_batch(x), 256, seconds / 3))
        explain.append(rate(lambda: m.explain_batch(x), 256, seconds / 3))
    out["explain_256"] = {"errors": max(errors), "explain": max(explain)}
    return out


def model_parallel(kind: str, batches: list[int], seconds: float) -> dict[str, Any]:
    """The service's way (``run``'s defaults): ``workers`` calls at once, each on
    ``threads`` TensorFlow threads. Threads are fixed when TensorFlow starts, so this part
    runs in a child process of this run."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, __file__, "--parallel-child", kind, str(seconds),
         ",".join(map(str, batches))], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"parallel model-only part failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for field in ("batched", "cpu_us_per_window"):  # JSON made the batch sizes str
        out[field] = {int(b): v for b, v in out[field].items()}
    return out


def _parallel_child(kind: str, seconds: float, batches: list[int]) -> dict[str, Any]:
    from stream_detector.models.base import plan_threads, set_threads

    workers, threads = plan_threads()
    set_threads(threads, workers)
    from stream_detector.models import build

    m = build(kind, WINDOW, 1)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"workers": workers, "threads": threads, "batched": {},
                           "cpu_us_per_window": {}}
    for b in batches:
        x = rng.standard_normal((b, WINDOW, 1)).astype(np.float32)
        m.score_batch(x)
        calls = [0] * workers
        c0, t0 = time.process_time(), time.perf_counter()

        def loop(i: int, x: np.ndarray = x, t0: float = t0, calls: list[int] = calls) -> None:
            while time.perf_counter() - t0 < seconds or calls[i] < 3:
                m.score_batch(x)
                calls[i] += 1

        ths = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        out["batched"][b] = sum(calls) * b / (time.perf_counter() - t0)
        # CPU time of all the process' threads per window: what the model itself costs
        out["cpu_us_per_window"][b] = (time.process_time() - c0) / (sum(calls) * b) * 1e6
    return out


# -- 2. end to end --------------------------------------------------------------------------
def _produce(bs: str, topic: str, n_keys: int, per_key: int, rate_s: float = 0.0,
             wallclock_ts: bool = False, spike_every: int = 0, linger_ms: int = 20,
             spikes: dict[str, list[float]] | None = None,
             at_first_window: Callable[[], None] | None = None) -> int:
    from confluent_kafka import Producer

    from stream_detector.kafka.produce import produce

    p = Producer({"bootstrap.servers": bs, "linger.ms": linger_ms,
                  "batch.num.messages": 10000})
    rng = np.random.default_rng(1)
    last_spike: dict[int, int] = {}
    start = time.monotonic()
    n = 0
    for i in range(per_key):
        if i == WINDOW - 1 and at_first_window is not None:
            at_first_window()  # the points from here on complete windows
        # the family the model was trained on (stream_detector.testing.wave): level 10, amplitude 2,
        # period 20, noise 0.1, a phase per key
        vals = (10.0 + 2.0 * np.sin(2 * np.pi * i / 20 + np.arange(n_keys))
                + rng.normal(0, 0.1, n_keys))
        for k in range(n_keys):
            ts = time.time() if wallclock_ts else 1_767_225_600 + 60 * i
            key = f"series-{k}"
            v = float(vals[k])
            # one spike per ~spike_every messages, in a random series that has had no
            # spike for two windows (so that each spike opens its own incident)
            if (spike_every and i >= WINDOW and rng.random() < 1.0 / spike_every
                    and i - last_spike.get(k, -3 * WINDOW) > 2 * WINDOW):
                last_spike[k] = i
                v += 12.0
                if spikes is not None:
                    spikes.setdefault(key, []).append(ts)
            produce(p, topic, key=key.encode(),
                    value=orjson.dumps({"key": key, "ts": ts, "value": v}), wait_s=0.01)
            n += 1
            if rate_s > 0:
                # paced in bursts of at most ~1 ms (a sleep per message would cost the
                # 2-core machine more CPU than the detector's work)
                ahead = start + n / rate_s - time.monotonic()
                if ahead > 0.001:
                    p.poll(0)
                    time.sleep(ahead)
    p.flush(120)
    return n


# -- the settings: every figure at train's and run's defaults ---------------------------
def run_default(name: str) -> Any:
    """``run``'s default for its option ``name`` (read, never restated here)."""
    from stream_detector.config import RUN_OPTS

    return next(o.default for o in RUN_OPTS if o.name == name)


def default_args() -> list[str]:
    """What puts a ``DetectorProcess`` back at ``run``'s defaults: that test harness sets a
    faster 200 ms commit interval of its own. (Its other setting, a faster group join,
    ``FAST_GROUP``, is kept: it only shortens a detector's start; the report says so.)"""
    return ["--commit-interval-ms", f"{run_default('commit_interval_ms'):g}"]


# the e2e and latency parts' detector arguments beyond run's defaults (main() adds
# --max-batch when asked for another than run's, and --detector-arg); the report names them
EXTRA_ARGS: list[str] = []
# models are trained at train's defaults (None); --quick trains a few epochs, and says so
TRAIN_EPOCHS: int | None = None


def train_model(path: Path, kind: str = "conv1d") -> Path:
    """The bench's model of ``kind`` (trained once per run, at train's defaults: model size,
    window, epochs with early stopping, decision) on the family the bench streams."""
    from stream_detector.artifact import read_metadata
    from stream_detector.testing import train_wave_model

    if not path.exists():
        train_wave_model(path, window=None, kind=kind, epochs=TRAIN_EPOCHS, decision=None)
    meta = read_metadata(path)
    if int(meta["window"]) != WINDOW:
        raise RuntimeError(f"train's default window is now {meta['window']}, the bench "
                           f"streams and counts windows of {WINDOW}: update WINDOW")
    return path


def decision_of(model: Path) -> str:
    """The decision method a model was trained with (its artifact says; train's default)."""
    return str(_decision_spec(model)["method"])


def settings_line(r: dict[str, Any]) -> str:
    s = r["settings"]
    train = "train's defaults" + (f", except {s['epochs']} epochs" if s["epochs"] else "")
    run = "run's defaults" + (f", except {' '.join(s['extra'])} (e2e and latency parts)"
                              if s["extra"] else "")
    dec = f"; decision {s['decision']} (train's default)" if s.get("decision") else ""
    return (f"settings: models trained at {train}{dec}; detectors at {run}, hop 1 (the "
            f"artifact's), state in the changelog; each detector joins its group with "
            f"{' '.join(s['fast_group'][1::2])} (a faster start only)")


def sustained(kind: str, bs: str, work: Path, model: Path, n_keys: int, per_key: int,
              max_batch: int, broker_pid: int | None,
              extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Consume a pre-filled topic: input events/s and windows/s through the whole service,
    and the cores the detector and the broker use in the steady state (``extra``: more
    `run` options, for a comparison row)."""
    from stream_detector.kafka.admin import ensure_topics
    from stream_detector.testing import DetectorProcess, wait_until

    tag = f"{kind}-{os.getpid()}" + "".join(a.strip("-") for a in extra)
    src, out = f"bench-in-{tag}", f"bench-out-{tag}"
    ensure_topics(bs, {src: 4, out: 1})
    n = _produce(bs, src, n_keys, per_key)
    windows = n_keys * (per_key - WINDOW + 1)
    det = DetectorProcess(bs, src, out, f"bench-{tag}", model,
                          [*default_args(), *EXTRA_ARGS, *extra], log=work / f"{tag}-e2e.log")
    try:
        wait_until(lambda: det.value("stream_detector_messages_consumed_total") > 0, 120,
                   "first message", det._tail)
        c0, t0 = det.value("stream_detector_messages_consumed_total"), time.perf_counter()
        # steady state: windows scored between 10% and 90% of the total (past the first
        # WINDOW-1 points of each key, where messages make no window yet)
        w0 = det.wait_value("stream_detector_windows_scored_total", 0.1 * windows, 1800)
        clock = _Cores({"detector": det.proc.pid, "broker": broker_pid})
        tw0 = time.perf_counter()
        w1 = det.wait_value("stream_detector_windows_scored_total", 0.9 * windows, 1800)
        tw1 = time.perf_counter()
        cores = clock.since("steady_cores_")
        det.wait_value("stream_detector_windows_scored_total", windows, timeout=1800)
        t1 = time.perf_counter()
        rate_s = (n - c0) / (t1 - t0)
        m = det.metrics()
    finally:
        det.terminate()
    # a tiny run (--quick) can score its steady stretch in one batch: then the whole run
    windows_s = (w1 - w0) / (tw1 - tw0) if w1 > w0 else windows / (t1 - t0)
    return {"kind": kind, "messages": n, "keys": n_keys, "windows": windows,
            "max_batch": max_batch, "sustained_msgs_s": rate_s, "sustained_windows_s": windows_s,
            "mean_batch": _mean(m, "stream_detector_inference_batch_size"), **cores,
            "steady_detector_cpu_us_per_window":
                cores["steady_cores_detector"] / windows_s * 1e6}


class _Receiver(threading.Thread):
    """Reads a topic live (assigned, from the start) and keeps each event with its Kafka
    timestamp and its arrival time: what a downstream consumer of the events sees. Once
    halted it reads what is left (arrival None: not received live)."""

    def __init__(self, bs: str, topic: str) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Consumer, TopicPartition

        self.consumer = Consumer({"bootstrap.servers": bs, "group.id": f"bench-rx-{os.getpid()}",
                                  "enable.auto.commit": False,
                                  # Tansu answers a waiting fetch as soon as data arrives
                                  # (measured: p50 3 ms with 5 or 20), and a shorter wait
                                  # only costs it more idle polls (0.09 cores against 0.05)
                                  "fetch.wait.max.ms": 20})
        self.consumer.assign([TopicPartition(topic, 0, 0)])
        # (event, its Kafka timestamp s, wall-clock arrival s or None), in topic order
        self.events: list[tuple[dict[str, Any], float, float | None]] = []
        self.halt = threading.Event()

    def _take(self, first: Any, live: bool) -> None:
        # poll() returns at the first message; consume(n, timeout) would wait out its
        # timeout for n of them
        for msg in [first, *self.consumer.consume(num_messages=500, timeout=0)]:
            if msg.error() is None:
                self.events.append((orjson.loads(msg.value()), msg.timestamp()[1] / 1000.0,
                                    time.time() if live else None))

    def run(self) -> None:
        while not self.halt.is_set():
            first = self.consumer.poll(0.05)
            if first is not None:
                self._take(first, live=True)
        while (first := self.consumer.poll(5.0)) is not None:  # the rest, until 5 s idle
            self._take(first, live=False)
        self.consumer.close()


def _cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) a process has used so far, s (0 when it is gone)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


class _Cores:
    """The cores each of some processes (name -> pid) uses from :meth:`start` on."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.start()

    def start(self) -> None:
        self.cpu0 = {k: _cpu_seconds(p) for k, p in self.pids.items()}
        self.t0 = time.perf_counter()

    def since(self, prefix: str) -> dict[str, float]:
        """``{prefix + name: CPU seconds / wall seconds}`` since :meth:`start`."""
        wall = time.perf_counter() - self.t0
        return {prefix + k: (_cpu_seconds(p) - self.cpu0[k]) / wall
                for k, p in self.pids.items()}


def latency(kind: str, bs: str, work: Path, model: Path, n_keys: int, rate_s: float,
            seconds: float, max_batch: int, broker_pid: int | None = None,
            linger_ms: int = 20) -> dict[str, Any]:
    """Produce-to-event latency of a steady stream at ``rate_s`` messages/s.

    A spike is injected into a random series every ~0.2 s; each opens an incident. Its
    `opened` event is timed from its arrival at a live consumer of the output topic back to
    (a) the produce time of the input message that completed the flagged window (the
    pipeline's latency: that message's wall-clock ``ts`` is the window's ``window_end``)
    and (b) the produce time of the spike (adds the model's detection delay: a spike that
    the window ending at it does not flag waits for the key's next points).
    """
    from stream_detector.datasets import parse_timestamp
    from stream_detector.kafka.admin import ensure_topics
    from stream_detector.testing import DetectorProcess

    tag = f"{kind}-{os.getpid()}"
    src, out = f"bench-lat-in-{tag}", f"bench-lat-out-{tag}"
    ensure_topics(bs, {src: 4, out: 1})
    rx = _Receiver(bs, out)
    rx.start()
    det = DetectorProcess(bs, src, out, f"bench-lat-{tag}", model,
                          [*default_args(), *EXTRA_ARGS], log=work / f"{kind}-lat.log")
    try:
        det.wait_ready()
        per_key = int(WINDOW + rate_s * seconds / n_keys)
        spikes: dict[str, list[float]] = {}
        # who uses the machine's cores while windows are scored (all on this one machine;
        # from the first point that completes a window, as the keys' first points only fill
        # their buffers)
        clock = _Cores({"detector": det.proc.pid, "broker": broker_pid, "bench": os.getpid()})
        n = _produce(bs, src, n_keys, per_key, rate_s=rate_s, wallclock_ts=True,
                     spike_every=max(1, int(rate_s * 0.2)), linger_ms=linger_ms, spikes=spikes,
                     at_first_window=clock.start)
        cores = clock.since("cores_")
        expected = n_keys * (per_key - WINDOW + 1)
        det.wait_value("stream_detector_windows_scored_total", expected, timeout=600)
        time.sleep(2)
        m = det.metrics()
    finally:
        det.terminate()
        rx.halt.set()
        rx.join(60)
    # each incident's first event (the receiver's first copy, should one be redelivered)
    events: dict[str, tuple[dict[str, Any], float, float | None]] = {}
    for ev, created, arrived in rx.events:
        if ev["type"] == "opened":
            events.setdefault(ev["event_id"], (ev, created, arrived))
    pipe_l, spike_l, false_alarms, missing, timeline = [], [], 0, 0, []
    in_det, to_rx = [], []  # the split: input produce -> event produced -> event arrived
    first = min((t for ts in spikes.values() for t in ts), default=0.0)
    for e, created, arrived in events.values():
        if arrived is None:
            missing += 1
            continue
        end = parse_timestamp(e["window_end"])  # ISO keeps ms: end is <= 1 ms early
        before = [t for t in spikes.get(e["key"], []) if t <= end + 0.001]
        if not before:
            false_alarms += 1
            continue
        pipe_l.append(arrived - end)
        spike_l.append(arrived - before[-1])
        in_det.append(created - end)
        to_rx.append(arrived - created)
        timeline.append((round(before[-1] - first, 3), round(pipe_l[-1] * 1000, 1),
                         round(spike_l[-1] * 1000, 1)))
    pipe, spike = np.array(pipe_l) * 1000, np.array(spike_l) * 1000
    det_ms, rx_ms = np.array(in_det) * 1000, np.array(to_rx) * 1000

    def pct(a: np.ndarray, q: float) -> float | None:
        return float(np.percentile(a, q)) if len(a) else None

    return {
        "kind": kind, "latency_rate_msgs_s": rate_s, "latency_messages": n,
        "latency_producer_linger_ms": linger_ms,
        "latency_events": len(pipe), "latency_spikes": sum(map(len, spikes.values())),
        "latency_false_alarms": false_alarms, "latency_not_received_live": missing,
        "latency_p50_ms": pct(pipe, 50), "latency_p99_ms": pct(pipe, 99),
        "latency_max_ms": float(pipe.max()) if len(pipe) else None,
        "spike_latency_p50_ms": pct(spike, 50), "spike_latency_p99_ms": pct(spike, 99),
        # where it goes: until the detector produced the event (its Kafka timestamp), then
        # the event's way through the producer, the broker and the consumer's fetch
        "detector_p50_ms": pct(det_ms, 50), "detector_p99_ms": pct(det_ms, 99),
        "event_delivery_p50_ms": pct(rx_ms, 50), "event_delivery_p99_ms": pct(rx_ms, 99),
        "mean_batch_at_latency_rate": _mean(m, "stream_detector_inference_batch_size"),
        "mean_checkpoint_ms": _mean(m, "stream_detector_checkpoint_seconds", 1000.0),
        "mean_inference_ms": _mean(m, "stream_detector_inference_seconds", 1000.0),
        # cores used while windows were scored (the bench process is the producer and the
        # event consumer)
        **cores,
        # (spike's produce time from the first spike s, pipeline ms, from-spike ms)
        "latency_timeline": sorted(timeline),
    }


def _mean(m: dict[str, float], histogram: str, scale: float = 1.0) -> float | None:
    """Mean of a scraped histogram (None before its first observation)."""
    n = m.get(f"{histogram}_count", 0.0)
    return m.get(f"{histogram}_sum", 0.0) / n * scale if n else None


# -- 3. memory ----------------------------------------------------------------------------
def _checkpointed(det: Any, records: int) -> None:
    """Wait until ``records`` state records are written and the checkpoint that wrote them
    has completed: it completes once the broker confirmed its records, then the heap is
    trimmed. (It may have completed already: an idle detector completes no more, so after
    5 s without one it is taken as done.)"""
    from stream_detector.testing import wait_until

    det.wait_value("stream_detector_state_records_written_total", records, 120)
    done = det.value("stream_detector_checkpoint_seconds_count")
    try:
        wait_until(lambda: det.value("stream_detector_checkpoint_seconds_count") > done, 5.0,
                   "a checkpoint to complete")
    except AssertionError:
        pass  # none in 5 s: the one that wrote them had completed already
    time.sleep(0.5)


def memory(bs: str, work: Path, n_series: int) -> dict[str, Any]:
    from stream_detector.kafka.admin import ensure_topics
    from stream_detector.kafka.produce import produce
    from stream_detector.testing import DetectorProcess

    model = train_model(work / "conv1d-model")
    tag = f"mem-{os.getpid()}"
    ensure_topics(bs, {tag: 4, tag + "-out": 1})
    # not run's default max-series when the series would not fit in it (the report says so)
    max_series = max(run_default("max_series"), n_series * 2)
    extra = [] if max_series == run_default("max_series") else ["--max-series", str(max_series)]
    det = DetectorProcess(bs, tag, tag + "-out", tag, model, [*default_args(), *extra],
                          log=work / "mem.log")
    try:
        det.wait_ready()
        # the baseline holds some series too, so both readings are of a detector whose heap
        # has been through big checkpoints (and their trims), and the slope is per series
        base_keys = max(1000, n_series // 10)
        _produce(bs, tag, base_keys, 1)
        det.wait_value("stream_detector_messages_consumed_total", base_keys)
        # measured once a checkpoint has written every key's state and the broker has
        # confirmed it (then its transient buffers are freed and the heap trimmed: they
        # are part of the peak, not of the steady state)
        _checkpointed(det, base_keys)
        rss0 = det.rss_mb()
        from confluent_kafka import Producer

        p = Producer({"bootstrap.servers": bs, "linger.ms": 20})
        for k in range(n_series):
            key = f"mem-series-{k:07d}"
            produce(p, tag, key=key.encode(),
                    value=orjson.dumps(
                        {"key": key, "ts": 1_767_225_600, "value": 0.5}), wait_s=0.01)
        p.flush(60)
        det.wait_value("stream_detector_messages_consumed_total", base_keys + n_series, 600)
        _checkpointed(det, base_keys + n_series)
        rss1 = det.rss_mb()
        peak = det.rss_mb("VmHWM")
        active = det.value("stream_detector_active_series")
    finally:
        det.terminate()
    return {"series": n_series, "active": active, "extra_args": extra,
            "rss_before_mb": rss0, "rss_after_mb": rss1,
            "bytes_per_series": (rss1 - rss0) * 1024 * 1024 / n_series,
            "peak_rss_mb": peak, "peak_bytes_per_series": (peak - rss0) * 1024 * 1024 / n_series}


# -- 4. scale ------------------------------------------------------------------------------
def _produce_series(bs: str, topic: str, n_keys: int, per_key: int, prefix: str) -> int:
    """``per_key`` points of each of ``n_keys`` series (the wave family the model was trained
    on), in time order across the keys, in big producer batches."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bs, "linger.ms": 50, "batch.num.messages": 10000,
                  "queue.buffering.max.messages": 500_000,
                  "queue.buffering.max.kbytes": 1_048_576})
    rng = np.random.default_rng(2)
    keys = [f"{prefix}-{k:07d}" for k in range(n_keys)]
    kbytes = [k.encode() for k in keys]
    phase = np.arange(n_keys)
    for i in range(per_key):
        ts = 1_767_225_600 + 60 * i
        vals = (10.0 + 2.0 * np.sin(2 * np.pi * i / 20 + phase)
                + rng.normal(0, 0.1, n_keys)).tolist()
        for key, kb, v in zip(keys, kbytes, vals, strict=True):
            value = orjson.dumps({"key": key, "ts": ts, "value": v})
            while True:
                try:
                    p.produce(topic, value, kb)
                    break
                except BufferError:  # the local queue is full: let it drain
                    p.poll(0.05)
        p.poll(0)
    if p.flush(300):
        raise RuntimeError(f"{topic}: input not delivered")
    return n_keys * per_key


def changelog_sizes(bs: str, topic: str, timeout: float = 300) -> dict[str, float]:
    """Per key of a state changelog, the length (key + value) of its latest record
    (the restore's markers and deleted keys left out): keys, mean, max, total bytes."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    from stream_detector.state import MARKER_PREFIX

    c = Consumer({"bootstrap.servers": bs, "group.id": f"bench-changelog-{os.getpid()}",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        parts = list(c.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in parts}
        todo = {p for p in parts if ends[p] > 0}
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
        latest: dict[bytes, int] = {}
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            for msg in c.consume(10_000, 1.0):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        todo.discard(msg.partition())
                    continue
                key, value = msg.key() or b"", msg.value()
                if key.startswith(MARKER_PREFIX):
                    pass
                elif value is None:
                    latest.pop(key, None)
                else:
                    latest[key] = len(key) + len(value)
                part, offset = int(msg.partition() or 0), int(msg.offset() or 0)
                if offset + 1 >= ends[part]:
                    todo.discard(part)
        if todo:
            raise RuntimeError(f"{topic}: not read to its end in {timeout} s")
    finally:
        c.close()
    sizes = np.array(list(latest.values()), dtype=np.float64)
    return {"keys": len(sizes), "mean": float(sizes.mean()) if len(sizes) else 0.0,
            "max": float(sizes.max()) if len(sizes) else 0.0, "total": float(sizes.sum())}


def scale_one(bs: str, work: Path, model: Path, n: int, windows_per_key: int) -> dict[str, Any]:
    """``n`` active series through ``run`` (at its defaults), each past a full window and
    ``windows_per_key`` windows: RSS, the changelog's bytes per key, and the time a fresh
    detector on the same group takes to restore them all."""
    from stream_detector.kafka.admin import ensure_topics
    from stream_detector.testing import DetectorProcess, wait_until

    tag = f"scale-{n}-{os.getpid()}"
    src, out = f"{tag}-in", f"{tag}-out"
    ensure_topics(bs, {src: 4, out: 1})
    # not run's default max-series where n would not fit in it (the report says so)
    extra = [] if n <= run_default("max_series") else ["--max-series", str(n)]
    args = [*default_args(), *extra]
    t_start = time.monotonic()
    det = DetectorProcess(bs, src, out, tag, model, args, log=work / f"{tag}.log")
    try:
        det.wait_ready(180)
        start_s = time.monotonic() - t_start  # an empty state: the start itself
        rss0 = det.rss_mb()
        t0 = time.monotonic()
        msgs = _produce_series(bs, src, n, WINDOW - 1 + windows_per_key, tag)
        det.wait_value("stream_detector_windows_scored_total", n * windows_per_key, 1800)
        feed_s = time.monotonic() - t0
        # every key's state written by the checkpoints after its last point, confirmed by
        # the broker (then their buffers are freed and the heap trimmed): an idle detector
        # takes no more, so wait until none has completed for a few commit intervals
        _quiesced(det)
        rss1, peak = det.rss_mb(), det.rss_mb("VmHWM")
        active = det.value("stream_detector_active_series")
    finally:
        code, stop_s = det.terminate(120)  # graceful: its last checkpoint, then leave
    if code != 0:
        raise RuntimeError(f"detector exited {code}: {det._tail()}")
    cl = changelog_sizes(bs, f"{tag}-state")
    # a fresh detector on the same group: from its start until every key is restored
    t0 = time.monotonic()
    det2 = DetectorProcess(bs, src, out, tag, model, args, log=work / f"{tag}-restore.log")
    try:
        def restored() -> bool:
            m = det2.metrics()
            return (m.get("stream_detector_state_ready") == 1.0
                    and m.get("stream_detector_state_restored_keys_total", 0.0) >= n)

        wait_until(restored, 900, f"{n} keys restored", det2._tail)
        restart_s = time.monotonic() - t0
        m2 = det2.metrics()
        rss_restored = det2.rss_mb()
    finally:
        det2.terminate(120)
    return {"series": n, "windows_per_key": windows_per_key, "messages": msgs,
            "extra_args": extra, "feed_s": feed_s, "active": active,
            "rss_idle_mb": rss0, "rss_mb": rss1, "peak_rss_mb": peak,
            "rss_bytes_per_series": (rss1 - rss0) * 1024 * 1024 / n,
            "changelog_keys": cl["keys"], "changelog_mean_bytes": cl["mean"],
            "changelog_max_bytes": cl["max"], "changelog_total_bytes": cl["total"],
            "stop_s": stop_s, "start_s": start_s, "restart_s": restart_s,
            "restore_s": m2.get("stream_detector_state_restore_seconds_sum", float("nan")),
            "restored_keys": m2.get("stream_detector_state_restored_keys_total", 0.0),
            "restored_active": m2.get("stream_detector_active_series", 0.0),
            "rss_restored_mb": rss_restored}


def _quiesced(det: Any, timeout: float = 300) -> None:
    """Wait until the detector has completed no checkpoint for 3 commit intervals."""
    quiet_s = 3 * run_default("commit_interval_ms") / 1000.0
    deadline = time.monotonic() + timeout
    last = det.value("stream_detector_checkpoint_seconds_count")
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = det.value("stream_detector_checkpoint_seconds_count")
        if now == last:
            return
        last = now
    raise RuntimeError(f"the detector kept checkpointing for {timeout} s after its input")


def scale(bs: str, work: Path, sizes: list[int], windows_per_key: int) -> dict[str, Any]:
    model = train_model(work / "conv1d-model")
    rows = [scale_one(bs, work, model, n, windows_per_key) for n in sorted(sizes)]
    for prev, row in zip([None, *rows], rows, strict=False):
        row["rss_slope_bytes_per_series"] = (
            row["rss_bytes_per_series"] if prev is None else
            (row["rss_mb"] - prev["rss_mb"]) * 1024 * 1024 / (row["series"] - prev["series"]))
    # each N runs in a process of its own, whose idle RSS alone moves by tens of MB: the
    # bytes per series are the least-squares slope over every N, not one difference
    ns = np.array([r["series"] for r in rows], dtype=float)
    rss = np.array([r["rss_mb"] * 1024 * 1024 for r in rows])
    fit = float(np.polyfit(ns, rss, 1)[0]) if len(rows) > 1 else rows[0]["rss_bytes_per_series"]
    last = rows[-1]
    million = 1_000_000
    spec = _decision_spec(model)
    return {"rows": rows, "decision": spec.get("method"), "history": spec.get("history"),
            "windows_per_key": windows_per_key, "rss_fit_bytes_per_series": fit,
            "projection_1m": {
                # a slope at or below 0 is the processes' own noise: too few series to tell
                "rss_gb": (last["rss_mb"] * 1024 * 1024 + fit * (million - last["series"]))
                / 1e9 if fit > 0 else None,
                "changelog_gb": last["changelog_mean_bytes"] * million / 1e9,
                "restore_s": _linear(rows, "restore_s", million),
                "restart_s": _linear(rows, "restart_s", million)}}


def _linear(rows: list[dict[str, Any]], field: str, n: int) -> float:
    """``field`` at ``n`` series on the line through the smallest and the largest N (through
    0 with one row); never below the largest N's own figure."""
    a, b = rows[0], rows[-1]
    if a is b:
        return float(b[field] / b["series"] * n)
    slope = (b[field] - a[field]) / (b["series"] - a["series"])
    return float(b[field] + max(0.0, slope) * (n - b["series"]))


def _decision_spec(model: Path) -> dict[str, Any]:
    from stream_detector.artifact import read_metadata

    return dict(read_metadata(model)["decision"])


PARTS = ("model", "e2e", "latency", "memory", "scale")
SCALE_SIZES = [2000, 20000, 50000]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    ap.add_argument("--kinds", default="conv1d-seq,lstm,conv1d")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help="which parts to run (default: %(default)s)")
    ap.add_argument("--skip-e2e", action="store_true", help="only the model-only part")
    ap.add_argument("--latency-rate", type=float, default=None,
                    help="messages/s for the latency part (default: half the sustained rate; "
                         "required when e2e is not run)")
    ap.add_argument("--latency-seconds", type=float, default=None)
    ap.add_argument("--producer-linger-ms", type=int, default=20,
                    help="the latency part's input producer's linger.ms (its batching wait, "
                         "part of the measured latency; default: %(default)s)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work folder (models, broker and detector logs)")
    ap.add_argument("--detector-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for the e2e and latency parts' detector `run` "
                         "(repeatable; the memory part keeps its own arguments), e.g. "
                         "--detector-arg=--inference-threads --detector-arg=1")
    ap.add_argument("--max-batch", type=int, default=None,
                    help="the e2e and latency parts' detector --max-batch (its largest scoring "
                         "shape; default: run's default)")
    ap.add_argument("--scale", action="store_true",
                    help="only the scale part (same as --parts scale)")
    ap.add_argument("--scale-sizes", default=None, metavar="N,N,...",
                    help=f"active series per step of the scale part (default: "
                         f"{','.join(map(str, SCALE_SIZES))}; --quick: 50,100)")
    ap.add_argument("--scale-windows", type=int, default=150, metavar="N",
                    help="windows each series of the scale part is fed past its first full "
                         "window (default: %(default)s, past the decision's warm-up)")
    ap.add_argument("--parallel-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.parallel_child:
        kind, secs, bs = args.parallel_child
        print(json.dumps(_parallel_child(kind, float(secs), [int(b) for b in bs.split(",")])))
        return 0
    global TRAIN_EPOCHS
    max_batch = args.max_batch or run_default("max_batch")
    if max_batch != run_default("max_batch"):
        EXTRA_ARGS.extend(["--max-batch", str(max_batch)])
    EXTRA_ARGS.extend(args.detector_arg)
    if args.quick:
        TRAIN_EPOCHS = 2  # a smoke run; the report says so
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parts = set(args.parts.split(","))
    if unknown := parts - set(PARTS):
        ap.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    if args.skip_e2e:
        parts = {"model"}
    if args.scale:
        parts = {"scale"}
    if "latency" in parts and "e2e" not in parts and args.latency_rate is None:
        ap.error("--latency-rate is needed when the e2e part does not run")
    q = args.quick
    seconds = 0.3 if q else 3.0
    batches = [1, 32] if q else [1, 32, 256, 1024]
    kinds = args.kinds.split(",")
    from stream_detector.testing import FAST_GROUP

    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "settings": {"epochs": TRAIN_EPOCHS, "extra": list(EXTRA_ARGS),
                     "fast_group": list(FAST_GROUP)},
    }
    import tensorflow as tf

    res["tensorflow"] = tf.__version__
    if "model" in parts:
        res["matmul_gflops"] = matmul_gflops(seconds)
        res["model_only"] = [model_only(k, batches, seconds) for k in kinds]
        for mo in res["model_only"]:
            mo["parallel"] = model_parallel(mo["kind"], batches, seconds)
    if parts & {"e2e", "latency", "memory", "scale"}:
        from stream_detector.kafka.embedded import EmbeddedBroker

        work = Path(tempfile.mkdtemp(prefix="bench-"))
        broker = EmbeddedBroker(log_path=work / "broker.log")
        broker.start()
        bs = broker.bootstrap_servers
        try:
            n_keys, per_key = (100, 200) if q else (1000, 200)
            lat_s = args.latency_seconds or (3 if q else 20)
            res["end_to_end"] = []
            for k in kinds if parts & {"e2e", "latency"} else []:
                model = train_model(work / f"{k}-model", k)
                res["settings"]["decision"] = decision_of(model)
                row: dict[str, Any] = {"kind": k, "decision": decision_of(model)}
                if "e2e" in parts:
                    row.update(sustained(k, bs, work, model, n_keys, per_key, max_batch,
                                         broker.pid))
                    # the same run deciding with the seed's rule: what the default costs
                    st = sustained(k, bs, work, model, n_keys, per_key, max_batch,
                                   broker.pid, ("--decision", "static"))
                    row["static_windows_s"] = st["sustained_windows_s"]
                    # and without explaining (actual, expected, attribution): what it costs
                    ex = sustained(k, bs, work, model, n_keys, per_key, max_batch,
                                   broker.pid, ("--explain", "off"))
                    row["explain_off_windows_s"] = ex["sustained_windows_s"]
                    row["explain_off_cpu_us_per_window"] = ex.get(
                        "steady_detector_cpu_us_per_window")
                if "latency" in parts:
                    # half the steady-state rate: there every message makes a window
                    r = args.latency_rate or row["sustained_windows_s"] / 2
                    row.update(latency(k, bs, work, model, n_keys, r, lat_s, max_batch,
                                       broker.pid, args.producer_linger_ms))
                res["end_to_end"].append(row)
            if "memory" in parts:
                res["memory"] = memory(bs, work, 2000 if q else 100_000)
                res["settings"]["decision"] = decision_of(work / "conv1d-model")
            if "scale" in parts:
                sizes = ([int(x) for x in args.scale_sizes.split(",")] if args.scale_sizes
                         else [50, 100] if q else SCALE_SIZES)
                res["scale"] = scale(bs, work, sizes, args.scale_windows)
                res["settings"]["decision"] = res["scale"]["decision"]
        finally:
            broker.stop()
            if args.keep:
                print(f"models and logs kept in {work}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)
    for e in res.get("end_to_end", []):
        if "sustained_windows_s" in e:
            e.update(_e2e_share(e, res.get("model_only", [])))
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))
    return 0


def _e2e_share(e: dict[str, Any], model_only: list[dict[str, Any]]) -> dict[str, Any]:
    """The end-to-end rate against the model's best at the detector's batch size (the better
    of one call at a time and the service's parallel calls); empty without model figures."""
    mo = next((m for m in model_only if m["kind"] == e["kind"]), None)
    if mo is None:
        return {}
    b = e["max_batch"] if e["max_batch"] in mo["batched"] else max(mo["batched"])
    one = mo["batched"][b]
    ref = max(one, mo.get("parallel", {}).get("batched", {}).get(b, 0.0))
    w = e["sustained_windows_s"]
    out = {"model_only_batch": b, "model_only_ref_windows_s": ref,
           "e2e_share_of_model_only": w / ref, "e2e_share_of_one_call": w / one}
    model_cpu = mo.get("parallel", {}).get("cpu_us_per_window", {}).get(b)
    cpu = e.get("steady_detector_cpu_us_per_window")
    if model_cpu and cpu:
        # what the streaming costs on top of the model, and the rate the machine's cores
        # allow at the detector's CPU per window if none of them ever idled
        cores = os.cpu_count() or 1
        out.update({"model_cpu_us_per_window": model_cpu,
                    "streaming_cpu_us_per_window": cpu - model_cpu,
                    "cpu_bound_windows_s": cores / cpu * 1e6,
                    "cpu_bound_share_of_model_only": cores / cpu * 1e6 / ref})
    return out


def report(r: dict[str, Any]) -> None:
    print(f"\nstream_detector benchmark, {r['date']}, {r['machine']}, TF {r['tensorflow']}")
    print(settings_line(r))
    if "matmul_gflops" in r:
        print(f"machine limit: float32 matmul 2048x2048 = {r['matmul_gflops']:.1f} GFLOP/s\n")
        print("1. model only (window 64, 1 feature, default sizes), windows/s")
    for m in r.get("model_only", []):
        seed = m["seed_predict_windows_s"]
        print(f"  {m['kind']:<7} seed model.predict per window: {seed:10.1f}")
        for b, v in m["batched"].items():
            gf = v * m["flops_per_window"] / 1e9
            print(f"  {'':<7} batched, batch {b:>5}: {v:14.1f}  ({v / seed:7.0f}x seed, "
                  f"{gf:6.1f} GFLOP/s = {gf / r['matmul_gflops']:5.1%} of matmul)")
        print(f"  {'':<7} traces of the compiled function: {m['traces']}")
        ex = m.get("explain_256")
        if ex:
            print(f"  {'':<7} batch 256 with what explains the error (run's default): "
                  f"{ex['explain']:.1f}, errors only (run --explain off): {ex['errors']:.1f}: "
                  f"explaining keeps {ex['explain'] / ex['errors']:.1%} of the model's rate")
        par = m.get("parallel")
        if par:
            print(f"  {'':<7} the service's way: {par['workers']} calls at once, "
                  f"{par['threads']} TensorFlow thread(s) each:")
            for b, v in par["batched"].items():
                gf = v * m["flops_per_window"] / 1e9
                cpu = par.get("cpu_us_per_window", {}).get(b)
                print(f"  {'':<7} batched, batch {b:>5}: {v:14.1f}  ({v / seed:7.0f}x seed, "
                      f"{gf:6.1f} GFLOP/s = {gf / r['matmul_gflops']:5.1%} of matmul"
                      + ("" if cpu is None else f", {cpu:.1f} us of CPU per window") + ")")
    for e in r.get("end_to_end", []):
        print(f"\n2. end to end, {e['kind']}, hop 1, decision {e['decision']}")
        if "sustained_msgs_s" in e:
            share = "(model-only part not run)"
            if "model_only_ref_windows_s" in e:
                share = (f"windows/s = {e['e2e_share_of_model_only']:.1%} of the model's best "
                         f"at batch {e['model_only_batch']} "
                         f"({e['model_only_ref_windows_s']:.0f}/s; "
                         f"{e['e2e_share_of_one_call']:.1%} of one call at a time)")
            print(f"  {e['messages']} messages over {e['keys']} keys: "
                  f"{e['sustained_msgs_s']:.0f} input events/s over the whole topic; steady "
                  f"state {e['sustained_windows_s']:.0f} input events/s = windows/s (mean batch "
                  f"{e['mean_batch']:.0f}); {share}")
            if e.get("static_windows_s"):
                print(f"  the same run with `run --decision static` (comparison): "
                      f"{e['static_windows_s']:.0f} windows/s; the default decision keeps "
                      f"{e['sustained_windows_s'] / e['static_windows_s']:.1%} of it")
            if e.get("explain_off_windows_s"):
                cpu_on = e.get("steady_detector_cpu_us_per_window")
                cpu_off = e.get("explain_off_cpu_us_per_window")
                cpu = (f", {cpu_off:.1f} us of detector CPU per window against {cpu_on:.1f} "
                       f"explained ({cpu_on / cpu_off - 1:+.1%})" if cpu_on and cpu_off else "")
                print(f"  the same run with `run --explain off` (comparison): "
                      f"{e['explain_off_windows_s']:.0f} windows/s{cpu}; explaining keeps "
                      f"{e['sustained_windows_s'] / e['explain_off_windows_s']:.1%} of it "
                      f"(target >= 90 %)")
            if e.get("steady_cores_detector") is not None:
                print(f"  cores in the steady state: detector {e['steady_cores_detector']:.2f} "
                      f"({e['steady_detector_cpu_us_per_window']:.1f} us of CPU per window), "
                      f"broker "
                      f"{e['steady_cores_broker']:.2f}, of {os.cpu_count()}")
            if "streaming_cpu_us_per_window" in e:
                print(f"  of the detector's CPU per window, the model's own (two calls at "
                      f"once, batch {e['model_only_batch']}) {e['model_cpu_us_per_window']:.1f}"
                      f" us, the streaming {e['streaming_cpu_us_per_window']:.1f} us: with "
                      f"no core ever idle, {e['cpu_bound_windows_s']:.0f} windows/s = "
                      f"{e['cpu_bound_share_of_model_only']:.1%} of the model's best")
        if "latency_p50_ms" in e:
            if e["latency_p50_ms"] is None:
                print(f"  latency at {e['latency_rate_msgs_s']:.0f} msg/s: no incident opened")
                continue
            ck = e["mean_checkpoint_ms"]
            print(f"  latency at {e['latency_rate_msgs_s']:.0f} msg/s, input producer linger "
                  f"{e['latency_producer_linger_ms']} ms ({e['latency_events']} incidents "
                  f"opened for {e['latency_spikes']} spikes, "
                  f"{e['latency_false_alarms']} false alarms, "
                  f"{e['latency_not_received_live']} not seen live):\n"
                  f"    produce() of the message completing the flagged window -> event at a "
                  f"consumer: p50 {e['latency_p50_ms']:.1f} ms, p99 {e['latency_p99_ms']:.1f} "
                  f"ms, max {e['latency_max_ms']:.1f} ms (until the detector produced the "
                  f"event p50 {e['detector_p50_ms']:.1f} / p99 {e['detector_p99_ms']:.1f} ms; "
                  f"the event's delivery p50 {e['event_delivery_p50_ms']:.1f} / p99 "
                  f"{e['event_delivery_p99_ms']:.1f} ms)\n"
                  f"    produce of the spike -> event (adds the model's detection delay): "
                  f"p50 {e['spike_latency_p50_ms']:.1f} ms, p99 {e['spike_latency_p99_ms']:.1f} "
                  f"ms\n    (mean batch {e['mean_batch_at_latency_rate']:.0f} scored in "
                  f"{e['mean_inference_ms']:.1f} ms, mean checkpoint "
                  f"{'-' if ck is None else f'{ck:.1f} ms'})\n"
                  f"    cores used while windows were scored: detector "
                  f"{e['cores_detector']:.2f}, broker {e['cores_broker']:.2f}, this bench "
                  f"(producer, event consumer) {e['cores_bench']:.2f}, of {os.cpu_count()}")
    if "memory" in r:
        m = r["memory"]
        print(f"\n3. memory: {m['series']} extra series of one point each (window 64, not "
              f"filled; the scale part fills windows and decision state)"
              + (f", with {' '.join(m['extra_args'])} to hold them (not run's default)"
                 if m["extra_args"] else "") + ": RSS "
              f"{m['rss_before_mb']:.1f} -> {m['rss_after_mb']:.1f} MB = "
              f"{m['bytes_per_series']:.0f} bytes per series (active {m['active']:.0f}; "
              f"after the checkpoint that wrote every key's state; peak during it "
              f"{m['peak_rss_mb']:.1f} MB = {m['peak_bytes_per_series']:.0f} bytes per series)")
    if "scale" in r:
        print(scale_report(r["scale"]))


def scale_report(sc: dict[str, Any]) -> str:
    rows = sc["rows"]
    w = sc["windows_per_key"]
    lines = [f"\n4. scale: N active series through `run` (conv1d, decision {sc['decision']}), each "
             f"fed {WINDOW - 1 + w} points ({w} windows past its first full one); then "
             f"SIGTERM and a fresh detector on the same group restores them"]
    if sc.get("history") and w < sc["history"]:
        lines.append(f"  (the decision keeps {sc['history']} errors per key: at {w} windows "
                     f"that history is {w / sc['history']:.0%} full, so a key's state, in "
                     f"the changelog and in memory, is below its steady state; "
                     f"--scale-windows {sc['history']} measures it full)")
    for r in rows:
        if r["extra_args"]:
            lines.append(f"  N {r['series']}: with {' '.join(r['extra_args'])} (not run's "
                         f"default) to hold them")
    lines.append(f"  {'N':>8} {'RSS MB':>8} {'B/series':>9} {'slope B':>8} "
                 f"{'changelog B/key':>16} {'restore s':>10} {'restart s':>10} "
                 f"{'start s':>8} {'feed s':>7}")
    lines.append(f"  {'':>8} {'':>8} {'(vs idle)':>9} {'(ΔRSS/ΔN)':>8} {'mean / max':>16} "
                 f"{'(metric)':>10} {'(to all)':>10} {'(empty)':>8} {'':>7}")
    for r in rows:
        lines.append(
            f"  {r['series']:>8} {r['rss_mb']:>8.1f} {r['rss_bytes_per_series']:>9.0f} "
            f"{r['rss_slope_bytes_per_series']:>8.0f} "
            f"{r['changelog_mean_bytes']:>7.0f} / {r['changelog_max_bytes']:<6.0f} "
            f"{r['restore_s']:>10.2f} {r['restart_s']:>10.1f} {r['start_s']:>8.1f} "
            f"{r['feed_s']:>7.1f}")
    p = sc["projection_1m"]
    lines.append(
        "  RSS: the detector's resident set after a checkpoint has written every key; "
        "B/series: over the same detector idle before its first message; slope: between "
        "consecutive N (the first row: vs idle). changelog: per key, its latest record's "
        "key + value in <group>-state. restore: stream_detector_state_restore_seconds; "
        "restart: a fresh process's start until state_ready = 1 and every key restored; "
        "start: the first detector's start to ready, empty state. feed: produce + score.")
    lines.append(
        f"  RSS per active series, least-squares slope over every N: "
        f"{sc['rss_fit_bytes_per_series']:.0f} bytes")
    lines.append(
        "  projected to 1M series (RSS: the largest N plus that slope; restore, restart: "
        "the line through the smallest and the largest N): RSS "
        + (f"{p['rss_gb']:.2f} GB" if p["rss_gb"] is not None
           else "not measurable (slope <= 0: too few series)") + ", "
        f"changelog {p['changelog_gb']:.2f} GB, restore {p['restore_s']:.0f} s, restart "
        f"{p['restart_s']:.0f} s")
    for r in rows:
        if r["changelog_keys"] != r["series"] or r["restored_active"] < r["series"]:
            lines.append(f"  N {r['series']}: changelog holds {r['changelog_keys']} keys, the "
                         f"fresh detector restored {r['restored_keys']:.0f} "
                         f"(active {r['restored_active']:.0f})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
