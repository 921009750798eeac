"""What the app holds for its lifetime: one instance per worker process, built in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from feature_store.event_log import LocalEventLog
from feature_store.settings import Settings
from services.api.metrics import ApiMetrics
from services.experiments.manager import ExperimentManager
from services.experiments.serving import ExperimentServing
from services.learner.serving import LearnerServing
from services.recommend.catalog_sync import CatalogSync
from services.recommend.fallback import LastKnownPopular
from services.recommend.impressions import ImpressionLogger
from services.recommend.model_manager import ModelManager
from services.recommend.online_store import ServingStore
from services.recommend.pipeline import RecommendationPipeline


@dataclass
class ServiceState:
    settings: Settings
    redis_client: redis.Redis
    store: ServingStore
    event_log: LocalEventLog
    fallback: LastKnownPopular
    pipeline: RecommendationPipeline
    models: ModelManager
    metrics: ApiMetrics
    impressions: ImpressionLogger
    catalog_sync: CatalogSync | None = None
    experiments: ExperimentManager | None = None
    experiment_serving: ExperimentServing | None = None
    learner: LearnerServing | None = None
