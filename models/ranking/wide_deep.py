"""Wide & Deep (Cheng et al., "Wide & Deep Learning for Recommender Systems", DLRS 2016).

``logit = w_wide · [x ; φ(x)] + w_deep · a_final + b`` where the wide part is a linear model
over hashed sparse ids and cross-product transformations ``φ`` (each recent history category ×
the candidate's category), and the deep part is an MLP over embeddings (candidate id and
category, mean-pooled history) and the dense features. Both are trained jointly: FTRL with L1
on the wide part, Adam on the deep part, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from models.ranking import samples
from models.ranking.base import Inputs, Ranker
from models.ranking.features import PAD, FeatureSpec
from models.ranking.layers import MLP, hashed_cross, hashed_id, masked_mean


def recent_mask(history: tf.Tensor, recent: int) -> tf.Tensor:
    """True on the last ``recent`` non-padding positions of right-padded sequences [B, L]."""
    present = history != PAD
    length = tf.reduce_sum(tf.cast(present, tf.int32), axis=1, keepdims=True)
    positions = tf.range(tf.shape(history)[1])[None, :]
    return present & (positions >= length - recent)


class WideDeep(Ranker):
    """Wide&Deep ranker with hashed crosses in the wide part."""

    kind = "wide_deep"

    def __init__(
        self,
        spec: FeatureSpec,
        embedding_dim: int = 16,
        hidden_units: Sequence[int] = (128, 64),
        wide_buckets: int = 2**18,
        wide_recent: int = 10,
        ftrl_learning_rate: float = 0.1,
        ftrl_l1: float = 1e-4,
        learning_rate: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(spec, learning_rate=learning_rate, **kwargs)
        if wide_buckets < 2 or wide_recent < 1:
            raise ValueError(
                f"need wide_buckets >= 2 and wide_recent >= 1, got {wide_buckets}, {wide_recent}"
            )
        self.embedding_dim = embedding_dim
        self.hidden_units = list(hidden_units)
        self.wide_buckets = wide_buckets
        self.wide_recent = wide_recent
        self.ftrl_learning_rate = ftrl_learning_rate
        self.ftrl_l1 = ftrl_l1
        self.wide_weights = keras.layers.Embedding(
            wide_buckets, 1, embeddings_initializer="zeros", name="wide"
        )
        self.item_embedding = keras.layers.Embedding(
            self.item_vocab_size, embedding_dim, name="item_embedding"
        )
        self.category_embedding = keras.layers.Embedding(
            self.category_vocab_size, embedding_dim, name="category_embedding"
        )
        self.tower = MLP(self.hidden_units, activation="relu", name="deep")

    def wide_logit(self, inputs: Inputs) -> tf.Tensor:
        history = inputs[samples.HIST_CATEGORIES]
        candidate = inputs[samples.ITEM_CATEGORY]
        item = self.wide_weights(hashed_id(inputs[samples.ITEM_ID], self.wide_buckets, "item"))
        category = self.wide_weights(hashed_id(candidate, self.wide_buckets, "cat"))
        crosses = hashed_cross(
            history,
            tf.broadcast_to(candidate[:, None], tf.shape(history)),
            self.wide_buckets,
            "hist_cat",
        )
        cross = masked_mean(self.wide_weights(crosses), recent_mask(history, self.wide_recent))
        return tf.squeeze(item + category + cross, axis=-1)

    def deep_logit(self, inputs: Inputs, training: bool) -> tf.Tensor:
        history = self.item_lookup(inputs[samples.HIST_ITEM_IDS])
        mask = history != 0
        features = tf.concat(
            [
                self.item_embedding(self.item_lookup(inputs[samples.ITEM_ID])),
                self.category_embedding(self.category_lookup(inputs[samples.ITEM_CATEGORY])),
                masked_mean(self.item_embedding(history), mask),
                masked_mean(
                    self.category_embedding(self.category_lookup(inputs[samples.HIST_CATEGORIES])),
                    mask,
                ),
                self.dense(inputs),
            ],
            axis=-1,
        )
        return tf.squeeze(self.tower(features, training=training), axis=-1)

    def forward(self, inputs: Inputs, training: bool = False) -> tuple[tf.Tensor, None]:
        return self.wide_logit(inputs) + self.deep_logit(inputs, training), None

    def optimizer_groups(self) -> list[tuple[keras.optimizers.Optimizer, list[keras.Variable]]]:
        wide = list(self.wide_weights.trainable_variables)
        wide_ids = {id(v) for v in wide}
        deep = [v for v in self.trainable_variables if id(v) not in wide_ids]
        ftrl = keras.optimizers.Ftrl(
            self.ftrl_learning_rate, l1_regularization_strength=self.ftrl_l1
        )
        return [(ftrl, wide), (keras.optimizers.Adam(self.learning_rate), deep)]

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "embedding_dim": self.embedding_dim,
            "hidden_units": self.hidden_units,
            "wide_buckets": self.wide_buckets,
            "wide_recent": self.wide_recent,
            "ftrl_learning_rate": self.ftrl_learning_rate,
            "ftrl_l1": self.ftrl_l1,
        }
