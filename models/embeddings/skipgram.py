"""Skip-gram with negative sampling (SGNS) in TensorFlow, fed by tf.data.

For a target item t, a context item c seen within the window, and K negatives n_k drawn from the
unigram^0.75 distribution, SGNS minimises

    L = -log σ(u_t · v_c) - Σ_k log σ(-u_t · v_{n_k})

over input vectors u and output vectors v (Mikolov et al. 2013, "Distributed Representations of
Words and Phrases and their Compositionality"). Item2vec (Barkan & Koenigstein 2016) applies it
to item sequences; DeepWalk (Perozzi et al. 2014) and Node2vec (Grover & Leskovec 2016) to
random walks. The learned item vectors are the input vectors u.

Each pair's loss is summed, not averaged, over a batch, and every occurrence of a row in the
batch applies its own update, as word2vec's Hogwild threads do; the gradients are written by
hand and applied as sparse row updates (`scatter_*`), so a step touches only the rows in the
batch. Two update rules, both with word2vec's linear learning-rate decay to `min_learning_rate`:

- "sgd": word2vec's plain SGD, ``row -= lr * g``, with gensim's alpha 0.025;
- "adagrad" (default): ``acc_row += g ** 2; row -= lr * g / sqrt(acc_row)`` per element (Duchi
  et al. 2011, "Adaptive Subgradient Methods"), accumulated per occurrence. Rows of frequent
  items slow down while rare items keep large steps; on MovieLens this nearly doubles HR@10
  over plain SGD at the same dim/window/negatives/epochs (benchmarks/RESULTS.md).

A negative that equals the positive context is skipped, as in word2vec.c. TensorFlow places the
variables on a GPU when it sees one, else on the CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from models.embeddings.item_embeddings import ItemEmbeddings
from models.embeddings.pairs import PairChunk, keep_probabilities, pair_chunks, unigram_table
from models.embeddings.vocab import EncodedSequences, Vocabulary

log = logging.getLogger(__name__)

ProgressCallback = Callable[[float, int], None]  # (share done in [0, 1], pairs so far)

DEFAULT_LEARNING_RATES = {"adagrad": 0.5, "sgd": 0.025}
ADAGRAD_INITIAL_ACCUMULATOR = 0.1  # as tf.keras.optimizers.Adagrad


@dataclass(frozen=True)
class SkipGramConfig:
    """Hyper-parameters, named as in word2vec/gensim where they have a counterpart."""

    dim: int = 64
    window: int = 5
    negatives: int = 5
    epochs: int = 5
    #: "adagrad" or "sgd" (word2vec's update rule); see the module docstring.
    optimizer: str = "adagrad"
    #: Initial rate, decayed linearly to `min_learning_rate`; None: 0.5 for adagrad, 0.025 for
    #: sgd (gensim's `alpha`).
    learning_rate: float | None = None
    min_learning_rate: float = 0.0001  # gensim `min_alpha`
    subsample: float = 1e-3  # gensim `sample`
    ns_exponent: float = 0.75
    min_count: int = 1
    shrink_window: bool = True
    batch_size: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("dim", "window", "negatives", "epochs", "min_count", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SkipGramConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.optimizer not in DEFAULT_LEARNING_RATES:
            known = " or ".join(sorted(DEFAULT_LEARNING_RATES))
            raise ValueError(f"SkipGramConfig.optimizer must be {known}, got {self.optimizer!r}")
        if not 0 < self.min_learning_rate <= self.initial_learning_rate:
            raise ValueError("SkipGramConfig needs 0 < min_learning_rate <= learning_rate")

    @property
    def initial_learning_rate(self) -> float:
        """`learning_rate`, or the optimizer's default when it is None."""
        return DEFAULT_LEARNING_RATES[self.optimizer] if self.learning_rate is None else self.learning_rate

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "learning_rate": self.initial_learning_rate}


@dataclass
class TrainingStats:
    pairs: int = 0
    seconds: float = 0.0
    device: str = "CPU"
    loss_per_epoch: list[float] = field(default_factory=list)

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds if self.seconds else 0.0


class SkipGramTrainer:
    """Trains item vectors from sequences (user histories or random walks) with SGNS."""

    def __init__(self, config: SkipGramConfig | None = None) -> None:
        self.config = config or SkipGramConfig()
        self.stats = TrainingStats()

    def fit(
        self, sequences: Sequence[Sequence[str]], progress: ProgressCallback | None = None
    ) -> ItemEmbeddings:
        """Train on `sequences` (each a time-ordered list of item ids); returns the item vectors."""
        import tensorflow as tf

        config = self.config
        vocabulary = Vocabulary.build(sequences, config.min_count)
        corpus = EncodedSequences.encode(sequences, vocabulary)
        rng = np.random.default_rng(config.seed)
        tf.random.set_seed(config.seed)
        keep = keep_probabilities(vocabulary.counts, config.subsample)
        step = _SgnsStep(len(vocabulary), config, unigram_table(vocabulary.counts, config.ns_exponent), rng)
        self.stats = TrainingStats(device=step.device)

        def chunks() -> Any:
            for chunk in pair_chunks(corpus, keep, config.window, config.epochs, rng, config.shrink_window):
                if len(chunk.targets) == 0:
                    continue
                targets, contexts = _fill_last_batch(chunk.targets, chunk.contexts, config.batch_size)
                yield targets, contexts, self._batch_rates(chunk), chunk.end

        signature = (
            tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.float32), tf.TensorSpec([], tf.float64),
        )  # fmt: skip
        # tf.data generates and prefetches the next chunk's pairs while the current one trains;
        # each chunk's batches run in one compiled loop, with no Python per batch.
        dataset = tf.data.Dataset.from_generator(chunks, output_signature=signature).prefetch(2)
        epoch_losses: list[list[float]] = [[] for _ in range(config.epochs)]
        started = time.perf_counter()
        for targets, contexts, rates, end in dataset:
            loss = float(step.run_chunk(targets, contexts, rates))
            self.stats.pairs += int(targets.shape[0])
            epoch_losses[min(int(float(end) * config.epochs - 1e-9), config.epochs - 1)].append(loss)
            if progress is not None:
                progress(float(end), self.stats.pairs)
        self.stats.seconds = time.perf_counter() - started
        self.stats.loss_per_epoch = [float(np.mean(losses)) for losses in epoch_losses if losses]
        if progress is not None:
            progress(1.0, self.stats.pairs)
        return ItemEmbeddings(vocabulary.ids, step.input_vectors(), vocabulary.counts)

    def _batch_rates(self, chunk: PairChunk) -> np.ndarray:
        """word2vec's linear decay: alpha * (1 - share of training done), floored at min_alpha."""
        config = self.config
        batches = max(-(-len(chunk.targets) // config.batch_size), 1)
        done = np.linspace(chunk.start, chunk.end, batches, endpoint=False)
        return np.maximum(config.min_learning_rate, config.initial_learning_rate * (1.0 - done)).astype(np.float32)


def _fill_last_batch(targets: np.ndarray, contexts: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Top the last batch up with pairs from the start of the (shuffled) chunk, so every batch
    has the same shape and the XLA-compiled step is compiled once."""
    missing = -len(targets) % batch_size
    if missing == 0 or len(targets) == 0:
        return targets, contexts
    extra = np.arange(missing) % len(targets)
    return np.concatenate([targets, targets[extra]]), np.concatenate([contexts, contexts[extra]])


class _SgnsStep:
    """One update step of SGNS on a batch of pairs, compiled with tf.function."""

    def __init__(self, vocabulary_size: int, config: SkipGramConfig, table: np.ndarray, rng: np.random.Generator) -> None:
        import tensorflow as tf

        self.device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
        bound = 0.5 / config.dim  # word2vec's initialisation: small random inputs, zero outputs
        self.inputs = tf.Variable(rng.uniform(-bound, bound, (vocabulary_size, config.dim)).astype(np.float32))
        self.outputs = tf.Variable(np.zeros((vocabulary_size, config.dim), np.float32))
        self.table = tf.constant(table)
        self.negatives = config.negatives
        self.batch_size = config.batch_size
        self.accumulators: list[Any] = []  # Adagrad's, for the input then the output vectors
        if config.optimizer == "adagrad":
            shape = [vocabulary_size, config.dim]
            self.accumulators = [tf.Variable(tf.fill(shape, ADAGRAD_INITIAL_ACCUMULATOR)) for _ in range(2)]
        self._step = tf.function(self._train_step, jit_compile=True)
        spec = (tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.float32))
        self.run_chunk = tf.function(self._run_chunk, input_signature=spec)

    def _run_chunk(self, targets: Any, contexts: Any, rates: Any) -> Any:
        """One step per batch of a chunk (its length a multiple of the batch size); mean loss."""
        import tensorflow as tf

        size = self.batch_size
        total = tf.constant(0.0)
        batches = tf.shape(rates)[0]
        for number in tf.range(batches):
            start = number * size
            batch_targets = tf.ensure_shape(targets[start : start + size], [size])
            batch_contexts = tf.ensure_shape(contexts[start : start + size], [size])
            total += self._step(batch_targets, batch_contexts, rates[number])
        return total / tf.cast(tf.maximum(batches, 1), tf.float32)

    def _train_step(self, targets: Any, contexts: Any, rate: Any) -> Any:
        import tensorflow as tf

        batch = tf.shape(targets)[0]
        slots = tf.random.uniform([batch, self.negatives], maxval=tf.shape(self.table)[0], dtype=tf.int32)
        negatives = tf.gather(self.table, slots)  # [B, K]
        u = tf.gather(self.inputs, targets)  # [B, D]
        v_pos = tf.gather(self.outputs, contexts)  # [B, D]
        v_neg = tf.gather(self.outputs, negatives)  # [B, K, D]
        pos_logit = tf.reduce_sum(u * v_pos, axis=-1)
        neg_logit = tf.reduce_sum(u[:, None, :] * v_neg, axis=-1)
        # dL/dlogit: σ(x) - 1 for the positive, σ(x) for each negative.
        pos_grad = tf.sigmoid(pos_logit) - 1.0
        # A negative drawn equal to the positive context is skipped (word2vec.c does the same).
        neg_grad = tf.sigmoid(neg_logit) * tf.cast(tf.not_equal(negatives, contexts[:, None]), tf.float32)
        grad_u = pos_grad[:, None] * v_pos + tf.reduce_sum(neg_grad[:, :, None] * v_neg, axis=1)
        grad_v = tf.concat(
            [pos_grad[:, None] * u, tf.reshape(neg_grad[:, :, None] * u[:, None, :], [-1, tf.shape(u)[1]])], axis=0
        )
        rows_v = tf.concat([contexts, tf.reshape(negatives, [-1])], axis=0)
        self._update(self.inputs, 0, targets, grad_u, rate)
        self._update(self.outputs, 1, rows_v, grad_v, rate)
        loss = tf.nn.softplus(-pos_logit) + tf.reduce_sum(tf.nn.softplus(neg_logit), axis=-1)
        return tf.reduce_mean(loss)

    def _update(self, table: Any, which: int, rows: Any, grad: Any, rate: Any) -> None:
        """One step of the configured rule for every (row, gradient) occurrence of the batch."""
        import tensorflow as tf

        if self.accumulators:
            accumulator = self.accumulators[which]
            accumulator.scatter_add(tf.IndexedSlices(grad * grad, rows))
            grad = grad * tf.math.rsqrt(tf.gather(accumulator, rows))
        table.scatter_sub(tf.IndexedSlices(rate * grad, rows))

    def input_vectors(self) -> np.ndarray:
        return self.inputs.numpy()
