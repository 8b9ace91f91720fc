"""Readers of the four input formats, their error messages, and the scalers fitted on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream_detector.datasets import parse_timestamp, read_dataset
from stream_detector.errors import InputError
from stream_detector.scaling import ScalerSet, fit_scaler


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# -- formats ---------------------------------------------------------------------------


def test_long_groups_rows_by_key_in_file_order(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "l.csv",
        "timestamp,key,value\n"
        "2026-01-01T00:00:00Z,a,1\n"
        "2026-01-01T00:00:00Z,b,10\n"
        "2026-01-01T00:01:00Z,a,2\n"
        "2026-01-01T00:01:00Z,b,20\n"
        "2026-01-01T00:02:00Z,a,3\n",
    )
    ds = read_dataset([p], "long")
    assert ds.fmt == "long" and ds.feature_names == ["value"] and ds.n_features == 1
    assert [s.key for s in ds.series] == ["a", "b"] and ds.n_points == 5
    a, b = ds.series
    np.testing.assert_array_equal(a.values[:, 0], [1, 2, 3])
    np.testing.assert_array_equal(b.values[:, 0], [10, 20])
    np.testing.assert_array_equal(a.lines, [2, 4, 6])
    assert a.ts[1] - a.ts[0] == 60.0 and a.timestamps[0] == "2026-01-01T00:00:00Z"
    assert a.values.dtype == np.float32 and a.labels is None


def test_long_value_columns_are_more_features(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "l.csv",
        "timestamp,key,value,value_mem,host,value_disk\n0,a,1,2,h1,3\n60,a,4,5,h1,6\n",
    )
    ds = read_dataset([p], "long")
    assert ds.feature_names == ["value", "value_mem", "value_disk"]  # "host" is not a value
    np.testing.assert_array_equal(ds.series[0].values, [[1, 2, 3], [4, 5, 6]])


def test_nab_key_is_the_file_stem_and_label_is_kept(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "machine_temp.csv",
        "timestamp,value,label\n2014-02-14 14:30:00,1.5,0\n2014-02-14 14:35:00,2.5,1\n",
    )
    q = _write(tmp_path, "cpu.csv", "timestamp,value\n0,1\n5,2\n")
    ds = read_dataset([p, q], "nab")
    assert [s.key for s in ds.series] == ["machine_temp", "cpu"]
    s = ds.series[0]
    assert s.ts[1] - s.ts[0] == 300.0  # naive time is UTC
    np.testing.assert_array_equal(s.labels, [0, 1])
    assert ds.series[1].labels is None
    assert ds.files == [str(p), str(q)]


def test_wide_rows_are_sequences_keyed_by_row_number(tmp_path: Path) -> None:
    p = _write(tmp_path, "w.csv", "1,2,3,4\n5,6,7,8\n\n9,10,11,12\n")
    ds = read_dataset([p], "wide")
    assert [s.key for s in ds.series] == ["0", "1", "2"]  # the blank line is skipped
    np.testing.assert_array_equal(ds.series[2].values[:, 0], [9, 10, 11, 12])
    np.testing.assert_array_equal(ds.series[0].ts, [0, 1, 2, 3])
    # with several files the key also names the file
    q = _write(tmp_path, "v.csv", "1,2\n")
    assert [s.key for s in read_dataset([p, q], "wide").series] == ["w/0", "w/1", "w/2", "v/0"]


def test_records_key_and_label_are_not_features(tmp_path: Path) -> None:
    p = _write(
        tmp_path, "r.csv", "key,f0,name,f1,label\nu1,1.0,x,2.0,0\nu2,3.0,y,4.0,1\nu1,5.0,z,6.0,0\n"
    )
    ds = read_dataset([p], "records")
    assert ds.feature_names == ["f0", "f1"]  # the text column "name" is ignored
    (s,) = ds.series
    np.testing.assert_array_equal(s.values, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(s.labels, [0, 1, 0])
    assert s.row_keys == ["u1", "u2", "u1"]
    assert s.key == "r" and s.timestamps == ["0", "1", "2"]


def test_records_without_key_or_label(tmp_path: Path) -> None:
    p = _write(tmp_path, "r.csv", "a,b\n1,2\n3,4\n")
    (s,) = read_dataset([p], "records").series
    assert s.row_keys is None and s.labels is None and s.values.shape == (2, 2)


def test_series_head_takes_a_prefix() -> None:
    p = Path(__file__)  # any path: head only slices
    from stream_detector.datasets import Series

    s = Series(
        "k",
        [str(i) for i in range(10)],
        np.arange(10.0),
        np.arange(10.0).reshape(10, 1),
        str(p),
        np.arange(10),
    )
    h = s.head(0.4)
    assert len(h) == 4 and h.timestamps == ["0", "1", "2", "3"]
    assert len(s.head(0.01)) == 1


def test_parse_timestamp_forms() -> None:
    assert parse_timestamp("2026-01-01T00:00:00Z") == parse_timestamp("2026-01-01 00:00:00")
    assert parse_timestamp("2026-01-01T01:00:00+01:00") == parse_timestamp("1767225600")
    with pytest.raises(ValueError):
        parse_timestamp("nan")


# -- errors: one line naming file, line and column ----------------------------------------


@pytest.mark.parametrize(
    ("fmt", "text", "expected"),
    [
        (
            "long",
            "timestamp,key,value\n0,a,1\n60,a,oops\n",
            r"line 3, column 'value': expected a number, got 'oops'",
        ),
        ("long", "timestamp,key,value\n0,a,nan\n", r"line 2, column 'value'.*not finite"),
        ("nab", "timestamp,value\n0,1\n60,inf\n", r"line 3, column 'value'.*not finite"),
        ("long", "timestamp,key\n0,a\n", r"line 1: header must contain.*missing value"),
        ("long", "timestamp,key,value\n", r"header but no data rows"),
        ("long", "timestamp,key,value\n0,,1\n", r"line 2, column 'key': empty series key"),
        (
            "long",
            "timestamp,key,value\nyesterday,a,1\n",
            r"line 2, column 'timestamp': cannot parse",
        ),
        ("long", "timestamp,key,value\n0,a\n", r"line 2: missing column 'value'"),
        ("wide", "1,2,3\n4,x,6\n", r"line 2, column '1': expected a number"),
        ("records", "key,label\nu,1\n", r"line 1: no feature column"),
        ("records", "name,host\nx,y\n", r"no numeric column among name, host"),
        ("records", "f0,f1\n1,2\n3,abc\n", r"line 3, column 'f1': expected a number"),
    ],
)
def test_bad_input_names_file_line_and_column(
    tmp_path: Path, fmt: str, text: str, expected: str
) -> None:
    p = _write(tmp_path, "bad.csv", text)
    with pytest.raises(InputError, match=expected) as info:
        read_dataset([p], fmt)
    msg = str(info.value)
    assert msg.startswith(str(p)) and "\n" not in msg


# -- timestamps that go back -------------------------------------------------------------

# key a steps back an hour at line 4 (as NAB files do at a daylight-saving change), then
# goes on from there; key b has one far-future point at line 6
STEP_BACK = (
    "timestamp,key,value\n"
    "2026-03-29T02:50:00,a,1\n"
    "2026-03-29T02:55:00,a,2\n"
    "2026-03-29T02:00:00,a,3\n"
    "2026-03-29T02:05:00,a,4\n"
    "2099-01-01T00:00:00,b,10\n"
    "2026-03-29T02:10:00,a,5\n"
    "2026-03-29T02:00:00,b,11\n"
    "2026-03-29T02:05:00,b,12\n"
)


def test_timestamps_going_back_are_kept_in_file_order_by_default(tmp_path: Path) -> None:
    p = _write(tmp_path, "dst.csv", STEP_BACK)
    ds = read_dataset([p], "long")
    a, b = ds.series
    explicit = read_dataset([p], "long", "accept")
    assert [s.lines.tolist() for s in explicit.series] == [a.lines.tolist(), b.lines.tolist()]
    np.testing.assert_array_equal(a.values[:, 0], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(a.lines, [2, 3, 4, 5, 7])
    np.testing.assert_array_equal(b.values[:, 0], [10, 11, 12])
    # one point each: judged against the previous point, not the latest time so far
    assert ds.timestamps_backwards == 2
    assert ds.first_backwards is not None and ds.first_backwards.startswith(
        f"{p}: line 4: timestamp '2026-03-29T02:00:00' of key 'a' goes backwards")


def test_drop_leaves_out_only_the_point_that_goes_back(tmp_path: Path) -> None:
    p = _write(tmp_path, "dst.csv", STEP_BACK)
    ds = read_dataset([p], "long", "drop")
    a, b = ds.series
    np.testing.assert_array_equal(a.values[:, 0], [1, 2, 4, 5])
    np.testing.assert_array_equal(a.lines, [2, 3, 5, 7])
    assert a.timestamps == ["2026-03-29T02:50:00", "2026-03-29T02:55:00",
                            "2026-03-29T02:05:00", "2026-03-29T02:10:00"]
    assert len(a.ts) == 4
    # the far-future point costs the point after it, not the key's later ones
    np.testing.assert_array_equal(b.values[:, 0], [10, 12])
    assert ds.timestamps_backwards == 2


def test_dlq_refuses_the_file_naming_the_first_line_that_goes_back(tmp_path: Path) -> None:
    p = _write(tmp_path, "dst.csv", STEP_BACK)
    with pytest.raises(InputError, match=r"line 4: timestamp '2026-03-29T02:00:00' of key 'a' "
                                         r"goes backwards \(previous '2026-03-29T02:55:00'\); "
                                         r"sort the file.*--timestamp-policy") as info:
        read_dataset([p], "long", "dlq")
    assert str(info.value).startswith(str(p)) and "\n" not in str(info.value)
    with pytest.raises(InputError, match="unknown timestamp policy"):
        read_dataset([p], "long", "sort")


def test_equal_timestamps_do_not_go_back(tmp_path: Path) -> None:
    p = _write(tmp_path, "eq.csv", "timestamp,value,label\n0,1,0\n0,2,1\n60,3,0\n")
    ds = read_dataset([p], "nab", "dlq")
    assert ds.timestamps_backwards == 0 and len(ds.series[0]) == 3
    # and labels follow the points that drop keeps
    q = _write(tmp_path, "lab.csv", "timestamp,value,label\n60,1,0\n0,2,1\n120,3,1\n")
    (s,) = read_dataset([q], "nab", "drop").series
    np.testing.assert_array_equal(s.labels, [0, 1])
    np.testing.assert_array_equal(s.values[:, 0], [1, 3])


def test_missing_empty_and_directory_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_dataset([tmp_path / "nope.csv"], "long")
    empty = _write(tmp_path, "empty.csv", "")
    with pytest.raises(InputError, match="empty"):
        read_dataset([empty], "wide")
    blank = _write(tmp_path, "blank.csv", "\n\n  \n")
    with pytest.raises(InputError, match="empty"):
        read_dataset([blank], "long")
    with pytest.raises(InputError, match="directory"):
        read_dataset([tmp_path], "long")
    with pytest.raises(InputError, match="unknown format"):
        read_dataset([empty], "parquet")
    with pytest.raises(InputError, match="no input file"):
        read_dataset([], "long")


def test_binary_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "bin.csv"
    p.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(InputError, match="UTF-8"):
        read_dataset([p], "long")


def test_duplicate_keys_across_files_and_feature_mismatch(tmp_path: Path) -> None:
    a = _write(tmp_path, "a.csv", "timestamp,key,value\n0,k,1\n")
    b = _write(tmp_path, "b.csv", "timestamp,key,value\n0,k,2\n")
    with pytest.raises(InputError, match="'k' also appears in"):
        read_dataset([a, b], "long")
    c = _write(tmp_path, "c.csv", "timestamp,key,value,value_2\n0,j,1,2\n")
    with pytest.raises(InputError, match="has 2 feature column"):
        read_dataset([a, c], "long")


# -- scaling ---------------------------------------------------------------------------


def test_robust_scaler_ignores_a_spike() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, size=(4000, 1))
    x[100] = 1e6
    s = fit_scaler(x, "robust")
    assert s.center[0] == pytest.approx(5.0, abs=0.15)
    assert s.scale[0] == pytest.approx(2.0, rel=0.1)  # IQR / 1.349 estimates sigma
    z = s.transform(x)
    assert z.dtype == np.float32 and abs(float(np.median(z))) < 0.05


def test_minmax_scaler_maps_to_unit_range() -> None:
    x = np.array([[1.0, -5.0], [3.0, 5.0], [2.0, 0.0]])
    s = fit_scaler(x, "minmax")
    z = s.transform(x)
    np.testing.assert_allclose(z.min(axis=0), [0, 0])
    np.testing.assert_allclose(z.max(axis=0), [1, 1])


def test_constant_series_falls_back_to_std_then_given_scaler_then_one() -> None:
    # IQR is zero but the series still moves: the std is used
    x = np.zeros((100, 1))
    x[:3] = 10.0
    assert fit_scaler(x, "robust").scale[0] == pytest.approx(x.std())
    const = np.full((50, 2), 7.0)
    s = fit_scaler(const, "robust")
    np.testing.assert_array_equal(s.scale, [1.0, 1.0])
    np.testing.assert_array_equal(s.transform(const), np.zeros((50, 2)))
    g = fit_scaler(np.array([[0.0, 0.0], [4.0, 8.0]]), "minmax")
    s = fit_scaler(const, "minmax", fallback=g)
    np.testing.assert_array_equal(s.scale, g.scale)
    assert np.isfinite(s.transform(const)).all()


def test_unknown_scaler_method() -> None:
    with pytest.raises(ValueError, match="unknown scaler"):
        fit_scaler(np.ones((3, 1)), "zscore")


def test_scaler_set_per_key_with_global_fallback_round_trips() -> None:
    g = fit_scaler(np.arange(10.0).reshape(-1, 1))
    a = fit_scaler(np.arange(100.0, 200.0).reshape(-1, 1))
    ss = ScalerSet("robust", g, {"a": a})
    assert ss.for_key("a") is a and ss.for_key("other") is g
    back = ScalerSet.from_dict(ss.to_dict())
    np.testing.assert_allclose(back.for_key("a").center, a.center)
    np.testing.assert_allclose(back.for_key("zz").scale, g.scale)
