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


def build_conv1d_seq(
    window: int, n_features: int, filters: int = 32, kernel_size: int = 7,
    dropout: float = 0.2,
) -> keras.Model:
    """A fully convolutional autoencoder that keeps position (keras.io's timeseries design).

    Conv1D(filters, kernel, stride 2) -> Dropout -> Conv1D(filters/2, stride 2) ->
    Conv1DTranspose(filters/2, stride 2) -> Dropout -> Conv1DTranspose(filters, stride 2)
    -> Conv1DTranspose(n_features). Unlike ``conv1d`` (global max pool, then a dense
    decoder), every output step is rebuilt from its own neighbourhood, so the error says
    *where* a window departs from the learnt shapes. A window that is not a multiple of 4
    is zero-padded at the end and the padding cropped from the reconstruction.
    """
    f, k = int(filters), int(kernel_size)
    pad = (-window) % 4
    inp = keras.Input((window, n_features), name="window")
    x = layers.ZeroPadding1D((0, pad), name="pad")(inp) if pad else inp
    x = layers.Conv1D(f, k, strides=2, padding="same", activation="relu", name="enc1")(x)
    if dropout > 0:
        x = layers.Dropout(float(dropout), name="enc_dropout")(x)
    x = layers.Conv1D(max(1, f // 2), k, strides=2, padding="same", activation="relu",
                      name="enc2")(x)
    x = layers.Conv1DTranspose(max(1, f // 2), k, strides=2, padding="same",
                               activation="relu", name="dec1")(x)
    if dropout > 0:
        x = layers.Dropout(float(dropout), name="dec_dropout")(x)
    x = layers.Conv1DTranspose(f, k, strides=2, padding="same", activation="relu",
                               name="dec2")(x)
    x = layers.Conv1DTranspose(n_features, k, padding="same", name="decoder")(x)
    out = layers.Cropping1D((0, pad), name="reconstruction")(x) if pad else x
    return keras.Model(inp, out, name="conv1d_seq_autoencoder")
