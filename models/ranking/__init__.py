"""Rankers: DIN, Wide&Deep and a logistic-regression baseline over the ranking-samples contract
(`samples`), trained from Parquet (`dataset`, `trainer`), scored through compiled endpoints
(`inference`) and exported to the model registry (`export`).

TensorFlow is imported by the model modules; import them where they are used, not at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.ranking.base import Ranker
    from models.ranking.features import FeatureSpec

MODEL_KINDS = ("din", "wide_deep", "lr")


def build_model(kind: str, spec: FeatureSpec, **params: Any) -> Ranker:
    """A fresh ranker of ``kind`` (one of `MODEL_KINDS`) for ``spec``."""
    if kind == "din":
        from models.ranking.din import DIN

        return DIN(spec, **params)
    if kind == "wide_deep":
        from models.ranking.wide_deep import WideDeep

        return WideDeep(spec, **params)
    if kind == "lr":
        from models.ranking.logistic import LogisticRegression

        return LogisticRegression(spec, **params)
    raise ValueError(f"unknown ranker {kind!r}; expected one of {MODEL_KINDS}")
