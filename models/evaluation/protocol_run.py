"""One protocol run (`models.evaluation.protocol`): the tuned peers (Pop, ItemKNN over neighbours
and last-n items, sequential rules (SR) over windows and last-n items, implicit ALS, GRU4Rec) and
the project's pipeline (recall, recall -> rankers) on the same split, each chosen on validation and
reported on test with bootstrap intervals over users. Behind `recsys evaluate --protocol loo` and
`benchmarks/quality.py`."""

from __future__ import annotations

import gc
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from models.evaluation.baselines import ItemCosine, ItemKNNRecommender, ItemTransitions, PopularityRecommender
from models.evaluation.end_to_end import RerankRecommender, bootstrap_ci
from models.evaluation.metrics import rank_metrics
from models.evaluation.offline_pipeline import EvaluationConfig, build_contenders, single_threaded_faiss, with_recall
from models.evaluation.peers import ImplicitALS
from models.evaluation.recall_cache import CachedRecall
from models.retrieval.blend import BlendedRecall, fit_blend
from models.retrieval.multichannel import EmbeddingNeighbourChannel
from models.retrieval.reason_selection import SelectedBlendScores, fit_reason_penalty
from models.retrieval.scored_channels import EmbeddingScores, ItemKNNScores, ScoredChannel, SequentialScores
from models.retrieval.sequential import GRU4Rec
from models.evaluation.protocol import TUNING_METRIC, ListScorer, ProtocolSplit, Tuned, full_ranks, ranks_and_lists, tune

Progress = Callable[[str, int, int], None]
PROTOCOL_METRICS = ("HR@10", "NDCG@10", "HR@50", "MRR")
PEERS = ("Pop", "ItemKNN", "SR", "ALS", "GRU4Rec")
PIPELINE = "pipeline (chosen on validation)"


def grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


@dataclass(frozen=True)
class ProtocolConfig:
    """Which peers, their grids, GRU4Rec's budget, the pipeline (None: peers only), and how many of
    the last history items the blend tries as reasons (`api.reason_recent` as served; None: all)."""

    peers: tuple[str, ...] = PEERS
    knn_grid: list[dict[str, Any]] = field(default_factory=lambda: grid(neighbours=[20, 50, 100, 200], recent=[1, 3, 5, None]))
    sr_grid: list[dict[str, Any]] = field(default_factory=lambda: grid(window=[1, 3, 10, 20], neighbours=[100], recent=[1, 3, 5]))
    als_grid: list[dict[str, Any]] = field(default_factory=lambda: grid(factors=[32, 64, 128, 256], regularization=[0.01, 0.1], alpha=[1.0, 10.0, 40.0]))
    gru_grid: list[dict[str, Any]] = field(default_factory=lambda: grid(dim=[64], dropout=[0.2]))
    gru_epochs: int = 10
    pipeline: EvaluationConfig | None = field(default_factory=EvaluationConfig)
    bootstrap_rounds: int = 1000
    seed: int = 0
    reason_recent: int | None = None

    def __post_init__(self) -> None:
        unknown = [name for name in self.peers if name not in PEERS]
        if unknown:
            raise ValueError(f"unknown peers {unknown}; expected some of {list(PEERS)}")
        if self.gru_epochs < 1:
            raise ValueError(f"gru_epochs must be >= 1, got {self.gru_epochs}")


@dataclass
class ProtocolResult:
    """Per model: chosen parameters, validation NDCG@10, test per-user metrics and their
    (mean, low, high) summary."""

    users: int
    items: int
    models: dict[str, Tuned]
    summary: dict[str, dict[str, tuple[float, float, float]]]


def run_protocol(split: ProtocolSplit, categories: Mapping[str, str], config: ProtocolConfig,
                 progress: Progress | None = None) -> ProtocolResult:  # fmt: skip
    """Fit every model on the training items, choose on validation, report on test.

    numpy's BLAS runs on one thread meanwhile: the run is many small products (a fold-in per
    user, a chunk of users' scores), where OpenBLAS's threads cost more than they save and spin
    while they wait (ALS's validation ranking on Amazon Toys: 24 s of CPU with 2 threads, 3 s
    with 1, idle machine); `implicit` asks for the same. TensorFlow keeps its own threads. Python's
    cyclic collector runs rarely (`rare_collections`)."""
    from threadpoolctl import threadpool_limits

    sequences = split.training_sequences()
    tuned: dict[str, Tuned] = {}
    with threadpool_limits(limits=1, user_api="blas"), rare_collections():
        for name in config.peers:
            tuned[name] = _tune_peer(name, sequences, split, config, progress)
        if config.pipeline is not None:
            tuned.update(_pipeline(split, sequences, categories, config.pipeline, config.seed, progress, tuned,
                                   config.reason_recent))  # fmt: skip
    summary = {
        name: {m: (float(t.test[m].mean()), *bootstrap_ci(t.test[m], config.bootstrap_rounds, seed=config.seed))
               for m in PROTOCOL_METRICS}
        for name, t in tuned.items()
    }  # fmt: skip
    return ProtocolResult(len(split.test.test), len(split.items), tuned, summary)


@contextmanager
def rare_collections(young: int = 100_000) -> Iterator[None]:
    """Python's cyclic garbage collector with the objects alive now frozen (never walked again)
    and a young generation of `young` objects instead of 700, restored on exit.

    A run keeps millions of small objects alive (the split, recall candidates cached per user,
    feature rows) and makes millions more; with the default thresholds the collector walked the
    live ones so often that it took half of the blend's recall on Amazon Toys (2.0 → 1.0 ms of
    CPU per user, idle machine). Reference counting still frees everything without a cycle."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(young, threshold[1], threshold[2])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def _tune_peer(name: str, sequences: list[list[str]], split: ProtocolSplit, config: ProtocolConfig,
               progress: Progress | None) -> Tuned:  # fmt: skip
    seed = config.seed
    if name == "Pop":
        return tune(name, lambda: PopularityRecommender(sequences), [{}], split, seed, progress)
    if name == "ItemKNN":
        cosine = ItemCosine(sequences)  # the same for every grid point: only the pruning and the window differ
        return tune(name, lambda **p: ItemKNNRecommender(sequences, similarity=cosine, **p), config.knn_grid, split, seed, progress)
    if name == "SR":
        rules: dict[int, ItemTransitions] = {}  # one rule matrix per window for every grid point

        def sequential_rules(window: int, **p: Any) -> ItemKNNRecommender:
            if window not in rules:
                rules[window] = ItemTransitions(sequences, window)
            return ItemKNNRecommender(sequences, similarity=rules[window], **p)

        return tune(name, sequential_rules, config.sr_grid, split, seed, progress)
    if name == "ALS":
        return tune(name, lambda **p: ImplicitALS(sequences, seed=seed, **p), config.als_grid, split, seed, progress)
    if name == "GRU4Rec":

        def validate(model: GRU4Rec) -> float:
            return float(rank_metrics(full_ranks(model, split.validation, split.items, seed))[TUNING_METRIC].mean())

        def build(**params: Any) -> GRU4Rec:
            return GRU4Rec(sequences, seed=seed, **params).fit(config.gru_epochs, validate)

        return tune(name, build, config.gru_grid, split, seed, progress)
    raise AssertionError(f"peer {name!r} passed ProtocolConfig's check")


def _pipeline(split: ProtocolSplit, sequences: list[list[str]], categories: Mapping[str, str],
              config: EvaluationConfig, seed: int, progress: Progress | None,
              peers: Mapping[str, Tuned], reason_recent: int | None = None) -> dict[str, Tuned]:  # fmt: skip
    """The project's recall and recall -> rankers, trained on the training items (the validation
    phase's split), as list models under full ranking; with the tuned ItemKNN and GRU4Rec among
    `peers`, also their blend with Item2vec (`models.retrieval.blend`, weights and reason
    selection fitted on validation) alone (full ranking, the order it serves) and -> each ranker."""
    with single_threaded_faiss():
        contenders, _, _ = build_contenders(split.validation, sequences, categories, config, progress)
        _share_recall(contenders, "recall only")
        blend = _blend(split, contenders["recall only"], peers, seed)
        if progress is not None:
            progress("fit blend", 1, 1)
        if blend is not None:
            contenders.update(with_recall(contenders, blend, "blend"))
            _share_recall(contenders, "blend")
            users = sorted(split.validation.test)
            choice = fit_reason_penalty(blend, [split.validation.train[u] for u in users], [split.validation.test[u] for u in users],
                                        reason_recent, seed=seed)  # fmt: skip
            blend.reason_penalty, blend.reason_depth = choice.penalty, choice.depth
            contenders["blend"] = SelectedBlendScores(blend, reason_recent)
            if progress is not None:
                progress("fit reason selection", 1, 1)
        out = {}
        for name in [n for n in contenders if n.startswith(("recall", "blend"))]:
            scorer = contenders[name] if name == "blend" else ListScorer(contenders[name], split.items, config.samples.recall_depth)
            validation = rank_metrics(full_ranks(scorer, split.validation, split.items, seed))
            ranks, lists = ranks_and_lists(scorer, split.test, split.items, seed)
            if progress is not None:
                progress(f"rank {name}", 1, 1)
            params = _params(blend) if name == "blend" and blend is not None else {}
            out[name] = Tuned(name, params, scorer, validation, rank_metrics(ranks), [({}, float(validation[TUNING_METRIC].mean()))],
                              lists)  # fmt: skip
    # A ranker must not make the recall order worse: the order served is the one that scores
    # better on validation (recall alone when every ranker loses to it).
    chosen = max(out, key=lambda name: out[name].grid[0][1])
    out[PIPELINE] = Tuned(PIPELINE, {"order": chosen}, out[chosen].model, out[chosen].validation, out[chosen].test,
                          [({"order": name}, t.grid[0][1]) for name, t in out.items()], out[chosen].test_lists)  # fmt: skip
    return out


def _share_recall(contenders: dict[str, Any], name: str) -> None:
    """Contender `name` (a recall stage) and each ranker over it read one `CachedRecall` of it:
    every user's candidates computed once for all of them and the reasons count."""
    stage = contenders[name]
    contenders[name] = cached = CachedRecall(stage)
    for model in contenders.values():
        if isinstance(model, RerankRecommender) and model.recall is stage:
            model.recall = cached


def _blend(split: ProtocolSplit, recall: Any, peers: Mapping[str, Tuned], seed: int) -> BlendedRecall | None:
    """Tuned ItemKNN, SR, GRU4Rec (when tuned in this run) and the recall stage's embeddings as
    scored channels, blended with weights fitted on the validation targets."""
    channels: list[ScoredChannel] = []
    if "ItemKNN" in peers:
        # The tuned window, and the last item and the whole history over the same similarities
        # (chosen on validation on MovieLens 100k: the blend weighs them differently).
        knn = peers["ItemKNN"].model
        channels += [ItemKNNScores(knn)] + [ItemKNNScores(knn, 1)] * (knn.recent != 1)
        channels += [ItemKNNScores(knn, whole_history=True)] * (knn.recent is not None)
    if "SR" in peers:  # the tuned rules, and the last item's alone
        rules = peers["SR"].model
        channels += [ItemKNNScores(rules)] + [ItemKNNScores(rules, 1)] * (rules.recent != 1)
    if "GRU4Rec" in peers:
        channels.append(SequentialScores(peers["GRU4Rec"].model))
    for channel in getattr(recall, "channels", ()):
        if isinstance(channel, EmbeddingNeighbourChannel):
            embeddings = channel.embeddings
            channels.append(EmbeddingScores(channel.name, embeddings.ids, embeddings.vectors))
    if not channels:
        return None
    users = sorted(split.validation.test)
    histories = [split.validation.train[u] for u in users]
    return fit_blend(channels, split.items, histories, [split.validation.test[u] for u in users], seed=seed)


def _params(blend: BlendedRecall) -> dict[str, Any]:
    return {"normalisation": blend.normalisation, "weights": {c.name: float(w) for c, w in zip(blend.channels, blend.weights)},
            "reason_penalty": blend.reason_penalty, "reason_depth": blend.reason_depth}  # fmt: skip


def best_peer(result: ProtocolResult) -> str:
    """The peer with the highest validation NDCG@10 (how a practitioner would pick one)."""
    peers = [name for name in result.models if name in PEERS]
    return max(peers, key=lambda name: float(result.models[name].validation[TUNING_METRIC].mean()))
