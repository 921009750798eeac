"""Logistic-regression baseline: ``p = sigmoid(b + w_item + w_category + mean_j w_hist_cat_j + w·dense)``.

Sparse ids are hashed into one weight table. It has no cross-product features on purpose: it is
the "what do marginal effects alone buy" baseline the deep models are compared against.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from models.ranking import samples
from models.ranking.base import Inputs, Ranker
from models.ranking.features import PAD, FeatureSpec
from models.ranking.layers import hashed_id, masked_mean


class LogisticRegression(Ranker):
    """Linear model over hashed sparse ids and standardised dense features."""

    kind = "lr"

    def __init__(
        self, spec: FeatureSpec, buckets: int = 2**18, learning_rate: float = 1e-2, **kwargs: Any
    ) -> None:
        super().__init__(spec, learning_rate=learning_rate, **kwargs)
        if buckets < 2:
            raise ValueError(f"buckets must be >= 2, got {buckets}")
        self.buckets = buckets
        self.weights_table = keras.layers.Embedding(
            buckets, 1, embeddings_initializer="zeros", name="weights"
        )
        self.dense_weights = keras.layers.Dense(1, kernel_initializer="zeros", name="dense_weights")

    def forward(self, inputs: Inputs, training: bool = False) -> tuple[tf.Tensor, None]:
        history = inputs[samples.HIST_CATEGORIES]
        item = self.weights_table(hashed_id(inputs[samples.ITEM_ID], self.buckets, "item"))
        category = self.weights_table(hashed_id(inputs[samples.ITEM_CATEGORY], self.buckets, "cat"))
        hist = masked_mean(
            self.weights_table(hashed_id(history, self.buckets, "hist_cat")), history != PAD
        )
        logit = item + category + hist + self.dense_weights(self.dense(inputs))
        return tf.squeeze(logit, axis=-1), None

    def params(self) -> dict[str, Any]:
        return {**super().params(), "buckets": self.buckets}
