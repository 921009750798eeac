"""Deep Interest Network (Zhou et al., "Deep Interest Network for Click-Through Rate
Prediction", KDD 2018).

Items are embedded as ``[e_id ; e_category]`` (tables shared by behaviours and candidate). The
activation unit weighs each past behaviour against the candidate, weighted-sum pooling (no
softmax, padding masked) gives the user's interest for *this* candidate, and
``MLP([interest ; candidate ; dense])`` with Dice/PReLU gives the logit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from models.ranking import samples
from models.ranking.base import Inputs, Ranker
from models.ranking.features import FeatureSpec
from models.ranking.layers import MLP, ActivationUnit, attention_pooling


class DIN(Ranker):
    """DIN ranker; `forward` also returns the attention weight of each behaviour."""

    kind = "din"

    def __init__(
        self,
        spec: FeatureSpec,
        embedding_dim: int = 16,
        attention_units: Sequence[int] = (36,),
        hidden_units: Sequence[int] = (200, 80),
        activation: str = "dice",
        attention_output: str = "softplus",
        dropout: float = 0.0,
        learning_rate: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(spec, learning_rate=learning_rate, **kwargs)
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.embedding_dim = embedding_dim
        self.attention_units = list(attention_units)
        self.hidden_units = list(hidden_units)
        self.activation = activation
        self.attention_output = attention_output
        self.dropout = dropout
        self.item_embedding = keras.layers.Embedding(
            self.item_vocab_size, embedding_dim, name="item_embedding"
        )
        self.category_embedding = keras.layers.Embedding(
            self.category_vocab_size, embedding_dim, name="category_embedding"
        )
        self.attention = ActivationUnit(
            self.attention_units,
            activation=activation,
            output=attention_output,
            name="activation_unit",
        )
        self.tower = MLP(self.hidden_units, activation=activation, dropout=dropout, name="tower")

    def embed_items(self, item_ids: tf.Tensor, categories: tf.Tensor) -> tf.Tensor:
        """``[e_id ; e_category]`` for ids of any shape -> shape + [2d]."""
        return tf.concat(
            [
                self.item_embedding(self.item_lookup(item_ids)),
                self.category_embedding(self.category_lookup(categories)),
            ],
            axis=-1,
        )

    def forward(self, inputs: Inputs, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        history = inputs[samples.HIST_ITEM_IDS]
        behaviours = self.embed_items(history, inputs[samples.HIST_CATEGORIES])
        candidate = self.embed_items(inputs[samples.ITEM_ID], inputs[samples.ITEM_CATEGORY])
        mask = self.item_lookup(history) != 0
        return self._score(inputs, behaviours, candidate, mask, training)

    def forward_request(self, request: Inputs) -> tuple[tf.Tensor, tf.Tensor]:
        """One user's request: logits `w · h + b` over `penultimate_request`'s `h`."""
        hidden, weights = self.penultimate_request(request)
        return self.output_logits(hidden), weights

    def output_logits(self, hidden: tf.Tensor) -> tf.Tensor:
        """The output layer over `h` [N, H]: logits [N]."""
        return tf.squeeze(self.tower.output_layer(hidden), axis=-1)

    def penultimate_request(self, request: Inputs) -> tuple[tf.Tensor, tf.Tensor]:
        """One user's request: the tower's last hidden layer `h(u, i)` [N, H] and the attention.

        The history is looked up and embedded once, not once per candidate. The activation unit
        runs over the history's real length only: training pads to `max_seq_len`, but padded
        positions are masked out of the pooling, so skipping them gives the same scores for a
        fraction of the work with short histories. The attention weights are padded back to
        [candidates, max_seq_len].
        """
        length = self.spec.max_seq_len
        history = request[samples.HIST_ITEM_IDS][-length:]
        behaviours = self.embed_items(history, request[samples.HIST_CATEGORIES][-length:])
        candidate = self.embed_items(request[samples.ITEM_ID], request[samples.ITEM_CATEGORY])
        mask = (self.item_lookup(history) != 0)[None]
        features, weights = self._tower_input(request, behaviours[None], candidate, mask, training=False)
        weights = tf.pad(weights, [[0, 0], [0, length - tf.shape(history)[0]]])
        hidden = self.tower.last_hidden(features, training=False)
        return hidden, tf.broadcast_to(weights, [tf.shape(candidate)[0], length])

    def head(self) -> tuple[tf.Tensor, tf.Tensor]:
        """The output layer over `penultimate_request`'s `h`: weights [H] and bias []."""
        layer = self.tower.output_layer
        return layer.kernel[:, 0], layer.bias[0]

    def _score(
        self,
        inputs: Inputs,
        behaviours: tf.Tensor,
        candidate: tf.Tensor,
        mask: tf.Tensor,
        training: bool,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        features, weights = self._tower_input(inputs, behaviours, candidate, mask, training)
        logits = tf.squeeze(self.tower(features, training=training), axis=-1)
        return logits, weights

    def _tower_input(
        self, inputs: Inputs, behaviours: tf.Tensor, candidate: tf.Tensor, mask: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """`[interest ; candidate ; dense]` and the attention weights."""
        raw_weights = self.attention(behaviours, candidate, training=training)
        interest, weights = attention_pooling(behaviours, raw_weights, mask)
        return tf.concat([interest, candidate, self.dense(inputs)], axis=-1), weights

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "embedding_dim": self.embedding_dim,
            "attention_units": self.attention_units,
            "hidden_units": self.hidden_units,
            "activation": self.activation,
            "attention_output": self.attention_output,
            "dropout": self.dropout,
        }
