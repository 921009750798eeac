"""Errors of the feature store that callers handle (degrade, report, retry)."""

from __future__ import annotations

from feature_store.definitions import UnknownFeatureError
from feature_store.redis_server import RedisUnavailableError

__all__ = ["FeatureStoreError", "FeatureStoreUnavailableError", "UnknownFeatureError", "BatchViewError"]


class FeatureStoreError(RuntimeError):
    """Base class of the feature store's own failures."""


class FeatureStoreUnavailableError(FeatureStoreError, RedisUnavailableError):
    """Redis did not answer within the configured timeouts; callers may degrade (e.g. use defaults)."""


class BatchViewError(FeatureStoreError, ValueError):
    """A batch view row or publish request is invalid; the message names the row and column."""
