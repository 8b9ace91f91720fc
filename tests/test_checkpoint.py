"""The checkpoint's order, without a broker: scored, then events confirmed, then state
written and confirmed, then commit. Fake sink, state writer and consumer record what
happens; the order is the unit under test."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import TopicPartition

from stream_detector.errors import DeliveryError
from stream_detector.service.checkpoint import Checkpoint, StateRecord, Step


class FakeSink:
    """Messages are produced (``produce``) and confirmed by the test (``confirm``)."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.produced = 0
        self.confirmed = 0
        self.failed = False

    def produce(self, n: int = 1) -> None:
        self.produced += n

    def confirm(self) -> None:
        self.confirmed = self.produced

    def mark(self) -> int:
        return self.produced

    def delivered_through(self, mark: int) -> bool:
        self.raise_if_failed()
        return self.confirmed >= mark

    def flush(self, timeout: float = 30.0, strict: bool = True) -> bool:
        self.log.append("flush")
        self.raise_if_failed()
        self.confirm()
        return True

    def raise_if_failed(self) -> None:
        if self.failed:
            raise DeliveryError("refused")


class Parts:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.sink = FakeSink(self.log)
        self.commits: list[tuple[list[TopicPartition], bool]] = []

    def write_state(self, records: Any) -> None:
        self.log.append(f"state {len(records)}")
        self.sink.produce(len(records))

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> bool:
        self.log.append("commit")
        self.commits.append((offsets, asynchronous))
        return True

    def checkpoint(self, offsets: list[TopicPartition] | None = None) -> Checkpoint:
        return Checkpoint(3, [TopicPartition("in", 0, 10)] if offsets is None else offsets,
                          [("k", None)], [], sink=self.sink, write_state=self.write_state,
                          commit=self.commit)


RECORDS: list[StateRecord] = [(0, "k", b"state"), (0, "gone", None)]


def test_nothing_moves_before_the_marks_batches_are_scored() -> None:
    p = Parts()
    ck = p.checkpoint()
    assert not ck.advance() and ck.step == Step.SCORING
    assert not ck.run(timeout=1.0)
    assert p.log == [] and not p.commits


def test_periodic_order_scored_events_state_commit() -> None:
    p = Parts()
    ck = p.checkpoint()
    p.sink.produce(2)  # the mark's events, produced when its batches were applied
    ck.scored(RECORDS)
    assert ck.step == Step.EVENTS and ck.buffers == []
    p.sink.produce(1)  # an event after the mark: the checkpoint does not wait for it
    assert not ck.advance()  # events unconfirmed: no state written, nothing committed
    assert p.log == []
    p.sink.confirmed = 2  # the mark's events only
    assert not ck.advance()  # state written now, not confirmed yet: no commit
    assert p.log == ["state 2"] and ck.step == Step.STATE and ck.state_written
    assert not ck.advance() and not p.commits
    p.sink.confirm()
    assert ck.advance()
    assert p.log == ["state 2", "commit"] and ck.step == Step.DONE and ck.committed
    assert p.commits == [([TopicPartition("in", 0, 10)], True)]  # the loop's: asynchronous


def test_synchronous_path_is_advance_until_done() -> None:
    p = Parts()
    ck = p.checkpoint()
    p.sink.produce(1)
    ck.scored(RECORDS)
    assert ck.run(timeout=5.0)
    assert p.log == ["flush", "state 2", "flush", "commit"]
    assert p.commits[0][1] is False  # synchronous commit


def test_without_state_records_events_then_commit() -> None:
    p = Parts()
    ck = p.checkpoint()
    p.sink.produce(1)
    ck.scored([])
    assert not ck.advance()
    p.sink.confirm()
    assert ck.advance() and p.log == ["commit"] and not ck.state_written


def test_nothing_to_commit_completes_without_a_commit() -> None:
    p = Parts()
    ck = p.checkpoint(offsets=[])
    ck.scored(RECORDS)
    assert not ck.advance()  # the state records still go first
    p.sink.confirm()
    assert ck.advance() and p.log == ["state 2"] and ck.committed is None


def test_a_refusal_stops_the_commit() -> None:
    p = Parts()
    ck = p.checkpoint()
    ck.scored(RECORDS)
    assert not ck.advance()  # state written
    p.sink.confirm()
    p.sink.failed = True
    with pytest.raises(DeliveryError):
        ck.advance()
    assert not p.commits


def test_a_refused_commit_is_reported() -> None:
    p = Parts()
    ck = Checkpoint(1, [TopicPartition("in", 0, 1)], [], [], sink=p.sink,
                    write_state=p.write_state, commit=lambda offsets, asynchronous: False)
    ck.scored([])
    assert ck.advance() and ck.committed is False
