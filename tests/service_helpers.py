"""Run the real ``stream-detector`` commands as subprocesses and read their metrics."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, TopicPartition
from kafka_helpers import consume_all, consumer_conf
from prometheus_client.parser import text_string_to_metric_families

from stream_detector.kafka.embedded import free_port

WINDOW = 32  # the window of the test models
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
FAST_GROUP = ["--kafka", "session.timeout.ms=6000", "--kafka", "max.poll.interval.ms=10000"]


def cli(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python -m stream_detector ARGS`` and return the finished process."""
    proc = subprocess.run([sys.executable, "-m", "stream_detector", *args], capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"stream-detector {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def wave(n: int, seed: int, period: float = 20.0, level: float = 10.0) -> np.ndarray:
    """A noisy sine wave: the normal behaviour of every test series."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (level + 2.0 * np.sin(2 * np.pi * t / period + seed) + rng.normal(0, 0.1, n)).astype(
        np.float32)


def stream(keys: dict[str, np.ndarray], t0: float = T0) -> list[tuple[str, dict]]:
    """Messages in time order across keys (ordered per key), as a live system sends them."""
    n = len(next(iter(keys.values())))
    return [(k, {"key": k, "ts": t0 + 60 * i, "value": float(v[i])})
            for i in range(n) for k, v in keys.items()]


def write_long(path: Path, series: dict[str, np.ndarray], start: float = 1_767_225_600.0,
               step: float = 60.0) -> Path:
    with path.open("w") as fh:
        fh.write("timestamp,key,value\n")
        n = len(next(iter(series.values())))
        for i in range(n):
            for key, vals in series.items():
                fh.write(f"{start + i * step:.0f},{key},{float(vals[i]):.5f}\n")
    return path


def train_wave_model(out: Path, window: int = 32, kind: str = "conv1d", epochs: int = 12) -> Path:
    """Train a small model on clean waves (the same family the tests stream)."""
    data = out.parent / f"{out.name}-train.csv"
    write_long(data, {f"train-{i}": wave(600, seed=100 + i) for i in range(4)})
    # the seed's fixed threshold: these tests steer it (with_threshold) and count its flags
    cli("train", "--model", kind, "--input", str(data), "--window", str(window), "--epochs",
        str(epochs), "--out", str(out), "--seed", "1", "--quiet", "--decision", "static")
    return out


def with_threshold(model: Path, out: Path, threshold: float) -> Path:
    """Copy of ``model`` whose global threshold is ``threshold`` and has no per-key ones."""
    shutil.copytree(model, out)
    meta = json.loads((out / "metadata.json").read_text())
    meta["threshold"]["global"] = threshold
    meta["threshold"]["per_key"] = {}
    (out / "metadata.json").write_text(json.dumps(meta))
    return out


class DetectorProcess:
    """``stream-detector run`` in a subprocess, with its metrics endpoint."""

    def __init__(self, bootstrap: str, input_topic: str, output_topic: str, group: str,
                 model: Path, extra: Sequence[str] = (), log: Path | None = None) -> None:
        self.port = free_port()
        self.log = log
        args = [sys.executable, "-m", "stream_detector", "run", "--bootstrap-servers", bootstrap,
                "--input-topic", input_topic, "--output-topic", output_topic,
                "--group-id", group, "--model", str(model), "--metrics-port", str(self.port),
                "--metrics-host", "127.0.0.1", "--commit-interval-ms", "200", *FAST_GROUP,
                *extra]
        out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, ""

    def metrics(self) -> dict[str, float]:
        """Every sample as ``name{label="v",...}`` -> value (labels sorted)."""
        code, text = self.get("/metrics")
        if code != 200:
            return {}
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def value(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def wait_ready(self, timeout: float = 60) -> None:
        wait_until(lambda: self.get("/readyz")[0] == 200, timeout, "detector ready",
                   self._tail)

    def wait_value(self, name: str, at_least: float, timeout: float = 90) -> float:
        wait_until(lambda: self.value(name) >= at_least, timeout,
                   f"{name} >= {at_least} (now {self.value(name)})", self._tail)
        return self.value(name)

    def _tail(self) -> str:
        if self.proc.poll() is not None:
            return f"detector exited {self.proc.returncode}: " + (
                self.log.read_text()[-3000:] if self.log else "")
        return self.log.read_text()[-3000:] if self.log else ""

    def terminate(self, timeout: float = 15) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds to exit)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - t0

    def rss_mb(self, field: str = "VmRSS") -> float:
        """The process' resident set (or, with ``VmHWM``, its peak so far), MB; nan once
        it has exited."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return float("nan")
        for line in status.splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_until(pred: Callable[[], bool], timeout: float, what: str,
               detail: Callable[[], str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}. {detail() if detail else ''}")


def events_of(bootstrap: str, topic: str, expected: int | None = None) -> list[dict]:
    return consume_all(bootstrap, topic, expected=expected, timeout=30, idle=3)


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer(consumer_conf(bootstrap, group))
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        # nothing committed yet (OFFSET_INVALID): the group starts at the beginning
        return {tp.partition: max(tp.offset, 0) for tp in got}
    finally:
        c.close()


def run_reference(bootstrap, src, out, group, model, expected_windows, tmp_path, name):
    det = DetectorProcess(bootstrap, src, out, group, model, ["--events", "windows"],
                          log=tmp_path / f"{name}.log")
    try:
        det.wait_value("stream_detector_windows_scored_total", expected_windows)
        anomalies = int(det.value("stream_detector_anomalies_total"))
        wait_until(lambda: det.value('stream_detector_events_published_total{type="window"}')
                   >= anomalies, 30, "events delivered")
    finally:
        det.terminate()
    return {e["value"]["event_id"]: e["raw"] for e in events_of(bootstrap, out, anomalies)}


