"""Rules and maintenance windows (stream_detector.rules): the file format and its errors, and
what a batch of windows becomes under the rules, with a real decider."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream_detector.decision import Decision, make_decider
from stream_detector.errors import InputError
from stream_detector.rules import load_rules, read_rules
from stream_detector.rules.schedule import parse_duration
from stream_detector.threshold import Thresholds


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def _file(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "rules.yaml"
    p.write_text(text)
    return p


def _rules(tmp_path: Path, text: str, features: tuple[str, ...] = ("value",)):
    return load_rules(_file(tmp_path, text), features)


# -- the file and its errors -------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("rules: []\n", "'rules' must be a non-empty list"),
    ("- keys: '*'\n", "expected a mapping with a 'rules' list"),
    ("rules:\n  - keys: '*'\n    direction: up\n",
     "rule #1: direction must be one of spike, dip, both, got 'up'"),
    ("rules:\n  - name: db\n    direction: spike\n",
     "rule 'db' (#1): keys is required"),
    ("rules:\n  - {keys: a, direction: dip}\n  - {name: b, keys: b, min_deviation: -1}\n",
     "rule 'b' (#2): min_deviation must be a finite number >= 0, got -1"),
    ("rules:\n  - {keys: a, min_relative_deviation: lots}\n",
     "rule #1: min_relative_deviation must be a number, got 'lots'"),
    ("rules:\n  - {keys: a}\n", "rule #1: the rule mutes nothing"),
    ("rules:\n  - {keys: a, direction: dip, treshold: 3}\n",
     "rule #1: unknown field(s) treshold in the rule"),
    ("rules:\n  - {name: x, keys: a, direction: dip}\n  - {name: x, keys: b, direction: dip}\n",
     "rule 'x' (#2): the name 'x' is already used"),
    ("rules:\n  - keys: a\n    maintenance:\n      - cron: '0 25 * * *'\n        duration: 1h\n",
     "rule #1: maintenance #1: cron '0 25 * * *'"),
    ("rules:\n  - keys: a\n    maintenance:\n      - cron: '0 2 * * *'\n",
     "rule #1: maintenance #1: a cron window needs a duration"),
    ("rules:\n  - keys: a\n    maintenance:\n      - {cron: '0 2 * * *', duration: soon}\n",
     "maintenance #1: expected a duration such as 30m, 2h or 3600, got 'soon'"),
    ("rules:\n  - keys: a\n    maintenance:\n"
     "      - {cron: '0 2 * * *', duration: 1h, timezone: Mars/Olympus}\n",
     "maintenance #1: unknown timezone 'Mars/Olympus'"),
    ("rules:\n  - keys: a\n    maintenance:\n"
     "      - {start: 2026-01-02T00:00:00Z, end: 2026-01-01T00:00:00Z}\n",
     "maintenance #1: end 2026-01-01"),
    ("rules:\n  - keys: a\n    maintenance:\n      - {start: yesterday, end: 5}\n",
     "maintenance #1: expected an ISO-8601 time or epoch seconds, got 'yesterday'"),
    ("rules:\n  - keys: a\n    maintenance:\n      - {start: 1, end: 5, learn: maybe}\n",
     "maintenance #1: learn must be true or false, got 'maybe'"),
    ("rules:\n  - keys: a\n    maintenance: {start: 1, end: 5}\n",
     "rule #1: maintenance must be a list"),
    ("rules: [\n", "not valid YAML"),
])
def test_a_bad_rules_file_is_refused_naming_the_file_and_the_rule(tmp_path, text, message):
    path = _file(tmp_path, text)
    with pytest.raises(InputError) as info:
        read_rules(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_missing_rules_file_and_an_unknown_feature_are_refused(tmp_path):
    with pytest.raises(InputError, match="nope.yaml: rules file not found"):
        read_rules(tmp_path / "nope.yaml")
    text = "rules:\n  - {name: m, keys: '*', min_deviation: {memory: 5}}\n"
    with pytest.raises(InputError, match=r"rule 'm' \(#1\): min_deviation names feature "
                                         r"'memory'; the model has 'cpu', 'mem'"):
        _rules(tmp_path, text, ("cpu", "mem"))


def test_durations():
    assert parse_duration("90s") == 90
    assert parse_duration("30m") == 1800
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1d") == 86400
    assert parse_duration(600) == 600
    for bad in ("", "h", "-1h", 0, "1w", True):
        with pytest.raises(ValueError):
            parse_duration(bad)


# -- maintenance in event time -------------------------------------------------------------
def test_cron_maintenance_covers_its_duration_after_every_fire_in_event_time(tmp_path):
    rules = _rules(tmp_path, "rules:\n  - keys: 'db-*'\n    maintenance:\n"
                             "      - {cron: '0 2 * * *', duration: 2h}\n")
    at = ["2026-01-01T01:59:59", "2026-01-01T02:00:00", "2026-01-01T03:59:59",
          "2026-01-01T04:00:00", "2026-03-15T02:30:00", "2025-12-31T02:00:01",
          "2026-03-15T12:00:00"]
    ts = np.array([_epoch(t) for t in at])
    got, _, unlearned = rules.maintenance(rules.matches(["db-1"] * len(ts)), ts)
    assert (got >= 0).tolist() == [False, True, True, False, True, True, False]
    assert not unlearned.any()  # learn defaults to true
    # a key no rule matches is never in maintenance; asked in any order, the same answers
    other, _, _ = rules.maintenance(rules.matches(["web-1"] * len(ts)), ts)
    assert (other < 0).all()
    rev, _, _ = rules.maintenance(rules.matches(["db-1"] * len(ts)), ts[::-1].copy())
    assert (rev[::-1] >= 0).tolist() == (got >= 0).tolist()


def test_cron_maintenance_follows_its_timezone_across_daylight_saving(tmp_path):
    rules = _rules(tmp_path, "rules:\n  - keys: '*'\n    maintenance:\n"
                             "      - {cron: '0 3 * * *', duration: 30m, "
                             "timezone: Europe/Berlin}\n")
    # 03:00 in Berlin is 02:00 UTC in winter, 01:00 UTC in summer (from 2026-03-29)
    ts = np.array([_epoch(t) for t in ("2026-01-10T02:10:00", "2026-01-10T01:10:00",
                                       "2026-07-10T01:10:00", "2026-07-10T02:10:00")])
    got, _, _ = rules.maintenance(rules.matches(["k"] * 4), ts)
    assert (got >= 0).tolist() == [True, False, True, False]


def test_absolute_spans_and_learn_false(tmp_path):
    rules = _rules(tmp_path, "rules:\n"
                             "  - name: upgrade\n    keys: [a, 'b*']\n    maintenance:\n"
                             "      - {start: 2026-01-01T10:00:00Z, end: '2026-01-01T11:00:00Z',"
                             " learn: false}\n"
                             "      - {start: 1767290400, end: 1767294000}\n")
    ts = np.array([_epoch("2026-01-01T09:59:59"), _epoch("2026-01-01T10:00:00"),
                   _epoch("2026-01-01T10:59:59"), _epoch("2026-01-01T11:00:00"),
                   1767290400.0, 1767290400.0])
    keys = ["a", "a", "bee", "a", "a", "c"]
    rule, _, unlearned = rules.maintenance(rules.matches(keys), ts)
    assert (rule >= 0).tolist() == [False, True, True, False, True, False]
    assert unlearned.tolist() == [False, True, True, False, False, False]


# -- direction and deviation --------------------------------------------------------------
def _static(threshold: float = 1.0):
    return make_decider(Thresholds(threshold), {"method": "static"})


def _apply(rules, keys, scores, actual, expected, ts=None, decider=None):
    decider = decider or _static()
    scores = np.asarray(scores, np.float64)

    def decide(idx):
        if idx is None:
            return decider.decide(keys, scores)
        return decider.decide([keys[i] for i in idx.tolist()], scores[idx])

    ts = np.zeros(len(keys)) if ts is None else np.asarray(ts, np.float64)
    return rules.apply(decide, keys, ts, lambda k: 1.0,
                       np.asarray(actual, np.float64).reshape(len(keys), -1),
                       np.asarray(expected, np.float64).reshape(len(keys), -1))


def test_direction_and_minimum_deviations_mute_alarms_and_say_why(tmp_path):
    rules = _rules(tmp_path, "rules:\n"
                             "  - {name: up, keys: 'cpu.*', direction: spike, min_deviation: 5}\n"
                             "  - {name: rel, keys: 'disk.*', min_relative_deviation: 0.5}\n")
    keys = ["cpu.a", "cpu.b", "cpu.c", "cpu.d", "disk.a", "disk.b", "disk.c", "mem.a"]
    scores = [2, 2, 2, 0.5, 2, 2, 2, 2]  # all alarms but cpu.d (static threshold 1)
    actual = [60, 40, 54, 10, 130, 260, 20, 1]
    expected = [50, 50, 50, 50, 100, 100, 100, 100]
    d, muting = _apply(rules, keys, scores, actual, expected)
    # cpu.a spikes by 10 (kept); cpu.b dips (direction); cpu.c spikes by 4 < 5 (deviation);
    # disk.a +30% < 50% (deviation); disk.b +160% and disk.c -80% kept (both directions);
    # mem.a matches no rule
    assert d.is_anomaly.tolist() == [True, False, False, False, False, True, True, True]
    names = {0: "", 1: "maintenance", 2: "direction", 3: "deviation"}
    assert [names[c] for c in muting.cause.tolist()] == [
        "", "direction", "deviation", "", "deviation", "", "", ""]
    assert [rules.names[r] if r >= 0 else "" for r in muting.rule.tolist()] == [
        "", "up", "up", "", "rel", "", "", ""]
    # a muted alarm is no alarm, but its excursion stands (an open incident goes on)
    assert d.excursion.tolist() == [True, True, True, False, True, True, True, True]
    assert d.reason[1] == 0 and d.reason[0] != 0
    muted, unlearned = rules.tally(muting)
    assert muted == {("direction", "up"): 1, ("deviation", "up"): 1, ("deviation", "rel"): 1}
    assert unlearned == {}


def test_every_matching_rule_applies_and_features_are_judged_by_name(tmp_path):
    rules = _rules(tmp_path, "rules:\n"
                             "  - {name: all, keys: '*', direction: spike}\n"
                             "  - {name: mem, keys: 'host-*', min_deviation: {mem: 100},"
                             " features: [mem]}\n", ("cpu", "mem"))
    keys = ["host-1", "host-2", "host-3", "other"]
    actual = [[90, 1000], [90, 1150], [10, 1500], [10, 1500]]
    expected = [[50, 1000], [50, 1000], [50, 1000], [50, 1000]]
    d, muting = _apply(rules, keys, [2, 2, 2, 2], actual, expected)
    # host-1: cpu spikes but mem (the only feature rule mem judges) does not move: muted by
    # mem; host-2: mem +150 kept by both; host-3: mem spikes, cpu dips: `all` lets it (one
    # feature spikes), mem lets it; other: only `all`, which mem's spike satisfies
    assert d.is_anomaly.tolist() == [False, True, True, True]
    assert [rules.names[r] for r in muting.rule.tolist() if r >= 0] == ["mem"]


def test_maintenance_with_learn_true_mutes_alarms_but_the_decider_sees_them(tmp_path):
    rules = _rules(tmp_path, "rules:\n  - {name: m, keys: '*', direction: dip,"
                             " maintenance: [{start: 100, end: 200}]}\n")
    seen = []
    base = _static()

    class Recording:
        def decide(self, keys, scores, newest=None):
            seen.append(list(keys))
            return base.decide(keys, scores)

    d, muting = _apply(rules, ["a", "b", "c"], [2, 0.1, 2], [1, 1, 1], [5, 5, 5],
                       ts=[150, 150, 250], decider=Recording())
    assert seen == [["a", "b", "c"]]
    assert d.is_anomaly.tolist() == [False, False, True]
    assert d.excursion.tolist() == [False, False, True]  # maintenance: a normal window
    assert muting.cause.tolist() == [1, 0, 0] and not muting.unlearned.any()
    assert rules.tally(muting) == ({("maintenance", "m"): 1}, {})


def test_learn_false_keeps_windows_from_the_decider_and_its_state_untouched(tmp_path):
    """Windows in a ``learn: false`` maintenance window are never decided: the adaptive
    decider's exported state after a stream with such a window is byte-identical to the
    state after the same stream without those windows."""
    rules = _rules(tmp_path, "rules:\n  - name: deploy\n    keys: 'k*'\n    maintenance:\n"
                             "      - {cron: '30 * * * *', duration: 10m, learn: false}\n")
    rng = np.random.default_rng(0)
    n = 400
    ts = 1_767_225_600 + 60.0 * np.arange(n)  # one point a minute
    keys = ["k1", "k2"]
    scores = {k: rng.gamma(2.0, 0.2, n) for k in keys}
    for k in keys:
        scores[k][(ts % 3600 >= 1800) & (ts % 3600 < 2400)] += 50.0  # the deploy's noise
    with_rules = make_decider(Thresholds(1.0), {"method": "adaptive"})
    plain = make_decider(Thresholds(1.0), {"method": "adaptive"})
    muted_total, unlearned_total = 0, {}
    for start in range(0, n, 37):  # batches of both keys, interleaved in time
        stop = min(start + 37, n)
        bk = [k for _ in range(start, stop) for k in keys]
        bs = np.array([scores[k][i] for i in range(start, stop) for k in keys])
        bt = np.array([ts[i] for i in range(start, stop) for _ in keys])
        newest = np.zeros((len(bk), 1, 1), np.float32)

        def decide(idx, bk=bk, bs=bs, newest=newest):
            if idx is None:
                return with_rules.decide(bk, bs, newest)
            return with_rules.decide([bk[i] for i in idx.tolist()], bs[idx], newest[idx])

        d, muting = rules.apply(decide, bk, bt, lambda k: 1.0)
        out = ~((bt % 3600 >= 1800) & (bt % 3600 < 2400))
        assert muting.unlearned.tolist() == (~out).tolist()
        assert not d.is_anomaly[~out].any() and not d.excursion[~out].any()
        assert (d.threshold[~out] == 1.0).all() and (d.anomaly_score[~out] == 0).all()
        kept = np.flatnonzero(out)
        want = plain.decide([bk[i] for i in kept.tolist()], bs[kept], newest[kept])
        np.testing.assert_array_equal(d.anomaly_score[kept], want.anomaly_score)
        np.testing.assert_array_equal(d.is_anomaly[kept], want.is_anomaly)
        muted, unlearned = rules.tally(muting)
        muted_total += sum(muted.values())
        for name, c in unlearned.items():
            unlearned_total[name] = unlearned_total.get(name, 0) + c
    for k in keys:
        assert with_rules.export(k) == plain.export(k)
    assert muted_total == 0
    # 10 of every 60 minutes, for both keys
    inside = (ts % 3600 >= 1800) & (ts % 3600 < 2400)
    assert 50 < inside.sum() < 100
    assert unlearned_total == {"deploy": 2 * int(inside.sum())}


def test_an_empty_batch_and_a_batch_all_in_maintenance(tmp_path):
    rules = _rules(tmp_path, "rules:\n  - {keys: '*', maintenance: [{start: 0, end: 10,"
                             " learn: false}]}\n")
    calls = []

    def decide(idx):
        calls.append(idx)
        return Decision.empty(0 if idx is None else len(idx))

    d, muting = rules.apply(decide, ["a", "b"], np.array([1.0, 2.0]), lambda k: 3.0)
    assert calls == [] and d.threshold.tolist() == [3.0, 3.0] and muting.unlearned.all()
    d, muting = rules.apply(decide, [], np.zeros(0), lambda k: 3.0)
    assert len(d.is_anomaly) == 0 and calls == [None]


# -- score applies a rules file -------------------------------------------------------------
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z, a point a minute


def _score_twice(model: Path, data: Path, rules: Path, tmp_path: Path) -> tuple[
        Any, dict[str, list[dict[str, str]]], dict[str, list[dict[str, str]]]]:
    """``score`` without and with ``rules``: the ruled run's process, both CSVs by key."""
    from stream_detector.testing import cli

    cli("score", "--model", str(model), "--input", str(data), "--output",
        str(tmp_path / "plain.csv"))
    ruled = cli("score", "--model", str(model), "--input", str(data), "--output",
                str(tmp_path / "ruled.csv"), "--rules", str(rules))
    return ruled, _scores(tmp_path / "plain.csv"), _scores(tmp_path / "ruled.csv")


def _scores(path: Path) -> dict[str, list[dict[str, str]]]:
    import csv

    out: dict[str, list[dict[str, str]]] = {}
    with path.open() as fh:
        for row in csv.DictReader(fh):
            out.setdefault(row["key"], []).append(row)
    return out


def test_score_mutes_maintenance_windows_and_keeps_learn_false_ones_undecided(model, tmp_path):
    from stream_detector.testing import wave, write_long

    n = 400
    series = {"db-1": wave(n, seed=1), "web-1": wave(n, seed=2)}
    for key, at in (("db-1", 100), ("db-1", 185), ("web-1", 100), ("web-1", 295)):
        series[key][at] += 12.0
    data = write_long(tmp_path / "data.csv", series, start=T0)
    rules = _file(tmp_path, "rules:\n"
                            "  - name: nightly\n    keys: 'db-*'\n    maintenance:\n"
                            "      - {cron: '0 3 * * *', duration: 1h}\n"
                            "  - name: upgrade\n    keys: ['web-*']\n    maintenance:\n"
                            "      - {start: '2026-01-01T04:50:00Z', end: '2026-01-01T05:50:00Z',"
                            " learn: false}\n")
    ruled, before, after = _score_twice(model, data, rules, tmp_path)
    assert "muted" not in before["db-1"][0] and "muted" in after["db-1"][0]
    nightly = range(180, 240)  # 03:00-04:00, each row ends a window of a point a minute
    upgrade = range(290, 350)
    db_muted = [i for i in nightly if before["db-1"][i]["is_anomaly"] == "1"]
    assert len(db_muted) >= 10  # the spike at 185 alarms without the rules ...
    for i in nightly:  # ... and never with them
        assert after["db-1"][i]["is_anomaly"] == "0"
        assert after["db-1"][i]["muted"] == ("maintenance" if i in db_muted else "")
        assert after["db-1"][i]["anomaly_score"] == before["db-1"][i]["anomaly_score"]
    for i in upgrade:  # never decided: no alarm, anomaly_score 0
        row = after["web-1"][i]
        assert (row["is_anomaly"], row["anomaly_score"], row["muted"]) == ("0", "0", "maintenance")
    assert any(before["web-1"][i]["is_anomaly"] == "1" for i in upgrade)
    for key in series:  # outside the windows nothing changed, the spike at 100 included
        inside = set(nightly) if key == "db-1" else set(upgrade)
        for i, (b, a) in enumerate(zip(before[key], after[key])):
            if i not in inside:
                assert {k: a[k] for k in b} == b, (key, i)
                assert a["muted"] == ""
        assert before[key][100]["is_anomaly"] == after[key][100]["is_anomaly"] == "1"
    assert (f"rules muted {len(db_muted)} alarm(s) (maintenance {len(db_muted)}, direction 0, "
            f"deviation 0); {len(upgrade)} window(s) in learn: false maintenance not decided"
            ) in ruled.stdout


def test_score_refuses_a_bad_rules_file_with_one_line_naming_it(model, tmp_path):
    from stream_detector.testing import cli, wave, write_long

    data = write_long(tmp_path / "data.csv", {"a": wave(64, seed=0)}, start=T0)
    bad = _file(tmp_path, "rules:\n  - name: db\n    keys: 'db-*'\n    direction: upward\n")
    for rules, needle in ((bad, f"{bad}: rule 'db' (#1): direction must be one of"),
                          (tmp_path / "missing.yaml", "missing.yaml: rules file not found")):
        proc = cli("score", "--model", str(model), "--input", str(data), "--output",
                   str(tmp_path / "out.csv"), "--rules", str(rules), check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert line.startswith("stream-detector score: error: ") and needle in line, line
    # bound to the model's features: a feature it lacks, also exit 2
    other = _file(tmp_path, "rules:\n  - {keys: '*', min_deviation: {cpu: 1}}\n")
    proc = cli("score", "--model", str(model), "--input", str(data), "--output",
               str(tmp_path / "out.csv"), "--rules", str(other), check=False)
    assert proc.returncode == 2 and "names feature 'cpu'; the model has 'value'" in proc.stderr


def test_run_takes_rules_from_flag_env_or_config_file_and_refuses_a_bad_one_at_start(
        tmp_path, capsys):
    from stream_detector.cli import build_parser, main
    from stream_detector.config import COMMAND_OPTS, resolve
    from stream_detector.service import ServiceConfig

    good = _file(tmp_path, "rules:\n  - {name: up, keys: '*', direction: spike}\n")
    run = ["run", "--bootstrap-servers", "127.0.0.1:1", "--input-topic", "in",
           "--output-topic", "out", "--model", str(tmp_path / "no-model")]
    conf = tmp_path / "sd.yaml"
    conf.write_text(f"run:\n  rules: {good}\n")

    def config(argv, env):
        args = build_parser().parse_args(argv)
        return ServiceConfig.from_options(resolve("run", COMMAND_OPTS["run"], args, environ=env))

    for argv, env in ((run + ["--rules", str(good)], {}),
                      (run, {"STREAM_DETECTOR_RULES": str(good)}),
                      (run + ["--config", str(conf)], {})):
        cfg = config(argv, env)
        assert cfg.rules_file == str(good) and [r.name for r in cfg.rules] == ["up"]
        assert cfg.rules[0].direction == "spike"
    assert config(run, {}).rules == ()
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {name: up, keys: '*', direction: spike, min_deviation: -2}\n")
    # refused before the model is looked for (there is none) or a broker is reached
    assert main(run + ["--rules", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"stream-detector run: error: {bad}: rule 'up' (#1): min_deviation must be "
                   "a finite number >= 0, got -2")


def test_score_keeps_only_spikes_that_beat_the_minimum_deviation(model, tmp_path):
    """A spike-only rule with a minimum of 3: every alarm ``score`` keeps is a point at
    least 3 above its expected value, every alarm it mutes is not (direction: at or below
    expected; deviation: above it by less than 3), judged from the CSV's own columns."""
    from stream_detector.testing import wave, write_long

    n = 300
    cpu = wave(n, seed=4)
    cpu[120] += 12.0  # a spike: alarms
    cpu[220] -= 12.0  # a dip: muted by direction
    data = write_long(tmp_path / "data.csv", {"cpu-1": cpu, "mem-1": wave(n, seed=5)},
                      start=T0)
    rules = _file(tmp_path, "rules:\n  - {name: cpu, keys: 'cpu-*', direction: spike,"
                            " min_deviation: 3}\n")
    ruled, before, after = _score_twice(model, data, rules, tmp_path)
    assert before["mem-1"] == [{k: r[k] for k in before["mem-1"][0]} for r in after["mem-1"]]
    counts = {"direction": 0, "deviation": 0}
    for b, a in zip(before["cpu-1"], after["cpu-1"]):
        if b["is_anomaly"] == "0":
            assert a["is_anomaly"] == "0" and a["muted"] == ""
            continue
        if a["muted"]:
            counts[a["muted"]] += 1
        dev = float(a["value"]) - float(a["expected"])
        if abs(dev - 3) < 1e-3 or abs(dev) < 1e-3:
            continue  # at a boundary the CSV's 6 digits cannot tell
        if a["is_anomaly"] == "1":
            assert dev >= 3 and a["muted"] == "", a
        else:
            assert a["muted"] == ("direction" if dev < 0 else "deviation"), a
            assert dev < 3, a
    assert after["cpu-1"][120]["is_anomaly"] == "1"
    assert after["cpu-1"][220]["muted"] == "direction"
    assert before["cpu-1"][220]["is_anomaly"] == "1"
    assert (f"(maintenance 0, direction {counts['direction']}, deviation "
            f"{counts['deviation']})") in ruled.stdout
