"""Keras layers of the rankers: Dice, an MLP tower, DIN's activation unit and attention pooling,
and the hashed cross-product features of Wide&Deep's wide part."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

ACTIVATIONS = ("dice", "prelu", "relu")


@keras.saving.register_keras_serializable(package="recsys")
class Dice(keras.layers.Layer):
    """Data-adaptive activation of DIN (Zhou et al. 2018, eq. 9).

    ``f(s) = p(s) * s + (1 - p(s)) * alpha * s`` with
    ``p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + eps))``; the moments are batch statistics in
    training and moving averages at inference (a scale- and centre-free batch normalisation).
    """

    def __init__(self, epsilon: float = 1e-8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        self.epsilon = epsilon
        self.norm = keras.layers.BatchNormalization(center=False, scale=False, epsilon=epsilon)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.alpha = self.add_weight(name="alpha", shape=(input_shape[-1],), initializer="zeros")
        self.norm.build(input_shape)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        p = tf.sigmoid(self.norm(inputs, training=training))
        return p * inputs + (1.0 - p) * self.alpha * inputs

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}


def make_activation(name: str) -> keras.layers.Layer:
    """One of `ACTIVATIONS` as a layer (PReLU and Dice learn their negative slope)."""
    if name == "dice":
        return Dice()
    if name == "prelu":
        return keras.layers.PReLU(shared_axes=None)
    if name == "relu":
        return keras.layers.ReLU()
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


@keras.saving.register_keras_serializable(package="recsys")
class MLP(keras.layers.Layer):
    """Dense tower: ``h_{k+1} = act(W_k h_k + b_k)``, optional dropout, then a linear output.

    ``output_units=0`` returns the last hidden layer instead of a linear output.
    """

    def __init__(
        self,
        hidden_units: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        output_units: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if any(units < 1 for units in hidden_units):
            raise ValueError(f"hidden_units must be positive, got {list(hidden_units)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.hidden_units = list(hidden_units)
        self.activation = activation
        self.dropout = dropout
        self.output_units = output_units
        self.dense_layers = [keras.layers.Dense(units) for units in self.hidden_units]
        self.activations = [make_activation(activation) for _ in self.hidden_units]
        self.dropouts = [keras.layers.Dropout(dropout) for _ in self.hidden_units]
        self.output_layer = keras.layers.Dense(output_units) if output_units else None

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        hidden = self.last_hidden(inputs, training=training)
        return self.output_layer(hidden) if self.output_layer is not None else hidden

    def last_hidden(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """The last hidden layer `h_K`, the input of the linear output (what online learning re-weighs)."""
        hidden = inputs
        for dense, act, drop in zip(self.dense_layers, self.activations, self.dropouts):
            hidden = drop(act(dense(hidden), training=training), training=training)
        return hidden

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "hidden_units": self.hidden_units,
            "activation": self.activation,
            "dropout": self.dropout,
            "output_units": self.output_units,
        }


@keras.saving.register_keras_serializable(package="recsys")
class ActivationUnit(keras.layers.Layer):
    """DIN's local activation unit (Zhou et al. 2018, fig. 2).

    For each behaviour ``e_j`` and candidate ``v_a``:
    ``a_j = MLP([e_j, v_a, e_j - v_a, e_j ⊙ v_a])``, one unnormalised weight per behaviour.
    Pooling (`attention_pooling`) then forms ``sum_j a_j e_j`` with no softmax, so the pooled
    vector's norm keeps the intensity of the user's interest.

    The first layer is applied in its factored form: ``W [e; v; e - v; e ⊙ v] + b =
    A e + C v + P (e ⊙ v) + b`` with ``A = W1 + W3``, ``C = W2 - W3``, ``P = W4`` (the same
    function class), so ``A e`` is computed once per behaviour and ``C v`` once per candidate
    instead of a 4d-wide product for every (behaviour, candidate) pair; behaviours may be given
    once ([1, L, d]) for all candidates of one user.

    ``output``: the paper's unit ends in a linear score, whose sign is not identifiable (the
    tower can use ``-interest`` as well), so weights cannot explain a score. ``"softplus"``
    (default) keeps weights non-negative and unbounded (still no normalisation across
    behaviours); ``"sigmoid"`` bounds each in (0, 1); ``"linear"`` is the paper's. On the planted
    synthetic data softplus also trained to the best AUC of the three.
    """

    OUTPUTS = ("sigmoid", "softplus", "linear")

    def __init__(
        self,
        hidden_units: Sequence[int] = (36,),
        activation: str = "dice",
        output: str = "softplus",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if output not in self.OUTPUTS:
            raise ValueError(f"unknown attention output {output!r}; expected one of {self.OUTPUTS}")
        if not hidden_units or any(units < 1 for units in hidden_units):
            raise ValueError(
                f"hidden_units must be non-empty and positive, got {list(hidden_units)}"
            )
        self.hidden_units = list(hidden_units)
        self.activation = activation
        self.output_kind = output
        first = self.hidden_units[0]
        self.behaviour_projection = keras.layers.Dense(first, name="behaviour_projection")
        self.candidate_projection = keras.layers.Dense(
            first, use_bias=False, name="candidate_projection"
        )
        self.product_projection = keras.layers.Dense(
            first, use_bias=False, name="product_projection"
        )
        self.first_activation = make_activation(activation)
        self.rest = MLP(self.hidden_units[1:], activation=activation, output_units=1, name="rest")

    def call(
        self, behaviours: tf.Tensor, candidate: tf.Tensor, training: bool | None = None
    ) -> tf.Tensor:
        """``behaviours`` [B, L, d] or [1, L, d], ``candidate`` [B, d] -> weights [B, L]."""
        query = candidate[:, None, :]
        hidden = (
            self.behaviour_projection(behaviours)
            + self.candidate_projection(query)
            + self.product_projection(behaviours * query)
        )
        scores = tf.squeeze(
            self.rest(self.first_activation(hidden, training=training), training=training), axis=-1
        )
        if self.output_kind == "sigmoid":
            return tf.sigmoid(scores)
        return tf.nn.softplus(scores) if self.output_kind == "softplus" else scores

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "hidden_units": self.hidden_units,
            "activation": self.activation,
            "output": self.output_kind,
        }


def attention_pooling(
    behaviours: tf.Tensor, weights: tf.Tensor, mask: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Weighted sum ``sum_j w_j e_j`` over unmasked positions; returns (pooled [B, d], w [B, L]).

    ``behaviours`` [B, L, d] or [1, L, d] (shared by all rows); ``mask`` [B, L] or [1, L].
    """
    weights = weights * tf.cast(mask, weights.dtype)
    return tf.reduce_sum(weights[:, :, None] * behaviours, axis=1), weights


def masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean of ``values`` [B, L, d] over positions where ``mask`` [B, L] is true (0 if none)."""
    weights = tf.cast(mask, values.dtype)
    total = tf.einsum("bl,bld->bd", weights, values)
    count = tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1.0)
    return total / count


def hashed_cross(left: tf.Tensor, right: tf.Tensor, num_buckets: int, tag: str) -> tf.Tensor:
    """Hash bucket of the cross-product feature ``tag:left×right`` (Cheng et al. 2016, eq. 1)."""
    return tf.strings.to_hash_bucket_fast(
        tf.strings.join([tag, left, "×", right], separator="|"), num_buckets
    )


def hashed_id(value: tf.Tensor, num_buckets: int, tag: str) -> tf.Tensor:
    """Hash bucket of a single sparse feature, namespaced by ``tag``."""
    return tf.strings.to_hash_bucket_fast(tf.strings.join([tag, value], separator="|"), num_buckets)
