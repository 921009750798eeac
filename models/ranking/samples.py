"""The ranking-samples contract: the Parquet schema the batch layer writes and the rankers read.

One row is one (user, candidate item, time) with a binary label. Columns:

- ``user_id`` string, ``item_id`` string (the candidate), ``ts`` timestamp (UTC),
- ``label`` int8: 1 positive, 0 negative,
- ``label_source`` string: one of ``click``, ``rating``, ``impression``, ``sampled``, ``recall``,
- ``split`` string: ``train``, ``validation`` or ``test`` (split by time),
- ``hist_item_ids`` list<string>: the user's positive items strictly before ``ts``, most recent
  LAST, capped at ``max_seq_len`` (default 50),
- ``hist_categories`` list<string>: the primary category of each history item (aligned),
- ``item_category`` string: the candidate's primary category,
- dense numeric features (float32), one column each, named by the model config's
  ``dense_features`` list (e.g. ``item_pop_7d``, ``item_ctr``, ``user_event_count``,
  ``user_cat_affinity``): the set varies, so nothing here hard-codes it.

Everything in ``models.ranking`` takes column names from this module, and the online path
assembles a dict with the same keys (see ``models.ranking.features.FeatureSpec``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import pyarrow as pa

from feature_store.definitions import Entity

USER_ID: Final = "user_id"
ITEM_ID: Final = "item_id"
TS: Final = "ts"
LABEL: Final = "label"
LABEL_SOURCE: Final = "label_source"
SPLIT: Final = "split"
HIST_ITEM_IDS: Final = "hist_item_ids"
HIST_CATEGORIES: Final = "hist_categories"
ITEM_CATEGORY: Final = "item_category"

SPLITS: Final = ("train", "validation", "test")
LABEL_SOURCES: Final = ("click", "rating", "impression", "sampled", "recall")
DEFAULT_MAX_SEQ_LEN: Final = 50
DEFAULT_DENSE_FEATURES: Final = ("item_pop_7d", "item_ctr", "user_event_count", "user_cat_affinity")

# The one definition of where each dense sample feature comes from online: sample column ->
# (entity, feature-store feature). The Spark ranking-samples job computes the column as of the
# row's ts from the same events the feature store counts as of "now", so a request at serving
# reads exactly what the training row held (tests/pipelines/spark/test_feature_parity.py).
DENSE_FEATURE_SOURCES: Final[dict[str, tuple[Entity, str]]] = {
    # Columns written by pipelines/spark/jobs/ranking_samples.py (its DENSE_FEATURES).
    "item_popularity": (Entity.ITEM, "popularity_all"),
    "item_ctr": (Entity.ITEM, "ctr"),
    "user_event_count": (Entity.USER, "event_count"),
    "user_positive_count": (Entity.USER, "positive_count"),
    "user_category_affinity": (Entity.USER_CATEGORY, "affinity"),
    # Further columns a samples file may carry.
    "item_pop_1d": (Entity.ITEM, "popularity_1d"),
    "item_pop_7d": (Entity.ITEM, "popularity_7d"),
    "item_pop_30d": (Entity.ITEM, "popularity_30d"),
    "item_pop_all": (Entity.ITEM, "popularity_all"),
    "item_ctr_24h": (Entity.ITEM, "ctr_24h"),
    "user_cat_affinity": (Entity.USER_CATEGORY, "affinity"),
}

BASE_FIELDS: Final = (
    pa.field(USER_ID, pa.string(), nullable=False),
    pa.field(ITEM_ID, pa.string(), nullable=False),
    pa.field(TS, pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field(LABEL, pa.int8(), nullable=False),
    pa.field(LABEL_SOURCE, pa.string()),
    pa.field(SPLIT, pa.string(), nullable=False),
    pa.field(HIST_ITEM_IDS, pa.list_(pa.string())),
    pa.field(HIST_CATEGORIES, pa.list_(pa.string())),
    pa.field(ITEM_CATEGORY, pa.string()),
)

# Columns a model reads as input (the label and bookkeeping columns are not model inputs).
SPARSE_INPUTS: Final = (USER_ID, ITEM_ID, ITEM_CATEGORY)
SEQUENCE_INPUTS: Final = (HIST_ITEM_IDS, HIST_CATEGORIES)
STRING_INPUTS: Final = frozenset((*SPARSE_INPUTS, *SEQUENCE_INPUTS))  # the dense ones are float32


def sample_schema(dense_features: Sequence[str] = DEFAULT_DENSE_FEATURES) -> pa.Schema:
    """The full Parquet schema of ranking samples carrying the given dense feature columns."""
    clashes = set(dense_features) & {f.name for f in BASE_FIELDS}
    if clashes:
        raise ValueError(f"dense feature names clash with sample columns: {sorted(clashes)}")
    dense = [pa.field(name, pa.float32()) for name in dense_features]
    return pa.schema([*BASE_FIELDS, *dense])


def infer_dense_features(schema: pa.Schema) -> tuple[str, ...]:
    """Every numeric column outside the contract's base columns, in file order."""
    base = {f.name for f in BASE_FIELDS}
    return tuple(
        f.name
        for f in schema
        if f.name not in base and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))
    )


def check_schema(schema: pa.Schema, dense_features: Sequence[str], source: str) -> None:
    """Raise ``ValueError`` naming ``source`` and every missing or mistyped column."""
    expected = sample_schema(dense_features)
    problems: list[str] = []
    for field in expected:
        if field.name not in schema.names:
            if field.name != LABEL_SOURCE:  # bookkeeping only; models never read it
                problems.append(f"missing column {field.name!r}")
            continue
        actual = schema.field(field.name).type
        if not _compatible(actual, field.type):
            problems.append(f"column {field.name!r} has type {actual}, expected {field.type}")
    if problems:
        raise ValueError(f"{source}: not a ranking-samples file: " + "; ".join(problems))


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Accept the encodings Spark and pyarrow produce for the same logical type."""
    if pa.types.is_dictionary(actual):
        actual = actual.value_type
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_list(expected):
        return (pa.types.is_list(actual) or pa.types.is_large_list(actual)) and _compatible(
            actual.value_type, expected.value_type
        )
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(actual)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual) or pa.types.is_boolean(actual)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual) or pa.types.is_integer(actual)
    return actual == expected
