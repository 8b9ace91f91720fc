"""Model hot reload: a watcher thread loads and checks a new artifact off the hot path; the
detector swaps it in at its next batch (decider, tuner, incident labels, model metrics)."""

from __future__ import annotations

import logging
import threading

from stream_detector.artifact import Artifact, load_artifact
from stream_detector.decision import Decider, make_decider, resolve_spec
from stream_detector.errors import InputError, ModelStoreError
from stream_detector.finetune import make_tuner
from stream_detector.model_store import ModelSource
from stream_detector.service.base import DetectorBase

log = logging.getLogger(__name__)


class ReloadMixin(DetectorBase):
    """The detector's side of a reload: take a new artifact, swap it in between batches."""

    _pending_art: Artifact | None

    def current_model(self) -> Artifact:
        """The artifact in use from the next batch on (a pending one, else the running one)."""
        return self._pending_art or self.art

    def _make_decider(self, art: Artifact) -> Decider:
        try:
            spec = resolve_spec(art.metadata.get("decision"), self.cfg.decision,
                                self.cfg.decision_params)
            return make_decider(art.thresholds, spec, art.value_ranges,
                                art.periods_at(self.cfg.hop or art.hop))
        except ValueError as exc:
            raise InputError(f"--decision: {exc}") from None

    def offer_model(self, art: Artifact) -> None:
        """Hand over a newly loaded artifact (from the watcher thread); used from the next batch."""
        self._pending_art = art

    def _swap_model(self) -> None:
        art, self._pending_art = self._pending_art, None
        if art is None:
            return
        old = self.art
        try:
            decider = self._make_decider(art)
        except InputError as exc:
            self.metrics.model_reloads.labels(result="refused").inc()
            log.error("new model refused, still serving %s: %s", old.version, exc)
            return
        self.art = art
        self.tuner = make_tuner(art.model, art.thresholds, self.cfg.fine_tune)
        self.tracker.model = art.kind
        self.tracker.model_version = art.version
        self.decider = decider
        self._show_model(art, old)
        self.metrics.model_reloads.labels(result="loaded").inc()
        log.info("model reloaded: %s %s -> %s", art.kind, old.version, art.version)

    def _show_model(self, art: Artifact, old: Artifact | None = None) -> None:
        """The model metrics: which model serves, since when, at what threshold."""
        m = self.metrics
        if old is not None:
            try:
                m.model_info.remove(old.kind, old.version, str(old.window))
            except KeyError:
                pass
        m.model_info.labels(model=art.kind, version=art.version, window=str(art.window)).set(1)
        m.model_loaded_timestamp.set(art.created_at.timestamp())
        m.anomaly_threshold.set(art.thresholds.global_)


class ModelWatcher(threading.Thread):
    """Polls the model source; loads a new valid version off the hot path, refuses a bad one.

    The source (:mod:`stream_detector.model_store`: a directory, or an S3 location) says
    when a new version is there and hands over a local copy it has checked. The new
    artifact must keep the window and feature count (the live buffers depend on them) and
    is warmed up (traced) before the detector switches to it at its next batch.
    """

    def __init__(self, source: ModelSource, interval_s: float, detector: ReloadMixin) -> None:
        super().__init__(name="model-watcher", daemon=True)
        self.source = source
        self.interval_s = interval_s
        self.detector = detector
        self._halt = threading.Event()
        self._unreachable = False  # the source could not be read at the last poll

    def stop(self) -> None:
        self._halt.set()

    def check(self) -> None:
        det = self.detector
        try:
            path = self.source.poll()
        except ModelStoreError as exc:  # no new version to judge: try again at the next poll
            if not self._unreachable:
                log.warning("model source unreachable, still serving %s: %s",
                            det.art.version, exc)
            self._unreachable = True
            return
        except InputError as exc:
            self._refuse(exc)
            return
        if self._unreachable:
            log.info("model source %s reachable again", self.source.location)
            self._unreachable = False
        if path is None:
            return
        try:
            art = load_artifact(path)
            cur = det.current_model()
            if art.version == cur.version:
                return
            if (art.window, art.n_features, art.record_mode) != (
                    cur.window, cur.n_features, cur.record_mode):
                raise InputError(
                    f"{self.source.location}: new model has window {art.window} x "
                    f"{art.n_features} feature(s), the running one {cur.window} x "
                    f"{cur.n_features}: restart to change the window shape")
            art.model.fix_batch_shapes(det.cfg.max_batch)  # also warms the kernels up
        except InputError as exc:
            self._refuse(exc)
            return
        det.offer_model(art)

    def _refuse(self, exc: InputError) -> None:
        det = self.detector
        det.metrics.model_reloads.labels(result="refused").inc()
        log.error("new model refused, still serving %s: %s", det.art.version, exc)

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # never let the watcher die silently
                log.exception("model watcher")
