"""Tuned peers of the protocol (`models.evaluation.protocol`): implicit-feedback ALS.

It scores every training item for a history (the `ItemScorer` interface) by folding the history
in as a new user (one least-squares solve). ItemKNN and Pop are in `models.evaluation.baselines`;
GRU4Rec, a peer and a recall channel of the pipeline, in `models.retrieval.sequential`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse

from models.retrieval.sequential import item_index


class ImplicitALS:
    """Matrix factorisation for implicit feedback (Hu, Koren & Volinsky 2008), fitted by the
    `implicit` package: minimise Σ_{u,i} c_ui (p_ui − x_uᵀy_i)² + λ(Σ‖x_u‖² + Σ‖y_i‖²) with
    p_ui = 1 for an interaction (else 0) and confidence c_ui = 1 + α·r_ui.

    A history is scored by folding it in as a new user with the item factors Y fixed:
    x = (YᵀY + Yᵀ(C − I)Y + λI)⁻¹ YᵀC p, the same normal equation ALS solves for a user, so the
    test phase can add the validation item without retraining; scores are Y x."""

    def __init__(self, sequences: Sequence[Sequence[str]], factors: int = 64, regularization: float = 0.01,
                 alpha: float = 1.0, iterations: int = 15, seed: int = 0) -> None:  # fmt: skip
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        self.ids, self.position = item_index(sequences)
        rows = [u for u, sequence in enumerate(sequences) for _ in dict.fromkeys(sequence)]
        cols = [self.position[item] for sequence in sequences for item in dict.fromkeys(sequence)]
        # `implicit` takes the confidence as `alpha` × the stored value (c = α·r): storing 1 + α under
        # its alpha 1 gives Hu, Koren & Volinsky's c = 1 + α·r, the confidence the fold-in solves with.
        confidence = np.full(len(cols), 1.0 + alpha, np.float32)
        matrix = sparse.csr_matrix((confidence, (rows, cols)), shape=(len(sequences), len(self.ids)))
        # One BLAS thread, as `implicit` asks: its solver calls scipy's OpenBLAS (loaded by the
        # import above, so a cap set before it does not reach it) from its own parallel loop.
        with threadpool_limits(limits=1, user_api="blas"):
            model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=1.0,
                                            iterations=iterations, random_state=seed)  # fmt: skip
            model.fit(matrix, show_progress=False)
        self.factors = np.asarray(model.item_factors, dtype=np.float64)
        self.gram = self.factors.T @ self.factors
        self.alpha, self.regularization = alpha, regularization

    def scores(self, history: Sequence[str]) -> np.ndarray:
        return self.batch_scores([history])[0]

    def batch_scores(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """`scores` of each history (rows): the fold-in systems solved as one stacked batch and the
        scores of every item as one product `Y [x_1 … x_n]`, not a matrix-vector product per user."""
        size = self.gram.shape[0]
        systems = np.empty((len(histories), size, size))
        rhs = np.zeros((len(histories), size))
        confidence = 1.0 + self.alpha
        base = self.gram + self.regularization * np.eye(size)
        for n, history in enumerate(histories):
            rows = sorted({self.position[item] for item in history if item in self.position})
            known = self.factors[rows]
            systems[n] = base + (confidence - 1.0) * known.T @ known
            rhs[n] = confidence * known.sum(axis=0)
        users = np.linalg.solve(systems, rhs[:, :, None])[:, :, 0]  # no known item: x = 0, every score 0
        return users @ self.factors.T
