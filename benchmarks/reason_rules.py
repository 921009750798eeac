"""Which history item is "most responsible" for a blended recommendation (issue 20)? The served
rule (`BlendedRecall.reasons`: leave-one-out on the user's own normalisation) against the rule it
replaced (additive credit) on the same top-10 lists of the training DAG's blend, z-score only:

- additive credit (before): item h gets w_c / σ_c · t_c(h, j) from each channel whose raw score is
  a sum of per-item terms (ItemKNN: sim(h, j) over its window; Item2vec: cos(e_h, e_j) / n over
  its last 10), and GRU4Rec's whole term w_c · z_c(j) goes to the history item most similar to j
  in GRU4Rec's input embedding; the argmax is named;
- additive credit, centred: the same with each term minus its mean over the catalog (the exact
  z-score decomposition for a fixed spread), to see whether a term common to every item is what
  concentrates the credit;
- leave-one-out (served).

Per rule: distinct reasons per list and the share naming the last history item (users with >= 10
history items, their test history as in `benchmarks/blend_serving.py`); and the last item's mean
share of a listed item's positive additive credit, i.e. how much of the score it honestly carries.

    .venv/bin/python benchmarks/reason_rules.py --state-dir /tmp/q-ml100k
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np
from rich.progress import Progress

from feature_store.settings import Settings, TrainingSettings
from models.embeddings.skipgram import SkipGramConfig, SkipGramTrainer
from models.evaluation.protocol import implicit_interactions, protocol_split
from models.retrieval.blend import BlendedRecall
from models.retrieval.scored_channels import EmbeddingScores, ItemKNNScores, SequentialScores
from pipelines.training.blend import fit_serving_blend, validation_split
from services.cli.evaluate import read_log

RULES = ("additive credit (before)", "additive credit, centred", "leave-one-out (served)")


def additive_credit(blend: BlendedRecall, history: Sequence[str], items: list[str], centred: bool) -> dict[str, np.ndarray]:
    """history item -> its credit for each of `items` under the additive rule (module docstring)."""
    credit: dict[str, np.ndarray] = {}
    columns = [blend.ids.tolist().index(item) for item in items]
    for channel, weight in zip(blend.channels, blend.weights):
        raw = channel.batch_scores([history])[0]
        if weight == 0 or raw.std() == 0:
            continue
        window = [h for h in channel.reads(history) if h in (getattr(channel, "model", channel).position)]
        if not window:
            continue
        if isinstance(channel, SequentialScores):
            vectors = channel.model.item_vectors()
            unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            near = np.argmax(unit[[channel.model.position[h] for h in window]] @ unit[[channel.model.position[i] for i in items]].T, axis=0)
            z = (raw - raw.mean()) / raw.std()
            for i, n in enumerate(near):
                credit.setdefault(window[n], np.zeros(len(items)))[i] += weight * z[channel.model.position[items[i]]]
            continue
        if isinstance(channel, ItemKNNScores):
            terms = channel.model.similarity[[channel.model.position[h] for h in window]].toarray()
        else:
            assert isinstance(channel, EmbeddingScores)
            terms = channel.unit[[channel.position[h] for h in window]] @ channel.unit.T / len(window)
        terms = terms - terms.mean(axis=1, keepdims=True) if centred else terms
        for h, row in zip(window, weight / raw.std() * terms[:, columns]):
            credit[h] = credit.get(h, np.zeros(len(items))) + row
    return credit


def named(credit: dict[str, np.ndarray], size: int) -> list[str | None]:
    if not credit:
        return [None] * size
    names = list(credit)
    table = np.stack([credit[h] for h in names])
    return [names[b] if table[b, i] > 0 else None for i, b in enumerate(np.argmax(table, axis=0))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--gru-epochs", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    events, _ = read_log(Settings(state_dir=args.state_dir))
    split = protocol_split(implicit_interactions(events))
    users = sorted(split.test.train)
    prefixes, histories, targets = validation_split([split.test.train[u] for u in users])
    item2vec = SkipGramTrainer(SkipGramConfig(seed=0)).fit(prefixes)
    blend = fit_serving_blend(prefixes, histories, targets, {"item2vec": item2vec}, TrainingSettings(blend_gru_epochs=args.gru_epochs))
    if blend.normalisation != "zscore":
        raise SystemExit(f"the additive rules are written for the z-score; this blend uses {blend.normalisation}")
    long = [split.test.train[u] for u in users if len(split.test.train[u]) >= 10]
    distinct = {rule: [] for rule in RULES}
    last = {rule: 0 for rule in RULES}
    shares, cpu, shown = [], 0.0, 0
    with Progress() as progress:
        task = progress.add_task("reasons of each top-10 list under each rule", total=len(long))
        for history, found in zip(long, blend.recall_many(long, 10)):
            items = [c.item_id for c in found]
            credit = additive_credit(blend, history, items, centred=False)
            began = time.process_time()
            served = blend.reasons(history, items)
            cpu += time.process_time() - began
            lists = dict(zip(RULES, (named(credit, len(items)), named(additive_credit(blend, history, items, True), len(items)), served)))
            for rule, reasons in lists.items():
                distinct[rule].append(len(set(reasons)))
                last[rule] += sum(reason == history[-1] for reason in reasons)
            positive = {h: np.maximum(row, 0.0) for h, row in credit.items()}
            total = sum(positive.values())
            shares += list(positive.get(history[-1], np.zeros(len(items))) / np.where(total > 0, total, 1.0))
            shown += len(items)
            progress.advance(task)
    print(f"blend: {blend.normalisation}, weights {blend.summary()['weights']}; {len(long)} users with >= 10 history items")
    for rule in RULES:
        print(f"{rule:26s} distinct reasons per top-10 list {np.mean(distinct[rule]):.2f}, naming the last item {last[rule] / shown:.1%}")
    print(f"the last item's mean share of a listed item's positive additive credit: {np.mean(shares):.1%}")
    print(f"leave-one-out reasons: {cpu / len(long) * 1e3:.1f} ms CPU per 10-item list (whole test history; the API reads the last 50)")
    print(f"wall {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
