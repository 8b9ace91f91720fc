"""``--rules`` end to end: ``stream-detector run`` on the embedded broker mutes what the rules
file says, counts it, and alarms on exactly the windows ``stream-detector score`` flags on
the same data with the same file."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from kafka_helpers import produce_json
from service_helpers import T0, WINDOW, DetectorProcess, events_of, stream, wait_until, wave

from stream_detector.testing import cli, write_long

pytestmark = pytest.mark.slow

N = 400
RULES = """\
rules:
  - name: nightly
    keys: "db-*"
    maintenance:
      - {cron: "0 3 * * *", duration: 1h}
  - name: upgrade
    keys: ["web-*"]
    maintenance:
      - {start: "2026-01-01T04:50:00Z", end: "2026-01-01T05:50:00Z", learn: false}
  - {name: cpu, keys: "cpu-*", direction: spike, min_deviation: 3}
"""
# rows (a point a minute from 00:00) whose window ends inside each maintenance window
NIGHTLY, UPGRADE = range(180, 240), range(290, 350)


def _series() -> dict[str, np.ndarray]:
    series = {"db-1": wave(N, seed=1), "web-1": wave(N, seed=2), "app-1": wave(N, seed=3),
              "cpu-1": wave(N, seed=4)}
    for key, at in (("db-1", 100), ("db-1", 185), ("web-1", 100), ("web-1", 295),
                    ("app-1", 185), ("app-1", 295), ("cpu-1", 120)):
        series[key][at] += 12.0
    series["cpu-1"][250] -= 12.0  # a dip: the cpu rule mutes it
    # as the CSV holds them, so that run and score see the same float32 values
    return {k: np.round(v.astype(np.float64), 5) for k, v in series.items()}


def _score_alarms(path: Path) -> tuple[set[tuple[str, float]], dict[str, list[str]]]:
    """(key, window end) of every window ``score`` flagged, and each key's muted column."""
    alarms, muted = set(), {}
    with path.open() as fh:
        for row in csv.DictReader(fh):
            muted.setdefault(row["key"], []).append(row["muted"])
            if row["is_anomaly"] == "1":
                alarms.add((row["key"], float(row["timestamp"])))
    return alarms, muted


def test_run_mutes_and_counts_what_the_rules_say_as_score_does(
        broker_bootstrap, topic_factory, group_id, model, tmp_path):
    series = _series()
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    data = write_long(tmp_path / "data.csv", series, start=T0)
    proc = cli("score", "--model", str(model), "--input", str(data), "--output",
               str(tmp_path / "scores.csv"), "--rules", str(rules))
    want, muted = _score_alarms(tmp_path / "scores.csv")
    n_maint = sum(1 for i in NIGHTLY if muted["db-1"][i] == "maintenance")
    assert n_maint >= 10, proc.stdout  # the spike at 185 alarms, muted
    assert all(muted["web-1"][i] == "maintenance" for i in UPGRADE)
    # app-1 matches no rule: its spikes inside both windows alarm
    assert any(("app-1", T0 + 60.0 * i) in want for i in NIGHTLY)
    assert any(("app-1", T0 + 60.0 * i) in want for i in UPGRADE)
    # cpu-1: its spike alarms, its dip is muted by direction
    assert ("cpu-1", T0 + 60.0 * 120) in want and muted["cpu-1"][250] == "direction"
    n_dir = sum(1 for c in muted["cpu-1"] if c == "direction")
    n_dev = sum(1 for c in muted["cpu-1"] if c == "deviation")

    src, out = topic_factory(2), topic_factory(1)
    det = DetectorProcess(broker_bootstrap, src, out, group_id, model,
                          ["--events", "windows", "--rules", str(rules)],
                          log=tmp_path / "det.log")
    try:
        det.wait_ready()
        produce_json(broker_bootstrap, src, stream(series))
        det.wait_value("stream_detector_windows_scored_total", len(series) * (N - WINDOW + 1))
        anomalies = int(det.value("stream_detector_anomalies_total"))
        wait_until(lambda: det.value('stream_detector_events_published_total{type="window"}')
                   >= anomalies, 30, "events delivered")
        muted_nightly = det.value(
            'stream_detector_alarms_muted_total{cause="maintenance",rule="nightly"}')
        unlearned = det.value('stream_detector_windows_unlearned_total{rule="upgrade"}')
        muted_dir = det.value('stream_detector_alarms_muted_total{cause="direction",rule="cpu"}')
        muted_dev = det.value('stream_detector_alarms_muted_total{cause="deviation",rule="cpu"}')
        # every (cause, rule) is exposed from the start, at 0 where nothing was muted
        assert det.value(
            'stream_detector_alarms_muted_total{cause="maintenance",rule="upgrade"}') == 0
        assert det.value(
            'stream_detector_alarms_muted_total{cause="direction",rule="nightly"}') == 0
    finally:
        det.terminate()
    assert muted_nightly == n_maint
    assert unlearned == len(UPGRADE)
    assert (muted_dir, muted_dev) == (n_dir, n_dev)
    events = events_of(broker_bootstrap, out, anomalies)
    got = {(e["value"]["key"], datetime.fromisoformat(
        e["value"]["window_end"].replace("Z", "+00:00")).timestamp()) for e in events}
    assert anomalies == len(want)
    assert got == want
    for key, rows in (("db-1", NIGHTLY), ("web-1", UPGRADE)):
        assert not any((key, T0 + 60.0 * i) in got for i in rows)
