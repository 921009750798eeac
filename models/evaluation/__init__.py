"""Offline top-K evaluation shared by every model: leave-last-one-out split, full-ranking
metrics (HR@K, NDCG@K, Recall@K) and the Pop and ItemKNN baselines."""

from models.evaluation.baselines import ItemKNNRecommender, PopularityRecommender
from models.evaluation.metrics import Recommender, evaluate
from models.evaluation.split import LeaveLastOut, leave_last_one_out

__all__ = [
    "ItemKNNRecommender", "LeaveLastOut", "PopularityRecommender", "Recommender", "evaluate", "leave_last_one_out",
]  # fmt: skip
