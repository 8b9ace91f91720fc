"""Operator feedback end to end (#27): ``stream-detector feedback`` writes the topic,
``run --feedback-topic`` reads it, against the real embedded broker.

Two keys carry the same series: a bump that pages, the same bump again, a much larger
excursion. ``ctl`` gets no feedback (the control: the recurrence pages there), ``fb``'s
first incident is marked false_positive.
"""

from __future__ import annotations

import numpy as np
import pytest
from kafka_helpers import consume_all, produce_json
from service_helpers import (
    T0,
    WINDOW,
    DetectorProcess,
    cli,
    events_of,
    stream,
    wait_until,
    wave,
)

from stream_detector.datasets import parse_timestamp

pytestmark = pytest.mark.slow

N = 900
BUMP, AGAIN, LARGE, AFTER_RESTART = 160, 320, 480, 760  # where the excursions start
CUT, CUT2 = 260, 700  # the stream is sent in three parts


def _series() -> np.ndarray:
    v = wave(N, seed=7)
    for pos in (BUMP, AGAIN, AFTER_RESTART):
        v[pos:pos + 4] += 2.0  # an error about 2x the threshold: within the bound
    v[LARGE:LARGE + 4] += 6.0  # beyond 3x the threshold: always pages
    return v


def _part(v: np.ndarray, start: int, stop: int) -> list[tuple[str, dict]]:
    return stream({k: v[start:stop] for k in ("ctl", "fb")}, t0=T0 + 60 * start)


def _openings(events: list[dict], key: str) -> list[int]:
    """The point index at which each of ``key``'s incidents opened."""
    return [round((parse_timestamp(e["window_end"]) - T0) / 60) for e in events
            if e["key"] == key and e["type"] == "opened"]


def _at(opened: list[int], pos: int) -> bool:
    return any(pos <= i < pos + WINDOW for i in opened)


def test_a_pattern_marked_false_does_not_page_again_but_a_larger_one_does(
        broker_bootstrap, topic_factory, group_id, model, tmp_path):
    src, out, fbt = topic_factory(2), topic_factory(1), topic_factory(1)
    v = _series()
    extra = ["--feedback-topic", fbt]
    det = DetectorProcess(broker_bootstrap, src, out, group_id, model, extra,
                          log=tmp_path / "det.log")
    try:
        det.wait_ready()
        produce_json(broker_bootstrap, src, _part(v, 0, CUT))
        first = [e["value"] for e in events_of(broker_bootstrap, out, expected=4)]
        assert _openings(first, "fb") == _openings(first, "ctl"), "the same series"
        assert len(_openings(first, "fb")) == 1 and _at(_openings(first, "fb"), BUMP)
        iid = next(e["incident_id"] for e in first if e["key"] == "fb")

        done = cli("feedback", "--bootstrap-servers", broker_bootstrap, "--topic", fbt,
                   "--incident-id", iid, "--key", "fb", "--label", "false_positive",
                   "--by", "oncall")
        assert iid in done.stdout
        produce_json(broker_bootstrap, fbt, [("fb", b"not json")])  # ignored, counted
        det.wait_value('stream_detector_feedback_messages_total{result="applied"}', 1)
        det.wait_value('stream_detector_feedback_messages_total{result="malformed"}', 1)

        produce_json(broker_bootstrap, src, _part(v, CUT, CUT2))
        det.wait_value("stream_detector_windows_scored_total", 2 * (CUT2 - WINDOW + 1))
        # ctl: three incidents opened and closed; fb: two
        events = [e["value"] for e in events_of(broker_bootstrap, out, expected=6 + 4)]
        muted = det.value("stream_detector_feedback_muted_total")
    finally:
        code, _ = det.terminate()
    assert code == 0
    ctl, fb = _openings(events, "ctl"), _openings(events, "fb")
    assert len(ctl) == 3 and _at(ctl, AGAIN) and _at(ctl, LARGE), f"control: {ctl}"
    assert len(fb) == 2 and not _at(fb, AGAIN), f"the recurrence paged again: {fb}"
    assert _at(fb, LARGE), f"the larger excursion did not page: {fb}"
    assert muted >= 1

    # the message as a consumer of the topic sees it: keyed by the series key
    msgs = consume_all(broker_bootstrap, fbt, expected=2, timeout=30, idle=2)
    sent = next(m for m in msgs if isinstance(m["value"], dict))
    assert sent["key"] == "fb"
    assert {k: sent["value"][k] for k in ("incident_id", "key", "label", "by")} == {
        "incident_id": iid, "key": "fb", "label": "false_positive", "by": "oncall"}
    parse_timestamp(sent["value"]["ts"])

    # a restart reading another (empty) feedback topic: the label came back with the key's
    # changelog record, so the pattern stays muted
    empty = topic_factory(1)
    det = DetectorProcess(broker_bootstrap, src, out, group_id, model,
                          ["--feedback-topic", empty], log=tmp_path / "det2.log")
    try:
        det.wait_ready()
        produce_json(broker_bootstrap, src, _part(v, CUT2, N))
        det.wait_value("stream_detector_windows_scored_total", 2 * (N - CUT2))
        det.wait_value("stream_detector_feedback_muted_total", 1)
        wait_until(lambda: det.value('stream_detector_events_published_total{type="closed"}')
                   >= 1, 30, "ctl's incident closed")
        events = [e["value"] for e in events_of(broker_bootstrap, out, expected=10 + 2)]
    finally:
        code, _ = det.terminate()
    assert code == 0
    assert _at(_openings(events, "ctl"), AFTER_RESTART)
    assert not _at(_openings(events, "fb"), AFTER_RESTART)


def test_the_feedback_command_refuses_a_bad_incident_id_or_label(broker_bootstrap):
    base = ["feedback", "--bootstrap-servers", broker_bootstrap, "--topic", "fb-none",
            "--key", "k"]
    bad_id = cli(*base, "--incident-id", "not-an-id", "--label", "false_positive",
                 check=False)
    assert bad_id.returncode == 2
    assert bad_id.stderr.strip().splitlines()[-1].startswith(
        "stream-detector feedback: error: incident_id")
    bad_label = cli(*base, "--incident-id", "0123456789abcdef", "--label", "maybe",
                    check=False)
    assert bad_label.returncode == 2 and "--label" in bad_label.stderr


def test_a_missing_feedback_topic_is_looked_up_again_and_read_from_the_start(
        broker_bootstrap, caplog):
    import logging
    import time
    import uuid

    from stream_detector.feedback import FeedbackBook
    from stream_detector.feedback_topic import FeedbackReader, send_feedback
    from stream_detector.kafka.admin import ensure_topics

    topic = f"fb-{uuid.uuid4().hex[:12]}"
    results: list[str] = []
    book = FeedbackBook(counted=results.append)
    book.note({"type": "opened", "key": "k", "incident_id": "0123456789abcdef",
               "score": 2.0, "threshold": 1.0, "window_end": "2026-01-01T00:00:00Z"})
    reader = FeedbackReader(topic, {"bootstrap.servers": broker_bootstrap}, book,
                            results.append, retry_s=0.5)
    try:
        with caplog.at_level(logging.WARNING, "stream_detector.feedback_topic"):
            wait_until(lambda: reader.poll() == 0 and "does not exist" in caplog.text, 20,
                       "the missing topic logged")
        ensure_topics(broker_bootstrap, {topic: 2})
        for iid, key in (("0123456789abcdef", "k"), ("00000000000000aa", "other")):
            send_feedback(broker_bootstrap, topic, iid, key, "false_positive")
        produce_json(broker_bootstrap, topic, [("k", {"incident_id": 7})])

        def read_all() -> bool:
            reader.poll()
            time.sleep(0.05)
            return len(results) >= 3

        wait_until(read_all, 30, "feedback read", lambda: str(results))
        assert sorted(results) == ["applied", "malformed", "pending"]
        assert book.level("k", T0) == pytest.approx(3.0) and book.pending == 1
    finally:
        reader.close()
