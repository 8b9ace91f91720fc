"""One checkpoint: the steps that let offsets follow delivery, in order, in one place.

quix-streams' ``checkpointing/checkpoint.py`` commits in three numbered steps (flush the
sinks, flush the producer, commit). Ours, from a *mark* (the offsets consumed and the
keys changed so far):

1. **scored**: every batch submitted by the mark has been scored and applied, so its
   events are produced and each changed key's state (window, incident, decision) can be
   encoded as of that batch;
2. **events confirmed**: the broker confirmed every event and dead letter produced up to
   then;
3. **state written and confirmed**: the changed keys' state records (and tombstones) are
   produced, and the broker confirmed them;
4. **commit** the marked offsets.

A crash between any two steps loses nothing: the input from the last commit on is
redelivered, and event ids are deterministic, so a redelivered event is byte-identical.

The loop's periodic checkpoint calls :meth:`Checkpoint.advance` with ``timeout=0`` each
turn and never blocks; the synchronous one (revoke, drain) is the same object advanced
until done, with the waits blocking (:meth:`Checkpoint.run`).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from confluent_kafka import TopicPartition

# (changelog partition, key, encoded state); None as the state: a tombstone
StateRecord = tuple[int, str, bytes | None]


class Sink(Protocol):
    """What a checkpoint needs of the producer side (:class:`~stream_detector.sink.EventSink`)."""

    def mark(self) -> int: ...
    def delivered_through(self, mark: int) -> bool: ...
    def flush(self, timeout: float = ..., strict: bool = ...) -> bool: ...
    def raise_if_failed(self) -> None: ...


class Committer(Protocol):
    """Commits offsets; False (logged) when the commit was refused."""

    def __call__(self, offsets: list[TopicPartition], asynchronous: bool) -> bool: ...


class Step(enum.IntEnum):
    SCORING = 1  # waiting for the mark's batches
    EVENTS = 2  # waiting for the events' confirmation
    STATE = 3  # state records produced, waiting for their confirmation
    COMMIT = 4
    DONE = 5


class Checkpoint:
    """A checkpoint from its mark to its commit (see the module docstring for the steps).

    ``batch`` is the sequence number of the last batch submitted at the mark; ``buffers``
    and ``deleted`` are the loop's snapshot of changed and evicted keys (opaque here: the
    loop turns them into :data:`StateRecord` s at :meth:`scored`).
    """

    def __init__(self, batch: int, offsets: list[TopicPartition], buffers: list[Any],
                 deleted: list[tuple[str, int]], *, sink: Sink,
                 write_state: Callable[[Sequence[StateRecord]], None],
                 commit: Committer) -> None:
        self.batch = batch
        self.offsets = offsets
        self.buffers = buffers
        self.deleted = deleted
        self.records: list[StateRecord] = []
        self.started = time.perf_counter()
        self.step = Step.SCORING
        self.committed: bool | None = None  # None: nothing to commit (or not yet)
        self._sink = sink
        self._write_state = write_state
        self._commit = commit
        self._events_mark = -1
        self._state_mark = -1

    # 1. scored -----------------------------------------------------------------------
    def scored(self, records: list[StateRecord]) -> None:
        """The mark's batches are applied: ``records`` is the changed keys' state as of now."""
        assert self.step == Step.SCORING
        self._events_mark = self._sink.mark()
        self.records = records
        self.buffers = []
        self.step = Step.EVENTS

    def advance(self, timeout: float = 0.0, strict: bool = False) -> bool:
        """Go through steps 2-4 as far as confirmations allow; True once done.

        ``timeout`` 0 never blocks (the loop's periodic checkpoint). Otherwise each wait
        blocks up to ``timeout``; a broker that does not confirm in time returns False,
        or raises :class:`DeliveryError` when ``strict``. A message refused for good
        always raises, and nothing is committed after it.
        """
        if self.step == Step.SCORING:
            return False
        # 2. events confirmed, then the state records written
        if self.step == Step.EVENTS:
            if not self._confirmed(self._events_mark, timeout, strict):
                return False
            if self.records:
                self._write_state(self.records)
                self._state_mark = self._sink.mark()
                self.step = Step.STATE
            else:
                self.step = Step.COMMIT
        # 3. state records confirmed
        if self.step == Step.STATE:
            if not self._confirmed(self._state_mark, timeout, strict):
                return False
            self.step = Step.COMMIT
        # 4. commit
        if self.step == Step.COMMIT:
            self.step = Step.DONE
            if self.offsets:
                self._sink.raise_if_failed()  # a refusal after the mark stops every commit
                self.committed = self._commit(self.offsets, asynchronous=timeout <= 0)
        return True

    def run(self, timeout: float, strict: bool = True) -> bool:
        """The synchronous checkpoint: advance until done (the mark must be scored)."""
        return self.advance(timeout, strict)

    def _confirmed(self, mark: int, timeout: float, strict: bool) -> bool:
        if timeout <= 0:
            return self._sink.delivered_through(mark)
        return self._sink.flush(timeout, strict)

    @property
    def state_written(self) -> bool:
        """Whether the state records have been produced (an abandoned checkpoint's keys
        stay dirty until then)."""
        return self.step >= Step.STATE and bool(self.records)
