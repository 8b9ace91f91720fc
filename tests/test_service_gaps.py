"""Gaps in a key's timestamps, end to end on the embedded broker: ``run --gap-policy``
counts them, fills or restarts the key's window, and ``score`` on the same points flags
the same windows."""

from __future__ import annotations

import csv

import pytest
from kafka_helpers import produce_json
from service_helpers import T0, WINDOW, DetectorProcess, events_of, wait_until, wave

from stream_detector.cli import main
from stream_detector.datasets import parse_timestamp

pytestmark = pytest.mark.slow

N, AT, STEP = 200, 100, 60
MISSING = {"clean": 0, "short": 10, "long": 40}  # points missing before point AT


def _ts(key: str, i: int) -> int:
    return T0 + STEP * (i + (MISSING[key] if i >= AT else 0))


def test_a_gap_is_filled_or_restarts_the_window_as_asked(
        broker_bootstrap, topic_factory, group_id, eager_model, tmp_path):
    series = {k: wave(N, seed=60 + j) for j, k in enumerate(MISSING)}
    msgs = [(k, {"key": k, "ts": _ts(k, i), "value": float(series[k][i])})
            for i in range(N) for k in MISSING]
    src = topic_factory(1)
    produce_json(broker_bootstrap, src, msgs)
    # the window is 32 points: --gap-max-fill defaults to 16, so the 40-point gap restarts
    per_window = N - WINDOW + 1
    after_restart = 2 * (AT - WINDOW + 1)
    want = {
        "off": ({"filled": 0, "restarted": 0}, 0, 3 * per_window),
        "linear": ({"filled": 1, "restarted": 1}, 10, 2 * per_window + after_restart),
        "restart": ({"filled": 0, "restarted": 2}, 0, per_window + 2 * after_restart),
    }
    runs = {}
    for policy in want:
        out = topic_factory(1)
        runs[policy] = (DetectorProcess(
            broker_bootstrap, src, out, f"{group_id}-{policy}", eager_model,
            ["--events", "windows", "--gap-policy", policy], log=tmp_path / f"{policy}.log"),
            out)
    anomalies = {}
    try:
        for policy, (det, _) in runs.items():
            gaps, points, windows = want[policy]
            det.wait_value("stream_detector_messages_consumed_total", len(msgs))
            det.wait_value("stream_detector_windows_scored_total", windows)
            m = det.metrics()
            assert m["stream_detector_windows_scored_total"] == windows, policy
            for action, n in gaps.items():
                assert m[f'stream_detector_gaps_total{{action="{action}"}}'] == n, (policy, m)
            assert m["stream_detector_gap_points_filled_total"] == points
            anomalies[policy] = int(m["stream_detector_anomalies_total"])
            wait_until(lambda d=det, p=policy: d.value(
                'stream_detector_events_published_total{type="window"}') >= anomalies[p],
                30, "events delivered", det._tail)
    finally:
        for det, _ in runs.values():
            code, _ = det.terminate()
            assert code == 0, det._tail()
    real = {k: {_ts(k, i) for i in range(N)} for k in MISSING}
    events = {p: [e["value"] for e in events_of(broker_bootstrap, out, anomalies[p])]
              for p, (_, out) in runs.items()}
    for policy, evs in events.items():
        assert len(evs) == anomalies[policy] > 30, policy
        for e in evs:
            k, start, end = e["key"], parse_timestamp(e["window_start"]), \
                parse_timestamp(e["window_end"])
            assert end in real[k], "a window is scored only at a real point"
            gap_end = _ts(k, AT)
            spans_gap = start < gap_end <= end and MISSING[k]
            if policy == "restart" or (policy == "linear" and k == "long"):
                assert not spans_gap, (policy, e)
            elif policy == "linear" and spans_gap:
                # filled on the key's cadence: the window keeps its time span
                assert end - start == (WINDOW - 1) * STEP, e
        if policy == "off":  # the points on both sides of a gap, windowed as if adjacent
            assert any(e["key"] != "clean" and parse_timestamp(e["window_start"]) < _ts(
                e["key"], AT) <= parse_timestamp(e["window_end"]) for e in evs)
    # score, offline, flags the windows run flagged: the same windows, the same decisions
    data = tmp_path / "gappy.csv"
    with data.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "key", "value"])
        for k, m in msgs:
            w.writerow([m["ts"], k, f"{m['value']:.9g}"])
    for policy in ("linear", "restart"):
        scored = tmp_path / f"{policy}.csv"
        assert main(["score", "--model", str(eager_model), "--input", str(data),
                     "--output", str(scored), "--gap-policy", policy]) == 0
        with scored.open() as fh:
            flagged = {(r["key"], r["timestamp"]) for r in csv.DictReader(fh)
                       if r["is_anomaly"] == "1"}
        # the rows a window ends at (after a restart, the rows before the window is full
        # again carry the last window's decision: left out)
        restarted = {"restart": {"short", "long"}, "linear": {"long"}}[policy]
        ends = {(k, str(_ts(k, i))) for k in MISSING for i in range(WINDOW - 1, N)
                if not (k in restarted and AT <= i < AT + WINDOW - 1)}
        assert len(ends) == want[policy][2]
        from_run = {(e["key"], str(int(parse_timestamp(e["window_end"]))))
                    for e in events[policy]}
        assert from_run <= ends
        assert flagged & ends == from_run, policy
