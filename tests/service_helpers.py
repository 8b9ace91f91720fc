"""Run the real ``stream-detector`` commands as subprocesses and read their metrics.

The harness itself (``DetectorProcess``, ``train_wave_model``, ...) lives in
:mod:`stream_detector.testing`, which the scripts use too; this module adds what only
the tests need.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, TopicPartition
from kafka_helpers import consume_all, consumer_conf

from stream_detector.kafka.embedded import free_port  # noqa: F401  (re-exported)
from stream_detector.testing import (  # noqa: F401  (re-exported for the tests)
    FAST_GROUP,
    DetectorProcess,
    cli,
    train_wave_model,
    wait_until,
    wave,
    write_long,
)

WINDOW = 32  # the window of the test models
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def stream(keys: dict[str, np.ndarray], t0: float = T0) -> list[tuple[str, dict]]:
    """Messages in time order across keys (ordered per key), as a live system sends them."""
    n = len(next(iter(keys.values())))
    return [(k, {"key": k, "ts": t0 + 60 * i, "value": float(v[i])})
            for i in range(n) for k, v in keys.items()]


def with_threshold(model: Path, out: Path, threshold: float) -> Path:
    """Copy of ``model`` whose global threshold is ``threshold`` and has no per-key ones."""
    shutil.copytree(model, out)
    meta = json.loads((out / "metadata.json").read_text())
    meta["threshold"]["global"] = threshold
    meta["threshold"]["per_key"] = {}
    (out / "metadata.json").write_text(json.dumps(meta))
    return out


def model_variant(model: Path, out: Path, version: str, threshold: float | None = None,
                  decision: dict[str, Any] | None = None, created_at: str | None = None) -> Path:
    """Copy of ``model`` as another version (same weights): optionally another global
    threshold (and no per-key ones), decision spec or training time."""
    shutil.copytree(model, out)
    meta = json.loads((out / "metadata.json").read_text())
    meta["version"] = version
    if threshold is not None:
        meta["threshold"]["global"] = threshold
        meta["threshold"]["per_key"] = {}
    if decision is not None:
        meta["decision"] = decision
    if created_at is not None:
        meta["created_at"] = created_at
    (out / "metadata.json").write_text(json.dumps(meta))
    return out


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


class RecordingConsumer:
    """Stands in for a detector's consumer (failure injection): records its commits."""

    def __init__(self) -> None:
        self.commits: list[Any] = []

    def commit(self, offsets: Any = None, asynchronous: bool = True) -> None:
        self.commits.append(offsets)

    def close(self) -> None:
        pass


def run_config(bootstrap: str, src: str, out: str, group: str, model: Path, *extra: str
               ) -> Any:
    """The ``ServiceConfig`` that ``stream-detector run`` would build from these options
    (fast group join, 200 ms commits), for a ``Detector`` run in process."""
    from stream_detector.cli import build_parser
    from stream_detector.config import COMMAND_OPTS, resolve
    from stream_detector.service import ServiceConfig

    args = build_parser().parse_args([
        "run", "--bootstrap-servers", bootstrap, "--input-topic", src, "--output-topic", out,
        "--group-id", group, "--model", str(model), "--commit-interval-ms", "200",
        "--kafka", "session.timeout.ms=6000", "--kafka", "max.poll.interval.ms=10000", *extra])
    return ServiceConfig.from_options(resolve("run", COMMAND_OPTS["run"], args))


def spiky_stream(n: int = 600, spikes: tuple[int, ...] = (100, 300, 500)) -> list[tuple[str, dict]]:
    """One series, ``spiky``: a clean wave with a +15 spike at each of ``spikes``, as input
    messages (the hot-reload tests watch which version flags them)."""
    spiky = wave(n, seed=3)
    for pos in spikes:
        spiky[pos] += 15.0
    return stream({"spiky": spiky})


def event_versions(bootstrap: str, topic: str) -> set[str]:
    """The ``model_version`` of every event on ``topic`` so far."""
    return {e["value"]["model_version"] for e in events_of(bootstrap, topic)}

