"""The position-based click model and the ground truth it defines.

Position-based model (PBM; Craswell et al., "An experimental comparison of click position-bias
models", WSDM 2008): a user examines slot `k` (0-based) with probability `e_k = 1 / (k + 1)^η`,
independently of what is there, and clicks an examined item with its attractiveness

    a(u, i, t) = σ(u_t · v_i + b_i + β_u)

(`population` defines `u_t`, `v_i`, `b_i` and the user's click propensity `β_u`, 0 by default). An item outside the population, or one that has not
arrived by step `t`, has `a = 0`: no simulated user can click it. So slot `k` is clicked with
probability `e_k · a(u, item_k, t)`, and the expected clicks of a list are

    E[clicks | u, list, t] = Σ_k e_k · a(u, list_k, t).

The oracle list of length `k` is the `k` most attractive items, most attractive first. It is
optimal for a PBM whose `e_k` does not increase with `k` (η ≥ 0): every term is non-negative, so
the best `k` items are the `k` largest `a`, and by the rearrangement inequality the largest sum of
products pairs the largest `e` with the largest `a`. Hence `expected_clicks(list) ≤
oracle_clicks(len(list))` for every list of distinct items, exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.datasets.synthetic_truth import write_npz
from pipelines.simulate.population import Population, population_from_arrays


@dataclass(frozen=True)
class PositionBasedModel:
    """Examination probabilities `e_k = 1 / (k + 1)^η` for slots `k = 0, 1, …`."""

    eta: float = 1.0

    def __post_init__(self) -> None:
        if self.eta < 0:
            raise ValueError("eta must be >= 0 (examination may not increase down the list)")

    def examination(self, slots: int) -> np.ndarray:
        return 1.0 / np.power(np.arange(slots) + 1.0, self.eta)


class GroundTruth:
    """The expected clicks of any list for any simulated user at any step, and the oracle list.

    Steps are request numbers of a run (they decide drift and arrivals); user and item ids are the
    population's.
    """

    def __init__(self, population: Population, model: PositionBasedModel) -> None:
        self.population = population
        self.model = model

    def attractiveness(self, user_id: str, item_ids: Sequence[str], step: int) -> np.ndarray:
        """`a(u, i, t) = σ(u_t · v_i + b_i + β_u)` per item; 0 for unknown or not-yet-arrived items."""
        every = self._every_item(user_id, step)
        numbers = [self.population.item_index(item_id) for item_id in item_ids]
        return np.array([every[j] if j is not None else 0.0 for j in numbers], dtype=np.float64)

    def _every_item(self, user_id: str, step: int) -> np.ndarray:
        """`a(u, i, t)` for every item number `i` (0 for items that have not arrived)."""
        population = self.population
        number = population.user_index(user_id)
        logits = population.item_vectors @ population.vectors_at(step)[number] + population.item_bias
        attractive = 1.0 / (1.0 + np.exp(-(logits + population.user_bias[number])))
        return np.where(population.arrived(step), attractive, 0.0)

    def click_probabilities(self, user_id: str, item_ids: Sequence[str], step: int) -> np.ndarray:
        """`e_k · a(u, list_k, t)` per slot."""
        return self.model.examination(len(item_ids)) * self.attractiveness(user_id, item_ids, step)

    def expected_clicks(self, user_id: str, item_ids: Sequence[str], step: int) -> float:
        """`Σ_k e_k · a(u, list_k, t)`."""
        return float(self.click_probabilities(user_id, item_ids, step).sum())

    def oracle_list(self, user_id: str, k: int, step: int, exclude: Iterable[str] = ()) -> list[str]:
        """The `k` most attractive items that exist at `step` and are not in `exclude`, most
        attractive first."""
        population = self.population
        candidate = population.arrived(step).copy()
        for item_id in exclude:
            j = population.item_index(item_id)
            if j is not None:
                candidate[j] = False
        attractive = np.where(candidate, self._every_item(user_id, step), -1.0)
        best = np.argsort(-attractive, kind="stable")[: min(k, int(candidate.sum()))]
        return [population.item_id(int(j)) for j in best]

    def oracle_clicks(self, user_id: str, k: int, step: int, exclude: Iterable[str] = ()) -> float:
        """The expected clicks of `oracle_list`: the most any list of `k` items can get."""
        return self.expected_clicks(user_id, self.oracle_list(user_id, k, step, exclude), step)

    def draw_clicks(
        self, user_id: str, item_ids: Sequence[str], step: int, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """One draw of the click model: a boolean per slot. Without `rng`, the draw is the step's own
        (seeded by the population's seed and `step`), so the same list at the same step always
        gets the same clicks, whatever order requests complete in."""
        rng = rng if rng is not None else step_rng(self.population.params.seed, step, stream=3)
        return rng.random(len(item_ids)) < self.click_probabilities(user_id, item_ids, step)

    def save(self, path: Path) -> Path:
        """Write the truth (population and click model) as `.npz` atomically; returns `path`."""
        model = np.array(json.dumps({"eta": self.model.eta}))
        return write_npz(path, click_model=model, **self.population.to_arrays())


def load_truth(path: Path) -> GroundTruth:
    """Load a truth file written by `GroundTruth.save` (`recsys simulate` records one per run)."""
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    model = PositionBasedModel(**json.loads(str(arrays.pop("click_model"))))
    return GroundTruth(population_from_arrays(arrays), model)


def step_rng(seed: int, step: int, stream: int) -> np.random.Generator:
    """The random stream `stream` of one step: independent of every other step and stream."""
    return np.random.default_rng([seed, stream, step])
