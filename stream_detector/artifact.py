"""The versioned model artifact: ``model.keras`` + ``metadata.json`` in one directory.

``metadata.json`` carries everything needed to score without the training data: model
kind and sizes, window, hop, features, scalers, thresholds, a training summary, library
versions, created_at and the sha256 of ``model.keras``. Loading checks all of it and
refuses a damaged or mismatched artifact with an :class:`ArtifactError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from stream_detector.errors import ArtifactError, ShapeMismatch
from stream_detector.scaling import ScalerSet
from stream_detector.threshold import Thresholds

SCHEMA_VERSION = 1
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
    """Read and check ``metadata.json`` (shape of the document only)."""
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
    if not isinstance(meta, dict):
        raise ArtifactError(f"{meta_path}: expected a JSON object")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(
            f"{meta_path}: schema_version {meta.get('schema_version')!r} is not supported "
            f"(this build reads {SCHEMA_VERSION})"
        )
    for field, typ in _REQUIRED.items():
        if not isinstance(meta.get(field), typ):
            raise ArtifactError(f"{meta_path}: field {field!r} missing or not a {typ.__name__}")
    try:
        ScalerSet.from_dict(meta["scaler"])
        Thresholds.from_dict(meta["threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{meta_path}: bad scaler or threshold section ({exc})") from None
    if len(meta["features"]) != meta["n_features"]:
        raise ArtifactError(f"{meta_path}: 'features' does not have n_features entries")
    return meta


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
