"""The evaluation harness (``stream_detector.evaluation``, ``scripts/evaluate.py``).

Protocol pieces are checked on their own (PyOD's split, NAB rows by position, SMAP labels);
the end-to-end smoke runs train tiny models on 2 NAB files, 1 ODDS set and 1 SMAP channel
and check the outputs' shape, not their quality (``make evaluate`` measures that). Tests
that need the staged data skip when it is absent.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_paths import DATA_ROOT

from stream_detector import models
from stream_detector.evaluation import harness, loaders, nab, tables

NAB_ROOT = DATA_ROOT / "nab"
ODDS_ROOT = DATA_ROOT / "odds"
SMAP_ROOT = DATA_ROOT / "smap_msl"
REPO = Path(__file__).resolve().parents[1]


def needs_dir(path: Path, what: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not path.exists(),
        reason=f"{what} not staged at {path} (set STREAM_DETECTOR_DATA to the shared data folder)",
    )


needs_nab = needs_dir(NAB_ROOT / "labels" / "combined_windows.json", "NAB")
needs_odds = needs_dir(ODDS_ROOT / "pima.csv", "ODDS")
needs_smap = needs_dir(SMAP_ROOT / "labeled_anomalies.csv", "SMAP/MSL")

SMALL_NAB = [
    "artificialWithAnomaly/art_daily_jumpsup.csv",
    "realAWSCloudwatch/ec2_cpu_utilization_5f5533.csv",
]


def test_pyod_split_is_a_60_40_permutation_standardised_on_train() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, size=(101, 4))
    x[:, 3] = 7.0  # a constant feature keeps scale 1
    y = (rng.random(101) < 0.2).astype(int)
    xtr, xte, ytr, yte = loaders.pyod_split(x, y, seed=4)
    assert (len(xtr), len(xte)) == (60, 41)  # ceil(0.4 n) test rows, as scikit-learn
    perm = np.random.RandomState(4).permutation(101)
    np.testing.assert_array_equal(yte, y[perm[:41]])
    np.testing.assert_array_equal(ytr, y[perm[41:]])
    np.testing.assert_allclose(xtr.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(xtr[:, :3].std(axis=0), 1)
    np.testing.assert_allclose(xte[:, 3], 0)


def test_parse_decisions_labels_and_specs() -> None:
    d = harness.parse_decisions(["static", "pot:suppress=0,risk=1e-3"])
    assert list(d) == ["static", "pot:suppress=0,risk=1e-3"]
    assert d["pot:suppress=0,risk=1e-3"]["suppress"] == 0
    assert d["pot:suppress=0,risk=1e-3"]["risk"] == 1e-3
    with pytest.raises(ValueError):
        harness.parse_decisions(["pot:nonsense=1"])


@needs_nab
def test_nab_rows_are_read_by_position_like_the_scorer() -> None:
    # this file steps back in time at a daylight-saving change; read_dataset refuses it
    name = "realKnownCause/machine_temperature_system_failure.csv"
    ds = loaders.nab_dataset(NAB_ROOT, name)
    corpus = nab.load_corpus(*nab.nab_paths(NAB_ROOT)[:2])
    assert len(ds.series[0]) == corpus.files[name].num_rows
    assert np.all(np.diff(ds.series[0].ts) > 0)
    assert len(loaders.nab_files(NAB_ROOT)) == 58


@needs_smap
def test_smap_channel_labels_and_shapes() -> None:
    ch = loaders.read_channel(SMAP_ROOT, "T-9")
    assert ch.anomalies == ((780, 810), (890, 970)) and ch.spacecraft == "MSL"
    assert ch.train.shape == (439, 55) and ch.test.shape == (1096, 55)
    ds = loaders.channel_dataset("T-9", ch.test[:, :1])
    assert ds.n_features == 1 and len(ds.series[0]) == 1096


@needs_nab
def test_nab_end_to_end_smoke(tmp_path: Path) -> None:
    decisions = harness.parse_decisions(["static", "pot"])
    rep = harness.run_nab(NAB_ROOT, decisions, epochs=1, files=SMALL_NAB, out=tmp_path, window=32)
    assert set(rep.scores) == {"static", "pot"}
    for s in rep.scores.values():
        for profile in nab.PROFILE_NAMES:
            assert -200 <= s[profile] <= 100
    written = tmp_path / "pot" / SMALL_NAB[0]
    with written.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    data = loaders.nab_dataset(NAB_ROOT, SMALL_NAB[0]).series[0]
    assert len(rows) == len(data) and list(rows[0]) == ["timestamp", "value", "anomaly_score"]
    a = np.array([float(r["anomaly_score"]) for r in rows])
    assert np.all((a >= 0) & (a <= 1)) and a[:31].max() == 0 and a.max() > 0
    assert [r["timestamp"] for r in rows] == data.timestamps
    # the written folder is a valid NAB results folder for the scorer
    again = nab.score_detector(tmp_path / "pot", *nab.nab_paths(NAB_ROOT), files=SMALL_NAB)
    assert again["standard"] == pytest.approx(rep.scores["pot"]["standard"], abs=1e-6)
    assert "stream_detector conv1d + `pot`" in tables.nab_table(rep)


@needs_nab
def test_nab_model_params_reach_the_model_and_key_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Watch what the harness trains (the real training, only observed): the report's
    # options echo the argument whether or not it reaches the model, the model does not.
    trained = []
    real_train = harness.train

    def spy(ds, opts):  # type: ignore[no-untyped-def]
        art = real_train(ds, opts)
        trained.append(art)
        return art

    monkeypatch.setattr(harness, "train", spy)
    decisions = harness.parse_decisions(["pot"])
    name = SMALL_NAB[0]
    rep = harness.run_nab(
        NAB_ROOT, decisions, epochs=1, files=[name], window=32, cache=tmp_path,
        model_params={"filters": 4},
    )
    assert rep.options["model_params"] == {"filters": 4}
    (art,) = trained
    assert art.model.params["filters"] == 4
    assert art.metadata["model_params"]["filters"] == 4
    # the Keras network itself has the size filters=4 gives, not the default's
    n = art.model.n_features
    small = models.build("conv1d", 32, n, {"filters": 4}).model.count_params()
    default = models.build("conv1d", 32, n).model.count_params()
    assert small != default
    assert art.model.model.count_params() == small
    (tag,) = [p.name for p in tmp_path.iterdir()]
    assert tag.endswith("-filters4")
    assert (tmp_path / tag / (name.replace("/", "__") + ".npz")).is_file()
    # a rerun with the same parameters reads the cache: same scores, no training
    again = harness.run_nab(
        NAB_ROOT, decisions, epochs=1, files=[name], window=32, cache=tmp_path,
        model_params={"filters": 4},
    )
    assert again.train_seconds < rep.train_seconds
    assert len(trained) == 1, "the rerun trained again instead of reading the cache"
    assert again.scores["pot"]["standard"] == rep.scores["pot"]["standard"]


@needs_odds
def test_odds_smoke() -> None:
    (row,) = harness.run_odds(ODDS_ROOT, ["pima"], seeds=2, epochs=2)
    assert len(row.roc) == 2 and all(0.0 < v < 1.0 for v in row.roc)
    assert all(0.0 <= v <= 1.0 for v in row.prn)
    assert "pima" in tables.odds_table([row])


@needs_smap
def test_smap_smoke() -> None:
    decisions = harness.parse_decisions(["static", "pot"])
    (res,) = harness.run_smap(SMAP_ROOT, ["T-9"], decisions, epochs=1, window=32)
    for e in res.events.values():
        assert e.tp + e.fn == 2
    assert "T-9 (MSL)" in tables.smap_table([res])


def test_decider_cost_table() -> None:
    cost = harness.decider_cost(harness.parse_decisions(["static", "pot"]), keys=5, per_key=150)
    assert cost["static"]["state_bytes"] == 0 and cost["pot"]["state_bytes"] > 0
    assert cost["pot"]["offline_us"] > 0
    assert "`pot`" in tables.cost_table(cost)


@pytest.mark.slow
@needs_nab
@needs_odds
@needs_smap
def test_evaluate_script_quick(tmp_path: Path) -> None:
    out = tmp_path / "tables.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "evaluate.py"),
            "--quick",
            "--epochs",
            "1",
            "--markdown",
            str(out),
            "--json",
            str(tmp_path / "all.json"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    for heading in ("### NAB", "### ODDS", "### SMAP/MSL", "### Decider cost"):
        assert heading in text
    assert "Numenta HTM" in text and "telemanom" in text


def test_fine_tuning_cost_is_measured_against_the_plain_model() -> None:
    from stream_detector.finetune import FineTuneOptions

    cost = harness.fine_tune_cost(FineTuneOptions(every=64), windows=512, batch=64)
    assert cost["plain_us"] > 0 and cost["tuned_us"] > cost["plain_us"]
    assert cost["fine_tune_us"] == pytest.approx(cost["tuned_us"] - cost["plain_us"])


@needs_nab
def test_nab_gap_policy_retrains_only_the_files_with_gaps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained = []
    real_train = harness.train

    def spy(ds, opts):  # type: ignore[no-untyped-def]
        trained.append((ds.series[0].key, opts.gap_policy))
        return real_train(ds, opts)

    monkeypatch.setattr(harness, "train", spy)
    decisions = harness.parse_decisions(["adaptive"])
    plain = "realAWSCloudwatch/iio_us-east-1_i-a2eb1cd9_NetworkIn.csv"  # no gap
    gappy = "realAdExchange/exchange-4_cpc_results.csv"  # 4 gaps of an hour
    empty = "realTraffic/TravelTime_387.csv"  # restart: no full window in the training part
    off = harness.run_nab(NAB_ROOT, decisions, epochs=1, files=[plain, gappy], cache=tmp_path)
    assert off.options["gap_files"] == [] and len(trained) == 2
    out = tmp_path / "out"
    rep = harness.run_nab(NAB_ROOT, decisions, epochs=1, files=[plain, gappy, empty],
                          cache=tmp_path, out=out, gaps="restart")
    # only the file with gaps is trained again, with the policy; the other is off's entry
    assert trained[2:] == [("exchange-4_cpc_results", "restart")]
    assert rep.options["gap_files"] == [gappy, empty]
    assert rep.options["gap_no_model"] == [empty]
    tags = sorted(p.name for p in tmp_path.iterdir() if p.name != "out")
    assert tags == [tags[0], tags[0] + "-gaprestart32"]
    assert len(list((tmp_path / tags[0]).iterdir())) == 2
    assert len(list((tmp_path / tags[1]).iterdir())) == 1
    # fewer windows where the window restarts; nothing flagged without a model
    assert rep.windows < off.windows
    with (out / "adaptive" / empty).open(newline="") as fh:
        assert {float(r["anomaly_score"]) for r in csv.DictReader(fh)} == {0.0}
    # a rerun reads the policy's cache entry
    harness.run_nab(NAB_ROOT, decisions, epochs=1, files=[plain, gappy, empty],
                    cache=tmp_path, gaps="restart")
    assert len(trained) == 3
