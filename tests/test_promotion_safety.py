"""Promotion safety (issue #26 items 2 and 5): a candidate's failure is its refusal, never
the loop's; a version the gate refused stays refused across a restart; keys the candidate
cannot score are not ready; promotion cannot starve (coverage, deadline, keys that left).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from service_helpers import T0, WINDOW, model_variant, wait_until, wave
from test_shadow import _detector, _msgs, _value

from stream_detector.artifact import load_artifact
from stream_detector.batcher import Batch
from stream_detector.decision import make_decider
from stream_detector.errors import InputError
from stream_detector.metrics import Metrics
from stream_detector.model_store import REFUSED, DirSource
from stream_detector.service.reload import ModelWatcher
from stream_detector.service.shadow import Shadow
from stream_detector.threshold import Thresholds

# --- the shadow's readiness -------------------------------------------------------------


def _shadow(model: Path, need: int, **kw: Any) -> Shadow:
    art = load_artifact(model)
    return Shadow(art, make_decider(Thresholds(1.0)), need, Metrics.create(), **kw)


def _feed(sh: Shadow, keys: list[str], scores: list[float]) -> None:
    n = len(keys)
    batch: Batch[Any] = Batch(np.zeros((n, WINDOW, 1), np.float32), [None] * n)
    sh.decide(batch, keys, np.array(scores, dtype=np.float64), 1, np.zeros(n, bool),
              np.ones(n, bool))


def test_a_key_the_candidate_cannot_score_is_not_ready(model):
    sh = _shadow(model, need=2)
    for _ in range(3):
        _feed(sh, ["a", "b"], [0.1, float("nan")])
    assert sh.keys_ready() == (1, 2)
    assert not sh.ready(), "b was never decided by the candidate: not warm"
    _feed(sh, ["b", "b"], [0.1, 0.2])
    assert sh.ready()


def test_new_keys_trickling_in_do_not_starve_promotion(model):
    """The coverage rule: 99% of the keys warm is enough."""
    sh = _shadow(model, need=2, coverage=0.99)
    keys = [f"k{i}" for i in range(200)]
    _feed(sh, keys * 2, [0.1] * 400)
    _feed(sh, ["new-0", "new-1"], [0.1, 0.1])
    assert sh.keys_ready() == (200, 202) and sh.ready()
    strict = _shadow(model, need=2, coverage=1.0)
    _feed(strict, keys * 2 + ["new"], [0.1] * 401)
    assert not strict.ready()


def test_a_slow_series_does_not_starve_promotion(model):
    """The deadline: --shadow-max-s in shadow is enough."""
    slow = _shadow(model, need=5, coverage=1.0, max_s=0.3)
    _feed(slow, ["fast"] * 5 + ["slow"], [0.1] * 6)
    assert not slow.ready()
    time.sleep(0.35)
    assert slow.ready()


def test_a_key_that_left_with_a_window_in_flight_does_not_starve_promotion(model):
    """A window in flight for a key evicted or revoked meanwhile does not bring it back."""
    gone = _shadow(model, need=1, live=lambda k: k != "gone")
    _feed(gone, ["here", "gone"], [0.1, 0.1])
    assert gone.keys_ready() == (1, 1) and gone.ready()


# --- a failing candidate -------------------------------------------------------------------


def test_a_candidate_that_fails_in_shadow_is_refused_and_the_stream_goes_on(model, tmp_path):
    det = _detector("127.0.0.1:9", model, "--events", "windows", "--shadow-windows", "50",
                    "--max-batch", "8")
    published: list[dict[str, Any]] = []
    det.sink.publish = lambda ev, ts: published.append(ev)  # type: ignore[method-assign]
    cand = load_artifact(model_variant(model, tmp_path / "c", "broken"))

    def boom(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("the candidate's kernel fell over")

    cand.model.score_batch = boom  # type: ignore[method-assign]
    det.offer_model(cand)
    msgs = _msgs("a", wave(WINDOW - 1 + 40, seed=4))
    det.handle_many(msgs)
    n = det.score_batch()
    det.handle_many([])
    det.submit_batch()  # the next turn drops the refused shadow
    assert det._shadow is None and det.art.version != "broken"
    assert _value(det, "stream_detector_windows_scored_total") == 40, n
    assert _value(det, "stream_detector_model_reloads_total", result="refused") == 1
    assert [a.version for a, _, _ in det.refusals] == ["broken"]
    assert "fell over" in det.refusals[0][1]


# --- a refusal survives a restart ----------------------------------------------------------


def _gate_csv(path: Path) -> Path:
    values = wave(300, seed=9)
    values[150] += 12.0
    path.write_text("timestamp,key,value,label\n" + "".join(
        f"{T0 + 60 * i},a,{float(v):.5f},{int(i == 150)}\n" for i, v in enumerate(values)))
    return path


def _run_once(model: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream_detector", "run", "--bootstrap-servers", "127.0.0.1:1",
         "--input-topic", "in", "--output-topic", "out", "--metrics-port", "0", "--model",
         str(model)], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_a_version_the_gate_refused_does_not_serve_after_a_restart(model, tmp_path):
    live = tmp_path / "live"
    shutil.copytree(model, live)
    det = _detector("127.0.0.1:9", live, "--shadow-windows", "0", "--promotion-gate",
                    "backtest", "--gate-input", str(_gate_csv(tmp_path / "gate.csv")))
    source = DirSource(str(live))
    source.open()
    watcher = ModelWatcher(source, 1.0, det)  # driven by hand
    blind = model_variant(model, tmp_path / "blind", "blind", threshold=1e9)
    (live / "metadata.json").write_text((blind / "metadata.json").read_text())
    watcher.check()
    det.submit_batch()  # into the shadow; the gate runs
    sh = det._shadow
    assert sh is not None
    wait_until(lambda: sh.gate_passed is not None, 120, "the gate's verdict")
    det.submit_batch()
    assert det._shadow is None and det.art.version != "blind"
    assert _value(det, "stream_detector_model_reloads_total", result="refused") == 1
    watcher.check()  # keeps the refusal, off the hot path
    doc = json.loads((live / REFUSED).read_text())
    assert doc["version"] == "blind" and doc["serving"] == det.art.version
    # a restart does not serve it: exit 2, one line, the reason and how to override
    proc = _run_once(live)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "refused by the promotion gate" in lines[0] and str(live / REFUSED) in lines[0]
    with pytest.raises(InputError, match="'blind' refused by the promotion gate"):
        DirSource(str(live)).open()
    # another version written there is not refused by the marker
    good = model_variant(model, tmp_path / "good", "good")
    (live / "metadata.json").write_text((good / "metadata.json").read_text())
    assert DirSource(str(live)).open() == live
    det._close(1.0)
