"""Recurrent autoencoders: ``lstm``, ``bilstm`` and ``cnn-lstm`` (keras-anomaly-detection design)."""

from __future__ import annotations

import keras
from keras import layers


def _head(x: keras.KerasTensor, window: int, n_features: int) -> keras.KerasTensor:
    x = layers.Dense(window * n_features, name="decoder")(x)
    return layers.Reshape((window, n_features), name="reconstruction")(x)


def build_lstm(window: int, n_features: int, units: int = 128, unroll: bool = False) -> keras.Model:
    """LSTM(units) -> Dense(window * n_features)."""
    inp = keras.Input((window, n_features), name="window")
    x = layers.LSTM(int(units), unroll=bool(unroll), name="encoder")(inp)
    return keras.Model(inp, _head(x, window, n_features), name="lstm_autoencoder")


def build_bilstm(window: int, n_features: int, units: int = 64, unroll: bool = False) -> keras.Model:
    """Bidirectional(LSTM(units)) -> Dense(window * n_features)."""
    inp = keras.Input((window, n_features), name="window")
    x = layers.Bidirectional(layers.LSTM(int(units), unroll=bool(unroll)), name="encoder")(inp)
    return keras.Model(inp, _head(x, window, n_features), name="bilstm_autoencoder")


def build_cnn_lstm(
    window: int, n_features: int, filters: int = 256, kernel_size: int = 5, pool: int = 4,
    units: int = 64, unroll: bool = False,
) -> keras.Model:
    """Conv1D(filters, kernel) -> MaxPool1D(pool) -> LSTM(units) -> Dense(window * n_features)."""
    inp = keras.Input((window, n_features), name="window")
    x = layers.Conv1D(int(filters), int(kernel_size), activation="relu", padding="same",
                      name="conv")(inp)
    x = layers.MaxPool1D(max(1, min(int(pool), window)), name="pool")(x)
    x = layers.LSTM(int(units), unroll=bool(unroll), name="encoder")(x)
    return keras.Model(inp, _head(x, window, n_features), name="cnn_lstm_autoencoder")
