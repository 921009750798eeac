"""The app factory. One `create_app(settings)` per process (per uvicorn worker): the lifespan opens
the Redis client, the event log writer and the model manager once, and closes them on shutdown."""

from __future__ import annotations

import gc
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import ExitStack, asynccontextmanager

from fastapi import FastAPI

from feature_store.catalog import Catalog
from feature_store.definitions import FEATURES, Entity
from feature_store.event_log import LocalEventLog
from feature_store.online_store import RedisOnlineStore
from feature_store.redis_client import ConnectionSpec
from feature_store.redis_server import redis_url
from feature_store.settings import Settings
from services.api.errors import install_error_handlers
from services.api.metrics import ApiMetrics
from services.api.middleware import ServiceMiddleware
from services.api.routes import (
    admin, events, experiments, health, items, learner_admin, models_admin, recommendations, users,
)
from services.api.state import ServiceState
from services.experiments.guardrail import GuardrailMonitor
from services.experiments.manager import ExperimentManager
from services.experiments.report import batch_design_effects
from services.experiments.serving import ExperimentServing
from services.experiments.store import ExperimentStore
from services.learner.serving import LearnerServing
from services.learner.shown import ShownStore, ShownWriter
from services.explore.factory import explore_stage_from_settings
from services.explore.randomness import request_generators, shared_salt
from models.online_revisions import RevisionStore
from models.registry import ModelRegistry
from services.recommend.catalog_sync import CatalogSync
from services.recommend.channels import default_channels
from services.recommend.fallback import LastKnownPopular
from services.recommend.impressions import ImpressionLogger
from services.recommend.item_cache import ItemCache, TtlMemo
from services.recommend.model_manager import BundleLoader, ModelManager, VersionSource
from services.recommend.online_store import ServingStore
from services.recommend.pipeline import RecommendationPipeline
from services.recommend.types import DegradedError

log = logging.getLogger(__name__)

DESCRIPTION = """Recommendations (recall → filter → rank → explain), item neighbours, event intake and
catalog upserts. Writes and admin calls need an API key in `X-API-Key`; reads may (configurable).
Errors are `{"error": {"code", "message", "request_id", "details"}}`; every response of the app
carries `X-Request-ID` (not the HTTP server's own plain-text 400, 408 and 431)."""


def create_app(
    settings: Settings,
    *,
    version_source: VersionSource | None = None,
    bundle_loader: BundleLoader | None = None,
) -> FastAPI:
    """Build the app. `version_source`/`bundle_loader` default to the model registry under
    `settings.model_registry_dir`; tests inject their own to serve models they trained."""
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with ExitStack() as stack:
            app.state.service = _start(settings, metrics, stack, version_source, bundle_loader)
            # What startup built (models, TensorFlow's graphs, caches) lives as long as the process:
            # frozen, the cyclic GC stops re-scanning it, which shortens the collection pauses
            # that land in request tails.
            gc.collect()
            gc.freeze()
            yield

    app = FastAPI(
        title="recsys", version="1.0.0", description=DESCRIPTION, lifespan=lifespan,
        openapi_tags=[{"name": n} for n in ("recommendations", "items", "users", "events", "experiments", "admin",
                                             "health")],
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    for router in (recommendations.router, users.router, items.router, events.router, experiments.router,
                   experiments.page, admin.router, models_admin.router, learner_admin.router, health.router):
        app.include_router(router)
    app.add_middleware(ServiceMiddleware, metrics=metrics, max_body_bytes=settings.api.max_body_bytes)
    return app


def _start(
    settings: Settings,
    metrics: ApiMetrics,
    stack: ExitStack,
    version_source: VersionSource | None,
    bundle_loader: BundleLoader | None,
) -> ServiceState:
    _limit_inference_threads(settings.api.inference_threads)
    url = stack.enter_context(redis_url(settings))
    client = ConnectionSpec.from_settings(settings, url).client()  # redis+cluster:// gives a cluster client
    stack.callback(client.close)
    features = RedisOnlineStore.from_settings(settings, url)
    stack.callback(features.close)
    store = ServingStore(
        client, features, settings.redis.key_prefix, math.ceil(settings.feature_store.dedup_ttl_s),
        ItemCache(ttl_s=settings.api.item_cache_ttl_s, on_lookup=metrics.count_cache_lookups("catalog")),
        TtlMemo(ttl_s=settings.api.global_cache_ttl_s),
    )
    event_log = LocalEventLog(settings.event_log_dir, settings.event_log)
    stack.callback(event_log.close)
    catalog_sync = CatalogSync(store, Catalog.from_settings(settings))  # bulk imports, in the background
    catalog_sync.start()
    stack.callback(catalog_sync.stop)
    fallback = LastKnownPopular()
    _prime(store, fallback, settings.api.recall_candidates)
    salt = shared_salt(client, settings.redis.key_prefix) if settings.explore.seed is None else None
    explore = explore_stage_from_settings(settings, features, salt)
    stack.callback(explore.close)
    pipeline = RecommendationPipeline(
        store, default_channels(store, fallback), fallback, settings.api.recall_candidates, _history_length(settings),
        observe_stage=lambda stage, seconds: metrics.stage_latency.labels(stage).observe(seconds),
        deadline_s=settings.api.recommend_deadline_s,
        explore=explore,
    )
    stack.callback(pipeline.close)
    experiment_store = ExperimentStore(settings.state_dir / "experiments", client, settings.redis.key_prefix)
    serving = ExperimentServing(
        experiment_store, lambda explore_settings: explore_stage_from_settings(
            settings.model_copy(update={"explore": explore_settings}), features, salt),
        request_generators(settings.explore.seed, salt),
    )
    stack.callback(serving.close)
    models = _model_manager(settings, metrics, version_source, bundle_loader, store, serving.ranker_versions)
    models.start()
    stack.callback(models.stop)
    learner = LearnerServing(
        RevisionStore(client, settings.redis.key_prefix, history=settings.learner.history), settings.learner,
        lambda: models.bundle.versions.get("ranker"), request_generators(settings.explore.seed, salt),
        ShownWriter(ShownStore(client, settings.redis.key_prefix, settings.learner.shown_ttl_s), settings.learner.shown_queue,
                    metrics.learner_shown_dropped.inc),
    )
    learner.start()
    stack.callback(learner.stop)
    impressions = ImpressionLogger(
        store, event_log, settings.api.impression_queue_size, settings.api.impression_drain_timeout_s,
        on_outcome=lambda outcome, count: metrics.impressions.labels(outcome=outcome).inc(count),
    )
    impressions.start()
    stack.callback(impressions.close)  # before the event log and Redis client close: it drains into them
    manager = ExperimentManager(experiment_store, ModelRegistry(settings.model_registry_dir))
    guardrails = GuardrailMonitor(
        manager, features.attribution, batch_design_effects(settings.batch_dir), client, settings.redis.key_prefix, settings.experiments.guardrail_interval_s,
        metrics.guardrail_checks.inc, lambda experiment, arm: metrics.guardrail_stops.labels(experiment, arm).inc(),
    )
    guardrails.start()
    stack.callback(guardrails.stop)
    return ServiceState(
        settings, client, store, event_log, fallback, pipeline, models, metrics, impressions, catalog_sync,
        manager, serving, learner,
    )


def _history_length(settings: Settings) -> int:
    """How many of a user's newest positives a request reads: as many as a training row holds
    (`batch.max_seq_len`; the ranker cuts it to its own `max_seq_len`), never fewer than the live
    sequence's cap (what recall read before), at most the batch `history`'s cap (what the merged
    history holds; every request reads it whole anyway)."""
    live = FEATURES.get(Entity.USER, "recent_items").cap or 0
    held = FEATURES.get(Entity.USER, "history").cap or 0
    wanted = max(settings.batch.max_seq_len, live)
    if wanted > held:
        log.warning("batch.max_seq_len %d exceeds the served history's %d items: serving histories are "
                    "shorter than the longest training ones", settings.batch.max_seq_len, held)
    return min(wanted, held)


def _limit_inference_threads(threads: int) -> None:
    """TensorFlow and OpenMP (faiss) read these when they start, whichever model load or import
    starts them first; `tf.config.threading` only works before that, which a recall model's import
    can pre-empt. An explicit environment setting wins."""
    if threads > 0:
        for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
            os.environ.setdefault(name, str(threads))
        if "OPENBLAS_NUM_THREADS" not in os.environ:
            from threadpoolctl import threadpool_limits

            # numpy's BLAS read its thread count at import, before the settings above: a request's
            # small products (recall blend, user vectors) spun every core (8 ms of CPU for a
            # 50x64 by 64x200 product on a busy 2-core host, 0.02 ms on one thread).
            threadpool_limits(threads, user_api="blas")


def _prime(store: ServingStore, fallback: LastKnownPopular, k: int) -> None:
    try:
        fallback.remember(store.popular(k))
    except DegradedError:
        log.warning("redis unreachable at startup: serving degraded until it answers")


def _model_manager(
    settings: Settings,
    metrics: ApiMetrics,
    version_source: VersionSource | None,
    bundle_loader: BundleLoader | None,
    store: ServingStore,
    experiment_rankers: Callable[[], Iterable[str]],
) -> ModelManager:
    if version_source is None or bundle_loader is None:
        from services.recommend.registry_models import RegistryBundleLoader, RegistryVersionSource

        version_source = version_source or RegistryVersionSource(settings.model_registry_dir, experiment_rankers)
        bundle_loader = bundle_loader or RegistryBundleLoader(settings, store)

    def on_swap(bundle) -> None:  # type: ignore[no-untyped-def]
        metrics.model_swaps.inc()
        metrics.set_model_versions(bundle.versions)

    return ModelManager(version_source, bundle_loader, settings.api.model_poll_interval_s, on_swap)


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` (each worker builds its own app from the environment)."""
    return create_app(Settings())
