"""Model hot reload: a watcher thread loads and checks a new artifact off the hot path and
hands it over (:meth:`ReloadMixin.offer_model`); the detector takes it at its next batch,
into the shadow (:mod:`.shadow`) or, with ``--shadow-windows 0`` and no gate, serving at
once, and promotes a ready shadow between batches (decider, tuner, model metrics)."""

from __future__ import annotations

import logging
import threading
from collections import deque

from stream_detector.artifact import Artifact, load_artifact
from stream_detector.decision import Decider, make_decider, overlap_of, resolve_spec
from stream_detector.errors import InputError, ModelStoreError
from stream_detector.finetune import make_tuner
from stream_detector.model_store import ModelSource
from stream_detector.service.base import DetectorBase
from stream_detector.service.shadow import Gate, Shadow

log = logging.getLogger(__name__)


class ReloadMixin(DetectorBase):
    """The detector's side of a reload: take a new artifact, shadow it, promote it."""

    _pending_art: Artifact | None
    _shadow: Shadow | None
    _gate: Gate | None
    # candidates refused in shadow (gate, failure): (candidate, why, serving version),
    # for the watcher to persist off the hot path
    refusals: deque[tuple[Artifact, str, str]]

    def _init_reload(self) -> None:
        self._pending_art = None
        self._shadow = None
        self.refusals = deque()
        cfg = self.cfg
        self._gate = None
        if cfg.promotion_gate == "backtest":
            self._gate = Gate(cfg.gate_input, cfg.gate_format, cfg.gate_margin, cfg.max_batch,
                              cfg.timestamp_policy, cfg.decision, cfg.decision_params,
                              cfg.gaps)

    def current_model(self) -> Artifact:
        """The newest artifact taken over (a pending one, else the shadow's, else the one
        serving): the watcher compares a new version against it."""
        if self._pending_art is not None:
            return self._pending_art
        return self._shadow.art if self._shadow is not None else self.art

    def _make_decider(self, art: Artifact) -> Decider:
        try:
            spec = resolve_spec(art.metadata.get("decision"), self.cfg.decision,
                                self.cfg.decision_params)
            hop = self.cfg.hop or art.hop
            return make_decider(art.thresholds, spec, art.value_ranges, art.periods_at(hop),
                                overlap_of(art.window, hop))
        except ValueError as exc:
            raise InputError(f"--decision: {exc}") from None

    def offer_model(self, art: Artifact) -> None:
        """Hand over a newly loaded artifact (from the watcher thread); taken at the next batch."""
        self._pending_art = art

    def _swap_model(self) -> None:
        """Take the pending artifact: into the shadow, or serving at once when no shadow
        windows and no gate are asked (called between batches)."""
        art, self._pending_art = self._pending_art, None
        if art is None:
            return
        old = self._shadow
        if old is not None:  # a newer candidate replaces the one in shadow
            self._shadow = None
            old.close()
            log.info("shadow %s replaced by %s before promotion", old.art.version, art.version)
        if art.version == self.art.version:
            return  # back to the serving version: nothing to shadow
        # a candidate's failure is a refusal, never the loop's
        try:
            decider = self._make_decider(art)
            need = self.cfg.shadow_windows
            if need <= 0 and self._gate is None:
                self._promote(art, decider)
                self.metrics.model_reloads.labels(result="loaded").inc()
                return
            sh = Shadow(art, decider, need, self.metrics, self.cfg.shadow_coverage,
                        self.cfg.shadow_max_s, self.buffer.__contains__)
            if self._gate is not None:
                sh.start_gate(self._gate, self.art)
        except Exception as exc:
            self.metrics.model_reloads.labels(result="refused").inc()
            log.error("new model %s refused, still serving %s: %s", art.version,
                      self.art.version, " ".join(str(exc).split())[:300] or repr(exc))
            return
        self._shadow = sh
        self.metrics.model_reloads.labels(result="loaded").inc()
        log.info("model %s %s in shadow beside %s: promoted once every key it scores has "
                 "%d window(s)%s", art.kind, art.version, self.art.version, need,
                 " and the backtest gate passed" if self._gate is not None else "")

    def _check_shadow(self) -> None:
        """Between batches: promote a ready shadow, drop one its gate refused."""
        sh = self._shadow
        if sh is None:
            return
        if sh.refused:
            self._refuse_shadow(sh)
            return
        if sh.ready():
            try:
                self._promote(sh.art, sh.decider)
            except Exception as exc:
                sh.fail("its promotion", exc)
                self._refuse_shadow(sh)
                return
            self._shadow = None
            sh.close(promoted=True)
            if sh.gated:
                log.info("promotion gate passed for %s: %s", sh.art.version, sh.gate_detail)
            done, seen = sh.keys_ready()
            if sh.need > 0 and done < seen:
                log.warning("model %s promoted with %d of %d key(s) warm (%s): the others "
                            "start cold", sh.art.version, done, seen,
                            f"--shadow-coverage {sh.coverage:g}" if done >= sh.coverage * seen
                            else f"--shadow-max-s {sh.max_s:g} passed")

    def _refuse_shadow(self, sh: Shadow) -> None:
        """The shadow's candidate is refused (its gate, or a failure): dropped, counted, and
        the refusal kept where the next start sees it (by the watcher)."""
        self._shadow = None
        sh.close()
        self.metrics.model_reloads.labels(result="refused").inc()
        log.error("model %s refused (%s), still serving %s: %s", sh.art.version,
                  "failed in shadow" if sh.failure is not None else "promotion gate",
                  self.art.version, sh.detail)
        self.refusals.append((sh.art, sh.detail, self.art.version))

    def _reload_due(self) -> bool:
        """Whether the next loop turn must submit (even an empty batch): a model was
        handed over, or the shadow is ready to serve or refused."""
        sh = self._shadow
        return self._pending_art is not None or (
            sh is not None and (sh.refused or sh.ready()))

    def _forget_shadow(self, key: str) -> None:
        """``key`` left this replica: the shadow forgets it too."""
        if self._shadow is not None:
            self._shadow.forget(key)

    def _promote(self, art: Artifact, decider: Decider) -> None:
        """``art`` serves from the next batch on, deciding with ``decider`` (the shadow's,
        warm); batches in flight finish with the model and decider that scored them."""
        tuner = make_tuner(art.model, art.thresholds, self.cfg.fine_tune)
        old = self.art
        self.art = art
        self.tuner = tuner
        self.decider = decider
        self._show_model(art, old)
        self.metrics.model_reloads.labels(result="promoted").inc()
        log.info("model promoted: %s %s -> %s", art.kind, old.version, art.version)

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
    artifact (checked whole by ``load_artifact``) must keep the window, the features (their
    names and order), the hop and the record mode (the live buffers, the decoder and the
    events depend on them) and is warmed up (traced) before the detector switches to it
    at its next batch. Any failure of the candidate is a refusal (counted), never the
    watcher's or the loop's. Refusals of the shadow are persisted here, off the hot path.
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
        while det.refusals:
            art, why, serving = det.refusals.popleft()
            try:
                self.source.persist_refusal(art.version, str(art.metadata["model_sha256"]),
                                            why, serving)
            except Exception:  # never the watcher's end
                log.exception("keeping the refusal of %s", art.version)
        try:
            path = self.source.poll({det.art.version, det.current_model().version})
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
            if art.version == det.current_model().version:
                return
            self._fits(art)
            art.model.fix_batch_shapes(det.cfg.max_batch)  # also warms the kernels up
        except Exception as exc:  # any failure of a candidate is its refusal
            try:
                self.source.refused(path)
            finally:
                self._refuse(exc)
            return
        det.offer_model(art)

    def _fits(self, art: Artifact) -> None:
        """Refuse (InputError) a candidate the running detector cannot switch to."""
        det = self.detector
        cur = det.art
        hop = det.cfg.hop or art.hop
        diff = []
        if (art.window, art.n_features) != (cur.window, cur.n_features):
            diff.append(f"window {art.window} x {art.n_features} feature(s), the running "
                        f"one {cur.window} x {cur.n_features}")
        elif art.features != cur.features:
            diff.append(f"features {art.features}, the running one {cur.features}")
        if hop != det.hop:
            diff.append(f"hop {hop}, the running one {det.hop}")
        if art.record_mode != cur.record_mode:
            diff.append(f"record mode {art.record_mode}, the running one {cur.record_mode}")
        if diff:
            raise InputError(f"{self.source.location}: new model {art.version} has "
                             f"{'; '.join(diff)}: restart to change them")

    def _refuse(self, exc: Exception) -> None:
        det = self.detector
        det.metrics.model_reloads.labels(result="refused").inc()
        reason = " ".join(str(exc).split())[:500] or type(exc).__name__
        log.error("new model refused, still serving %s: %s", det.art.version, reason)

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # never let the watcher die silently
                log.exception("model watcher")
