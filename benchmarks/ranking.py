"""Ranking benchmark: scoring latency of the compiled path vs ``model.predict`` and training
throughput, on synthetic samples with a planted rule and 50-item histories.

    .venv/bin/python benchmarks/ranking.py [--rows 60000] [--calls 1000] [--epochs 3]

Peers in the same run: ``model.predict`` on the same DIN (latency ratio), and DeepCTR's DIN on the
same samples when ``deepctr`` and ``tf_keras`` are importable (AUC and training time). DeepCTR
needs Keras 2, so it runs through ``tf_keras`` (``TF_USE_LEGACY_KERAS=1``, set below before
TensorFlow loads; our models use Keras 3 via ``import keras`` and are unaffected). Install the peer
with ``pip install --no-deps deepctr==0.9.4 tf-keras==2.20.1`` (``--no-deps``: tf-keras would
otherwise pull the full ``tensorflow`` wheel over ``tensorflow-cpu``).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import importlib.util
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.ranking import build_model, samples
from models.ranking.dataset import build_spec, iter_batches
from models.ranking.features import FeatureSpec
from models.ranking.metrics import evaluate
from models.ranking.trainer import TrainConfig, Trainer, seed_everything

DENSE = ("item_pop_7d", "item_ctr", "user_event_count", "user_cat_affinity")
ITEMS, CATEGORIES, USERS, SEQ = 2000, 20, 3000, 50


def make_samples(path: Path, rows: int, seed: int = 0) -> None:
    """Rule: click p = 0.85 when the candidate's category is among the last 10 history items' ones, else 0.08."""
    rng = np.random.default_rng(seed)
    interests = rng.integers(0, CATEGORIES, (USERS, 2))
    users = rng.integers(0, USERS, rows)
    lengths = rng.integers(5, SEQ + 1, rows)
    from_interest = rng.random((rows, SEQ)) < 0.8
    hist_cat = np.where(from_interest, interests[users][np.arange(rows)[:, None], rng.integers(0, 2, (rows, SEQ))],
                        rng.integers(0, CATEGORIES, (rows, SEQ)))  # fmt: skip
    hist = rng.integers(0, ITEMS // CATEGORIES, (rows, SEQ)) * CATEGORIES + hist_cat
    cand_cat = np.where(
        rng.random(rows) < 0.5,
        interests[users, rng.integers(0, 2, rows)],
        rng.integers(0, CATEGORIES, rows),
    )
    cand = rng.integers(0, ITEMS // CATEGORIES, rows) * CATEGORIES + cand_cat
    positions = np.arange(SEQ)[None, :]
    valid = positions < lengths[:, None]
    recent = valid & (positions >= lengths[:, None] - 10)
    matches = ((hist_cat == cand_cat[:, None]) & recent).any(axis=1)
    labels = (rng.random(rows) < np.where(matches, 0.85, 0.08)).astype(np.int8)
    affinity = ((hist_cat == cand_cat[:, None]) & valid).sum(axis=1) / lengths
    item_names = np.array([f"i{i}" for i in range(ITEMS)], dtype=object)
    cat_names = np.array([f"c{c}" for c in range(CATEGORIES)], dtype=object)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    fraction = np.arange(rows) / rows
    start = datetime(2024, 1, 1, tzinfo=UTC)
    columns: dict[str, Any] = {
        samples.USER_ID: np.array([f"u{u}" for u in users], dtype=object),
        samples.ITEM_ID: item_names[cand],
        samples.TS: [start + timedelta(seconds=int(s)) for s in np.arange(rows) * 30],
        samples.LABEL: labels,
        samples.LABEL_SOURCE: np.full(rows, "click", dtype=object),
        samples.SPLIT: np.where(
            fraction < 0.7, "train", np.where(fraction < 0.85, "validation", "test")
        ).astype(object),
        samples.HIST_ITEM_IDS: pa.ListArray.from_arrays(
            offsets, pa.array(item_names[hist[valid]], pa.string())
        ),
        samples.HIST_CATEGORIES: pa.ListArray.from_arrays(
            offsets, pa.array(cat_names[hist_cat[valid]], pa.string())
        ),
        samples.ITEM_CATEGORY: cat_names[cand_cat],
        "item_pop_7d": rng.gamma(2.0, 50.0, rows).astype(np.float32),
        "item_ctr": rng.beta(2, 20, rows).astype(np.float32),
        "user_event_count": lengths.astype(np.float32) * 3,
        "user_cat_affinity": affinity.astype(np.float32),
    }
    table = pa.Table.from_pydict(columns, schema=samples.sample_schema(DENSE))
    pq.write_table(table, path, row_group_size=10_000)


def percentiles(fn: Any, calls: int) -> tuple[float, float]:
    """p50 and p99 latency in ms of ``fn()`` over ``calls`` calls, after a warm-up."""
    for _ in range(20):
        fn()
    times = np.empty(calls)
    for i in range(calls):
        started = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - started
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def train_ours(
    path: Path, spec: FeatureSpec, epochs: int, batch: int
) -> dict[str, tuple[Any, dict[str, float]]]:
    settings = {"din": {"learning_rate": 3e-3}, "wide_deep": {"learning_rate": 3e-3}, "lr": {}}
    out = {}
    for kind, params in settings.items():
        seed_everything(0)
        model = build_model(kind, spec, **params)
        trainer = Trainer(
            model,
            TrainConfig(epochs=epochs, batch_size=batch, patience=epochs),
            show_progress=False,
        )
        started = time.perf_counter()
        result = trainer.fit(path)
        total = time.perf_counter() - started
        test = trainer.evaluate(path, "test")
        out[kind] = (model, {**test, "samples_per_s": result.samples_per_second, "wall_s": total})
    return out


def latency_table(
    model: Any, path: Path, calls: int, predict_calls: int, export_dir: Path
) -> list[tuple[str, ...]]:
    import tensorflow as tf

    from models.ranking.base import expand_request
    from models.ranking.export import export_ranker, load_exported
    from models.ranking.inference import CompiledScorer

    scorer = CompiledScorer(model)
    loaded, _ = load_exported(export_ranker(model, export_dir))
    batch, _ = next(iter_batches(path, model.spec, "test", 500))
    history = next(
        i
        for i in range(len(batch[samples.ITEM_ID]))
        if (batch[samples.HIST_ITEM_IDS][i] != "").all()
    )
    rows = []
    for n in (200, 500):
        request = {
            samples.USER_ID: tf.constant(batch[samples.USER_ID][history]),
            samples.HIST_ITEM_IDS: tf.constant(batch[samples.HIST_ITEM_IDS][history]),
            samples.HIST_CATEGORIES: tf.constant(batch[samples.HIST_CATEGORIES][history]),
            **{
                name: tf.constant(batch[name][:n])
                for name in (samples.ITEM_ID, samples.ITEM_CATEGORY, *DENSE)
            },
        }
        expanded = expand_request(request, model.spec.max_seq_len)
        compiled = percentiles(lambda r=request: scorer.score_user(r)["score"].numpy(), calls)
        exported = percentiles(lambda r=request: loaded.score_user(r)["score"].numpy(), calls)
        predict = percentiles(
            lambda x=expanded, n=n: model.predict(x, batch_size=n, verbose=0), predict_calls
        )
        rows.append((str(n), *(f"{v:.2f}" for v in (*compiled, *exported, *predict)),
                     f"{predict[0] / compiled[0]:.1f}x", f"{predict[1] / compiled[1]:.1f}x"))  # fmt: skip
    return rows


def deepctr_din(path: Path, spec: FeatureSpec, epochs: int, batch: int) -> dict[str, float] | None:
    if importlib.util.find_spec("deepctr") is None or importlib.util.find_spec("tf_keras") is None:
        print("DeepCTR peer skipped: pip install --no-deps deepctr==0.9.4 tf-keras==2.20.1")
        return None
    from deepctr.feature_column import DenseFeat, SparseFeat, VarLenSparseFeat
    from deepctr.models import DIN

    def arrays(split: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        items = {v: i + 2 for i, v in enumerate(spec.item_vocab)}
        cats = {v: i + 2 for i, v in enumerate(spec.category_vocab)}
        parts: list[dict[str, np.ndarray]] = []
        for b, _ in iter_batches(path, spec, split, 20_000):
            encode = lambda values, vocab: np.vectorize(
                lambda v: 0 if v == "" else vocab.get(v, 1), otypes=[np.int32]
            )(values)
            hist = encode(b[samples.HIST_ITEM_IDS], items)
            part = {"item": encode(b[samples.ITEM_ID], items), "cat": encode(b[samples.ITEM_CATEGORY], cats),
                    "hist_item": hist, "hist_cat": encode(b[samples.HIST_CATEGORIES], cats),
                    "seq_length": (hist > 0).sum(axis=1).astype(np.int32), "label": b[samples.LABEL], "user": b[samples.USER_ID]}  # fmt: skip
            for k, name in enumerate(DENSE):
                part[name] = (b[name] - spec.dense_mean[k]) / spec.dense_std[k]
            parts.append(part)
        data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return data, data.pop("label"), data.pop("user")

    dim, n_items, n_cats = 16, len(spec.item_vocab) + 2, len(spec.category_vocab) + 2
    columns = [
        SparseFeat("item", n_items, embedding_dim=dim),
        SparseFeat("cat", n_cats, embedding_dim=dim),
    ]
    columns += [DenseFeat(name, 1) for name in DENSE]
    columns += [VarLenSparseFeat(SparseFeat("hist_item", n_items, embedding_dim=dim, embedding_name="item"), maxlen=spec.max_seq_len, length_name="seq_length"),
                VarLenSparseFeat(SparseFeat("hist_cat", n_cats, embedding_dim=dim, embedding_name="cat"), maxlen=spec.max_seq_len, length_name="seq_length")]  # fmt: skip
    x_train, y_train, _ = arrays("train")
    x_test, y_test, users = arrays("test")
    model = DIN(
        columns,
        ["item", "cat"],
        dnn_hidden_units=(200, 80),
        att_hidden_size=(36,),
        att_activation="dice",
        seed=0,
    )
    from tf_keras.optimizers import Adam

    model.compile(Adam(3e-3), "binary_crossentropy")
    started = time.perf_counter()
    model.fit(x_train, y_train, batch_size=batch, epochs=epochs, verbose=0, shuffle=True)
    seconds = time.perf_counter() - started
    scores = model.predict(x_test, batch_size=4096, verbose=0).ravel()
    return {
        **evaluate(users, y_test, scores),
        "samples_per_s": epochs * len(y_train) / seconds,
        "wall_s": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--predict-calls", type=int, default=1000)
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "samples.parquet"
        make_samples(path, args.rows)
        spec = build_spec(path, DENSE, max_seq_len=SEQ)
        console.print(
            f"{args.rows:,} samples ({spec.train_rows:,} train), {len(spec.item_vocab):,} items, seq len {SEQ}"
        )
        trained = train_ours(path, spec, args.epochs, args.batch_size)
        peer = deepctr_din(path, spec, args.epochs, args.batch_size)
        quality = Table(
            title=f"Training ({args.epochs} epochs, batch {args.batch_size}; test split)"
        )
        for column in (
            "model",
            "test AUC",
            "test GAUC",
            "logloss",
            "train samples/s",
            "wall s (incl. eval)",
        ):
            quality.add_column(column, justify="right")
        rows = {name: metrics for name, (_, metrics) in trained.items()} | (
            {"deepctr DIN": peer} if peer else {}
        )
        for name, m in rows.items():
            quality.add_row(
                name,
                f"{m['auc']:.4f}",
                f"{m['gauc']:.4f}",
                f"{m['logloss']:.4f}",
                f"{m['samples_per_s']:,.0f}",
                f"{m['wall_s']:.1f}",
            )
        console.print(quality)
        latency = Table(
            title=f"DIN scoring latency, ms (one user, history {SEQ}; {args.calls} calls, predict {args.predict_calls})"
        )
        for column in ("candidates", "compiled p50", "compiled p99", "SavedModel p50", "SavedModel p99",
                       "predict p50", "predict p99", "predict/compiled p50", "p99"):  # fmt: skip
            latency.add_column(column, justify="right")
        for row in latency_table(
            trained["din"][0], path, args.calls, args.predict_calls, Path(scratch) / "export"
        ):
            latency.add_row(*row)
        console.print(latency)


if __name__ == "__main__":
    main()
