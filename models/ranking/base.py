"""The thin base of every ranker: input encoding shared by all models and the request path.

A ranker takes the sample-shaped input dict (see `models.ranking.samples`) and returns one logit
per row. Subclasses write `forward` (logits and, for DIN, attention weights) and may split their
variables between optimizers in `optimizer_groups`.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from models.ranking import samples
from models.ranking.features import PAD, FeatureSpec

Inputs = dict[str, tf.Tensor]
NO_CATEGORY = "\x00no category"


class Ranker(keras.Model):
    """Base ranker: string lookups built from the spec's vocabularies and dense scaling.

    Lookups map `PAD` to 0, unknown ids to 1 (the OOV slot) and known ids to 2.. , so the
    saved model accepts raw string ids at serving.
    """

    kind = "base"

    def __init__(self, spec: FeatureSpec, learning_rate: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not spec.item_vocab:
            raise ValueError("the feature spec has an empty item vocabulary")
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        self.spec = spec
        self.learning_rate = learning_rate
        self.item_lookup = keras.layers.StringLookup(
            vocabulary=list(spec.item_vocab), mask_token=PAD, num_oov_indices=1, name="item_lookup"
        )
        # A catalog without categories has an empty category vocabulary, which a lookup cannot
        # hold: one token no real category can equal keeps the layer (every input maps to PAD/OOV).
        categories = list(spec.category_vocab) or [NO_CATEGORY]
        self.category_lookup = keras.layers.StringLookup(
            vocabulary=categories,
            mask_token=PAD,
            num_oov_indices=1,
            name="category_lookup",
        )
        self.item_vocab_size = len(spec.item_vocab) + 2
        self.category_vocab_size = len(categories) + 2
        count = len(spec.dense_features)
        self._dense_mean = np.asarray(spec.dense_mean or [0.0] * count, np.float32)
        self._dense_std = np.asarray(spec.dense_std or [1.0] * count, np.float32)

    def build(self, input_shape: Any = None) -> None:
        # Sub-layers build on first call; this only tells Keras the model needs no shapes up front.
        self.built = True

    def dense(self, inputs: Inputs) -> tf.Tensor:
        """Standardised dense features [B, D] in the spec's order (D may be 0)."""
        if not self.spec.dense_features:
            return tf.zeros([tf.shape(inputs[samples.ITEM_ID])[0], 0], tf.float32)
        raw = tf.stack(
            [tf.cast(inputs[name], tf.float32) for name in self.spec.dense_features], axis=1
        )
        return (raw - self._dense_mean) / self._dense_std

    def forward(self, inputs: Inputs, training: bool = False) -> tuple[tf.Tensor, tf.Tensor | None]:
        """Logits [B] and attention weights [B, L] (None for models without attention)."""
        raise NotImplementedError

    def call(self, inputs: Inputs, training: bool = False) -> tf.Tensor:
        return self.forward(inputs, training=training)[0]

    def forward_request(self, request: Inputs) -> tuple[tf.Tensor, tf.Tensor | None]:
        """Inference for one user's request (see `expand_request`); models may override it to
        share the per-user work across candidates, with results equal to `forward`."""
        return self.forward(expand_request(request, self.spec.max_seq_len), training=False)

    def optimizer_groups(self) -> list[tuple[keras.optimizers.Optimizer, list[keras.Variable]]]:
        """Optimizers and the variables each updates; default: Adam on everything."""
        return [(keras.optimizers.Adam(self.learning_rate), list(self.trainable_variables))]

    def params(self) -> dict[str, Any]:
        """Hyper-parameters, for the manifest and `get_config` (the spec is saved on its own)."""
        return {"learning_rate": self.learning_rate}

    def get_config(self) -> dict[str, Any]:
        return {**self.params(), "kind": self.kind}


def request_history(request: Inputs, name: str, max_seq_len: int) -> tf.Tensor:
    """The last ``max_seq_len`` entries of one history column [L'], right-padded to [max_seq_len]."""
    history = request[name][-max_seq_len:]
    return tf.pad(history, [[0, max_seq_len - tf.shape(history)[0]]], constant_values=PAD)


def expand_request(request: Inputs, max_seq_len: int) -> Inputs:
    """One user's request -> the batch input dict, one row per candidate.

    ``request`` holds a scalar ``user_id``, the user's history ``hist_item_ids`` /
    ``hist_categories`` [L'] (most recent last), and candidate columns ``item_id``,
    ``item_category`` and each dense feature [N]. History is cut to the last ``max_seq_len``
    items and right-padded, exactly as `models.ranking.dataset.pad_sequences` does for training.
    """
    count = tf.shape(request[samples.ITEM_ID])[0]
    batch = {name: value for name, value in request.items()}
    batch[samples.USER_ID] = tf.fill([count], request[samples.USER_ID])
    for name in samples.SEQUENCE_INPUTS:
        history = request_history(request, name, max_seq_len)
        batch[name] = tf.broadcast_to(history[None, :], [count, max_seq_len])
    return batch
