"""The SGNS update as one XLA program per block of batches, shared by every trainer in a process.

For a target t, its context c and K negatives n_k, with input vectors u and output vectors v:

    dL/du_t   = (σ(u_t·v_c) - 1) v_c + Σ_k σ(u_t·v_{n_k}) v_{n_k}
    dL/dv_c   = (σ(u_t·v_c) - 1) u_t
    dL/dv_n_k = σ(u_t·v_{n_k}) u_t

written by hand and applied as sparse row updates, one per (row, pair) occurrence, so a step
touches only the rows of its batch. Update rules (`UPDATE_RULES`), all scaled by the batch's
learning rate `lr`:

- "sgd": word2vec's ``row -= lr * g``;
- "adagrad": per element, ``acc += g²; row -= lr * g / √acc`` (Duchi et al. 2011);
- "rowwise_adagrad": one accumulator per row, ``acc_row += mean(g²); row -= lr * g / √acc_row``,
  as FBGEMM/TorchRec's row-wise Adagrad for embedding tables: a [rows] accumulator instead of
  [rows, dim], so its gather and scatter cost 1/dim of the per-element rule's.

Why one program per block: dispatching one compiled step per batch from a TensorFlow loop cost
more than the step itself on CPU, so the loop over a block's batches is compiled too. Shapes are
fixed (block size, padded table rows), with the number of batches a runtime argument, so XLA
compiles once per process for a given configuration; the variables are arguments, not captured,
so a new trainer reuses the compiled program.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np

UPDATE_RULES = ("adagrad", "rowwise_adagrad", "sgd")
ADAGRAD_INITIAL_ACCUMULATOR = 0.1  # as tf.keras.optimizers.Adagrad


def padded_rows(rows: int) -> int:
    """`rows` rounded up to the next 1/8 of its power of two (at most 12.5% more rows), so
    vocabularies of similar size share one compiled program."""
    step = 1 << max(rows.bit_length() - 4, 3)
    return -(-rows // step) * step


class EmbeddingTables(NamedTuple):
    """The trained variables: input vectors, output vectors and the rule's accumulators (a
    NamedTuple, so tf.function sees its variables as arguments and does not retrace per trainer)."""

    inputs: Any  # tf.Variable [rows, dim]
    outputs: Any  # tf.Variable [rows, dim]
    accumulators: tuple[Any, ...]  # (inputs', outputs') for the Adagrad rules, () for sgd

    @classmethod
    def create(cls, vocabulary_size: int, dim: int, rule: str, rng: np.random.Generator) -> "EmbeddingTables":
        """word2vec's initialisation: inputs uniform in ±0.5/dim, outputs zero. Rows past the
        vocabulary are padding that no pair or negative ever touches."""
        import tensorflow as tf

        rows = padded_rows(vocabulary_size)
        bound = 0.5 / dim
        inputs = tf.Variable(rng.uniform(-bound, bound, (rows, dim)).astype(np.float32))
        outputs = tf.Variable(np.zeros((rows, dim), np.float32))
        shape = {"adagrad": [rows, dim], "rowwise_adagrad": [rows]}.get(rule)
        if shape is None:
            return cls(inputs, outputs, ())
        return cls(inputs, outputs, tuple(tf.Variable(tf.fill(shape, ADAGRAD_INITIAL_ACCUMULATOR)) for _ in range(2)))

    def input_vectors(self, vocabulary_size: int) -> np.ndarray:
        return self.inputs.numpy()[:vocabulary_size]


BlockFunction = Callable[..., Any]


@lru_cache(maxsize=None)
def compiled_block(batch_size: int, negatives: int, rule: str) -> BlockFunction:
    """An XLA-compiled ``run(tables, table, targets, contexts, rates, batches, seed, first_batch)``
    that applies `batches` steps of `batch_size` pairs (targets/contexts [block * batch_size],
    rates [block]) and returns the sum of the batches' mean losses. Negatives are drawn from
    `table` (the unigram^0.75 table) with a stateless RNG keyed on (seed, global batch number),
    so a run is reproducible. Cached: one tf.function per configuration and process."""
    import tensorflow as tf

    if rule not in UPDATE_RULES:
        raise ValueError(f"unknown update rule {rule!r}: use one of {', '.join(UPDATE_RULES)}")

    def update(variable: Any, accumulator: Any, rows: Any, grad: Any, rate: Any) -> None:
        if rule == "adagrad":
            accumulator.scatter_add(tf.IndexedSlices(grad * grad, rows))
            grad = grad * tf.math.rsqrt(tf.gather(accumulator, rows))
        elif rule == "rowwise_adagrad":
            # mean(g²) per row as a matvec: XLA:CPU vectorizes it, unlike a reduction along the
            # rows (5–8% of a step at dim 64).
            dim = grad.shape[-1]
            mean_square = tf.linalg.matvec(grad * grad, tf.fill([dim], 1.0 / dim))
            accumulator.scatter_add(tf.IndexedSlices(mean_square, rows))
            grad = grad * tf.math.rsqrt(tf.gather(accumulator, rows))[:, None]
        variable.scatter_sub(tf.IndexedSlices(rate * grad, rows))

    def step(tables: EmbeddingTables, table: Any, targets: Any, contexts: Any, rate: Any, seed: Any) -> Any:
        slots = tf.random.stateless_uniform([batch_size, negatives], seed, maxval=tf.shape(table)[0], dtype=tf.int32)
        negative_rows = tf.gather(table, slots)  # [B, K]
        u = tf.gather(tables.inputs, targets)  # [B, D]
        v_pos = tf.gather(tables.outputs, contexts)  # [B, D]
        v_neg = tf.gather(tables.outputs, negative_rows)  # [B, K, D]
        pos_logit = tf.reduce_sum(u * v_pos, axis=-1)
        neg_logit = tf.reduce_sum(u[:, None, :] * v_neg, axis=-1)
        pos_grad = tf.sigmoid(pos_logit) - 1.0
        # A negative drawn equal to the positive context is skipped (word2vec.c does the same).
        neg_grad = tf.sigmoid(neg_logit) * tf.cast(tf.not_equal(negative_rows, contexts[:, None]), tf.float32)
        grad_u = pos_grad[:, None] * v_pos + tf.reduce_sum(neg_grad[:, :, None] * v_neg, axis=1)
        grad_v = tf.concat(
            [pos_grad[:, None] * u, tf.reshape(neg_grad[:, :, None] * u[:, None, :], [-1, tf.shape(u)[1]])], axis=0
        )
        rows_v = tf.concat([contexts, tf.reshape(negative_rows, [-1])], axis=0)
        accumulators = tables.accumulators or (None, None)
        update(tables.inputs, accumulators[0], targets, grad_u, rate)
        update(tables.outputs, accumulators[1], rows_v, grad_v, rate)
        return tf.reduce_mean(tf.nn.softplus(-pos_logit) + tf.reduce_sum(tf.nn.softplus(neg_logit), axis=-1))

    def run(
        tables: EmbeddingTables, table: Any, targets: Any, contexts: Any, rates: Any,
        batches: Any, seed: Any, first_batch: Any,
    ) -> Any:  # fmt: skip
        def body(number: Any, total: Any) -> tuple[Any, Any]:
            start = number * batch_size
            batch_seed = tf.stack([seed, first_batch + tf.cast(number, tf.int64)])
            batch_targets = tf.slice(targets, [start], [batch_size])
            batch_contexts = tf.slice(contexts, [start], [batch_size])
            return number + 1, total + step(tables, table, batch_targets, batch_contexts, rates[number], batch_seed)

        # An explicit while loop: `for _ in tf.range(batches)` made XLA treat `batches` as a
        # compile-time constant and recompile (~0.3 s) for every new block length.
        _, total = tf.while_loop(lambda number, _: number < batches, body, (tf.constant(0), tf.constant(0.0)))
        return total

    return tf.function(run, jit_compile=True)
