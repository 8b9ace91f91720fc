"""Convolutional autoencoder ``conv1d`` (keras-anomaly-detection design)."""

from __future__ import annotations

import keras
from keras import layers


def build_conv1d(
    window: int, n_features: int, filters: int = 256, kernel_size: int = 5
) -> keras.Model:
    """Conv1D(filters, kernel, relu, same) -> GlobalMaxPool1D -> Dense(window * n_features)."""
    inp = keras.Input((window, n_features), name="window")
    x = layers.Conv1D(int(filters), int(kernel_size), activation="relu", padding="same",
                      name="conv")(inp)
    x = layers.GlobalMaxPool1D(name="pool")(x)
    x = layers.Dense(window * n_features, name="decoder")(x)
    out = layers.Reshape((window, n_features), name="reconstruction")(x)
    return keras.Model(inp, out, name="conv1d_autoencoder")
