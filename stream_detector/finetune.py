"""Online fine-tuning: keep learning the stream's normal windows while scoring (drift).

A model fitted on history meets a stream that drifts: a new daily shape, a new level
after a deploy. Its reconstruction errors then run above the training errors and its
flags become false alarms. The :class:`FineTuner` keeps the most recent *normal*
windows of the stream in a ring buffer and, every ``every`` scored windows, takes a few
small gradient steps on a sample of them.

The guard against learning anomalies: a window enters the buffer only if its error is at
most ``guard`` times its key's calibrated threshold (the artifact's static threshold,
the same in ``score`` and ``run``). Anomalous windows are never learnt, however long the
anomaly lasts.

Costs and consequences:

- each round is ``steps`` training steps of ``batch_size`` windows, run on the inference
  thread between batches (docs/quality.md, "Fine-tuning cost", has the measured cost);
- scores depend on the stream seen so far, not on the window alone. The service restarts
  from the artifact's weights (the tuned weights are not checkpointed), so a redelivered
  window may score differently from its first delivery, and events are no longer
  byte-identical across a restart. Off by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from stream_detector.errors import InputError
from stream_detector.threshold import Thresholds


@dataclass(frozen=True)
class FineTuneOptions:
    """``every`` windows between rounds (0: off) and the round's settings."""

    every: int = 0
    buffer: int = 4096  # recent normal windows kept
    steps: int = 4  # gradient steps per round
    batch_size: int = 64
    learning_rate: float = 1e-3
    guard: float = 3.0  # learn windows with error <= guard x the key's threshold
    seed: int = 0

    @property
    def enabled(self) -> bool:
        return self.every > 0

    @classmethod
    def parse(cls, every: int, params: Mapping[str, Any] | None = None) -> FineTuneOptions:
        """From ``--fine-tune-every`` and ``--fine-tune-param K=V``; clear errors on bad input."""
        known = [f.name for f in fields(cls) if f.name != "every"]
        values: dict[str, Any] = {}
        for name, raw in (params or {}).items():
            if name not in known:
                raise InputError(
                    f"--fine-tune-param: unknown parameter {name!r} "
                    f"(choose from {', '.join(known)})"
                )
            conv = type(getattr(cls, name))  # the default's type: int or float
            try:
                values[name] = conv(raw)
            except (TypeError, ValueError):
                raise InputError(
                    f"--fine-tune-param {name}={raw!r}: expected {conv.__name__}"
                ) from None
        opts = cls(every=int(every), **values)
        if opts.every < 0:
            raise InputError(f"--fine-tune-every must be >= 0, got {opts.every}")
        for name in ("buffer", "steps", "batch_size"):
            if getattr(opts, name) < 1:
                raise InputError(f"--fine-tune-param {name} must be >= 1")
        if not opts.learning_rate > 0:
            raise InputError("--fine-tune-param learning_rate must be > 0")
        if not opts.guard > 0:
            raise InputError("--fine-tune-param guard must be > 0")
        return opts


def make_tuner(model: Any, thresholds: Thresholds, opts: FineTuneOptions | None
               ) -> FineTuner | None:
    """A :class:`FineTuner` for ``model`` when ``opts`` turn fine-tuning on, else None."""
    return FineTuner(model, thresholds, opts) if opts is not None and opts.enabled else None


class FineTuner:
    """Learns a model's recent normal windows; ``observe`` after scoring, ``tune`` when due."""

    def __init__(self, model: Any, thresholds: Thresholds, opts: FineTuneOptions) -> None:
        import keras

        self.model = model  # a KerasAutoencoder
        self.thresholds = thresholds
        self.opts = opts
        self._ring = np.zeros((opts.buffer, model.window, model.n_features), np.float32)
        self._filled = 0
        self._next = 0
        self._since = 0
        self._rng = np.random.default_rng(opts.seed)
        self.rounds = 0
        self.learnt = 0  # windows that passed the guard
        self.refused = 0  # windows kept out by the guard
        self.last_loss = float("nan")
        model.model.compile(optimizer=keras.optimizers.Adam(opts.learning_rate), loss="mse")

    def observe(self, keys: Sequence[str], windows: np.ndarray, scores: np.ndarray) -> int:
        """Buffer the windows that pass the guard; returns the rounds now due (one per
        ``every`` windows scored since the last round, so the pace does not depend on how
        the windows were batched)."""
        n = len(scores)
        if n == 0:
            return 0
        ok = np.asarray(scores, np.float64) <= self.opts.guard * self.thresholds.for_keys(keys)
        normal = np.asarray(windows, np.float32)[ok]
        self.learnt += len(normal)
        self.refused += n - len(normal)
        cap = len(self._ring)
        normal = normal[-cap:]
        self._ring[(self._next + np.arange(len(normal))) % cap] = normal
        self._next = (self._next + len(normal)) % cap
        self._filled = min(cap, self._filled + len(normal))
        self._since += n
        if self._filled < min(cap, self.opts.batch_size):
            return 0
        return self._since // self.opts.every

    def after_batch(self, keys: Sequence[str], windows: np.ndarray, scores: np.ndarray) -> int:
        """``observe`` a scored batch, then run the rounds it made due; returns their number."""
        due = self.observe(keys, windows, scores)
        if due:
            self.tune(due)
        return due

    def tune(self, rounds: int = 1) -> float:
        """``rounds`` rounds of ``steps`` gradient steps on windows drawn from the buffer."""
        self._since = max(0, self._since - rounds * self.opts.every)
        if self._filled == 0 or rounds < 1:
            return self.last_loss
        loss = 0.0
        for _ in range(self.opts.steps * rounds):
            idx = self._rng.integers(0, self._filled, min(self.opts.batch_size, self._filled))
            x = self._ring[idx]
            out = self.model.model.train_on_batch(x, x)
            loss = float(out[0] if isinstance(out, (list, tuple)) else out)
        self.rounds += rounds
        self.last_loss = loss
        return loss
