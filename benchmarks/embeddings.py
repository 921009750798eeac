"""Embedding and recall benchmarks, each against its peer in the same run.

1. Item2vec (our TensorFlow SGNS trainer) vs gensim Word2Vec(sg=1) on the ml-100k training
   sequences (leave-last-one-out), same dim/window/negatives/epochs/subsampling, several seeds:
   training pairs/s and HR@10 / HR@50 of item-neighbour recall, for our default (row-wise Adagrad),
   per-element Adagrad and word2vec's plain-SGD rule. Both sides are timed over the whole call
   (vocabulary, pairs, training), after one warm-up fit per rule that compiles its XLA program.
2. Random-walk generation: vectorized DeepWalk/Node2vec walker vs a plain-Python walker.
3. faiss HNSW / IVF-Flat and our LSH vs exact search: recall@100 and queries/s.

Run: .venv/bin/python benchmarks/embeddings.py [--ml100k PATH] [--epochs 5] [--dim 64] [--seeds 3]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from models.embeddings.inputs import transition_graph  # noqa: E402
from models.embeddings.item_embeddings import ItemEmbeddings  # noqa: E402
from models.embeddings.skipgram import SkipGramConfig, SkipGramTrainer  # noqa: E402
from models.embeddings.walks import ItemGraph, RandomWalker  # noqa: E402
from models.evaluation import evaluate, leave_last_one_out  # noqa: E402
from models.retrieval import FaissIndex, LshIndex  # noqa: E402
from models.retrieval.multichannel import ChannelRecommender, EmbeddingNeighbourChannel  # noqa: E402
from quiet import ForeignCpu  # noqa: E402

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"
#: Item2vec trainers compared: our optimizer name, or None for gensim.
ITEM2VEC_TRAINERS = {"ours (TF, row-wise adagrad: default)": "rowwise_adagrad",
                     "ours (TF, per-element adagrad)": "adagrad", "ours (TF, sgd: word2vec's rule)": "sgd",
                     "gensim Word2Vec sg=1": None}  # fmt: skip


def ml100k_split(path: Path, min_rating: float = 3.5):  # type: ignore[no-untyped-def]
    rows = []
    with (path / "u.data").open() as handle:
        for line in handle:
            user, item, rating, ts = line.split("\t")
            if float(rating) >= min_rating:
                rows.append((user, item, int(ts)))
    return leave_last_one_out(rows)


def neighbour_metrics(embeddings: ItemEmbeddings, split) -> dict[str, float]:  # type: ignore[no-untyped-def]
    index = FaissIndex(embeddings.dim, "exact")
    index.add(embeddings.ids.tolist(), embeddings.vectors)
    channel = EmbeddingNeighbourChannel("emb", embeddings, index)
    return evaluate(ChannelRecommender(channel), split, ["HR@10", "NDCG@10", "HR@50"])


def train_gensim(sequences, dim: int, epochs: int, seed: int) -> tuple[ItemEmbeddings, float]:  # type: ignore[no-untyped-def]
    from gensim.models import Word2Vec

    started = time.perf_counter()
    model = Word2Vec(sequences, vector_size=dim, window=5, negative=5, sg=1, min_count=1, epochs=epochs,
                     sample=1e-3, workers=os.cpu_count() or 1, seed=seed)  # fmt: skip
    seconds = time.perf_counter() - started
    return ItemEmbeddings(np.array(model.wv.index_to_key), model.wv.vectors), seconds


def bench_item2vec(split, dim: int, epochs: int, seeds: int) -> None:  # type: ignore[no-untyped-def]
    """Each trainer once per seed on the same sequences; HR as mean ± sd over seeds, pairs/s as
    the median. gensim does not count pairs: its rate is our pair count over its time (same
    window rule and subsampling, so the same expected number of pairs)."""
    sequences = split.train_sequences()
    print(f"load average at the start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    warm_up(sequences, dim)
    results: dict[str, list[tuple[dict[str, float], float]]] = {name: [] for name in ITEM2VEC_TRAINERS}
    pairs: list[int] = []
    with ForeignCpu() as other:  # timings taken while other processes ran are not comparable
        for seed in range(seeds):
            for name, optimizer in ITEM2VEC_TRAINERS.items():
                if optimizer is None:
                    embeddings, seconds = train_gensim(sequences, dim, epochs, seed + 1)
                    rate = float(np.mean(pairs)) / seconds
                else:
                    config = SkipGramConfig(dim=dim, window=5, negatives=5, epochs=epochs, subsample=1e-3,
                                            optimizer=optimizer, seed=seed)  # fmt: skip
                    trainer = SkipGramTrainer(config)
                    embeddings = trainer.fit(sequences)
                    pairs.append(trainer.stats.pairs)
                    rate = trainer.stats.pairs_per_second
                results[name].append((neighbour_metrics(embeddings, split), rate))
    print(f"\n## Item2vec vs gensim Word2Vec(sg=1): dim={dim} window=5 negatives=5 epochs={epochs} sample=1e-3, "
          f"{seeds} seeds")  # fmt: skip
    print(f"training pairs per run: {int(np.mean(pairs)):,}")
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}; other processes used "
          f"{other.core_seconds:.1f} CPU-s during the timed runs (up to {other.peak:.0%} of a core: {other.busiest})")
    print_item2vec(results)


def warm_up(sequences, dim: int) -> None:  # type: ignore[no-untyped-def]
    """Compile each rule's XLA program once (a new process pays it on its first fit)."""
    for optimizer in filter(None, ITEM2VEC_TRAINERS.values()):
        started = time.perf_counter()
        SkipGramTrainer(SkipGramConfig(dim=dim, epochs=1, optimizer=optimizer)).fit(sequences)
        print(f"warm-up fit (1 epoch, XLA compile included), {optimizer}: {time.perf_counter() - started:.2f} s")
    # TensorFlow's import leaves millions of Python objects that every full garbage collection
    # walks (~0.15 s here): freeze them so that neither trainer's timing depends on when a
    # collection happens to fall (gensim's vocabulary build triggers them as often as ours).
    gc.freeze()


def print_item2vec(results: dict[str, list[tuple[dict[str, float], float]]]) -> None:
    print("| trainer | pairs/s (median) | HR@10 | NDCG@10 | HR@50 |\n| --- | ---: | ---: | ---: | ---: |")
    for name, runs in results.items():
        cells = [f"{np.mean([m[k] for m, _ in runs]):.4f} ± {np.std([m[k] for m, _ in runs]):.4f}"
                 for k in ("HR@10", "NDCG@10", "HR@50")]  # fmt: skip
        print(f"| {name} | {np.median([r for _, r in runs]):,.0f} | {' | '.join(cells)} |")
    gensim_rate = np.median([r for _, r in results["gensim Word2Vec sg=1"]])
    for name, optimizer in ITEM2VEC_TRAINERS.items():
        if optimizer is not None:
            ratio = np.median([r for _, r in results[name]]) / gensim_rate
            print(f"throughput ratio {name} / gensim: {ratio:.2f}")
    for name, runs in results.items():
        print(f"pairs/s per seed, {name}: {', '.join(f'{rate:,.0f}' for _, rate in runs)}")


def python_walks(graph: ItemGraph, walks_per_node: int, length: int, seed: int = 0) -> list[list[int]]:
    """Reference: one walker at a time, random.choices by weight at every step."""
    rng = random.Random(seed)
    neighbours = [(graph.targets[graph.indptr[n] : graph.indptr[n + 1]].tolist(),
                   graph.weights[graph.indptr[n] : graph.indptr[n + 1]].tolist()) for n in range(len(graph.ids))]  # fmt: skip
    walks = []
    for _ in range(walks_per_node):
        for start in range(len(graph.ids)):
            walk = [start]
            while len(walk) < length and neighbours[walk[-1]][0]:
                targets, weights = neighbours[walk[-1]]
                walk.append(rng.choices(targets, weights)[0])
            walks.append(walk)
    return walks


def bench_walks(split) -> None:  # type: ignore[no-untyped-def]
    graph = ItemGraph.from_edges(*transition_graph(split.train_sequences()))
    walks_per_node, length = 10, 40
    rows = []
    for name, p, q in (("DeepWalk", 1.0, 1.0), ("Node2vec p=0.5 q=2", 0.5, 2.0)):
        started = time.perf_counter()
        walks = RandomWalker(graph, p=p, q=q).walks(walks_per_node, length)
        rows.append((name, len(walks) / (time.perf_counter() - started)))
    started = time.perf_counter()
    reference = python_walks(graph, walks_per_node, length)
    python_rate = len(reference) / (time.perf_counter() - started)
    print(f"\n## Walk generation: ml-100k transition graph, {len(graph.ids):,} nodes, {len(graph.targets):,} edges, "
          f"{walks_per_node} walks/node, length {length}")  # fmt: skip
    print("| walker | walks/s | vs plain-Python DeepWalk |\n| --- | ---: | ---: |")
    for name, rate in rows:
        print(f"| vectorized {name} | {rate:,.0f} | {rate / python_rate:.1f}× |")
    print(f"| plain-Python DeepWalk | {python_rate:,.0f} | 1.0× |")


def bench_indexes(items: int, dim: int, queries: int, k: int = 100) -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((items // 20, dim))
    vectors = centres[rng.integers(0, len(centres), items)] + 0.35 * rng.standard_normal((items, dim))
    query = centres[rng.integers(0, len(centres), queries)] + 0.35 * rng.standard_normal((queries, dim))
    ids = [str(i) for i in range(items)]
    contenders = {"exact": FaissIndex(dim, "exact"), "HNSW": FaissIndex(dim, "hnsw"),
                  "IVF-Flat": FaissIndex(dim, "ivf"), "LSH (defaults, tuned for top-10)": LshIndex(dim),
                  "LSH (k=100: 16 tables × 8 projections, w=4)": LshIndex(dim, tables=16, bits=8, width=4.0)}  # fmt: skip
    results = {}
    for name, index in contenders.items():
        started = time.perf_counter()
        index.add(ids, vectors)
        build = time.perf_counter() - started
        started = time.perf_counter()
        found = index.search(query, k).ids
        results[name] = (build, queries / (time.perf_counter() - started), found)
    truth = results["exact"][2]
    print(f"\n## Recall indexes: {items:,} clustered vectors, dim {dim}, {queries} queries, k={k}")
    print("| index | build s | queries/s | vs exact q/s | recall@100 |\n| --- | ---: | ---: | ---: | ---: |")
    for name, (build, qps, found) in results.items():
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)])
        print(f"| {name} | {build:.2f} | {qps:,.0f} | {qps / results['exact'][1]:.2f} | {recall:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ml100k", type=Path, default=ML100K)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3, help="Item2vec runs per trainer (HR mean ± sd).")
    parser.add_argument("--index-items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--parts", default="item2vec,walks,indexes", help="Comma-separated subset to run.")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    split = ml100k_split(args.ml100k)
    print(f"ml-100k positives (rating >= 3.5): {sum(map(len, split.train.values())):,} train, {len(split.test)} held out")
    if "item2vec" in parts:
        bench_item2vec(split, args.dim, args.epochs, args.seeds)
    if "walks" in parts:
        bench_walks(split)
    if "indexes" in parts:
        bench_indexes(args.index_items, 64, args.queries)


if __name__ == "__main__":
    main()
