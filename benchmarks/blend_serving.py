"""The served blend (issue 20) on an imported data set: the training DAG's blend
(`pipelines.training.blend`: ItemKNN over the last 3 / last 1 / all items, GRU4Rec, Item2vec,
weights fitted on the validation item) under the field's protocol, its distinct reasons per
top-10 list, and the recall stage's CPU per request against today's (the artifact's Item2vec
neighbour + user-vector channels) on the same histories.

    .venv/bin/python benchmarks/blend_serving.py --state-dir /tmp/q-ml100k --requests 300

Full ranking on test (history = training + validation item), HR@10 / NDCG@10 with 95% bootstrap
intervals over users; reasons as `benchmarks/quality.py` counts them (`reasons_per_list`, users
with >= 10 history items). CPU per request is `time.process_time` (every thread of this process)
per recall call with the API's 200 candidates and the last 50 history items (the blend's call
includes the reasons of its top 10, as the explain stage names them for the shown items; today's
channels name their seeds while recalling), in alternating blocks of 50 requests, so a
neighbour's load hits both paths alike; the ratio is blend / today.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import numpy as np
from rich.progress import Progress

from quality import ratio_ci, reasons_per_list  # benchmarks/quality.py: the script's folder is on sys.path
from feature_store.settings import Settings, TrainingSettings
from models.embeddings.skipgram import SkipGramConfig, SkipGramTrainer
from models.evaluation.end_to_end import bootstrap_ci
from models.evaluation.protocol import full_ranks, implicit_interactions, protocol_split, top_lists
from models.evaluation.shared_reasons import SharedReasons
from models.evaluation.metrics import rank_metrics
from models.retrieval import build_index
from models.retrieval.blend import BlendedRecall
from models.retrieval.multichannel import EmbeddingNeighbourChannel, MultiChannelRecall, UserVectorChannel
from pipelines.training.blend import fit_serving_blend, validation_split
from services.cli.evaluate import read_log

CANDIDATES, HISTORY = 200, 50


def cpu_per_call(paths: dict[str, Callable[[Sequence[str]], object]], histories: list[list[str]],
                 block: int = 50) -> dict[str, np.ndarray]:  # fmt: skip
    """CPU seconds per call of each path, measured in alternating blocks of `block` histories."""
    out: dict[str, list[float]] = {name: [] for name in paths}
    for start in range(0, len(histories), block):
        for name, call in paths.items():
            began = time.process_time()
            for history in histories[start : start + block]:
                call(history)
            out[name].append((time.process_time() - began) / len(histories[start : start + block]))
    return {name: np.array(values) for name, values in out.items()}


def blend_request(blend: BlendedRecall, history: Sequence[str], recent: int | None) -> list[str | None]:
    """The served blend's recall stage and the reasons of the 10 items it would show."""
    found = blend.recall(history, CANDIDATES, history)
    return blend.reasons(history, [c.item_id for c in found[:10]], recent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--gru-epochs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--reason-recent", type=int, default=Settings().api.reason_recent,
                        help="history items tried as reasons (api.reason_recent; 0: all)")
    args = parser.parse_args()
    recent = args.reason_recent or None
    started = time.perf_counter()
    events, _ = read_log(Settings(state_dir=args.state_dir))
    split = protocol_split(implicit_interactions(events))
    users = sorted(split.test.train)
    with Progress() as progress:
        task = progress.add_task("fit Item2vec, ItemKNN, GRU4Rec, weights", total=3)
        prefixes, histories, targets = validation_split([split.test.train[u] for u in users])
        item2vec = SkipGramTrainer(SkipGramConfig(seed=0)).fit(prefixes)
        progress.advance(task)
        blend = fit_serving_blend(prefixes, histories, targets, {"item2vec": item2vec},
                                  TrainingSettings(blend_gru_epochs=args.gru_epochs))  # fmt: skip
        progress.advance(task)
        test = rank_metrics(full_ranks(blend, split.test, split.items))
        lists = top_lists(blend, split.test, split.items)
        reasons = reasons_per_list(blend, split.test, lists, SharedReasons(recent))
        long = [split.test.train[u] for u in users if len(split.test.train[u]) >= 10]
        named = [(because, history[-1]) for history, found in zip(long, blend.recall_many(long, 10))
                 for because in blend.reasons(history, [c.item_id for c in found], recent)]  # fmt: skip
        last_share = float(np.mean([because == last for because, last in named]))
        progress.advance(task)
        index = build_index(item2vec.dim, len(item2vec.ids), "exact")
        index.add(item2vec.ids.tolist(), item2vec.vectors)
        today = MultiChannelRecall([EmbeddingNeighbourChannel("item2vec", item2vec, index, 5),
                                    UserVectorChannel("user_vector", item2vec, index)])  # fmt: skip
        requests = [split.test.train[u][-HISTORY:] for u in users[: args.requests]]
        for history in requests[:20]:  # warm both paths (TensorFlow's first calls trace)
            blend_request(blend, history, recent), today.recall(history, CANDIDATES, history)
        cpu = cpu_per_call({"today": lambda h: today.recall(h, CANDIDATES, h),
                            "blend": lambda h: blend_request(blend, h, recent)}, requests)  # fmt: skip
    print(f"blend: {blend.normalisation}, weights {blend.summary()['weights']}, validation NDCG@10 {blend.validation_ndcg:.4f}")
    for metric in ("HR@10", "NDCG@10"):
        low, high = bootstrap_ci(test[metric])
        print(f"test {metric}: {test[metric].mean():.4f} [{low:.4f}, {high:.4f}] over {len(test[metric])} users")
    print(f"distinct reasons per top-10 list (users with >= 10 history items, the last {recent or 'all'} tried): {reasons:.2f}; "
          f"reasons naming the last history item: {last_share:.1%}")
    ratio, low, high = ratio_ci(cpu["blend"], cpu["today"])
    print(f"recall CPU per request: today {cpu['today'].mean() * 1e3:.2f} ms, blend {cpu['blend'].mean() * 1e3:.2f} ms, "
          f"added {(cpu['blend'] - cpu['today']).mean() * 1e3:+.2f} ms, ratio {ratio:.2f} [{low:.2f}, {high:.2f}] "
          f"({len(requests)} requests, blocks of 50)")
    print(f"wall {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
