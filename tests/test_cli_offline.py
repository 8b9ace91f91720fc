"""The offline commands as a user runs them: ``train`` and ``score`` in a subprocess.

One tiny model is trained once per module; the tests score with it, check that the
written scores equal a direct Keras call on the same windows, and feed both commands
bad input, which must exit 2 with one line naming the file (and line/column) and no
traceback.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from data_paths import DATA_ROOT, needs

from stream_detector.scoring import OUTPUT_HEADER
from stream_detector.synthetic import generate, write_long_csv

WINDOW = 16


def cli(*args: str | Path | int, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m stream_detector ARGS`` with no STREAM_DETECTOR_* variables leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_DETECTOR_")}
    return subprocess.run(
        [sys.executable, "-m", "stream_detector", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def assert_input_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, no traceback, and one stderr line naming every needle; returns that line."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    msg = lines[0]
    assert msg.startswith("stream-detector ") and ": error: " in msg, proc.stderr
    for n in needles:
        assert n in msg, (n, msg)
    return msg


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def series_csv(workdir: Path) -> Path:
    return write_long_csv(generate(n_series=2, length=160, seed=3), workdir / "series.csv")


@pytest.fixture(scope="module")
def model_dir(workdir: Path, series_csv: Path) -> Path:
    out = workdir / "model"
    proc = cli(
        "train",
        "--model",
        "conv1d",
        "--input",
        series_csv,
        "--format",
        "long",
        "--window",
        WINDOW,
        "--epochs",
        2,
        "--model-param",
        "filters=8",
        "--model-param",
        "kernel_size=3",
        "--seed",
        0,
        "--quiet",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.keras").is_file() and (out / "metadata.json").is_file()
    return out


@pytest.fixture
def model_copy(model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the trained artifact, free to damage."""
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


def read_scores(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == [*OUTPUT_HEADER, "expected"]
        return list(reader)


def test_score_writes_the_contract_csv_and_equals_a_direct_model_call(
    model_dir: Path, series_csv: Path, tmp_path: Path
) -> None:
    import keras

    from stream_detector.artifact import load_artifact
    from stream_detector.datasets import read_dataset

    out = tmp_path / "scores.csv"
    plot = tmp_path / "scores.png"
    proc = cli(
        "score",
        "--model",
        model_dir,
        "--input",
        series_csv,
        "--format",
        "long",
        "--output",
        out,
        "--max-batch",
        5,
        "--plot",
        plot,
        "--decision",  # the seed's fixed threshold, checked against the artifact below
        "static",
    )
    assert proc.returncode == 0, proc.stderr
    assert "scored 320 rows of 2 series" in proc.stdout
    assert plot.stat().st_size > 1000
    rows = read_scores(out)
    assert len(rows) == 320
    art = load_artifact(model_dir)
    for s in read_dataset([series_csv], "long").series:
        mine = [r for r in rows if r["key"] == s.key]
        assert [r["timestamp"] for r in mine] == s.timestamps
        assert all(r["score"] == "" and r["is_anomaly"] == "0" for r in mine[: WINDOW - 1])
        got = np.array([float(r["score"]) for r in mine[WINDOW - 1 :]])
        # the same windows through a plain Keras call, RMS error by hand
        x = art.scalers.for_key(s.key).transform(s.values)
        windows = np.lib.stride_tricks.sliding_window_view(x, WINDOW, axis=0).transpose(0, 2, 1)
        y = keras.ops.convert_to_numpy(art.model.model(windows, training=False))
        expected = np.sqrt(((windows.astype(np.float64) - y) ** 2).mean(axis=(1, 2)))
        np.testing.assert_allclose(got, expected, rtol=1e-5)  # the CSV keeps 6 digits
        # expected: the newest point of each window as reconstructed, in the input's units
        sc = art.scalers.for_key(s.key)
        want = y[:, -1, 0] * sc.scale[0] + sc.center[0]
        assert all(r["expected"] == "" for r in mine[: WINDOW - 1])
        np.testing.assert_allclose([float(r["expected"]) for r in mine[WINDOW - 1 :]], want,
                                   rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
        thr = np.array([float(r["threshold"]) for r in mine[WINDOW - 1 :]])
        a = np.array([float(r["anomaly_score"]) for r in mine[WINDOW - 1 :]])
        flag = np.array([r["is_anomaly"] == "1" for r in mine[WINDOW - 1 :]])
        assert thr == pytest.approx(art.thresholds.for_key(s.key), rel=1e-5)
        np.testing.assert_array_equal(flag, expected > art.thresholds.for_key(s.key))
        np.testing.assert_array_equal(a > 0.5, flag)


# -- bad input: exit 2, one line naming the place ---------------------------------------


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD_HEAD = "timestamp,key,value\n" + "".join(f"{60 * i},a,{i % 7}\n" for i in range(40))


@pytest.mark.parametrize(
    ("name", "text", "fmt", "needles"),
    [
        ("empty.csv", "", "long", ["the file is empty"]),
        ("text.csv", GOOD_HEAD + "2400,a,abc\n", "long", ["line 42", "column 'value'", "'abc'"]),
        (
            "nan.csv",
            GOOD_HEAD + "2400,a,nan\n",
            "long",
            ["line 42", "column 'value'", "not finite"],
        ),
        (
            "inf.csv",
            GOOD_HEAD.replace("600,a,3", "600,a,-inf"),
            "long",
            ["line 12", "column 'value'", "not finite"],
        ),
        ("wide.csv", "1,2,3\n4,5,six\n", "wide", ["line 2", "column '2'", "'six'"]),
        (
            "short.csv",
            "timestamp,key,value\n0,a,1\n60,a,2\n",
            "long",
            ["series 'a' has 2 training point(s)", "window of 16"],
        ),
        ("records.csv", "key,name\nu1,alpha\nu2,beta\n", "records", ["no numeric column"]),
    ],
    ids=[
        "empty",
        "non-numeric",
        "nan",
        "inf",
        "wide-non-numeric",
        "short-series",
        "records-no-numeric",
    ],
)
def test_train_refuses_bad_input(
    tmp_path: Path, name: str, text: str, fmt: str, needles: list[str]
) -> None:
    p = _write(tmp_path, name, text)
    model = "feedforward" if fmt == "records" else "conv1d"
    window = "1" if fmt == "records" else str(WINDOW)
    proc = cli(
        "train",
        "--model",
        model,
        "--input",
        p,
        "--format",
        fmt,
        "--window",
        window,
        "--epochs",
        1,
        "--quiet",
        "--out",
        tmp_path / "m",
    )
    assert_input_error(proc, str(p), *needles)
    assert not (tmp_path / "m").exists()


def test_train_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.csv"
    proc = cli("train", "--input", p, "--out", tmp_path / "m")
    assert_input_error(proc, str(p), "no such file")


def test_train_bad_flag_value(tmp_path: Path) -> None:
    proc = cli("train", "--input", "x.csv", "--out", tmp_path / "m", "--epochs", "many")
    assert_input_error(proc, "--epochs", "'many'")


def test_score_refuses_a_series_shorter_than_the_window(model_dir: Path, tmp_path: Path) -> None:
    # (the other bad-input cases are the readers' and are checked through train, which
    # fails before TensorFlow loads; score loads the model first)
    short = _write(tmp_path, "short.csv", "timestamp,key,value\n0,a,1\n60,a,2\n")
    proc = cli("score", "--model", model_dir, "--input", short, "--output", tmp_path / "o.csv")
    assert_input_error(proc, str(short), "series 'a' has 2 point(s)", "window of 16")
    assert not (tmp_path / "o.csv").exists()


def _damage_truncate(d: Path) -> Path:
    m = d / "model.keras"
    m.write_bytes(m.read_bytes()[:200])
    return m


def _damage_truncate_and_fix_sha(d: Path) -> Path:
    """A damaged model.keras whose sha was 'fixed' too: Keras itself must refuse it."""
    m = _damage_truncate(d)
    meta = json.loads((d / "metadata.json").read_text())
    meta["model_sha256"] = hashlib.sha256(m.read_bytes()).hexdigest()
    (d / "metadata.json").write_text(json.dumps(meta))
    return m


def _damage_edit_sha(d: Path) -> Path:
    meta = json.loads((d / "metadata.json").read_text())
    meta["model_sha256"] = "0" * 64
    (d / "metadata.json").write_text(json.dumps(meta))
    return d / "model.keras"


def _damage_delete_metadata(d: Path) -> Path:
    (d / "metadata.json").unlink()
    return d / "metadata.json"


def _damage_non_json(d: Path) -> Path:
    (d / "metadata.json").write_text("{not json at all\n")
    return d / "metadata.json"


def _damage_delete_model(d: Path) -> Path:
    (d / "model.keras").unlink()
    return d / "model.keras"


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (_damage_truncate, "does not match metadata.json"),
        (_damage_truncate_and_fix_sha, "cannot be loaded by Keras"),
        (_damage_edit_sha, "does not match metadata.json"),
        (_damage_delete_metadata, "missing"),
        (_damage_non_json, "not valid JSON"),
        (_damage_delete_model, "missing"),
    ],
    ids=["truncated", "truncated-sha-fixed", "sha-edited", "no-metadata", "non-json", "no-model"],
)
def test_score_refuses_a_damaged_artifact(
    model_copy: Path, series_csv: Path, tmp_path: Path, damage: Callable[[Path], Path], needle: str
) -> None:
    bad_file = damage(model_copy)
    proc = cli(
        "score", "--model", model_copy, "--input", series_csv, "--output", tmp_path / "o.csv"
    )
    assert_input_error(proc, str(bad_file), needle)
    assert not (tmp_path / "o.csv").exists()


def test_score_missing_model_dir(series_csv: Path, tmp_path: Path) -> None:
    d = tmp_path / "no-model"
    proc = cli("score", "--model", d, "--input", series_csv, "--output", tmp_path / "o.csv")
    assert_input_error(proc, str(d), "does not exist")


def test_train_keeps_each_keys_value_range(model_dir: Path, series_csv: Path) -> None:
    """The artifact holds every key's training range: the `range` check starts there."""
    values: dict[str, list[float]] = {}
    with series_csv.open(newline="") as fh:
        for row in csv.DictReader(fh):
            values.setdefault(row["key"], []).append(float(np.float32(row["value"])))
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["value_range"] == {k: [[min(v)], [max(v)]] for k, v in values.items()}


def _seasons_csv(path: Path, n: int, skip: tuple[int, int] | None = None) -> Path:
    """Key "daily" repeats every 24 rows (one flat day at ``skip``); "walk" never does."""
    rng = np.random.default_rng(11)
    daily = 5.0 + np.sin(2 * np.pi * np.arange(n) / 24) + rng.normal(0, 0.05, n)
    if skip:
        daily[skip[0] : skip[1]] = 5.0
    walk = np.cumsum(rng.normal(0, 1, n))
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "key", "value"])
        for i in range(n):
            w.writerow([1_767_225_600 + 3600 * i, "daily", f"{daily[i]:.5f}"])
            w.writerow([1_767_225_600 + 3600 * i, "walk", f"{walk[i]:.5f}"])
    return path


def test_train_keeps_each_keys_period_and_score_checks_it(tmp_path: Path) -> None:
    """A key that repeats itself gets its period in the artifact (the seasonal check's);
    one that does not gets none. ``score`` then checks the periodic key's seasons."""
    out = tmp_path / "model"
    proc = cli("train", "--model", "conv1d", "--input", _seasons_csv(tmp_path / "t.csv", 480),
               "--format", "long", "--window", WINDOW, "--epochs", 1, "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["period"] == {"daily": 24}

    data = _seasons_csv(tmp_path / "s.csv", 1200, skip=(1000, 1024))
    got = {}
    for season in ("trained", "off"):
        dest = tmp_path / f"{season}.csv"
        proc = cli("score", "--model", out, "--input", data, "--format", "long", "--output",
                   dest, "--decision", "pot", "--decision-param", f"season={season}",
                   "--decision-param", "range=0", "--decision-param", "suppress=0")
        assert proc.returncode == 0, proc.stderr
        with dest.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        got[season] = {k: [float(r["anomaly_score"] or 0) for r in rows if r["key"] == k]
                       for k in ("daily", "walk")}
    assert got["trained"]["walk"] == got["off"]["walk"]  # no period: no check
    seasonal = np.array(got["trained"]["daily"])
    plain = np.array(got["off"]["daily"])
    # the larger of the two scores (suppression, off here, acts on that larger one)
    assert (seasonal >= plain).all()
    assert seasonal[1000:1024].max() > 0.5 >= plain[1000:1024].max()  # the flat day


# -- timestamps that go back --------------------------------------------------------------

# A real NAB file that steps back an hour at a daylight-saving change: line 10151 reads
# 02:00 right after 02:55.
NAB_DST = DATA_ROOT / "nab" / "data" / "realKnownCause" / "machine_temperature_system_failure.csv"
NAB_DST_LINE = 10151


@pytest.mark.slow
@needs(NAB_DST)
def test_train_and_score_a_nab_file_that_steps_back_an_hour(tmp_path: Path) -> None:
    out = tmp_path / "model"
    proc = cli("train", "--format", "nab", "--input", NAB_DST, "--out", out, "--epochs", 1,
               "--window", 32, "--model-param", "filters=8", "--seed", 0, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert f"line {NAB_DST_LINE}" in proc.stderr and "1 point(s)" in proc.stderr
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["training"]["timestamps_backwards"] == 1
    scores = tmp_path / "scores.csv"
    proc = cli("score", "--format", "nab", "--input", NAB_DST, "--model", out,
               "--output", scores)
    assert proc.returncode == 0, proc.stderr
    rows = read_scores(scores)
    with NAB_DST.open(newline="") as fh:
        source = list(csv.DictReader(fh))
    assert [r["timestamp"] for r in rows] == [r["timestamp"] for r in source]  # file order
    step = NAB_DST_LINE - 2  # row index of the file's line
    assert rows[step - 1]["timestamp"] > rows[step]["timestamp"]
    assert all(r["score"] != "" for r in rows[31:]), "every point from the first full window"


@needs(NAB_DST)
def test_timestamp_policy_dlq_refuses_the_nab_file_naming_its_line(tmp_path: Path) -> None:
    proc = cli("train", "--format", "nab", "--input", NAB_DST, "--out", tmp_path / "m",
               "--timestamp-policy", "dlq", "--quiet")
    assert_input_error(proc, str(NAB_DST), f"line {NAB_DST_LINE}", "goes backwards",
                       "'2014-01-07 02:00:00'", "--timestamp-policy")
    assert not (tmp_path / "m").exists()


def _step_back_csv(path: Path, n: int = 60, at: int = 30) -> Path:
    """Key a every 60 s; its point ``at`` (line at + 2) steps back an hour, and the
    points after it go on from there."""
    ts = [60 * i - (3600 if i >= at else 0) for i in range(n)]
    values = np.sin(np.arange(n) / 3.0)
    path.write_text("timestamp,key,value\n" + "".join(
        f"{1_767_225_600 + t},a,{v:.5f}\n" for t, v in zip(ts, values)))
    return path


def test_score_accepts_or_drops_a_step_back_and_counts_it(model_dir: Path,
                                                          tmp_path: Path) -> None:
    data = _step_back_csv(tmp_path / "dst.csv")
    lines = data.read_text().splitlines()
    got = {}
    for policy in ("accept", "drop"):
        dest = tmp_path / f"{policy}.csv"
        args = ["score", "--model", model_dir, "--input", data, "--format", "long",
                "--output", dest]
        proc = cli(*args) if policy == "accept" else cli(*args, "--timestamp-policy", policy)
        assert proc.returncode == 0, proc.stderr
        assert "1 point(s)" in proc.stderr and "line 32" in proc.stderr, proc.stderr
        got[policy] = read_scores(dest)
    # accept: every point in file order, each scored once its window is full
    assert [r["timestamp"] for r in got["accept"]] == [ln.split(",")[0] for ln in lines[1:]]
    assert all(r["score"] != "" for r in got["accept"][WINDOW - 1:])
    assert got["accept"][30]["score"] != got["accept"][29]["score"]  # a window ends there
    # drop: the one point that steps back is left out, not the ones after it
    dropped = [ln.split(",")[0] for i, ln in enumerate(lines[1:]) if i != 30]
    assert [r["timestamp"] for r in got["drop"]] == dropped
    assert all(r["score"] != "" for r in got["drop"][WINDOW - 1:])
    # dlq: offline there is no dead-letter topic: the file is refused, naming the line
    proc = cli("score", "--model", model_dir, "--input", data, "--format", "long",
               "--output", tmp_path / "dlq.csv", "--timestamp-policy", "dlq")
    assert_input_error(proc, str(data), "line 32", "key 'a' goes backwards")
    assert not (tmp_path / "dlq.csv").exists()


def test_timestamp_policy_comes_from_env_and_is_checked(model_dir: Path, tmp_path: Path) -> None:
    data = _step_back_csv(tmp_path / "dst.csv")
    env = {**os.environ, "STREAM_DETECTOR_TIMESTAMP_POLICY": "dlq"}
    proc = subprocess.run(
        [sys.executable, "-m", "stream_detector", "score", "--model", str(model_dir),
         "--input", str(data), "--output", str(tmp_path / "s.csv")],
        capture_output=True, text=True, env=env, timeout=300)
    assert_input_error(proc, "line 32")
    proc = cli("score", "--model", model_dir, "--input", data, "--output", tmp_path / "s.csv",
               "--timestamp-policy", "sort")
    assert proc.returncode == 2 and "invalid choice: 'sort'" in proc.stderr
