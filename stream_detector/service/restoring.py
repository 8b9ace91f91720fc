"""Changelog restores off the rebalance callback.

Reading a large changelog can take longer than a liveness probe or
``max.poll.interval.ms`` allow. So the rebalance callback only pauses the partitions it
was given and hands them to a :class:`Restorer`, which reads their state in a thread of
its own while the loop keeps polling; the loop applies each finished restore and resumes
its partitions (:meth:`RebalanceMixin._finish_restores
<stream_detector.service.rebalance.RebalanceMixin._finish_restores>`).

A partition revoked or lost while its restore runs is dropped from the job at once: the
reading thread stops reading it and lets its records go, and the records a finished job
hands back are only those of the partitions it still restores (issue #26: a restore used
to apply the partitions it had given away, whose keys then closed the new owner's
incidents and deleted its state). A job left with no partition is cancelled. A job that
failed keeps how far it got, so the next attempt for the same assignment resumes there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from stream_detector.state import PartitionRestore, RestoreCancelled

TP = tuple[str, int]
Restored = list[tuple[int, str, bytes]]  # (partition, key, record), oldest write first


class Job:
    """One restore: the partitions it still reads (and of which assignment), its own
    cancel flag, and its progress (the records read so far, per partition)."""

    def __init__(self, tps: dict[TP, int], progress: dict[int, PartitionRestore]) -> None:
        self.generations = dict(tps)  # tp -> the assignment it restores
        self.partitions = sorted({p for _, p in tps})
        self.progress = progress
        self.cancel = threading.Event()
        self.future: Future[int] | None = None  # -> the changelog's partition count
        self._lock = threading.Lock()
        self._wanted = {p for _, p in tps}

    def wants(self, partition: int) -> bool:
        """(Asked by the reading thread.) Whether ``partition`` is still to be read."""
        with self._lock:
            return partition in self._wanted

    def drop(self, tps: set[TP]) -> None:
        """(The loop thread.) ``tps`` are revoked or lost: stop reading them; cancel the
        job once it restores nothing any more."""
        with self._lock:
            for tp in tps & set(self.generations):
                del self.generations[tp]
            self._wanted = {p for _, p in self.generations}
            if not self._wanted:
                self.cancel.set()

    def records(self, partitions: set[int]) -> Restored:
        """The records read for ``partitions``: (partition, key, record), least recently
        written first (across the partitions)."""
        recs = [(seq, p, k, raw) for p, pr in self.progress.items() if p in partitions
                for k, (seq, raw) in pr.records.items()]
        recs.sort(key=lambda r: r[0])
        return [(p, k, raw) for _, p, k, raw in recs]

    @property
    def let_go(self) -> int:
        """Records let go beyond the key cap (not loaded, not deleted)."""
        return sum(pr.let_go for pr in self.progress.values())


Fetch = Callable[[Job], int]


class Restorer:
    """One background thread that reads changelog partitions, one job per assignment."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-restore")
        self._jobs: dict[TP, Job] = {}
        self._resume: dict[TP, tuple[int, PartitionRestore]] = {}  # of failed jobs

    def start(self, tps: dict[TP, int]) -> None:
        """Queue a restore of ``tps`` (tp -> its assignment's generation); each one's
        earlier job, if any, is superseded. A partition whose earlier job of the same
        assignment failed resumes where that one stopped."""
        if not tps:
            return
        for tp in tps:
            old = self._jobs.pop(tp, None)
            if old is not None:
                old.drop({tp})
        progress: dict[int, PartitionRestore] = {}
        for tp, gen in tps.items():
            kept = self._resume.pop(tp, None)
            if kept is not None and kept[0] == gen:
                progress[tp[1]] = kept[1]
        job = Job(tps, progress)
        job.future = self._pool.submit(self._fetch, job)
        for tp in tps:
            self._jobs[tp] = job

    @property
    def pending(self) -> set[TP]:
        """Partitions whose restore has not been applied yet."""
        return set(self._jobs)

    def forget(self, tps: set[TP]) -> None:
        """Drop ``tps`` (revoked or lost): their job stops reading them, and whatever it
        read of them is never handed back."""
        for tp in tps:
            self._resume.pop(tp, None)
            job = self._jobs.pop(tp, None)
            if job is not None:
                job.drop({tp})

    def drop_progress(self, tps: set[TP]) -> None:
        """Let go of what failed jobs read of ``tps`` (consumed without state meanwhile:
        a restore would go back in time)."""
        for tp in tps:
            self._resume.pop(tp, None)

    def finished(self) -> list[tuple[set[TP], Job]]:
        """The jobs that ended since the last call, each with the partitions it still
        restores (and no other: their records are the only ones to apply)."""
        done: dict[int, tuple[set[TP], Job]] = {}
        for tp, job in list(self._jobs.items()):
            assert job.future is not None
            if job.future.done() and tp in job.generations:
                done.setdefault(id(job), (set(), job))[0].add(tp)
                del self._jobs[tp]
        out = list(done.values())
        for tps, job in out:
            assert job.future is not None
            exc = job.future.exception()
            if exc is not None and not isinstance(exc, RestoreCancelled):
                for tp in tps:  # the next attempt of this assignment resumes here
                    pr = job.progress.get(tp[1])
                    if pr is not None:
                        self._resume[tp] = (job.generations[tp], pr)
        return out

    def close(self) -> None:
        """Stop reading (a running job ends at its next poll) and drop queued jobs."""
        for job in {id(j): j for j in self._jobs.values()}.values():
            job.cancel.set()
        self._jobs.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
