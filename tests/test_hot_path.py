"""The service's batched hot path (``Detector.handle_many``) against one message at a time.

A loop turn's messages go through ``handle_many``: messages of the common shape in rounds
of distinct keys, vectorised, anything else through ``handle`` at its place. Whatever the
mix, the windows batched, their metadata, the dead letters and the counters must be
exactly those of handling each message on its own. No broker is needed: the detector
only batches here (its producer never connects), and messages are built in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Message
from service_helpers import train_wave_model

from stream_detector.artifact import load_artifact
from stream_detector.cli import build_parser
from stream_detector.config import COMMAND_OPTS, resolve
from stream_detector.metrics import Metrics
from stream_detector.service import Detector, ServiceConfig

WINDOW = 8
T0 = 1_767_225_600


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_wave_model(tmp_path_factory.mktemp("hot") / "model", window=WINDOW, epochs=1)


def _detector(model: Path, *extra: str) -> tuple[Detector, list[Any]]:
    """A detector whose batches are recorded instead of scored, and its dead letters."""
    args = build_parser().parse_args([
        "run", "--bootstrap-servers", "127.0.0.1:9", "--input-topic", "in",
        "--output-topic", "out", "--group-id", "g", "--model", str(model),
        "--kafka", "log_level=0", *extra])  # (no broker there: quiet about it)
    det = Detector(ServiceConfig.from_options(resolve("run", COMMAND_OPTS["run"], args)),
                   load_artifact(model), Metrics.create())
    seen: list[Any] = []
    det.on_batch = lambda b: seen.append(("batch", b.windows, b.metas))
    det.sink.dead_letter = lambda *a: seen.append(("dlq", *a))  # type: ignore[method-assign]
    return det, seen


def _stream(seed: int, n: int = 3000, n_keys: int = 40) -> list[Message]:
    """Mostly well-formed points, with every kind of trouble mixed in."""
    rng = np.random.default_rng(seed)
    last = {k: T0 for k in range(n_keys)}
    offsets = [0, 0, 0]
    out = []
    for _ in range(n):
        # 20 keys in turn, and now and then any of n_keys (new keys, evictions, repeats)
        k = int(rng.integers(n_keys)) if rng.random() < 0.1 else len(out) % 20
        part = k % 3
        r = rng.random()
        step = 60 if r < 0.85 else (30 if r < 0.9 else (-60 if r < 0.93 else 7.5))
        last[k] += step
        doc: Any = {"key": f"s{k}", "ts": last[k], "value": float(rng.normal(10, 2))}
        r = rng.random()
        if r < 0.02:
            doc = {"key": f"s{k}", "ts": last[k], "values": [doc["value"]]}  # valid, not plain
        elif r < 0.03:
            doc["ts"] = "2026-01-01T00:00:00Z"  # valid, an ISO string
        elif r < 0.04:
            doc["value"] = "high"  # invalid
        elif r < 0.05:
            doc = [1, 2]  # not an object
        value = orjson.dumps(doc) if r >= 0.005 else b"{not json"
        out.append(Message(topic="in", partition=part, offset=offsets[part],
                           key=f"s{k}".encode(), value=value,
                           timestamp=(1, (T0 + len(out)) * 1000)))
        # a redelivery now and then: the same offset again
        offsets[part] += 0 if rng.random() < 0.01 else 1
    return out


def _counters(det: Detector) -> dict[str, float]:
    return {s.name + str(sorted(s.labels.items())): s.value
            for metric in det.metrics.registry.collect() for s in metric.samples
            if s.name.endswith("_total") and not s.name.startswith("process_")}


@pytest.mark.parametrize("extra", [(), ("--state", "none"), ("--hop", "3"),
                                   ("--max-series", "25"), ("--max-batch", "7"),
                                   ("--timestamp-policy", "drop"),
                                   ("--timestamp-policy", "dlq")])
@pytest.mark.parametrize("seed", [1, 2])
def test_handle_many_equals_handling_one_message_at_a_time(
        model: Path, extra: tuple[str, ...], seed: int) -> None:
    msgs = _stream(seed)
    one, seen_one = _detector(model, *extra)
    many, seen_many = _detector(model, *extra)
    vectorised = []  # points that went through the vectorised path
    push_round = many.buffer.push_round

    def counting(keys: list[str], *a: Any, **k: Any) -> Any:
        codes = push_round(keys, *a, **k)
        vectorised.append(0 if codes is None else len(keys))
        return codes

    many.buffer.push_round = counting  # type: ignore[method-assign]
    for i in range(0, len(msgs), 250):  # loop turns of 250 messages
        for m in msgs[i:i + 250]:
            one.handle(m, 1.0)
        assert many.handle_many(msgs[i:i + 250], 1.0) == len(msgs[i:i + 250])
        assert one._positions == many._positions  # what the next checkpoint commits
    one.submit_batch()
    many.submit_batch()
    # each in stream order (a dead letter and a batch cut in one loop turn may swap:
    # they go to different places, before the turn's checkpoint either way)
    for what in ("batch", "dlq"):
        a = [x[1:] for x in seen_one if x[0] == what]
        b = [x[1:] for x in seen_many if x[0] == what]
        assert len(a) == len(b), what
        for x, y in zip(a, b):
            if what == "batch":
                assert np.array_equal(x[0], y[0])
                assert x[1] == y[1]
            else:
                assert x == y
    windows = sum(len(x[2]) for x in seen_one if x[0] == "batch")
    assert windows > 500
    assert sum(vectorised) > len(msgs) / 3
    assert sum(x[0] == "dlq" for x in seen_one) > 50  # bad messages of every kind
    assert _counters(one) == _counters(many)


def test_run_decides_like_score_with_range_and_season_checks(
    model: Path, tmp_path: Path
) -> None:
    """``run`` passes each window's newest values to the decider as ``score`` does, so a
    key that leaves its range, or skips a cycle, is flagged alike, window for window,
    whatever the batches."""
    from service_helpers import wave, write_long

    from stream_detector.datasets import read_dataset
    from stream_detector.scoring import score_dataset

    n = 260
    series = {f"k{i}": wave(n, seed=i).astype(np.float64) for i in range(4)}
    series["k1"][200:] += 6.0  # a level the key has never shown (its range is about 4)
    series["k2"][230] -= 9.0  # one point far below
    series["k3"][200:220] = 10.0  # one period (20) without its swing, at its usual level
    series = {k: np.round(v, 5) for k, v in series.items()}  # as the CSV holds them
    path = write_long(tmp_path / "data.csv", series, start=T0)
    params = ["--decision", "pot", "--decision-param", "warmup=60", "--decision-param",
              "history=100", "--decision-param", "season=20", "--decision-param",
              "season_span=8"]
    det, _ = _detector(model, "--state", "none", "--max-batch", "13", *params)
    det.on_batch = None  # score for real (the producer only queues: no broker needed)
    got: dict[str, list[tuple[float, bool]]] = {k: [] for k in series}
    decide = det.decider.decide

    def recording(keys: list[str], scores: np.ndarray, ext: Any = None) -> Any:
        d = decide(keys, scores, ext)
        for k, ai, fi in zip(keys, d.anomaly_score.tolist(), d.is_anomaly.tolist()):
            got[k].append((ai, fi))
        return d

    det.decider.decide = recording  # type: ignore[method-assign]
    msgs = [Message(topic="in", partition=0, offset=i, key=k.encode(),
                    value=orjson.dumps({"key": k, "ts": T0 + 60 * (i // 3), "value": float(v)}),
                    timestamp=(1, T0 * 1000))
            for i, (k, v) in enumerate((k, series[k][j]) for j in range(n) for k in series)]
    assert len({m.key() for m in msgs}) == 4
    for i in range(0, len(msgs), 50):
        det.handle_many(msgs[i:i + 50], 1.0)
        det.complete_ready()
    det.score_batch()

    art = load_artifact(model)
    spec = {"method": "pot", "warmup": 60, "history": 100, "season": "20", "season_span": 8}
    want = {r.series.key: r for r in score_dataset(art, read_dataset([path], "long"), 1024,
                                                   decision=spec)}
    for k in series:
        r = want[k]
        ends = np.flatnonzero(~np.isnan(r.window_score))
        a = np.array([x[0] for x in got[k]])
        f = np.array([x[1] for x in got[k]])
        assert len(a) == len(ends) == n - WINDOW + 1
        np.testing.assert_array_equal(a, r.anomaly_score[ends])
        assert (f == r.is_anomaly[ends]).all()
    # the range check fired where the values left the range, with the certain score
    assert got["k1"][200 - WINDOW + 1] == (1.0, True)
    assert got["k2"][230 - WINDOW + 1] == (1.0, True)
    assert all(a < 1.0 for a, _ in got["k0"])  # a key that stays in its range: never
    # the skipped cycle: flagged while it lasts, though its values stay in range
    assert any(f for _, f in got["k3"][200 - WINDOW + 1 : 220 - WINDOW + 1])
    assert all(a < 1.0 for a, _ in got["k3"])


@pytest.mark.parametrize("policy", ["accept", "drop", "dlq"])
def test_run_follows_the_timestamp_policy_as_score_does(
    model: Path, tmp_path: Path, policy: str
) -> None:
    """One key steps back an hour (a daylight-saving change), one has a single far-future
    point. ``run`` scores the very windows ``score`` scores on the same data with the same
    policy (``dlq`` is ``drop`` offline, plus the dead letters), counts the points in
    ``timestamps_backwards_total{action}`` and dead-letters only the one point that goes
    back, never the points after it."""
    from service_helpers import wave

    from stream_detector.datasets import read_dataset
    from stream_detector.scoring import window_scores

    n = 120
    ts = {"dst": [T0 + 300 * i - (3600 if i >= 50 else 0) for i in range(n)],
          "future": [T0 + 300 * i for i in range(n)]}
    ts["future"][70] = T0 + 10**9  # 2057
    series = {k: np.round(wave(n, seed=i), 5) for i, k in enumerate(ts)}
    path = tmp_path / "data.csv"
    path.write_text("timestamp,key,value\n" + "".join(
        f"{ts[k][i]},{k},{series[k][i]}\n" for i in range(n) for k in ts))
    det, seen = _detector(model, "--timestamp-policy", policy)
    det.on_batch = None  # score for real (the producer only queues: no broker needed)
    got: dict[str, list[float]] = {k: [] for k in ts}
    decide = det.decider.decide

    def recording(keys: list[str], scores: np.ndarray, ext: Any = None) -> Any:
        for k, sc in zip(keys, scores.tolist()):
            got[k].append(sc)
        return decide(keys, scores, ext)

    det.decider.decide = recording  # type: ignore[method-assign]
    msgs = [Message(topic="in", partition=0, offset=o, key=k.encode(),
                    value=orjson.dumps({"key": k, "ts": ts[k][i], "value": float(series[k][i])}),
                    timestamp=(1, T0 * 1000))
            for o, (i, k) in enumerate((i, k) for i in range(n) for k in ts)]
    for i in range(0, len(msgs), 50):
        det.handle_many(msgs[i:i + 50], 1.0)
        det.complete_ready()
    det.score_batch()

    offline = read_dataset([path], "long", "accept" if policy == "accept" else "drop")
    assert offline.timestamps_backwards == 2
    scores, series_idx, _ = window_scores(load_artifact(model), offline)
    for j, s in enumerate(offline.series):
        want = scores[series_idx == j]
        assert len(want) == len(s) - WINDOW + 1
        np.testing.assert_allclose(got[s.key], want, rtol=1e-6, atol=1e-9)
    sample = det.metrics.registry.get_sample_value
    assert sample("stream_detector_timestamps_backwards_total", {"action": policy}) == 2
    invalid = sample("stream_detector_invalid_messages_total", {"reason": "timestamp_backwards"})
    dead = [x for x in seen if x[0] == "dlq"]
    if policy == "dlq":
        assert invalid == 2
        # (value, key, reason, detail, topic, partition, offset): the point at the step
        # back and the one after the far-future point, nothing later
        assert [(d[2].decode(), d[3]) for d in dead] == [("dst", "timestamp_backwards"),
                                                        ("future", "timestamp_backwards")]
        assert [d[7] for d in dead] == [2 * 50, 2 * 71 + 1]
    else:
        assert invalid == 0 and dead == []
