"""Operator feedback's per-key state (``stream_detector.feedback``): what a
``false_positive`` mutes, how far, for how long, and that re-reading the topic changes
nothing."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from stream_detector.feedback import (
    RING,
    BadFeedback,
    Feedback,
    FeedbackBook,
    FeedbackOptions,
    message,
    parse,
)
from stream_detector.records import iso

T0 = 1_767_225_600.0
DAY = 86400.0
A, B, C = "0123456789abcdef", "fedcba9876543210", "00000000000000aa"


def opened(key: str, iid: str, score: float, threshold: float = 1.0, t: float = T0) -> dict:
    return {"type": "opened", "key": key, "incident_id": iid, "score": score,
            "threshold": threshold, "window_end": iso(t)}


def closed(key: str, iid: str, peak: float) -> dict:
    return {"type": "closed", "key": key, "incident_id": iid, "peak_score": peak}


class Book:
    """A book with its callbacks recorded."""

    def __init__(self, **opts: float) -> None:
        self.changed: list[str] = []
        self.results: list[str] = []
        self.book = FeedbackBook(FeedbackOptions(**opts), self.changed.append,
                                 self.results.append)


def run(book: FeedbackBook, key: str, scores: list[float], flags: list[bool],
        excursion: list[bool] | None = None, t: float = T0, open_: bool = False):
    n = len(scores)
    exc = np.array(excursion if excursion is not None else flags)
    return book.mute([key] * n, np.array(scores), np.array(flags), exc,
                     lambda i: t + 60.0 * i, lambda k: open_)


def test_a_false_positive_mutes_alarms_below_its_level_and_not_above():
    b = Book()
    b.book.note(opened("k", A, 2.0, threshold=2.0))
    b.book.note(closed("k", A, 2.4))  # the peak came later in the incident
    assert b.book.apply(Feedback(A, "k", "false_positive")) == "applied"
    assert b.changed == ["k"]  # its changelog record must be written again
    assert b.book.level("k", T0) == pytest.approx(2.4 * 1.5)
    flags, exc, muted = run(b.book, "k", [2.5, 3.5, 0.5], [True, True, False])
    assert muted == 2 and not flags.any() and not exc.any()
    flags, _, muted = run(b.book, "k", [3.7], [True])
    assert muted == 0 and flags.tolist() == [True]
    # another key is untouched
    other = b.book.mute(["j"], np.array([2.5]), np.array([True]), np.array([True]),
                        lambda i: T0, lambda k: False)
    assert other[0].tolist() == [True] and other[2] == 0


def test_the_level_is_bounded_by_a_multiple_of_the_threshold():
    b = Book(bound=3.0)
    b.book.note(opened("k", A, 10.0, threshold=1.0))
    b.book.apply(Feedback(A, "k", "false_positive"))
    assert b.book.level("k", T0) == pytest.approx(3.0)  # not 15
    _, _, muted = run(b.book, "k", [2.9, 3.0, 9.0], [True, False, True])
    assert muted == 1  # 3.0 and above always page


def test_the_level_halves_every_half_life_of_event_time():
    b = Book(half_life_s=DAY)
    b.book.note(opened("k", A, 2.0, t=T0))
    b.book.apply(Feedback(A, "k", "false_positive"))
    assert b.book.level("k", T0 + DAY) == pytest.approx(1.5)
    assert b.book.level("k", T0 + 3 * DAY) == pytest.approx(3.0 / 8)
    assert b.book.level("k", T0 - DAY) == pytest.approx(3.0), "never above its start"
    # the same alarm: muted a day on, paging three days on
    assert run(b.book, "k", [1.4], [True], t=T0 + DAY)[2] == 1
    assert run(b.book, "k", [1.4], [True], t=T0 + 3 * DAY)[2] == 0


def test_a_true_positive_takes_it_back_and_the_latest_label_wins():
    b = Book()
    b.book.note(opened("k", A, 2.0))
    b.book.apply(Feedback(A, "k", "false_positive"))
    assert b.book.apply(Feedback(A, "k", "true_positive")) == "applied"
    assert b.book.level("k", T0) == 0.0
    assert run(b.book, "k", [2.5], [True])[2] == 0
    b.book.apply(Feedback(A, "k", "false_positive"))
    assert b.book.level("k", T0) == pytest.approx(3.0)


def test_the_same_feedback_twice_is_a_no_op():
    b = Book()
    b.book.note(opened("k", A, 2.0))
    b.book.note(opened("k", B, 1.2, t=T0 + 600))
    msgs = [Feedback(A, "k", "false_positive"), Feedback(B, "k", "true_positive")]
    for fb in msgs:
        b.book.apply(fb)
    state = b.book.export("k")
    changed = list(b.changed)
    for fb in msgs:  # a replica re-reading the topic from the start
        assert b.book.apply(fb) == "duplicate"
    assert b.book.export("k") == state and b.changed == changed
    assert b.results == ["applied", "applied", "duplicate", "duplicate"]
    # an incident seen again (its input redelivered after a crash) keeps its label
    b.book.note(opened("k", A, 2.0))
    assert b.book.export("k") == state


def test_an_excursion_that_outgrows_the_level_still_pages_once():
    b = Book()
    b.book.note(opened("k", A, 2.0))
    b.book.apply(Feedback(A, "k", "false_positive"))
    # a method that suppresses repeated alarms: the onset alarms, the rest is excursion
    scores = [1.5, 2.5, 4.0, 5.0, 4.5, 0.2]
    flags = [True, False, False, False, False, False]
    exc = [True, True, True, True, True, False]
    f, e, muted = run(b.book, "k", scores, flags, exc)
    assert muted == 1
    assert f.tolist() == [False, False, True, False, False, False]  # 4.0 >= 3.0: pages
    assert e.tolist() == [False, False, True, True, True, False]
    # across batches too: the onset in one, the growth in the next
    f1, _, _ = run(b.book, "k", [1.5, 2.0], [True, False], [True, True])
    f2, _, _ = run(b.book, "k", [3.5, 3.6], [False, False], [True, True])
    assert not f1.any() and f2.tolist() == [True, False]
    # an excursion that ended (a normal window) is not promoted by the next one
    run(b.book, "k", [1.5, 0.1], [True, False], [True, False])
    f3, _, _ = run(b.book, "k", [3.5], [False], [True])
    assert not f3.any()


def test_a_key_with_an_open_incident_is_never_muted():
    b = Book()
    b.book.note(opened("k", A, 2.0))
    b.book.apply(Feedback(A, "k", "false_positive"))
    f, e, muted = run(b.book, "k", [2.0, 2.5], [True, True], open_=True)
    assert muted == 0 and f.all() and e.all()


def test_feedback_for_an_incident_not_known_here_waits_for_it():
    b = Book()
    # another replica's key: held until the key's state arrives here
    assert b.book.apply(Feedback(A, "k", "false_positive")) == "pending"
    assert b.book.pending == 1 and b.book.level("k", T0) == 0.0
    other = FeedbackBook()
    other.note(opened("k", A, 2.0))
    b.book.restore("k", other.export("k"))  # its changelog record restored here
    assert b.book.pending == 0 and b.book.level("k", T0) == pytest.approx(3.0)
    assert b.results == ["pending", "applied"] and b.changed == ["k"]
    # an incident this replica has not seen yet: applied once it opens here
    b.book.apply(Feedback(B, "j", "false_positive"))
    b.book.note(opened("j", B, 1.5))
    assert b.book.level("j", T0) == pytest.approx(2.25)


def test_pending_feedback_is_bounded_and_the_oldest_expires():
    b = Book(max_pending=2)
    for i in range(3):
        b.book.apply(Feedback(f"{i:016x}", "k", "false_positive"))
    assert b.book.pending == 2 and b.results.count("expired") == 1
    b.book.note(opened("k", f"{0:016x}", 2.0))  # expired: never applied
    assert b.book.level("k", T0) == 0.0
    b.book.note(opened("k", f"{2:016x}", 2.0))
    assert b.book.level("k", T0) == pytest.approx(3.0)


def test_the_ring_keeps_the_most_recent_incidents():
    b = Book()
    for i in range(RING + 1):
        b.book.note(opened("k", f"{i:016x}", 2.0, t=T0 + i))
    assert b.book.apply(Feedback(f"{0:016x}", "k", "false_positive")) == "pending"
    assert b.book.apply(Feedback(f"{RING:016x}", "k", "false_positive")) == "applied"


def test_a_forgotten_key_mutes_nothing_and_its_state_restores():
    b = Book()
    b.book.note(opened("k", A, 2.0))
    b.book.apply(Feedback(A, "k", "false_positive"))
    raw = b.book.export("k")
    b.book.forget("k")
    assert b.book.export("k") is None and run(b.book, "k", [2.0], [True])[2] == 0
    b.book.restore("k", raw)
    assert run(b.book, "k", [2.0], [True])[2] == 1
    b.book.restore("k", None)  # restored without feedback state: none
    assert b.book.level("k", T0) == 0.0


@pytest.mark.parametrize("raw", [b"", b"\x02\x01", b"\x01\x00", b"\x01\x01" + b"\0" * 5,
                                 b"\x01\x09" + b"\0" * 9 * 29])
def test_damaged_feedback_state_is_a_value_error(raw):
    with pytest.raises(ValueError):
        FeedbackBook().restore("k", raw or b"\x01")


def test_messages_parse_and_bad_ones_say_why():
    raw = message(A.upper(), "host-1.cpu", "false_positive", by="ops", ts="2026-01-01T00:00:00Z")
    assert orjson.loads(raw)["by"] == "ops"
    assert parse(raw) == Feedback(A, "host-1.cpu", "false_positive")
    keyless = orjson.dumps({"incident_id": A, "label": "true_positive"})
    assert parse(keyless, b"k").key == "k"  # the Kafka key, as for input
    bad = {
        None: "tombstone", b"{": "not JSON", b"[1]": "JSON object",
        orjson.dumps({"incident_id": "xyz", "key": "k", "label": "true_positive"}): "incident_id",
        orjson.dumps({"incident_id": A, "key": "k", "label": "maybe"}): "label",
        orjson.dumps({"incident_id": A, "key": 7, "label": "true_positive"}): "key",
        keyless: "key",
    }
    for value, why in bad.items():
        with pytest.raises(BadFeedback, match=why):
            parse(value)
    with pytest.raises(BadFeedback):
        message(A, "k", "wrong")


@pytest.mark.parametrize("opts", [{"margin": -0.1}, {"bound": 0.5}, {"half_life_s": 0},
                                  {"max_pending": -1}, {"bound": float("inf")}])
def test_options_out_of_bounds_are_refused(opts):
    with pytest.raises(ValueError):
        FeedbackOptions(**opts)
