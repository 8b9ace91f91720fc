"""Who owns a partition's life: one object with explicit states and transitions.

An input partition goes through these states on one replica::

    (not held) --assign--> RESTORING --restored--> LIVE --revoke/lose--> REVOKED / LOST
                   |            |                    ^
                   |            +--failed--> UNUSABLE +--usable (consumed without state)
                   |                          |  ^
                   |                          +--retry--> RESTORING
                   +--assign (no changelog)--> LIVE

Each assignment starts a new *generation* of the partition, so a restore read for an
earlier assignment (revoked, or lost and assigned again meanwhile) is never applied to a
later one. The loop, the restorer and the checkpoint ask this object before they act on a
partition's keys: :meth:`Partitions.may_apply` before applying a restored record,
:meth:`Partitions.given_away` before publishing ``closed`` for an evicted key's incident
or writing its state or tombstone. Every callback runs on the loop thread (rebalance
callbacks from ``poll``), so no lock is needed: the restore thread never asks.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable

TP = tuple[str, int]

log = logging.getLogger(__name__)


class Life(enum.Enum):
    RESTORING = "restoring"  # assigned and paused: its changelog state is being read
    UNUSABLE = "unusable"  # assigned, its changelog failed: paused (--state-required) or
    # consumed without state; retried
    LIVE = "live"  # assigned and consumed (with its state, or without a changelog)
    REVOKED = "revoked"  # handed on in a rebalance (checkpointed first)
    LOST = "lost"  # taken away without a commit (session expired)


HELD = (Life.RESTORING, Life.UNUSABLE, Life.LIVE)
_NEXT: dict[Life | None, tuple[Life, ...]] = {
    None: (Life.RESTORING, Life.LIVE),
    Life.RESTORING: (Life.LIVE, Life.UNUSABLE, Life.REVOKED, Life.LOST),
    Life.UNUSABLE: (Life.RESTORING, Life.LIVE, Life.REVOKED, Life.LOST),
    Life.LIVE: (Life.REVOKED, Life.LOST),
    Life.REVOKED: (Life.RESTORING, Life.LIVE),
    Life.LOST: (Life.RESTORING, Life.LIVE),
}


class Partitions:
    """The life of every input partition this replica holds or held."""

    def __init__(self) -> None:
        self._life: dict[TP, Life] = {}
        self._gen: dict[TP, int] = {}
        # assigned partitions whose changelog failed since their assignment (not ready
        # until a restore or a check of the changelog succeeds)
        self._failed: set[TP] = set()

    def _move(self, tps: Iterable[TP], to: Life) -> set[TP]:
        """Move ``tps`` to ``to``; returns those that moved (an impossible transition is
        logged and refused: the caller acts on the ones returned only)."""
        moved = set()
        for tp in tps:
            now = self._life.get(tp)
            if now is to:
                continue
            if to not in _NEXT[now]:
                log.warning("partition %s: %s -> %s refused", tp, now and now.value, to.value)
                continue
            self._life[tp] = to
            moved.add(tp)
        return moved

    # -- transitions ---------------------------------------------------------------------
    def assign(self, tps: Iterable[TP], restoring: bool) -> None:
        """A new assignment of ``tps`` (a new generation each): restoring its state first,
        or live at once (no changelog)."""
        tps = set(tps)
        for tp in tps:
            if self._life.get(tp) in HELD:  # assigned twice without a revoke: a new one
                self._life[tp] = Life.REVOKED
            self._gen[tp] = self._gen.get(tp, 0) + 1
            self._failed.discard(tp)
        self._move(tps, Life.RESTORING if restoring else Life.LIVE)

    def restored(self, tps: Iterable[TP]) -> set[TP]:
        """Their restore is applied: live (usable again)."""
        moved = self._move({tp for tp in tps if self._life.get(tp) is Life.RESTORING},
                           Life.LIVE)
        self._failed -= moved
        return moved

    def failed(self, tps: Iterable[TP]) -> None:
        """Their changelog is unusable (a restore or a check failed)."""
        held = {tp for tp in tps if self._life.get(tp) in HELD}
        self._failed |= held
        self._move({tp for tp in held if self._life[tp] is Life.RESTORING}, Life.UNUSABLE)

    def retrying(self, tps: Iterable[TP]) -> None:
        """A restore of these unusable partitions starts again (they stay not ready)."""
        self._move({tp for tp in tps if self._life.get(tp) is Life.UNUSABLE}, Life.RESTORING)

    def usable(self, tps: Iterable[TP]) -> None:
        """The changelog of these partitions, consumed without state, works again."""
        tps = {tp for tp in tps if self._life.get(tp) in HELD}
        self._failed -= tps
        self._move(tps, Life.LIVE)

    def revoke(self, tps: Iterable[TP]) -> None:
        self._gone(tps, Life.REVOKED)

    def lose(self, tps: Iterable[TP]) -> None:
        self._gone(tps, Life.LOST)

    def _gone(self, tps: Iterable[TP], to: Life) -> None:
        tps = set(tps)
        self._failed -= tps
        self._move({tp for tp in tps if self._life.get(tp) in HELD}, to)

    # -- questions -----------------------------------------------------------------------
    def life(self, tp: TP) -> Life | None:
        return self._life.get(tp)

    def generation(self, tp: TP) -> int:
        """The number of the current (or last) assignment of ``tp`` (0: never assigned)."""
        return self._gen.get(tp, 0)

    def may_apply(self, tp: TP, generation: int) -> bool:
        """Whether a restore read for assignment ``generation`` of ``tp`` may be applied:
        the partition is still restoring, in that very assignment."""
        return self._life.get(tp) is Life.RESTORING and self._gen.get(tp) == generation

    def owns(self, tp: TP) -> bool:
        """Whether ``tp`` is assigned here now (restoring, unusable or live)."""
        return self._life.get(tp) in HELD

    def given_away(self, partition: int) -> bool:
        """Whether input partition ``partition`` was held here and is not any more
        (revoked or lost): its keys are another replica's, so no ``closed`` event, state
        record or tombstone of this replica may speak for them."""
        lives = [life for (_, p), life in self._life.items() if p == partition]
        return bool(lives) and not any(life in HELD for life in lives)

    @property
    def assigned(self) -> set[TP]:
        return {tp for tp, life in list(self._life.items()) if life in HELD}

    def in_state(self, *lives: Life) -> set[TP]:
        return {tp for tp, life in self._life.items() if life in lives}

    @property
    def missing(self) -> set[TP]:
        """Assigned partitions whose changelog failed (not ready until it works)."""
        return set(self._failed)
