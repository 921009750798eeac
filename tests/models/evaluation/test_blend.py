"""The learned channel blend (issue 20 item 4) and its reasons (item 5) on planted data."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.evaluation.baselines import ItemKNNRecommender
from models.retrieval.blend import BlendedRecall, blend_ndcg, coordinate_ascent, fit_blend, fit_weights, normalise
from models.retrieval.scored_channels import EmbeddingScores, ItemKNNScores


class PlantedScores:
    """A channel whose score for each history is planted: the target plus noise, or noise."""

    def __init__(self, name: str, items: Sequence[str], planted: dict[tuple[str, ...], np.ndarray]) -> None:
        self.name, self.ids, self.planted = name, np.array(items), planted

    def batch_scores(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        return np.stack([self.planted[tuple(h)] for h in histories])

    def reads(self, history: Sequence[str]) -> list[str]:
        return list(history)


def _planted(users: int = 300, size: int = 60, seed: int = 0) -> tuple[list[str], list[list[str]], list[str], PlantedScores, PlantedScores]:
    rng = np.random.default_rng(seed)
    items = [f"i{j}" for j in range(size)]
    histories, targets, signal, noise = [], [], {}, {}
    for u in range(users):
        picks = rng.choice(size, 4, replace=False)
        history = [f"u{u}", *(items[j] for j in picks[:3])]  # the user's own token keeps histories distinct
        histories.append(history)
        targets.append(items[picks[3]])
        informative = rng.normal(size=size)
        informative[picks[3]] += 2.5  # the target stands out in the signal channel only
        signal[tuple(history)] = informative
        noise[tuple(history)] = rng.normal(size=size) * 10.0  # larger raw scale: z-scores must undo it
    return items, histories, targets, PlantedScores("signal", items, signal), PlantedScores("noise", items, noise)


def test_fitted_weights_favour_the_channel_that_carries_the_signal() -> None:
    items, histories, targets, signal, noise = _planted()
    blend = fit_blend([noise, signal], items, histories, targets)
    w_noise, w_signal = blend.weights
    assert w_signal > 0 and w_noise <= 0.25 * w_signal
    alone = fit_blend([signal], items, histories, targets)
    assert blend.validation_ndcg >= alone.validation_ndcg - 1e-9
    equal = BlendedRecall([noise, signal], np.ones(2), items, blend.normalisation)
    matrices = equal.channel_matrices(histories)
    columns = np.array([items.index(t) for t in targets])
    masked = np.zeros((len(histories), len(items)), bool)
    assert blend.validation_ndcg > blend_ndcg(matrices, [1.0, 1.0], columns, masked) + 0.05


def test_coordinate_ascent_matches_a_search_by_hand() -> None:
    # A planted objective on the grid {0, 1, 2} whose best point needs two rounds: from (0, 0),
    # round 1 moves w0 to 1 (3 > 0; 2 gives 1 < 3), then w1 to 2 (w0 = 1: 5 > 3); round 2 moves
    # w0 to 2 (w1 = 2: 9 > 5) and keeps w1; round 3 moves nothing. A tie (w1 = 1 at w0 = 1: 3)
    # does not move.
    table = {(0, 0): 0.0, (1, 0): 3.0, (2, 0): 1.0, (0, 1): 0.0, (1, 1): 3.0, (2, 1): 0.0,
             (0, 2): 0.0, (1, 2): 5.0, (2, 2): 9.0}  # fmt: skip
    calls: list[tuple[float, ...]] = []

    def objective(weights: np.ndarray) -> float:
        calls.append(tuple(weights))
        return table[(int(weights[0]), int(weights[1]))]

    weights, best = coordinate_ascent(objective, np.zeros(2), grid=(0.0, 1.0, 2.0), rounds=5)
    assert weights.tolist() == [2.0, 2.0] and best == 9.0
    assert len(calls) == 1 + 3 * 6  # the start, then three rounds of 2 weights x 3 values
    single, single_best = coordinate_ascent(objective, np.zeros(2), grid=(0.0, 1.0, 2.0), rounds=1)
    assert single.tolist() == [1.0, 2.0] and single_best == 5.0


def test_the_weight_fit_equals_coordinate_ascent_on_the_plain_objective() -> None:
    # `fit_weights` shares the other channels' sum between one weight's trials; it must visit the
    # same points and keep the same weights as the search that sums every channel per trial.
    rng = np.random.default_rng(3)
    users, items = 300, 80
    latent = rng.normal(size=(users, items))
    matrices = [normalise(latent + rng.normal(scale=s, size=(users, items)), "zscore") for s in (0.5, 1.0, 2.0, 4.0)]
    targets = latent.argmax(axis=1)
    masked = rng.random((users, items)) < 0.1
    masked[np.arange(users), targets] = False
    fitted, best = fit_weights(matrices, targets, masked)
    plain, plain_best = coordinate_ascent(lambda w: blend_ndcg(matrices, w, targets, masked), np.ones(len(matrices)))
    assert fitted.tolist() == plain.tolist() and np.isclose(best, plain_best)
    assert np.isclose(best, blend_ndcg(matrices, fitted, targets, masked))
    assert fitted.tolist() != [1.0] * 4  # the search moved (the least noisy channel weighs more)


def test_normalisations() -> None:
    scores = np.array([[3.0, 1.0, 2.0], [5.0, 5.0, 5.0]])
    z = normalise(scores, "zscore")
    assert np.allclose(z[0], (scores[0] - 2.0) / np.std(scores[0])) and np.allclose(z[1], 0.0)
    assert np.allclose(normalise(scores[:1], "rrf"), [[1 / 61, 1 / 63, 1 / 62]])


def test_each_candidate_names_the_history_item_with_the_largest_contribution() -> None:
    # x co-occurs with a (3 users) and b (1 user): its ItemKNN score sums both terms, a's larger.
    sequences = [["a", "x"]] * 3 + [["b", "x"], ["b", "y"], ["b", "y"], ["c", "z"], ["c", "z"], ["a", "b", "c"]]
    knn = ItemKNNRecommender(sequences, neighbours=10, recent=None)
    channel = ItemKNNScores(knn)
    history = ["a", "b", "c"]
    blend = BlendedRecall([channel], np.ones(1), knn.ids.tolist())
    top = [c.item_id for c in blend.recall(history, 3)]
    found = dict(zip(top, blend.reasons(history, top)))
    sim = knn.similarity.toarray()
    pos = knn.position
    for item, because in found.items():
        terms = {h: sim[pos[h], pos[item]] for h in history}
        assert because == max(terms, key=terms.get)  # type: ignore[arg-type]
    assert found == {"x": "a", "y": "b", "z": "c"}


def test_the_leading_channel_names_the_reason() -> None:
    # Embeddings: p near h1, q near h2. ItemKNN sees only h3 -> r. Each item is tagged with the
    # channel that put it there, and its reason is the history item that channel's score rests on.
    ids = np.array(["h1", "h2", "h3", "p", "q", "r"])
    vectors = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0.1, 0], [0.1, 1, 0], [0, 0, 0.01]], np.float32)
    embedding = EmbeddingScores("item2vec", ids, vectors, recent=None)
    knn = ItemKNNScores(ItemKNNRecommender([["h3", "r"], ["h3", "r"], ["h1", "h2"]], recent=None))
    blend = BlendedRecall([embedding, knn], np.array([1.0, 1.0]), ids.tolist(), "zscore")
    recalled = blend.recall(["h1", "h2", "h3"], 3)
    reasons = blend.reasons(["h1", "h2", "h3"], [c.item_id for c in recalled])
    found = {c.item_id: (why, c.channels) for c, why in zip(recalled, reasons)}
    assert found["p"] == ("h1", {"item2vec"}) and found["q"] == ("h2", {"item2vec"})
    assert found["r"] == ("h3", {"itemknn"})


def test_gru4rec_channel_scores_a_request_as_a_batch_does() -> None:
    from models.retrieval.sequential import GRU4Rec

    sequences = [[f"i{(s + t) % 12}" for t in range(6)] for s in range(40)]
    gru = GRU4Rec(sequences, dim=8, dropout=0.0, batch_size=16).fit(1)
    histories = [sequences[s][:4] for s in range(40)] + [sequences[0][:3]] * 30
    # Under 64 histories the model is called directly; above, through predict(): the same scores.
    assert np.allclose(gru.batch_scores(histories[:3]), gru.batch_scores(histories)[:3], atol=1e-5)
