"""The versioned model artifact: ``model.keras`` + ``metadata.json`` in one directory.

``metadata.json`` carries everything needed to score without the training data: model
kind and sizes, window, hop, features, scalers, thresholds, a training summary, library
versions, created_at and the sha256 of ``model.keras``. Loading checks all of it and
refuses a damaged or mismatched artifact with an :class:`ArtifactError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from stream_detector.errors import ArtifactError, ShapeMismatch
from stream_detector.explain import Explainer
from stream_detector.scaling import ScalerSet
from stream_detector.threshold import Thresholds

SCHEMA_VERSION = 1
#: a version's name (metadata.json's ``version``, an S3 version folder)
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
_REQUIRED = {
    "schema_version": int, "model": str, "version": str, "window": int, "hop": int,
    "n_features": int, "features": list, "scaler": dict, "threshold": dict,
    "model_sha256": str, "created_at": str,
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Artifact:
    """A loaded (or freshly trained) model with everything needed to score."""

    model: Any  # KerasAutoencoder
    scalers: ScalerSet
    thresholds: Thresholds
    metadata: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.metadata["model"])

    @property
    def version(self) -> str:
        return str(self.metadata["version"])

    @property
    def window(self) -> int:
        return int(self.metadata["window"])

    @property
    def hop(self) -> int:
        return int(self.metadata["hop"])

    @property
    def n_features(self) -> int:
        return int(self.metadata["n_features"])

    @property
    def features(self) -> list[str]:
        return list(self.metadata["features"])

    @cached_property
    def explainer(self) -> Explainer:
        """Builds the ``actual``/``expected``/``attribution`` fields of its events."""
        return Explainer(self.features)

    @property
    def value_ranges(self) -> dict[str, tuple[list[float], list[float]]]:
        """Each trained key's smallest and largest value per feature (empty for artifacts
        written before they were kept)."""
        return {k: (v[0], v[1]) for k, v in self.metadata.get("value_range", {}).items()}

    @property
    def periods(self) -> dict[str, int]:
        """Each trained key's period, for the keys that have one (``season.detect_period``;
        empty for artifacts written before periods were kept)."""
        return {k: int(v) for k, v in self.metadata.get("period", {}).items()}

    def periods_at(self, hop: int) -> dict[str, int]:
        """:attr:`periods` for a decider fed windows every ``hop`` points: none when
        ``hop`` exceeds the window (periods count values, and the values between windows
        are never seen)."""
        return self.periods if hop <= self.window else {}

    @property
    def record_mode(self) -> bool:
        return bool(self.metadata.get("record_mode", False))

    @property
    def created_at(self) -> datetime:
        return datetime.fromisoformat(str(self.metadata["created_at"]))


def library_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    from stream_detector import __version__

    return {
        "stream_detector": __version__, "tensorflow": tf.__version__,
        "keras": keras.__version__, "numpy": np.__version__,
        "python": platform.python_version(),
    }


def save_artifact(
    out_dir: str | Path, model: Any, scalers: ScalerSet, thresholds: Thresholds,
    metadata: dict[str, Any],
) -> Artifact:
    """Write the artifact into ``out_dir`` (created if needed; files replaced atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    created = datetime.now(timezone.utc).replace(microsecond=0)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmp_model = Path(tmp) / MODEL_FILE
        model.save(tmp_model)
        digest = sha256_file(tmp_model)
        meta = {
            "schema_version": SCHEMA_VERSION,
            **metadata,
            "version": f"{created:%Y%m%dT%H%M%SZ}-{digest[:8]}",
            "created_at": created.isoformat(),
            "model_sha256": digest,
            "scaler": scalers.to_dict(),
            "threshold": thresholds.to_dict(),
            "libraries": library_versions(),
        }
        tmp_meta = Path(tmp) / METADATA_FILE
        tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
        # model first, metadata last: a reader that sees new metadata sees the new model
        os.replace(tmp_model, out / MODEL_FILE)
        os.replace(tmp_meta, out / METADATA_FILE)
    return Artifact(model=model, scalers=scalers, thresholds=thresholds, metadata=meta)


def read_metadata(model_dir: str | Path) -> dict[str, Any]:
    """Read ``metadata.json`` and check all of it (:func:`check_metadata`)."""
    d = Path(model_dir)
    if not d.is_dir():
        raise ArtifactError(f"{d}: model directory does not exist")
    meta_path = d / METADATA_FILE
    if not meta_path.is_file():
        raise ArtifactError(f"{meta_path}: missing (not a stream-detector model directory?)")
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{meta_path}: not valid JSON ({exc})") from None
    check_metadata(meta, str(meta_path))
    return meta  # type: ignore[no-any-return]


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _numbers(v: Any, n: int) -> bool:
    """``v`` is a list of ``n`` finite numbers."""
    return (isinstance(v, list) and len(v) == n and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
        for x in v))


def check_metadata(meta: Any, where: str) -> None:
    """The one check of an artifact's ``metadata.json`` document (``where`` names it in
    the refusal): every field the serving path reads has its type and shape, so nothing
    read from a loaded :class:`Artifact` can fail later (in the loop, at a reload, at a
    restart). Raises :class:`ArtifactError` with the first problem found."""
    if not isinstance(meta, dict):
        raise ArtifactError(f"{where}: expected a JSON object")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(
            f"{where}: schema_version {meta.get('schema_version')!r} is not supported "
            f"(this build reads {SCHEMA_VERSION})"
        )
    for field, typ in _REQUIRED.items():
        v = meta.get(field)
        if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
            raise ArtifactError(f"{where}: field {field!r} missing or not a {typ.__name__}")

    def bad(field: str, what: str) -> ArtifactError:
        return ArtifactError(f"{where}: field {field!r} {what}")

    nf = meta["n_features"]
    for field in ("window", "hop", "n_features"):
        if meta[field] < 1:
            raise bad(field, f"must be >= 1, got {meta[field]}")
    if not VERSION_NAME.fullmatch(meta["version"]):
        raise bad("version", "must be 1-128 letters, digits, '.', '_' or '-'")
    if not re.fullmatch(r"[0-9a-f]{64}", meta["model_sha256"]):
        raise bad("model_sha256", "is not a sha256 hex digest")
    feats = meta["features"]
    if len(feats) != nf:
        raise ArtifactError(f"{where}: 'features' does not have n_features entries")
    if not all(isinstance(f, str) and f for f in feats) or len(set(feats)) != len(feats):
        raise bad("features", "must be distinct non-empty names")
    try:
        created = datetime.fromisoformat(meta["created_at"])
        created.timestamp()
    except (ValueError, OverflowError, OSError):
        raise bad("created_at", f"is not an ISO-8601 time: {meta['created_at'][:40]!r}"
                  ) from None
    for field, typ in (("record_mode", bool), ("model_params", dict), ("training", dict)):
        if field in meta and not isinstance(meta[field], typ):
            raise bad(field, f"must be a {typ.__name__}")
    try:
        scalers = ScalerSet.from_dict(meta["scaler"])
        thresholds = Thresholds.from_dict(meta["threshold"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{where}: bad scaler or threshold section ({exc})") from None
    for key, sc in [("global", scalers.global_), *scalers.per_key.items()]:
        for part in ("center", "scale"):
            arr = getattr(sc, part)
            if arr.shape != (nf,) or not np.all(np.isfinite(arr)):
                raise bad("scaler", f"{key!r} {part}: expected {nf} finite number(s) (the "
                          f"model's features), got shape {arr.shape}")
        if np.any(sc.scale == 0):
            raise bad("scaler", f"{key!r} scale: has a zero")
    values = [thresholds.global_, *thresholds.per_key.values()]
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise bad("threshold", "values must be finite and >= 0")
    ranges = meta.get("value_range", {})
    if not isinstance(ranges, dict) or not all(
            isinstance(r, list) and len(r) == 2 and _numbers(r[0], nf) and _numbers(r[1], nf)
            for r in ranges.values()):
        raise bad("value_range", f"must map keys to [lo, hi], each {nf} finite number(s)")
    periods = meta.get("period", {})
    if not isinstance(periods, dict) or not all(
            _int(v) and 1 <= v < 2**31 for v in periods.values()):
        raise bad("period", "must map keys to whole numbers >= 1")
    spec = meta.get("decision")
    if spec is not None:
        if not isinstance(spec, dict) or not isinstance(spec.get("method"), str):
            raise bad("decision", "must be an object with a 'method'")
        from stream_detector.decision import decision_spec, make_decider, overlap_of

        rest = {k: v for k, v in spec.items() if k != "method"}
        try:
            typed = decision_spec(spec["method"], rest)
            make_decider(thresholds, typed, {k: (r[0], r[1]) for k, r in ranges.items()},
                         periods, overlap_of(meta["window"], meta["hop"]))
        except (TypeError, ValueError, KeyError) as exc:
            raise bad("decision", f"is refused: {exc}") from None


def check_model_digest(model_dir: str | Path, meta: dict[str, Any], name: str | None = None
                       ) -> None:
    """Raise :class:`ArtifactError` (naming the file, or ``name``) unless ``model.keras``
    hashes to ``meta``'s ``model_sha256``."""
    digest = sha256_file(Path(model_dir) / MODEL_FILE)
    if digest != meta["model_sha256"]:
        raise ArtifactError(
            f"{name or Path(model_dir) / MODEL_FILE}: sha256 {digest[:12]}... does not match "
            f"metadata.json ({meta['model_sha256'][:12]}...): the file is damaged or from "
            "another model")


def load_artifact(model_dir: str | Path) -> Artifact:
    """Load and verify an artifact; raises :class:`ArtifactError` naming the bad file."""
    d = Path(model_dir)
    meta = read_metadata(d)
    model_path = d / MODEL_FILE
    if not model_path.is_file():
        raise ArtifactError(f"{model_path}: missing")
    check_model_digest(d, meta)
    # TensorFlow takes seconds to import: only once the cheap checks have passed (and
    # through models.base, which quiets TensorFlow's C++ logging before the import)
    from stream_detector.models.base import KerasAutoencoder, load_keras_model

    try:
        keras_model = load_keras_model(model_path)
    except Exception as exc:  # keras raises many types for a bad zip / config
        # its messages can span lines (config dumps): keep the CLI's reason to one line
        reason = " ".join(str(exc).split())
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        raise ArtifactError(f"{model_path}: cannot be loaded by Keras ({reason})") from None
    window, nf = int(meta["window"]), int(meta["n_features"])
    in_shape = tuple(keras_model.input_shape[1:])
    out_shape = tuple(keras_model.output_shape[1:])
    if in_shape != (window, nf) or out_shape != (window, nf):
        raise ShapeMismatch(
            f"{model_path}: model maps {in_shape} -> {out_shape}, but metadata.json says "
            f"window {window} x {nf} feature(s)"
        )
    model = KerasAutoencoder(str(meta["model"]), keras_model, window, nf,
                             meta.get("model_params", {}))
    return Artifact(model=model, scalers=ScalerSet.from_dict(meta["scaler"]),
                    thresholds=Thresholds.from_dict(meta["threshold"]), metadata=meta)
