"""Model kinds by name: each builder takes (window, n_features, **sizes) -> keras.Model."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from stream_detector.errors import ConfigError
from stream_detector.models.base import Builder, KerasAutoencoder
from stream_detector.models.conv1d import build_conv1d, build_conv1d_seq
from stream_detector.models.dense import build_feedforward
from stream_detector.models.lstm import build_bilstm, build_cnn_lstm, build_lstm

BUILDERS: dict[str, Builder] = {
    "lstm": build_lstm,
    "conv1d": build_conv1d,
    "conv1d-seq": build_conv1d_seq,
    "cnn-lstm": build_cnn_lstm,
    "bilstm": build_bilstm,
    "feedforward": build_feedforward,
}
KINDS = tuple(BUILDERS)


def model_params(kind: str) -> dict[str, Any]:
    """The size parameters of ``kind`` and their defaults."""
    sig = inspect.signature(BUILDERS[kind])
    return {n: p.default for n, p in sig.parameters.items() if n not in ("window", "n_features")}


def build(kind: str, window: int, n_features: int,
          params: Mapping[str, Any] | None = None) -> KerasAutoencoder:
    """Build an untrained autoencoder of ``kind``; ``params`` override the default sizes."""
    if kind not in BUILDERS:
        raise ConfigError(f"unknown model {kind!r} (choose from {', '.join(KINDS)})")
    defaults = model_params(kind)
    merged = dict(defaults)
    for name, value in (params or {}).items():
        if name not in defaults:
            raise ConfigError(
                f"model {kind!r} has no parameter {name!r} (it has {', '.join(defaults)})"
            )
        merged[name] = type(defaults[name])(value) if not isinstance(defaults[name], bool) \
            else str(value).lower() in ("1", "true", "yes")
    return KerasAutoencoder(kind, BUILDERS[kind](window, n_features, **merged), window,
                            n_features, merged)


__all__ = ["BUILDERS", "KINDS", "KerasAutoencoder", "build", "model_params"]
