"""Loadable but inconsistent artifacts (issue #26 item 2): checked whole, once, at load.

A scaler that disagrees with the model, a wrongly typed ``value_range``/``period``/
``decision``, an unparsable ``created_at``: ``load_artifact`` refuses each with one reason
naming the field; written into a served model directory mid-stream each is a counted
refusal while the old model keeps serving every window, and a start-up on one exits 2
with one line. A candidate that loads but differs in feature names, order or hop is
refused by the reload too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka_helpers import produce_json
from service_helpers import WINDOW, DetectorProcess, event_versions, spiky_stream, wait_until

from stream_detector.artifact import load_artifact
from stream_detector.errors import ArtifactError

Edit = Callable[[dict[str, Any]], None]


def _two_feature_scaler(m: dict[str, Any]) -> None:
    m["scaler"]["global"] = {"center": [0.0, 0.0], "scale": [1.0, 1.0]}


def _period_text(m: dict[str, Any]) -> None:
    m["period"] = {"train-0": "twenty"}


def _created_at(m: dict[str, Any]) -> None:
    m["created_at"] = "yesterday-ish"


def _value_range(m: dict[str, Any]) -> None:
    m["value_range"] = {"train-0": "0..10"}


def _decision_text(m: dict[str, Any]) -> None:
    m["decision"] = "adaptive"


def _decision_param(m: dict[str, Any]) -> None:
    m["decision"] = {"method": "adaptive", "false_alarms": "many"}


def _per_key_scaler(m: dict[str, Any]) -> None:
    m["scaler"]["per_key"]["train-1"] = {"center": [0.0], "scale": [0.0]}


BAD: dict[str, tuple[Edit, str]] = {
    "two-feature-scaler": (_two_feature_scaler, "'scaler'"),
    "period-text": (_period_text, "'period'"),
    "created-at": (_created_at, "'created_at'"),
    "value-range": (_value_range, "'value_range'"),
    "decision-text": (_decision_text, "'decision'"),
    "decision-param": (_decision_param, "'decision'"),
    "zero-scale": (_per_key_scaler, "'scaler'"),
}


def variant(model: Path, out: Path, version: str, edit: Edit) -> Path:
    """Copy of ``model`` as ``version`` with ``edit`` applied to its metadata.json."""
    shutil.copytree(model, out)
    meta = json.loads((out / "metadata.json").read_text())
    meta["version"] = version
    edit(meta)
    (out / "metadata.json").write_text(json.dumps(meta))
    return out


@pytest.mark.parametrize("name", list(BAD))
def test_load_refuses_an_inconsistent_artifact_naming_the_field(model, tmp_path, name):
    edit, field = BAD[name]
    bad = variant(model, tmp_path / name, f"bad-{name}", edit)
    with pytest.raises(ArtifactError, match=field) as got:
        load_artifact(bad)
    assert "\n" not in str(got.value) and str(bad / "metadata.json") in str(got.value)


def test_the_model_as_trained_passes(model):
    art = load_artifact(model)
    assert art.created_at.timestamp() > 0 and art.features == ["value"]


@pytest.mark.slow
def test_inconsistent_artifacts_mid_stream_are_refused_and_every_window_scored(
        broker_bootstrap, topic_factory, group_id, model, tmp_path):
    """Each bad artifact written into the served directory mid-stream: refused and
    counted, no death, v1 keeps scoring every window; then a restart on the last one
    exits 2 with one line."""
    live = tmp_path / "live"
    shutil.copytree(model, live)
    v1 = json.loads((live / "metadata.json").read_text())["version"]
    layout: dict[str, tuple[Edit, str]] = {
        "renamed-feature": (lambda m: m.update(features=["cpu"]), "features"),
        "other-hop": (lambda m: m.update(hop=2), "hop"),
    }
    src, out = topic_factory(1), topic_factory(1)
    det = DetectorProcess(broker_bootstrap, src, out, group_id, live,
                          ["--events", "windows", "--model-poll-s", "0.3",
                           "--shadow-windows", "5"], log=tmp_path / "det.log")
    msgs = spiky_stream()
    cases = {**BAD, **layout}
    refused = 'stream_detector_model_reloads_total{result="refused"}'
    step = len(msgs) // (len(cases) + 1)
    try:
        det.wait_ready()
        produce_json(broker_bootstrap, src, msgs[:step])
        for i, (name, (edit, _)) in enumerate(cases.items(), start=1):
            bad = variant(model, tmp_path / name, f"bad-{name}", edit)
            (live / "metadata.json.tmp").write_text((bad / "metadata.json").read_text())
            (live / "metadata.json.tmp").replace(live / "metadata.json")
            wait_until(lambda i=i: det.value(refused) >= i, 30, f"refusal of {name}",
                       det._tail)
            produce_json(broker_bootstrap, src, msgs[i * step:(i + 1) * step])
        produce_json(broker_bootstrap, src, msgs[(len(cases) + 1) * step:])
        det.wait_value("stream_detector_windows_scored_total", len(msgs) - WINDOW + 1)
        m = det.metrics()
        assert m[refused] == len(cases), "each bad version refused once"
        assert det.value('stream_detector_model_reloads_total{result="loaded"}') == 0
        assert event_versions(broker_bootstrap, out) == {v1}
        assert det.proc.poll() is None, det._tail()
        log = (tmp_path / "det.log").read_text()
        for name, (_, needle) in layout.items():
            assert f"bad-{name}" in log and needle in log
    finally:
        det.terminate()
    # the directory now holds a bad one: a start-up refuses it with one line, exit 2
    (live / "metadata.json").write_text((variant(
        model, tmp_path / "restart", "bad-restart", _period_text) / "metadata.json").read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "stream_detector", "run", "--bootstrap-servers",
         broker_bootstrap, "--input-topic", src, "--output-topic", out, "--metrics-port", "0",
         "--model", str(live)], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "'period'" in lines[0] and str(live) in lines[0]
