"""Feed-forward autoencoder ``feedforward`` for tabular records (window 1) or flat windows."""

from __future__ import annotations

import keras
from keras import layers, regularizers


def build_feedforward(
    window: int, n_features: int, encoding_dim: int = 0, l1: float = 1e-4,
    noise: float = 0.0, dropout: float = 0.0,
) -> keras.Model:
    """Dense(enc, tanh, L1 activity) -> Dense(enc/2, relu) -> Dense(enc/2, tanh) -> Dense(input).

    ``noise`` > 0 adds Gaussian noise of that standard deviation to the (scaled) input while
    training (a denoising autoencoder); ``dropout`` > 0 drops that fraction of the encoder's
    units while training. Both are off at inference, and at 0 the layers are not built.
    ``encoding_dim`` 0 (the default) ties the width to the input: half the input width,
    clamped to 8..32 (docs/quality.md, "ODDS", has its results).
    """
    enc = int(encoding_dim)
    if enc <= 0:
        enc = min(32, max(8, window * n_features // 2))
    inp = keras.Input((window, n_features), name="window")
    x = layers.Flatten(name="flatten")(inp)
    if noise > 0:
        x = layers.GaussianNoise(float(noise), name="input_noise")(x)
    x = layers.Dense(enc, activation="tanh", activity_regularizer=regularizers.L1(float(l1)),
                     name="encoder")(x)
    if dropout > 0:
        x = layers.Dropout(float(dropout), name="encoder_dropout")(x)
    x = layers.Dense(max(1, enc // 2), activation="relu", name="bottleneck")(x)
    x = layers.Dense(max(1, enc // 2), activation="tanh", name="decoder_hidden")(x)
    x = layers.Dense(window * n_features, name="decoder")(x)
    out = layers.Reshape((window, n_features), name="reconstruction")(x)
    return keras.Model(inp, out, name="feedforward_autoencoder")
