"""Events that explain themselves: what came, what the model expected, which feature and
which step of the window hold the error (issue #27, part 1)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from kafka_helpers import produce_json
from service_helpers import T0, DetectorProcess, cli, events_of, wait_until

from stream_detector.evaluation.attribution import FEATURES, perturbed, write_long
from stream_detector.explain import Explained, Explainer
from stream_detector.scaling import Scaler


def _explained(features: np.ndarray, steps: np.ndarray, expected: np.ndarray) -> Explained:
    return Explained(np.array([1.0]), expected[None].astype(np.float32),
                     features[None].astype(np.float32), steps[None].astype(np.float32))


def test_fields_name_the_features_and_steps_that_hold_the_error_in_input_units() -> None:
    sc = Scaler(center=np.array([10.0, 100.0, 0.0]), scale=np.array([2.0, 10.0, 1.0]))
    ex = _explained(np.array([1.0, 6.0, 3.0]), np.array([0.5, 0.5, 1.0, 8.0]),
                    np.array([0.5, -1.0, 0.25]))
    got = Explainer(["cpu", "mem", "net"]).fields(sc, np.array([11.2, 130.0, 0.1]), ex, 0)
    assert got["actual"] == {"cpu": 11.2, "mem": 130.0, "net": 0.1}
    assert got["expected"] == {"cpu": 11.0, "mem": 90.0, "net": 0.25}  # center + scale * x
    assert got["attribution"]["features"] == [
        {"name": "mem", "share": 0.6}, {"name": "net", "share": 0.3},
        {"name": "cpu", "share": 0.1}]
    # steps counted back from the newest point (back 0), top 3, shares of the same total
    assert got["attribution"]["steps"] == [
        {"back": 0, "share": 0.8}, {"back": 1, "share": 0.1}, {"back": 3, "share": 0.05}]
    assert "checks" not in got


def test_fields_stay_bounded_for_wide_models_and_say_what_the_checks_saw() -> None:
    names = [f"f{i}" for i in range(40)]
    feat = np.zeros(40)
    feat[[7, 21, 33]] = [5.0, 3.0, 2.0]
    sc = Scaler(center=np.zeros(40), scale=np.ones(40))
    ex = _explained(feat, np.ones(8), np.zeros(40))
    got = Explainer(names).fields(sc, np.arange(40.0), ex, 0,
                                  {"range": {"low": [0.0] * 40, "high": [1.0] * 40,
                                             "tolerance": 0.05}})
    assert set(got["actual"]) == set(got["expected"]) == {"f7", "f21", "f33"}
    assert [f["name"] for f in got["attribution"]["features"]] == ["f7", "f21", "f33"]
    assert got["checks"]["range"]["high"]["f7"] == 1.0
    assert got["checks"]["range"]["tolerance"] == 0.05
    zero = Explainer(["v"]).fields(Scaler(np.zeros(1), np.ones(1)), np.array([np.inf]),
                                   _explained(np.zeros(1), np.zeros(4), np.zeros(1)), 0)
    assert zero["actual"] == {"v": None}  # never a number JSON cannot carry
    assert zero["attribution"]["features"] == [{"name": "v", "share": 0.0}]


@pytest.mark.broker
@pytest.mark.slow
def test_events_name_the_perturbed_feature_and_expect_a_normal_value(
        broker_bootstrap, topic_factory, group_id, tmp_path: Path) -> None:
    """Three-feature series, one feature pushed off at a time, the model at train's
    defaults: the event that flags a perturbation attributes most of the window's error to
    that feature (>= 90 %), and the value it expected there lies in the key's normal
    band (the range the feature showed in training)."""
    data = perturbed(n_series=4, length=1600, seed=3)
    train = write_long(data, tmp_path / "train.csv", slice(0, data.clean))
    model = tmp_path / "model"
    cli("train", "--input", str(train), "--format", "long", "--out", str(model), "--quiet")
    src, out = topic_factory(2), topic_factory(1)
    n = len(next(iter(data.values.values())))
    msgs = [(k, {"key": k, "ts": T0 + 60 * i, "values": [float(x) for x in v[i]]})
            for i in range(n) for k, v in data.values.items()]
    det = DetectorProcess(broker_bootstrap, src, out, group_id, model,
                          log=tmp_path / "det.log")
    try:
        det.wait_ready()
        produce_json(broker_bootstrap, src, msgs)
        det.wait_value("stream_detector_windows_scored_total", len(data.values) * (n - 63))
        wait_until(lambda: det.value("stream_detector_incidents_opened_total")
                   <= det.value('stream_detector_events_published_total{type="opened"}'),
                   30, "opened events delivered", det._tail)
        opened = [e["value"] for e in events_of(broker_bootstrap, out)
                  if e["value"]["type"] == "opened"]
    finally:
        det.terminate()
    names = ["value", *(f"value_{f}" for f in FEATURES[1:])]
    detected = right = at_point = in_band = 0
    for p in data.perturbations:
        lo, hi = T0 + 60 * p.pos, T0 + 60 * (p.pos + p.span + 63)
        ev = [e for e in opened if e["key"] == p.key and lo <= _epoch(e["window_end"]) <= hi]
        if not ev:
            continue
        detected += 1
        e = ev[0]
        assert set(e["actual"]) == set(e["expected"]) == set(names)
        right += e["attribution"]["features"][0]["name"] == names[p.feature]
        clean = data.values[p.key][:data.clean, p.feature]
        if _epoch(e["window_end"]) == lo:  # the event's point is the perturbed one
            at_point += 1
            in_band += clean.min() <= e["expected"][names[p.feature]] <= clean.max()
    assert detected >= 0.8 * len(data.perturbations), f"{detected} detected"
    assert right >= 0.9 * detected, f"{right} of {detected} name the perturbed feature"
    assert at_point >= 0.5 * detected, f"{at_point} of {detected} open at the point itself"
    assert in_band >= 0.9 * at_point, f"{in_band} of {at_point} expect a normal value"


def test_score_writes_an_expected_column_per_feature(tmp_path: Path) -> None:
    data = perturbed(n_series=2, length=400, seed=5)
    train = write_long(data, tmp_path / "train.csv", slice(0, 300))
    model = tmp_path / "model"
    cli("train", "--input", str(train), "--format", "long", "--out", str(model), "--quiet",
        "--epochs", "2", "--window", "16")
    out = tmp_path / "scores.csv"
    cli("score", "--model", str(model), "--input", str(train), "--format", "long",
        "--output", str(out))
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[-3:] == ["expected_value", "expected_value_mem", "expected_value_net"]
    mine = [r for r in rows if r["key"] == "host-00"]
    assert all(r["expected_value_mem"] == "" for r in mine[:15])
    assert all(r["expected_value_mem"] != "" for r in mine[15:])


def _epoch(iso: str) -> float:
    from stream_detector.datasets import parse_timestamp

    return parse_timestamp(iso)


@pytest.mark.broker
def test_explain_off_leaves_the_fields_out_and_still_flags(
        broker_bootstrap, topic_factory, group_id, model, tmp_path: Path) -> None:
    """``run --explain off``: the model call returns errors only; events keep the
    contract's other fields and the same incidents."""
    from service_helpers import spiky_stream

    src, out = topic_factory(1), topic_factory(1)
    det = DetectorProcess(broker_bootstrap, src, out, group_id, model, ["--explain", "off"],
                          log=tmp_path / "det.log")
    try:
        det.wait_ready()
        produce_json(broker_bootstrap, src, spiky_stream())
        det.wait_value("stream_detector_windows_scored_total", 600 - 31)
        events = [e["value"] for e in events_of(broker_bootstrap, out, expected=6)]
    finally:
        det.terminate()
    assert [e["type"] for e in events] == ["opened", "closed"] * 3
    for e in events:
        assert not {"actual", "expected", "attribution", "checks"} & set(e)
        assert {"score", "threshold", "anomaly_score", "incident_id"} <= set(e)


def test_score_plot_draws_every_series_twelve_to_a_page(tmp_path: Path) -> None:
    """``score --plot``: all 13 series, on two pages, against their timestamps."""
    pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
    from stream_detector.testing import wave, write_long

    data = write_long(tmp_path / "s.csv", {f"k{i:02d}": wave(80, seed=i) for i in range(13)})
    model = tmp_path / "model"
    cli("train", "--input", str(data), "--format", "long", "--out", str(model), "--quiet",
        "--epochs", "1", "--window", "16")
    plot = tmp_path / "scores.png"
    proc = cli("score", "--model", str(model), "--input", str(data), "--format", "long",
               "--output", str(tmp_path / "out.csv"), "--plot", str(plot))
    second = tmp_path / "scores-2.png"
    assert f"plot -> {plot}, {second}" in proc.stdout
    assert plot.stat().st_size > 1000 and second.stat().st_size > 1000
    assert not (tmp_path / "scores-3.png").exists()


def test_one_feature_spikes_are_expected_at_a_normal_value_by_the_default_model(
        tmp_path: Path) -> None:
    """train's default model for a time series expects a normal value where a spike or a
    dip lands (the CSV's expected column at the spike's row lies in the key's clean
    range), and flags it."""
    from stream_detector.testing import wave, write_long

    series = {f"k{i}": wave(600, seed=10 + i) for i in range(4)}
    clean = {k: (float(v.min()), float(v.max())) for k, v in series.items()}
    spikes = [("k0", 400, 12.0), ("k1", 450, -12.0), ("k2", 500, 9.0), ("k3", 420, -9.0)]
    for key, at, size in spikes:
        series[key][at] += size
    data = write_long(tmp_path / "s.csv", series)
    model = tmp_path / "model"
    cli("train", "--input", str(data), "--out", str(model), "--quiet",
        "--train-fraction", "0.5")
    out = tmp_path / "scores.csv"
    cli("score", "--model", str(model), "--input", str(data), "--output", str(out))
    with out.open(newline="") as fh:
        rows: dict[str, list[dict[str, str]]] = {}
        for r in csv.DictReader(fh):
            rows.setdefault(r["key"], []).append(r)
    for key, at, _ in spikes:
        lo, hi = clean[key]
        assert lo <= float(rows[key][at]["expected"]) <= hi, (key, rows[key][at])
        assert any(r["is_anomaly"] == "1" for r in rows[key][at:at + 64]), key
