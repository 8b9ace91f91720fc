"""The autoencoder protocol, its one Keras-backed implementation, and batched inference.

Every model maps a batch of windows (N, T, F) to their reconstruction (N, T, F); the
score of a window is its root-mean-square reconstruction error (the L2 norm of the
residual divided by sqrt(T * F), so scores compare across window sizes). Keras code
stays in this package.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# what TensorFlow's native libraries print on import on CPUs where oneDNN's custom
# operations are on: an INFO notice, logged through absl before its logging is set up,
# which TF_CPP_MIN_LOG_LEVEL does not silence (tensorflow/tensorflow#79029)
_IMPORT_NOTICES = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|\] oneDNN custom operations are on\."
)


@contextmanager
def _without_import_notices() -> Iterator[None]:
    """Drop TensorFlow's import notices from stderr (fd 2) unless INFO logs are wanted
    (``TF_CPP_MIN_LOG_LEVEL`` 0), so that a command's error stays one line. Whatever else
    the import writes there is passed on once it is done."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") in ("", "0"):
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to guard
        yield
        return
    with tempfile.TemporaryFile() as caught:
        sys.stderr.flush()
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines(keepends=True):
                if not _IMPORT_NOTICES.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


with _without_import_notices():
    import keras
    import tensorflow as tf

import numpy as np  # noqa: E402

from stream_detector.explain import Explained  # noqa: E402

DEFAULT_BUCKETS = tuple(2**i for i in range(13))  # 1, 2, 4, ... 4096
# kinds scored through XLA: it fuses a recurrent layer's per-step ops into one program;
# the convolution runs faster on the plain graph (scripts/bench.py compares them)
XLA_KINDS = frozenset({"lstm", "bilstm", "cnn-lstm"})

Builder = Callable[..., keras.Model]


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (the
    CPU limit of a Kubernetes pod), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def plan_threads(workers: int = 0, threads: int = 0) -> tuple[int, int]:
    """(inference workers, TensorFlow intra-op threads per call); 0 means automatic.

    Automatic: one worker per CPU (at most 4), each call running on the CPUs the workers
    leave (one each on a machine with up to 4). Calls in parallel on one thread each beat
    one call on every thread: TensorFlow's sharding of these small kernels leaves cores
    idle (``scripts/bench.py`` measures both).
    """
    cpus = available_cpus()
    w = workers if workers > 0 else min(cpus, 4)
    t = threads if threads > 0 else max(1, cpus // w)
    return w, t


def set_threads(intra_op: int, workers: int = 1) -> None:
    """Size TensorFlow's thread pools for ``workers`` concurrent calls of ``intra_op``
    threads each (call before any model is built or loaded)."""
    inter_op = max(1, workers)
    cfg = tf.config.threading
    if (cfg.get_intra_op_parallelism_threads(), cfg.get_inter_op_parallelism_threads()) == (
            intra_op, inter_op):
        return
    try:
        cfg.set_intra_op_parallelism_threads(intra_op)
        cfg.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError as exc:  # TensorFlow already ran in this process (tests, a library)
        logging.getLogger(__name__).warning("TensorFlow threads stay as they are: %s", exc)


class Autoencoder(Protocol):
    """What the pipeline needs from a model (River-style: a narrow, batched protocol)."""

    kind: str
    window: int
    n_features: int

    def fit(self, windows: np.ndarray, **kwargs: Any) -> dict[str, list[float]]: ...

    def reconstruct(self, windows: np.ndarray) -> np.ndarray: ...

    def score_batch(self, windows: np.ndarray) -> np.ndarray: ...

    def explain_batch(self, windows: np.ndarray) -> Explained: ...

    def fix_batch_shapes(self, size: int) -> tuple[int, ...]: ...

    def save(self, path: Path) -> None: ...


class BatchedScorer:
    """One compiled TensorFlow function for (N, T, F) -> per-window error (N,), and one
    that returns beside it what explains the error (:meth:`explain`).

    The input signature is fixed with a free batch dimension, and batches are zero-padded
    up to one of a few bucket sizes, so kernels see a handful of shapes and the function
    is traced exactly once. ``traces`` counts traces (a test asserts it stays at 1).
    With ``jit`` the function is compiled by XLA (once per batch shape, on first use).
    ``forward``: the model's inference written out (the recurrent kinds' fused loop,
    ``lstm.fused_forward``) in place of calling the Keras model.
    """

    def __init__(
        self, model: keras.Model, window: int, n_features: int,
        buckets: Sequence[int] = DEFAULT_BUCKETS, jit: bool = False,
        forward: Callable[[tf.Tensor], tf.Tensor] | None = None,
    ) -> None:
        self.window = window
        self.n_features = n_features
        self.buckets = tuple(sorted(buckets))
        self.traces = 0
        spec = tf.TensorSpec((None, window, n_features), tf.float32)

        def run(x: tf.Tensor) -> tf.Tensor:
            return forward(x) if forward is not None else model(x, training=False)

        def errors(x: tf.Tensor) -> tf.Tensor:
            self.traces += 1  # Python side effect: runs only while tracing
            y = run(x)
            return tf.sqrt(tf.reduce_mean(tf.square(x - y), axis=[1, 2]))

        def recon(x: tf.Tensor) -> tf.Tensor:
            return run(x)

        def explain(x: tf.Tensor) -> tuple[tf.Tensor, ...]:
            self.traces += 1
            y = run(x)
            sq = tf.square(x - y)
            return (tf.sqrt(tf.reduce_mean(sq, axis=[1, 2])), y[:, -1, :],
                    tf.reduce_sum(sq, axis=1), tf.reduce_sum(sq, axis=2))

        self.jit = jit
        self.forward = forward
        self._errors = tf.function(errors, input_signature=[spec], jit_compile=jit)
        self._recon = tf.function(recon, input_signature=[spec], jit_compile=jit)
        self._explain = tf.function(explain, input_signature=[spec], jit_compile=jit)
        self._traced: dict[Any, Any] = {}

    def _concrete(self, fn: Any) -> Any:
        """The function's one trace, called directly: a call skips the argument binding and
        trace lookup of ``tf.function``, Python work that would otherwise run on every call)."""
        cf = self._traced.get(fn)
        if cf is None:
            cf = self._traced[fn] = fn.get_concrete_function()
        return cf

    def _bucket(self, n: int) -> int:
        for b in self.buckets:
            if n <= b:
                return b
        return self.buckets[-1]

    def _run(self, fn: Any, windows: np.ndarray, shape: int | None = None
             ) -> list[np.ndarray]:
        """``fn``'s outputs (one or a tuple) for ``windows``, chunked and padded to the
        batch shapes, each cut back to the windows given."""
        x = np.asarray(windows, dtype=np.float32)
        if x.ndim != 3 or x.shape[1:] != (self.window, self.n_features):
            from stream_detector.errors import ShapeMismatch

            raise ShapeMismatch(
                f"expected windows of shape (N, {self.window}, {self.n_features}), got {x.shape}"
            )
        n = x.shape[0]
        if not n:
            return [np.zeros((0, *s), np.float32) for s in self._shapes(fn)]
        outs: list[list[np.ndarray]] = []
        top = shape or self.buckets[-1]
        for start in range(0, n, top):
            chunk = x[start : start + top]
            m = chunk.shape[0]
            b = shape or self._bucket(m)
            if b > m:
                chunk = np.concatenate([chunk, np.zeros((b - m,) + chunk.shape[1:], np.float32)])
            got = self._concrete(fn)(tf.constant(chunk))
            outs.append([t.numpy()[:m] for t in (got if isinstance(got, tuple) else (got,))])
        return [np.concatenate(parts) for parts in zip(*outs)] if len(outs) > 1 else outs[0]

    def _shapes(self, fn: Any) -> list[tuple[int, ...]]:
        """Per output of ``fn``, its shape beyond the batch."""
        t, f = self.window, self.n_features
        if fn is self._errors:
            return [()]
        if fn is self._recon:
            return [(t, f)]
        return [(), (f,), (f,), (t,)]

    def __call__(self, windows: np.ndarray, shape: int | None = None) -> np.ndarray:
        """Reconstruction error of each window, float64 (N,); ``shape`` forces one batch
        shape (chunks of that many windows, the last zero-padded) instead of the buckets."""
        return self._run(self._errors, windows, shape)[0].astype(np.float64)

    def reconstruct(self, windows: np.ndarray, shape: int | None = None) -> np.ndarray:
        return self._run(self._recon, windows, shape)[0]

    def explain(self, windows: np.ndarray, shape: int | None = None) -> Explained:
        """The errors of :meth:`__call__` and, from the same call, each window's newest
        point as reconstructed and its squared error per feature and per step."""
        err, expected, features, steps = self._run(self._explain, windows, shape)
        return Explained(err.astype(np.float64), expected, features, steps)


def candidate_shapes(size: int, smallest: int = 8) -> list[int]:
    """Batch shapes below ``size`` worth serving at: 8, 12, 16, 24, 32, 40, 48, 56, 64, 80,
    96, 112, 128, 160, ... (< size): steps of a half up to 32, of a quarter from there, so a
    batch of more than 32 windows is padded by less than a fifth where the shapes pass
    :meth:`KerasAutoencoder.fix_batch_shapes`. Each shape costs a compilation at start-up
    (under a second for the Keras graphs; the recurrent kinds' fused loop tries fewer)."""
    out, b = set(), smallest
    while b < size:
        out.add(b)
        for q in (1, 2, 3) if b >= 32 else (2,):
            out.add(b + b * q // 4)
        b *= 2
    return sorted(s for s in out if s < size)


def load_keras_model(path: Path) -> keras.Model:
    """Load a ``.keras`` file uncompiled, with safe_mode (no arbitrary code from the file)."""
    return keras.saving.load_model(path, compile=False, safe_mode=True)


class KerasAutoencoder:
    """A Keras model with the autoencoder protocol."""

    def __init__(
        self, kind: str, model: keras.Model, window: int, n_features: int,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.model = model
        self.window = window
        self.n_features = n_features
        self.params = dict(params or {})
        self._scorer: BatchedScorer | None = None

    @property
    def scorer(self) -> BatchedScorer:
        if self._scorer is None:
            self._scorer = self._new_scorer(DEFAULT_BUCKETS)
        return self._scorer

    def _new_scorer(self, buckets: Sequence[int]) -> BatchedScorer:
        from stream_detector.models.lstm import fused_forward

        return BatchedScorer(self.model, self.window, self.n_features, buckets,
                             jit=self.kind in XLA_KINDS,
                             forward=fused_forward(self.kind, self.model))

    def fit(
        self,
        windows: np.ndarray,
        epochs: int = 20,
        batch_size: int = 64,
        validation_split: float = 0.1,
        patience: int = 3,
        learning_rate: float = 1e-3,
        verbose: int = 0,
        seed: int | None = None,
    ) -> dict[str, list[float]]:
        """Fit the model to reconstruct ``windows`` (N, T, F); early stopping on validation loss."""
        x = np.asarray(windows, dtype=np.float32)
        rng = np.random.default_rng(seed)
        x = x[rng.permutation(len(x))]  # so the validation split is not the last series
        use_val = validation_split > 0 and len(x) >= 20
        self.model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
        monitor = "val_loss" if use_val else "loss"
        callbacks = [
            keras.callbacks.EarlyStopping(
                monitor=monitor, patience=patience, restore_best_weights=True, min_delta=1e-5
            )
        ]
        hist = self.model.fit(
            x, x, epochs=epochs, batch_size=batch_size,
            validation_split=validation_split if use_val else 0.0,
            callbacks=callbacks, verbose=verbose, shuffle=True,
        )
        self._scorer = None
        return {k: [float(v) for v in vs] for k, vs in hist.history.items()}

    def reconstruct(self, windows: np.ndarray) -> np.ndarray:
        return self.scorer.reconstruct(windows)

    def score_batch(self, windows: np.ndarray) -> np.ndarray:
        return self.scorer(windows)

    def explain_batch(self, windows: np.ndarray) -> Explained:
        return self.scorer.explain(windows)

    def fix_batch_shapes(self, size: int, probe: int = 256) -> tuple[int, ...]:
        """Serve at batch shapes whose results do not depend on the batch (the service's mode).

        Kernels may pick different blockings for different batch shapes, so the same window
        can score a few float32 ulps apart when batched with 7 or with 200 others, and a
        window scored again after a restart would give an event that is not byte-identical.
        Every batch is therefore padded to ``size`` or to a smaller shape that was checked,
        here and now, to give bit-identical scores and explanations (what
        :meth:`BatchedScorer.explain` returns, what the service uses) to ``size`` on at
        least ``probe`` random windows (``size`` of them if more, so that every row position
        of every shape is checked: rows can be computed differently by position). Which
        shapes pass depends on the CPU and the model; small shapes let a lightly loaded
        service answer sooner. Running the probe at every shape also warms the kernels up.
        The recurrent kinds' fused loop (``lstm.fused_forward``) takes seconds of XLA
        compilation per shape, so for them only ``size`` / 4, 3/8, 1/2 and 3/4 are tried.
        Returns the shapes kept.
        """
        size = int(size)
        scorer = self._new_scorer((size,))
        fused = scorer.forward is not None
        if fused:  # seconds of compilation a shape: a few coarse ones
            shapes = [b for b in (size // 4, 3 * size // 8, size // 2, 3 * size // 4) if b]
        else:
            shapes = candidate_shapes(size)
        rng = np.random.default_rng(20260)
        probe = max(probe, size)
        x = rng.standard_normal((probe, self.window, self.n_features)).astype(np.float32)
        x *= rng.lognormal(0.0, 1.0, (probe, 1, 1)).astype(np.float32)
        if fused:  # compile the shapes side by side: one XLA compilation is one core
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max(1, min(len(shapes) + 1, available_cpus()))) as pool:
                list(pool.map(lambda b: scorer.explain(x[:b], shape=b), (*shapes, size)))
        want = scorer.explain(x, shape=size)
        keep = [b for b in sorted(set(shapes))
                if all(np.array_equal(got, w)
                       for got, w in zip(scorer.explain(x, shape=b), want))]
        scorer.buckets = (*keep, size)
        self._scorer = scorer
        return scorer.buckets

    def save(self, path: Path) -> None:
        self.model.save(path)
