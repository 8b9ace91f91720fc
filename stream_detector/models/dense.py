"""Feed-forward autoencoder ``feedforward`` for tabular records (window 1) or flat windows."""

from __future__ import annotations

import keras
from keras import layers, regularizers


def build_feedforward(
    window: int, n_features: int, encoding_dim: int = 14, l1: float = 1e-4
) -> keras.Model:
    """Dense(enc, tanh, L1 activity) -> Dense(enc/2, relu) -> Dense(enc/2, tanh) -> Dense(input)."""
    enc = int(encoding_dim)
    inp = keras.Input((window, n_features), name="window")
    x = layers.Flatten(name="flatten")(inp)
    x = layers.Dense(enc, activation="tanh", activity_regularizer=regularizers.L1(float(l1)),
                     name="encoder")(x)
    x = layers.Dense(max(1, enc // 2), activation="relu", name="bottleneck")(x)
    x = layers.Dense(max(1, enc // 2), activation="tanh", name="decoder_hidden")(x)
    x = layers.Dense(window * n_features, name="decoder")(x)
    out = layers.Reshape((window, n_features), name="reconstruction")(x)
    return keras.Model(inp, out, name="feedforward_autoencoder")
