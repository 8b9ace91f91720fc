"""The demo's live view: each anomaly line says why the window was flagged."""

from __future__ import annotations

from stream_detector.demo import anomaly_line


def _event(**kw):
    ev = {"key": "s-1", "window_end": "2026-01-01T00:10:00Z", "score": 0.12,
          "threshold": 0.5, "anomaly_score": 0.93, "reason": ["range"], "type": "opened"}
    return {**ev, **kw}


def test_a_range_hit_below_the_error_threshold_reads_as_a_range_hit():
    line = anomaly_line(_event())
    assert "anomaly_score 0.93 (range)" in line
    assert "error 0.120 vs threshold 0.500" in line
    assert line.startswith("  ANOMALY  s-1")


def test_several_checks_are_joined_and_none_is_a_dash():
    assert "(season+error)" in anomaly_line(_event(reason=["season", "error"]))
    assert "(-)" in anomaly_line(_event(reason=[]))


def test_the_line_says_what_came_and_what_the_model_expected():
    line = anomaly_line(_event(actual={"value": 97.5}, expected={"value": 41.25}))
    assert "value 97.5 where 41.25 was expected" in line
    assert "expected" not in anomaly_line(_event())  # --explain off: nothing to say
