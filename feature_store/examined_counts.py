"""Per-item position-debiased feedback for bandits: expected examinations and clicks.

From the attribution store's counts, with θ_k of `feature_store.position_bias.examination`:

    E_i = Σ_k θ_k · impressions_{i,k},    c_i = attributed clicks of item i

the two terms of the store's debiased CTR, dCTR_i = (c_i + α) / (E_i + α + β), kept apart so a
bandit can put its own prior on them (Joachims et al., WSDM 2017, for examination weighting).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from feature_store.attribution import Dimension, join_key
from feature_store.attribution_store import RedisAttributionStore
from feature_store.position_bias import CLICK, IMPRESSION, examination


def examined_counts(store: RedisAttributionStore, item_ids: Sequence[str], since_ms: int,
                    until_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """(E_i, c_i) per item, aligned with `item_ids`, over the buckets in [since_ms, until_ms).

    One pipelined read of every (item, position) count, through the store's own reader (its
    private `_positions`/`_many`) until the store grows a public method for these two terms."""
    positions = store._positions()
    wanted = [(Dimension.POSITION, p) for p in positions]
    wanted += [(Dimension.ITEM, item) for item in item_ids]
    wanted += [(Dimension.ITEM_POSITION, join_key(item, p)) for item in item_ids for p in positions]
    rows = store._many(wanted, since_ms, until_ms)
    theta_by_position = examination(dict(zip(positions, rows[:len(positions)])))
    theta = np.array([theta_by_position[p] for p in positions])
    items = rows[len(positions):len(positions) + len(item_ids)]
    shown = np.array([row.get(IMPRESSION, 0) for row in rows[len(positions) + len(item_ids):]], dtype=float)
    examined = shown.reshape(len(item_ids), len(positions)) @ theta if positions else np.zeros(len(item_ids))
    return examined, np.array([row.get(CLICK, 0) for row in items], dtype=float)
