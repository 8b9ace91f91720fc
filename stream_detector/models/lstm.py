"""Recurrent autoencoders: ``lstm``, ``bilstm`` and ``cnn-lstm`` (keras-anomaly-detection design)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


# -- fused inference ------------------------------------------------------------------------


def _plain_lstm(layer: layers.Layer) -> bool:
    """A Keras LSTM whose inference the fused loop reproduces: default activations, a
    bias, the last state only."""
    cell = getattr(layer, "cell", None)
    return (
        isinstance(layer, layers.LSTM)
        and cell is not None
        and cell.activation is keras.activations.tanh
        and cell.recurrent_activation is keras.activations.sigmoid
        and cell.use_bias
        and not layer.return_sequences
        and not layer.return_state
        and not layer.stateful
    )


def _run_lstm(layer: layers.LSTM, seq: Any) -> Any:
    """The last hidden state of ``layer`` over ``seq`` (N, T, F): the input projection of
    every step in one matmul, then the recurrence unrolled over the fixed T steps, each
    step one (N, units) x (units, 4 units) matmul and the gates (Keras' order: i, f, c, o).
    Reads the layer's variables, so weights tuned later are used."""
    import tensorflow as tf

    cell = layer.cell
    t_steps = int(seq.shape[1])
    xp = tf.einsum("ntf,fg->ntg", seq, cell.kernel) + cell.bias
    if layer.go_backwards:
        xp = tf.reverse(xp, axis=[1])
    h = tf.zeros(tf.stack([tf.shape(seq)[0], cell.units]), seq.dtype)
    c = h
    rk = cell.recurrent_kernel
    for t in range(t_steps):
        z = xp[:, t] + tf.matmul(h, rk)
        i, f, g, o = tf.split(z, 4, axis=1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
    return h


# XLA's compile time grows with the steps written out (seconds per batch shape at 64):
# longer sequences keep Keras' loop
MAX_FUSED_STEPS = 128


def fused_forward(kind: str, model: keras.Model) -> Callable[[Any], Any] | None:
    """Inference for the recurrent kinds with the LSTM loop written out
    (:func:`_run_lstm`): the same reconstruction as ``model(x)`` to float32 rounding, as
    straight-line code that XLA compiles into one program, where Keras runs a loop over
    the steps (``scripts/bench.py`` measures both). None when the
    model is not one of this module's recurrent autoencoders with plain LSTMs, or its LSTM
    runs over more than ``MAX_FUSED_STEPS`` steps."""
    try:
        enc = model.get_layer("encoder")
        head = (model.get_layer("decoder"), model.get_layer("reconstruction"))
        steps = enc.input.shape[1]
    except (ValueError, AttributeError):
        return None
    if steps is None or steps > MAX_FUSED_STEPS:
        return None
    if kind == "bilstm":
        if not (isinstance(enc, layers.Bidirectional) and enc.merge_mode == "concat"
                and _plain_lstm(enc.forward_layer) and _plain_lstm(enc.backward_layer)):
            return None
    elif kind in ("lstm", "cnn-lstm"):
        if not _plain_lstm(enc):
            return None
    else:
        return None

    def forward(x: Any) -> Any:
        import tensorflow as tf

        seq = x
        if kind == "cnn-lstm":
            seq = model.get_layer("pool")(model.get_layer("conv")(x, training=False))
        if kind == "bilstm":
            h = tf.concat([_run_lstm(enc.forward_layer, seq),
                           _run_lstm(enc.backward_layer, seq)], axis=-1)
        else:
            h = _run_lstm(enc, seq)
        return head[1](head[0](h))

    return forward
