"""Model kinds by name: each builder takes (window, n_features, **sizes) -> keras.Model."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from stream_detector.errors import ConfigError
from stream_detector.models.base import Builder, KerasAutoencoder
from stream_detector.models.conv1d import build_conv1d
from stream_detector.models.dense import build_feedforward
from stream_detector.models.lstm import build_bilstm, build_cnn_lstm, build_lstm

BUILDERS: dict[str, Builder] = {
    "lstm": build_lstm,
    "conv1d": build_conv1d,
    "cnn-lstm": build_cnn_lstm,
    "bilstm": build_bilstm,
    "feedforward": build_feedforward,
}
KINDS = tuple(BUILDERS)
#: parameters of every kind that change how a window is scored, not the network
SCORING_PARAMS: dict[str, Any] = {"score_last": 0}


def model_params(kind: str) -> dict[str, Any]:
    """The size parameters of ``kind`` and their defaults."""
    sig = inspect.signature(BUILDERS[kind])
    return {n: p.default for n, p in sig.parameters.items() if n not in ("window", "n_features")}


def build(kind: str, window: int, n_features: int,
          params: Mapping[str, Any] | None = None) -> KerasAutoencoder:
    """Build an untrained autoencoder of ``kind``; ``params`` override the default sizes.

    ``params`` may also set the scoring parameters (:data:`SCORING_PARAMS`, any kind);
    they are kept in ``params`` (hence in the artifact) only when given.
    """
    if kind not in BUILDERS:
        raise ConfigError(f"unknown model {kind!r} (choose from {', '.join(KINDS)})")
    sizes_default = model_params(kind)
    defaults = {**sizes_default, **SCORING_PARAMS}
    merged = dict(sizes_default)
    for name, value in (params or {}).items():
        if name not in defaults:
            raise ConfigError(
                f"model {kind!r} has no parameter {name!r} (it has {', '.join(defaults)})"
            )
        merged[name] = type(defaults[name])(value) if not isinstance(defaults[name], bool) \
            else str(value).lower() in ("1", "true", "yes")
    if not 0 <= merged.get("score_last", 0) <= window:
        raise ConfigError(f"model parameter score_last must be in [0, {window}]")
    sizes = {k: v for k, v in merged.items() if k not in SCORING_PARAMS}
    return KerasAutoencoder(kind, BUILDERS[kind](window, n_features, **sizes), window,
                            n_features, merged)


__all__ = ["BUILDERS", "KINDS", "SCORING_PARAMS", "KerasAutoencoder", "build", "model_params"]
