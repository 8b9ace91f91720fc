"""Safe promotion: a new model version is scored in shadow beside the serving one, on the
same batches, before it serves.

The shadow decides its windows with its own decider (so its per-key decision state is
warm when it takes over), is counted in the ``stream_detector_shadow_*`` metrics and
never publishes. It is ready to serve once ``--shadow-coverage`` of the keys it has
scored have had ``--shadow-windows`` windows each (a window whose error is inf or NaN is
not one: a key the candidate cannot score is not ready), or once it has been in shadow
for ``--shadow-max-s`` (promotion never starves: keys trickling in, slow series), and,
with ``--promotion-gate backtest``, once the backtest of it against the serving model
passed (run on a thread of its own, off the hot path). Anything of the candidate that
fails (its scoring, its decider) refuses it, never the serving path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from stream_detector.artifact import Artifact
from stream_detector.batcher import Batch
from stream_detector.decision import Decider, decide_windows
from stream_detector.errors import InputError, StreamDetectorError
from stream_detector.explain import Explained
from stream_detector.gaps import GapPolicy
from stream_detector.metrics import Metrics
from stream_detector.service.base import MetaRow

log = logging.getLogger(__name__)


class Scored(NamedTuple):
    """What one batch's inference returns: the serving model's errors and what explains
    them (from the same call), the wall time of its call, and the shadow's errors (None
    without a shadow)."""

    explained: Explained
    seconds: float
    shadow: np.ndarray | None


class Gate:
    """The backtest gate: replays ``paths`` through the serving model and a candidate."""

    def __init__(self, paths: Sequence[str], fmt: str, margin: float, max_batch: int,
                 timestamp_policy: str = "accept", decision: str | None = None,
                 decision_params: Mapping[str, str] | None = None,
                 gaps: Callable[[int], GapPolicy] | None = None) -> None:
        from stream_detector.datasets import read_dataset

        if not paths:
            raise InputError("--promotion-gate backtest needs --gate-input CSV file(s)")
        self.dataset = read_dataset(list(paths), fmt, timestamp_policy)  # bad file: exit 2
        self.margin = margin
        self.max_batch = max_batch
        # run's --decision and --decision-param apply to both, as they do when serving
        self.decision = decision
        self.decision_params = dict(decision_params or {})
        self.gaps = gaps  # run's --gap-* too

    def passes(self, serving: Artifact, candidate: Artifact) -> tuple[bool, str]:
        from stream_detector.backtest import compare

        report = compare(serving, candidate, self.dataset, self.margin, self.max_batch,
                         method=self.decision, params=self.decision_params, gaps=self.gaps)
        return report.passed, report.verdict


class Shadow:
    """A candidate model in shadow: its decider, its windows per key, its gate verdict."""

    def __init__(self, art: Artifact, decider: Decider, need: int, metrics: Metrics,
                 coverage: float = 1.0, max_s: float = 0.0,
                 live: Callable[[str], bool] | None = None) -> None:
        self.art = art
        self.decider = decider
        self.need = need
        self.coverage = coverage
        self.max_s = max_s
        self.since = time.monotonic()
        # whether a key is still this replica's: a window in flight for a key evicted or
        # revoked meanwhile is not counted (that key would never be ready)
        self.live = live
        self.m = metrics
        self.failure: str | None = None  # why the candidate failed while in shadow
        self.windows: dict[str, int] = {}  # per key still in memory: windows it decided
        self._done = 0  # keys of ``windows`` with ``need`` or more (kept as they cross it)
        self.decided = 0
        self.agreed = 0
        # None: no gate asked, or it is still running; then its verdict
        self.gate_passed: bool | None = None
        self.gate_detail = ""
        self._gate_thread: threading.Thread | None = None
        self.cancelled = False
        metrics.shadow_info.labels(model=art.kind, version=art.version).set(1)
        metrics.shadow_agreement.set(1.0)
        metrics.shadow_keys_ready.set(0.0)

    # -- the gate --------------------------------------------------------------------------
    def start_gate(self, gate: Gate, serving: Artifact) -> None:
        """Run the backtest of this candidate against ``serving`` on a thread of its own."""
        def run() -> None:
            try:
                ok, detail = gate.passes(serving, self.art)
            except StreamDetectorError as exc:  # e.g. a gate series shorter than the window
                ok, detail = False, f"backtest failed: {exc}"
            except Exception as exc:  # a failed backtest refuses the candidate, never the loop
                log.exception("promotion gate for %s", self.art.version)
                ok, detail = False, f"backtest failed: {exc}"
            self.gate_detail = detail
            self.gate_passed = ok

        self._gate_thread = threading.Thread(target=run, name="promotion-gate", daemon=True)
        self._gate_thread.start()

    @property
    def gated(self) -> bool:
        return self._gate_thread is not None

    @property
    def refused(self) -> bool:
        """The gate refused it, or something of it failed in shadow."""
        return self.gate_passed is False or self.failure is not None

    @property
    def detail(self) -> str:
        return self.failure if self.failure is not None else self.gate_detail

    def fail(self, what: str, exc: BaseException) -> None:
        """Something of the candidate raised: it is refused at the next turn."""
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        if self.failure is None:
            log.error("model %s failed in shadow (%s): %s", self.art.version, what, reason)
            self.failure = f"{what} failed in shadow: {reason}"

    # -- scoring ---------------------------------------------------------------------------
    def decide(self, batch: Batch[MetaRow], keys: list[str], scores: np.ndarray, hop: int,
               serving_flags: np.ndarray, serving_done: np.ndarray) -> None:
        """Decide the batch's windows with the shadow's decider; count them and how often
        its alarm agrees with the serving model's (``serving_flags`` where
        ``serving_done``: the windows the serving model decided)."""
        ok = np.isfinite(scores)
        idx = np.flatnonzero(ok)
        counts, need, live = self.windows, self.need, self.live
        if not ok.all():  # seen, not ready: its windows are not decided
            for i in np.flatnonzero(~ok).tolist():
                if live is None or live(keys[i]):
                    counts.setdefault(keys[i], 0)
        if not len(idx):
            return
        windows = batch.windows if ok.all() else batch.windows[idx]
        sel = keys if ok.all() else [keys[i] for i in idx.tolist()]
        flags = decide_windows(self.decider, sel, scores[idx], windows, hop).is_anomaly
        for k in sel:
            if live is not None and not live(k):
                self.decider.forget(k)  # left while this batch was in flight
                continue
            c = counts[k] = counts.get(k, 0) + 1
            if c == need:
                self._done += 1
        both = serving_done[idx]
        agreed = int(np.count_nonzero(flags[both] == serving_flags[idx][both]))
        n_both = int(np.count_nonzero(both))
        self.decided += n_both
        self.agreed += agreed
        m = self.m
        m.shadow_windows.inc(len(idx))
        m.shadow_anomalies.inc(int(np.count_nonzero(flags)))
        m.shadow_decisions.labels(agreement="agree").inc(agreed)
        m.shadow_decisions.labels(agreement="disagree").inc(n_both - agreed)
        m.shadow_agreement.set(self.agreement())
        done, seen = self.keys_ready()
        m.shadow_keys_ready.set(done / seen if seen else 0.0)

    def forget(self, key: str) -> None:
        if self.windows.pop(key, 0) >= self.need > 0:
            self._done -= 1
        try:
            self.decider.forget(key)
        except Exception as exc:  # the candidate's failure, never the eviction's
            self.fail("its decider", exc)

    # -- promotion -------------------------------------------------------------------------
    def keys_ready(self) -> tuple[int, int]:
        """(keys with enough windows, keys it has scored)."""
        return self._done, len(self.windows)

    def ready(self) -> bool:
        """Whether it may serve: the gate passed if one was asked, and enough windows for
        ``coverage`` of the keys it scored (with ``--shadow-windows`` > 0, at least one
        key), or ``max_s`` in shadow (cheap: the loop asks every turn)."""
        if self.refused or (self.gated and self.gate_passed is not True):
            return False
        if self.need <= 0:
            return True
        done, seen = self.keys_ready()
        if seen > 0 and done >= self.coverage * seen:
            return True
        return self.max_s > 0 and time.monotonic() - self.since >= self.max_s

    def agreement(self) -> float:
        """Share of the windows both decided on which their alarms agreed (1 before any)."""
        return self.agreed / self.decided if self.decided else 1.0

    def close(self, promoted: bool = False) -> None:
        """It leaves the shadow: its info series go. Refused or replaced, its batches still
        in flight are no longer decided; promoted, they are (its decider serves now and
        must see every window in order)."""
        self.cancelled = not promoted
        try:
            self.m.shadow_info.remove(self.art.kind, self.art.version)
        except KeyError:
            pass
