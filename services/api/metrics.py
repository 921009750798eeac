"""Prometheus metrics, one registry per app instance (so several apps in one test process don't collide).

With several worker processes (`services.api.server`), every worker writes its values to files in
`PROMETHEUS_MULTIPROC_DIR` (prometheus_client's multi-process mode, chosen when the library is
first imported), and `/metrics`, whichever worker answers, reports the sum over all of them:
counters and histograms add up, `recsys_degraded` and the model versions show the largest value
among live workers.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from services.recommend.item_cache import LookupCounter

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


class ApiMetrics:
    """Request latency per endpoint and stage, recall/rank counts, errors, model versions, degraded mode."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_latency = Histogram(
            "recsys_request_seconds", "Request latency by endpoint", ["method", "endpoint", "status"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.stage_latency = Histogram(
            "recsys_stage_seconds", "Recommendation pipeline stage latency", ["stage"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.recalled = Counter("recsys_recalled_candidates_total", "Candidates after recall+filter", registry=r)
        self.ranked = Counter("recsys_ranked_items_total", "Items returned after ranking", registry=r)
        self.errors = Counter("recsys_errors_total", "Errors by kind", ["kind"], registry=r)
        self.degraded = Gauge(
            "recsys_degraded", "1 while answering from the in-process fallback", registry=r, multiprocess_mode="livemax"
        )
        self.degraded_responses = Counter(
            "recsys_degraded_responses_total", "Responses served from the fallback", registry=r
        )
        self.fallback_responses = Counter(
            "recsys_popularity_fallback_responses_total", "Responses ranked without a trained ranker", registry=r
        )
        self.model_version = Gauge(
            "recsys_model_version_info", "Serving model version", ["role", "version"], registry=r,
            multiprocess_mode="livemax",
        )
        self._versions: dict[str, str] = {}
        self.model_swaps = Counter("recsys_model_swaps_total", "Model bundle swaps", registry=r)
        self.events = Counter("recsys_events_total", "Posted events by outcome", ["outcome"], registry=r)
        self.impressions = Counter(
            "recsys_impressions_total",
            "Served-list impressions by outcome: logged, duplicate, dropped, not_applied (logged, live counts pending)",
            ["outcome"], registry=r,
        )
        self.learner_shown_dropped = Counter(
            "recsys_learner_shown_dropped_total",
            "PDGD served lists whose features never reached Redis (queue full or Redis away)", registry=r,
        )
        self.cache_lookups = Counter(
            "recsys_item_cache_lookups_total",
            "Per-item cache lookups by cache and result: fresh, stale (served while refreshed), read (from Redis now)",
            ["cache", "result"], registry=r,
        )
        self.guardrail_checks = Counter(
            "recsys_experiment_guardrail_checks_total", "Scheduled guardrail checks of the running experiments", registry=r,
        )
        self.guardrail_stops = Counter(
            "recsys_experiment_guardrail_stops_total", "A/B arms stopped by the scheduled guardrail check",
            ["experiment", "arm"], registry=r,
        )

    def count_cache_lookups(self, cache: str) -> LookupCounter:
        """An `ItemCache` lookup counter for `cache` (children made once: this runs per request)."""
        fresh, stale, read = (self.cache_lookups.labels(cache, result) for result in ("fresh", "stale", "read"))

        def count(fresh_n: int, stale_n: int, read_n: int) -> None:
            for counter, n in ((fresh, fresh_n), (stale, stale_n), (read, read_n)):
                if n:
                    counter.inc(n)

        return count

    def set_model_versions(self, versions: dict[str, str]) -> None:
        for role, version in self._versions.items():
            # Zeroed before removal: in multi-process mode the value lives on in this worker's file.
            self.model_version.labels(role=role, version=version).set(0)
            self.model_version.remove(role, version)
        for role, version in versions.items():
            self.model_version.labels(role=role, version=version).set(1)
        self._versions = dict(versions)

    def exposition(self) -> bytes:
        """The Prometheus text format: this app's metrics, or every worker's in multi-process mode."""
        if not os.environ.get(MULTIPROCESS_DIR_ENV):
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
