"""GRU4Rec (Hidasi et al. 2016): a sequential model that scores every item for a history, used as
a tuned peer of the protocol (`models.evaluation.protocol_run`) and as a scored recall channel of
the pipeline (`models.retrieval.scored_channels`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_FILE = "gru4rec.json"
WEIGHTS_FILE = "gru4rec.weights.h5"


def item_index(sequences: Sequence[Sequence[str]]) -> tuple[np.ndarray, dict[str, int]]:
    """Sorted distinct items of `sequences` and each one's position."""
    items = sorted({item for sequence in sequences for item in sequence})
    return np.array(items, dtype=str), {item: i for i, item in enumerate(items)}


class GRU4Rec:
    """Session-based recommendation with a GRU (Hidasi et al. 2016, ICLR), trained with
    cross-entropy over the full item softmax at every step (Hidasi & Karatzoglou 2018 report it
    stronger than the original ranking losses at this scale): h_t = GRU(e(s_1..s_t)), the next
    item's score is w_jᵀ h_t + b_j.

    `fit` trains on the training sequences; with a validation callback (returning the score to
    maximise) the best epoch's weights are kept and training stops after `patience` epochs
    without improvement: the number of epochs is a hyper-parameter chosen on validation."""

    def __init__(self, sequences: Sequence[Sequence[str]], dim: int = 64, max_len: int = 50, dropout: float = 0.2,
                 learning_rate: float = 3e-3, batch_size: int = 32, seed: int = 0) -> None:  # fmt: skip
        self._setup(item_index(sequences)[0], dim=dim, max_len=max_len, dropout=dropout, learning_rate=learning_rate,
                    batch_size=batch_size, seed=seed)  # fmt: skip
        self.sequences = [list(s) for s in sequences if len(s) >= 2]

    def _setup(self, ids: np.ndarray, **config: Any) -> None:
        import keras

        keras.utils.set_random_seed(config["seed"])
        self.config = config
        self.ids = np.asarray(ids, dtype=str)
        self.position = {item: i for i, item in enumerate(self.ids.tolist())}
        self.max_len, self.batch_size = config["max_len"], config["batch_size"]
        self._shuffle = np.random.default_rng(config["seed"])
        self.model = self._build(len(self.ids) + 1, config["dim"], config["dropout"], config["learning_rate"])
        import tensorflow as tf

        # A request's pass as one traced graph: called eagerly, the GRU steps through time in
        # Python (~0.2 s of CPU for 50 items; measured in benchmarks/blend_serving.py).
        self._last_state = tf.function(lambda tokens: self.encoder(tokens, training=False)[:, -1, :],
                                       input_signature=[tf.TensorSpec([None, None], tf.int32)])  # fmt: skip

    def save(self, folder: Path) -> None:
        """Write the item ids, the hyper-parameters and the weights under `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(json.dumps({"ids": self.ids.tolist(), "config": self.config}), encoding="utf-8")
        self.model.save_weights(folder / WEIGHTS_FILE)

    @classmethod
    def load(cls, folder: Path) -> GRU4Rec:
        """The model `save` wrote (it scores; its training sequences are not kept)."""
        saved = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        model = cls.__new__(cls)
        model._setup(np.array(saved["ids"], dtype=str), **saved["config"])
        model.sequences = []
        model.model.load_weights(folder / WEIGHTS_FILE)
        return model

    def _build(self, vocabulary: int, dim: int, dropout: float, learning_rate: float) -> Any:
        import keras

        tokens = keras.Input(shape=(None,), dtype="int32")
        self.embedding_layer = keras.layers.Embedding(vocabulary, dim, mask_zero=True)
        embedded = self.embedding_layer(tokens)
        hidden = keras.layers.GRU(dim, return_sequences=True)(keras.layers.Dropout(dropout)(embedded))
        self.output_dropout = keras.layers.Dropout(dropout)
        self.output_layer = keras.layers.Dense(vocabulary)
        logits = self.output_layer(self.output_dropout(hidden))
        self.encoder = keras.Model(tokens, hidden)  # scoring reads the last step only
        self.optimizer = keras.optimizers.Adam(learning_rate)
        return keras.Model(tokens, logits)

    def _train_step(self) -> Any:
        """One Adam step on a batch: the mean cross-entropy over the batch's real next items.

        The softmax over every item is computed for those steps only, not for the padding of
        each row: on Amazon Toys (window 20, about 6 training items per user) most of a padded
        row is padding, and the full softmax was most of an epoch's cost. The loss is the one
        `SparseCategoricalCrossentropy(ignore_class=0)` takes over the padded rows (its mean
        runs over the unmasked steps), so the objective is unchanged."""
        import tensorflow as tf

        variables = self.model.trainable_variables
        self.optimizer.build(variables)

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)] * 2)
        def step(inputs: Any, targets: Any) -> Any:
            with tf.GradientTape() as tape:
                valid = tf.not_equal(targets, 0)
                hidden = tf.boolean_mask(self.encoder(inputs, training=True), valid)
                logits = self.output_layer(self.output_dropout(hidden, training=True))
                labels = tf.boolean_mask(targets, valid)
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
            self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        return step

    def _encode(self, history: Sequence[str]) -> list[int]:
        return [self.position[item] + 1 for item in list(history)[-self.max_len :] if item in self.position]

    def _padded(self, rows: list[list[int]], width: int) -> np.ndarray:
        out = np.zeros((len(rows), width), np.int32)
        for r, row in enumerate(rows):
            if row:
                out[r, -len(row) :] = row  # left-padded: the last step is the latest item
        return out

    def fit(self, epochs: int, validate: Any = None, patience: int = 2) -> GRU4Rec:
        encoded = [self._encode(s)[-(self.max_len + 1) :] for s in self.sequences]
        inputs = self._padded([e[:-1] for e in encoded], self.max_len)
        targets = self._padded([e[1:] for e in encoded], self.max_len)
        lengths = np.array([len(e) - 1 for e in encoded])
        step = self._train_step()
        best, best_weights, stale = -np.inf, None, 0
        for epoch in range(epochs):
            order = self._shuffle.permutation(len(inputs))
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                width = int(lengths[rows].max())  # left-padded: the last `width` columns hold every step
                step(inputs[rows, -width:], targets[rows, -width:])
            if validate is None:
                continue
            score = validate(self)
            if score > best:
                best, best_weights, stale, self.best_epoch = score, self.model.get_weights(), 0, epoch + 1
            else:
                stale += 1
                if stale >= patience:
                    break
        if best_weights is not None:
            self.model.set_weights(best_weights)
        return self

    def scores(self, history: Sequence[str]) -> np.ndarray:
        return self.batch_scores([history])[0]

    def batch_scores(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """Scores of `ids` for each history (one forward pass per batch of histories)."""
        rows = [self._encode(h) for h in histories]
        width = max(1, max(map(len, rows)))
        padded = self._padded(rows, width)
        if len(rows) <= 64:  # a request's few histories: predict()'s per-call setup costs more than the pass
            last = self._last_state(padded).numpy()
        else:
            last = self.encoder.predict(padded, batch_size=512, verbose=0)[:, -1, :]
        kernel, bias = (np.asarray(w) for w in self.output_layer.get_weights())
        logits = (last @ kernel + bias)[:, 1:]
        empty = np.array([not row for row in rows])
        logits[empty] = 0.0
        return logits

    def item_vectors(self) -> np.ndarray:
        """The input embedding of every item of `ids` (row j: `ids[j]`), for similarity reasons."""
        return np.asarray(self.embedding_layer.get_weights()[0])[1:]
