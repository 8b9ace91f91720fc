"""Changelog restores off the rebalance callback.

Reading a large changelog can take longer than a liveness probe or
``max.poll.interval.ms`` allow. So the rebalance callback only pauses the partitions it
was given and hands them to a :class:`Restorer`, which reads their state in a thread of
its own while the loop keeps polling; the loop applies each finished restore and resumes
its partitions (:meth:`RebalanceMixin._finish_restores
<stream_detector.service.rebalance.RebalanceMixin._finish_restores>`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

TP = tuple[str, int]
Records = dict[int, dict[str, bytes]]
# partitions -> (the changelog's partition count, the latest record of every key)
Fetch = Callable[[list[int], threading.Event], tuple[int, Records]]


class Restorer:
    """One background thread that reads changelog partitions, one job per assignment."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-restore")
        self._cancel = threading.Event()
        self._jobs: dict[TP, Future[tuple[int, Records]]] = {}

    def start(self, tps: set[TP]) -> None:
        """Queue a restore of ``tps`` (each one's earlier job, if any, is superseded)."""
        if not tps:
            return
        fut = self._pool.submit(self._fetch, sorted({p for _, p in tps}), self._cancel)
        for tp in tps:
            self._jobs[tp] = fut

    @property
    def pending(self) -> set[TP]:
        """Partitions whose restore has not been applied yet."""
        return set(self._jobs)

    def forget(self, tps: set[TP]) -> None:
        """Drop ``tps`` (revoked or lost): a job still reading them is ignored for them."""
        for tp in tps:
            self._jobs.pop(tp, None)

    def finished(self) -> list[tuple[set[TP], Future[tuple[int, Records]]]]:
        """The jobs that ended since the last call, each with the partitions it still owns."""
        done: dict[Future[tuple[int, Records]], set[TP]] = {}
        for tp, fut in list(self._jobs.items()):
            if fut.done():
                done.setdefault(fut, set()).add(tp)
                del self._jobs[tp]
        return [(tps, fut) for fut, tps in done.items()]

    def close(self) -> None:
        """Stop reading (a running job ends at its next poll) and drop queued jobs."""
        self._cancel.set()
        self._jobs.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
