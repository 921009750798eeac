"""Training loop for the rankers: streamed Parquet batches, per-group optimizers, early stopping
on validation AUC, and evaluation (AUC, GAUC, logloss) on any split.

A custom loop instead of ``model.fit`` because Wide&Deep trains its two parts with different
optimizers (FTRL and Adam); every model goes through the same loop so they compare fairly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from models.ranking import samples
from models.ranking.base import Ranker
from models.ranking.dataset import iter_batches, tf_dataset
from models.ranking.metrics import evaluate


@dataclass(frozen=True)
class TrainConfig:
    """Loop settings; ``patience`` epochs without a better validation AUC stop training."""

    epochs: int = 10
    batch_size: int = 256
    eval_batch_size: int = 4096
    shuffle_buffer: int = 50_000
    patience: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class TrainResult:
    """What a training run produced: per-epoch history and the restored best epoch's metrics."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    validation: dict[str, float] = field(default_factory=dict)
    train_rows: int = 0
    train_seconds: float = 0.0
    device: str = "CPU"

    @property
    def samples_per_second(self) -> float:
        return self.train_rows / self.train_seconds if self.train_seconds else 0.0


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and TensorFlow; call it before building a model, as Keras 3 draws
    initializer seeds when layers are constructed."""
    keras.utils.set_random_seed(seed)


def compute_device() -> str:
    """``GPU`` when TensorFlow sees one (it then places ops there by itself), else ``CPU``."""
    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


class Trainer:
    """Trains one `Ranker` on a samples Parquet file or folder."""

    def __init__(self, model: Ranker, config: TrainConfig, show_progress: bool = True) -> None:
        self.model = model
        self.spec = model.spec
        self.config = config
        self.console = Console(stderr=True, quiet=not show_progress)
        self._predict_step = tf.function(
            lambda features: tf.sigmoid(self.model(features, training=False)),
            autograph=False,
            reduce_retracing=True,  # the last batch of a split is shorter: one shape-generic trace
        )

    def fit(self, path: Path) -> TrainResult:
        """Train with early stopping on validation AUC; the best epoch's weights are kept."""
        self._build(path)
        train_step = self._train_step()
        result = TrainResult(device=compute_device())
        best_auc, best_weights, stale = -math.inf, self.model.get_weights(), 0
        for epoch in range(1, self.config.epochs + 1):
            started = time.perf_counter()
            loss, rows = self._run_epoch(path, train_step, epoch)
            result.train_seconds += time.perf_counter() - started
            result.train_rows += rows
            metrics = self.evaluate(path, "validation")
            if not math.isfinite(metrics["auc"]):  # else no epoch is ever best: the untrained weights would be kept
                raise ValueError(f"{path}: the validation split has one class only (AUC undefined): the "
                                 "samples need clicked and unclicked rows; nothing to choose an epoch by")
            result.history.append(
                {"epoch": epoch, "loss": loss, **{f"val_{k}": v for k, v in metrics.items()}}
            )
            self.console.log(
                f"epoch {epoch}: loss {loss:.4f}  val auc {metrics['auc']:.4f}  gauc {metrics['gauc']:.4f}"
            )
            if metrics["auc"] > best_auc:
                best_auc, best_weights, stale = metrics["auc"], self.model.get_weights(), 0
                result.best_epoch, result.validation = epoch, metrics
            else:
                stale += 1
                if stale >= self.config.patience:
                    self.console.log(f"early stop: no better validation AUC for {stale} epochs")
                    break
        self.model.set_weights(best_weights)
        return result

    def _build(self, path: Path) -> None:
        """Create the variables (one forward pass) so optimizers can be built before tracing."""
        for batch, _ in iter_batches(path, self.spec, "train", 2):
            batch.pop(samples.LABEL)
            self.model(batch, training=False)
            return
        raise ValueError(f"{path}: no rows with split == 'train'")

    def _train_step(self) -> Any:
        groups = self.model.optimizer_groups()
        for optimizer, variables in groups:
            optimizer.build(variables)
        variables = [v for _, group in groups for v in group]
        bounds = np.cumsum([0] + [len(group) for _, group in groups])

        @tf.function(reduce_retracing=True, autograph=False)
        def step(features: dict[str, tf.Tensor], labels: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                logits = self.model(features, training=True)
                loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits))
            gradients = tape.gradient(loss, variables)
            for (optimizer, group), start, end in zip(groups, bounds[:-1], bounds[1:]):
                optimizer.apply_gradients(zip(gradients[start:end], group))
            return loss

        return step

    def _run_epoch(self, path: Path, train_step: Any, epoch: int) -> tuple[float, int]:
        data = tf_dataset(
            path,
            self.spec,
            "train",
            self.config.batch_size,
            self.config.shuffle_buffer,
            self.config.seed + epoch,
        )
        total_loss, rows = 0.0, 0
        with self._progress() as progress:
            task = progress.add_task(
                f"epoch {epoch}/{self.config.epochs}", total=self.spec.train_rows or None
            )
            for features, labels in data:
                count = int(labels.shape[0])
                total_loss += float(train_step(features, labels)) * count
                rows += count
                progress.advance(task, count)
        return total_loss / max(rows, 1), rows

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )

    def predict(self, path: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(user ids, labels, click probabilities)`` for every row of one split."""
        users, labels, scores = [], [], []
        for features, label in tf_dataset(path, self.spec, split, self.config.eval_batch_size):
            users.append(features[samples.USER_ID].numpy())
            labels.append(label.numpy())
            scores.append(self._predict_step(features).numpy())
        if not labels:
            raise ValueError(f"{path}: no rows with split == {split!r}")
        return np.concatenate(users), np.concatenate(labels), np.concatenate(scores)

    def evaluate(self, path: Path, split: str) -> dict[str, float]:
        """AUC, GAUC and logloss of the current weights on one split."""
        return evaluate(*self.predict(path, split))
