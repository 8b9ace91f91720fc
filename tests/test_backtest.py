"""``stream-detector backtest``: the serving model and a candidate on the same data; exit 1
when the candidate is worse by more than ``--margin`` (small models, in process; the topic
range against the embedded broker)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from kafka_helpers import produce_json
from service_helpers import model_variant, stream, wave

from stream_detector.cli import main

pytestmark = pytest.mark.slow

SPIKES = {"a": 150, "b": 220, "c": 300}


def _series() -> dict[str, np.ndarray]:
    out = {k: wave(400, seed=20 + i) for i, k in enumerate(SPIKES)}
    for k, pos in SPIKES.items():
        out[k][pos] += 12.0
    return out


def _csv(path: Path, labels: bool) -> Path:
    series = _series()
    with path.open("w") as fh:
        fh.write("timestamp,key,value" + (",label\n" if labels else "\n"))
        for i in range(400):
            for k, v in series.items():
                row = f"{1_767_225_600 + 60 * i},{k},{float(v[i]):.5f}"
                fh.write(row + (f",{int(i == SPIKES[k])}\n" if labels else "\n"))
    return path


@pytest.fixture(scope="module")
def variants(model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("variants")
    return {"same": model_variant(model, base / "same", "same-weights"),
            # its threshold so high that it flags nothing: blind to every spike
            "blind": model_variant(model, base / "blind", "blind", threshold=1e9)}


def _backtest(tmp_path: Path, *args: str) -> tuple[int, dict]:
    out = tmp_path / "report.json"
    code = main(["backtest", *args, "--output", str(out)])
    return code, json.loads(out.read_text()) if out.exists() else {}


def test_an_equal_candidate_passes_with_precision_and_recall(model, variants, tmp_path,
                                                              capsys):
    data = _csv(tmp_path / "labelled.csv", labels=True)
    code, rep = _backtest(tmp_path, "--serving", str(model), "--candidate",
                          str(variants["same"]), "--input", str(data))
    assert code == 0, capsys.readouterr()
    assert rep["passed"] and rep["labelled"]
    assert rep["serving"]["events"] == rep["candidate"]["events"] >= len(SPIKES)
    assert rep["serving_matched"] == rep["serving"]["events"]
    assert rep["candidate"]["recall"] == 1.0 and rep["candidate"]["f1"] == rep["serving"]["f1"]
    assert "PASS" in capsys.readouterr().out


def test_a_worse_candidate_fails_with_exit_1(model, variants, tmp_path, capsys):
    data = _csv(tmp_path / "labelled.csv", labels=True)
    code, rep = _backtest(tmp_path, "--serving", str(model), "--candidate",
                          str(variants["blind"]), "--input", str(data), "--margin", "0.1")
    assert code == 1
    assert not rep["passed"] and rep["candidate"]["events"] == 0
    assert rep["candidate"]["recall"] == 0.0 and rep["serving"]["recall"] == 1.0
    assert "FAIL" in capsys.readouterr().out
    # without labels the serving model's events are the reference: still worse
    plain = _csv(tmp_path / "plain.csv", labels=False)
    code, rep = _backtest(tmp_path, "--serving", str(model), "--candidate",
                          str(variants["blind"]), "--input", str(plain))
    assert code == 1 and not rep["labelled"] and rep["candidate"]["precision"] is None
    # ... and the other way round the blind model raised no event to miss
    code, rep = _backtest(tmp_path, "--serving", str(variants["blind"]), "--candidate",
                          str(model), "--input", str(data))
    assert code == 0 and rep["candidate"]["f1"] > rep["serving"]["f1"]


def test_bad_arguments_exit_2(model, variants, tmp_path, capsys):
    data = _csv(tmp_path / "labelled.csv", labels=True)
    for args, want in ((["--input", str(data), "--margin", "1.5"], "--margin"),
                       ([], "nothing to replay"),
                       (["--input", str(data), "--topic", "t"], "not both"),
                       (["--topic", "t"], "--bootstrap-servers")):
        code = main(["backtest", "--serving", str(model), "--candidate",
                     str(variants["same"]), *args])
        assert code == 2, args
        assert want in capsys.readouterr().err


def test_a_topic_range_replays_like_its_csv(broker_bootstrap, topic_factory, model, variants,
                                            tmp_path):
    topic = topic_factory(2)
    produce_json(broker_bootstrap, topic, stream(_series()))
    code, rep = _backtest(tmp_path, "--serving", str(model), "--candidate",
                          str(variants["blind"]), "--topic", topic, "--bootstrap-servers",
                          broker_bootstrap)
    assert code == 1 and rep["serving"]["events"] >= len(SPIKES)
    code, csv_rep = _backtest(tmp_path, "--serving", str(model), "--candidate",
                              str(variants["blind"]), "--input",
                              str(_csv(tmp_path / "plain.csv", labels=False)))
    assert rep["serving"]["events"] == csv_rep["serving"]["events"]
    # a range: the first 100 offsets of each partition (under 100 points a key, before
    # any spike)
    code, part = _backtest(tmp_path, "--serving", str(model), "--candidate",
                           str(variants["same"]), "--topic", topic, "--bootstrap-servers",
                           broker_bootstrap, "--to-offset", str(100))
    assert code == 0 and part["serving"]["events"] < rep["serving"]["events"]
