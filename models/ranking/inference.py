"""Compiled scoring: one user against hundreds of candidates in one call, no ``model.predict``.

`compile_scorer` wraps a trained ranker in two `tf.function`s with fixed input signatures:

- ``score_user(request)``: ``user_id`` [], ``hist_item_ids`` / ``hist_categories`` [L']
  (most recent last) and per-candidate ``item_id``, ``item_category`` and dense features [N]
  -> ``{"score": [N] click probabilities, "attention": [N, max_seq_len]}``. The attention row
  of a candidate gives the weight of each of the last ``max_seq_len`` history items (zeros for
  models without attention, and for padding), so the API can say which past items drove a score.
  DIN also returns ``hidden`` [N, H], its tower's last hidden layer `h(u, i)`, and ``head`` [H + 1],
  the output layer's weights and bias (score = σ(head[:H] · h + head[H])), which online learning
  re-weighs (`services.learner`).
- ``score_batch(features)``: the training-shaped dict [B] / [B, L] -> ``{"score": [B]}``.

The same functions are the SavedModel endpoints (see `models.ranking.export`), so the exported
artifact and the in-memory model run identical graphs.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from models.ranking import samples
from models.ranking.base import Inputs, Ranker
from models.ranking.dataset import input_signature


class CompiledScorer:
    """The traced scoring functions of one ranker; ``model`` keeps the weights alive."""

    def __init__(self, model: Ranker) -> None:
        self.model = model
        spec = model.spec
        self.score_user = tf.function(
            self._score_user, input_signature=[input_signature(spec, batch=False)]
        )
        self.score_batch = tf.function(
            self._score_batch, input_signature=[input_signature(spec, batch=True)]
        )

    def _score_user(self, request: Inputs) -> dict[str, tf.Tensor]:
        if hasattr(self.model, "penultimate_request"):  # DIN: also what an online learner re-weighs
            hidden, attention = self.model.penultimate_request(request)
            weights, bias = self.model.head()
            logits = self.model.output_logits(hidden)
            return {"score": tf.sigmoid(logits), "attention": attention, "hidden": hidden,
                    "head": tf.concat([weights, bias[None]], axis=0)}
        logits, attention = self.model.forward_request(request)
        if attention is None:
            attention = tf.zeros([tf.shape(logits)[0], self.model.spec.max_seq_len], tf.float32)
        return {"score": tf.sigmoid(logits), "attention": attention}

    def _score_batch(self, features: Inputs) -> dict[str, tf.Tensor]:
        return {"score": tf.sigmoid(self.model(features, training=False))}


def compile_scorer(model: Ranker) -> CompiledScorer:
    """Trace both endpoints of ``model`` for its feature spec."""
    return CompiledScorer(model)


def as_request(values: dict[str, Any]) -> dict[str, tf.Tensor]:
    """Convert a plain-Python request (lists, numpy arrays, str) to tensors for ``score_user``."""
    return {
        name: tf.constant(value, tf.string) if name in samples.STRING_INPUTS else tf.constant(value, tf.float32)
        for name, value in values.items()
    }
