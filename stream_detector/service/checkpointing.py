"""The detector's side of checkpointing: take a mark, encode the changed keys' state,
write it, commit. The steps themselves, in order, are :class:`Checkpoint`'s."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from stream_detector.service.base import TP, DetectorBase
from stream_detector.service.checkpoint import Checkpoint, StateRecord
from stream_detector.state import KeyState
from stream_detector.state import encode as encode_state

log = logging.getLogger(__name__)


def _libc_trim() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _libc_trim()
TRIM_AFTER_RECORDS = 10_000


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc keeps them after a burst: e.g. the
    state records of a big checkpoint), so RSS follows what the detector really holds."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class CheckpointMixin(DetectorBase):
    """Marks, state records and commits for :class:`Checkpoint`."""

    def checkpoint(self, only: set[TP] | None = None, timeout: float = 30.0,
                   strict: bool = True) -> bool:
        """Score what is batched, wait for every delivery, write changed state, then commit
        (of the partitions ``only``, else all): a :class:`Checkpoint` advanced until done.

        With ``strict=False`` a broker that does not confirm in ``timeout`` only postpones
        the commit (False); the loop goes on and retries next time.
        """
        self.sink.raise_if_failed()  # once a message was refused, nothing commits again
        self._abandon()  # this one covers everything a pending one would
        self.score_batch()
        ck = self._mark(only)
        if not ck.run(timeout, strict):
            self._restore_dirty(ck)
            return False
        self._trim_after_records()
        if ck.committed:
            for tp in ck.offsets:
                self._committed[(tp.topic, tp.partition)] = tp.offset
            self.metrics.checkpoint_seconds.observe(time.perf_counter() - ck.started)
        return ck.committed is not False

    def begin_checkpoint(self) -> None:
        """Start a periodic checkpoint that the loop advances (:meth:`advance_checkpoint`)."""
        if self._pending is not None:
            return  # the previous one is still waiting for the broker: it goes first
        if not self._uncommitted() and not self._deleted and not (
                self.state is not None and self.buffer.any_dirty()):
            return
        self.submit_batch()
        self._pending = self._mark(None)

    def advance_checkpoint(self) -> None:
        """Move the pending checkpoint on as far as confirmations allow (never blocks)."""
        ck = self._pending
        if ck is None or not ck.advance():
            return
        self._pending = None
        self._trim_after_records()
        if ck.committed is not False:
            self.metrics.checkpoint_seconds.observe(time.perf_counter() - ck.started)

    def _mark(self, only: set[TP] | None) -> Checkpoint:
        """A checkpoint of what is consumed and changed now (of ``only``); scored at once
        when no batch is in flight."""
        parts = {p for _, p in only} if only is not None else None
        buffers = []
        if self.state is not None:
            for key in self.buffer.take_dirty(parts):
                exp = self.buffer.export(key)
                if exp is not None:
                    buffers.append((key, exp))
        deleted = [(key, p) for key, p in self._deleted.items() if parts is None or p in parts]
        for key, _ in deleted:
            del self._deleted[key]
        ck = Checkpoint(self._submitted, self._uncommitted(only), buffers, deleted,
                        sink=self.sink, write_state=self._write_records, commit=self._commit)
        if not self._inflight:  # nothing to score: the state is as of now
            self._scored(ck)
        return ck

    def _scored(self, ck: Checkpoint) -> None:
        """The mark's batches are applied: encode the changed keys' state as of now."""
        # tombstones first: a key evicted and back since the last checkpoint has both,
        # and its live record, written after, is the one compaction keeps
        # (never for a partition given away: its keys' state is another replica's now)
        given_away = self.parts.given_away
        records: list[StateRecord] = [(p, key, None) for key, p in ck.deleted
                                      if 0 <= p < self._state_partitions
                                      and not given_away(p)]
        records += [rec for key, exp in ck.buffers
                    if key in self.buffer and (rec := self._state_record(key, exp)) is not None]
        ck.scored(records)

    def _state_record(self, key: str, exp: tuple[int, int, int, np.ndarray, np.ndarray]
                      ) -> StateRecord | None:
        """(partition, key, encoded state) from the key's buffer export and its current
        incident and decision state; None where the changelog has no partition for it."""
        tag, count, last_offset, values, ts = exp
        if tag >= self._state_partitions:
            return None  # the changelog could not grow to this partition (logged)
        if self.parts.given_away(tag):
            return None  # another replica's key (a window of it came back late)
        fb = self.feedback.export(key) if self.feedback is not None else None
        return tag, key, encode_state(KeyState(count, last_offset, values, ts,
                                               self.tracker.export(key),
                                               self.decider.export(key), fb), self.art.window)

    def _trim_after_records(self) -> None:
        """Once the state records written since the last trim (all confirmed now, their
        buffers freed) add up to many, give the freed heap back to the OS."""
        if self._records_since_trim >= TRIM_AFTER_RECORDS:
            self._records_since_trim = 0
            release_free_memory()

    def _write_records(self, records: Sequence[StateRecord]) -> None:
        """Produce state records (None: a tombstone), each tracked for its confirmation."""
        assert self.state is not None
        written = self.state.bytes_written
        sink = self.sink
        for tag, key, raw in records:
            try:
                self.state.write(tag, key, raw, sink.tracked(sink.on_state_delivery))
            except KafkaException as exc:  # refused outright (no report will come)
                sink.fail("state", self.state.topic, exc)
                sink.raise_if_failed()
        self.metrics.state_records_written.inc(len(records))
        self._records_since_trim += len(records)
        self.metrics.state_bytes_written.inc(self.state.bytes_written - written)

    def _commit(self, offsets: list[TopicPartition], asynchronous: bool) -> bool:
        """Commit ``offsets``; False when refused (e.g. a rebalance in progress: the input
        is redelivered, at least once)."""
        try:
            if asynchronous:
                self.consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            _commit_failed(exc)
            return False
        return True

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None:  # an asynchronous commit refused
            _commit_failed(err)
            return
        for tp in partitions:
            if tp.error is None and self.parts.owns((tp.topic, tp.partition)):
                self._committed[(tp.topic, tp.partition)] = tp.offset

    def _uncommitted(self, only: set[TP] | None = None) -> list[TopicPartition]:
        """Next offsets to commit: consumed positions not committed yet (of ``only``)."""
        return [TopicPartition(t, p, o) for (t, p), o in self._positions.items()
                if self._committed.get((t, p)) != o and (only is None or (t, p) in only)]

    def _abandon(self) -> None:
        """Drop a pending checkpoint (a synchronous one supersedes it); its keys stay dirty."""
        ck, self._pending = self._pending, None
        if ck is not None:
            self._restore_dirty(ck)

    def _restore_dirty(self, ck: Checkpoint) -> None:
        """What ``ck`` took and did not write is to be written by the next checkpoint."""
        for key, _ in ck.buffers:
            self.buffer.mark_dirty(key)
        for key, p in ck.deleted:
            self._deleted.setdefault(key, p)
        if not ck.state_written:
            for tag, key, raw in ck.records:
                if raw is None:
                    self._deleted.setdefault(key, tag)
                else:
                    self.buffer.mark_dirty(key)


def _commit_failed(err: Any) -> None:
    # the messages will be redelivered (at least once)
    log.warning("offset commit failed: %s", err)
